//! The detector on scripted scenes: JPEGs made here, decoded at 1/8 like the server does.

use super::*;

const W: usize = 640;
const H: usize = 480;

/// A textured scene (so that JPEG noise is real), `brightness` added, and a dark 80×80 object
/// at `object_x` if any.
fn scene(brightness: i32, object_x: Option<usize>, grain: u64) -> Vec<u8> {
    let mut rng = grain.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rgb = Vec::with_capacity(W * H * 3);
    for y in 0..H {
        for x in 0..W {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let jitter = (rng % 7) as i32 - 3;
            let mut v = 60 + ((x / 40 + y / 40) % 2) as i32 * 90 + (x as i32 / 8) + jitter;
            if let Some(ox) = object_x {
                if (ox..ox + 80).contains(&x) && (200..280).contains(&y) {
                    v = 10 + jitter;
                }
            }
            let v = (v + brightness).clamp(0, 255) as u8;
            rgb.extend_from_slice(&[v, v, v]);
        }
    }
    let image = turbojpeg::Image {
        pixels: &rgb[..],
        width: W,
        pitch: W * 3,
        height: H,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2)
        .unwrap()
        .to_vec()
}

#[test]
fn one_event_for_a_moving_object_none_for_the_lights() {
    let mut detector = Detector::new(MotionConfig::default());
    let mut decompressor = crate::jpeg::JpegReader::new();
    let mut thumb = Vec::new();
    let mut events = Vec::new();
    let mut active_frames = 0;
    // 15 analysed frames a second (every 2nd of 30 fps) for 10 s: static until 2 s, an object
    // crossing the picture until 4 s, static, the lights brighten by 40 at 6 s, static.
    let fps = 15u64;
    for i in 0..10 * fps {
        let t_us = i * 1_000_000 / fps;
        let object = (2_000_000..4_000_000)
            .contains(&t_us)
            .then(|| ((t_us - 2_000_000) * (W as u64 - 80) / 2_000_000) as usize);
        let brightness = if t_us >= 6_000_000 { 40 } else { 0 };
        let jpeg = scene(brightness, object, i);
        let (w, h) = thumbnail(&mut decompressor, &jpeg, &mut thumb).unwrap();
        assert_eq!((w, h), (W / 8, H / 8));
        let (analysis, event) = detector.analyse(&thumb, w, h, t_us);
        active_frames += usize::from(analysis.active);
        events.extend(event);
    }
    assert_eq!(events.len(), 2, "one start, one end: {events:#?}");
    let MotionEvent::Start {
        at_us,
        score,
        region,
    } = events[0].clone()
    else {
        panic!("{events:#?}");
    };
    assert!((1_500_000..=2_500_000).contains(&at_us), "start at {at_us}");
    assert!(score > 0.005, "{score}");
    // The object is in the middle band of the picture.
    assert!(region.y > 0.3 && region.y + region.h < 0.7, "{region:?}");
    let MotionEvent::End {
        start_us,
        end_us,
        peak,
        region,
    } = events[1].clone()
    else {
        panic!("{events:#?}");
    };
    assert_eq!(start_us, at_us);
    assert!((3_500_000..=4_500_000).contains(&end_us), "end at {end_us}");
    assert!(peak >= score);
    assert!(
        region.w > 0.8,
        "the box spans the object's path: {region:?}"
    );
    // Active from the start to 3 s after the end (the hold), then never again.
    assert!(active_frames >= 5 * fps as usize - 2, "{active_frames}");
    assert!(!detector.active());
}

#[test]
fn a_still_scene_with_sensor_noise_is_not_motion() {
    let mut detector = Detector::new(MotionConfig::default());
    let mut decompressor = crate::jpeg::JpegReader::new();
    let mut thumb = Vec::new();
    for i in 0..30u64 {
        let (w, h) = thumbnail(&mut decompressor, &scene(0, None, i), &mut thumb).unwrap();
        let (analysis, event) = detector.analyse(&thumb, w, h, i * 66_000);
        assert_eq!(event, None);
        assert!(analysis.score < 0.001, "{}", analysis.score);
    }
}

#[test]
fn bad_input_is_not_a_panic() {
    let mut detector = Detector::new(MotionConfig::default());
    assert_eq!(detector.analyse(&[], 0, 0, 0).1, None);
    assert_eq!(detector.analyse(&[1, 2, 3], 80, 60, 0).1, None);
    let mut decompressor = crate::jpeg::JpegReader::new();
    let mut thumb = Vec::new();
    assert!(thumbnail(&mut decompressor, b"\xFF\xD8 not a jpeg", &mut thumb).is_err());
    // A size change starts the comparison afresh.
    detector.analyse(&[0; 16], 4, 4, 0);
    assert_eq!(detector.analyse(&[255; 64], 8, 8, 1).1, None);
}

#[test]
fn a_bad_frame_costs_one_thumbnail() {
    let good = scene(0, None, 0);
    let mut reader = crate::jpeg::JpegReader::new();
    let mut thumb = Vec::new();
    for (what, bad) in surv_tests::fixtures::broken_jpegs(&good) {
        let _ = thumbnail(&mut reader, &bad, &mut thumb);
        assert!(
            thumbnail(&mut reader, &good, &mut thumb).is_ok(),
            "the good frame after {what}"
        );
    }
}
