//! LL-HLS over HTTP: `GET /cam/<name>/index.m3u8` (and `/index.m3u8`, the first camera) the
//! playlist, blocking with `_HLS_msn`/`_HLS_part`; `GET /cam/<name>/hls/<id>/init.mp4`,
//! `…/<msn>.m4s` (a segment) and `…/<msn>.<part>.m4s` (a part) the media. The muxers are
//! [`crate::hls`].
//!
//! Made for an HTTP cache in front (nginx `proxy_cache` with `proxy_cache_lock`):
//!
//! * Media URLs are immutable: a new muxer has a new random stream id, so a URL never names
//!   other bytes. `Cache-Control: public, max-age=31536000, immutable`, a strong `ETag`
//!   (`If-None-Match` answered 304). No `Age`: an origin does not send one; a cache adds it.
//! * Media URLs carry no token, so every client's requests share one cache entry: the
//!   128-bit stream id is the capability, and only the playlist, which needs the token, tells
//!   it; it dies with the muxer (30 s after the last request). `admit` lets these paths in.
//! * Playlists need the token. Behind a cache it should be `?token=`: the cache key holds the
//!   query, so a request without the token never matches a cached playlist. A playlist asked
//!   for with an `Authorization` header is answered `private` (a shared cache must not store
//!   it and serve it to others). Plain playlists live 1 s in a cache; blocking ones (their
//!   URL names the part they waited for, and every later answer is as good) 6 s, so a cache
//!   coalesces a crowd's blocking reloads into one request here.
//! * Waits are bounded: three target durations (then 503, as the spec says), at most
//!   [`MAX_WAITING`] requests at once (then 503 at once), and a request further ahead than the
//!   spec allows is 400. Everything is counted (`surv_hls_*` in `/metrics`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::HttpState;
use crate::hls::playlist::{self, Reload};
use crate::hls::segmenter::Edge;
use crate::hls::{wait_until, HlsStats, HlsStream, MAX_WAITING};
use crate::Camera;

/// What immutable media says to caches.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A new muxer's first segment needs its first GOP: up to `--gop-secs`, or a camera's own.
const START_WAIT: Duration = Duration::from_secs(10);
/// Waits are at most this, whatever the target duration.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Whether `path` is HLS media (`/cam/<name>/hls/<id>/<file>`): let in without the token, the
/// stream id standing in for it.
pub(crate) fn is_media_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (Some("cam"), Some(_), Some("hls"), Some(_), Some(_), None)
    )
}

/// Whether `path` is HLS: a playlist (`/index.m3u8`, `/cam/<name>/index.m3u8`) or media.
pub(crate) fn is_hls_path(path: &str) -> bool {
    path == "/index.m3u8"
        || is_media_path(path)
        || path
            .strip_prefix("/cam/")
            .and_then(|rest| rest.strip_suffix("/index.m3u8"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// A file under a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFile {
    Init,
    Segment(u64),
    Part(u64, usize),
}

impl MediaFile {
    /// `init.mp4`, `<msn>.m4s`, `<msn>.<part>.m4s` (decimal digits only); `None` for any other.
    pub fn parse(name: &str) -> Option<MediaFile> {
        if name == "init.mp4" {
            return Some(MediaFile::Init);
        }
        let stem = name.strip_suffix(".m4s")?;
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match stem.split_once('.') {
            None => Some(MediaFile::Segment(number(stem)?)),
            Some((msn, part)) => Some(MediaFile::Part(
                number(msn)?,
                usize::try_from(number(part)?).ok()?,
            )),
        }
    }
}

/// A counted refusal.
fn refuse(stats: &HlsStats, status: StatusCode, why: String) -> Response {
    match status {
        StatusCode::BAD_REQUEST => &stats.refused_bad_request,
        StatusCode::NOT_FOUND => &stats.refused_not_found,
        _ => &stats.refused_busy,
    }
    .fetch_add(1, Relaxed);
    let mut response = (status, why + "\n").into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Counts a waiting request while it lives; `None` when [`MAX_WAITING`] wait already.
struct Waiting<'a>(&'a HlsStats);

impl<'a> Waiting<'a> {
    fn enter(stats: &'a HlsStats) -> Option<Waiting<'a>> {
        if stats.waiting.fetch_add(1, Relaxed) >= MAX_WAITING {
            stats.waiting.fetch_sub(1, Relaxed);
            return None;
        }
        stats.blocked_reloads.fetch_add(1, Relaxed);
        Some(Waiting(stats))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

/// How long a blocking request may wait: three target durations.
fn wait_limit(stream: &HlsStream) -> Duration {
    let target = stream.with_window(|w| w.target_duration_s());
    Duration::from_secs(target.saturating_mul(3)).min(MAX_WAIT)
}

/// `GET /cam/<name>/index.m3u8`.
pub(crate) async fn camera_playlist(
    State(http): State<Arc<HttpState>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match http.server.cameras.pick(Some(&name)) {
        Ok(camera) => playlist(&http, &camera, "hls/", &uri, &headers).await,
        Err(why) => refuse(&http.server.stats.hls, StatusCode::NOT_FOUND, why),
    }
}

/// `GET /index.m3u8`: the first camera's.
pub(crate) async fn first_playlist(
    State(http): State<Arc<HttpState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let camera = http.server.first_camera();
    let base = format!("cam/{}/hls/", camera.name);
    playlist(&http, &camera, &base, &uri, &headers).await
}

async fn playlist(
    http: &HttpState,
    camera: &Arc<Camera>,
    base: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let stats = &http.server.stats.hls;
    let reload = match Reload::parse(uri.query()) {
        Ok(reload) => reload,
        Err(e) => return refuse(stats, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(stream) = http.hls.stream(camera) else {
        return refuse(
            stats,
            StatusCode::SERVICE_UNAVAILABLE,
            "no random stream id could be drawn".into(),
        );
    };
    let edge = *stream.edge().borrow();
    let has_segment = |_: &Option<Edge>| stream.with_window(|w| w.complete() > 0);
    let ready = match (reload.msn, edge) {
        (Some(_), Some(edge)) => {
            if let Err(e) = reload.check_ahead(edge) {
                return refuse(stats, StatusCode::BAD_REQUEST, e.to_string());
            }
            edge.reached(reload.msn.unwrap_or(0), reload.part)
        }
        // A new muxer: its numbers start at the clock's seconds; a request for an older one
        // is answered with what there is, once there is a segment.
        (Some(_), None) | (None, _) => has_segment(&edge),
    };
    if !ready {
        let Some(_waiting) = Waiting::enter(stats) else {
            return refuse(
                stats,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_WAITING} requests wait already"),
            );
        };
        let reached = match (reload.msn, edge) {
            (Some(msn), Some(_)) => {
                wait_until(&stream, wait_limit(&stream), |e| {
                    e.is_some_and(|e| e.reached(msn, reload.part))
                })
                .await
            }
            _ => wait_until(&stream, START_WAIT, has_segment).await,
        };
        if !reached {
            stats.wait_timeouts.fetch_add(1, Relaxed);
            return refuse(
                stats,
                StatusCode::SERVICE_UNAVAILABLE,
                "the stream did not reach that point in time; ask again".into(),
            );
        }
    }
    let prefix = format!("{base}{}/", stream.id);
    let (text, edge) = stream.with_window(|w| (playlist::render(w, &prefix), w.edge()));
    let etag = format!("\"{}-{}-{}\"", stream.id, edge.msn, edge.parts);
    stats.playlists_served.fetch_add(1, Relaxed);
    if !reload.blocks() && if_none_match(headers, &etag) {
        stats.not_modified.fetch_add(1, Relaxed);
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let cache = match (headers.contains_key(header::AUTHORIZATION), reload.blocks()) {
        (true, _) => "private, max-age=1",
        (false, false) => "public, max-age=1",
        (false, true) => "public, max-age=6",
    };
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, cache),
            (header::ETAG, etag.as_str()),
        ],
        text,
    )
        .into_response()
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// `GET /cam/<name>/hls/<id>/<file>`.
pub(crate) async fn media(
    State(http): State<Arc<HttpState>>,
    Path((name, id, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let stats = &http.server.stats.hls;
    let not_found = |what: &str| {
        refuse(
            stats,
            StatusCode::NOT_FOUND,
            format!("no {what} here: the stream ended or moved on; reload the playlist"),
        )
    };
    let Some(file) = MediaFile::parse(&file) else {
        return not_found("such file");
    };
    let Some(stream) = http.hls.running(&name, &id) else {
        return not_found("such stream");
    };
    let bytes = match file {
        MediaFile::Init => stream.init(),
        MediaFile::Segment(msn) => stream.with_window(|w| w.segment(msn)?.bytes.clone()),
        MediaFile::Part(msn, i) => match part(stats, &stream, msn, i).await {
            Ok(bytes) => bytes,
            Err(refused) => return refused,
        },
    };
    let Some(bytes) = bytes else {
        return not_found("such part or segment");
    };
    match file {
        MediaFile::Init => &stats.inits_served,
        MediaFile::Segment(_) => &stats.segments_served,
        MediaFile::Part(..) => &stats.parts_served,
    }
    .fetch_add(1, Relaxed);
    let etag = format!("\"{id}-{}\"", etag_name(file));
    if if_none_match(&headers, &etag) {
        stats.not_modified.fetch_add(1, Relaxed);
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, IMMUTABLE.into()),
            ],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "video/mp4"),
            (header::CACHE_CONTROL, IMMUTABLE),
            (header::ETAG, etag.as_str()),
        ],
        bytes,
    )
        .into_response()
}

fn etag_name(file: MediaFile) -> String {
    match file {
        MediaFile::Init => "init".into(),
        MediaFile::Segment(msn) => msn.to_string(),
        MediaFile::Part(msn, i) => format!("{msn}.{i}"),
    }
}

/// A part's bytes; the part after the newest (the playlist's preload hint) is waited for,
/// like a blocking reload. `Err`: the answer for a wait refused or run out.
async fn part(
    stats: &HlsStats,
    stream: &HlsStream,
    msn: u64,
    i: usize,
) -> Result<Option<Bytes>, Response> {
    let get = || stream.with_window(|w| w.part(msn, i).map(|p| p.bytes.clone()));
    if let Some(bytes) = get() {
        return Ok(Some(bytes));
    }
    let Some(edge) = *stream.edge().borrow() else {
        return Ok(None);
    };
    let hinted =
        (msn == edge.msn && i == edge.parts) || (Some(msn) == edge.msn.checked_add(1) && i == 0);
    if !hinted {
        return Ok(None);
    }
    let Some(_waiting) = Waiting::enter(stats) else {
        return Err(refuse(
            stats,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_WAITING} requests wait already"),
        ));
    };
    let reached = wait_until(stream, wait_limit(stream), |e| {
        e.is_some_and(|e| e.reached(msn, Some(i)))
    })
    .await;
    if !reached {
        stats.wait_timeouts.fetch_add(1, Relaxed);
        return Err(refuse(
            stats,
            StatusCode::SERVICE_UNAVAILABLE,
            "the part did not come in time; reload the playlist".into(),
        ));
    }
    // A segment that ended with fewer parts: this one never comes.
    Ok(get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hls_paths_are_the_playlists_and_the_media() {
        for yes in [
            "/index.m3u8",
            "/cam/main/index.m3u8",
            "/cam/main/hls/0123abcd/init.mp4",
            "/cam/main/hls/0123abcd/17.4.m4s",
        ] {
            assert!(is_hls_path(yes), "{yes}");
        }
        for no in [
            "/",
            "/status",
            "/cam/main/",
            "/cam/main/whep",
            "/cam//index.m3u8",
            "/cam/a/b/index.m3u8",
            "/index.m3u8/x",
            "/cam/main/index.m3u",
        ] {
            assert!(!is_hls_path(no), "{no}");
        }
    }

    #[test]
    fn media_names_parse_strictly() {
        assert_eq!(MediaFile::parse("init.mp4"), Some(MediaFile::Init));
        assert_eq!(MediaFile::parse("17.m4s"), Some(MediaFile::Segment(17)));
        assert_eq!(MediaFile::parse("17.4.m4s"), Some(MediaFile::Part(17, 4)));
        for bad in [
            "",
            ".m4s",
            "1..m4s",
            "1.2.3.m4s",
            "-1.m4s",
            "+1.m4s",
            "1 .m4s",
            "１.m4s",
            "99999999999999999999.m4s",
            "123456789012345678901.m4s",
            "init.mp4 ",
            "1.m4",
            "../1.m4s",
        ] {
            assert_eq!(MediaFile::parse(bad), None, "{bad:?}");
        }
        assert!(is_media_path("/cam/main/hls/abc/1.m4s"));
        assert!(!is_media_path("/cam/main/index.m3u8"));
        assert!(!is_media_path("/cam/main/hls/abc"));
        assert!(!is_media_path("/cam/main/hls/abc/1.m4s/x"));
        assert!(!is_media_path("/cam/main/whep/abc/1.m4s"));
    }

    #[test]
    fn waiting_requests_are_bounded_and_counted() {
        let stats = HlsStats::default();
        let held: Vec<_> = (0..MAX_WAITING)
            .map(|_| Waiting::enter(&stats).expect("room"))
            .collect();
        assert_eq!(stats.waiting.load(Relaxed), MAX_WAITING);
        assert!(Waiting::enter(&stats).is_none(), "one past the bound");
        assert_eq!(stats.waiting.load(Relaxed), MAX_WAITING);
        assert_eq!(stats.blocked_reloads.load(Relaxed), MAX_WAITING as u64);
        drop(held);
        assert_eq!(stats.waiting.load(Relaxed), 0);
        assert!(Waiting::enter(&stats).is_some());
    }
}
