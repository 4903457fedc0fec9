//! `detect-bench`: what object detection costs, on this machine, with the model and runtime
//! `scripts/setup.sh` installs (run from the workspace, or give --model/--runtime).
//!
//! 1. The detector alone on one core: a real photograph (tests/photos/astronaut.jpg) scaled to
//!    640x480 and 1920x1080 JPEGs, each analysed N times as the server does (decode at the
//!    smallest scale covering 512x512, stretch, model): mean, median and worst ms per frame,
//!    and the share of it before the model.
//! 2. The server: the test pattern at SIZE@FPS for SECS with detection off, then with
//!    `--detect person --detect-every 1`: the capture rate and what one viewer (surv-client)
//!    received both times, frames analysed and skipped by the detector.
//!
//! ```text
//! cargo run --release -p surv-tests --bin detect-bench -- --frames 30 --secs 10
//! ```

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use surv_server::detect::model::{stretch, Model, Prepare, SIDE};
use surv_server::detect::{parse_labels, DetectConfig, ModelPaths, DEFAULT_THRESHOLD};
use surv_tests::{detect_model, photo, start_server, ServerOpts};

#[derive(Debug, Parser)]
struct Args {
    /// Frames analysed per size.
    #[arg(long, default_value_t = 30)]
    frames: usize,
    /// Seconds the server runs each way (0: skip the server part).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The server part's test pattern.
    #[arg(long, default_value = "1280x720")]
    size: String,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    #[arg(long)]
    runtime: Option<std::path::PathBuf>,
}

/// The photograph as a `w`x`h` JPEG (stretched, quality 85), as a camera would send it.
fn scaled_photo(w: usize, h: usize) -> anyhow::Result<Vec<u8>> {
    let image = turbojpeg::decompress(&photo("astronaut.jpg"), turbojpeg::PixelFormat::RGB)?;
    let mut out = vec![0u8; w * h * 3];
    // Nearest neighbour is enough to make a big picture of it.
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x * image.width / w, y * image.height / h);
            let src = &image.pixels[sy * image.pitch + sx * 3..][..3];
            out[(y * w + x) * 3..][..3].copy_from_slice(src);
        }
    }
    let img = turbojpeg::Image {
        pixels: &out[..],
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    Ok(turbojpeg::compress(img, 85, turbojpeg::Subsamp::Sub2x2)?.to_vec())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn detector(args: &Args, model: &Model) -> anyhow::Result<()> {
    println!(
        "detector alone, one core ({} frames per size):",
        args.frames
    );
    for (w, h) in [(640, 480), (1920, 1080)] {
        let jpeg = scaled_photo(w, h)?;
        let mut prepare = Prepare::default();
        // One run first: the runtime's first inference allocates.
        model
            .detect(
                prepare.jpeg(&jpeg).map_err(anyhow::Error::msg)?,
                DEFAULT_THRESHOLD,
            )
            .map_err(anyhow::Error::msg)?;
        let (mut totals, mut before) = (Vec::new(), Duration::ZERO);
        let mut people = 0;
        for _ in 0..args.frames {
            let t0 = Instant::now();
            let input = prepare.jpeg(&jpeg).map_err(anyhow::Error::msg)?;
            let t1 = Instant::now();
            let found = model
                .detect(input, DEFAULT_THRESHOLD)
                .map_err(anyhow::Error::msg)?;
            totals.push(t0.elapsed());
            before += t1 - t0;
            people = found.iter().filter(|d| d.class == 0).count();
        }
        totals.sort();
        let mean = totals.iter().sum::<Duration>() / totals.len() as u32;
        println!(
            "  {w}x{h} JPEG ({} KB): mean {:.1} ms, median {:.1} ms, worst {:.1} ms a frame \
             ({:.1} ms of it decode and resize); {:.1} frames/s; people seen: {people}",
            jpeg.len() / 1024,
            ms(mean),
            ms(totals[totals.len() / 2]),
            ms(totals[totals.len() - 1]),
            ms(before / totals.len() as u32),
            1.0 / mean.as_secs_f64(),
        );
    }
    // The resize alone, from a 960x540 decode (a 1080p frame at 1/2).
    let rgb = vec![128u8; 960 * 540 * 3];
    let mut out = vec![0.0; SIDE * SIDE * 3];
    let t0 = Instant::now();
    for _ in 0..args.frames {
        stretch(&rgb, 960, 540, &mut out);
    }
    println!(
        "  stretch 960x540 to 512x512: {:.2} ms",
        ms(t0.elapsed() / args.frames as u32)
    );
    Ok(())
}

async fn server(args: &Args, detect: bool) -> anyhow::Result<()> {
    let (w, h) = surv_proto::parse_size(&args.size).map_err(anyhow::Error::msg)?;
    let mut opts = ServerOpts {
        fps: args.fps,
        ..ServerOpts::sized(w, h)
    };
    if detect {
        let mut config = DetectConfig::new(parse_labels("person").map_err(anyhow::Error::msg)?);
        config.every = 1;
        opts.detect = Some(config);
    }
    let srv = start_server(opts).await?;
    let camera = srv.server.first_camera();
    let stats = &camera.capture.stats;
    // A second to settle, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, a0, s0) = (
        stats.captured.load(Relaxed),
        camera.detect.analysed.load(Relaxed),
        camera.detect.skipped.load(Relaxed),
    );
    let t0 = Instant::now();
    // A watcher (surv-client, UDP) for the window: what it receives is the rate watchers get.
    let viewer = surv_client::run(
        surv_tests::client_config(srv.addr, args.secs as f64),
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    let received = viewer.await?.received;
    let secs = t0.elapsed().as_secs_f64();
    let captured = stats.captured.load(Relaxed) - c0;
    let analysed = camera.detect.analysed.load(Relaxed) - a0;
    let skipped = camera.detect.skipped.load(Relaxed) - s0;
    println!(
        "  detection {}: captured {:.1} frames/s of {} ({}x{}), a viewer received {:.1}/s; \
         analysed {:.1}/s, skipped by the detector {:.1}/s, {:.1} ms a frame",
        if detect { "on (every frame)" } else { "off" },
        captured as f64 / secs,
        args.fps,
        w,
        h,
        received as f64 / secs,
        analysed as f64 / secs,
        skipped as f64 / secs,
        camera.detect.busy_us.load(Relaxed) as f64
            / 1000.0
            / camera.detect.analysed.load(Relaxed).max(1) as f64,
    );
    srv.stop().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let defaults = detect_model();
    let paths = ModelPaths {
        runtime: args.runtime.clone().unwrap_or(defaults.runtime),
        model: args.model.clone().unwrap_or(defaults.model),
    };
    let model = Model::load(&paths)
        .map_err(anyhow::Error::msg)
        .context("the detection model (bash scripts/setup.sh)")?;
    detector(&args, &model)?;
    if args.secs > 0 {
        println!(
            "the server, {}@{} test pattern, {} s each:",
            args.size, args.fps, args.secs
        );
        server(&args, false).await?;
        server(&args, true).await?;
    }
    Ok(())
}
