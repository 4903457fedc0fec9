//! `/healthz` and `/livez`: what a load balancer, systemd or an orchestrator asks.
//!
//! * **Liveness** (`/livez`): the server's HTTP loop answers. Always 200 while it does; a
//!   camera outage is no reason to restart the server (it reopens sources itself), so
//!   nothing else is looked at.
//! * **Readiness** (`/healthz`): send viewers here. 200 when every camera delivers frames
//!   (its capture path is live: the watchdog declares a camera lost after 5 s, or 10 frame
//!   intervals, without a frame) and the server is not shutting down; else 503 with the reason.
//!   The listeners are bound before the server serves, so an answer means they are up.
//!
//! Both are let in without the token (`admit`): a load balancer's or systemd's probe cannot
//! present one, and the answers say no more than how many cameras deliver (no names, no
//! addresses: `/status` has those, behind the token). Both read a few atomics and the camera
//! list's snapshot, so a probe every second costs nothing measurable.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::HttpState;
use crate::capture::SourceState;

/// The paths answered without the token.
pub(crate) fn is_health_path(path: &str) -> bool {
    path == "/healthz" || path == "/livez"
}

/// `/healthz`'s body.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    cameras: usize,
    /// Cameras whose frames are flowing.
    live: usize,
    /// Cameras with no frame yet since they (re)started.
    starting: usize,
    /// Cameras whose source failed or went quiet (being reopened).
    lost: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /healthz`: readiness (see the module's comment).
pub(crate) async fn ready(State(http): State<Arc<HttpState>>) -> Response {
    let list = http.server.cameras.list();
    let mut r = Readiness {
        ready: false,
        cameras: list.len(),
        live: 0,
        starting: 0,
        lost: 0,
        reason: None,
    };
    for camera in list.iter() {
        match camera.capture.state() {
            SourceState::Live => r.live += 1,
            SourceState::Starting => r.starting += 1,
            SourceState::Lost(_) => r.lost += 1,
        }
    }
    r.reason = if http.shutdown.is_cancelled() {
        Some("shutting down".into())
    } else if r.cameras == 0 {
        Some("no camera".into())
    } else if r.live < r.cameras {
        Some(format!(
            "{} of {} cameras deliver no frames ({} starting, {} lost): /status names them",
            r.cameras - r.live,
            r.cameras,
            r.starting,
            r.lost
        ))
    } else {
        None
    };
    r.ready = r.reason.is_none();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(r)).into_response()
}

/// `GET /livez`: liveness, 200 whenever the HTTP loop answers.
pub(crate) async fn live() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "{\"live\":true}\n",
    )
        .into_response()
}
