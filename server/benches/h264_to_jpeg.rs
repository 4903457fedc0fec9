//! What an RTSP H.264 camera costs the server per frame, apart from the network: decoding one
//! 640x480 access unit with openh264 into the I420 frame the capture path takes
//! (`rtsp::h264::H264Decoder`, planes copied out of the decoder's strides), and JPEG-encoding
//! that frame once under the datagram cap (`encoder::Encoder`), then both in a row.
//!
//! `cargo bench -p surv-server --bench h264_to_jpeg`. The stream is what a camera's 640x480
//! substream sends: one second of ffmpeg's `testsrc2` (moving, detailed) coded by x264 in Main
//! profile (CABAC, as cameras use) at 2 Mbit/s, one key frame per second; the figure per frame is
//! the mean over the group, key frame included. Without ffmpeg, openh264 codes surv's own test
//! pattern instead (Constrained Baseline, much easier to decode: the figures say which).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use openh264::encoder::{BitRate, Encoder as H264Encoder, EncoderConfig as H264Config, FrameRate};
use openh264::encoder::{IntraFramePeriod, RateControlMode};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use surv_server::encoder::{Encoder, EncoderConfig};
use surv_server::sources::rtsp::h264::{Decoded, H264Decoder};
use surv_server::sources::{FrameReader, PixelFormat, RawFrame, TestPattern};

const W: u32 = 640;
const H: u32 = 480;
const FPS: u32 = 30;

/// One group of pictures from ffmpeg/x264, split into access units at the delimiters x264 is
/// asked to write; each with whether it is a key frame (holds an IDR slice).
fn x264_stream() -> Option<Vec<(Vec<u8>, bool)>> {
    let size = format!("testsrc2=size={W}x{H}:rate={FPS}");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", &size, "-frames:v", "30"])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "main",
            "-preset",
            "veryfast",
        ])
        .args([
            "-tune",
            "zerolatency",
            "-b:v",
            "2M",
            "-maxrate",
            "2M",
            "-bufsize",
            "1M",
        ])
        .args(["-g", "30", "-x264-params", "aud=1", "-f", "h264", "-"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    const AUD: [u8; 5] = [0, 0, 0, 1, 9];
    let data = out.stdout;
    let starts: Vec<usize> = (0..data.len().saturating_sub(4))
        .filter(|&i| data[i..i + 5] == AUD)
        .chain([data.len()])
        .collect();
    let units: Vec<(Vec<u8>, bool)> = starts
        .windows(2)
        .map(|w| {
            let au = data[w[0]..w[1]].to_vec();
            let key = au
                .windows(4)
                .any(|n| n[..3] == [0, 0, 1] && n[3] & 0x1F == 5);
            (au, key)
        })
        .collect();
    (units.len() == FPS as usize && units[0].1).then_some(units)
}

/// One group of pictures of surv's test pattern from openh264: a key frame and 29 P frames.
fn openh264_stream() -> Vec<(Vec<u8>, bool)> {
    let mut pattern = TestPattern::new(W, H, FPS).expect("test pattern");
    let config = H264Config::new()
        .skip_frames(false)
        .rate_control_mode(RateControlMode::Bufferbased)
        .bitrate(BitRate::from_bps(2_000_000))
        .max_frame_rate(FrameRate::from_hz(FPS as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(FPS));
    let mut enc =
        H264Encoder::with_api_config(OpenH264API::from_source(), config).expect("encoder");
    let mut raw = RawFrame::new();
    let (w, h) = (W as usize, H as usize);
    (0..FPS)
        .map(|i| {
            pattern.next_frame(&mut raw).expect("a frame");
            assert_eq!(raw.format, PixelFormat::I420);
            let (y, uv) = raw.data.split_at(w * h);
            let (u, v) = uv.split_at(w * h / 4);
            let src = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
            (enc.encode(&src).expect("encodes").to_vec(), i == 0)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (stream, what) = match x264_stream() {
        Some(s) => (s, "ffmpeg testsrc2, x264 Main profile"),
        None => (
            openh264_stream(),
            "surv test pattern, openh264 Constrained Baseline (no ffmpeg)",
        ),
    };
    let bytes: usize = stream.iter().map(|(au, _)| au.len()).sum();
    println!(
        "stream: {what}: {} access units of {W}x{H}, {} bytes per frame on average",
        stream.len(),
        bytes / stream.len()
    );
    let mut g = c.benchmark_group("h264_to_jpeg_640x480");

    let mut decoder = H264Decoder::new().expect("decoder");
    let mut picture = RawFrame::new();
    let mut next = 0;
    let mut decode_one = |decoder: &mut H264Decoder, picture: &mut RawFrame| {
        let (au, key) = &stream[next];
        next = (next + 1) % stream.len();
        let got = decoder.decode(au, *key, Some(picture)).expect("decodes");
        assert_eq!(got, Decoded::Picture);
    };
    g.bench_function("decode", |b| {
        b.iter(|| decode_one(&mut decoder, &mut picture))
    });

    let mut encoder = Encoder::new(EncoderConfig {
        max_datagram_bytes: surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
        quality: 80,
    })
    .expect("encoder");
    // Let the quality settle, as it does after a stream's first frames.
    for seq in 0..30 {
        let _ = encoder.encode(&picture, seq);
    }
    let mut seq = 30;
    g.bench_function("encode", |b| {
        b.iter(|| {
            seq += 1;
            black_box(encoder.encode(&picture, seq).expect("fits"));
        })
    });

    g.bench_function("decode_and_encode", |b| {
        b.iter(|| {
            decode_one(&mut decoder, &mut picture);
            seq += 1;
            black_box(encoder.encode(&picture, seq).expect("fits"));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
