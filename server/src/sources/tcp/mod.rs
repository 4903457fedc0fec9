//! TCP camera sources: `tcp-listen://` (the camera connects to surv: seed 004's `sendvid.py`,
//! OAK PoE `tcp_streaming_client`) and `tcp://` (surv connects to the camera: OAK PoE
//! `tcp_streaming_server`, or an OAK whose script detects on the device), both speaking any
//! framing of [`framing`], told apart per connection.
//!
//! * [`framing`]: the sans-I/O decoder (length prefix, or an ABCDE header of 32 bytes or of
//!   256 with the device's detections; capped).
//! * [`pylit`]: the Python literals the detections are written as.
//! * [`oak`]: the device's detections made into surv's, sent on with their frame.
//! * [`conn`]: one connection read under its idle and frame deadlines.
//! * [`listen`]: the listener kept across the camera's reconnects, one pusher at a time.
//! * [`connect`]: one outgoing connection per run; the capture path reconnects with backoff.
//! * [`peers`]: per-cause counters and rate-limited logs (shared with [`super::udp`]).
//!
//! Frames go to the sink through [`crate::capture::FrameSink::publish`]: one that passes
//! through on the reading task, a JPEG too big for the datagram cap decoded and re-encoded on
//! the blocking pool, which must not stall the reactor.

pub mod conn;
pub mod connect;
pub mod framing;
pub mod listen;
pub mod oak;
pub mod peers;
pub mod pylit;
#[cfg(test)]
mod tests;

pub use conn::Deadlines;
pub use connect::TcpConnectSource;
pub use listen::TcpListenSource;
pub use peers::{Cause, PeerStats};

/// Whether `payload` is one whole JPEG picture (SOI, a frame and a scan, EOI:
/// [`crate::jpeg::check`]). Only a picture may take a source over from the camera feeding it.
pub(crate) fn is_whole_jpeg(payload: &[u8]) -> bool {
    crate::jpeg::check(payload).is_ok()
}
