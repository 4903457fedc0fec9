//! Sources: where frames come from, one file (or folder) per kind, all behind [`Source`].
//!
//! A source turns its input into frames for the one capture path ([`crate::capture`]):
//! raw pixels ([`RawFrame`], JPEG-encoded once by the capture path) or an already-encoded JPEG
//! (passed through untouched when it fits the datagram cap). Whatever the number of watchers,
//! each frame is captured once. A source does not retry: when it fails it returns the error,
//! and the capture path reports the source lost, waits (capped exponential backoff) and runs it
//! again. Tests feed scripted frames through the same trait (moonfire's "a trait for test
//! injection").
//!
//! Kinds:
//! * [`test_pattern`]: the built-in moving pattern (no camera needed).
//! * [`camera`]: V4L2 cameras through nokhwa.
//! * [`rtsp`]: RTSP cameras through retina (MJPEG passed through, H.264 decoded once).
//! * [`file`]: video files (played by ffmpeg), still images, folders of JPEGs.
//! * [`http`]: MJPEG streams and still-image URLs (`http://`), hyper client.
//! * [`no_signal`]: not a source: the picture shown while the source is not delivering.
//! * [`udp`]: JPEG datagrams pushed by a camera (seed 001).
//! * [`tcp`]: JPEGs over TCP, length-prefixed (seed 004) or OAK ABCDE (seed 000), the camera
//!   connecting to surv (`tcp-listen://`) or surv to the camera (`tcp://`).
//!
//! Sources that are read by blocking calls (cameras, the test pattern) implement
//! [`FrameReader`] and run on a thread of their own through [`OnThread`]; network sources
//! (udp, tcp, http, rtsp, file) implement [`Source`] directly as async code.
//!
//! [`spec`] parses `--source` and builds the source it names.
//!
//! To add a kind: a file here implementing [`Source`] (or [`FrameReader`]), a `--source` form
//! in [`spec`] that builds it, a stand-in test; see docs/ARCHITECTURE.md.

pub mod blocking;
pub mod camera;
pub mod file;
pub mod http;
pub mod no_signal;
pub mod pacer;
pub mod rtsp;
pub mod spec;
pub mod tcp;
pub mod test_pattern;
pub mod udp;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::capture::FrameSink;
use test_pattern::{MAX_FPS, MAX_HEIGHT_PX, MAX_WIDTH_PX, MIN_SIDE_PX};

pub use blocking::{FrameReader, OnThread};
pub use spec::{SourceOptions, SourceSpec};
pub use surv_proto::unix_micros_now;
pub use test_pattern::TestPattern;

/// How the bytes of a [`RawFrame`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Planar YCbCr 4:2:0, full range (as JPEG stores it): the Y plane (`width × height`), then
    /// U (Cb), then V (Cr), each `ceil(width / 2) × ceil(height / 2)`. Rows are not padded.
    I420,
    /// Packed R, G, B bytes, rows of `3 × width` bytes, not padded.
    Rgb24,
}

impl PixelFormat {
    /// Bytes in one `width × height` frame of this format; `None` if that overflows `usize`.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (usize::try_from(width).ok()?, usize::try_from(height).ok()?);
        match self {
            PixelFormat::I420 => {
                let chroma = w.div_ceil(2).checked_mul(h.div_ceil(2))?;
                w.checked_mul(h)?.checked_add(chroma.checked_mul(2)?)
            }
            PixelFormat::Rgb24 => w.checked_mul(h)?.checked_mul(3),
        }
    }
}

/// One uncompressed frame, as a source produced it.
pub struct RawFrame {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Exactly `format.frame_bytes(width, height)` bytes once a source has filled the frame.
    pub data: Vec<u8>,
    /// Capture time, microseconds since the Unix epoch, server clock.
    pub capture_unix_us: u64,
}

impl RawFrame {
    /// An empty frame for [`Source::next_frame`] to fill; its buffer grows on first use.
    pub fn new() -> Self {
        RawFrame {
            width: 0,
            height: 0,
            format: PixelFormat::I420,
            data: Vec::new(),
            capture_unix_us: 0,
        }
    }
}

impl Default for RawFrame {
    fn default() -> Self {
        RawFrame::new()
    }
}

impl fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("data_bytes", &self.data.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .finish()
    }
}

/// Why a source could not be created or could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "unsupported frame size {width}x{height}: width and height must be even, \
         from {min}x{min} to {max_w}x{max_h}",
        min = MIN_SIDE_PX,
        max_w = MAX_WIDTH_PX,
        max_h = MAX_HEIGHT_PX
    )]
    Size { width: u32, height: u32 },
    #[error("unsupported frame rate {fps}: must be 1 to {max} frames per second", max = MAX_FPS)]
    Fps { fps: u32 },
    #[error("cannot open {device}: {reason}")]
    Open { device: String, reason: String },
    /// The source stopped delivering frames; later calls will fail too.
    #[error("reading a frame from {device}: {reason}")]
    Read { device: String, reason: String },
    /// This one frame was unusable (e.g. a corrupt MJPEG frame); the next call may succeed.
    #[error("unusable frame from {device}: {reason}")]
    BadFrame { device: String, reason: String },
    /// The source played to its end and has nothing more (a video file without `--loop`): it
    /// is not run again; watchers see the "no signal" frame.
    #[error("{device} ended")]
    Finished { device: String },
}

/// The largest picture surv decodes (8K UHD): a JPEG header claiming more is rejected before
/// anything is allocated for it.
pub const MAX_DECODED_PIXELS: u64 = 7680 * 4320;

/// An already-encoded JPEG from a source that delivers JPEG (a network camera, a folder of
/// images): passed through without re-encoding when it fits the datagram cap.
#[derive(Clone)]
pub struct JpegFrame {
    /// One whole JPEG, SOI to EOI.
    pub jpeg: Bytes,
    /// Capture time, microseconds since the Unix epoch, server clock (arrival time when the
    /// source does not say).
    pub capture_unix_us: u64,
}

impl fmt::Debug for JpegFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JpegFrame")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .finish()
    }
}

/// What the capture path's watchdog does when a source stops delivering frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStall {
    /// Ends the run and opens the source again (every source surv connects to or opens).
    Reopen,
    /// Reports the source lost and lets the run go on: a source that cameras push to keeps its
    /// listening socket, and the camera's next frame brings it back.
    Report,
}

/// What a [`Source::run`] future resolves to.
pub type SourceRun<'a> = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>>;

/// Where frames come from: a camera, the test pattern, a network camera, a test's script.
pub trait Source: Send + 'static {
    /// What the source is, for logs and the journal, e.g. "test pattern 640x480@30".
    fn describe(&self) -> String;

    /// Opens the source and hands every frame to `sink` until the source fails (`Err`, with
    /// why) or `stop` is cancelled (`Ok`). Called again by the capture path after a failure,
    /// so it must open afresh each time (except after [`SourceError::Finished`]). It calls
    /// [`FrameSink::opened`] once open, before the first frame.
    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a>;

    /// What the watchdog does when no frame comes in time ([`crate::capture`]).
    fn on_stall(&self) -> OnStall {
        OnStall::Reopen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_format_sizes() {
        assert_eq!(PixelFormat::I420.frame_bytes(640, 480), Some(460_800));
        assert_eq!(PixelFormat::I420.frame_bytes(3, 3), Some(9 + 2 * 4));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(4, 2), Some(24));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(u32::MAX, u32::MAX), None);
    }
}
