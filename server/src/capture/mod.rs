//! The one capture path: runs the source, keeps it alive, and publishes each frame once.
//!
//! ```text
//! Source::run ──frames──▶ FrameSink ──encode once / pass through──▶ watch<newest frame> ──▶ watchers
//!      ▲  │ error                │
//!      │  ▼                      └─ SOURCE-LOST / SOURCE-BACK (journal), counters
//!   supervise: backoff, run again
//! ```
//!
//! [`Capture::start`] spawns the supervisor task. It runs the source; when the source fails or
//! ends, the supervisor reports it lost (once per outage), waits with capped exponential
//! backoff ([`backoff`]) and runs it again, until shutdown.
//!
//! One watchdog for every kind of source (`watch_run`): a source that stops delivering
//! without failing (a camera that keeps its connection open and sends a byte now and then, a
//! proxy that answers but forwards nothing) is an outage too. No frame for [`stall_after`]
//! (5 s, or 10 frame intervals for slower sources) ends the run with the reason "no frame for
//! N s", and the source is opened again; a run that has not delivered its first frame
//! [`FIRST_FRAME_WITHIN`] after it started is ended the same way. Sources that cameras push to
//! ([`OnStall::Report`]) are only reported lost: their listening socket stays, and the
//! camera's next frame brings them back. Watchers stay registered through an
//! outage, and while the source is not delivering (before its first frame, or lost) they get a
//! "no signal" frame once a second ([`no_signal`]), so viewers stay alive and show why.
//! Publishing replaces the previous frame whatever the watchers are doing: capture never
//! waits for a watcher.

pub mod backoff;
pub mod encode_times;
pub mod h264;
#[cfg(test)]
mod h264_tests;
pub mod no_signal;
mod sink;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::encoder::{Encoder, EncoderConfig};
use crate::frame::{Detection, EncodedFrame};
use crate::journal::Journal;
use crate::sources::{OnStall, Source, SourceError};
use backoff::Backoff;
pub use sink::FrameSink;

/// One published frame, shared by every watcher that sends it.
pub type SharedFrame = Arc<EncodedFrame>;

/// The newest frame (`None` until the first one is captured).
pub type FrameRx = watch::Receiver<Option<SharedFrame>>;

/// Counters a test or the load tool reads to prove "one encode per captured frame".
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames published (encoded, or passed through as the source sent them; at most one per
    /// captured frame).
    pub published: AtomicU64,
    /// Of `published`, JPEGs from the source sent as they came (no decode, no encode).
    pub passed_through: AtomicU64,
    /// turbojpeg compress calls: one per frame encoded, more while quality adapts to the cap.
    pub encode_attempts: AtomicU64,
    /// Frames that could not be encoded under the cap.
    pub errors: AtomicU64,
    /// Frames the source delivered that were unusable (corrupt, not a JPEG, too big).
    pub rejected: AtomicU64,
    /// Times the source failed or ended (every failed attempt, during an outage too).
    pub source_failures: AtomicU64,
    /// Outages: times the source went from delivering to lost.
    pub source_lost: AtomicU64,
    /// "No signal" frames published while the source was not delivering (not in `published`).
    pub no_signal: AtomicU64,
    /// Total time spent encoding, µs.
    pub encode_us: AtomicU64,
    /// JPEG quality in use (0 while frames pass through).
    pub quality: AtomicU32,
    /// How long each encode took.
    pub encode_times: encode_times::EncodeTimes,
    /// Frames coded as H.264 by the camera's encoder thread (once per frame, whatever the
    /// number of H.264 watchers; only while one is wanted).
    pub h264_encodes: AtomicU64,
    /// Total time spent decoding JPEG and coding H.264, µs.
    pub h264_encode_us: AtomicU64,
    /// Frames the H.264 encoder never saw: a newer one replaced them while it was busy.
    pub h264_skipped: AtomicU64,
    /// Frames the H.264 encoder could not code (counted, logged every 10 s).
    pub h264_errors: AtomicU64,
    /// H.264 access units from the source published as they came (no encoder).
    pub h264_passed_through: AtomicU64,
    /// IDR pictures forced for watchers that joined or fell behind (at most one a second).
    pub keyframes_forced: AtomicU64,
    /// H.264 access units from the source decoded to pictures: only while pictures are wanted
    /// ([`CaptureShared::want_pictures`]), one per decoded unit (a catch-up decodes the GOP).
    pub decodes: AtomicU64,
}

/// How the capture path runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureConfig {
    pub encoder: EncoderConfig,
    /// The stream's shape until the source says or shows its own (`--size`, `--fps`): what
    /// SURV/1 viewers are told, and the size of the "no signal" frame.
    pub idle: StreamShape,
    /// The H.264 encoder's IDR period, seconds (`--gop-secs`).
    pub gop_secs: u32,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            encoder: EncoderConfig::default(),
            idle: StreamShape {
                width: 640,
                height: 480,
                fps: 30,
            },
            gop_secs: DEFAULT_GOP_SECS,
        }
    }
}

/// The H.264 encoder's IDR period when none is configured.
pub const DEFAULT_GOP_SECS: u32 = 2;

/// While the source is not delivering, how often the "no signal" frame goes out.
pub const NO_SIGNAL_EVERY: Duration = Duration::from_secs(1);

/// The shortest silence that counts as a stall, whatever the frame rate.
pub const STALL_MIN: Duration = Duration::from_secs(5);
/// For slow sources, the frame intervals of silence that count as a stall.
pub const STALL_FRAMES: u32 = 10;
/// How long a (re)opened source may take to deliver its first frame (a camera's connection,
/// its RTSP set-up, an H.264 stream's first key frame).
pub const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(20);
/// At stop, how long a source is given to end by itself (a capture thread ends after the frame
/// it is on): a stopped capture has let go of its source and counted its last frame. One that
/// has not ended by then is dropped.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long a live source at `fps` may go without a frame before it counts as lost: 5 s, or
/// 10 frame intervals when that is longer.
pub fn stall_after(fps: u32) -> Duration {
    let intervals = Duration::from_secs(u64::from(STALL_FRAMES)) / fps.max(1);
    intervals.max(STALL_MIN)
}

/// What the source delivers: its size as last seen, and its frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamShape {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// Whether frames are flowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Not a frame yet, no failure yet.
    Starting,
    /// Frames are flowing.
    Live,
    /// The source failed (why); the capture path is trying again.
    Lost(String),
}

/// What the capture path shares with the rest of the server.
#[derive(Debug)]
pub struct CaptureShared {
    pub stats: CaptureStats,
    /// What the source is (its `describe()`), for `/status`.
    pub source: String,
    shape: Mutex<StreamShape>,
    state: watch::Sender<SourceState>,
    /// Frames published now are inside a motion event (set by the motion detector).
    motion: AtomicBool,
    /// The latest objects a camera that detects on the device reported, and the sequence
    /// number of the frame they came with (read by the camera's detector thread).
    device_objects: Mutex<Option<(u64, Arc<[Detection]>)>>,
    /// What frames published now carry of the objects present (a `surv_proto::objects`
    /// segment after the tag; empty: nothing present, or no detector). Set by the detector.
    objects: Mutex<Bytes>,
    /// The camera's H.264: access units once for every H.264 watcher, and the encoder that
    /// makes them on demand when the source gives pixels or JPEG.
    pub h264: Arc<h264::H264Feed>,
    /// How many [`PictureDemand`] guards live, by what they need: JPEG watchers and a snapshot
    /// waiting want every picture, the motion detector the camera's keyframes at least. A
    /// source that must decode to make pictures (an H.264 camera) decodes what the strongest
    /// of them needs, and wakes on its changes.
    pictures: watch::Sender<PictureWants>,
}

impl CaptureShared {
    fn new(source: String, idle: StreamShape) -> CaptureShared {
        CaptureShared {
            stats: CaptureStats::default(),
            source,
            shape: Mutex::new(idle),
            state: watch::Sender::new(SourceState::Starting),
            motion: AtomicBool::new(false),
            device_objects: Mutex::new(None),
            objects: Mutex::new(Bytes::new()),
            h264: Arc::new(h264::H264Feed::new()),
            pictures: watch::Sender::new(PictureWants::default()),
        }
    }

    /// While the guard lives, every one of the camera's JPEG pictures is wanted: a source that
    /// would have to decode to make them (an H.264 camera passed through) does.
    pub fn want_pictures(self: &Arc<Self>) -> PictureDemand {
        self.demand(false)
    }

    /// While the guard lives, pictures of the camera's keyframes at least are wanted (the
    /// motion detector's sampling): an H.264 camera passed through decodes its keyframes alone
    /// (each one stands alone) unless something wants every picture.
    pub fn want_keyframe_pictures(self: &Arc<Self>) -> PictureDemand {
        self.demand(true)
    }

    fn demand(self: &Arc<Self>, keyframes_only: bool) -> PictureDemand {
        self.pictures.send_modify(|w| match keyframes_only {
            true => w.keyframes += 1,
            false => w.every += 1,
        });
        PictureDemand {
            shared: self.clone(),
            keyframes_only,
        }
    }

    /// How many [`PictureDemand`] guards want every picture.
    pub fn pictures_wanted(&self) -> usize {
        self.pictures.borrow().every
    }

    /// The picture demand now.
    pub fn picture_wants(&self) -> PictureWants {
        *self.pictures.borrow()
    }

    /// The picture demand, to wait for its changes.
    pub fn picture_demand(&self) -> watch::Receiver<PictureWants> {
        self.pictures.subscribe()
    }

    /// Whether frames published from now on carry the motion flag in their tag.
    pub fn set_motion(&self, on: bool) {
        self.motion.store(on, Ordering::Relaxed);
    }

    /// Frames published now are inside a motion event.
    pub fn in_motion(&self) -> bool {
        self.motion.load(Ordering::Relaxed)
    }

    /// The stream's size and rate, as told to SURV/1 viewers.
    pub fn shape(&self) -> StreamShape {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a source says when it opens; a zero is something it does not know (yet), and the
    /// value in use stays.
    fn set_shape(&self, new: StreamShape) {
        let mut shape = self.shape.lock().unwrap_or_else(|p| p.into_inner());
        if new.width > 0 && new.height > 0 {
            (shape.width, shape.height) = (new.width, new.height);
        }
        if new.fps > 0 {
            shape.fps = new.fps;
        }
    }

    /// The frame rate measured for a source that does not declare one.
    fn set_fps(&self, fps: u32) {
        self.shape.lock().unwrap_or_else(|p| p.into_inner()).fps = fps;
    }

    /// A frame of this size went out (a source may change size, or the encoder downscale).
    fn note_size(&self, width: u32, height: u32) {
        let mut shape = self.shape.lock().unwrap_or_else(|p| p.into_inner());
        (shape.width, shape.height) = (width, height);
    }

    pub fn state(&self) -> SourceState {
        self.state.borrow().clone()
    }

    /// What the device says is in frame `seq` or a newer one (a camera that detects on the
    /// device: the latest objects it sent, when they came with that frame or after it; a
    /// detector that took frame `seq` just before a newer one arrived gets the newer objects,
    /// rather than none and the model's view).
    pub fn device_objects(&self, seq: u64) -> Option<Arc<[Detection]>> {
        let latest = self
            .device_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*latest {
            Some((at, objects)) if *at >= seq => Some(objects.clone()),
            _ => None,
        }
    }

    /// The objects segment frames published now carry.
    pub fn objects_segment(&self) -> Bytes {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What frames published from now on carry of the objects present.
    pub fn set_objects_segment(&self, segment: Bytes) {
        *self.objects.lock().unwrap_or_else(|p| p.into_inner()) = segment;
    }

    fn set_device_objects(&self, seq: u64, objects: Arc<[Detection]>) {
        *self
            .device_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((seq, objects));
    }
}

/// The live [`PictureDemand`] guards of a camera, by what they need.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PictureWants {
    /// Guards that want every picture.
    pub every: usize,
    /// Guards that want the keyframes' pictures at least.
    pub keyframes: usize,
}

/// What a source that must decode to make pictures decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Nothing,
    Keyframes,
    Every,
}

impl PictureWants {
    pub fn decode(self) -> Decode {
        if self.every > 0 {
            Decode::Every
        } else if self.keyframes > 0 {
            Decode::Keyframes
        } else {
            Decode::Nothing
        }
    }
}

/// Keeps a camera's JPEG pictures coming (see [`CaptureShared::want_pictures`]).
pub struct PictureDemand {
    shared: Arc<CaptureShared>,
    keyframes_only: bool,
}

impl std::fmt::Debug for PictureDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PictureDemand")
    }
}

impl Drop for PictureDemand {
    fn drop(&mut self) {
        let keyframes_only = self.keyframes_only;
        self.shared.pictures.send_modify(|w| match keyframes_only {
            true => w.keyframes = w.keyframes.saturating_sub(1),
            false => w.every = w.every.saturating_sub(1),
        });
    }
}

/// A running capture path.
pub struct Capture {
    pub frames: FrameRx,
    pub shared: Arc<CaptureShared>,
    task: Option<JoinHandle<()>>,
    idle_task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("encoder: {0}")]
    Encoder(String),
    /// The source failed before its first frame.
    #[error("{0}")]
    Source(String),
}

impl Capture {
    /// Starts the capture path on the current runtime: `source` runs (and is run again after
    /// every failure) until `shutdown` is cancelled or [`Capture::stop`] is called.
    pub fn start(
        source: Box<dyn Source>,
        config: CaptureConfig,
        journal: Arc<Journal>,
        shutdown: &CancellationToken,
    ) -> Result<Capture, CaptureError> {
        let max_datagram_bytes = config.encoder.max_datagram_bytes;
        let encoder =
            Encoder::new(config.encoder).map_err(|e| CaptureError::Encoder(e.to_string()))?;
        let (tx, frames) = watch::channel(None);
        let shared = Arc::new(CaptureShared::new(source.describe(), config.idle));
        let stop = shutdown.child_token();
        shared.h264.attach(
            Arc::downgrade(&shared),
            frames.clone(),
            stop.clone(),
            config.gop_secs,
        );
        let sink = FrameSink::new(
            shared.clone(),
            journal,
            encoder,
            max_datagram_bytes,
            tx,
            source.describe(),
        );
        let idle_task = tokio::spawn(publish_while_idle(sink.clone(), stop.clone()));
        let task = tokio::spawn(supervise(source, sink, Backoff::default(), stop.clone()));
        Ok(Capture {
            frames,
            shared,
            task: Some(task),
            idle_task: Some(idle_task),
            stop,
        })
    }

    /// Waits until the source has delivered its first frame (its shape) or failed (why). For
    /// sources that must work at start-up (a local camera, the test pattern).
    pub async fn first_outcome(&self) -> Result<StreamShape, CaptureError> {
        let mut state = self.shared.state.subscribe();
        let outcome = state
            .wait_for(|s| *s != SourceState::Starting)
            .await
            .map(|s| s.clone());
        match outcome {
            Ok(SourceState::Lost(reason)) => Err(CaptureError::Source(reason)),
            _ => Ok(self.shared.shape()),
        }
    }

    /// Stops capturing and waits for the source to let go (at most about one frame).
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in [self.task.take(), self.idle_task.take()]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
        // The encoder thread ends after the frame it is coding, if any.
        if let Some(thread) = self.shared.h264.take_encoder_thread() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs `source` until `stop`, again after each failure, with backoff between attempts.
async fn supervise(
    mut source: Box<dyn Source>,
    sink: FrameSink,
    mut backoff: Backoff,
    stop: CancellationToken,
) {
    loop {
        let delivered_before = sink.delivered();
        let on_stall = source.on_stall();
        let device = source.describe();
        let result = watch_run(source.run(&sink, &stop), &sink, on_stall, &device, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        if sink.delivered() > delivered_before {
            backoff.reset();
        }
        let reason = match &result {
            Err(e) => e.to_string(),
            Ok(()) => "the source ended".to_string(),
        };
        sink.lost(&reason);
        if let Err(SourceError::Finished { .. }) = result {
            tracing::info!("the source has nothing more to play; not running it again");
            return stop.cancelled().await;
        }
        let wait = backoff.next_wait();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Drives one run of a source, and ends it when it stalls: no frame for [`stall_after`] the
/// stream's rate since the newest frame, or none within [`FIRST_FRAME_WITHIN`] of the start.
/// A source that cameras push to ([`OnStall::Report`]) is not ended: once it has been live, a
/// stall is reported (once per stall) and the run goes on.
async fn watch_run(
    run: crate::sources::SourceRun<'_>,
    sink: &FrameSink,
    on_stall: OnStall,
    device: &str,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    tokio::pin!(run);
    let started = Instant::now();
    // The newest frame a stall was reported for (push sources).
    let mut reported: Option<Instant> = None;
    loop {
        let last = sink.last_frame().filter(|&t| t >= started);
        let (since, bound) = match last {
            Some(t) => (t, stall_after(sink.fps())),
            None => (started, FIRST_FRAME_WITHIN),
        };
        let deadline = since + bound;
        if Instant::now() >= deadline && reported != Some(since) {
            let secs = bound.as_secs();
            let reason = match last {
                Some(_) => format!("no frame for {secs} s"),
                None => format!("no frame within {secs} s of opening"),
            };
            match on_stall {
                OnStall::Reopen => {
                    return Err(SourceError::Read {
                        device: device.to_string(),
                        reason,
                    })
                }
                OnStall::Report if last.is_some() => {
                    tracing::warn!(source = device, reason, "source stalled");
                    sink.lost(&reason);
                }
                OnStall::Report => {}
            }
            reported = Some(since);
        }
        let wake = if reported == Some(since) {
            // Reported: look again a bound later (a frame resets `since` before that).
            Instant::now() + bound
        } else if last.is_none() {
            // Before the first frame, look every second: once frames flow, the bound is the
            // shorter stall bound from the newest frame.
            deadline.min(Instant::now() + Duration::from_secs(1))
        } else {
            deadline
        };
        tokio::select! {
            result = &mut run => return result,
            // A source should end by itself at stop; one that does not is dropped here.
            () = stop.cancelled() => {
                return tokio::time::timeout(STOP_GRACE, &mut run).await.unwrap_or(Ok(()));
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// While the source is not live (no frame yet, or lost), publishes the "no signal" frame every
/// [`NO_SIGNAL_EVERY`], the first one that long after the source's newest frame.
async fn publish_while_idle(sink: FrameSink, stop: CancellationToken) {
    let mut state = sink.state();
    let mut quiet_since = Instant::now();
    loop {
        let live = matches!(*state.borrow_and_update(), SourceState::Live);
        if live {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return },
            }
            // Quiet since its newest frame: after a stall found by the watchdog, viewers have
            // seen a frozen picture for the stall bound already, and get "no signal" at once.
            quiet_since = sink.last_frame().unwrap_or_else(Instant::now);
            continue;
        }
        let due = quiet_since + NO_SIGNAL_EVERY;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(due) => {}
            changed = state.changed() => {
                if changed.is_err() { return }
                continue;
            }
        }
        let why = match &*state.borrow() {
            SourceState::Lost(reason) => reason.clone(),
            _ => "waiting for the source's first frame".to_string(),
        };
        let sink = sink.clone();
        let published = tokio::task::spawn_blocking(move || sink.publish_no_signal(&why)).await;
        if published.is_err() {
            tracing::error!("drawing the no-signal frame panicked");
        }
        quiet_since = Instant::now();
    }
}
