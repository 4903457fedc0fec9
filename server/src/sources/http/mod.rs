//! The `http://` source: an MJPEG stream (`multipart/x-mixed-replace`) or a still-image URL
//! polled at `--fps`, from a camera surv connects to.
//!
//! What the response says decides the mode, at every (re)open and at every poll of a still
//! URL (a camera may switch a URL from snapshots to a stream: surv follows it):
//! * `multipart/…` → a stream: each JPEG part is passed through ([`multipart`] reads the
//!   parts, whatever the camera's quirks), parts that are not JPEG or are over
//!   `--max-frame-bytes` are rejected and counted, and the stream goes on;
//! * `image/jpeg`, or any body that starts with a JPEG's SOI (servers that label it wrongly) →
//!   a still URL: fetched again every `1/--fps` s, on the same connection when the camera keeps
//!   it open (OAK `script_http_server`, `/snapshot.jpg` of most cameras);
//! * anything else (an HTML page …), and any status but 2xx → the source fails with the reason
//!   (content type, or e.g. "HTTP 401: wrong credentials").
//!
//! Every step with the camera is bounded by a [`Deadlines`]; a failure ends the run with the
//! reason, and the capture path retries with backoff. Used options: `--max-frame-bytes`,
//! `--fps` (stills only). `--size` does not apply: viewers see the camera's size.

pub mod client;
pub mod multipart;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::Response;
use tokio::time::{Duration, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{unix_micros_now, Source, SourceError, SourceOptions, SourceRun};
use crate::capture::{FrameSink, StreamShape};
use crate::frame::JpegFrame;
use client::{next_chunk, status_problem, Connection};
pub use client::{Deadlines, Target};
use multipart::{boundary_param, is_jpeg_type, is_multipart, Event, MultipartReader};

/// A camera or server reached over HTTP.
pub struct HttpSource {
    target: Target,
    max_frame_bytes: usize,
    fps: u32,
    deadlines: Deadlines,
}

/// What a poll of the still URL got.
enum Polled {
    Still(Still),
    /// The URL answers with a stream now: read it as one (on the connection it came on,
    /// which must outlive the body).
    Stream(Connection, Response<Incoming>, String),
}

/// What one still-image response held.
enum Still {
    /// A JPEG (or at least a body that starts like one; the sink checks the rest).
    Image(Bytes),
    /// Over the cap: rejected, and the connection (with the rest of the body) dropped.
    TooLarge(u64),
}

impl HttpSource {
    /// A source for `url` (`http://[user:pass@]host[:port]/path`); nothing is opened yet.
    pub fn new(url: &str, opts: &SourceOptions) -> Result<HttpSource, SourceError> {
        let target = Target::parse(url).map_err(|reason| SourceError::Open {
            device: super::spec::redact(url),
            reason,
        })?;
        Ok(HttpSource {
            target,
            max_frame_bytes: opts.max_frame_bytes,
            fps: opts.fps.max(1),
            deadlines: Deadlines::default(),
        })
    }

    /// Other deadlines than the default 5 s ones (tests shorten them).
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> HttpSource {
        self.deadlines = deadlines;
        self
    }

    fn open_error(&self, reason: String) -> SourceError {
        SourceError::Open {
            device: self.target.shown.clone(),
            reason,
        }
    }

    fn read_error(&self, reason: String) -> SourceError {
        SourceError::Read {
            device: self.target.shown.clone(),
            reason,
        }
    }

    /// Connects, asks, and serves whatever the camera answered until it fails.
    async fn serve(&self, sink: &FrameSink) -> Result<(), SourceError> {
        let mut conn = Connection::open(&self.target, &self.deadlines)
            .await
            .map_err(|r| self.open_error(r))?;
        let response = conn
            .get(&self.target, &self.deadlines)
            .await
            .map_err(|r| self.open_error(r))?;
        if let Some(problem) = status_problem(&response, &self.target) {
            return Err(self.open_error(problem));
        }
        let content_type = content_type(&response);
        if is_multipart(&content_type) {
            return self.open_stream(response, &content_type, sink).await;
        }
        let first = self
            .read_still(response, &content_type)
            .await
            .map_err(|r| self.open_error(r))?;
        sink.opened(
            &format!(
                "{} (still image, polled at {} fps)",
                self.target.shown, self.fps
            ),
            StreamShape {
                width: 0,
                height: 0,
                fps: self.fps,
            },
        );
        // Over the cap, the rest of that body is never read: the connection cannot be reused.
        let conn = matches!(first, Still::Image(_)).then_some(conn);
        self.publish_still(first, sink).await;
        self.poll(conn, sink).await
    }

    /// Serves a `multipart/x-mixed-replace` answer as a stream.
    async fn open_stream(
        &self,
        response: Response<Incoming>,
        content_type: &str,
        sink: &FrameSink,
    ) -> Result<(), SourceError> {
        sink.opened(
            &format!("{} (MJPEG stream)", self.target.shown),
            StreamShape {
                width: 0,
                height: 0,
                fps: 0,
            },
        );
        self.stream(response.into_body(), boundary_param(content_type), sink)
            .await
    }

    /// A `multipart/x-mixed-replace` body: every JPEG part to the sink until the body ends.
    async fn stream(
        &self,
        mut body: Incoming,
        boundary: Option<String>,
        sink: &FrameSink,
    ) -> Result<(), SourceError> {
        if boundary.is_none() {
            tracing::warn!(source = %self.target.shown, "multipart stream without a boundary; taking the first `--` line");
        }
        let mut reader = MultipartReader::new(boundary.as_deref(), self.max_frame_bytes);
        loop {
            let chunk = next_chunk(&mut body, self.deadlines.body_stall)
                .await
                .map_err(|r| self.read_error(r))?
                .ok_or_else(|| self.read_error("the camera ended the stream".into()))?;
            reader.push(&chunk);
            while let Some(event) = reader
                .next_event()
                .map_err(|e| self.read_error(e.to_string()))?
            {
                match event {
                    // On this task when it passes through; a re-encode goes to the
                    // blocking pool, never the runtime's thread.
                    Event::Jpeg(jpeg) => {
                        sink.publish(JpegFrame::new(jpeg, unix_micros_now())).await
                    }
                    Event::Skipped(why) => sink.reject(&why.to_string()),
                    Event::End => {
                        return Err(self
                            .read_error("the camera ended the stream (closing delimiter)".into()))
                    }
                }
            }
        }
    }

    /// Fetches the still URL at `--fps` for as long as the camera answers with images.
    async fn poll(
        &self,
        mut conn: Option<Connection>,
        sink: &FrameSink,
    ) -> Result<(), SourceError> {
        let period = Duration::from_secs_f64(1.0 / f64::from(self.fps));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let still = match self
                .fetch_still(&mut conn)
                .await
                .map_err(|r| self.read_error(r))?
            {
                Polled::Still(still) => still,
                Polled::Stream(_conn, response, content_type) => {
                    tracing::info!(source = %self.target.shown, "the still URL answers with an MJPEG stream now; following it");
                    return self.open_stream(response, &content_type, sink).await;
                }
            };
            if matches!(still, Still::TooLarge(_)) {
                conn = None; // the rest of that body is never read
            }
            self.publish_still(still, sink).await;
        }
    }

    /// One GET of the still URL, on the open connection when the camera kept it; a request
    /// that fails on a kept connection is tried once more on a new one (the camera may have
    /// closed it meanwhile).
    async fn fetch_still(&self, conn: &mut Option<Connection>) -> Result<Polled, String> {
        let kept = conn.take().filter(|c| !c.is_closed());
        let reused = kept.is_some();
        let mut c = match kept {
            Some(c) => c,
            None => Connection::open(&self.target, &self.deadlines).await?,
        };
        let response = match c.get(&self.target, &self.deadlines).await {
            Ok(r) => r,
            Err(e) if reused => {
                tracing::debug!(error = %e, "kept connection failed; connecting again");
                c = Connection::open(&self.target, &self.deadlines).await?;
                c.get(&self.target, &self.deadlines).await?
            }
            Err(e) => return Err(e),
        };
        if let Some(problem) = status_problem(&response, &self.target) {
            return Err(problem);
        }
        let content_type = content_type(&response);
        if is_multipart(&content_type) {
            return Ok(Polled::Stream(c, response, content_type));
        }
        let still = self.read_still(response, &content_type).await?;
        *conn = Some(c);
        Ok(Polled::Still(still))
    }

    async fn publish_still(&self, still: Still, sink: &FrameSink) {
        match still {
            Still::Image(jpeg) => sink.publish(JpegFrame::new(jpeg, unix_micros_now())).await,
            Still::TooLarge(bytes) => sink.reject(&format!(
                "still image of {bytes} bytes is over --max-frame-bytes {}",
                self.max_frame_bytes
            )),
        }
    }

    /// Reads a response that is not multipart: a JPEG (by its type or its first bytes),
    /// capped; anything else is an error naming what the camera sent.
    async fn read_still(
        &self,
        response: Response<Incoming>,
        content_type: &str,
    ) -> Result<Still, String> {
        let cap = self.max_frame_bytes;
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let labelled_jpeg = is_jpeg_type(content_type);
        if let Some(len) = declared.filter(|&len| len > cap as u64) {
            if labelled_jpeg {
                return Ok(Still::TooLarge(len));
            }
        }
        let mut body = response.into_body();
        let mut image = BytesMut::with_capacity(
            declared.map_or(64 * 1024, |l| usize::try_from(l).unwrap_or(cap).min(cap)),
        );
        let not_an_image = || {
            let shown = if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("Content-Type {content_type:?}")
            };
            format!("the camera answered with {shown}, not an MJPEG stream (multipart/x-mixed-replace) or a JPEG image")
        };
        while let Some(chunk) = next_chunk(&mut body, self.deadlines.body_stall).await? {
            if image.len() + chunk.len() > cap {
                if !labelled_jpeg && !image.starts_with(&[0xFF, 0xD8]) {
                    return Err(not_an_image());
                }
                return Ok(Still::TooLarge((image.len() + chunk.len()) as u64));
            }
            image.extend_from_slice(&chunk);
            if !labelled_jpeg && image.len() >= 2 && !image.starts_with(&[0xFF, 0xD8]) {
                return Err(not_an_image());
            }
        }
        if !labelled_jpeg && !image.starts_with(&[0xFF, 0xD8]) {
            return Err(not_an_image());
        }
        Ok(Still::Image(image.freeze()))
    }
}

/// The response's Content-Type, or "" without one (or one that is not text).
fn content_type<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect())
        .unwrap_or_default()
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.target.shown.clone()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                outcome = self.serve(sink) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests;
