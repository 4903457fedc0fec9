//! What one frame costs the H.264 feed's encoder thread: JPEG decode to I420 plus OpenH264,
//! per picture size, on a moving picture at 30 fps with a 2 s GOP (the server's settings).
//!
//! `cargo run --release -p surv-codec --example encode_cost [FRAMES] [LAYERS]` (temporal
//! layers: 3, the server's, by default; 1 to compare).

use std::time::Instant;

use surv_codec::encoder::DEFAULT_BITS_PER_PIXEL;
use surv_codec::{Bitrate, H264Settings, JpegToH264};
use turbojpeg::{PixelFormat, Subsamp};

/// A `width` x `height` 4:2:0 JPEG: a gradient with a box that moves with `i`.
fn jpeg(width: usize, height: usize, i: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; width * height * 3];
    let (bx, by) = ((i * 7) % width, (i * 3) % height);
    for (n, px) in rgb.chunks_exact_mut(3).enumerate() {
        let (x, y) = (n % width, n / width);
        let inside = x.wrapping_sub(bx) < width / 8 && y.wrapping_sub(by) < height / 8;
        let colour = if inside {
            [255, 255, 255]
        } else {
            [
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y + i) % 256) as u8,
            ]
        };
        px.copy_from_slice(&colour);
    }
    let image = turbojpeg::Image {
        pixels: &rgb[..],
        width,
        pitch: width * 3,
        height,
        format: PixelFormat::RGB,
    };
    turbojpeg::compress(image, 80, Subsamp::Sub2x2)
        .expect("compress")
        .to_vec()
}

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let layers: u8 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    for (w, h) in [(640, 480), (1280, 720)] {
        let jpegs: Vec<Vec<u8>> = (0..30).map(|i| jpeg(w, h, i)).collect();
        let mut coder = JpegToH264::new(H264Settings {
            fps: 30.0,
            bitrate: Bitrate::PerPixel {
                bits_per_pixel: DEFAULT_BITS_PER_PIXEL,
                min_bps: 200_000,
            },
            idr_period_frames: 60,
            temporal_layers: layers,
        })
        .expect("encoder");
        let mut bytes = 0;
        let started = Instant::now();
        for i in 0..frames {
            let coded = coder
                .encode(&jpegs[i % jpegs.len()], i as u64 * 33)
                .expect("encode");
            bytes += coded.annexb.len();
        }
        let per_frame = started.elapsed() / frames as u32;
        println!(
            "{w}x{h}, {layers} temporal layer(s): {:.2} ms a frame (JPEG decode + H.264), {} kbit/s at 30 fps",
            per_frame.as_secs_f64() * 1e3,
            bytes * 8 * 30 / frames / 1000
        );
    }
}
