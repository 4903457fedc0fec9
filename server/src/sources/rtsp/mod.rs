//! `rtsp://[user:pass@]host[:port]/path`: an RTSP camera, through retina (Moonfire NVR's RTSP
//! client). MJPEG (RFC 2435) frames are passed through as the camera made them. H.264 access
//! units are passed through to the camera's H.264 feed as they came (RTSP watchers get the
//! camera's own stream: no decode, no encode); they are decoded (openh264) and the picture
//! JPEG-encoded once only while someone wants pictures: every unit for JPEG watchers or a
//! snapshot ([`CaptureShared::want_pictures`](crate::capture::CaptureShared::want_pictures)),
//! the keyframes alone when only the motion detector looks
//! ([`CaptureShared::want_keyframe_pictures`](crate::capture::CaptureShared::want_keyframe_pictures)).
//!
//! ```text
//!  camera ──RTSP/RTP──▶ retina: depacketize ──▶ this task ──H.264──▶ publish_h264 (feed, always)
//!                                                 │ (deadlines)        └─ pictures wanted ─┐
//!                                                 └──MJPEG──────────────────────────────┐  │
//!                                                                                       ▼  ▼
//!                                                              worker thread: publish_jpeg,
//!                                                              decode → I420 → publish_decoded
//! ```
//!
//! When pictures become wanted (0 → 1), the worker is handed the feed's GOP (the units since
//! the newest keyframe) to decode at once, and shows only its newest picture: the first
//! picture needs no wait for the camera's next keyframe. From then on it decodes each unit;
//! when nothing wants pictures any more, units are no longer handed to it.
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
use surv_codec::annexb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spec::{redact, RtspTransport};
use super::{unix_micros_now, Source, SourceError, SourceRun};
use crate::capture::{Decode, FrameSink};
use crate::frame::{H264AccessUnit, ParameterSets, TOP_LAYER};
use session::{Codec, Opened, Target};
use worker::{Unit, Worker, WAITING_FOR_KEY};

/// No frame from the camera for this long: it is lost (reconnect).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// An RTSP camera.
pub struct RtspSource {
    /// The URL as given (with its login), shown only redacted.
    url: String,
    target: Target,
    transport: RtspTransport,
    max_frame_bytes: usize,
    /// The H.264 feed's media time, continued from run to run.
    timeline: MediaTimeline,
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
            timeline: MediaTimeline::default(),
        })
    }

    fn lost(&self, reason: String) -> SourceError {
        SourceError::Read {
            device: self.describe(),
            reason,
        }
    }

    async fn run_session(
        &mut self,
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
        let mut pictures = sink.capture().picture_demand();
        let mut h264 = H264Run::default();
        self.timeline.new_run();
        let outcome = loop {
            let item = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                changed = pictures.changed(), if codec == Codec::H264 && h264.demand_open => {
                    h264.demand_open = changed.is_ok();
                    let wanted = pictures.borrow_and_update().decode();
                    if let Err(reason) = h264.follow_demand(wanted, &mut worker, sink) {
                        break Err(self.lost(reason));
                    }
                    continue;
                }
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
            let elapsed_90k = frame.timestamp().elapsed();
            let data = Bytes::from(frame.into_data());
            let offered = match codec {
                Codec::Mjpeg => worker
                    .offer(
                        Unit::Jpeg {
                            jpeg: data,
                            capture_unix_us,
                        },
                        sink,
                    )
                    .map(|_| ()),
                Codec::H264 => {
                    let media_time_90k = self.timeline.at(
                        elapsed_90k,
                        std::time::Instant::now(),
                        sink.capture().shape().fps,
                    );
                    let wanted = pictures.borrow_and_update().decode();
                    h264.unit(
                        data,
                        is_key,
                        media_time_90k,
                        capture_unix_us,
                        wanted,
                        &mut worker,
                        sink,
                    )
                }
            };
            if let Err(reason) = offered {
                break Err(self.lost(reason));
            }
        };
        worker.finish().await;
        outcome
    }
}

/// One run's H.264: whether it has started (its first keyframe), and whether the worker's
/// decoder is following the feed.
struct H264Run {
    /// The newest unit passed through this run: its frame number (`None` before the run's
    /// first keyframe: nothing of this run is in the feed yet).
    newest_seq: Option<u64>,
    /// The worker has been handed the GOP and every unit since: its pictures are live.
    decoding: bool,
    /// The picture demand can still change (its sender lives).
    demand_open: bool,
}

impl Default for H264Run {
    fn default() -> H264Run {
        H264Run {
            newest_seq: None,
            decoding: false,
            demand_open: true,
        }
    }
}

impl H264Run {
    /// One access unit from the camera: into the feed as it came (from the run's first
    /// keyframe that carries its parameter sets on), and to the worker while pictures are
    /// wanted: every unit, or the keyframes alone while nothing wants more (the motion
    /// detector's sampling; a keyframe decodes without the units before it). `Err` only when
    /// the worker is gone.
    #[allow(clippy::too_many_arguments)]
    fn unit(
        &mut self,
        data: Bytes,
        is_key: bool,
        media_time_90k: u64,
        capture_unix_us: u64,
        wanted: Decode,
        worker: &mut Worker,
        sink: &FrameSink,
    ) -> Result<(), String> {
        let parameter_sets = if is_key {
            annexb::parameter_sets(&data).map(|(sps, pps)| ParameterSets {
                sps: data.slice_ref(sps),
                pps: data.slice_ref(pps),
            })
        } else {
            None
        };
        // A run starts at a keyframe a decoder can start at: the pictures before it refer to
        // pictures this run never had, and would land in the feed's previous GOP.
        if self.newest_seq.is_none() && parameter_sets.is_none() {
            sink.reject(WAITING_FOR_KEY);
            return Ok(());
        }
        let seq = sink.publish_h264(
            H264AccessUnit {
                layer: if annexb::is_disposable(&data) {
                    TOP_LAYER
                } else {
                    0
                },
                data: data.clone(),
                parameter_sets,
            },
            media_time_90k,
            capture_unix_us,
        );
        self.newest_seq = Some(seq);
        let decode = match wanted {
            Decode::Every => self.decoding,
            Decode::Keyframes => is_key,
            Decode::Nothing => false,
        };
        if decode {
            let unit = Unit::H264 {
                access_unit: data,
                is_key,
                capture_unix_us,
                seq,
            };
            worker.offer(unit, sink).map(|_| ())
        } else {
            self.follow_demand(wanted, worker, sink)
        }
    }

    /// Every picture is wanted or not: start decoding every unit from the feed's GOP, or stop
    /// (keyframes alone need no catch-up: each is decoded as it comes).
    fn follow_demand(
        &mut self,
        wanted: Decode,
        worker: &mut Worker,
        sink: &FrameSink,
    ) -> Result<(), String> {
        if wanted != Decode::Every {
            self.decoding = false;
            return Ok(());
        }
        let Some(seq) = self.newest_seq else {
            return Ok(());
        };
        if self.decoding {
            return Ok(());
        }
        // Under the run's own publishing (this task), the GOP ends at the newest unit.
        let (gop, _) = sink.capture().h264.join();
        // Not queued (the worker is behind): tried again with the next unit.
        self.decoding = worker.offer(Unit::Catchup { units: gop, seq }, sink)?;
        Ok(())
    }
}

/// 90 kHz media time for the H.264 feed: the camera's own RTP spacing within a run (retina's
/// `elapsed()`, not arrival times, which come in bursts over TCP), continued across
/// reconnects from where the previous run ended plus the wall time between, and never going
/// back (a camera whose clock jumps back continues one frame interval on).
#[derive(Debug, Default)]
struct MediaTimeline {
    /// The newest media time given, and when.
    last: Option<(u64, std::time::Instant)>,
    /// This run's media time at `elapsed` 0; `None` until its first unit.
    offset: Option<i128>,
}

impl MediaTimeline {
    /// A new run: its first unit sets where its timestamps land.
    fn new_run(&mut self) {
        self.offset = None;
    }

    fn at(&mut self, elapsed_90k: i64, now: std::time::Instant, fps: u32) -> u64 {
        let step = i128::from(90_000 / fps.max(1)).max(1);
        let elapsed = i128::from(elapsed_90k);
        let offset = *self.offset.get_or_insert_with(|| match self.last {
            None => -elapsed,
            Some((media, at)) => {
                let gap = i128::try_from(now.saturating_duration_since(at).as_micros() * 9 / 100)
                    .unwrap_or(i128::MAX / 4);
                i128::from(media) + gap.max(step) - elapsed
            }
        });
        let mut media = offset + elapsed;
        if let Some((last, _)) = self.last {
            if media <= i128::from(last) {
                media = i128::from(last) + step;
                self.offset = Some(media - elapsed);
            }
        }
        let media = u64::try_from(media.max(0)).unwrap_or(u64::MAX);
        self.last = Some((media, now));
        media
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
