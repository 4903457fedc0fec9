//! WHEP (the WebRTC-HTTP Egress Protocol): `POST /cam/<name>/whep` with an SDP offer answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` on that location
//! ends the session. CORS lets a page from another origin play (the token still needed, as a
//! Bearer header); the preflight `OPTIONS` needs none. The WebRTC side is
//! [`crate::watchers::webrtc`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{HttpState, Peer};
use crate::watchers::webrtc::offer::{self, OfferError, MAX_OFFER_BYTES};
use crate::watchers::webrtc::{refuse_offer, OfferRefused};
use crate::watchers::RefusalCause;

/// An offer's body must arrive within this once its headers have.
pub const OFFER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `path` is a WHEP resource (`/cam/<name>/whep` or a session under it): the paths
/// with CORS, whose preflight needs no token.
pub(crate) fn is_whep_path(path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (Some("cam"), Some(_), Some("whep"), None | Some(_), None)
    )
}

/// `OPTIONS /cam/<name>/whep[/<session>]`: the CORS preflight.
pub(crate) async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "POST, DELETE, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
            (header::ALLOW, "POST, DELETE, OPTIONS"),
        ],
    )
        .into_response()
}

/// `POST /cam/<name>/whep`: an SDP offer in, the answer out.
pub(crate) async fn post(
    State(http): State<Arc<HttpState>>,
    Path(name): Path<String>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let server = &http.server;
    let stats = &server.stats.webrtc;
    stats.offers.fetch_add(1, Relaxed);
    let answered = async {
        let Some(webrtc) = &http.webrtc else {
            return Err(OfferRefused {
                status: 503,
                reason: "WebRTC is off on this server (--webrtc-port 0)".into(),
                retry_after_s: None,
            });
        };
        let camera = server.cameras.pick(Some(&name)).map_err(|why| {
            crate::watchers::Refused::new(RefusalCause::UnknownCamera, why.clone()).record(
                server,
                peer,
                Some(crate::watchers::WatcherKind::Webrtc),
            );
            OfferRefused {
                status: 404,
                reason: why,
                retry_after_s: None,
            }
        })?;
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let bytes = match declared {
            Some(n) if n > MAX_OFFER_BYTES as u64 => Err(OfferError::TooLarge),
            _ => match tokio::time::timeout(
                OFFER_READ_TIMEOUT,
                axum::body::to_bytes(body, MAX_OFFER_BYTES),
            )
            .await
            {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(_)) => Err(OfferError::TooLarge),
                Err(_) => Err(OfferError::NotSdp("its body did not arrive in time".into())),
            },
        };
        let parsed = bytes.and_then(|b| offer::parse(content_type, &b));
        let offer = parsed.map_err(|e| {
            tracing::info!(%peer, camera = %name, error = %e, "WHEP: offer refused");
            refuse_offer(server, peer, RefusalCause::Invalid, &e)
        })?;
        webrtc.open(camera, offer, peer).await
    }
    .await;
    match answered {
        Ok(session) => {
            stats.sessions.fetch_add(1, Relaxed);
            let location = format!("/cam/{name}/whep/{}", session.token);
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_string()),
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
                session.answer,
            )
                .into_response()
        }
        Err(refused) => {
            stats.offers_refused.fetch_add(1, Relaxed);
            refusal(refused)
        }
    }
}

/// `DELETE /cam/<name>/whep/<session>`: the session ends (its peer leaves with `end`).
pub(crate) async fn delete(
    State(http): State<Arc<HttpState>>,
    Path((name, token)): Path<(String, String)>,
) -> Response {
    let ended = match &http.webrtc {
        Some(webrtc) => webrtc.delete(&name, &token).await,
        None => false,
    };
    if ended {
        (StatusCode::OK, "session ended\n").into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such WHEP session\n").into_response()
    }
}

/// Any other method on a WHEP resource (trickle ICE's PATCH among them): 405, as WHEP allows.
pub(crate) async fn not_allowed(method: Method) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST, DELETE, OPTIONS")],
        format!(
            "{method} is not supported here (no trickle ICE: send the offer with its candidates)\n"
        ),
    )
        .into_response()
}

fn refusal(refused: OfferRefused) -> Response {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, refused.reason + "\n").into_response();
    if let Some(s) = refused.retry_after_s {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Capture, CaptureConfig};
    use crate::sources::blocking::{FrameReader, OnThread};
    use crate::sources::test_pattern::TestPattern;
    use crate::{Config, Journal, Server};
    use hyper_util::rt::TokioIo;
    use tokio_util::sync::CancellationToken;

    /// A server with the test pattern, WebRTC on a free loopback port, and its HTTP routes.
    async fn routes() -> (axum::Router, Arc<Server>, Capture, CancellationToken) {
        let log_dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
        let shutdown = CancellationToken::new();
        let source = OnThread::new("test pattern 64x48@5".to_string(), || {
            Ok(Box::new(TestPattern::new(64, 48, 5)?) as Box<dyn FrameReader>)
        });
        let capture = Capture::start(
            Box::new(source),
            CaptureConfig::default(),
            journal.clone(),
            &shutdown,
        )
        .unwrap();
        let server = Arc::new(Server::new(Config::default(), &capture, 65_000, journal));
        let socket =
            crate::watchers::webrtc::WebrtcSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (webrtc, _ended) =
            crate::watchers::webrtc::start(server.clone(), socket, shutdown.clone()).unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let state = Arc::new(HttpState {
            metrics: super::super::metrics::Metrics::new(server.clone()),
            hls: crate::hls::Hls::new(server.clone(), tracker.clone()),
            server: server.clone(),
            tracker,
            webrtc: Some(webrtc),
            shutdown: shutdown.clone(),
        });
        std::mem::forget(log_dir);
        (super::super::router(state), server, capture, shutdown)
    }

    /// Serves one scripted connection: `request` read in two pieces split at `at`, and the
    /// response written must be `expected`, byte for byte.
    async fn scripted(routes: &axum::Router, request: &[u8], at: usize, expected: &[u8]) {
        let io = tokio_test::io::Builder::new()
            .read(&request[..at])
            .read(&request[at..])
            .write(expected)
            .build();
        let routes = tower_service(routes.clone());
        let served = hyper::server::conn::http1::Builder::new()
            .auto_date_header(false)
            .serve_connection(TokioIo::new(io), routes);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection did not end")
            .expect("the connection failed");
    }

    /// The routes as hyper serves them, with the peer's address set as `connection` sets it.
    fn tower_service(
        routes: axum::Router,
    ) -> impl hyper::service::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        let routes = hyper_util::service::TowerToHyperService::new(routes);
        hyper::service::service_fn(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(Peer(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))));
                hyper::service::Service::call(&routes, request)
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_garbage_offer_is_answered_400_however_its_bytes_arrive() {
        let (routes, server, capture, shutdown) = routes().await;
        let body = b"hello, I am not SDP";
        let mut request = format!(
            "POST /cam/main/whep HTTP/1.1\r\nHost: surv\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let why = offer::parse(Some(b"application/sdp"), body)
            .unwrap_err()
            .to_string();
        let text = format!("{why}\n");
        let expected = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
             access-control-allow-origin: *\r\naccess-control-expose-headers: Location\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        for at in 1..request.len() {
            scripted(&routes, &request, at, expected.as_bytes()).await;
        }
        let counted = &server.stats.webrtc;
        use std::sync::atomic::Ordering::Relaxed;
        let n = (request.len() - 1) as u64;
        assert_eq!(counted.offers.load(Relaxed), n);
        assert_eq!(counted.offers_refused.load(Relaxed), n);
        assert_eq!(server.stats.refusals.get(RefusalCause::Invalid), n);
        shutdown.cancel();
        capture.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_preflight_is_answered_without_a_body() {
        let (routes, _server, capture, shutdown) = routes().await;
        let request = b"OPTIONS /cam/main/whep HTTP/1.1\r\nHost: surv\r\nOrigin: null\r\n\
            Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n";
        let expected = "HTTP/1.1 204 No Content\r\naccess-control-allow-methods: POST, DELETE, OPTIONS\r\n\
            access-control-allow-headers: Authorization, Content-Type\r\naccess-control-max-age: 86400\r\n\
            allow: POST, DELETE, OPTIONS\r\naccess-control-allow-origin: *\r\n\
            access-control-expose-headers: Location\r\nconnection: close\r\n\r\n";
        for at in [1, 20, request.len() - 1] {
            scripted(&routes, request, at, expected.as_bytes()).await;
        }
        shutdown.cancel();
        capture.stop().await;
    }

    #[test]
    fn whep_paths_are_the_resource_and_its_sessions() {
        assert!(is_whep_path("/cam/main/whep"));
        assert!(is_whep_path("/cam/main/whep/0123abcd"));
        assert!(!is_whep_path("/cam/main/whep/a/b"));
        assert!(!is_whep_path("/cam/main/stream.mjpg"));
        assert!(!is_whep_path("/whep"));
        assert!(!is_whep_path("/status"));
    }
}
