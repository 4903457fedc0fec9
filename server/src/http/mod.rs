//! The HTTP server for browsers and players: the live page (`/`), the MJPEG stream
//! (`/stream.mjpg`, one watcher of kind `http` per client), the newest frame (`/snapshot.jpg`),
//! the server's state as JSON (`/status`) and as Prometheus text (`/metrics`), the SDP of a
//! camera's `--forward` (`/cam/<name>/stream.sdp`), WebRTC offers by WHEP
//! (`/cam/<name>/whep`, `whep.rs`), LL-HLS (`/cam/<name>/index.m3u8`, `hls.rs`), and readiness
//! and liveness for load balancers (`/healthz`, `/livez`, `health.rs`).
//!
//! axum routes the requests; each connection is served by hyper's HTTP/1 connection in a task
//! of its own, with three bounds: a request's headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (idle keep-alive connections included), a write that makes no
//! progress for `Config::http_write_deadline` ends the connection (`io::DeadlineIo`), and
//! hyper buffers at most [`MAX_BUF_BYTES`] of a response beyond the socket, so that a slow
//! MJPEG client is sent the newest frame, not a queue of old ones (`mjpeg.rs`). At most
//! `--max-viewers` + `EXTRA_CONNECTIONS` connections are open at once; beyond that a new one
//! pushes out the oldest that has not sent a request yet, or is answered 503 (`places.rs`).
//!
//! Every request passes `admit` first: the one place where a request is let in or turned
//! away (access control goes there).

mod health;
mod hls;
mod io;
mod metrics;
mod mjpeg;
// The MQTT publisher sends the same `Status` as its stats.
pub(crate) mod status;
#[cfg(test)]
mod tests;
mod whep;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Denied, Presented};
use crate::places::{Entry, Place, Places};
use crate::watchers::webrtc::Webrtc;
use crate::watchers::RefusalCause;
use crate::{sys, Server, SHUTDOWN_GRACE};

pub use mjpeg::BOUNDARY;

/// A request's headers must arrive within this, from the moment the connection waits for them.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What hyper buffers of a response beyond the socket before it stops taking more from the
/// body (hyper's minimum is 8 KiB; its default, ~400 KiB, would queue several old frames).
pub const MAX_BUF_BYTES: usize = 16 * 1024;

/// Bounds of a connection's kernel send buffer (see [`send_buffer_bytes`]).
const MIN_SNDBUF_BYTES: usize = 32 * 1024;
const MAX_SNDBUF_BYTES: usize = 4 * 1024 * 1024;

/// Connections open at once beyond `--max-viewers`: room for pages, snapshots and scrapes.
const EXTRA_CONNECTIONS: usize = 256;

/// Writing the 503 of a full server must not hold a task for long.
const FULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// After an accept error (out of file descriptors, say), wait before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The live page: plain HTML and a few lines of JS, with [`PLAYER`] in it.
static PAGE: LazyLock<String> = LazyLock::new(|| with_player(include_str!("page.html")));
/// The grid of every camera, at `/` when there are several, with [`PLAYER`] in it.
static GRID: LazyLock<String> = LazyLock::new(|| with_player(include_str!("grid.html")));
/// The player both pages share (WebRTC by WHEP, MJPEG when that cannot play), written into
/// each page rather than served apart, so relative addresses stay the page's own.
const PLAYER: &str = include_str!("player.js");

fn with_player(page: &str) -> String {
    page.replacen("/*PLAYER*/", PLAYER, 1)
}

/// The address a request came from (set per connection).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Set when a connection's write made no progress for the write deadline: why its response
/// ended (an MJPEG watcher leaves with `timeout`, not `closed`).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteStalled(pub Arc<AtomicBool>);

impl WriteStalled {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// What the handlers share.
pub(crate) struct HttpState {
    pub server: Arc<Server>,
    /// MJPEG watchers' tasks run here, so that shutdown waits for their LEAVE.
    pub tracker: TaskTracker,
    pub metrics: metrics::Metrics,
    /// Where WHEP offers go; `None`: WebRTC is off.
    pub webrtc: Option<Webrtc>,
    /// The cameras' LL-HLS muxers.
    pub hls: crate::hls::Hls,
    /// The server's: `/healthz` answers 503 once it is cancelled.
    pub shutdown: CancellationToken,
}

/// Serves HTTP on `listener` until `shutdown`, then gives its connections [`SHUTDOWN_GRACE`]
/// to end (MJPEG watchers end with reason `shutdown`).
pub async fn serve(server: Arc<Server>, listener: TcpListener, shutdown: CancellationToken) {
    serve_with(server, listener, None, shutdown).await
}

/// [`serve`], with WHEP offers answered by `webrtc`.
pub async fn serve_with(
    server: Arc<Server>,
    listener: TcpListener,
    webrtc: Option<Webrtc>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let connections = Arc::new(Places::default());
    let max_connections = server.config.max_viewers.saturating_add(EXTRA_CONNECTIONS);
    let state = Arc::new(HttpState {
        metrics: metrics::Metrics::new(server.clone()),
        hls: crate::hls::Hls::new(server.clone(), tracker.clone()),
        server,
        tracker: tracker.clone(),
        webrtc,
        shutdown: shutdown.clone(),
    });
    tracker.spawn(crate::end_cameras_with(
        state.server.clone(),
        shutdown.clone(),
    ));
    let write_deadline = state.server.config.http_write_deadline;
    let server = state.server.clone();
    let app = router(state);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            res = listener.accept() => res,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let place = match Places::enter(&connections, max_connections) {
            Entry::Free(place) => place,
            Entry::Evicted(place) => {
                // The connection pushed out never sent a request: no answer is owed to it.
                server.stats.refusals.count(RefusalCause::Crowded);
                place
            }
            Entry::Full => {
                server.stats.refusals.count(RefusalCause::Full);
                tracker.spawn(answer_full(tcp, peer));
                continue;
            }
        };
        let sndbuf = send_buffer_bytes(&server);
        tracker.spawn(connection(
            app.clone(),
            tcp,
            sndbuf,
            peer,
            write_deadline,
            shutdown.clone(),
            place,
        ));
    }
    crate::wind_down(&tracker, "http connections").await;
}

/// Every place has a request behind it: a 503 the client can read, then the connection closes.
async fn answer_full(mut tcp: TcpStream, peer: SocketAddr) {
    const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n\r\nsurv: every HTTP connection place taken";
    tracing::debug!(%peer, "http connection refused: every place taken");
    let _ = tokio::time::timeout(FULL_ANSWER_TIMEOUT, tcp.write_all(FULL)).await;
}

/// The kernel's send buffer for a connection: about two frames of the stream as it is now
/// (the kernel doubles it for its bookkeeping). Left to autotuning it grows to megabytes,
/// which for an MJPEG client on a slow link is seconds of old frames queued before the
/// newest; two frames still let a 50 ms path carry 40 frames a second.
fn send_buffer_bytes(server: &Server) -> usize {
    // The largest camera's frame: the connection may ask for any of them.
    let frame_bytes = server
        .cameras
        .list()
        .iter()
        .map(|c| c.frames.borrow().as_ref().map_or(0, |f| f.payload_bytes()))
        .max()
        .unwrap_or(0);
    frame_bytes
        .saturating_mul(2)
        .clamp(MIN_SNDBUF_BYTES, MAX_SNDBUF_BYTES)
}

/// The routes, behind [`admit`].
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/index.html", get(home))
        .route("/stream.mjpg", get(mjpeg::stream))
        .route("/index.m3u8", get(hls::first_playlist))
        .route("/cam/{name}/index.m3u8", get(hls::camera_playlist))
        .route("/cam/{name}/hls/{id}/{file}", get(hls::media))
        .route("/snapshot.jpg", get(status::snapshot))
        .route("/cam/{name}/", get(page))
        .route("/cam/{name}/stream.mjpg", get(mjpeg::camera_stream))
        .route("/cam/{name}/snapshot.jpg", get(status::camera_snapshot))
        .route("/cam/{name}/status", get(status::camera_status))
        .route("/cam/{name}/stream.sdp", get(forward_sdp))
        .route(
            "/cam/{name}/whep",
            post(whep::post)
                .options(whep::preflight)
                .fallback(whep::not_allowed),
        )
        .route(
            "/cam/{name}/whep/{session}",
            axum::routing::delete(whep::delete)
                .options(whep::preflight)
                .fallback(whep::not_allowed),
        )
        .route("/status", get(status::status))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::ready))
        .route("/livez", get(health::live))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// CORS on every WHEP and LL-HLS response, a refusal too (so that a page can read why): a page
/// of any origin may play the camera by WHEP or with hls.js, and read WHEP's `Location`. A
/// WHEP preflight is answered by its route ([`whep::preflight`]); a player's HLS requests are
/// simple GETs and need none (the token goes in the playlist's `?token=`). The header is the
/// same for every origin, so a cache keeps one copy.
async fn cors(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let whep = whep::is_whep_path(path);
    if !whep && !hls::is_hls_path(path) {
        return next.run(request).await;
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if whep {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location"),
        );
    }
    response
}

/// Every request comes through here before its route: the one place where a request is let in
/// or turned away. With `--token`, a request must present it ([`auth::http_presented`]: Bearer,
/// Basic with any user name, or `?token=`), `/metrics` excepted under `--metrics-public`; one
/// that does not is answered 401 with a Basic challenge (browsers then ask for it), counted as
/// a refusal of cause `unauthorized`, and logged at most every ten seconds. From an address
/// slowed down after too many wrong tokens ([`auth::throttle`]), a request presenting one is
/// answered 429 with `Retry-After` (its token unchecked), counted the same way. A browser's
/// CORS preflight (`OPTIONS`) of a WHEP resource carries no credentials and reveals nothing:
/// it is let in. So is LL-HLS media: its unguessable stream id, told only by the playlist
/// (which needs the token), stands in for the token, so that caches share it (`hls.rs`). So
/// are `/healthz` and `/livez` (a load balancer's probe has no token; they reveal only how
/// many cameras deliver, see `health.rs`).
async fn admit(State(http): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let server = &http.server;
    let path = request.uri().path();
    let public = (server.config.metrics_public && path == "/metrics")
        || (request.method() == axum::http::Method::OPTIONS && whep::is_whep_path(path))
        || hls::is_media_path(path)
        || health::is_health_path(path);
    if !server.access.requires_token() || public {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<Peer>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let presented = auth::http_presented(authorization, request.uri().query());
    let presented = presented
        .as_deref()
        .map_or(Presented::Nothing, Presented::Token);
    match server.access.check(&server.stats, peer, "http", presented) {
        Ok(()) => next.run(request).await,
        Err(denied @ Denied::Throttled { retry_after_s }) => {
            server.stats.refusals.count(RefusalCause::Unauthorized);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (header::RETRY_AFTER, retry_after_s.to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
                format!("{denied}\n"),
            )
                .into_response()
        }
        Err(denied) => {
            server.stats.refusals.count(RefusalCause::Unauthorized);
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Basic realm=\"surv\""),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                format!(
                    "{denied}: present the server's token (Bearer, Basic password or ?token=)\n"
                ),
            )
                .into_response()
        }
    }
}

/// 404 for a camera name the server does not have, naming the ones it has.
pub(crate) fn no_such_camera(why: String) -> Response {
    (StatusCode::NOT_FOUND, why + "\n").into_response()
}

/// `/`: with more than one camera the grid of them all, else the one camera's live page.
async fn home(State(http): State<Arc<HttpState>>) -> Response {
    if http.server.cameras.len() > 1 {
        return (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            GRID.as_str(),
        )
            .into_response();
    }
    page().await.into_response()
}

/// `?n=N` on `/cam/<name>/stream.sdp`: which of the camera's forwards, from 1.
#[derive(Debug, Deserialize)]
struct SdpQuery {
    n: Option<usize>,
}

/// `GET /cam/<name>/stream.sdp[?n=N]`: the SDP of the camera's `--forward` (its Nth
/// destination's; the first by default), for a receiver to read its RTP with (`ffmpeg -i`,
/// GStreamer's `sdpdemux`); 404 for a camera without a forward, or without an Nth.
async fn forward_sdp(
    State(http): State<Arc<HttpState>>,
    Path(name): Path<String>,
    Query(query): Query<SdpQuery>,
) -> Response {
    let camera = match http.server.cameras.pick(Some(&name)) {
        Ok(camera) => camera,
        Err(why) => return no_such_camera(why),
    };
    let forwards = camera.forwards.get().map_or(&[][..], Vec::as_slice);
    if forwards.is_empty() {
        return no_such_camera(format!(
            "camera {name:?} has no forward (set --forward or its `forward` key)"
        ));
    }
    let n = query.n.unwrap_or(1);
    let Some(forward) = n.checked_sub(1).and_then(|i| forwards.get(i)) else {
        return no_such_camera(format!(
            "camera {name:?} has {} forward destination(s), numbered from 1; no {n}",
            forwards.len()
        ));
    };
    let sdp = forward
        .sdp(
            &camera.name,
            &camera.capture.h264,
            camera.capture.shape().fps,
        )
        .await;
    (
        [
            (header::CONTENT_TYPE, "application/sdp"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        sdp,
    )
        .into_response()
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE.as_str(),
    )
}

/// One connection, until the peer closes it, a bound ends it, or shutdown (then gracefully:
/// the response under way ends, within the grace period).
async fn connection(
    app: Router,
    tcp: TcpStream,
    sndbuf_bytes: usize,
    peer: SocketAddr,
    write_deadline: Duration,
    shutdown: CancellationToken,
    place: Place,
) {
    let place = Arc::new(place);
    // Small writes (a part's headers) go at once; the frames are what is large.
    let _ = tcp.set_nodelay(true);
    if let Err(e) = sys::set_buffer(tcp.as_raw_fd(), libc::SO_SNDBUF, sndbuf_bytes) {
        tracing::debug!(%peer, error = %e, "cannot size the send buffer");
    }
    let stalled = WriteStalled::default();
    let io = TokioIo::new(io::DeadlineIo::new(tcp, write_deadline, stalled.clone()));
    let routes = TowerToHyperService::new(app);
    let requested = place.clone();
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        requested.requested();
        request.extensions_mut().insert(Peer(peer));
        request.extensions_mut().insert(stalled.clone());
        hyper::service::Service::call(&routes, request)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        res = conn.as_mut() => res,
        () = place.evicted.cancelled() => {
            tracing::debug!(%peer, "http connection pushed out before its first request");
            return;
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(res) => res,
                Err(_elapsed) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}
