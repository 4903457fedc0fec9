//! The capture path's intake: every source hands its frames to a [`FrameSink`], which encodes
//! raw frames once, passes JPEGs through when they fit, tags each with its sequence number and
//! capture time, and publishes the newest frame to every watcher through a `watch` channel.
//!
//! A source that delivers H.264 (an RTSP camera) hands each access unit to
//! [`FrameSink::publish_h264`]: it goes to the camera's H.264 feed as it came (no decode, no
//! encode), counts as captured and keeps the source live, whether or not anyone wants JPEG
//! pictures. The source decodes only while [`CaptureShared::picture_wants`] says something
//! wants pictures (every unit, or its keyframes alone), and publishes those pictures with [`FrameSink::publish_decoded`] under their unit's sequence
//! number.
//!
//! The sink also keeps the source's health (starting, live, lost): the journal's `SOURCE-LOST`
//! and `SOURCE-BACK` lines come from here, once per outage, so no source writes them itself.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use surv_proto::FrameTag;
use tokio::sync::watch;

use super::h264::H264Unit;
use super::{no_signal, CaptureShared, SharedFrame, SourceState, StreamShape};
use crate::encoder::Encoder;
use crate::frame::{
    EncodedFrame, H264AccessUnit, JpegFrame, Payload, PixelFormat, RawFrame, MAX_DECODED_PIXELS,
};
use crate::journal::Journal;
use crate::jpeg::{self, JpegReader, NotAPicture};
use crate::sources::unix_micros_now;

/// While a source keeps failing or sending bad frames, how often that is logged again.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a source delivers frames. Cheap to clone; every clone feeds the same stream.
#[derive(Clone)]
pub struct FrameSink {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<CaptureShared>,
    journal: Arc<Journal>,
    frames: watch::Sender<Option<SharedFrame>>,
    what: String,
    max_datagram_bytes: usize,
    work: Mutex<Work>,
    /// Reads JPEG headers; kept, because creating a turbojpeg handle per frame costs more than
    /// reading the header (and renewed after a bad one: [`JpegReader`]).
    headers: Mutex<HeaderCheck>,
}

/// What only one frame at a time may touch.
struct Work {
    encoder: Encoder,
    /// The next frame's sequence number: one per frame a source delivered.
    seq: u64,
    /// A JPEG decoded for re-encoding, reused, and its decoder.
    decoded: RawFrame,
    decoder: JpegReader,
    /// When the source was reported lost, for the SOURCE-BACK line.
    lost_at: Option<Instant>,
    /// When the newest frame was published, for the capture path's watchdog.
    last_frame: Option<Instant>,
    last_failure_log: Option<Instant>,
    last_reject_log: Option<Instant>,
    /// The source declared no frame rate: the rate is measured from arrivals.
    measure_fps: bool,
    /// For the measured rate: the frame that opened the window, and frames since.
    rate_window: Option<(Instant, u32)>,
    /// The "no signal" picture, reused.
    idle_frame: RawFrame,
}

/// Over how long a window an undeclared frame rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(2);

impl FrameSink {
    pub(super) fn new(
        shared: Arc<CaptureShared>,
        journal: Arc<Journal>,
        encoder: Encoder,
        max_datagram_bytes: usize,
        frames: watch::Sender<Option<SharedFrame>>,
        what: String,
    ) -> FrameSink {
        FrameSink {
            inner: Arc::new(Inner {
                shared,
                journal,
                frames,
                what,
                max_datagram_bytes,
                work: Mutex::new(Work {
                    encoder,
                    seq: 0,
                    decoded: RawFrame::new(),
                    decoder: JpegReader::new(),
                    lost_at: None,
                    last_frame: None,
                    last_failure_log: None,
                    last_reject_log: None,
                    measure_fps: false,
                    rate_window: None,
                    idle_frame: RawFrame::new(),
                }),
                headers: Mutex::new(HeaderCheck::default()),
            }),
        }
    }

    fn work(&self) -> MutexGuard<'_, Work> {
        // A poisoned lock means a frame panicked mid-encode; the encoder state is still sound.
        self.inner.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames delivered by the source so far (published or not).
    pub fn delivered(&self) -> u64 {
        self.inner.shared.stats.captured.load(Relaxed)
    }

    /// The capture path this sink feeds: its counters, picture demand and H.264 feed.
    pub fn capture(&self) -> &Arc<CaptureShared> {
        &self.inner.shared
    }

    /// The stream's frame rate, declared or measured.
    pub(super) fn fps(&self) -> u32 {
        self.inner.shared.shape().fps
    }

    /// When the source's newest frame was published (`None` before the first).
    pub(super) fn last_frame(&self) -> Option<Instant> {
        self.work().last_frame
    }

    /// The source is open: `describe` says what it turned out to be, `shape` what it delivers.
    /// A zero in `shape` is what the source does not know: the size then comes from its frames,
    /// and a zero `fps` is measured from their arrivals. The stream counts as back only when its
    /// first frame arrives.
    pub fn opened(&self, describe: &str, shape: StreamShape) {
        {
            let mut work = self.work();
            work.measure_fps = shape.fps == 0;
            work.rate_window = None;
        }
        tracing::info!(
            source = describe,
            width = shape.width,
            height = shape.height,
            fps = shape.fps,
            "source open"
        );
        self.inner.shared.set_shape(shape);
    }

    /// A raw frame from the source: encoded once under the datagram cap, then published. It
    /// encodes on the calling thread: call it from a source's own thread, not from async code.
    pub fn publish_raw(&self, raw: &RawFrame) {
        let mut work = self.work();
        let seq = self.next_seq(&mut work);
        let encoded = encode(&self.inner.shared, &mut work.encoder, raw, seq);
        self.finish(&mut work, encoded);
    }

    /// An H.264 access unit from the source, passed through to the camera's H.264 feed as it
    /// came: no decode, no encode. It counts as captured and keeps the source live (SOURCE-BACK,
    /// the watchdog) exactly as a published JPEG frame does, so a camera that only delivers
    /// H.264 while nobody wants pictures is live, not stalled. The feed is marked passthrough:
    /// its encoder never starts. Returns the frame's sequence number, for the picture
    /// decoded from it, if one is ([`FrameSink::publish_decoded`]). Cheap (a lock and a
    /// channel send): fine on async code.
    pub fn publish_h264(
        &self,
        au: H264AccessUnit,
        media_time_90k: u64,
        capture_unix_us: u64,
    ) -> u64 {
        let shared = &self.inner.shared;
        if !shared.h264.is_passthrough() {
            shared.h264.set_passthrough(true);
        }
        let seq = {
            let mut work = self.work();
            let seq = self.next_seq(&mut work);
            shared.stats.h264_passed_through.fetch_add(1, Relaxed);
            self.mark_live(&mut work);
            seq
        };
        shared.h264.publish(H264Unit {
            seq: 0,
            au,
            media_time_90k,
            capture_unix_us,
        });
        seq
    }

    /// A picture the source decoded from the frame [`FrameSink::publish_h264`] numbered `seq`:
    /// encoded once and published under that number. It is not another captured frame: the
    /// source's liveness and rate were counted when its unit arrived.
    pub fn publish_decoded(&self, raw: &RawFrame, seq: u64) {
        let mut work = self.work();
        let encoded = encode(&self.inner.shared, &mut work.encoder, raw, seq);
        self.send(encoded);
    }

    /// [`FrameSink::publish_jpeg`] from async code, and waits for it: frames stay in order,
    /// and a source faster than the encoder is slowed (by TCP, or its socket buffer) instead
    /// of queueing. A frame that will pass through (a header check and a copy, some
    /// microseconds) is published on this task; one over the datagram cap is decoded and
    /// re-encoded on the blocking pool, never on the reactor. (Handing every frame to the
    /// pool cost two thread wake-ups a frame: 244 µs of server CPU per pushed 52 KB frame.)
    pub async fn publish(&self, frame: JpegFrame) {
        if self.passes_through(&frame.jpeg) {
            return self.publish_jpeg(&frame);
        }
        let sink = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || sink.publish_jpeg(&frame)).await {
            tracing::warn!(error = %e, "publishing a frame failed");
        }
    }

    /// Whether `jpeg`, tagged, fits the datagram cap: then it is passed through, not re-encoded.
    fn passes_through(&self, jpeg: &[u8]) -> bool {
        jpeg.len() + surv_proto::TAG_BYTES <= self.inner.max_datagram_bytes
    }

    /// A JPEG from the source: passed through untouched (only the tag added) when it fits the
    /// datagram cap, otherwise decoded and re-encoded under it. Not a whole JPEG: rejected.
    /// The re-encode runs on the calling thread: async code calls [`FrameSink::publish`].
    pub fn publish_jpeg(&self, frame: &JpegFrame) {
        let checked = {
            let mut headers = self.inner.headers.lock().unwrap_or_else(|p| p.into_inner());
            check_jpeg(&frame.jpeg, &mut headers)
        };
        let header = match checked {
            Ok(h) => h,
            Err(reason) => return self.reject(reason),
        };
        let mut work = self.work();
        let seq = self.next_seq(&mut work);
        if let Some(objects) = &frame.objects {
            self.inner.shared.set_device_objects(seq, objects.clone());
        }
        let encoded = if self.passes_through(&frame.jpeg) {
            let shared = &self.inner.shared;
            let objects = shared.objects_segment();
            // Objects ride along when they fit too; the picture comes first.
            let objects = match frame.jpeg.len() + surv_proto::TAG_BYTES + objects.len() {
                n if n <= self.inner.max_datagram_bytes => &objects[..],
                _ => &[],
            };
            passthrough(frame, header, seq, shared.in_motion(), objects).inspect(|_| {
                self.inner.shared.stats.passed_through.fetch_add(1, Relaxed);
            })
        } else {
            let Work {
                encoder,
                decoded,
                decoder,
                ..
            } = &mut *work;
            match decode_into(frame, header, decoder, decoded) {
                Ok(()) => encode(&self.inner.shared, encoder, decoded, seq),
                Err(e) => Err(e),
            }
        };
        self.finish(&mut work, encoded);
    }

    /// While the source is not delivering: the "no signal" picture (saying `why`) at the
    /// stream's current size, encoded and published like a frame, with the next sequence number,
    /// but not counted as captured or published and leaving the source's state alone.
    pub fn publish_no_signal(&self, why: &str) {
        let shape = self.inner.shared.shape();
        let mut work = self.work();
        let seq = work.seq;
        work.seq += 1;
        let Work {
            encoder,
            idle_frame,
            ..
        } = &mut *work;
        let lines = [self.inner.what.as_str(), why];
        no_signal::render(
            shape.width,
            shape.height,
            &lines,
            unix_micros_now(),
            idle_frame,
        );
        match encoder.encode(idle_frame, seq) {
            Ok(frame) => {
                self.inner.shared.stats.no_signal.fetch_add(1, Relaxed);
                self.inner.frames.send_replace(Some(Arc::new(frame)));
            }
            Err(e) => tracing::warn!(error = %e, "the no-signal frame could not be encoded"),
        }
    }

    /// The source's state, to wait on.
    pub(super) fn state(&self) -> watch::Receiver<SourceState> {
        self.inner.shared.state.subscribe()
    }

    /// A frame the source delivered could not be used (corrupt, not a JPEG, too big): counted,
    /// and logged at most every ten seconds.
    pub fn reject(&self, reason: &str) {
        let stats = &self.inner.shared.stats;
        let n = stats.rejected.fetch_add(1, Relaxed) + 1;
        let mut work = self.work();
        if work
            .last_reject_log
            .is_none_or(|t| t.elapsed() >= REPEAT_LOG_EVERY)
        {
            work.last_reject_log = Some(Instant::now());
            tracing::warn!(source = %self.inner.what, reason, rejected_so_far = n, "frame rejected");
        }
    }

    /// The source failed (or ended): the first failure of an outage is journalled as
    /// SOURCE-LOST; failures while it stays lost are counted, logged every ten seconds, and
    /// the newest reason is what `/status` and the "no signal" frame show.
    /// The supervisor calls it when a run ends; a push source calls it itself when its camera
    /// disconnects, and goes on waiting for the camera to come back.
    pub fn lost(&self, reason: &str) {
        let shared = &self.inner.shared;
        shared.stats.source_failures.fetch_add(1, Relaxed);
        let mut work = self.work();
        let now = Instant::now();
        if work.lost_at.is_none() {
            work.lost_at = Some(now);
            work.last_failure_log = Some(now);
            shared.stats.source_lost.fetch_add(1, Relaxed);
            let was = shared
                .state
                .send_replace(SourceState::Lost(reason.to_string()));
            if was == SourceState::Starting {
                // A network camera booting after the server is normal: a warning, not an error.
                tracing::warn!(source = %self.inner.what, reason, "source not available yet; retrying");
            } else {
                tracing::error!(source = %self.inner.what, reason, "source lost; retrying");
            }
            self.inner.journal.source_lost(&self.inner.what, reason);
        } else {
            // `/status` shows why it is lost now, not why it was first.
            shared.state.send_if_modified(|state| match state {
                SourceState::Lost(was) if was != reason => {
                    *was = reason.to_string();
                    true
                }
                _ => false,
            });
            if work
                .last_failure_log
                .is_none_or(|t| t.elapsed() >= REPEAT_LOG_EVERY)
            {
                work.last_failure_log = Some(now);
                tracing::warn!(source = %self.inner.what, reason, "source still lost; retrying");
            }
        }
    }

    fn next_seq(&self, work: &mut Work) -> u64 {
        self.inner.shared.stats.captured.fetch_add(1, Relaxed);
        let seq = work.seq;
        work.seq += 1;
        seq
    }

    /// Publishes a frame (or counts why there is none), and marks the source live.
    fn finish(&self, work: &mut Work, encoded: Result<EncodedFrame, String>) {
        if self.send(encoded) {
            self.mark_live(work);
        } else {
            self.mark_back(work);
        }
    }

    /// Publishes a frame to the watchers, or counts why there is none: whether it went out.
    fn send(&self, encoded: Result<EncodedFrame, String>) -> bool {
        let shared = &self.inner.shared;
        match encoded {
            Ok(frame) => {
                shared.note_size(frame.width, frame.height);
                shared
                    .stats
                    .quality
                    .store(u32::from(frame.quality), Relaxed);
                shared.stats.published.fetch_add(1, Relaxed);
                self.inner.frames.send_replace(Some(Arc::new(frame)));
                true
            }
            Err(reason) => {
                shared.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    reason,
                    "frame dropped: it could not be encoded under the cap"
                );
                false
            }
        }
    }

    /// A frame arrived and went out: the watchdog's clock, the measured rate, and the source
    /// is live.
    fn mark_live(&self, work: &mut Work) {
        work.last_frame = Some(Instant::now());
        if work.measure_fps {
            measure_rate(&self.inner.shared, &mut work.rate_window);
        }
        self.mark_back(work);
    }

    /// The source delivers: SOURCE-BACK after an outage, and the state is live.
    fn mark_back(&self, work: &mut Work) {
        let shared = &self.inner.shared;
        if let Some(since) = work.lost_at.take() {
            let down = since.elapsed();
            tracing::info!(source = %self.inner.what, down_s = down.as_secs_f64(), "source back");
            self.inner.journal.source_back(&self.inner.what, down);
        }
        if !matches!(*shared.state.borrow(), SourceState::Live) {
            shared.state.send_replace(SourceState::Live);
        }
    }
}

/// Counts one frame into the window; at the window's end, the rate seen (frame intervals per
/// second) becomes the stream's, and this frame opens the next window.
fn measure_rate(shared: &CaptureShared, window: &mut Option<(Instant, u32)>) {
    let now = Instant::now();
    let Some((since, frames)) = window else {
        *window = Some((now, 0));
        return;
    };
    *frames += 1;
    let elapsed = now.duration_since(*since);
    if elapsed >= RATE_WINDOW {
        let fps = (f64::from(*frames) / elapsed.as_secs_f64())
            .round()
            .max(1.0);
        shared.set_fps(fps as u32);
        *window = Some((now, 0));
    }
}

fn encode(
    shared: &CaptureShared,
    encoder: &mut Encoder,
    raw: &RawFrame,
    seq: u64,
) -> Result<EncodedFrame, String> {
    let t0 = Instant::now();
    let frame = encoder
        .encode_tagged(raw, seq, shared.in_motion(), &shared.objects_segment())
        .map_err(|e| e.to_string())?;
    let stats = &shared.stats;
    stats.encode_times.record(t0.elapsed());
    stats.encode_us.fetch_add(
        u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        Relaxed,
    );
    stats
        .encode_attempts
        .fetch_add(u64::from(frame.attempts), Relaxed);
    Ok(frame)
}

/// What a JPEG's header says, once it has been checked to be a whole JPEG of a sane size.
#[derive(Debug, Clone, Copy)]
struct JpegHeader {
    width: u32,
    height: u32,
}

/// A JPEG picture (a whole JPEG with a frame and a scan: [`jpeg::check`]) no larger than we
/// would decode, whose header turbojpeg reads as the same size.
fn check_jpeg(jpeg: &[u8], check: &mut HeaderCheck) -> Result<JpegHeader, &'static str> {
    let info = jpeg::check(jpeg).map_err(NotAPicture::as_str)?;
    let (width, height) = (info.width, info.height);
    if u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return Err("JPEG size out of range");
    }
    let head = &jpeg[..info.head_bytes];
    if head != check.accepted.as_slice() {
        let header = check
            .reader
            .header(jpeg)
            .map_err(|_| "unreadable JPEG header")?;
        if (header.width, header.height) != (width as usize, height as usize) {
            return Err("JPEG header read two ways");
        }
        check.accepted.clear();
        check.accepted.extend_from_slice(head);
    }
    Ok(JpegHeader { width, height })
}

/// turbojpeg's reading of a source's JPEG headers, and the newest head it accepted. A camera
/// sends the same head (tables, size) with every frame: a head byte for byte the same as the
/// last accepted one reads the same, and is not read again (reading it was about 8 % of a
/// pushed frame's ingest CPU).
#[derive(Default)]
struct HeaderCheck {
    reader: JpegReader,
    /// SOI to the end of the scan header of the newest JPEG turbojpeg read without fault.
    accepted: Vec<u8>,
}

/// The source's own bytes with surv's tag after SOI: no decode, no encode.
fn passthrough(
    frame: &JpegFrame,
    header: JpegHeader,
    seq: u64,
    motion: bool,
    objects: &[u8],
) -> Result<EncodedFrame, String> {
    let mut datagram = Vec::new();
    FrameTag {
        seq,
        capture_unix_us: frame.capture_unix_us,
        motion,
        objects: false,
    }
    .encode_with(&frame.jpeg, objects, &mut datagram)
    .map_err(|e| e.to_string())?;
    Ok(EncodedFrame {
        seq,
        capture_unix_us: frame.capture_unix_us,
        width: header.width,
        height: header.height,
        quality: 0,
        attempts: 0,
        payload: Payload::Jpeg(Bytes::from(datagram)),
    })
}

/// Decodes a JPEG too big to pass through into `out` (RGB), for the encoder.
fn decode_into(
    frame: &JpegFrame,
    header: JpegHeader,
    decoder: &mut JpegReader,
    out: &mut RawFrame,
) -> Result<(), String> {
    let (w, h) = (header.width as usize, header.height as usize);
    let len = PixelFormat::Rgb24
        .frame_bytes(header.width, header.height)
        .ok_or("JPEG size out of range")?;
    out.data.resize(len, 0);
    let image = turbojpeg::Image {
        pixels: &mut out.data[..],
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    decoder
        .run(|d| d.decompress(&frame.jpeg, image))
        .map_err(|e| format!("JPEG decode failed: {e}"))?;
    out.width = header.width;
    out.height = header.height;
    out.format = PixelFormat::Rgb24;
    out.capture_unix_us = frame.capture_unix_us;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

    /// `good` with its first Huffman table's class and number byte made 0x50 (class 1, table
    /// 64): [`jpeg::check`] does not read tables, turbojpeg refuses it.
    fn bad_tables(good: &[u8]) -> Vec<u8> {
        let mut bad = good.to_vec();
        let dht = bad.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        bad[dht + 4] = 0x50;
        bad
    }

    #[test]
    fn a_new_head_is_read_by_turbojpeg_even_after_a_good_one() {
        let mut check = HeaderCheck::default();
        let good = test_jpeg(160, 90, Picture::Gradient(1), 80, Subsamp::Sub2x2);
        assert!(check_jpeg(&good, &mut check).is_ok());
        let head = check.accepted.clone();
        assert!(!head.is_empty() && good.starts_with(&head));
        // The same head again: accepted.
        assert!(check_jpeg(&good, &mut check).is_ok());

        let bad = bad_tables(&good);
        assert!(jpeg::check(&bad).is_ok(), "the marker walk takes it");
        assert_eq!(
            check_jpeg(&bad, &mut check).err(),
            Some("unreadable JPEG header")
        );
        assert_eq!(check.accepted, head, "a refused head is not remembered");
        // The reader was renewed after the failure: the good picture still passes.
        assert!(check_jpeg(&good, &mut check).is_ok());
    }
}
