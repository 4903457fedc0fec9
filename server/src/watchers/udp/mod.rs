//! UDP viewers, seed-003 and SURV/1 forms: the fast path.
//!
//! ```text
//! TCP :9999 ──registration──▶ admission ──▶ session task (end, timeout, probes, LEAVE)
//!                                              │ attaches a Link
//! newest frame ──▶ data_path (fan-out thread) ──sendmmsg──▶ shared UDP socket ──▶ viewers
//!                              ▲ window opens                   │
//!                              └──────── acks (recvmmsg) ◀──────┘
//! ```
//!
//! * [`admission`]: TCP listener, registration under a deadline and a size cap, refusals.
//! * [`session`]: one task per viewer: when its stream ends.
//! * `link`: what the data path and the session share about one viewer.
//! * [`data_path`]: shared sockets and the fan-out thread.
//! * `chunks`: a frame as MTU-sized chunks to the viewers that asked for them (UDP GSO).
//! * `pacing`: a chunked frame spread at the rate its viewer's path takes.
//! * `acks`: the ack path.
//! * [`window`]: the ack window that keeps a lost datagram or ack from stalling a viewer.

mod acks;
pub mod admission;
mod chunks;
pub mod data_path;
pub(crate) mod link;
mod pacing;
pub(crate) mod rate;
pub mod session;
pub mod window;

pub use data_path::DataPath;
