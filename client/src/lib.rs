//! surv-client as a library: register with a surv server, receive its JPEG datagrams, ack each,
//! decode them for the display, record rolling segments, and report what arrived.
//!
//! * [`receiver`]: registration and the receive/ack loop ([`run`] is its entry point).
//! * [`decoder`]: the decoding thread (every frame received is decoded, off the network path).
//! * [`display`]: the window.
//! * [`recorder`], [`avi`]: rolling AVI segments.
//! * [`stats`]: loss, latency and the exit summary.

pub mod avi;
pub mod decoder;
pub mod display;
pub mod receiver;
pub mod recorder;
pub mod stats;

pub use receiver::{run, ClientError, Config};
pub use stats::Summary;
