//! The display side of the recorder: [`spawn`] starts the recorder thread, and
//! [`RecorderHandle`] queues frames for it without ever blocking, counting those it refuses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tracing::{error, trace, warn};

use super::storage::{Disk, SegmentStore};
use super::writer::SegmentWriter;
use super::{RecFrame, RecorderConfig, RecorderError, RecorderReport, QUEUE_FRAMES};

/// Frame rate assumed when the stream does not say: 30 fps.
const DEFAULT_FPS: u32 = 30;

/// At most one "dropping frames" warning per this interval.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// The display side of the recorder: push frames, then [`finish`](Self::finish).
///
/// Dropped without `finish`, the thread still closes the segment, but in the background: a
/// process that exits right after may leave it as `.part`.
pub struct RecorderHandle {
    tx: SyncSender<RecFrame>,
    /// Frames refused because the queue was full or the thread was gone.
    refused: AtomicU64,
    /// When refusals were last logged, ms after `started`; `u64::MAX` for never. A disk that
    /// is just too slow refuses every few frames: that is one warning per interval, not a flood.
    refusal_logged_ms: AtomicU64,
    started: Instant,
    thread: JoinHandle<RecorderReport>,
}

/// Starts the recorder thread for a stream of `stream_fps` frames per second (0: unknown).
///
/// A directory that cannot be created or written to is logged as an error, not returned: the
/// stream goes on, and recording starts by itself once the directory is usable.
pub fn spawn(cfg: RecorderConfig, stream_fps: u32) -> Result<RecorderHandle, RecorderError> {
    spawn_with(cfg, stream_fps, Disk)
}

impl RecorderHandle {
    /// Queues a frame for recording. Never blocks: returns false, and counts the frame as
    /// dropped, if the queue is full.
    pub fn push(&self, f: RecFrame) -> bool {
        match self.tx.try_send(f) {
            Ok(()) => true,
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                let dropped = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let logged_ms = self.refusal_logged_ms.load(Ordering::Relaxed);
                let due = logged_ms == u64::MAX
                    || now_ms.saturating_sub(logged_ms) >= REFUSAL_LOG_INTERVAL_MS;
                if due
                    && self
                        .refusal_logged_ms
                        .compare_exchange(logged_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    warn!(
                        frames_dropped = dropped,
                        "recorder falling behind (slow disk or encoder), dropping frames from the \
                         recording"
                    );
                }
                trace!(capture_unix_us = f.capture_unix_us, "recorder queue full");
                false
            }
        }
    }

    /// Records what is queued, closes the current segment properly and stops the thread.
    pub fn finish(self) -> RecorderReport {
        let RecorderHandle {
            tx,
            refused,
            thread,
            ..
        } = self;
        drop(tx);
        let mut report = thread.join().unwrap_or_else(|_| {
            // The thread does not panic by design; if it did, its segments are unaccounted.
            error!("recorder thread panicked; the last segment may be left as .part");
            RecorderReport::default()
        });
        report.frames_dropped += refused.into_inner();
        report
    }
}

/// [`spawn`] with the segment files created in `store`: the disk, or in tests one that fails.
pub(super) fn spawn_with<S: SegmentStore>(
    cfg: RecorderConfig,
    stream_fps: u32,
    store: S,
) -> Result<RecorderHandle, RecorderError> {
    if cfg.segment.is_zero() {
        return Err(RecorderError::ZeroSegment);
    }
    let fps = if stream_fps == 0 {
        DEFAULT_FPS
    } else {
        stream_fps
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
    let span = tracing::info_span!("recorder", dir = %cfg.dir.display(), format = %cfg.format);
    // The thread logs to the caller's subscriber, also when it is a thread-local default.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let writer = SegmentWriter::new(cfg, fps, store);
    let thread = thread::Builder::new()
        .name("surv-recorder".into())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || span.in_scope(|| writer.run(rx)))
        })
        .map_err(RecorderError::Spawn)?;
    Ok(RecorderHandle {
        tx,
        refused: AtomicU64::new(0),
        refusal_logged_ms: AtomicU64::new(u64::MAX),
        started: Instant::now(),
        thread,
    })
}
