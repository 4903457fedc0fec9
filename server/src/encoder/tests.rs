//! Unit tests of the encoder: every datagram under the cap and decodable by turbojpeg, the
//! settling of quality and scale, and the pieces (size model, box filter, scaled sizes) alone.

use super::rate::{quality_for_scale, quant_scale, SizeModel};
use super::scale::{box_halve, halve_i420, scaled_sizes};
use super::*;
use crate::frame::RawFrame;
use crate::sources::{FrameReader, TestPattern};
use surv_proto::DEFAULT_MAX_DATAGRAM_BYTES;

/// Decodes with turbojpeg, independently of the encoder: (width, height) of the image.
fn decode(datagram: &[u8]) -> (usize, usize) {
    let image = turbojpeg::decompress(datagram, turbojpeg::PixelFormat::RGB)
        .expect("datagram is a valid JPEG");
    (image.width, image.height)
}

struct Run {
    frames: Vec<EncodedFrame>,
    errors: usize,
}

fn run(width: u32, height: u32, cap: usize, frames: usize) -> Run {
    let mut source = TestPattern::new(width, height, 240).unwrap();
    let mut encoder = Encoder::new(EncoderConfig {
        max_datagram_bytes: cap,
        quality: 80,
    })
    .unwrap();
    let mut raw = RawFrame::new();
    let mut out = Run {
        frames: Vec::new(),
        errors: 0,
    };
    for seq in 0..frames as u64 {
        source.next_frame(&mut raw).unwrap();
        match encoder.encode(&raw, seq) {
            Ok(frame) => {
                assert!(frame.jpeg().unwrap().len() <= cap, "{frame:?} over {cap}");
                let tag = FrameTag::decode(frame.jpeg().unwrap()).unwrap();
                assert_eq!(tag.seq, seq);
                assert_eq!(tag.capture_unix_us, raw.capture_unix_us);
                assert_eq!(
                    decode(frame.jpeg().unwrap()),
                    (frame.width as usize, frame.height as usize)
                );
                out.frames.push(frame);
            }
            Err(EncodeError::TooLarge { .. }) => out.errors += 1,
            Err(e) => panic!("frame {seq}: {e}"),
        }
    }
    out
}

#[test]
fn vga_at_the_default_cap_settles_on_one_encode_per_frame() {
    let run = run(640, 480, DEFAULT_MAX_DATAGRAM_BYTES, 30);
    assert_eq!(run.errors, 0);
    for f in &run.frames {
        assert_eq!((f.width, f.height), (640, 480), "{f:?}");
    }
    let last: Vec<_> = run.frames[20..].iter().map(|f| f.attempts).collect();
    assert!(
        last.iter().all(|&a| a == 1),
        "attempts of the last 10 frames: {last:?}"
    );
}

#[test]
fn hd_at_the_default_cap_fits_every_frame() {
    let run = run(1280, 720, DEFAULT_MAX_DATAGRAM_BYTES, 30);
    assert_eq!(run.errors, 0);
    let total: u32 = run.frames.iter().map(|f| f.attempts).sum();
    // Some re-encodes while settling; afterwards nearly one per frame.
    assert!(total < 30 + 10, "{total} compress calls for 30 frames");
}

#[test]
fn vga_under_an_mtu_sized_cap_downscales() {
    let run = run(640, 480, 1400, 30);
    assert_eq!(run.errors, 0);
    let last = run.frames.last().unwrap();
    assert!(last.width < 640 && last.height < 480, "{last:?}");
    let total: u32 = run.frames[20..].iter().map(|f| f.attempts).sum();
    assert!(total <= 12, "{total} compress calls for the last 10 frames");
}

#[test]
fn noise_never_exceeds_the_cap() {
    // A xorshift generator: incompressible, deterministic.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    for (cap, format, (w, h)) in [
        (DEFAULT_MAX_DATAGRAM_BYTES, PixelFormat::I420, (640, 480)),
        (1400, PixelFormat::I420, (640, 480)),
        (MIN_DATAGRAM_BYTES, PixelFormat::I420, (320, 240)),
        (DEFAULT_MAX_DATAGRAM_BYTES, PixelFormat::Rgb24, (640, 480)),
        (1400, PixelFormat::Rgb24, (320, 240)),
    ] {
        let mut encoder = Encoder::new(EncoderConfig {
            max_datagram_bytes: cap,
            quality: 100,
        })
        .unwrap();
        for seq in 0..3 {
            let frame = RawFrame {
                width: w,
                height: h,
                format,
                data: noise(format.frame_bytes(w, h).unwrap()),
                capture_unix_us: 1,
            };
            match encoder.encode(&frame, seq) {
                Ok(f) => {
                    assert!(f.jpeg().unwrap().len() <= cap, "{f:?} over {cap}");
                    let (dw, dh) = decode(f.jpeg().unwrap());
                    assert_eq!((dw as u32, dh as u32), (f.width, f.height));
                }
                Err(EncodeError::TooLarge { bytes, cap: c, .. }) => {
                    assert!(bytes > c && c == cap)
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn rgb_frames_are_encoded_too() {
    let (w, h) = (64, 48);
    let data = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let frame = RawFrame {
        width: w,
        height: h,
        format: PixelFormat::Rgb24,
        data,
        capture_unix_us: 5,
    };
    let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
    let f = encoder.encode(&frame, 9).unwrap();
    assert_eq!(decode(f.jpeg().unwrap()), (64, 48));
    assert_eq!(
        FrameTag::decode(f.jpeg().unwrap()).unwrap(),
        FrameTag {
            seq: 9,
            capture_unix_us: 5,
            motion: false,
            objects: false,
        }
    );
}

#[test]
fn rejects_bad_configs_and_frames() {
    for (bytes, quality) in [
        (MIN_DATAGRAM_BYTES - 1, 80),
        (MAX_UDP_PAYLOAD_BYTES + 1, 80),
        (1400, 0),
        (1400, 101),
    ] {
        let cfg = EncoderConfig {
            max_datagram_bytes: bytes,
            quality,
        };
        assert!(Encoder::new(cfg).is_err(), "{cfg:?}");
    }
    let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
    for (w, h, format, len) in [
        (64, 48, PixelFormat::I420, 64 * 48),
        (64, 48, PixelFormat::I420, 64 * 48 * 3 / 2 + 1),
        (63, 48, PixelFormat::I420, 63 * 48 * 3 / 2),
        (0, 0, PixelFormat::I420, 0),
        (64, 48, PixelFormat::Rgb24, 64 * 48 * 3 / 2),
    ] {
        let frame = RawFrame {
            width: w,
            height: h,
            format,
            data: vec![0; len],
            capture_unix_us: 0,
        };
        let err = encoder.encode(&frame, 0).unwrap_err();
        assert!(matches!(err, EncodeError::BadFrame { .. }), "{err}");
    }
}

#[test]
fn box_filter_averages_two_by_two_blocks() {
    // 4x2 grey plane -> 2x1.
    let src = [0, 2, 10, 20, 4, 6, 30, 41];
    let mut dst = [0; 2];
    box_halve(&src, 4, 2, 1, &mut dst, 2, 1);
    assert_eq!(dst, [3, 25]); // (0+2+4+6)/4 = 3, (10+20+30+41)/4 = 25.25

    // 2x2 RGB -> 1x1, channels kept apart.
    let rgb = [255, 0, 1, 255, 0, 2, 255, 0, 3, 255, 4, 4];
    let mut one = [0; 3];
    box_halve(&rgb, 2, 2, 3, &mut one, 1, 1);
    assert_eq!(one, [255, 1, 3]); // (0+0+0+4)/4 = 1, (1+2+3+4)/4 = 2.5 rounds to 3
}

#[test]
fn halving_i420_keeps_the_planes_apart() {
    // 4x4 I420: Y 16 bytes, U 4, V 4 -> 2x2: Y 4, U 1, V 1.
    let mut src: Vec<u8> = (0..16).map(|i| i * 10).collect();
    src.extend([100, 102, 104, 106]);
    src.extend([200, 200, 0, 0]);
    let mut dst = Vec::new();
    halve_i420(&src, 4, 4, 2, 2, &mut dst);
    assert_eq!(dst, vec![25, 45, 105, 125, 103, 100]);
}

#[test]
fn scaled_sizes_stay_even_and_large_enough() {
    assert_eq!(
        scaled_sizes(640, 480),
        vec![(640, 480), (320, 240), (160, 120), (80, 60), (40, 30)]
    );
    assert_eq!(scaled_sizes(160, 90), vec![(160, 90), (80, 44), (40, 22)]);
    assert_eq!(scaled_sizes(16, 16), vec![(16, 16)]);
}

#[test]
fn quality_estimates_move_the_right_way() {
    let model = SizeModel { overhead_bytes: 0 };
    assert_eq!(model.quality_for(80, 1000, 1000), 80);
    let lower = model.quality_for(80, 2000, 1000);
    assert!((1..80).contains(&lower), "{lower}");
    assert!(model.quality_for(80, 10_000, 1000) < lower);
    assert!(model.quality_for(50, 500, 1000) > 50);
    assert_eq!(model.quality_for(80, 1_000_000, 1), 1);
    for q in 1..=100 {
        assert_eq!(quality_for_scale(quant_scale(q)), q);
    }
    // Only the picture data shrinks: 1000 bytes of which 600 headers, to 800, is halving
    // the data, a bigger step than 1000 -> 800 without headers.
    let with_headers = SizeModel {
        overhead_bytes: 600,
    };
    assert!(with_headers.quality_for(80, 1000, 800) < model.quality_for(80, 1000, 800));
    // A target below the headers: as low as it goes.
    assert_eq!(with_headers.quality_for(80, 1000, 500), 1);
}

#[test]
fn halvings_predicted_from_the_picture_data() {
    let model = SizeModel {
        overhead_bytes: 400,
    };
    assert_eq!(model.halvings_needed(1000, 900), 1);
    assert_eq!(model.halvings_needed(400 + 4 * 500, 900), 1);
    assert_eq!(model.halvings_needed(400 + 4 * 501, 900), 2);
    assert_eq!(model.halvings_needed(100_000, 900), 4);
    assert_eq!(model.halvings_needed(100_000, 100), MAX_SCALE_SHIFT);
}

#[test]
fn step_up_prefers_the_full_size_when_it_will_fit() {
    let model = SizeModel { overhead_bytes: 0 };
    // Half size, tiny frames: undo the halving at the same quality.
    assert_eq!(model.step_up(60, 1, 1000, 65_000, 80), Some((60, 0)));
    // Half size, frames at 60% of the cap: full size would need a very low quality; raise
    // the quality instead.
    assert_eq!(model.step_up(30, 1, 39_000, 65_000, 80), Some((35, 1)));
    // Half size at 30% of the cap: full size fits at a decent, lower quality.
    let (q, shift) = model.step_up(80, 1, 20_000, 65_000, 80).unwrap();
    assert_eq!(shift, 0);
    assert!((UNSCALE_MIN_QUALITY..80).contains(&q), "{q}");
    // Half size at the ceiling: nothing better at this size, so try the full size even at
    // a low quality...
    let (q, shift) = model.step_up(80, 1, 35_000, 65_000, 80).unwrap();
    assert_eq!(shift, 0);
    assert!((QUALITY_FLOOR + 1..UNSCALE_MIN_QUALITY).contains(&q), "{q}");
    // ...but not if it would only fit at the floor.
    assert_eq!(model.step_up(80, 1, 60_000, 65_000, 80), None);
    // Full size below the ceiling: raise.
    assert_eq!(model.step_up(75, 0, 1000, 65_000, 80), Some((80, 0)));
    // Full size at the ceiling: nothing better.
    assert_eq!(model.step_up(80, 0, 1000, 65_000, 80), None);
    // Headers do not triple: 1400-byte cap, 550-byte frames of which 400 headers.
    let small = SizeModel {
        overhead_bytes: 400,
    };
    assert_eq!(small.step_up(30, 2, 550, 1400, 80), Some((30, 1)));
}

/// Rough figures for the record, not a benchmark:
/// `cargo test --release -p surv-server --lib -- --ignored --nocapture encode_speed`
#[test]
#[ignore]
fn encode_speed() {
    for (w, h, cap) in [(640, 480, 65_000), (1280, 720, 65_000), (640, 480, 1400)] {
        let mut source = TestPattern::new(w, h, 240).unwrap();
        let frames: Vec<RawFrame> = (0..60)
            .map(|_| {
                let mut raw = RawFrame::new();
                source.next_frame(&mut raw).unwrap();
                raw
            })
            .collect();
        let mut encoder = Encoder::new(EncoderConfig {
            max_datagram_bytes: cap,
            quality: 80,
        })
        .unwrap();
        // The first frames settle the setting; time the steady state.
        for (seq, frame) in frames[..10].iter().enumerate() {
            encoder.encode(frame, seq as u64).unwrap();
        }
        let start = std::time::Instant::now();
        let mut bytes = 0;
        let mut last = None;
        for (seq, frame) in frames[10..].iter().enumerate() {
            let f = encoder.encode(frame, seq as u64 + 10).unwrap();
            bytes += f.jpeg().unwrap().len();
            last = Some(f);
        }
        let per_frame = start.elapsed() / 50;
        let avg = bytes / 50;
        println!("{w}x{h} cap {cap}: {per_frame:?}/frame, {avg} bytes avg, last {last:?}");
    }
}
