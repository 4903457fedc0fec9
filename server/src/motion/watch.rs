//! The motion detector on the live stream: takes every Nth published frame (by sequence
//! number; every frame that comes when they come further apart), analyses it off the capture path, and reports events to the journal (and through
//! it to MQTT: start, an update at most every [`UPDATE_EVERY_US`] while motion goes on, end), to
//! the capture (frames published during an event carry the motion flag in their tag) and to
//! whoever reads [`MotionState`] (`/status`, metrics).
//!
//! Frames published while the source is not live (the "no signal" picture) are not analysed;
//! an event under way when the source goes ends there (at its last frame with motion), and the
//! comparison starts afresh when the source is back, so an outage is never motion.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{thumbnail, Detector, MotionBox, MotionConfig, MotionEvent};
use crate::capture::{CaptureShared, FrameRx, SourceState};
use crate::journal::Journal;
use crate::jpeg::JpegReader;

/// While an event runs, how often its score and box are told to subscribers (µs of capture time).
pub const UPDATE_EVERY_US: u64 = 1_000_000;

/// What the rest of the server reads about motion.
#[derive(Debug, Default)]
pub struct MotionState {
    /// The detector runs (`--motion on`).
    pub enabled: AtomicBool,
    /// An event is under way.
    pub active: AtomicBool,
    /// Frames analysed, events started, frames that could not be analysed.
    pub analysed: AtomicU64,
    pub events: AtomicU64,
    pub failed: AtomicU64,
    /// The latest score, in hundredths of a percent.
    pub score_bp: AtomicU32,
}

/// Where the detector's findings go.
struct Report {
    capture: Arc<CaptureShared>,
    journal: Arc<Journal>,
    state: Arc<MotionState>,
    /// Capture time of the last update told, to space them out.
    last_update_us: u64,
}

impl Report {
    fn active(&self, active: bool) {
        self.state.active.store(active, Relaxed);
        self.capture.set_motion(active);
    }

    fn event(&mut self, event: MotionEvent) {
        match event {
            MotionEvent::Start {
                at_us,
                score,
                region,
            } => {
                self.state.events.fetch_add(1, Relaxed);
                self.last_update_us = at_us;
                tracing::info!(score = score * 100.0, "motion started");
                self.journal.motion_start(at_us, score, corners(region));
            }
            MotionEvent::End {
                start_us,
                end_us,
                peak,
                region,
            } => {
                tracing::info!(
                    duration_s = end_us.saturating_sub(start_us) as f64 / 1e6,
                    "motion ended"
                );
                self.journal
                    .motion_end(start_us, end_us, peak, corners(region));
            }
        }
    }

    /// An event runs and the frame at `at_us` showed motion scoring `score`.
    fn maybe_update(&mut self, detector: &Detector, at_us: u64, score: f32) {
        let Some((start_us, peak, region)) = detector.current() else {
            return;
        };
        if at_us.saturating_sub(self.last_update_us) < UPDATE_EVERY_US {
            return;
        }
        self.last_update_us = at_us;
        self.journal
            .motion_update(at_us, start_us, score, peak, corners(region));
    }
}

/// Runs the detector on every `every`-th frame of `frames` until `stop`.
pub async fn run(
    mut frames: FrameRx,
    every: u64,
    cfg: MotionConfig,
    capture: Arc<CaptureShared>,
    journal: Arc<Journal>,
    state: Arc<MotionState>,
    stop: CancellationToken,
) {
    let every = every.max(1);
    let mut detector = Detector::new(cfg);
    // Renewed after a frame it fails on, so one bad frame costs one analysis.
    let mut decompressor = JpegReader::new();
    if let Err(e) = decompressor.run(|_| Ok::<_, turbojpeg::Error>(())) {
        tracing::error!(error = %e, "motion detection cannot start");
        return;
    }
    state.enabled.store(true, Relaxed);
    // The detector looks at pictures: a camera that must decode to make them (H.264 passed
    // through) does, while it runs: its keyframes alone (one picture a keyframe interval), or
    // every frame.
    let _pictures = match cfg.h264_keyframes_only {
        true => capture.want_keyframe_pictures(),
        false => capture.want_pictures(),
    };
    let mut report = Report {
        capture: capture.clone(),
        journal,
        state: state.clone(),
        last_update_us: 0,
    };
    let mut thumb = Vec::new();
    let mut was_live = false;
    let mut last_seq: Option<u64> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = frames.changed() => if changed.is_err() { break },
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        let live = matches!(capture.state(), SourceState::Live);
        if !live {
            if was_live {
                // The picture will be a different one when the source is back.
                if let Some(end) = detector.finish() {
                    report.event(end);
                }
                report.active(false);
                detector = Detector::new(cfg);
            }
            was_live = false;
            continue;
        }
        was_live = true;
        // Every `every`-th frame: by distance from the last one analysed, as frames may come
        // with gaps (a passed-through camera's keyframes alone are far apart). A sequence that
        // went back (a new capture) starts afresh.
        if !take_every(&mut last_seq, frame.seq, every) {
            continue;
        }
        // Analysed as a JPEG: a frame of another codec is skipped.
        let Some(jpeg) = frame.jpeg() else {
            continue;
        };
        let (w, h) = match thumbnail(&mut decompressor, jpeg, &mut thumb) {
            Ok(size) => size,
            Err(e) => {
                if state.failed.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(error = %e, "motion: a frame could not be analysed");
                }
                continue;
            }
        };
        let at_us = frame.capture_unix_us;
        let (analysis, event) = detector.analyse(&thumb, w, h, at_us);
        state.analysed.fetch_add(1, Relaxed);
        state
            .score_bp
            .store((analysis.score * 10_000.0) as u32, Relaxed);
        report.active(analysis.active);
        match event {
            Some(event) => report.event(event),
            None if analysis.score * 100.0 >= cfg.threshold_pct => {
                report.maybe_update(&detector, at_us, analysis.score);
            }
            None => {}
        }
    }
    // The server stops: an event under way is not left open in the journal.
    if let Some(end) = detector.finish() {
        report.event(end);
    }
    report.active(false);
}

/// Whether frame `seq` is due, every `every`-th by distance from the last one taken (`last`,
/// updated when it is): frames may come with gaps. A sequence that went back (a new capture)
/// starts afresh.
pub(crate) fn take_every(last: &mut Option<u64>, seq: u64, every: u64) -> bool {
    if let Some(last) = *last {
        if seq > last && seq - last < every {
            return false;
        }
    }
    *last = Some(seq);
    true
}

fn corners(b: MotionBox) -> [f32; 4] {
    [b.x, b.y, b.w, b.h]
}
