//! The capture path with a scripted source, under paused time: a source that fails is run
//! again on the backoff schedule, an outage is one SOURCE-LOST and one SOURCE-BACK, frames
//! flow again after it, and JPEGs pass through untouched when they fit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use surv_proto::FrameTag;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::frame::{JpegFrame, PixelFormat, RawFrame};
use crate::journal::read_all;
use crate::sources::{FrameReader, OnThread, SourceError, SourceRun, TestPattern};

/// One run of the scripted source.
#[derive(Debug, Clone)]
enum Step {
    /// Fails at once, as a camera that cannot be opened.
    Fail(&'static str),
    /// Opens, delivers this many raw frames 100 ms apart, then fails.
    Raw(u32),
    /// Opens, delivers these JPEGs 100 ms apart, then fails.
    Jpegs(Vec<Bytes>),
    /// Opens knowing neither size nor rate, delivers this many 48x16 raw frames 100 ms apart
    /// (10 fps), then has played to its end.
    Unknown(u32),
    /// Opens, delivers this many raw frames 100 ms apart, then goes silent without failing
    /// (a camera that keeps its connection open and sends nothing), until stop.
    Stall(u32),
    /// Opens, passes this many H.264 units through 100 ms apart (a keyframe, then P pictures),
    /// then goes silent without failing, until stop.
    H264(u32),
}

/// A source that follows a script, one step per run; after the script, it waits for stop.
struct Scripted {
    steps: VecDeque<Step>,
    runs: Arc<Mutex<Vec<Instant>>>,
    /// What the watchdog does with it (a push source: report only).
    on_stall: OnStall,
}

impl Source for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }

    fn on_stall(&self) -> OnStall {
        self.on_stall
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        let step = self.steps.pop_front();
        self.runs.lock().unwrap().push(Instant::now());
        Box::pin(async move {
            let gone = |reason: &str| SourceError::Read {
                device: "scripted".into(),
                reason: reason.into(),
            };
            let shape = StreamShape {
                width: 32,
                height: 32,
                fps: 10,
            };
            match step {
                None => {
                    stop.cancelled().await;
                    Ok(())
                }
                Some(Step::Fail(reason)) => Err(gone(reason)),
                Some(Step::Raw(n)) => {
                    sink.opened("scripted 32x32", shape);
                    raw_frames(sink, n).await;
                    Err(gone("unplugged"))
                }
                Some(Step::Stall(n)) => {
                    sink.opened("scripted 32x32", shape);
                    raw_frames(sink, n).await;
                    stop.cancelled().await;
                    Ok(())
                }
                Some(Step::H264(n)) => {
                    sink.opened("scripted h264", shape);
                    for i in 0..n {
                        let seq = sink.publish_h264(
                            h264_unit(i == 0),
                            u64::from(i) * 9_000,
                            1_000 + u64::from(i),
                        );
                        assert_eq!(seq, u64::from(i), "a frame number per unit");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    stop.cancelled().await;
                    Ok(())
                }
                Some(Step::Jpegs(jpegs)) => {
                    sink.opened("scripted jpeg", shape);
                    for (i, jpeg) in jpegs.into_iter().enumerate() {
                        sink.publish_jpeg(&JpegFrame::new(jpeg, 1_000 + i as u64));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(gone("pusher left"))
                }
                Some(Step::Unknown(n)) => {
                    sink.opened("scripted unknown", StreamShape::default());
                    for _ in 0..n {
                        let mut frame = RawFrame::new();
                        (frame.width, frame.height) = (48, 16);
                        frame.data = vec![128; 48 * 16 * 3 / 2];
                        sink.publish_raw(&frame);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(SourceError::Finished {
                        device: "scripted".into(),
                    })
                }
            }
        })
    }
}

/// A stand-in access unit: a keyframe carries parameter sets (what makes it one to the feed).
fn h264_unit(keyframe: bool) -> crate::frame::H264AccessUnit {
    crate::frame::H264AccessUnit {
        layer: 0,
        data: Bytes::from_static(&[0, 0, 0, 1, 0x41, 0x9a, 0x02]),
        parameter_sets: keyframe.then(|| crate::frame::ParameterSets {
            sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E]),
            pps: Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]),
        }),
    }
}

/// `n` 32x32 raw frames, 100 ms apart.
async fn raw_frames(sink: &FrameSink, n: u32) {
    for i in 0..n {
        let mut frame = RawFrame::new();
        frame.width = 32;
        frame.height = 32;
        frame.format = PixelFormat::I420;
        frame.data = vec![(i * 40) as u8; 32 * 32 * 3 / 2];
        sink.publish_raw(&frame);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Rig {
    capture: Capture,
    runs: Arc<Mutex<Vec<Instant>>>,
    log_dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

/// Starts the capture path on `source` with a journal in a temporary folder.
fn capture_of(
    source: Box<dyn Source>,
    encoder: EncoderConfig,
) -> (Capture, tempfile::TempDir, CancellationToken) {
    let log_dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let config = CaptureConfig {
        encoder,
        ..CaptureConfig::default()
    };
    let capture = Capture::start(source, config, journal, &shutdown).unwrap();
    (capture, log_dir, shutdown)
}

fn start(steps: Vec<Step>, max_datagram_bytes: usize) -> Rig {
    start_with(steps, max_datagram_bytes, OnStall::Reopen)
}

fn start_with(steps: Vec<Step>, max_datagram_bytes: usize, on_stall: OnStall) -> Rig {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let source = Scripted {
        steps: steps.into(),
        runs: runs.clone(),
        on_stall,
    };
    let encoder = EncoderConfig {
        max_datagram_bytes,
        quality: 80,
    };
    let (capture, log_dir, shutdown) = capture_of(Box::new(source), encoder);
    Rig {
        capture,
        runs,
        log_dir,
        shutdown,
    }
}

impl Rig {
    /// When each run started, in ms since the first.
    fn run_times_ms(&self) -> Vec<u128> {
        let runs = self.runs.lock().unwrap();
        runs.iter().map(|t| (*t - runs[0]).as_millis()).collect()
    }

    fn journal(&self) -> Vec<String> {
        read_all(self.log_dir.path()).unwrap()
    }
}

fn count(lines: &[String], word: &str) -> usize {
    lines.iter().filter(|l| l.contains(word)).count()
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_is_retried_with_backoff_and_one_outage_is_one_lost_and_one_back() {
    let rig = start(
        vec![
            Step::Fail("cannot open"),
            Step::Fail("cannot open"),
            Step::Fail("cannot open"),
            Step::Raw(3),
            Step::Fail("cannot open"),
        ],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    let err = rig.capture.first_outcome().await.unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
    assert!(matches!(rig.capture.shared.state(), SourceState::Lost(_)));

    // Through the script and into the last run, which waits for stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Fails at 0, 200, 600 (waits of 200, 400, 800 ms); delivers from 1400 ms for 300 ms and
    // fails at 1700; frames came, so the backoff starts again at 200: run at 1900, fails,
    // 400 ms later the last run at 2300.
    assert_eq!(rig.run_times_ms(), [0, 200, 600, 1400, 1900, 2300]);
    let stats = &rig.capture.shared.stats;
    assert_eq!(stats.captured.load(Relaxed), 3);
    assert_eq!(stats.published.load(Relaxed), 3);
    assert_eq!(stats.source_failures.load(Relaxed), 5);
    assert_eq!(stats.source_lost.load(Relaxed), 2, "two outages");
    let lines = rig.journal();
    assert_eq!(count(&lines, "SOURCE-LOST"), 2, "{lines:#?}");
    assert_eq!(count(&lines, "SOURCE-BACK"), 1, "{lines:#?}");
    assert!(
        lines[0].contains(
            r#"SOURCE-LOST source="scripted" reason="reading a frame from scripted: cannot open""#
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("SOURCE-BACK source=\"scripted\" down_s=1.400"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("unplugged"), "{}", lines[2]);
    // While it was not delivering (0–1400 ms, and from 1700 ms), a "no signal" frame went out
    // a second after its newest frame and each second after: at 1000, then 2600, 3600, 4600 ms.
    // They take sequence numbers (0, then 4–6 around the source's 1–3) but are not captured or
    // published frames; the last is at the source's size.
    assert_eq!(stats.no_signal.load(Relaxed), 4);
    let newest = rig.capture.frames.borrow().clone().unwrap();
    assert_eq!((newest.seq, newest.width, newest.height), (6, 32, 32));
    assert_eq!(
        rig.capture.shared.shape(),
        StreamShape {
            width: 32,
            height: 32,
            fps: 10
        }
    );
    assert!(
        matches!(rig.capture.shared.state(), SourceState::Lost(_)),
        "a no-signal frame does not make the source live"
    );

    rig.shutdown.cancel();
    let started = Instant::now();
    rig.capture.stop().await;
    assert!(
        started.elapsed() < Duration::from_millis(10),
        "stop waits for nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn until_a_source_shows_its_own_shape_watchers_get_no_signal_at_the_idle_shape() {
    let rig = start(
        vec![Step::Fail("booting")],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    let mut frames = rig.capture.frames.clone();
    assert!(frames.borrow_and_update().is_none());
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(
        frames.borrow().is_none(),
        "no frame before a second of silence"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    let first = frames
        .borrow_and_update()
        .clone()
        .expect("a no-signal frame");
    // The idle shape (CaptureConfig's default, i.e. --size) is what viewers are told.
    assert_eq!((first.width, first.height), (640, 480));
    assert_eq!(rig.capture.shared.shape().width, 640);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = &rig.capture.shared.stats;
    assert_eq!(stats.no_signal.load(Relaxed), 4, "one a second");
    assert_eq!(stats.published.load(Relaxed), 0);
    assert_eq!(stats.captured.load(Relaxed), 0);
    let newest = frames.borrow().clone().unwrap();
    assert_eq!(newest.seq, 3, "no-signal frames number on");
    // The picture says it: it decodes, and it is not the uniform grey of a blank frame.
    let gray = turbojpeg::decompress(newest.jpeg().unwrap(), turbojpeg::PixelFormat::GRAY).unwrap();
    let (lo, hi) = gray
        .pixels
        .iter()
        .fold((255u8, 0u8), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    assert!(hi > 200 && lo < 60, "text on a dark background: {lo}..{hi}");
}

#[tokio::test(start_paused = true)]
async fn a_source_without_a_declared_rate_is_measured_and_one_that_ended_is_not_run_again() {
    let rig = start(
        vec![Step::Unknown(30)],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let shape = rig.capture.shared.shape();
    assert_eq!((shape.width, shape.height, shape.fps), (48, 16, 10));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.run_times_ms(), [0], "finished: run once");
    let stats = &rig.capture.shared.stats;
    assert_eq!(stats.captured.load(Relaxed), 30);
    // Ended at 3000 ms; it is now 7500: no signal at 4000, 5000, 6000, 7000.
    assert_eq!(stats.no_signal.load(Relaxed), 4);
    let lines = rig.journal();
    assert_eq!(count(&lines, "SOURCE-LOST"), 1, "{lines:#?}");
    assert!(lines[0].contains("scripted ended"), "{}", lines[0]);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_is_capped_however_long_the_source_stays_away() {
    let rig = start(
        vec![Step::Fail("gone"); 12],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let times = rig.run_times_ms();
    assert_eq!(
        times.len(),
        13,
        "12 failures then the waiting run: {times:?}"
    );
    let gaps: Vec<u128> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000, 5000, 5000]
    );
    // One outage, one line, however many attempts.
    let lines = rig.journal();
    assert_eq!(count(&lines, "SOURCE-LOST"), 1, "{lines:#?}");
    assert_eq!(rig.capture.shared.stats.source_failures.load(Relaxed), 12);
}

#[tokio::test(start_paused = true)]
async fn jpegs_that_fit_pass_through_and_others_are_reencoded_or_rejected() {
    let small = Bytes::from(surv_tests::test_jpeg(
        64,
        48,
        surv_tests::Picture::Gradient(1),
        85,
        surv_tests::fixtures::Subsamp::Sub2x2,
    ));
    let big = Bytes::from(surv_tests::test_jpeg(
        320,
        240,
        surv_tests::Picture::Noise(2),
        95,
        surv_tests::fixtures::Subsamp::Sub2x2,
    ));
    let cap = 8_000;
    assert!(small.len() + surv_proto::TAG_BYTES <= cap && big.len() > cap);
    let not_jpeg = Bytes::from_static(b"GIF89a not a jpeg at all");
    let truncated = small.slice(..small.len() / 2);
    let rig = start(
        vec![Step::Jpegs(vec![small.clone(), not_jpeg, truncated, big])],
        cap,
    );
    let mut frames = rig.capture.frames.clone();
    let first = frames
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    // Passed through: the source's bytes, untouched, after surv's tag.
    assert_eq!(&first.jpeg().unwrap()[..2], &[0xFF, 0xD8]);
    assert_eq!(
        &first.jpeg().unwrap()[2 + surv_proto::TAG_BYTES..],
        &small[2..]
    );
    let tag = FrameTag::decode(first.jpeg().unwrap()).unwrap();
    assert_eq!((tag.seq, tag.capture_unix_us), (0, 1_000));
    assert_eq!((first.width, first.height), (64, 48));

    tokio::time::sleep(Duration::from_millis(450)).await;
    let stats = &rig.capture.shared.stats;
    assert_eq!(stats.passed_through.load(Relaxed), 1);
    assert_eq!(stats.rejected.load(Relaxed), 2, "not a JPEG, truncated");
    assert_eq!(
        stats.published.load(Relaxed),
        2,
        "one passed through, one re-encoded"
    );
    let last = rig.capture.frames.borrow().clone().unwrap();
    assert!(
        last.jpeg().unwrap().len() <= cap,
        "{} bytes",
        last.jpeg().unwrap().len()
    );
    assert!(last.attempts >= 1, "re-encoded");
    let decoded = turbojpeg::read_header(last.jpeg().unwrap()).unwrap();
    assert!(decoded.width <= 320 && decoded.height <= 240);
    // Sequence numbers count the frames the source delivered, rejected ones included.
    assert_eq!(FrameTag::decode(last.jpeg().unwrap()).unwrap().seq, 1);
    rig.capture.stop().await;
}

/// The blocking adapter: a reader that fails is opened again on a new thread; BadFrame is
/// skipped, not an outage.
#[tokio::test(start_paused = true)]
async fn blocking_readers_are_reopened_and_bad_frames_skipped() {
    struct Flaky {
        frames: u32,
    }
    impl FrameReader for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn size(&self) -> (u32, u32) {
            (16, 16)
        }
        fn fps(&self) -> u32 {
            30
        }
        fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError> {
            self.frames += 1;
            match self.frames {
                2 => Err(SourceError::BadFrame {
                    device: "flaky".into(),
                    reason: "corrupt".into(),
                }),
                4 => Err(SourceError::Read {
                    device: "flaky".into(),
                    reason: "unplugged".into(),
                }),
                _ => {
                    frame.width = 16;
                    frame.height = 16;
                    frame.format = PixelFormat::I420;
                    frame.data = vec![100; 16 * 16 * 3 / 2];
                    Ok(())
                }
            }
        }
    }
    let opens = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = opens.clone();
    let source = OnThread::new("flaky", move || {
        // Open twice, then stay away.
        if counted.fetch_add(1, Relaxed) < 2 {
            Ok(Box::new(Flaky { frames: 0 }) as Box<dyn FrameReader>)
        } else {
            Err(SourceError::Open {
                device: "flaky".into(),
                reason: "no such device".into(),
            })
        }
    });
    let (capture, log_dir, shutdown) = capture_of(Box::new(source), EncoderConfig::default());
    // Paused time advances only while nothing runs; the reader threads run in real time, so
    // wait for what they do rather than for a time.
    let stats = &capture.shared.stats;
    for _ in 0..2000 {
        if opens.load(Relaxed) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        opens.load(Relaxed) >= 4,
        "opened {} times",
        opens.load(Relaxed)
    );
    // Two readers, each: frame, bad frame, frame, unplugged.
    assert_eq!(stats.captured.load(Relaxed), 4);
    assert_eq!(stats.rejected.load(Relaxed), 2);
    let lines = read_all(log_dir.path()).unwrap();
    assert_eq!(count(&lines, "SOURCE-LOST"), 2, "{lines:#?}");
    assert_eq!(count(&lines, "SOURCE-BACK"), 1, "{lines:#?}");
    shutdown.cancel();
    capture.stop().await;
}

#[test]
fn a_test_pattern_runs_on_its_thread_through_the_adapter() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let source = OnThread::new("test pattern", || {
            Ok(Box::new(TestPattern::new(64, 48, 100)?) as Box<dyn FrameReader>)
        });
        let (capture, log_dir, _shutdown) = capture_of(Box::new(source), EncoderConfig::default());
        let shape = tokio::time::timeout(Duration::from_secs(10), capture.first_outcome())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            shape,
            StreamShape {
                width: 64,
                height: 48,
                fps: 100
            }
        );
        let mut frames = capture.frames.clone();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), frames.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let started = std::time::Instant::now();
        capture.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopped within a frame or so"
        );
        assert!(read_all(log_dir.path()).unwrap().is_empty(), "no outage");
    });
}

/// An async source that publishes one JPEG with [`FrameSink::publish`] and counts how often a
/// probe task on the same runtime ran meanwhile.
struct PublishesOnce {
    jpeg: Bytes,
    probe_polls: Arc<AtomicU64>,
    polls_during_publish: Arc<Mutex<Option<u64>>>,
}

impl Source for PublishesOnce {
    fn describe(&self) -> String {
        "an async source".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            sink.opened("an async source", StreamShape::default());
            let before = self.probe_polls.load(Relaxed);
            sink.publish(JpegFrame::new(self.jpeg.clone(), 1)).await;
            let during = self.probe_polls.load(Relaxed) - before;
            *self.polls_during_publish.lock().unwrap() = Some(during);
            stop.cancelled().await;
            Ok(())
        })
    }
}

/// A JPEG over the cap from an async source (http, tcp, udp, file) is decoded and re-encoded
/// off the runtime's threads: on a runtime of one thread, another task runs while it is.
#[test]
fn a_jpeg_over_the_cap_from_async_code_is_reencoded_off_the_runtime() {
    let jpeg = Bytes::from(surv_tests::test_jpeg(
        1920,
        1080,
        surv_tests::Picture::Gradient(3),
        95,
        surv_tests::fixtures::Subsamp::Sub2x2,
    ));
    let cap = 16_000;
    assert!(jpeg.len() > cap);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let probe_polls = Arc::new(AtomicU64::new(0));
        let polls_during_publish = Arc::new(Mutex::new(None));
        let probe = tokio::spawn({
            let polls = probe_polls.clone();
            async move {
                loop {
                    polls.fetch_add(1, Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let source = PublishesOnce {
            jpeg,
            probe_polls,
            polls_during_publish: polls_during_publish.clone(),
        };
        let encoder = EncoderConfig {
            max_datagram_bytes: cap,
            quality: 80,
        };
        let (capture, _log_dir, _shutdown) = capture_of(Box::new(source), encoder);
        let mut frames = capture.frames.clone();
        let frame = tokio::time::timeout(Duration::from_secs(20), frames.wait_for(Option::is_some))
            .await
            .expect("the frame is published")
            .unwrap()
            .clone()
            .unwrap();
        assert!(frame.attempts >= 1, "re-encoded: {frame:?}");
        assert!(frame.jpeg().unwrap().len() <= cap, "{frame:?}");
        let stats = &capture.shared.stats;
        assert_eq!(stats.passed_through.load(Relaxed), 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while polls_during_publish.lock().unwrap().is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let during = polls_during_publish.lock().unwrap().unwrap();
        assert!(
            during > 0,
            "the runtime's only thread ran nothing else while the frame was re-encoded"
        );
        probe.abort();
        capture.stop().await;
    });
}

#[test]
fn the_stall_bound_is_five_seconds_or_ten_frame_intervals() {
    assert_eq!(stall_after(30), Duration::from_secs(5));
    assert_eq!(stall_after(2), Duration::from_secs(5));
    assert_eq!(stall_after(1), Duration::from_secs(10));
    assert_eq!(stall_after(0), Duration::from_secs(10));
}

/// A source that goes silent without failing is lost after the watchdog's bound, with why,
/// then opened again; its frames bring it back.
#[tokio::test(start_paused = true)]
async fn a_silent_source_is_lost_within_the_bound_and_reopened() {
    let rig = start(
        vec![Step::Stall(10), Step::Raw(5)],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    let mut state = rig.capture.shared.state.subscribe();
    state.wait_for(|s| *s == SourceState::Live).await.unwrap();
    let live_at = Instant::now();
    // Frames at 0..900 ms, then silence.
    let lost = state
        .wait_for(|s| matches!(s, SourceState::Lost(_)))
        .await
        .unwrap()
        .clone();
    let after = Instant::now() - live_at;
    assert_eq!(
        lost,
        SourceState::Lost("reading a frame from scripted: no frame for 5 s".into())
    );
    assert_eq!(
        after,
        Duration::from_millis(900 + 5000),
        "5 s after the last frame"
    );
    state.wait_for(|s| *s == SourceState::Live).await.unwrap();
    let back_after = Instant::now() - live_at;
    // Reopened after the first backoff step, 200 ms.
    assert_eq!(back_after, Duration::from_millis(5900 + 200));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.run_times_ms(), [0, 6100, 6800]);
    let lines = rig.journal();
    assert!(
        lines[0].contains(r#"SOURCE-LOST source="scripted" reason="reading a frame from scripted: no frame for 5 s""#),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("SOURCE-BACK source=\"scripted\" down_s=0.200"),
        "{lines:#?}"
    );
    // While it was silent, viewers were shown why.
    assert!(rig.capture.shared.stats.no_signal.load(Relaxed) >= 1);
    rig.capture.stop().await;
}

/// A source that opens but never delivers is ended after [`FIRST_FRAME_WITHIN`].
#[tokio::test(start_paused = true)]
async fn a_source_that_opens_and_never_delivers_is_opened_again() {
    let rig = start(
        vec![Step::Stall(0), Step::Raw(1)],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    tokio::time::sleep(FIRST_FRAME_WITHIN + Duration::from_secs(1)).await;
    assert_eq!(rig.run_times_ms(), [0, 20_200, 20_500]);
    let lines = rig.journal();
    assert!(
        lines[0].contains("no frame within 20 s of opening"),
        "{lines:#?}"
    );
    assert!(lines[1].contains("SOURCE-BACK"), "{lines:#?}");
    rig.capture.stop().await;
}

/// A push source (cameras connect to it) is reported lost once per stall and never reopened:
/// its socket stays for the camera, whose next frame brings it back.
#[tokio::test(start_paused = true)]
async fn a_push_source_that_stalls_is_reported_not_reopened() {
    struct Push {
        runs: Arc<Mutex<Vec<Instant>>>,
    }
    impl Source for Push {
        fn describe(&self) -> String {
            "push".into()
        }
        fn on_stall(&self) -> OnStall {
            OnStall::Report
        }
        fn run<'a>(&'a mut self, sink: &'a FrameSink, _: &'a CancellationToken) -> SourceRun<'a> {
            self.runs.lock().unwrap().push(Instant::now());
            Box::pin(async move {
                // Silent for 8 s before any camera: not an outage, only waiting.
                tokio::time::sleep(Duration::from_secs(8)).await;
                sink.opened("push", StreamShape::default());
                raw_frames(sink, 10).await;
                // The camera stalls for 12 s, then comes back.
                tokio::time::sleep(Duration::from_secs(12)).await;
                raw_frames(sink, 10).await;
                std::future::pending().await
            })
        }
    }
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (capture, log_dir, _shutdown) = capture_of(
        Box::new(Push { runs: runs.clone() }),
        EncoderConfig::default(),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(capture.shared.state(), SourceState::Starting);
    let mut state = capture.shared.state.subscribe();
    state.wait_for(|s| *s == SourceState::Live).await.unwrap();
    let t0 = Instant::now();
    state
        .wait_for(|s| matches!(s, SourceState::Lost(_)))
        .await
        .unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_millis(900 + 5000));
    assert_eq!(
        capture.shared.state(),
        SourceState::Lost("no frame for 5 s".into())
    );
    state.wait_for(|s| *s == SourceState::Live).await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_millis(1000 + 12_000));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(runs.lock().unwrap().len(), 1, "never reopened");
    let lines = read_all(log_dir.path()).unwrap();
    assert_eq!(count(&lines, "SOURCE-LOST"), 2, "one per stall: {lines:#?}");
    assert_eq!(count(&lines, "SOURCE-BACK"), 1, "{lines:#?}");
    capture.stop().await;
}

/// While a source stays lost, `/status` shows the newest reason, not the first.
#[tokio::test(start_paused = true)]
async fn the_loss_reason_is_the_newest() {
    let rig = start(
        vec![
            Step::Fail("the camera ended the stream"),
            Step::Fail("HTTP 301 moved"),
        ],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        matches!(rig.capture.shared.state(), SourceState::Lost(r) if r.ends_with("the camera ended the stream"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(rig.capture.shared.state(), SourceState::Lost(r) if r.ends_with("HTTP 301 moved")),
        "{:?}",
        rig.capture.shared.state()
    );
    let lines = rig.journal();
    assert_eq!(
        count(&lines, "SOURCE-LOST"),
        1,
        "still one outage: {lines:#?}"
    );
    rig.capture.stop().await;
}

/// One broken JPEG costs one frame: after each broken form, every good frame is published.
#[tokio::test(start_paused = true)]
async fn a_broken_jpeg_costs_one_frame_and_non_pictures_are_rejected() {
    let good = surv_tests::test_jpeg(
        64,
        48,
        surv_tests::Picture::Gradient(1),
        85,
        surv_tests::fixtures::Subsamp::Sub2x2,
    );
    let broken = surv_tests::fixtures::broken_jpegs(&good);
    let mut script = Vec::new();
    for (_, bad) in &broken {
        script.push(Bytes::from(bad.clone()));
        script.extend((0..3).map(|_| Bytes::from(good.clone())));
    }
    let n_broken = broken.len() as u64;
    let rig = start(
        vec![Step::Jpegs(script)],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
    );
    tokio::time::sleep(Duration::from_millis(100 * 4 * n_broken + 50)).await;
    let stats = &rig.capture.shared.stats;
    assert_eq!(stats.rejected.load(Relaxed), n_broken, "each broken form");
    assert_eq!(
        stats.passed_through.load(Relaxed),
        3 * n_broken,
        "every good frame"
    );
    assert_eq!(
        stats.captured.load(Relaxed),
        3 * n_broken,
        "broken ones are not captured"
    );
    let newest = rig.capture.frames.borrow().clone().unwrap();
    assert_eq!((newest.width, newest.height), (64, 48));
    rig.capture.stop().await;
}

/// A source that passes H.264 through is live on its units alone, with no picture published
/// (nobody asked for one): counted as captured, no "no signal" frame while it delivers, the
/// watchdog fed, the feed marked passthrough so that H.264 demand starts no encoder; and a
/// picture decoded from one of its units goes out under that unit's number, not as another
/// captured frame.
#[tokio::test(start_paused = true)]
async fn an_h264_source_is_live_on_passed_through_units_without_pictures() {
    let rig = start(vec![Step::H264(20)], surv_proto::DEFAULT_MAX_DATAGRAM_BYTES);
    rig.capture.first_outcome().await.unwrap();
    // 2 s of units, 100 ms apart: well past the 1 s after which an idle source shows
    // "no signal".
    tokio::time::sleep(Duration::from_millis(1950)).await;
    let shared = &rig.capture.shared;
    let stats = &shared.stats;
    assert_eq!(shared.state(), SourceState::Live);
    assert_eq!(stats.captured.load(Relaxed), 20);
    assert_eq!(stats.h264_passed_through.load(Relaxed), 20);
    assert_eq!(stats.published.load(Relaxed), 0);
    assert_eq!(stats.no_signal.load(Relaxed), 0);
    assert!(shared.h264.is_passthrough());
    assert_eq!(
        shared.h264.gop_len(),
        20,
        "the keyframe and every unit since"
    );
    let demand = shared.h264.demand();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shared.h264.encoder_running(), "passthrough: no encoder");
    drop(demand);

    // A picture decoded from unit 7.
    let sink = FrameSink::new(
        shared.clone(),
        Arc::new(Journal::open(rig.log_dir.path()).unwrap()),
        crate::encoder::Encoder::new(EncoderConfig::default()).unwrap(),
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
        watch::Sender::new(None),
        "again".into(),
    );
    let mut picture = RawFrame::new();
    (picture.width, picture.height) = (32, 32);
    picture.data = vec![100; 32 * 32 * 3 / 2];
    sink.publish_decoded(&picture, 7);
    assert_eq!(stats.captured.load(Relaxed), 20);
    assert_eq!(stats.published.load(Relaxed), 1);

    // Silent from 2 s: lost a stall bound (5 s) after the newest unit, as any source.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(shared.state(), SourceState::Lost(r) if r.contains("no frame for 5 s")));
    let lines = rig.journal();
    assert_eq!(count(&lines, "SOURCE-LOST"), 1, "{lines:#?}");
    rig.shutdown.cancel();
}

#[test]
fn picture_demand_counts_its_guards() {
    let shared = Arc::new(CaptureShared::new("x".into(), StreamShape::default()));
    let mut changes = shared.picture_demand();
    assert_eq!(shared.pictures_wanted(), 0);
    let a = shared.want_pictures();
    let b = shared.want_pictures();
    assert_eq!(shared.pictures_wanted(), 2);
    assert!(changes.has_changed().unwrap());
    drop(a);
    assert_eq!(shared.pictures_wanted(), 1);
    let k = shared.want_keyframe_pictures();
    assert_eq!(changes.borrow_and_update().decode(), Decode::Every);
    drop(b);
    assert_eq!(shared.pictures_wanted(), 0);
    assert_eq!(changes.borrow_and_update().decode(), Decode::Keyframes);
    drop(k);
    assert_eq!(*changes.borrow_and_update(), PictureWants::default());
    assert_eq!(changes.borrow().decode(), Decode::Nothing);
}
