//! Sources read by blocking calls (a camera, the test pattern), each run on a thread of its own.
//!
//! [`FrameReader`] is what such a source implements: a blocking `next_frame` that fills a
//! reused [`RawFrame`]. [`OnThread`] turns an opener of readers into a [`Source`]: each run opens
//! a reader on a new thread (some camera handles cannot move between threads), hands every frame
//! to the capture path on that thread (so that each frame is captured and encoded there), and
//! returns the reader's error when it stops delivering. A frame that is unusable on its own
//! ([`SourceError::BadFrame`]) is counted and skipped; any other error ends the run.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{Source, SourceError, SourceRun};
use crate::capture::{FrameSink, StreamShape};
use crate::frame::RawFrame;

/// A source that blocks until its next frame is due or available.
pub trait FrameReader: Send + 'static {
    /// What the source is, for logs, e.g. "test pattern 640x480@30".
    fn describe(&self) -> String;
    /// Frame size in pixels, as negotiated.
    fn size(&self) -> (u32, u32);
    /// Frames per second, as negotiated.
    fn fps(&self) -> u32;
    /// Blocks until the next frame is due/available and fills `frame` (reusing its buffer).
    /// Sets `capture_unix_us` (microseconds since the Unix epoch, from `SystemTime`) at capture.
    fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError>;
}

/// Opens a reader; called on the capture thread at every (re)open.
pub type Opener = dyn FnMut() -> Result<Box<dyn FrameReader>, SourceError> + Send;

/// A [`FrameReader`] run on a thread of its own as a [`Source`].
pub struct OnThread {
    what: String,
    open: Arc<Mutex<Box<Opener>>>,
}

impl OnThread {
    /// `what` names the source before it is open (e.g. "camera 0"); `open` opens it.
    pub fn new<F>(what: impl Into<String>, open: F) -> OnThread
    where
        F: FnMut() -> Result<Box<dyn FrameReader>, SourceError> + Send + 'static,
    {
        OnThread {
            what: what.into(),
            open: Arc::new(Mutex::new(Box::new(open))),
        }
    }
}

impl Source for OnThread {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (open, sink_for_thread, stop_for_thread) =
            (self.open.clone(), sink.clone(), stop.clone());
        let what = self.what.clone();
        let spawned = std::thread::Builder::new()
            .name("surv-capture".into())
            .spawn(move || {
                let result = read_all(&open, &sink_for_thread, &stop_for_thread);
                let _ = done_tx.send(result);
            });
        Box::pin(async move {
            if let Err(e) = spawned {
                return Err(SourceError::Read {
                    device: what,
                    reason: format!("cannot start the capture thread: {e}"),
                });
            }
            done_rx.await.unwrap_or_else(|_| {
                Err(SourceError::Read {
                    device: what,
                    reason: "the capture thread panicked".into(),
                })
            })
        })
    }
}

/// Opens a reader and delivers its frames to `sink` until it fails or `stop`.
fn read_all(
    open: &Mutex<Box<Opener>>,
    sink: &FrameSink,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    let mut reader = {
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        (*open)()?
    };
    let (width, height) = reader.size();
    sink.opened(
        &reader.describe(),
        StreamShape {
            width,
            height,
            fps: reader.fps(),
        },
    );
    let mut frame = RawFrame::new();
    while !stop.is_cancelled() {
        match reader.next_frame(&mut frame) {
            Ok(()) => sink.publish_raw(&frame),
            Err(e @ SourceError::BadFrame { .. }) => sink.reject(&e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
