//! Capture and encode, once per frame, on a thread of their own; the newest frame is published
//! to every session through a `watch` channel, shared, never copied.
//!
//! The capture thread never waits for a viewer: publishing replaces the previous frame whatever
//! the sessions are doing. A source error is logged and retried with a pause, so an unplugged
//! camera that comes back resumes the stream.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::encoder::{EncodedFrame, Encoder, EncoderConfig};
use crate::source::{PixelFormat, RawFrame, Source, SourceError};

/// One encoded frame, shared by every session that sends it.
pub type SharedFrame = Arc<EncodedFrame>;

/// The newest frame (`None` until the first one is captured).
pub type FrameRx = watch::Receiver<Option<SharedFrame>>;

/// Pause after a failed capture before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// While capture keeps failing, how often the failure is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters a test or the load tool reads to prove "one encode per captured frame".
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames encoded and published (at most one per captured frame).
    pub encoded: AtomicU64,
    /// turbojpeg compress calls; above `encoded` only while the quality adapts to the cap.
    pub encode_attempts: AtomicU64,
    /// Capture or encode failures.
    pub errors: AtomicU64,
    /// Total time spent encoding, µs.
    pub encode_us: AtomicU64,
    /// JPEG quality in use.
    pub quality: AtomicU32,
}

/// What the source delivers, learned once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamShape {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// A running capture thread.
pub struct Capture {
    pub frames: FrameRx,
    pub stats: Arc<CaptureStats>,
    pub shape: StreamShape,
    thread: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("encoder: {0}")]
    Encoder(String),
    #[error("the capture thread could not start: {0}")]
    Thread(String),
}

impl Capture {
    /// Opens the source on a new thread (some camera handles cannot move between threads),
    /// waits until it is open, then captures until `shutdown` is cancelled or the Capture is dropped.
    pub fn start<F>(
        open: F,
        encoder: EncoderConfig,
        shutdown: CancellationToken,
    ) -> Result<Capture, CaptureError>
    where
        F: FnOnce() -> Result<Box<dyn Source>, SourceError> + Send + 'static,
    {
        let mut encoder =
            Encoder::new(encoder).map_err(|e| CaptureError::Encoder(e.to_string()))?;
        let (tx, frames) = watch::channel(None);
        let stats = Arc::new(CaptureStats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let stop = shutdown.child_token();
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("surv-capture".into())
                .spawn(move || {
                    let mut source = match open() {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let (width, height) = source.size();
                    let _ = ready_tx.send(Ok(StreamShape {
                        width,
                        height,
                        fps: source.fps(),
                    }));
                    tracing::info!(source = %source.describe(), "capturing");
                    capture_loop(source.as_mut(), &mut encoder, &tx, &stats, &stop);
                })
                .map_err(|e| CaptureError::Thread(e.to_string()))?
        };
        let shape = match ready_rx.recv() {
            Ok(Ok(shape)) => shape,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.into());
            }
            Err(_) => {
                return Err(CaptureError::Thread(
                    "it ended before opening the source".into(),
                ))
            }
        };
        Ok(Capture {
            frames,
            stats,
            shape,
            thread: Some(thread),
            stop,
        })
    }

    /// Stops capturing and waits for the thread (at most one frame interval).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn capture_loop(
    source: &mut dyn Source,
    encoder: &mut Encoder,
    tx: &watch::Sender<Option<SharedFrame>>,
    stats: &CaptureStats,
    stop: &CancellationToken,
) {
    let (width, height) = source.size();
    let mut raw = RawFrame {
        width,
        height,
        format: PixelFormat::I420,
        data: Vec::new(),
        capture_unix_us: 0,
    };
    let mut seq = 0u64;
    let mut last_error_log: Option<Instant> = None;
    while !stop.is_cancelled() {
        if let Err(e) = source.next_frame(&mut raw) {
            stats.errors.fetch_add(1, Relaxed);
            // One line when the trouble starts, then one every ten seconds while it lasts.
            if last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
                tracing::error!(error = %e, "capture failed; retrying");
                last_error_log = Some(Instant::now());
            }
            std::thread::sleep(RETRY_PAUSE);
            continue;
        }
        if last_error_log.take().is_some() {
            tracing::info!("capture recovered");
        }
        stats.captured.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        match encoder.encode(&raw, seq) {
            Ok(frame) => {
                stats
                    .encode_us
                    .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
                stats
                    .encode_attempts
                    .fetch_add(u64::from(frame.attempts), Relaxed);
                stats.quality.store(u32::from(frame.quality), Relaxed);
                stats.encoded.fetch_add(1, Relaxed);
                tx.send_replace(Some(Arc::new(frame)));
            }
            Err(e) => {
                stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(seq, error = %e, "frame dropped: it could not be encoded under the cap");
            }
        }
        seq += 1;
    }
}
