//! Low-Latency HLS: one muxer per camera, started by the first HLS request for it, cutting the
//! camera's H.264 feed into fMP4 parts and segments for every HLS client at once.
//!
//! ```text
//! H264Feed ──FeedReader──▶ muxer task ──▶ Segmenter ──▶ Window (6 segments, parts of the newest)
//!   (demand held: the encoder runs)          │                 ▲
//!                                            └─ edge (watch) ──┴── HTTP handlers: playlists
//!                                                                  (blocking), init, parts, segments
//! ```
//!
//! * The muxer holds the camera's [`H264Demand`] while requests keep coming and [`LINGER`]
//!   after the last, then ends (a player that comes back after that starts a new one).
//! * Each muxer has a random 128-bit stream id in its URLs (`hls/<id>/…`): a restart never
//!   serves other bytes under a URL a cache already holds, and the id is the capability that
//!   lets media URLs go without the token (see `http/hls.rs`).
//! * An encoded camera is asked for a keyframe at each segment start, which its encoder makes
//!   one second later ([`FORCED_KEYFRAME_GAP_90K`](crate::capture::h264::FORCED_KEYFRAME_GAP_90K)):
//!   1 s segments while HLS runs, whatever `--gop-secs` says for the other watchers. A camera
//!   that sends H.264 itself is cut at its own keyframes.
//! * A new SPS/PPS (the camera changed size) ends the muxer: the next request starts one with
//!   a new init segment and stream id.

pub mod playlist;
pub mod segmenter;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use surv_codec::{annexb, fmp4};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::h264::FeedReader;
use crate::frame::ParameterSets;
use crate::Camera;
use segmenter::{Edge, Segmenter, Unit, Window};

/// How long a muxer goes on after the last request for it.
pub const LINGER: Duration = Duration::from_secs(30);
/// Requests waiting (blocking reloads, hinted parts) at most, over every camera: one more is
/// answered 503 at once.
pub const MAX_WAITING: usize = 2048;

/// The counters of `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct HlsStats {
    /// Muxers started.
    pub muxers_started: AtomicU64,
    /// Muxers running now.
    pub muxers: AtomicUsize,
    pub playlists_served: AtomicU64,
    /// Playlist requests that waited (`_HLS_msn`), and parts requests that waited (a preload hint).
    pub blocked_reloads: AtomicU64,
    /// Requests waiting now.
    pub waiting: AtomicUsize,
    /// Waits that ran out (answered 503).
    pub wait_timeouts: AtomicU64,
    pub parts_made: AtomicU64,
    pub segments_made: AtomicU64,
    pub parts_served: AtomicU64,
    pub segments_served: AtomicU64,
    pub inits_served: AtomicU64,
    /// Answered 304 (`If-None-Match`).
    pub not_modified: AtomicU64,
    /// Refused: 400 (a bad or too-far query).
    pub refused_bad_request: AtomicU64,
    /// Refused: 503, [`MAX_WAITING`] requests waiting already, or no stream could start.
    pub refused_busy: AtomicU64,
    /// Refused: 404, a stream id, segment or part that is not (or no longer) there.
    pub refused_not_found: AtomicU64,
}

/// One camera's muxer, as the HTTP handlers see it.
pub struct HlsStream {
    /// 32 hex digits, random.
    pub id: String,
    pub camera: Arc<Camera>,
    /// The muxer cuts under this lock, the handlers read its window: microseconds each.
    segmenter: Mutex<Segmenter>,
    init: Mutex<Option<Bytes>>,
    /// `None` until the first part.
    edge: watch::Sender<Option<Edge>>,
    /// Last request, for the linger.
    touched: Mutex<Instant>,
    ended: CancellationToken,
}

impl std::fmt::Debug for HlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsStream")
            .field("id", &self.id)
            .field("camera", &self.camera.name)
            .finish()
    }
}

impl HlsStream {
    fn segmenter(&self) -> MutexGuard<'_, Segmenter> {
        self.segmenter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `read` on the window (under its lock: copy out what is needed, `Bytes` are cheap).
    pub fn with_window<T>(&self, read: impl FnOnce(&Window) -> T) -> T {
        read(self.segmenter().window())
    }

    /// The init segment, once the first keyframe came.
    pub fn init(&self) -> Option<Bytes> {
        self.init.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn edge(&self) -> watch::Receiver<Option<Edge>> {
        self.edge.subscribe()
    }

    /// A request came: the muxer lingers on from now.
    pub fn touch(&self) {
        *self.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn touched(&self) -> Instant {
        *self.touched.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Cancelled when the muxer ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }
}

/// Every camera's muxer (at most one each), for the HTTP server.
pub struct Hls {
    streams: Mutex<HashMap<String, Arc<HlsStream>>>,
    server: Arc<crate::Server>,
    tracker: TaskTracker,
    linger: Duration,
}

impl Hls {
    /// Muxer tasks run on `tracker` (shutdown waits for them); they count in `server`'s stats.
    pub fn new(server: Arc<crate::Server>, tracker: TaskTracker) -> Hls {
        Hls {
            streams: Mutex::default(),
            server,
            tracker,
            linger: LINGER,
        }
    }

    /// The camera's running muxer, or a new one; `None` if no random id could be drawn.
    pub fn stream(&self, camera: &Arc<Camera>) -> Option<Arc<HlsStream>> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = streams.get(&camera.name) {
            if !s.is_ended() && Arc::ptr_eq(&s.camera, camera) {
                s.touch();
                return Some(s.clone());
            }
        }
        let id = random_id()?;
        let stream = Arc::new(HlsStream {
            id,
            camera: camera.clone(),
            segmenter: Mutex::default(),
            init: Mutex::default(),
            edge: watch::Sender::new(None),
            touched: Mutex::new(Instant::now()),
            ended: CancellationToken::new(),
        });
        streams.insert(camera.name.clone(), stream.clone());
        let server = self.server.clone();
        server.stats.hls.muxers_started.fetch_add(1, Relaxed);
        server.stats.hls.muxers.fetch_add(1, Relaxed);
        let linger = self.linger;
        let run = stream.clone();
        self.tracker.spawn(async move {
            mux(&run, &server.stats.hls, linger).await;
            run.ended.cancel();
            server.stats.hls.muxers.fetch_sub(1, Relaxed);
        });
        Some(stream)
    }

    /// The camera's muxer if it runs with stream id `id` (compared in constant time: the id
    /// stands in for the token).
    pub fn running(&self, camera: &str, id: &str) -> Option<Arc<HlsStream>> {
        use subtle::ConstantTimeEq;
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let s = streams.get(camera)?;
        let same: bool = s.id.as_bytes().ct_eq(id.as_bytes()).into();
        (same && !s.is_ended()).then(|| {
            s.touch();
            s.clone()
        })
    }
}

/// 128 random bits in hex; `None` if the OS has none to give (then no stream starts: a
/// predictable id would let anyone read the media without the token).
fn random_id() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The muxer task: the camera's feed into the stream's window until the linger runs out, the
/// camera ends, or its parameter sets change.
async fn mux(stream: &HlsStream, stats: &HlsStats, linger: Duration) {
    let camera = &stream.camera;
    let feed = camera.capture.h264.clone();
    let _demand = feed.demand();
    let fps = camera.capture.shape().fps;
    let mut reader = FeedReader::join(feed.clone(), fps);
    // An encoded camera's cached GOP can be up to `--gop-secs` long: a first segment that long
    // would set EXT-X-TARGETDURATION (which may not change) above 1 s for the muxer's life. Its
    // next keyframe is at most a second away (the join asked for one), so start there. A
    // camera sending H.264 itself keeps its cached GOP: its segments follow its GOP anyway.
    let skip_cached = (!feed.is_passthrough())
        .then(|| reader.first().map(|u| u.seq))
        .flatten();
    let mut params: Option<ParameterSets> = None;
    // Media sequence numbers from the wall clock's seconds: a restarted muxer's numbers are
    // past the old one's, so a player still asking for the old numbers is answered at once.
    let first_msn = chrono::Utc::now().timestamp().try_into().unwrap_or(0);
    *stream.segmenter() = Segmenter::starting_at(first_msn);
    tracing::info!(camera = %camera.name, id = %stream.id, "LL-HLS muxer started");
    let why = loop {
        let idle_until = stream.touched() + linger;
        let unit = tokio::select! {
            () = camera.stop.cancelled() => break "the camera ended",
            () = tokio::time::sleep_until(idle_until) => {
                if stream.touched() + linger <= Instant::now() {
                    break "no request for the linger";
                }
                continue;
            }
            unit = reader.next() => match unit {
                Some(unit) => unit,
                None => break "the feed ended",
            },
        };
        reader.check_lag();
        if skip_cached == Some(unit.seq) {
            // The pictures after it are dropped too: nothing starts before a keyframe.
            continue;
        }
        if let Some(sets) = &unit.au.parameter_sets {
            match &params {
                Some(had) if had != sets => break "new parameter sets",
                Some(_) => {}
                None => {
                    let shape = camera.capture.shape();
                    let init = fmp4::init_segment(
                        u16::try_from(shape.width).unwrap_or(u16::MAX),
                        u16::try_from(shape.height).unwrap_or(u16::MAX),
                        &sets.sps,
                        &sets.pps,
                    );
                    match init {
                        Ok(init) => {
                            *stream.init.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(Bytes::from(init));
                            params = Some(sets.clone());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "no LL-HLS init segment");
                            continue;
                        }
                    }
                }
            }
            if !feed.is_passthrough() {
                // The next IDR a second from now: 1 s segments.
                feed.want_keyframe();
            }
        }
        if params.is_none() {
            continue;
        }
        // Length-prefixing a few kilobytes and boxing a part: microseconds, fine on the reactor.
        let avc = annexb::to_avc(&unit.au.data);
        let mut segmenter = stream.segmenter();
        let made = segmenter.push(Unit {
            avc: avc.data,
            dts_90k: unit.media_time_90k,
            sync: unit.au.is_keyframe(),
            capture_unix_us: unit.capture_unix_us,
        });
        if made.parts > 0 {
            stats.parts_made.fetch_add(made.parts, Relaxed);
            stats.segments_made.fetch_add(made.segments, Relaxed);
            stream.edge.send_replace(Some(segmenter.window().edge()));
        }
    };
    tracing::info!(camera = %camera.name, id = %stream.id, why, "LL-HLS muxer ended");
}

/// Waits until `ready` holds for the stream's edge, `within` passes, or the stream ends;
/// whether it held.
pub async fn wait_until(
    stream: &HlsStream,
    within: Duration,
    ready: impl FnMut(&Option<Edge>) -> bool,
) -> bool {
    let mut edge = stream.edge();
    let reached = tokio::time::timeout(within, async {
        tokio::select! {
            r = edge.wait_for(ready) => r.is_ok(),
            () = stream.ended.cancelled() => false,
        }
    })
    .await;
    matches!(reached, Ok(true))
}
