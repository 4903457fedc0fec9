//! Motion detection on the real server with a scripted camera: a still scene, an object that
//! crosses it, the lights switched on, still again. One event for the object (start and end
//! within 0.5 s of the script), none for the lights, in the journal.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_server::capture::{FrameSink, StreamShape};
use surv_server::motion::watch::{run as watch_motion, MotionState};
use surv_server::motion::MotionConfig;
use surv_server::sources::{PixelFormat, RawFrame, Source, SourceRun};
use surv_tests::{start_server_with, ServerOpts};
use tokio_util::sync::CancellationToken;

const W: usize = 320;
const H: usize = 240;
const FPS: u64 = 30;
/// When the object starts and stops moving, and when the lights go on, µs into the script.
const MOVE: (u64, u64) = (1_500_000, 3_000_000);
const LIGHTS: u64 = 4_500_000;
const END: u64 = 6_500_000;

/// The scripted camera: frame n at start + n/30 s, capture time t0 + n/30 s.
struct Script {
    t0_us: Arc<std::sync::atomic::AtomicU64>,
}

fn luma(t_us: u64, n: u64, out: &mut [u8]) {
    let object_x = (MOVE.0..MOVE.1)
        .contains(&t_us)
        .then(|| ((t_us - MOVE.0) * (W as u64 - 40) / (MOVE.1 - MOVE.0)) as usize);
    let lights = if t_us >= LIGHTS { 40 } else { 0 };
    let mut rng = (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for y in 0..H {
        for x in 0..W {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut v = 50 + ((x / 20 + y / 20) % 2) as i32 * 100 + (rng % 5) as i32;
            if object_x.is_some_and(|ox| (ox..ox + 40).contains(&x) && (100..140).contains(&y)) {
                v = 5;
            }
            out[y * W + x] = (v + lights).clamp(0, 255) as u8;
        }
    }
}

impl Source for Script {
    fn describe(&self) -> String {
        "motion script".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            sink.opened(
                "motion script",
                StreamShape {
                    width: W as u32,
                    height: H as u32,
                    fps: FPS as u32,
                },
            );
            let t0 = surv_proto::unix_micros_now();
            self.t0_us.store(t0, Relaxed);
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FPS));
            let mut frame = RawFrame::new();
            (frame.width, frame.height, frame.format) = (W as u32, H as u32, PixelFormat::I420);
            frame.data = vec![128; W * H * 3 / 2];
            for n in 0.. {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let t_us = n * 1_000_000 / FPS;
                if t_us > END {
                    stop.cancelled().await;
                    return Ok(());
                }
                luma(t_us, n, &mut frame.data[..W * H]);
                frame.capture_unix_us = t0 + t_us;
                sink.publish_raw(&frame);
            }
            Ok(())
        })
    }
}

/// `key=<RFC 3339>` from a journal line, as µs since the epoch.
fn time_of(line: &str, key: &str) -> u64 {
    let start = line.find(&format!("{key}=")).expect(key) + key.len() + 1;
    let text = line[start..].split(' ').next().unwrap();
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_micros() as u64
}

#[tokio::test]
async fn one_event_for_the_object_none_for_the_lights() -> anyhow::Result<()> {
    let t0 = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let srv = start_server_with(
        ServerOpts::sized(W as u32, H as u32),
        Box::new(Script { t0_us: t0.clone() }),
    )
    .await?;
    let state = Arc::new(MotionState::default());
    let cfg = MotionConfig {
        hold: Duration::from_secs(1),
        ..MotionConfig::default()
    };
    let motion = tokio::spawn(watch_motion(
        srv.server.frames.clone(),
        2,
        cfg,
        srv.server.capture.clone(),
        srv.server.journal.clone(),
        state.clone(),
        srv.shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_micros(END + 500_000)).await;
    let journal = srv.stop().await?;
    motion.await?;
    let t0 = t0.load(Relaxed);
    let starts: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("MOTION-START"))
        .collect();
    let ends: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("MOTION-END"))
        .collect();
    assert_eq!((starts.len(), ends.len()), (1, 1), "{journal:#?}");
    let start = time_of(starts[0], "at") - t0;
    let end = time_of(ends[0], "end") - t0;
    assert!(
        start.abs_diff(MOVE.0) <= 500_000,
        "start {start} µs, truth {}",
        MOVE.0
    );
    assert!(
        end.abs_diff(MOVE.1) <= 500_000,
        "end {end} µs, truth {}",
        MOVE.1
    );
    assert_eq!(time_of(ends[0], "start") - t0, start);
    assert!(state.analysed.load(Relaxed) >= (END / 1_000_000 * FPS / 2) * 8 / 10);
    assert_eq!(state.events.load(Relaxed), 1);
    assert!(!state.active.load(Relaxed));
    assert!(state.enabled.load(Relaxed));
    Ok(())
}
