//! `rtsp://[user:pass@]host[:port]/path`: an RTSP camera, through retina (Moonfire NVR's RTSP
//! client). MJPEG (RFC 2435) frames are passed through as the camera made them; H.264 is decoded
//! once (openh264) and the picture JPEG-encoded once by the capture path.
//!
//! ```text
//!  camera ──RTSP/RTP (TCP interleaved, or UDP)──▶ retina: depacketize ──▶ worker thread
//!                                                  (this task: deadlines)   MJPEG: publish_jpeg
//!                                                                            H.264: decode → I420
//!                                                                                   → publish_raw
//! ```
//!
//! Each run opens afresh ([`session::open`]: connect + DESCRIBE, SETUP, PLAY, each under a
//! deadline), takes the first video stream that is MJPEG or H.264, and hands each frame to the
//! `worker` thread, which shows the newest frame and never builds a backlog. No frame for
//! [`FRAME_TIMEOUT`] is a lost camera: the run returns why, and the capture path reconnects with
//! backoff. Options used: `--rtsp-transport`, `--max-frame-bytes`.
//!
//! retina is vendored with a bound on each RTSP message it reads (256 KiB, head and body) and on
//! each H.264 access unit (8 MiB of packets; `vendor/retina/SURV-PATCH.md`): a camera's endless
//! or oversized answer, or a picture that never ends, is a lost source whose reason gives the
//! size, never a growing buffer.

pub mod h264;
pub mod session;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use retina::codec::CodecItem;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spec::{redact, RtspTransport};
use super::{unix_micros_now, Source, SourceError, SourceRun};
use crate::capture::FrameSink;
use session::{Codec, Opened, Target};
use worker::{Unit, Worker};

/// No frame from the camera for this long: it is lost (reconnect).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// An RTSP camera.
pub struct RtspSource {
    /// The URL as given (with its login), shown only redacted.
    url: String,
    target: Target,
    transport: RtspTransport,
    max_frame_bytes: usize,
}

impl RtspSource {
    /// Checks the URL; nothing is opened until the source runs.
    pub fn new(
        url: &str,
        transport: RtspTransport,
        max_frame_bytes: usize,
    ) -> Result<RtspSource, SourceError> {
        let target = session::parse_target(url).map_err(|reason| SourceError::Open {
            device: redact(url),
            reason,
        })?;
        Ok(RtspSource {
            url: url.to_string(),
            target,
            transport,
            max_frame_bytes,
        })
    }

    fn lost(&self, reason: String) -> SourceError {
        SourceError::Read {
            device: self.describe(),
            reason,
        }
    }

    async fn run_session(
        &self,
        sink: &FrameSink,
        stop: &CancellationToken,
    ) -> Result<(), SourceError> {
        let opened = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            opened = session::open(&self.target, self.transport) => opened,
        };
        let Opened {
            mut demuxed,
            stream,
            codec,
            shape,
        } = opened.map_err(|reason| SourceError::Open {
            device: self.describe(),
            reason,
        })?;
        let transport = match self.transport {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        };
        sink.opened(
            &format!("{} ({} over {transport})", self.describe(), codec.as_str()),
            shape,
        );
        let mut worker = Worker::start(sink, codec).map_err(|reason| self.lost(reason))?;
        let mut deadline = Instant::now() + FRAME_TIMEOUT;
        let outcome = loop {
            let item = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                item = tokio::time::timeout_at(deadline, demuxed.next()) => item,
            };
            let frame = match item {
                Err(_) => {
                    // Over UDP the usual cause is a firewall or NAT dropping the media.
                    let hint = match self.transport {
                        RtspTransport::Udp => " (over UDP: try --rtsp-transport tcp)",
                        RtspTransport::Tcp => "",
                    };
                    break Err(self.lost(format!(
                        "no frame from the camera for {} s{hint}",
                        FRAME_TIMEOUT.as_secs()
                    )));
                }
                Ok(None) => break Err(self.lost("the camera ended the stream".into())),
                Ok(Some(Err(e))) => break Err(self.lost(session::explain(&e))),
                Ok(Some(Ok(CodecItem::VideoFrame(f)))) if f.stream_id() == stream => f,
                Ok(Some(Ok(_))) => continue,
            };
            deadline = Instant::now() + FRAME_TIMEOUT;
            let capture_unix_us = unix_micros_now();
            // retina has assembled the frame by now (its JPEG depacketizer caps a frame at
            // 2 MB, its H.264 one an access unit at 8 MiB of packets): this keeps oversized
            // frames from going further.
            if frame.data().len() > self.max_frame_bytes {
                sink.reject("frame over --max-frame-bytes");
                continue;
            }
            let is_key = frame.is_random_access_point();
            let data = frame.into_data();
            let unit = match codec {
                Codec::Mjpeg => Unit::Jpeg {
                    jpeg: Bytes::from(data),
                    capture_unix_us,
                },
                Codec::H264 => Unit::H264 {
                    access_unit: data,
                    is_key,
                    capture_unix_us,
                },
            };
            if let Err(reason) = worker.offer(unit, sink) {
                break Err(self.lost(reason));
            }
        };
        worker.finish().await;
        outcome
    }
}

impl Source for RtspSource {
    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(self.run_session(sink, stop))
    }
}
