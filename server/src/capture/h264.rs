//! A camera's H.264 feed: each access unit (AU) made once and shared by every H.264 watcher,
//! the GOP cache that lets a watcher start at once, and, for cameras that give pixels or JPEG,
//! the encoder thread that fills it while someone wants H.264.
//!
//! ```text
//! FrameRx (newest JPEG) ──encoder thread (while demanded)──┐
//!                                                          ├─▶ publish ─▶ GOP cache + broadcast ─▶ join()
//! H.264 source (passthrough) ──────────────────────────────┘                 └─ params (SPS/PPS) watch
//! ```
//!
//! H.264 cannot be "latest wins" as the JPEG feed is: every P picture needs the pictures before
//! it. So the feed keeps the pictures since the newest keyframe, and [`H264Feed::join`] hands a
//! watcher that GOP and a receiver that continues exactly after it. A watcher that falls behind
//! (`Lagged`) waits for the next keyframe; [`H264Feed::want_keyframe`] makes that wait short.
//!
//! The encoder thread (`h264-<camera>`) runs while an [`H264Demand`] guard lives, and
//! [`ENCODER_LINGER`] after the last one drops (a player that reconnects finds it running, its
//! GOP warm). It takes the newest JPEG from the capture's `watch` (one it missed because it was
//! behind is counted in `h264_skipped`), decodes it to I420 and codes it once for every watcher.
//! It ends at the capture's stop, or after the linger.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use surv_codec::encoder::DEFAULT_BITS_PER_PIXEL;
use surv_codec::{annexb, Bitrate, H264Settings, JpegToH264};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{CaptureShared, FrameRx};
use crate::frame::{H264AccessUnit, ParameterSets};

/// AUs a receiver may fall behind before it lags (about 8 s at 30 fps).
pub const BROADCAST_CAPACITY: usize = 256;
/// The most pictures the GOP cache holds...
pub const GOP_MAX_FRAMES: usize = 300;
/// ...and the most bytes. Over either, it is emptied and stays empty until the next keyframe.
pub const GOP_MAX_BYTES: usize = 16 << 20;
/// How long the encoder thread keeps coding after the last [`H264Demand`] dropped.
pub const ENCODER_LINGER: Duration = Duration::from_secs(5);
/// The shortest gap between an IDR and a keyframe forced for a joining watcher: a crowd of
/// joins must not turn the stream into IDRs for the watchers already playing.
pub const FORCED_KEYFRAME_GAP_90K: u64 = 90_000;
/// The lowest bit rate the encoder is given (tiny pictures at low rates still need some).
pub const MIN_BITRATE_BPS: u32 = 200_000;
/// The encoder's temporal layers: a viewer whose link is short of the stream can be sent half
/// or a quarter of the frames (`frame::H264AccessUnit::layer`) from the same encode.
pub const TEMPORAL_LAYERS: u8 = 3;

/// How often an idle encoder thread looks whether its linger is over (it also looks at every
/// frame).
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// While encoding keeps failing, how often that is logged again.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);

/// One access unit as the feed publishes it.
#[derive(Debug)]
pub struct H264Unit {
    /// The feed's own count: 0, 1, 2… without gap, set by [`H264Feed::publish`]. A receiver that
    /// sees a gap lost units.
    pub seq: u64,
    pub au: H264AccessUnit,
    /// 90 kHz media clock, monotonic within the camera's feed.
    pub media_time_90k: u64,
    /// Capture time, microseconds since the Unix epoch, server clock.
    pub capture_unix_us: u64,
}

/// A camera's H.264 feed (see the module's doc).
pub struct H264Feed {
    gop: Mutex<Gop>,
    tx: broadcast::Sender<Arc<H264Unit>>,
    params: watch::Sender<Option<ParameterSets>>,
    passthrough: AtomicBool,
    keyframe_wanted: AtomicBool,
    encoder: Mutex<EncoderSlot>,
}

/// The pictures since the newest keyframe, and what publishing keeps track of. Publishing
/// sends to the broadcast under this lock, so a join sees each unit exactly once.
#[derive(Default)]
struct Gop {
    units: Vec<Arc<H264Unit>>,
    bytes: usize,
    next_seq: u64,
    /// The newest unit's media time and capture time: where a new encoder run continues.
    last_times: Option<(u64, u64)>,
}

/// Demand for the encoder, and the thread that serves it.
#[derive(Default)]
struct EncoderSlot {
    demand: usize,
    /// When demand last went to 0.
    idle_since: Option<Instant>,
    thread: Option<JoinHandle<()>>,
    /// What the thread needs; `None` for a feed without a capture path behind it.
    plan: Option<EncoderPlan>,
    /// The camera's name, for the thread's.
    label: String,
    linger: Duration,
}

/// What an encoder thread is started with.
struct EncoderPlan {
    shared: Weak<CaptureShared>,
    frames: FrameRx,
    stop: CancellationToken,
    gop_secs: u32,
}

impl Default for H264Feed {
    fn default() -> Self {
        H264Feed::new()
    }
}

impl H264Feed {
    /// An empty feed, with no encoder behind it until the capture path attaches one.
    pub fn new() -> H264Feed {
        H264Feed {
            gop: Mutex::default(),
            tx: broadcast::Sender::new(BROADCAST_CAPACITY),
            params: watch::Sender::new(None),
            passthrough: AtomicBool::new(false),
            keyframe_wanted: AtomicBool::new(false),
            encoder: Mutex::new(EncoderSlot {
                label: "cam".into(),
                linger: ENCODER_LINGER,
                ..EncoderSlot::default()
            }),
        }
    }

    fn gop(&self) -> MutexGuard<'_, Gop> {
        self.gop.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self) -> MutexGuard<'_, EncoderSlot> {
        self.encoder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// While a guard lives, an encoded camera runs its H.264 encoder (0→1 starts it; it stops
    /// [`ENCODER_LINGER`] after the last guard drops).
    pub fn demand(self: &Arc<Self>) -> H264Demand {
        let mut slot = self.slot();
        slot.demand += 1;
        slot.idle_since = None;
        if !self.is_passthrough() {
            self.start_encoder(&mut slot);
        }
        H264Demand { feed: self.clone() }
    }

    /// The frames from the newest keyframe (the GOP cache, oldest first) and a receiver that
    /// continues exactly after them (no gap, no duplicate: both are taken under one lock).
    /// Empty while there is no keyframe yet, or after the cache overflowed: the receiver then
    /// brings the next one. Also asks an encoded camera for a keyframe (at most one forced per
    /// second).
    pub fn join(&self) -> (Vec<Arc<H264Unit>>, broadcast::Receiver<Arc<H264Unit>>) {
        let joined = {
            let gop = self.gop();
            (gop.units.clone(), self.tx.subscribe())
        };
        self.want_keyframe();
        joined
    }

    /// Whether this encoded camera's next picture is a keyframe a join asked for: the cached
    /// GOP already spans [`FORCED_KEYFRAME_GAP_90K`] at the next frame, so the encoder forces
    /// one then. A watcher joining now can wait for it (a frame later, the same picture but
    /// newer) rather than take the cached GOP, which can be seconds of a slow link. Never for
    /// a passthrough camera (its keyframes come when the camera sends them).
    pub fn keyframe_due(&self) -> bool {
        if self.is_passthrough() || !self.keyframe_wanted.load(Relaxed) {
            return false;
        }
        let gop = self.gop();
        let [.., before, newest] = gop.units.as_slice() else {
            return false;
        };
        let step = newest.media_time_90k.saturating_sub(before.media_time_90k);
        let span = newest
            .media_time_90k
            .saturating_sub(gop.units[0].media_time_90k);
        span + step >= FORCED_KEYFRAME_GAP_90K
    }

    /// A receiver of the units published from now on (no GOP, no keyframe asked: for a
    /// camera's one writer, whose sessions join through their own [`FeedReader`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<H264Unit>> {
        self.tx.subscribe()
    }

    /// Asks the encoder for an IDR picture on its next frame, or as soon as
    /// [`FORCED_KEYFRAME_GAP_90K`] has passed since the last one (a watcher joined, or fell
    /// behind). Nothing for a passthrough camera: its keyframes come when the camera sends them.
    pub fn want_keyframe(&self) {
        self.keyframe_wanted.store(true, Relaxed);
    }

    /// The newest SPS/PPS (`None` until the first keyframe): for the SDP.
    pub fn params(&self) -> watch::Receiver<Option<ParameterSets>> {
        self.params.subscribe()
    }

    /// Publishes one AU (from the encoder, or from a source passing H.264 through). Its `seq` is
    /// set here. A keyframe starts a new GOP; a picture before the first keyframe goes to the
    /// receivers only.
    pub fn publish(&self, mut unit: H264Unit) {
        let mut gop = self.gop();
        unit.seq = gop.next_seq;
        gop.next_seq += 1;
        gop.last_times = Some((unit.media_time_90k, unit.capture_unix_us));
        let bytes = unit.au.data.len();
        if let Some(sets) = &unit.au.parameter_sets {
            gop.units.clear();
            gop.bytes = 0;
            self.params.send_if_modified(|now| {
                let changed = now.as_ref() != Some(sets);
                if changed {
                    *now = Some(sets.clone());
                }
                changed
            });
        }
        let unit = Arc::new(unit);
        if unit.au.is_keyframe() || !gop.units.is_empty() {
            if gop.units.len() >= GOP_MAX_FRAMES || gop.bytes + bytes > GOP_MAX_BYTES {
                // A GOP this long is a camera with keyframes far apart: joiners wait for the next.
                tracing::debug!(
                    frames = gop.units.len(),
                    bytes = gop.bytes,
                    "GOP cache full; empty until the next keyframe"
                );
                gop.units.clear();
                gop.bytes = 0;
            } else {
                gop.units.push(unit.clone());
                gop.bytes += bytes;
            }
        }
        // No receiver is not an error: the GOP cache still serves the next joiner.
        let _ = self.tx.send(unit);
    }

    /// Whether the source itself delivers H.264 (then no encoder runs).
    pub fn is_passthrough(&self) -> bool {
        self.passthrough.load(Relaxed)
    }

    /// A source that delivers H.264 says so before it publishes: no encoder is started for
    /// this feed from then on.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Relaxed);
    }

    /// How many [`H264Demand`] guards live.
    pub fn demanded(&self) -> usize {
        self.slot().demand
    }

    /// Whether the encoder thread runs now.
    pub fn encoder_running(&self) -> bool {
        self.slot()
            .thread
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// The units in the GOP cache now.
    pub fn gop_len(&self) -> usize {
        self.gop().units.len()
    }

    /// The capture path behind this feed: the encoder thread takes frames from `frames`, counts
    /// in `shared`'s stats and ends at `stop`.
    pub(super) fn attach(
        &self,
        shared: Weak<CaptureShared>,
        frames: FrameRx,
        stop: CancellationToken,
        gop_secs: u32,
    ) {
        self.slot().plan = Some(EncoderPlan {
            shared,
            frames,
            stop,
            gop_secs,
        });
    }

    /// The camera's name, for the encoder thread's name.
    pub fn set_label(&self, name: &str) {
        self.slot().label = name.to_string();
    }

    #[cfg(test)]
    pub(super) fn set_linger(&self, linger: Duration) {
        self.slot().linger = linger;
    }

    /// The encoder thread, once it has been told to stop: to wait for it.
    pub(super) fn take_encoder_thread(&self) -> Option<JoinHandle<()>> {
        self.slot().thread.take()
    }

    fn start_encoder(&self, slot: &mut EncoderSlot) {
        if slot.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(plan) = &slot.plan else { return };
        if plan.stop.is_cancelled() {
            return;
        }
        let Some(shared) = plan.shared.upgrade() else {
            return;
        };
        let run = EncoderRun {
            shared,
            // The frame in the watch when demand came is the first to code (a joiner gets a
            // picture at once); any after it the thread never sees count as skipped.
            first_frame_seq: plan.frames.borrow().as_ref().map_or(0, |f| f.seq),
            frames: plan.frames.clone(),
            stop: plan.stop.clone(),
            gop_secs: plan.gop_secs,
        };
        let spawned = thread::Builder::new()
            .name(thread_name(&slot.label))
            .spawn(move || run.run());
        match spawned {
            Ok(thread) => slot.thread = Some(thread),
            Err(e) => tracing::error!(error = %e, "cannot start the H.264 encoder thread"),
        }
    }
}

impl std::fmt::Debug for H264Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Feed")
            .field("gop_len", &self.gop_len())
            .field("passthrough", &self.is_passthrough())
            .field("demanded", &self.demanded())
            .finish()
    }
}

/// `h264-<name>`, cut to the 15 bytes Linux keeps of a thread's name.
fn thread_name(label: &str) -> String {
    let mut name = format!("h264-{label}");
    while name.len() > 15 {
        name.pop();
    }
    name
}

/// How many units may queue for a watcher of a camera at `fps` before it counts as behind:
/// half a second's.
pub fn lag_limit(fps: u32) -> usize {
    (fps.max(1) as usize).div_ceil(2).max(2)
}

/// One watcher's way through a camera's H.264 feed, the same for every kind that sends it
/// (RTSP sessions, `--forward`): the cached GOP first, then live units, each in order; a
/// reader that falls behind (more than `lag_limit` units queued for it, or the broadcast
/// overtook it) skips what queued and resumes at the next keyframe, which it asks for. The
/// units it skips are counted ([`FeedReader::skipped`]) and show as a gap in their `seq`.
pub struct FeedReader {
    feed: Arc<H264Feed>,
    rx: broadcast::Receiver<Arc<H264Unit>>,
    backlog: VecDeque<Arc<H264Unit>>,
    /// Units are skipped until a keyframe (after falling behind, or before the first).
    wait_key: bool,
    lag_limit: usize,
    skipped: u64,
}

impl FeedReader {
    /// Joins `feed` (its GOP, and a keyframe asked of an encoded camera); a camera at `fps`
    /// may have half a second of units queued for the reader before it counts as behind.
    pub fn join(feed: Arc<H264Feed>, fps: u32) -> FeedReader {
        let (gop, rx) = feed.join();
        let backlog: VecDeque<_> = gop.into();
        FeedReader {
            feed,
            rx,
            wait_key: backlog.is_empty(),
            backlog,
            lag_limit: lag_limit(fps),
            skipped: 0,
        }
    }

    /// With no GOP cached (no keyframe yet, or the cache overflowed), waits up to `within` for
    /// the next keyframe, so that the first unit is known before the reader starts (RTSP's
    /// PLAY answers with its timestamp).
    pub async fn wait_for_keyframe(&mut self, within: Duration) {
        if !self.backlog.is_empty() {
            return;
        }
        let rx = &mut self.rx;
        let first = tokio::time::timeout(within, async {
            loop {
                match rx.recv().await {
                    Ok(u) if u.au.is_keyframe() => return Some(u),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await;
        if let Ok(Some(unit)) = first {
            self.backlog.push_back(unit);
            self.wait_key = false;
        }
    }

    /// The unit the reader will give first, when it is known (the GOP's keyframe).
    pub fn first(&self) -> Option<&Arc<H264Unit>> {
        self.backlog.front()
    }

    /// The next unit to send; `None` once the feed has ended. Cancel-safe: a `select!` may
    /// drop it between units without losing one.
    pub async fn next(&mut self) -> Option<Arc<H264Unit>> {
        loop {
            let unit = match self.backlog.pop_front() {
                Some(unit) => unit,
                None => match self.rx.recv().await {
                    Ok(unit) => unit,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.skipped += n;
                        self.restart_at_keyframe();
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if self.wait_key && !unit.au.is_keyframe() {
                self.skipped += 1;
                continue;
            }
            self.wait_key = false;
            return Some(unit);
        }
    }

    /// After a unit went out: if more than the lag limit queued meanwhile, the reader skips
    /// them and resumes at the next keyframe.
    pub fn check_lag(&mut self) {
        let queued = self.rx.len();
        if queued > self.lag_limit {
            self.skipped += queued as u64;
            self.rx = self.rx.resubscribe();
            self.restart_at_keyframe();
        }
    }

    /// Resumes at the next keyframe (after a pause, or falling behind), asking for one.
    pub fn restart_at_keyframe(&mut self) {
        self.backlog.clear();
        self.wait_key = true;
        self.feed.want_keyframe();
    }

    /// Units skipped so far (never sent to this reader's watcher).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn feed(&self) -> &Arc<H264Feed> {
        &self.feed
    }
}

/// Keeps a camera's H.264 encoder running (see [`H264Feed::demand`]).
pub struct H264Demand {
    feed: Arc<H264Feed>,
}

impl H264Demand {
    pub fn feed(&self) -> &Arc<H264Feed> {
        &self.feed
    }
}

impl std::fmt::Debug for H264Demand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H264Demand")
    }
}

impl Drop for H264Demand {
    fn drop(&mut self) {
        let mut slot = self.feed.slot();
        slot.demand = slot.demand.saturating_sub(1);
        if slot.demand == 0 {
            slot.idle_since = Some(Instant::now());
        }
    }
}

/// One run of the encoder thread.
struct EncoderRun {
    shared: Arc<CaptureShared>,
    first_frame_seq: u64,
    frames: FrameRx,
    stop: CancellationToken,
    gop_secs: u32,
}

/// What the encoder thread woke for.
enum Woke {
    Frame,
    Stop,
    Idle,
}

impl EncoderRun {
    fn run(mut self) {
        let feed = self.shared.h264.clone();
        let stats = &self.shared.stats;
        tracing::debug!("H.264 encoder started");
        // (coder, the frame rate it was made for)
        let mut coder: Option<(JpegToH264, u32)> = None;
        let mut next_frame_seq = self.first_frame_seq;
        let mut last_idr_90k: Option<u64> = None;
        let mut clock = MediaClock::continuing(feed.gop().last_times);
        let mut last_error_log: Option<Instant> = None;
        self.frames.mark_changed();
        loop {
            match wait_for_frame(&mut self.frames, &self.stop, IDLE_CHECK_EVERY) {
                Woke::Stop => break,
                Woke::Idle => {
                    if self.lingered_out(&feed) {
                        break;
                    }
                    continue;
                }
                Woke::Frame => {}
            }
            if self.lingered_out(&feed) {
                break;
            }
            let Some(frame) = self.frames.borrow_and_update().clone() else {
                continue;
            };
            let Some(skipped) = frame.seq.checked_sub(next_frame_seq) else {
                continue;
            };
            stats.h264_skipped.fetch_add(skipped, Relaxed);
            next_frame_seq = frame.seq + 1;
            let Some(jpeg) = frame.jpeg() else { continue };
            let fps = self.shared.shape().fps.max(1);
            let coder = match &mut coder {
                Some((coder, made_for)) if !rate_changed(*made_for, fps) => coder,
                slot => match JpegToH264::new(settings(fps, self.gop_secs)) {
                    Ok(made) => {
                        last_idr_90k = None;
                        &mut slot.insert((made, fps)).0
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot make the H.264 encoder");
                        break;
                    }
                },
            };
            let media_time_90k = clock.at(frame.capture_unix_us, fps);
            if let Some(idr) = last_idr_90k {
                if feed.keyframe_wanted.load(Relaxed)
                    && media_time_90k.saturating_sub(idr) >= FORCED_KEYFRAME_GAP_90K
                {
                    coder.force_intra_frame();
                    stats.keyframes_forced.fetch_add(1, Relaxed);
                }
            }
            let t0 = Instant::now();
            let coded = coder.encode(jpeg, frame.capture_unix_us / 1000);
            let took_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let coded = match coded {
                Ok(coded) => coded,
                Err(e) => {
                    stats.h264_errors.fetch_add(1, Relaxed);
                    if last_error_log.is_none_or(|t| t.elapsed() >= REPEAT_LOG_EVERY) {
                        last_error_log = Some(Instant::now());
                        tracing::warn!(error = %e, seq = frame.seq, "frame not coded as H.264");
                    }
                    continue;
                }
            };
            stats.h264_encodes.fetch_add(1, Relaxed);
            stats.h264_encode_us.fetch_add(took_us, Relaxed);
            let parameter_sets = if coded.idr {
                last_idr_90k = Some(media_time_90k);
                // Any IDR answers the wish, a periodic one too.
                feed.keyframe_wanted.store(false, Relaxed);
                annexb::parameter_sets(coded.annexb).map(|(sps, pps)| ParameterSets {
                    sps: Bytes::copy_from_slice(sps),
                    pps: Bytes::copy_from_slice(pps),
                })
            } else {
                None
            };
            tracing::trace!(
                seq = frame.seq,
                idr = coded.idr,
                bytes = coded.annexb.len(),
                took_us,
                "H.264 frame"
            );
            feed.publish(H264Unit {
                seq: 0,
                au: H264AccessUnit {
                    data: Bytes::copy_from_slice(coded.annexb),
                    parameter_sets,
                    layer: coded.layer,
                },
                media_time_90k,
                capture_unix_us: frame.capture_unix_us,
            });
        }
        tracing::debug!("H.264 encoder stopped");
    }

    /// No demand for the linger: the thread gives up its slot (under the lock that starts
    /// threads, so a demand arriving now starts a new one) and ends.
    fn lingered_out(&self, feed: &H264Feed) -> bool {
        let mut slot = feed.slot();
        let over = slot.demand == 0
            && slot
                .idle_since
                .is_none_or(|since| since.elapsed() >= slot.linger);
        if over {
            // Our own handle: dropping it detaches this thread, which is ending.
            slot.thread = None;
        }
        over
    }
}

/// The encoder's settings at `fps`: an IDR every `gop_secs`.
fn settings(fps: u32, gop_secs: u32) -> H264Settings {
    H264Settings {
        // Exact for any frame rate a camera has.
        fps: fps as f32,
        bitrate: Bitrate::PerPixel {
            bits_per_pixel: DEFAULT_BITS_PER_PIXEL,
            min_bps: MIN_BITRATE_BPS,
        },
        idr_period_frames: gop_secs.saturating_mul(fps),
        temporal_layers: TEMPORAL_LAYERS,
    }
}

/// Whether the stream's rate moved enough (a quarter) to make the encoder again: a measured
/// rate wobbles by a frame or so, and each new encoder costs an IDR.
fn rate_changed(made_for: u32, now: u32) -> bool {
    made_for.abs_diff(now) * 4 > made_for
}

/// 90 kHz media time from capture times: their spacing, but never going back. A capture time
/// that goes back (the server's clock was set back) continues one frame interval on.
#[derive(Debug, Default)]
struct MediaClock {
    /// A capture time and the media time it maps to.
    anchor: Option<(u64, u64)>,
    /// The newest media time given.
    last_90k: Option<u64>,
}

impl MediaClock {
    /// A clock that continues after a feed's newest unit (media time, capture time).
    fn continuing(last: Option<(u64, u64)>) -> MediaClock {
        MediaClock {
            anchor: last.map(|(media, us)| (us, media)),
            last_90k: last.map(|(media, _)| media),
        }
    }

    fn at(&mut self, capture_unix_us: u64, fps: u32) -> u64 {
        let (anchor_us, anchor_90k) = *self
            .anchor
            .get_or_insert((capture_unix_us, us_to_90k(capture_unix_us)));
        let media = match capture_unix_us.checked_sub(anchor_us) {
            Some(since) => anchor_90k.saturating_add(us_to_90k(since)),
            None => 0,
        };
        let media = match self.last_90k {
            Some(last) if media <= last => {
                let next = last + u64::from(90_000 / fps.max(1)).max(1);
                self.anchor = Some((capture_unix_us, next));
                next
            }
            _ => media,
        };
        self.last_90k = Some(media);
        media
    }
}

fn us_to_90k(us: u64) -> u64 {
    // µs × 90 / 1000 without overflow for any capture time.
    us / 100 * 9 + us % 100 * 9 / 100
}

/// Blocks the encoder thread until the newest frame changes, the capture stops, or `idle`
/// passes. The thread is not a runtime thread: the channel's and the token's wakers unpark it.
fn wait_for_frame(frames: &mut FrameRx, stop: &CancellationToken, idle: Duration) -> Woke {
    let woke = block_on_for(
        async {
            tokio::select! {
                biased;
                () = stop.cancelled() => Woke::Stop,
                changed = frames.changed() => match changed {
                    Ok(()) => Woke::Frame,
                    // The capture path is gone.
                    Err(_) => Woke::Stop,
                },
            }
        },
        idle,
    );
    woke.unwrap_or(Woke::Idle)
}

/// Wakes the thread that waits in [`block_on_for`].
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` on this thread until it is ready, or `None` after `timeout`.
fn block_on_for<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn media_time_follows_capture_time_and_never_goes_back() {
        let mut clock = MediaClock::default();
        let t0 = 1_700_000_000_000_000;
        let m0 = clock.at(t0, 30);
        assert_eq!(m0, us_to_90k(t0));
        assert_eq!(clock.at(t0 + 1_000_000, 30), m0 + 90_000);
        // The clock set back: one frame interval on.
        assert_eq!(clock.at(t0 - 5_000_000, 30), m0 + 93_000);
        assert_eq!(clock.at(t0 - 4_000_000, 30), m0 + 183_000);
        let mut again = MediaClock::continuing(Some((m0 + 183_000, t0 - 4_000_000)));
        assert_eq!(again.at(t0 - 3_000_000, 30), m0 + 273_000);
        let exact = u128::from(u64::MAX) * 9 / 100;
        assert_eq!(u128::from(us_to_90k(u64::MAX)), exact);
    }

    #[test]
    fn thread_names_fit_linux() {
        assert_eq!(thread_name("main"), "h264-main");
        assert_eq!(thread_name("front-door-camera"), "h264-front-door");
    }

    #[test]
    fn the_rate_must_move_a_quarter_to_remake_the_encoder() {
        assert!(!rate_changed(30, 29));
        assert!(!rate_changed(30, 37));
        assert!(rate_changed(30, 15));
        assert!(rate_changed(1, 2));
    }
}
