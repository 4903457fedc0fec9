//! Unit tests of the test pattern: sizes, motion, legibility, pacing, the time code.

use std::time::{Duration, Instant};

use super::draw::{ycbcr, WHITE_Y};
use super::*;

fn frame_of(pattern: &mut TestPattern) -> RawFrame {
    let mut frame = RawFrame::new();
    pattern.next_frame(&mut frame).unwrap();
    frame
}

#[test]
fn rejects_sizes_and_rates_it_cannot_draw() {
    for (w, h) in [
        (15, 16),
        (16, 15),
        (14, 16),
        (16, 14),
        (0, 0),
        (7682, 480),
        (640, 4322),
    ] {
        let err = TestPattern::new(w, h, 30).unwrap_err();
        assert!(matches!(err, SourceError::Size { .. }), "{w}x{h}: {err}");
        assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
    }
    for fps in [0, 241] {
        let err = TestPattern::new(640, 480, fps).unwrap_err();
        assert!(matches!(err, SourceError::Fps { .. }), "{fps}: {err}");
    }
    for (w, h, fps) in [(16, 16, 1), (7680, 4320, 240), (160, 90, 30)] {
        let p = TestPattern::new(w, h, fps).unwrap();
        assert_eq!(p.size(), (w, h));
        assert_eq!(p.fps(), fps);
        assert_eq!(p.describe(), format!("test pattern {w}x{h}@{fps}"));
    }
}

#[test]
fn frames_are_i420_of_the_right_size_and_timestamped() {
    let mut p = TestPattern::new(640, 480, 240).unwrap();
    let before = unix_micros_now();
    let frame = frame_of(&mut p);
    let after = unix_micros_now();
    assert_eq!((frame.width, frame.height), (640, 480));
    assert_eq!(frame.format, PixelFormat::I420);
    assert_eq!(frame.data.len(), 640 * 480 * 3 / 2);
    assert!((before..=after).contains(&frame.capture_unix_us));
    let debug = format!("{frame:?}");
    assert!(debug.contains("data_bytes: 460800"), "{debug}");
}

#[test]
fn the_picture_moves_and_the_counter_counts() {
    let mut p = TestPattern::new(320, 240, 240).unwrap();
    let mut a = frame_of(&mut p);
    let b = frame_of(&mut p);
    assert_ne!(a.data, b.data, "consecutive frames are identical");

    // At 320x240 the counter "F 000000" is drawn at scale 3 from (6, 6): margin 4 + pad 2.
    // Luma of glyphs `from..to` of the counter line:
    let glyphs = |f: &RawFrame, from: usize, to: usize| -> Vec<u8> {
        (6..6 + 8 * 3)
            .flat_map(|y| f.data[y * 320 + 6 + from * 24..y * 320 + 6 + to * 24].to_vec())
            .collect()
    };
    // "F 00000" is the same in frames 0 and 1 whatever moves behind it; the last digit is not.
    assert_eq!(glyphs(&a, 0, 7), glyphs(&b, 0, 7));
    assert!(glyphs(&a, 0, 1).contains(&WHITE_Y), "no 'F' drawn");
    assert_ne!(glyphs(&a, 7, 8), glyphs(&b, 7, 8), "counter did not change");
    // Frame 10 ("F 000010") differs from frame 1 in its last two digits.
    for _ in 2..=10 {
        p.next_frame(&mut a).unwrap();
    }
    assert_ne!(glyphs(&a, 6, 7), glyphs(&b, 6, 7));
    assert_ne!(glyphs(&a, 7, 8), glyphs(&b, 7, 8));
    assert_eq!(glyphs(&a, 0, 6), glyphs(&b, 0, 6));
}

#[test]
fn every_size_draws_without_panicking() {
    for (w, h) in [
        (16, 16),
        (18, 16),
        (16, 200),
        (160, 90),
        (1920, 16),
        (642, 482),
    ] {
        let mut p = TestPattern::new(w, h, 240).unwrap();
        let mut frame = RawFrame::new();
        for _ in 0..3 {
            p.next_frame(&mut frame).unwrap();
        }
        assert_eq!(frame.data.len(), (w * h * 3 / 2) as usize);
    }
    // A far-away frame number moves everything to the other end of its path.
    let mut p = TestPattern::new(160, 90, 30).unwrap();
    let mut data = vec![0; 160 * 90 * 3 / 2];
    p.render(u64::MAX, u64::MAX, &mut data);
    p.render(987_654_321, 0, &mut data);
}

#[test]
fn counter_and_clock_fit_a_160_by_90_frame() {
    let mut p = TestPattern::new(160, 90, 30).unwrap();
    let frame = frame_of(&mut p);
    // Scale 1 at this height, margin 2, padding 2: the last glyph of each line must be
    // drawn, not clipped. Counter "F 000000" on rows 4..12, clock "HH:MM:SS.mmm" on 14..22.
    let has_ink = |x0: usize, y0: usize| {
        (y0..y0 + 8).any(|y| frame.data[y * 160 + x0..y * 160 + x0 + 8].contains(&WHITE_Y))
    };
    assert!(has_ink(4 + 7 * 8, 4), "last counter digit missing");
    assert!(has_ink(4 + 11 * 8, 14), "last clock digit missing");
}

#[test]
fn never_produces_more_frames_than_the_schedule_allows() {
    let fps = 100;
    let mut p = TestPattern::new(32, 32, fps).unwrap();
    let mut frame = RawFrame::new();
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < Duration::from_millis(150) {
        p.next_frame(&mut frame).unwrap();
        frames += 1;
    }
    let elapsed = start.elapsed();
    // Tick n is due at n / fps, so frames <= elapsed * fps + 1 whatever the machine's load.
    let allowed = elapsed.as_millis() as u64 * u64::from(fps) / 1000 + 1;
    assert!(frames <= allowed, "{frames} frames in {elapsed:?}");
    assert!(frames >= 1);
}

#[test]
fn bars_are_jfif_colours() {
    assert_eq!(ycbcr(0, 0, 0), [0, 128, 128]);
    assert_eq!(ycbcr(255, 255, 255), [255, 128, 128]);
    assert_eq!(ycbcr(255, 0, 0), [76, 85, 255]);
    assert_eq!(ycbcr(0, 0, 255), [29, 255, 107]);
}

/// Rough figures for the record, not a benchmark:
/// `cargo test --release -p surv-server --lib -- --ignored --nocapture pattern_speed`
#[test]
#[ignore]
fn pattern_speed() {
    for (w, h) in [(640, 480), (1280, 720), (1920, 1080)] {
        let mut p = TestPattern::new(w, h, 30).unwrap();
        let mut data = vec![0; PixelFormat::I420.frame_bytes(w, h).unwrap()];
        let start = Instant::now();
        for n in 0..100 {
            p.render(n, unix_micros_now(), &mut data);
        }
        println!("{w}x{h}: {:?}/frame", start.elapsed() / 100);
    }
}

#[test]
fn the_capture_time_is_in_the_picture_and_reads_back() {
    for (w, h) in [(64, 48), (160, 90), (640, 480), (1280, 720), (1922, 1080)] {
        let mut p = TestPattern::new(w, h, 240).unwrap();
        let f = frame_of(&mut p);
        let code = TimeCode::layout(w as usize, h as usize).unwrap();
        assert!(code.x0 + TIME_CODE_BITS * code.cell <= w as usize);
        let read = code.read(&f.data, w as usize).unwrap();
        assert_eq!(read, (f.capture_unix_us / 1000) as u32, "{w}x{h}");
    }
    // Too narrow for 32 cells of 2 pixels: no code (and nothing drawn out of the frame).
    assert_eq!(TimeCode::layout(62, 48), None);
    let mut p = TestPattern::new(62, 48, 240).unwrap();
    frame_of(&mut p);
}

#[test]
fn the_time_code_survives_jpeg() {
    let (w, h) = (640usize, 480usize);
    let mut p = TestPattern::new(w as u32, h as u32, 240).unwrap();
    let f = frame_of(&mut p);
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_quality(30).unwrap();
    let image = turbojpeg::YuvImage {
        pixels: &f.data[..],
        width: w,
        align: 1,
        height: h,
        subsamp: turbojpeg::Subsamp::Sub2x2,
    };
    let jpeg = compressor.compress_yuv_to_vec(image).unwrap();
    let gray = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::GRAY).unwrap();
    assert_eq!(gray.pitch, w);
    let code = TimeCode::layout(w, h).unwrap();
    assert_eq!(
        code.read(&gray.pixels, w),
        Some((f.capture_unix_us / 1000) as u32)
    );
}
