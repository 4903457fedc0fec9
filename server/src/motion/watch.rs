//! The motion detector on the live stream: takes every Nth published frame (by sequence
//! number), analyses it off the capture path, and reports events to the journal and to whoever
//! reads [`MotionState`] (the frame tag, `/status`, metrics).
//!
//! Frames published while the source is not live (the "no signal" picture) are not analysed,
//! and the comparison starts afresh when the source is back, so an outage is never motion.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{thumbnail, Detector, MotionBox, MotionConfig, MotionEvent};
use crate::capture::{CaptureShared, FrameRx, SourceState};
use crate::journal::Journal;

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
    let mut decompressor = match turbojpeg::Decompressor::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "motion detection cannot start");
            return;
        }
    };
    state.enabled.store(true, Relaxed);
    let mut thumb = Vec::new();
    let mut was_live = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = frames.changed() => if changed.is_err() { return },
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        let live = matches!(capture.state(), SourceState::Live);
        if !live {
            if was_live {
                // The picture will be a different one when the source is back.
                detector = Detector::new(cfg);
            }
            was_live = false;
            continue;
        }
        was_live = true;
        if frame.seq % every != 0 {
            continue;
        }
        let (w, h) = match thumbnail(&mut decompressor, &frame.datagram, &mut thumb) {
            Ok(size) => size,
            Err(e) => {
                if state.failed.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(error = %e, "motion: a frame could not be analysed");
                }
                continue;
            }
        };
        let (analysis, event) = detector.analyse(&thumb, w, h, frame.capture_unix_us);
        state.analysed.fetch_add(1, Relaxed);
        state
            .score_bp
            .store((analysis.score * 10_000.0) as u32, Relaxed);
        state.active.store(analysis.active, Relaxed);
        match event {
            Some(MotionEvent::Start {
                at_us,
                score,
                region,
            }) => {
                state.events.fetch_add(1, Relaxed);
                tracing::info!(score = score * 100.0, "motion started");
                journal.motion_start(at_us, score, corners(region));
            }
            Some(MotionEvent::End {
                start_us,
                end_us,
                peak,
                region,
            }) => {
                tracing::info!(
                    duration_s = end_us.saturating_sub(start_us) as f64 / 1e6,
                    "motion ended"
                );
                journal.motion_end(start_us, end_us, peak, corners(region));
            }
            None => {}
        }
    }
}

fn corners(b: MotionBox) -> [f32; 4] {
    [b.x, b.y, b.w, b.h]
}
