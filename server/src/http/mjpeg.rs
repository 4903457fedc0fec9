//! `/stream.mjpg`: multipart/x-mixed-replace MJPEG, one watcher (kind `http`) per client,
//! driven by [`crate::watchers::stream::serve`].
//!
//! ```text
//!  serve ──ready()──▶ PartWriter ◀──demand (a oneshot per part)── MjpegBody ◀──poll── hyper
//!        ──frame────▶ PartWriter ──the part──────────────────────▶ MjpegBody ──▶ socket
//! ```
//!
//! The body asks for a part only when hyper polls it, and hyper polls it only while less than
//! `MAX_BUF_BYTES` of the response waits for the socket. So the writer is "ready" exactly when
//! the client can take more, the frame is picked at that moment (the newest), and at most about
//! one frame waits beyond the socket buffer. A client that stops reading never asks again: the
//! driver ends it with `timeout` after the write deadline.
//!
//! Parts (boundary [`BOUNDARY`]):
//! * by default, as seed 004 sends them: `--B`, `Content-Type`, `Content-Length`, the JPEG;
//! * with `?advance_headers=1` (µStreamer's option; the live page uses it): the next part's
//!   boundary and headers go right after each JPEG. Chromium draws a part only when the next
//!   part's headers have arrived, so without this it always shows the frame before the
//!   newest. The price: no `Content-Length`, since the next frame's size is not known yet
//!   (players find the part's end by the boundary).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{HttpState, Peer, WriteStalled};
use crate::frame::EncodedFrame;
use crate::watchers::stream::{self, FrameWrite, FrameWriter};
use crate::watchers::{LiveTally, WatcherKind, Watchers};
use crate::Camera;

/// The multipart boundary (not found in a JPEG's entropy-coded data in practice, and parts
/// carry their length anyway).
pub const BOUNDARY: &str = "surv-mjpeg-part";

const ADVANCE_HEAD: &[u8] = b"--surv-mjpeg-part\r\nContent-Type: image/jpeg\r\n\r\n";
const ADVANCE_TAIL: &[u8] = b"\r\n--surv-mjpeg-part\r\nContent-Type: image/jpeg\r\n\r\n";

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamQuery {
    /// `1`/`true`: send each part's headers right after the previous JPEG (see the module doc).
    #[serde(default)]
    advance_headers: Option<String>,
}

/// How parts are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartStyle {
    /// Boundary, Content-Type, Content-Length, JPEG, CRLF.
    Framed,
    /// JPEG, then the next part's boundary and Content-Type at once.
    AdvanceHeaders,
}

impl PartStyle {
    /// What the body starts with, before any part.
    pub(crate) fn preamble(self) -> Option<Bytes> {
        match self {
            PartStyle::Framed => None,
            PartStyle::AdvanceHeaders => Some(Bytes::from_static(ADVANCE_HEAD)),
        }
    }

    /// One frame's part, as the pieces the body hands hyper (the JPEG is not copied).
    pub(crate) fn part(self, jpeg: &Bytes) -> Part {
        match self {
            PartStyle::Framed => Part([
                Some(Bytes::from(format!(
                    "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    jpeg.len()
                ))),
                Some(jpeg.clone()),
                Some(Bytes::from_static(b"\r\n")),
            ]),
            PartStyle::AdvanceHeaders => Part([
                None,
                Some(jpeg.clone()),
                Some(Bytes::from_static(ADVANCE_TAIL)),
            ]),
        }
    }
}

/// One part's pieces, in order.
#[derive(Debug)]
pub(crate) struct Part([Option<Bytes>; 3]);

/// `GET /stream.mjpg`: a watcher of the first camera for as long as the client reads.
pub(crate) async fn stream(
    State(http): State<Arc<HttpState>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(stalled): Extension<WriteStalled>,
    Query(query): Query<StreamQuery>,
) -> Response {
    let camera = http.server.first_camera();
    stream_of(&http, peer, stalled, query, camera)
}

/// `GET /cam/<name>/stream.mjpg`: a watcher of that camera.
pub(crate) async fn camera_stream(
    State(http): State<Arc<HttpState>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(stalled): Extension<WriteStalled>,
    Query(query): Query<StreamQuery>,
    Path(name): Path<String>,
) -> Response {
    match http.server.cameras.pick(Some(&name)) {
        Ok(camera) => stream_of(&http, peer, stalled, query, camera),
        Err(why) => super::no_such_camera(why),
    }
}

fn stream_of(
    http: &Arc<HttpState>,
    peer: std::net::SocketAddr,
    stalled: WriteStalled,
    query: StreamQuery,
    camera: Arc<Camera>,
) -> Response {
    let server = &http.server;
    let slot = match Watchers::admit(server) {
        Ok(slot) => slot,
        Err(refused) => {
            refused.record(server, peer, Some(WatcherKind::Http));
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                refused.reason + "\n",
            )
                .into_response();
        }
    };
    let advance = query
        .advance_headers
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | ""));
    let style = if advance {
        PartStyle::AdvanceHeaders
    } else {
        PartStyle::Framed
    };
    let (body, mut writer) = channel(style, stalled);
    let live = Arc::new(LiveTally::default());
    let member = slot.join_reporting(WatcherKind::Http, peer, &camera, live.clone());
    let span = tracing::info_span!("http", id = member.id, %peer);
    let server = server.clone();
    // Ends with the server or with its camera (a reload removing it).
    let shutdown = camera.stop.clone();
    http.tracker.spawn(
        async move {
            let (reason, tally) = stream::serve(
                &server.stats,
                camera.frames.clone(),
                &mut writer,
                server.config.http_write_deadline,
                &shutdown,
                &live,
            )
            .await;
            member.leave(reason, &tally);
        }
        .instrument(span),
    );
    (
        [
            (
                header::CONTENT_TYPE,
                format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
            ),
            (
                header::CACHE_CONTROL,
                "no-cache, no-store, must-revalidate".to_string(),
            ),
            (header::PRAGMA, "no-cache".to_string()),
        ],
        Body::new(body),
    )
        .into_response()
}

/// A body and the writer that feeds it, for one client.
pub(crate) fn channel(style: PartStyle, stalled: WriteStalled) -> (MjpegBody, PartWriter) {
    // Capacity 1: the body asks for one part at a time.
    let (demand_tx, demand_rx) = mpsc::channel(1);
    let body = MjpegBody {
        demand: demand_tx,
        waiting: None,
        queued: style.preamble().into_iter().collect(),
        done: false,
    };
    let writer = PartWriter {
        demand: demand_rx,
        taker: None,
        style,
        stalled,
    };
    (body, writer)
}

/// The response body: asks the writer for a part each time hyper wants more and has nothing.
pub(crate) struct MjpegBody {
    demand: mpsc::Sender<oneshot::Sender<Part>>,
    /// The part asked for.
    waiting: Option<oneshot::Receiver<Part>>,
    /// Pieces of the current part not yet handed to hyper.
    queued: VecDeque<Bytes>,
    /// The watcher has ended: the body ends once its queue is out.
    done: bool,
}

impl http_body::Body for MjpegBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let waiting = match &mut this.waiting {
                Some(rx) => rx,
                None => {
                    let (tx, rx) = oneshot::channel();
                    // Never full: a new part is asked for only once the last one came.
                    if this.demand.try_send(tx).is_err() {
                        this.done = true;
                        continue;
                    }
                    this.waiting.insert(rx)
                }
            };
            match Pin::new(waiting).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Part(pieces))) => {
                    this.queued.extend(pieces.into_iter().flatten());
                }
                Poll::Ready(Err(_writer_gone)) => this.done = true,
            }
            this.waiting = None;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queued.is_empty()
    }
}

/// The driver's end: ready when the body has asked for a part.
pub(crate) struct PartWriter {
    demand: mpsc::Receiver<oneshot::Sender<Part>>,
    /// Where the part asked for goes.
    taker: Option<oneshot::Sender<Part>>,
    style: PartStyle,
    /// The connection's write deadline passed (rather than the client closing it).
    stalled: WriteStalled,
}

impl PartWriter {
    /// Why the body is gone: the connection was cut for taking nothing, or the client left.
    fn gone(&self) -> io::Error {
        if self.stalled.is_set() {
            io::Error::new(io::ErrorKind::TimedOut, "the http client took nothing")
        } else {
            io::Error::new(io::ErrorKind::BrokenPipe, "the http client is gone")
        }
    }

    /// Waits for the body to ask for a part (cancel-safe: a demand is kept once received).
    async fn asked(&mut self) -> io::Result<oneshot::Sender<Part>> {
        match self.taker.take() {
            Some(taker) => Ok(taker),
            None => match self.demand.recv().await {
                Some(taker) => Ok(taker),
                None => Err(self.gone()),
            },
        }
    }
}

impl FrameWriter for PartWriter {
    fn ready(&mut self) -> FrameWrite<'_> {
        Box::pin(async move {
            let taker = self.asked().await?;
            self.taker = Some(taker);
            Ok(())
        })
    }

    fn write_frame<'a>(&'a mut self, _: &'a EncodedFrame, jpeg: &'a Bytes) -> FrameWrite<'a> {
        Box::pin(async move {
            let taker = self.asked().await?;
            let part = self.style.part(jpeg);
            taker.send(part).map_err(|_| self.gone())
        })
    }
}
