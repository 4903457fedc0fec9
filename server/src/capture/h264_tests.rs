//! The H.264 feed on a real capture path: the encoder runs only while demanded, codes each
//! frame once whatever the number of watchers, hands joiners a GOP that starts at a keyframe,
//! forces keyframes at most once a second, and stops with the capture.
//!
//! Real time, not paused: the encoder is a thread of its own. Most tests feed JPEGs in lock
//! step (one frame, then wait for its access unit), with capture times 33 334 µs apart, so
//! that the keyframe rules run on a known media clock however slow the machine is.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::h264::{H264Feed, H264Unit, FORCED_KEYFRAME_GAP_90K, GOP_MAX_BYTES, GOP_MAX_FRAMES};
use super::*;
use crate::frame::{H264AccessUnit, JpegFrame, ParameterSets};
use crate::journal::Journal;
use crate::sources::{FrameReader, OnThread, SourceRun, TestPattern};

/// Every wait in these tests: long enough for a loaded machine, short enough to fail.
const WITHIN: Duration = Duration::from_secs(10);

/// The first frame's capture time; frame `i` is `i` × [`FRAME_US`] later.
const T0_US: u64 = 1_700_000_000_000_000;
/// 30 frames of this are just over one second (1 000 020 µs): 30 frames after an IDR, a
/// keyframe may be forced.
const FRAME_US: u64 = 33_334;

/// A source that publishes the JPEGs the test sends it.
struct Fed {
    frames: mpsc::UnboundedReceiver<JpegFrame>,
}

impl Source for Fed {
    fn describe(&self) -> String {
        "fed".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            sink.opened(
                "fed",
                StreamShape {
                    width: 0,
                    height: 0,
                    fps: 30,
                },
            );
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    frame = self.frames.recv() => match frame {
                        Some(frame) => sink.publish(frame).await,
                        None => {
                            stop.cancelled().await;
                            return Ok(());
                        }
                    },
                }
            }
        })
    }
}

fn start(source: Box<dyn Source>, gop_secs: u32) -> (Capture, tempfile::TempDir) {
    let log_dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
    let config = CaptureConfig {
        gop_secs,
        ..CaptureConfig::default()
    };
    let capture = Capture::start(source, config, journal, &CancellationToken::new()).unwrap();
    (capture, log_dir)
}

fn pattern(width: u32, height: u32, fps: u32) -> Box<dyn Source> {
    Box::new(OnThread::new("test pattern", move || {
        Ok(Box::new(TestPattern::new(width, height, fps)?) as Box<dyn FrameReader>)
    }))
}

/// A capture fed by the test, one JPEG at a time.
struct Stepper {
    capture: Capture,
    feed: Arc<H264Feed>,
    tx: mpsc::UnboundedSender<JpegFrame>,
    /// A receiver joined before the first frame: it sees every unit.
    probe: broadcast::Receiver<Arc<H264Unit>>,
    next: u64,
    size: (usize, usize),
    _log_dir: tempfile::TempDir,
}

impl Stepper {
    fn start(gop_secs: u32) -> Stepper {
        let (tx, frames) = mpsc::unbounded_channel();
        let (capture, log_dir) = start(Box::new(Fed { frames }), gop_secs);
        let feed = capture.shared.h264.clone();
        let (gop, probe) = feed.join();
        assert!(gop.is_empty());
        Stepper {
            capture,
            feed,
            tx,
            probe,
            next: 0,
            size: (160, 120),
            _log_dir: log_dir,
        }
    }

    /// Sends the next frame and returns its access unit.
    async fn step(&mut self) -> Arc<H264Unit> {
        let i = self.next;
        self.next += 1;
        let (w, h) = self.size;
        let jpeg = surv_tests::test_jpeg(
            w,
            h,
            surv_tests::Picture::Gradient(i),
            80,
            surv_tests::fixtures::Subsamp::Sub2x2,
        );
        self.tx
            .send(JpegFrame::new(Bytes::from(jpeg), T0_US + i * FRAME_US))
            .unwrap();
        let unit = tokio::time::timeout(WITHIN, self.probe.recv())
            .await
            .unwrap_or_else(|_| panic!("frame {i} was not coded"))
            .unwrap();
        assert_eq!(unit.capture_unix_us, T0_US + i * FRAME_US, "frame {i}");
        unit
    }

    fn stats(&self) -> &CaptureStats {
        &self.capture.shared.stats
    }
}

fn sps_of(unit: &H264Unit) -> Bytes {
    unit.au
        .parameter_sets
        .as_ref()
        .expect("a keyframe")
        .sps
        .clone()
}

#[tokio::test]
async fn without_demand_nothing_is_coded() {
    let (capture, _log) = start(pattern(160, 120, 30), 2);
    let feed = capture.shared.h264.clone();
    let (_, mut rx) = feed.join();
    let mut frames = capture.frames.clone();
    tokio::time::timeout(WITHIN, async {
        while capture.shared.stats.captured.load(Relaxed) < 10 {
            frames.changed().await.unwrap();
        }
    })
    .await
    .expect("the pattern delivers 10 frames");
    let stats = &capture.shared.stats;
    assert_eq!(stats.h264_encodes.load(Relaxed), 0);
    assert!(!feed.encoder_running());
    assert_eq!(feed.gop_len(), 0);
    assert!(rx.try_recv().is_err(), "no unit published");
    assert_eq!(*feed.params().borrow(), None);
    capture.stop().await;
}

/// `watchers` watchers of a 30 fps pattern for a second: one encode per captured frame, and
/// every watcher gets the very same units.
async fn one_encode_per_frame(watchers: usize) {
    let (capture, _log) = start(pattern(160, 120, 30), 2);
    let feed = capture.shared.h264.clone();
    let stats = &capture.shared.stats;
    // Joined before any unit exists: every receiver starts at the first.
    let mut receivers: Vec<_> = (0..watchers).map(|_| feed.join().1).collect();
    let _demands: Vec<_> = (0..watchers).map(|_| feed.demand()).collect();
    let first = tokio::time::timeout(WITHIN, receivers[0].recv())
        .await
        .expect("the encoder starts")
        .unwrap();
    assert!(first.au.is_keyframe());
    let (captured0, encodes0) = (
        stats.captured.load(Relaxed),
        stats.h264_encodes.load(Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (captured1, encodes1) = (
        stats.captured.load(Relaxed),
        stats.h264_encodes.load(Relaxed),
    );
    let (captured, encodes) = (captured1 - captured0, encodes1 - encodes0);
    assert!(captured >= 15, "the pattern runs: {captured} frames in 1 s");
    assert!(
        encodes.abs_diff(captured) <= 1,
        "{watchers} watchers: {encodes} encodes for {captured} frames captured"
    );
    assert_eq!(stats.h264_skipped.load(Relaxed), 0);
    // Every watcher got the same units (the same allocations), in order, without a gap.
    let last = encodes1 - 1;
    let mut seen: Vec<Arc<H264Unit>> = vec![first];
    while seen.last().unwrap().seq < last {
        seen.push(receivers[0].recv().await.unwrap());
    }
    for (w, rx) in receivers.iter_mut().enumerate().skip(1) {
        for want in &seen {
            let got = rx.recv().await.unwrap();
            assert!(Arc::ptr_eq(&got, want), "watcher {w} unit {}", want.seq);
        }
    }
    for (i, unit) in seen.iter().enumerate() {
        assert_eq!(unit.seq, i as u64);
    }
    capture.stop().await;
}

#[tokio::test]
async fn one_watcher_one_encode_per_frame() {
    one_encode_per_frame(1).await;
}

#[tokio::test]
async fn ten_watchers_one_encode_per_frame() {
    one_encode_per_frame(10).await;
}

#[tokio::test]
async fn the_first_unit_is_an_idr_with_constrained_baseline_parameter_sets() {
    let mut s = Stepper::start(2);
    let _demand = s.feed.demand();
    let first = s.step().await;
    assert!(first.au.is_keyframe());
    assert_eq!(
        &sps_of(&first)[..3],
        [0x67, 0x42, 0xC0],
        "Constrained Baseline"
    );
    assert!(
        first.au.data.starts_with(&[0, 0, 0, 1, 0x67]),
        "the SPS in band too"
    );
    assert_eq!(
        s.feed.params().borrow().as_ref(),
        first.au.parameter_sets.as_ref()
    );
    assert_eq!(first.media_time_90k, T0_US / 100 * 9);
    let second = s.step().await;
    assert!(!second.au.is_keyframe());
    assert_eq!(second.media_time_90k - first.media_time_90k, 3000);
    assert_eq!(s.stats().h264_encodes.load(Relaxed), 2);
    assert!(s.stats().h264_encode_us.load(Relaxed) > 0);
}

#[tokio::test]
async fn a_join_gets_the_gop_from_its_keyframe_and_then_the_next_unit() {
    let mut s = Stepper::start(2);
    let _demand = s.feed.demand();
    for _ in 0..6 {
        s.step().await;
    }
    let (gop, mut rx) = s.feed.join();
    let seqs: Vec<u64> = gop.iter().map(|u| u.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    assert!(gop[0].au.is_keyframe());
    assert!(gop[1..].iter().all(|u| !u.au.is_keyframe()));
    assert!(
        rx.try_recv().is_err(),
        "nothing in the receiver the GOP had"
    );
    let next = s.step().await;
    let got = tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&got, &next));
    assert_eq!(got.seq, 6);
    // Under a second since the IDR: the join's wish waits.
    assert!(!got.au.is_keyframe());
    assert_eq!(s.stats().keyframes_forced.load(Relaxed), 0);
}

#[tokio::test]
async fn a_wanted_keyframe_comes_on_the_next_frame_and_at_most_once_a_second() {
    // An IDR period far beyond the test: every IDR after the first is a forced one.
    let mut s = Stepper::start(100);
    let _demand = s.feed.demand();
    assert!(s.step().await.au.is_keyframe());
    for i in 1..30 {
        assert!(!s.step().await.au.is_keyframe(), "frame {i}");
        if i == 10 {
            // Asked a third of a second after the IDR: not at the next frame.
            s.feed.want_keyframe();
            assert!(!s.feed.keyframe_due());
        }
    }
    // Frame 30 is 1.00002 s after the IDR.
    s.feed.want_keyframe();
    assert!(s.feed.keyframe_due(), "a joiner can wait for it");
    let forced = s.step().await;
    assert!(forced.au.is_keyframe(), "the next frame is an IDR");
    assert_eq!(s.stats().keyframes_forced.load(Relaxed), 1);
    // Asked again at once: it waits for a second after that IDR, then comes at once.
    s.feed.want_keyframe();
    let mut idrs = Vec::new();
    for i in 31..=61 {
        // What a joiner is told matches what comes, at every frame.
        let due = s.feed.keyframe_due();
        let unit = s.step().await;
        assert_eq!(unit.au.is_keyframe(), due, "frame {i}");
        if unit.au.is_keyframe() {
            idrs.push(i);
            assert!(unit.media_time_90k - forced.media_time_90k >= FORCED_KEYFRAME_GAP_90K);
        }
    }
    assert_eq!(idrs, [60]);
    assert_eq!(s.stats().keyframes_forced.load(Relaxed), 2);
    // The same parameter sets: the params watch did not change.
    assert_eq!(
        s.feed.params().borrow().as_ref(),
        forced.au.parameter_sets.as_ref()
    );
}

#[tokio::test]
async fn a_new_size_starts_with_an_idr_and_its_parameter_sets() {
    let mut s = Stepper::start(2);
    let _demand = s.feed.demand();
    let small = s.step().await;
    s.step().await;
    s.size = (320, 240);
    let large = s.step().await;
    assert!(large.au.is_keyframe(), "a new encoder for the new size");
    assert_ne!(sps_of(&small), sps_of(&large));
    assert_eq!(
        s.feed.params().borrow().as_ref().map(|p| p.sps.clone()),
        Some(sps_of(&large))
    );
    assert_eq!(s.feed.gop_len(), 1, "the new GOP");
    assert!(!s.step().await.au.is_keyframe());
}

#[tokio::test]
async fn frames_the_encoder_was_too_busy_for_are_counted() {
    let n = 40u64;
    // Made first: the capture's "no signal" frame would come if its first frame took a second.
    let jpegs: Vec<Bytes> = (0..n)
        .map(|i| {
            Bytes::from(surv_tests::test_jpeg(
                640,
                480,
                surv_tests::Picture::Gradient(i),
                80,
                surv_tests::fixtures::Subsamp::Sub2x2,
            ))
        })
        .collect();
    let (tx, frames) = mpsc::unbounded_channel();
    let (capture, _log) = start(Box::new(Fed { frames }), 2);
    let feed = capture.shared.h264.clone();
    let _demand = feed.demand();
    let stats = &capture.shared.stats;
    for (i, jpeg) in (0..).zip(jpegs) {
        tx.send(JpegFrame::new(jpeg, T0_US + i * FRAME_US)).unwrap();
    }
    // Every frame is coded or counted as skipped; the newest is always coded.
    tokio::time::timeout(WITHIN, async {
        while stats.h264_encodes.load(Relaxed) + stats.h264_skipped.load(Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("every frame accounted for: {stats:?}"));
    let (gop, _) = feed.join();
    assert_eq!(
        gop.last().unwrap().capture_unix_us,
        T0_US + (n - 1) * FRAME_US
    );
    assert_eq!(
        stats.h264_encodes.load(Relaxed) + stats.h264_skipped.load(Relaxed),
        n
    );
    assert_eq!(stats.captured.load(Relaxed), n);
    capture.stop().await;
}

#[tokio::test]
async fn the_encoder_stops_with_the_capture() {
    let (capture, _log) = start(pattern(160, 120, 30), 2);
    let feed = capture.shared.h264.clone();
    let (_, mut rx) = feed.join();
    let _demand = feed.demand();
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(feed.encoder_running());
    tokio::time::timeout(WITHIN, capture.stop())
        .await
        .expect("the capture and its encoder stop");
    assert!(!feed.encoder_running());
    let _again = feed.demand();
    assert!(
        !feed.encoder_running(),
        "no encoder after the capture stopped"
    );
}

#[tokio::test]
async fn the_encoder_lingers_after_the_last_watcher_then_stops_and_starts_again() {
    let (capture, _log) = start(pattern(160, 120, 30), 2);
    let feed = capture.shared.h264.clone();
    feed.set_linger(Duration::from_millis(300));
    let stats = &capture.shared.stats;
    let (_, mut rx) = feed.join();
    let demand = feed.demand();
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    drop(demand);
    tokio::time::timeout(WITHIN, async {
        while feed.encoder_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the encoder stops after its linger");
    let encodes = stats.h264_encodes.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stats.h264_encodes.load(Relaxed), encodes, "stopped coding");
    // A new watcher: a new encoder, whose first unit is an IDR.
    let (_, mut rx) = feed.join();
    let _demand = feed.demand();
    assert!(feed.encoder_running());
    let first = tokio::time::timeout(WITHIN, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.au.is_keyframe());
    capture.stop().await;
}

fn unit(keyframe: bool, bytes: usize, media_time_90k: u64) -> H264Unit {
    H264Unit {
        seq: 0,
        au: H264AccessUnit {
            layer: 0,
            data: Bytes::from(vec![0; bytes]),
            parameter_sets: keyframe.then(|| ParameterSets {
                sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E]),
                pps: Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]),
            }),
        },
        media_time_90k,
        capture_unix_us: 0,
    }
}

#[test]
fn the_gop_cache_is_bounded_and_starts_at_a_keyframe() {
    let feed = H264Feed::new();
    let (_, mut rx) = feed.join();
    // Pictures before the first keyframe go to receivers only.
    feed.publish(unit(false, 10, 0));
    assert_eq!(feed.gop_len(), 0);
    // By frames.
    feed.publish(unit(true, 10, 1));
    for t in 2..=GOP_MAX_FRAMES as u64 {
        feed.publish(unit(false, 10, t));
    }
    assert_eq!(feed.gop_len(), GOP_MAX_FRAMES);
    feed.publish(unit(false, 10, 1000));
    assert_eq!(feed.gop_len(), 0, "over the cap: emptied");
    feed.publish(unit(false, 10, 1001));
    assert_eq!(feed.gop_len(), 0, "empty until the next keyframe");
    feed.publish(unit(true, 10, 1002));
    assert_eq!(feed.gop_len(), 1);
    // By bytes.
    let mib = 1 << 20;
    for t in 0..(GOP_MAX_BYTES / mib) as u64 - 1 {
        feed.publish(unit(false, mib, 2000 + t));
    }
    assert!(feed.gop_len() > 1);
    feed.publish(unit(false, mib, 3000));
    assert_eq!(feed.gop_len(), 0, "over 16 MiB: emptied");
    // The receiver lagged past its capacity (256): what it kept came in order, without a gap.
    let (mut kept, mut prev) = (0, None);
    loop {
        match rx.try_recv() {
            Ok(u) => {
                if let Some(prev) = prev {
                    assert_eq!(u.seq, prev + 1);
                }
                prev = Some(u.seq);
                kept += 1;
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => prev = None,
            Err(_) => break,
        }
    }
    assert_eq!(kept, 256);
}

/// A passthrough camera's next keyframe is the camera's to send: never "due" for a joiner,
/// however old its GOP.
#[test]
fn a_passthrough_camera_has_no_keyframe_due() {
    let feed = H264Feed::new();
    feed.want_keyframe();
    feed.publish(unit(true, 10, 0));
    assert!(!feed.keyframe_due(), "one unit: no interval to go by");
    for t in 1..=30 {
        feed.publish(unit(false, 10, t * 3_000));
    }
    assert!(feed.keyframe_due(), "an encoded camera's would be");
    feed.set_passthrough(true);
    assert!(!feed.keyframe_due());
}

/// A reader joined before the first keyframe skips to it; one that falls more than half a
/// second of units behind skips what queued, asks for a keyframe, and resumes at the next one;
/// every unit skipped is counted and shows as a gap in `seq`.
#[tokio::test]
async fn a_feed_reader_starts_and_resumes_at_keyframes() {
    use super::h264::FeedReader;
    let feed = Arc::new(H264Feed::new());
    // fps 4: at most 2 units may queue.
    let mut reader = FeedReader::join(feed.clone(), 4);
    feed.publish(unit(false, 10, 0));
    feed.publish(unit(true, 10, 3000));
    feed.publish(unit(false, 10, 6000));
    let first = reader.next().await.unwrap();
    assert!(first.au.is_keyframe());
    assert_eq!(first.seq, 1);
    assert_eq!(reader.next().await.unwrap().seq, 2);
    assert_eq!(reader.skipped(), 1, "the unit before the first keyframe");

    // Four units queue while the watcher sends one: behind.
    for t in 3..7 {
        feed.publish(unit(false, 10, t * 3000));
    }
    assert_eq!(reader.next().await.unwrap().seq, 3);
    reader.check_lag();
    assert_eq!(reader.skipped(), 1 + 3);
    feed.publish(unit(false, 10, 21_000));
    feed.publish(unit(true, 10, 24_000));
    let resumed = reader.next().await.unwrap();
    assert!(resumed.au.is_keyframe());
    assert_eq!(resumed.seq, 8);
    assert_eq!(reader.skipped(), 1 + 3 + 1);

    // A reader joining now starts from the cached GOP.
    let late = FeedReader::join(feed.clone(), 30);
    assert_eq!(late.first().map(|u| u.seq), Some(8));
}
