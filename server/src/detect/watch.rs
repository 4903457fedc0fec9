//! A camera's detector on the live stream, on a thread of its own (`detect-NAME`): it takes the
//! newest published frame whenever it is free (frames published while it was busy are never
//! seen, and counted as skipped: capture and watchers never wait for it), analyses every
//! `every`-th (and, with `--detect-on motion`, only while the camera's motion detector sees
//! motion), and reports presences to the journal (OBJECT-START, OBJECT-END, counts for MQTT)
//! and to [`DetectState`] (`/status`, `/metrics`).
//!
//! Frames published while the source is not live (the "no signal" picture) are not analysed;
//! what was present ends there, as motion events do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::model::{Model, Prepare};
use super::presence::{Change, Presence, Present};
use super::{DetectConfig, DetectOn, Detection, LABELS};
use crate::capture::{CaptureShared, FrameRx, SourceState};
use crate::journal::Journal;
use crate::motion::watch::{take_every, MotionState};

/// What the rest of the server reads about a camera's detector.
#[derive(Debug, Default)]
pub struct DetectState {
    /// The detector runs (the model loaded and `--detect` names labels for this camera).
    pub enabled: AtomicBool,
    /// Frames analysed; published frames it never saw (busy with an earlier one); frames that
    /// could not be analysed; presences started (OBJECT-START lines).
    pub analysed: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
    pub events: AtomicU64,
    /// Time spent analysing (decode, resize, model), µs in all and for the latest frame.
    pub busy_us: AtomicU64,
    pub last_us: AtomicU64,
    /// The labels it reports, comma-separated.
    pub labels: Mutex<String>,
    /// What is present now, and the latest analysed frame's objects (for the page's boxes).
    pub present: Mutex<Vec<Present>>,
    pub boxes: Mutex<Vec<Detection>>,
}

impl DetectState {
    pub fn present_now(&self) -> Vec<Present> {
        self.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn boxes_now(&self) -> Vec<Detection> {
        self.boxes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a detector thread needs.
pub struct Detect {
    pub camera: String,
    pub frames: FrameRx,
    pub config: DetectConfig,
    /// `None`: the model could not be loaded; only objects the camera itself reports (an OAK
    /// that detects on the device) are seen.
    pub model: Option<Arc<Model>>,
    pub capture: Arc<CaptureShared>,
    /// The camera's motion detector's state (read with `DetectOn::Motion`).
    pub motion: Arc<MotionState>,
    pub journal: Arc<Journal>,
    pub state: Arc<DetectState>,
    pub stop: CancellationToken,
}

/// Starts the detector's thread; the task returned ends when the thread has (after `stop`).
pub fn spawn(detect: Detect) -> std::io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("detect-{}", detect.camera))
        .spawn(move || {
            run(detect, &runtime);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}

fn run(d: Detect, runtime: &tokio::runtime::Handle) {
    let Detect {
        mut frames,
        config,
        model,
        capture,
        motion,
        journal,
        state,
        stop,
        ..
    } = d;
    let every = config.every.max(1);
    *state.labels.lock().unwrap_or_else(|p| p.into_inner()) = config.label_list();
    state.enabled.store(true, Relaxed);
    // An H.264 camera passed through decodes pictures while the detector runs.
    let _pictures = capture.want_pictures();
    let mut presence = Presence::new(config.hold);
    let mut prepare = Prepare::default();
    let report = Report {
        journal,
        state: state.clone(),
    };
    let mut last_seen: Option<u64> = None;
    let mut last_analysed: Option<u64> = None;
    loop {
        let changed = runtime.block_on(async {
            tokio::select! {
                () = stop.cancelled() => false,
                changed = frames.changed() => changed.is_ok(),
            }
        });
        if !changed {
            break;
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        if let Some(seen) = last_seen {
            if frame.seq > seen + 1 {
                state.skipped.fetch_add(frame.seq - seen - 1, Relaxed);
            }
        }
        last_seen = Some(frame.seq);
        if !matches!(capture.state(), SourceState::Live) {
            report.changes(&presence.finish(), &presence);
            carry(&capture, &presence, &[]);
            last_analysed = None;
            continue;
        }
        let at_us = frame.capture_unix_us;
        let ended = presence.tick(at_us);
        if !ended.is_empty() {
            report.changes(&ended, &presence);
            carry(&capture, &presence, &state.boxes_now());
        }
        // A camera that detects on the device says what every frame shows: that is taken as
        // it comes, at no cost, instead of the model's view.
        let found: Vec<Detection> = if let Some(objects) = capture.device_objects(frame.seq) {
            objects
                .iter()
                .filter(|d| config.classes.contains(&d.class))
                .copied()
                .collect()
        } else {
            if config.on == DetectOn::Motion && !motion.active.load(Relaxed) {
                continue;
            }
            if !take_every(&mut last_analysed, frame.seq, every) {
                continue;
            }
            let (Some(model), Some(jpeg)) = (&model, frame.jpeg()) else {
                continue;
            };
            let started = Instant::now();
            let found = prepare
                .jpeg(jpeg)
                .and_then(|input| model.detect(input, config.threshold));
            let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            state.busy_us.fetch_add(took_us, Relaxed);
            state.last_us.store(took_us, Relaxed);
            match found {
                Ok(found) => found
                    .into_iter()
                    .filter(|d| config.classes.contains(&d.class))
                    .collect(),
                Err(e) => {
                    if state.failed.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(error = %e, "detection: a frame could not be analysed");
                    }
                    continue;
                }
            }
        };
        state.analysed.fetch_add(1, Relaxed);
        let changes = presence.analysed(at_us, &found);
        carry(&capture, &presence, &found);
        *state.boxes.lock().unwrap_or_else(|p| p.into_inner()) = found;
        report.changes(&changes, &presence);
    }
    // The camera ends: nothing is left present in the journal.
    report.changes(&presence.finish(), &presence);
    carry(&capture, &presence, &[]);
    state
        .boxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

/// Sets what the camera's frames carry from now on ([`surv_proto::objects`]): every box of the
/// latest analysed frame whose label is present, and for a label present but missed by that
/// frame (within its hold), its last box.
fn carry(capture: &CaptureShared, presence: &Presence, latest: &[Detection]) {
    let present = presence.present();
    let object = |class: usize, score: f32, region: [f32; 4]| surv_proto::Object {
        label: LABELS.get(class).copied().unwrap_or("unknown").to_string(),
        score,
        region,
    };
    let mut objects: Vec<surv_proto::Object> = latest
        .iter()
        .filter(|d| present.iter().any(|p| p.class == d.class))
        .map(|d| object(d.class, d.score, d.region))
        .collect();
    for p in present {
        if !latest.iter().any(|d| d.class == p.class) {
            objects.push(object(p.class, p.score, p.region));
        }
    }
    let segment = surv_proto::objects::encode(&objects);
    capture.set_objects_segment(bytes::Bytes::from(segment));
}

/// Where the detector's findings go.
struct Report {
    journal: Arc<Journal>,
    state: Arc<DetectState>,
}

impl Report {
    fn changes(&self, changes: &[Change], presence: &Presence) {
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match *change {
                Change::Start {
                    class,
                    at_us,
                    score,
                    region,
                } => {
                    self.state.events.fetch_add(1, Relaxed);
                    tracing::info!(label = LABELS[class], score, "object seen");
                    self.journal
                        .object_start(at_us, LABELS[class], score, region);
                }
                Change::Count { class, count } => self.journal.object_count(LABELS[class], count),
                Change::End {
                    class,
                    start_us,
                    end_us,
                    peak,
                    region,
                } => {
                    tracing::info!(
                        label = LABELS[class],
                        duration_s = end_us.saturating_sub(start_us) as f64 / 1e6,
                        "object gone"
                    );
                    self.journal
                        .object_end(start_us, end_us, LABELS[class], peak, region);
                }
            }
        }
        *self.state.present.lock().unwrap_or_else(|p| p.into_inner()) = presence.present().to_vec();
    }
}
