//! Sources: where frames come from, one file (or folder) per kind, all behind [`Source`].
//!
//! A source turns its input into frames for the one capture path ([`crate::capture`]):
//! raw pixels ([`RawFrame`], JPEG-encoded once by the capture path) or an already-encoded JPEG
//! ([`JpegFrame`], passed through untouched when it fits the datagram cap); the frame types
//! live in [`crate::frame`]. Whatever the number of watchers, each frame is captured once. A
//! source does not retry: when it fails it returns the error, and the capture path reports the
//! source lost, waits (capped exponential backoff) and runs it again. Tests feed scripted frames
//! through the same trait (moonfire's "a trait for test injection").
//!
//! Kinds:
//! * [`test_pattern`]: the built-in moving pattern (no camera needed).
//! * [`camera`]: V4L2 cameras through nokhwa.
//! * [`rtsp`]: RTSP cameras through retina (MJPEG passed through, H.264 decoded once).
//! * [`file`](mod@file): video files (played by ffmpeg), still images, folders of JPEGs.
//! * [`http`]: MJPEG streams and still-image URLs (`http://`), hyper client.
//! * [`udp`]: JPEG datagrams pushed by a camera (seed 001).
//! * [`tcp`]: JPEGs over TCP, length-prefixed (seed 004) or OAK ABCDE (seed 000), the camera
//!   connecting to surv (`tcp-listen://`) or surv to the camera (`tcp://`).
//!
//! Sources that are read by blocking calls (cameras, the test pattern) implement
//! [`FrameReader`] and run on a thread of their own through [`OnThread`], where their frames
//! are also encoded. The network and file sources (udp, tcp, http, rtsp, file) implement
//! [`Source`] directly as async code, and no CPU work runs on the runtime's threads: udp, tcp,
//! http and file hand each JPEG to [`FrameSink::publish`], which passes one that fits through on
//! their task and re-encodes one that does not on the blocking pool; rtsp hands its frames to a
//! worker thread of its own, which publishes MJPEG and decodes H.264 there.
//!
//! [`spec`] parses `--source` and builds the source it names.
//!
//! To add a kind: a file here implementing [`Source`] (or [`FrameReader`]), a `--source` form
//! in [`spec`] that builds it, a stand-in test; see docs/ARCHITECTURE.md.

pub mod blocking;
pub mod camera;
pub mod file;
pub mod http;
pub mod pacer;
pub mod rtsp;
pub mod spec;
pub mod tcp;
pub mod test_pattern;
pub mod udp;

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::capture::FrameSink;
use test_pattern::{MAX_FPS, MAX_HEIGHT_PX, MAX_WIDTH_PX, MIN_SIDE_PX};

pub use crate::frame::{JpegFrame, PixelFormat, RawFrame, MAX_DECODED_PIXELS};
pub use blocking::{FrameReader, OnThread};
pub use spec::{SourceOptions, SourceSpec};
pub use surv_proto::unix_micros_now;
pub use test_pattern::TestPattern;

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
