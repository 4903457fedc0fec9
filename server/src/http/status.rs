//! `/status` (the server's state as JSON: what the live page shows, and a row per watcher) and
//! `/snapshot.jpg` (the newest frame).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::HttpState;
use crate::capture::SourceState;
use crate::watchers::{RefusalCause, WatcherKind};
use crate::{Camera, Server};

/// The frame rate shown is measured over at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The server's state. Its top-level source, size, rate, encoder, motion and capture counters
/// are one camera's (at `/status` the first, the one `/stream.mjpg` serves; at
/// `/cam/<name>/status` that one); `cameras` has every camera's.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The camera shown at the top level.
    pub camera: String,
    pub source: SourceStatus,
    /// The stream's size as last sent (0 until the first frame).
    pub width: u32,
    pub height: u32,
    /// The rate the source announced (0: it did not say).
    pub fps: u32,
    /// Frames the source delivered per second (JPEGs, or H.264 access units passed through),
    /// measured between status requests.
    pub fps_measured: f64,
    pub encoder: EncoderStatus,
    pub motion: MotionStatus,
    /// The MQTT publisher (`--mqtt`); `null` without it.
    pub mqtt: Option<MqttStatus>,
    pub uptime_s: f64,
    pub counters: Counters,
    pub watchers: WatcherCounts,
    /// One row per live watcher, oldest first.
    pub sessions: Vec<SessionRow>,
    /// Every camera, in the configured order.
    pub cameras: Vec<CameraStatus>,
    /// The WebRTC server: its counters and each live peer.
    pub webrtc: WebrtcStatus,
    /// LL-HLS: its muxers and what it served, every camera together.
    pub hls: HlsStatus,
}

/// LL-HLS's counters (the same as `/metrics`' `surv_hls_*`): what an origin behind HTTP caches
/// served, against what it made.
#[derive(Debug, Serialize)]
pub struct HlsStatus {
    /// Muxers running now (one per camera that a player asked for in the last 30 s).
    pub muxers: usize,
    pub muxers_started: u64,
    pub parts_made: u64,
    pub segments_made: u64,
    pub playlists_served: u64,
    pub blocked_reloads: u64,
    /// Requests waiting now for a part to exist.
    pub waiting: usize,
    pub wait_timeouts: u64,
    pub parts_served: u64,
    pub segments_served: u64,
    pub inits_served: u64,
    pub not_modified: u64,
    pub refused_bad_request: u64,
    pub refused_busy: u64,
    pub refused_not_found: u64,
}

impl HlsStatus {
    fn of(h: &crate::hls::HlsStats) -> HlsStatus {
        HlsStatus {
            muxers: h.muxers.load(Relaxed),
            muxers_started: h.muxers_started.load(Relaxed),
            parts_made: h.parts_made.load(Relaxed),
            segments_made: h.segments_made.load(Relaxed),
            playlists_served: h.playlists_served.load(Relaxed),
            blocked_reloads: h.blocked_reloads.load(Relaxed),
            waiting: h.waiting.load(Relaxed),
            wait_timeouts: h.wait_timeouts.load(Relaxed),
            parts_served: h.parts_served.load(Relaxed),
            segments_served: h.segments_served.load(Relaxed),
            inits_served: h.inits_served.load(Relaxed),
            not_modified: h.not_modified.load(Relaxed),
            refused_bad_request: h.refused_bad_request.load(Relaxed),
            refused_busy: h.refused_busy.load(Relaxed),
            refused_not_found: h.refused_not_found.load(Relaxed),
        }
    }
}

/// The WebRTC server's counters, and per peer its round-trip time, bit rate and loss.
#[derive(Debug, Serialize)]
pub struct WebrtcStatus {
    pub offers: u64,
    pub offers_refused: u64,
    pub sessions: u64,
    pub connected: u64,
    pub connect_timeouts: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub send_errors: u64,
    pub tcp_links: u64,
    pub tcp_links_refused: u64,
    pub keyframe_requests: u64,
    pub nacks: u64,
    pub frames_thinned: u64,
    pub probes: u64,
    pub peers: Vec<crate::watchers::webrtc::PeerReport>,
}

impl WebrtcStatus {
    fn of(w: &crate::watchers::webrtc::WebrtcStats) -> WebrtcStatus {
        WebrtcStatus {
            offers: w.offers.load(Relaxed),
            offers_refused: w.offers_refused.load(Relaxed),
            sessions: w.sessions.load(Relaxed),
            connected: w.connected.load(Relaxed),
            connect_timeouts: w.connect_timeouts.load(Relaxed),
            packets_sent: w.packets_sent.load(Relaxed),
            bytes_sent: w.bytes_sent.load(Relaxed),
            send_errors: w.send_errors.load(Relaxed),
            tcp_links: w.tcp_links.load(Relaxed),
            tcp_links_refused: w.tcp_links_refused.load(Relaxed),
            keyframe_requests: w.keyframe_requests.load(Relaxed),
            nacks: w.nacks.load(Relaxed),
            frames_thinned: w.frames_thinned.load(Relaxed),
            probes: w.probes.load(Relaxed),
            peers: w.peer_reports(),
        }
    }
}

/// One camera: its source, picture, rate and capture counters.
#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    pub name: String,
    pub source: SourceStatus,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub fps_measured: f64,
    pub motion: MotionStatus,
    /// The object detector (`--detect`).
    pub objects: ObjectsStatus,
    pub captured: u64,
    /// Frames published: encoded, or passed through as the source sent them.
    pub published: u64,
    /// Deprecated: `published` under its old name, kept for one release.
    pub encoded: u64,
    pub passed_through: u64,
    pub rejected: u64,
    pub no_signal: u64,
    pub source_lost: u64,
    /// UDP viewers (seed form and SURV/1) watching it now.
    pub udp_viewers: usize,
    /// Its H.264 feed, and the JPEG pictures an H.264 camera decodes only on demand.
    pub h264: H264Status,
    /// Frames made into RTP packets (once per frame, for every RTSP session and the forward).
    pub rtp_frames_packetized: u64,
    /// Its first `--forward`, when it has one (what `forwards` begins with; kept for the
    /// readers of one forward).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardStatus>,
    /// Every `--forward` destination, in the order given, each with its own counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<ForwardStatus>,
}

/// A camera's `--forward`: where its RTP goes, and what went.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardStatus {
    pub destination: String,
    pub frames: u64,
    pub packets: u64,
    pub bytes: u64,
    pub frames_skipped: u64,
    pub sender_reports: u64,
    pub send_errors: u64,
}

/// A camera's H.264: passed through from the source, or coded by its encoder on demand; and
/// the pictures decoded from a passed-through source while JPEG pictures are wanted.
#[derive(Debug, Clone, Serialize)]
pub struct H264Status {
    /// The source delivers H.264 (passed through; no encoder runs).
    pub passthrough: bool,
    /// Access units from the source published as they came.
    pub passed_through: u64,
    /// Access units from the source decoded to pictures (only while pictures are wanted).
    pub decodes: u64,
    /// What wants pictures now: JPEG watchers, the motion detector, a snapshot waiting.
    pub pictures_wanted: usize,
    /// Frames coded by the encoder (cameras that give pixels or JPEG, while H.264 is watched).
    pub encodes: u64,
    pub encode_us: u64,
    /// Frames the encoder never saw (a newer one replaced them while it was busy).
    pub skipped: u64,
    pub errors: u64,
    /// IDR pictures forced for watchers that joined or fell behind.
    pub keyframes_forced: u64,
}

impl CameraStatus {
    fn of(camera: &Camera, rate: &RateMeter) -> CameraStatus {
        let c = &camera.capture.stats;
        let (state, reason) = match camera.capture.state() {
            SourceState::Starting => ("starting", None),
            SourceState::Live => ("live", None),
            SourceState::Lost(why) => ("lost", Some(why)),
        };
        let shape = camera.capture.shape();
        let published = c.published.load(Relaxed);
        let m = &camera.motion;
        let forwards: Vec<ForwardStatus> = camera
            .forwards
            .get()
            .map(|list| {
                list.iter()
                    .map(|f| {
                        let s = &f.stats;
                        ForwardStatus {
                            destination: f.dest.to_string(),
                            frames: s.frames.load(Relaxed),
                            packets: s.packets.load(Relaxed),
                            bytes: s.bytes.load(Relaxed),
                            frames_skipped: s.frames_skipped.load(Relaxed),
                            sender_reports: s.sender_reports.load(Relaxed),
                            send_errors: s.send_errors.load(Relaxed),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        CameraStatus {
            name: camera.name.clone(),
            source: SourceStatus {
                description: camera.capture.source.clone(),
                state,
                reason,
            },
            width: shape.width,
            height: shape.height,
            fps: shape.fps,
            fps_measured: rate.rate(c.captured.load(Relaxed), Instant::now()),
            motion: MotionStatus {
                enabled: m.enabled.load(Relaxed),
                active: m.active.load(Relaxed),
                events: m.events.load(Relaxed),
                score_pct: f64::from(m.score_bp.load(Relaxed)) / 100.0,
            },
            objects: ObjectsStatus::of(&camera.detect),
            captured: c.captured.load(Relaxed),
            published,
            encoded: published,
            passed_through: c.passed_through.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            no_signal: c.no_signal.load(Relaxed),
            source_lost: c.source_lost.load(Relaxed),
            udp_viewers: camera.data.attached(),
            h264: H264Status {
                passthrough: camera.capture.h264.is_passthrough(),
                passed_through: c.h264_passed_through.load(Relaxed),
                decodes: c.decodes.load(Relaxed),
                pictures_wanted: camera.capture.pictures_wanted(),
                encodes: c.h264_encodes.load(Relaxed),
                encode_us: c.h264_encode_us.load(Relaxed),
                skipped: c.h264_skipped.load(Relaxed),
                errors: c.h264_errors.load(Relaxed),
                keyframes_forced: c.keyframes_forced.load(Relaxed),
            },
            rtp_frames_packetized: camera.rtp.h264.made() + camera.rtp.jpeg.made(),
            forward: forwards.first().cloned(),
            forwards,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub description: String,
    /// `starting`, `live` or `lost`.
    pub state: &'static str,
    /// Why it was lost.
    pub reason: Option<String>,
}

/// The motion detector (`--motion`): whether it runs, whether an event is under way.
#[derive(Debug, Clone, Serialize)]
pub struct MotionStatus {
    pub enabled: bool,
    pub active: bool,
    /// Events since start (MOTION-START lines).
    pub events: u64,
    /// Share of the picture that changed in the last analysed frame, percent.
    pub score_pct: f64,
}

/// The object detector (`--detect`): whether it runs, its counters, what it sees now.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectsStatus {
    pub enabled: bool,
    /// The labels it reports, comma-separated.
    pub labels: String,
    pub analysed: u64,
    /// Published frames it never saw (busy with an earlier one).
    pub skipped: u64,
    pub failed: u64,
    /// Presences started since start (OBJECT-START lines).
    pub events: u64,
    /// Time to analyse the latest frame and on average (decode, resize, model), ms.
    pub detect_ms: f64,
    pub detect_ms_mean: f64,
    /// Each label present now, in the order it appeared.
    pub present: Vec<PresentStatus>,
    /// The latest analysed frame's objects, for drawing over the picture.
    pub boxes: Vec<ObjectBox>,
}

/// A label present now.
#[derive(Debug, Clone, Serialize)]
pub struct PresentStatus {
    pub label: &'static str,
    pub count: usize,
    /// Its best score (0–1) and box in the latest frame that showed it.
    pub score: f64,
    #[serde(rename = "box")]
    pub region: [f64; 4],
    pub since: String,
    pub since_us: u64,
}

/// An object in the latest analysed frame: its box as fractions of the picture (x, y, w, h).
#[derive(Debug, Clone, Serialize)]
pub struct ObjectBox {
    pub label: &'static str,
    pub score: f64,
    #[serde(rename = "box")]
    pub region: [f64; 4],
}

impl ObjectsStatus {
    fn of(d: &crate::detect::watch::DetectState) -> ObjectsStatus {
        let analysed = d.analysed.load(Relaxed);
        let round3 = |v: f32| (f64::from(v) * 1000.0).round() / 1000.0;
        let region = |r: [f32; 4]| r.map(round3);
        ObjectsStatus {
            enabled: d.enabled.load(Relaxed),
            labels: d.labels.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            analysed,
            skipped: d.skipped.load(Relaxed),
            failed: d.failed.load(Relaxed),
            events: d.events.load(Relaxed),
            detect_ms: d.last_us.load(Relaxed) as f64 / 1000.0,
            detect_ms_mean: match analysed + d.failed.load(Relaxed) {
                0 => 0.0,
                n => (d.busy_us.load(Relaxed) as f64 / n as f64).round() / 1000.0,
            },
            present: d
                .present_now()
                .into_iter()
                .map(|p| PresentStatus {
                    label: crate::detect::LABELS[p.class],
                    count: p.count,
                    score: round3(p.score),
                    region: region(p.region),
                    since: crate::journal::stamp_us(p.start_us),
                    since_us: p.start_us,
                })
                .collect(),
            boxes: d
                .boxes_now()
                .into_iter()
                .map(|b| ObjectBox {
                    label: b.label(),
                    score: round3(b.score),
                    region: region(b.region),
                })
                .collect(),
        }
    }
}

/// The MQTT publisher's health.
#[derive(Debug, Serialize)]
pub struct MqttStatus {
    pub connected: bool,
    /// Messages the broker took.
    pub published: u64,
    /// Events lost (the queue was full while the broker was away).
    pub dropped: u64,
    /// Events waiting for the broker.
    pub queued: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Why the last attempt failed or the connection dropped; `null` while connected.
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EncoderStatus {
    /// JPEG quality of the last encoded frame (0 while frames pass through untouched).
    pub quality: u32,
    /// Mean time to encode a frame since start, milliseconds (0 while frames pass through).
    pub encode_ms_mean: f64,
    /// No frame is larger than this (the UDP datagram cap).
    pub max_datagram_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Counters {
    pub captured: u64,
    /// Frames published: encoded, or passed through as the source sent them.
    pub published: u64,
    /// Deprecated: `published` under its old name, kept for one release.
    pub encoded: u64,
    pub passed_through: u64,
    pub rejected: u64,
    /// "No signal" frames published while the source was not delivering.
    pub no_signal: u64,
    pub encode_errors: u64,
    pub source_lost: u64,
    pub source_failures: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Frames watchers did not get because they were behind: those who left plus those live.
    pub frames_skipped: u64,
    pub acks: u64,
    pub joins: u64,
    pub leaves: u64,
    pub refused: u64,
    pub refused_by_reason: BTreeMap<&'static str, u64>,
    /// Refused for a missing or wrong access token.
    pub auth_failures: u64,
    /// Refused unchecked: the address presented too many wrong tokens lately.
    pub auth_throttled: u64,
}

#[derive(Debug, Serialize)]
pub struct WatcherCounts {
    pub total: usize,
    pub max: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Serialize)]
pub struct SessionRow {
    pub id: u64,
    pub kind: &'static str,
    /// The camera it watches.
    pub camera: String,
    pub address: String,
    /// When it joined (RFC 3339, local time).
    pub since: String,
    pub connected_s: f64,
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub bytes_sent: u64,
}

/// Frames per second from the published-frame counter, between requests at least
/// [`RATE_WINDOW`] apart (the first one: since the meter was made).
#[derive(Debug)]
pub(crate) struct RateMeter(Mutex<RateSample>);

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    frames: u64,
    rate: f64,
}

impl RateMeter {
    pub(crate) fn new(frames: u64, now: Instant) -> RateMeter {
        RateMeter(Mutex::new(RateSample {
            at: now,
            frames,
            rate: 0.0,
        }))
    }

    pub(crate) fn rate(&self, frames: u64, now: Instant) -> f64 {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let secs = now.saturating_duration_since(last.at);
        if secs < RATE_WINDOW {
            return last.rate;
        }
        let rate = frames.saturating_sub(last.frames) as f64 / secs.as_secs_f64();
        *last = RateSample {
            at: now,
            frames,
            rate,
        };
        rate
    }
}

impl Status {
    /// With the first camera on top.
    pub(crate) fn of(server: &Server) -> Status {
        Status::of_camera(server, None)
    }

    /// With the camera called `shown` on top (the first if there is none of that name).
    pub(crate) fn of_camera(server: &Server, shown: Option<&str>) -> Status {
        let list = server.cameras.list();
        let cameras: Vec<CameraStatus> = list
            .iter()
            .map(|camera| CameraStatus::of(camera, &camera.rate))
            .collect();
        let shown = shown
            .and_then(|name| list.iter().position(|c| c.name == name))
            .unwrap_or(0);
        let camera = &list[shown];
        let (c, s) = (&camera.capture.stats, &server.stats);
        let CameraStatus {
            source,
            width,
            height,
            fps,
            fps_measured,
            motion,
            published,
            ..
        } = cameras[shown].clone();
        let now = chrono::Local::now();
        let mut list = server.watchers.list();
        list.sort_by_key(|(id, _)| *id);
        let sessions: Vec<SessionRow> = list
            .into_iter()
            .map(|(id, info)| {
                let tally = info.tally_now();
                SessionRow {
                    id,
                    kind: info.kind.as_str(),
                    camera: info.camera.clone(),
                    address: info.peer.to_string(),
                    since: info
                        .joined
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                    connected_s: (now - info.joined).num_milliseconds().max(0) as f64 / 1000.0,
                    frames_sent: tally.frames_sent,
                    frames_skipped: tally.skipped(),
                    bytes_sent: tally.bytes_sent,
                }
            })
            .collect();
        let live_skipped: u64 = sessions.iter().map(|r| r.frames_skipped).sum();
        Status {
            camera: camera.name.clone(),
            source,
            width,
            height,
            fps,
            fps_measured,
            encoder: EncoderStatus {
                quality: c.quality.load(Relaxed),
                encode_ms_mean: {
                    let times = c.encode_times.snapshot();
                    if times.count == 0 {
                        0.0
                    } else {
                        (times.sum_s * 1e6 / times.count as f64).round() / 1e3
                    }
                },
                max_datagram_bytes: server.max_datagram_bytes,
            },
            motion,
            mqtt: mqtt_status(&server.mqtt),
            uptime_s: server.started.elapsed().as_secs_f64(),
            counters: Counters {
                captured: c.captured.load(Relaxed),
                published,
                encoded: published,
                passed_through: c.passed_through.load(Relaxed),
                rejected: c.rejected.load(Relaxed),
                no_signal: c.no_signal.load(Relaxed),
                encode_errors: c.errors.load(Relaxed),
                source_lost: c.source_lost.load(Relaxed),
                source_failures: c.source_failures.load(Relaxed),
                frames_sent: s.frames_sent.load(Relaxed),
                bytes_sent: s.bytes_sent.load(Relaxed),
                frames_skipped: s.frames_skipped.load(Relaxed).saturating_add(live_skipped),
                acks: s.acks.load(Relaxed),
                joins: s.joins.load(Relaxed),
                leaves: s.leaves.load(Relaxed),
                refused: s.refusals.total(),
                refused_by_reason: RefusalCause::ALL
                    .iter()
                    .map(|&r| (r.as_str(), s.refusals.get(r)))
                    .collect(),
                auth_failures: s.auth_failures.load(Relaxed),
                auth_throttled: s.auth_throttled.load(Relaxed),
            },
            watchers: WatcherCounts {
                total: sessions.len(),
                max: server.watchers.max(),
                by_kind: server
                    .watchers
                    .count_by_kind()
                    .iter()
                    .map(|&(k, n)| (WatcherKind::as_str(k), n))
                    .collect(),
            },
            sessions,
            cameras,
            webrtc: WebrtcStatus::of(&server.stats.webrtc),
            hls: HlsStatus::of(&server.stats.hls),
        }
    }
}

fn mqtt_status(m: &crate::mqtt::MqttStats) -> Option<MqttStatus> {
    m.enabled.load(Relaxed).then(|| MqttStatus {
        connected: m.connected.load(Relaxed),
        published: m.published.load(Relaxed),
        dropped: m.dropped.load(Relaxed),
        queued: m.queued.load(Relaxed),
        reconnects: m.reconnects.load(Relaxed),
        last_error: m.last_error(),
    })
}

/// `GET /status`.
pub(crate) async fn status(State(http): State<Arc<HttpState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(Status::of(&http.server)),
    )
        .into_response()
}

/// `GET /cam/<name>/status`: `/status` with that camera on top (what its page reads).
pub(crate) async fn camera_status(
    State(http): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Response {
    if let Err(why) = http.server.cameras.pick(Some(&name)) {
        return super::no_such_camera(why);
    }
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(Status::of_camera(&http.server, Some(&name))),
    )
        .into_response()
}

/// `GET /snapshot.jpg`: the first camera's newest frame; 503 with why before the first one.
pub(crate) async fn snapshot(State(http): State<Arc<HttpState>>) -> Response {
    snapshot_of(&http.server.first_camera()).await
}

/// `GET /cam/<name>/snapshot.jpg`: that camera's newest frame.
pub(crate) async fn camera_snapshot(
    State(http): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Response {
    match http.server.cameras.pick(Some(&name)) {
        Ok(camera) => snapshot_of(&camera).await,
        Err(why) => super::no_such_camera(why),
    }
}

/// How long a snapshot waits for a fresh picture from a camera that makes pictures only while
/// they are wanted (H.264 passed through): its catch-up decode of the GOP, with room to spare.
pub const SNAPSHOT_FRESH_WITHIN: Duration = Duration::from_secs(2);

/// The camera's newest frame. A live camera that decodes only on demand, with no demand now,
/// may hold a picture from long ago: the snapshot asks for pictures and waits (at most
/// [`SNAPSHOT_FRESH_WITHIN`]) for a fresh one, then serves the newest it has.
async fn snapshot_of(camera: &Camera) -> Response {
    let capture = &camera.capture;
    if capture.h264.is_passthrough()
        && capture.pictures_wanted() == 0
        && capture.state() == SourceState::Live
    {
        let mut frames = camera.frames.clone();
        frames.borrow_and_update();
        let _pictures = capture.want_pictures();
        let _ = tokio::time::timeout(SNAPSHOT_FRESH_WITHIN, frames.changed()).await;
    }
    let frame = camera.frames.borrow().clone();
    match frame.as_ref().and_then(|f| f.jpeg()) {
        Some(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            ],
            jpeg.clone(),
        )
            .into_response(),
        None => {
            let why = match camera.capture.state() {
                SourceState::Lost(reason) => format!("no frame yet: the source is lost: {reason}"),
                SourceState::Live if frame.is_some() => {
                    "the newest frame is not a JPEG".to_string()
                }
                _ => "no frame yet: the source is starting".to_string(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                why + "\n",
            )
                .into_response()
        }
    }
}
