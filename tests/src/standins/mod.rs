//! Stand-ins for the cameras and peers surv must work with unchanged, each speaking its wire
//! format exactly as the seed programs (or the real device) do: one file per kind.
pub mod http;
pub mod oak_host;
pub mod push;
pub mod seed001_app;
