//! surv-client as a library: register with a surv server, receive its JPEG datagrams, ack each,
//! decode them for the display, record rolling segments, and report what arrived.
//!
//! * [`receiver`]: registration and the receive/ack loop ([`run`] is its entry point).
//! * [`repair`]: a chunked session's `nack`s: when to ask for missing chunks, when to give up.
//! * [`decoder`]: the decoding thread (every frame received is decoded, off the network path).
//! * [`display`]: the window.
//! * [`recorder`]: rolling segments, crash-safe, with [`retention`]; [`avi`] (MJPEG as received)
//!   or fragmented MP4 of H.264 from [`h264`] (`surv_codec::fmp4`, shared with the server).
//! * [`pipe`]: `--pipe`, the received JPEGs on standard output as an MJPEG stream.
//! * [`stats`]: loss, latency and the exit summary.

pub mod avi;
pub mod decoder;
pub mod display;
pub mod h264;
pub mod pipe;
pub mod receiver;
pub mod recorder;
pub mod repair;
pub mod retention;
pub mod stats;

pub use receiver::{run, ClientError, Config};
pub use stats::Summary;
