//! A scripted camera for motion tests (tests/motion.rs, tests/mqtt.rs): a still scene with
//! sensor noise, an object that crosses it from [`MOVE`]`.0` to [`MOVE`]`.1`, the lights
//! switched on at [`LIGHTS`], still again until [`END`]. Frames are I420 at [`FPS`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_server::capture::{FrameSink, StreamShape};
use surv_server::sources::{PixelFormat, RawFrame, Source, SourceRun};
use tokio_util::sync::CancellationToken;

pub const W: usize = 320;
pub const H: usize = 240;
pub const FPS: u64 = 30;
/// When the object starts and stops moving, and when the lights go on, µs into the script.
pub const MOVE: (u64, u64) = (1_500_000, 3_000_000);
pub const LIGHTS: u64 = 4_500_000;
pub const END: u64 = 6_500_000;

/// The scripted camera: frame n at start + n/30 s, capture time t0 + n/30 s.
pub struct Script {
    /// When the script started (µs since the epoch), set when it runs.
    pub t0_us: Arc<std::sync::atomic::AtomicU64>,
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
