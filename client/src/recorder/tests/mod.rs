//! Tests of the recorder as a whole: frames in, segment files out, each file checked by our
//! RIFF parser, by ffmpeg decoding every frame and by ffprobe. This file holds the harness; the
//! tests are in `segments` (how frames are cut into files) and `failures` (full queue, unusable
//! directory, full disk), with the failing disks in `fakes`.

mod failures;
mod fakes;
mod segments;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Local};
use surv_proto::FrameTag;
use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};
use surv_tests::media;

use super::{RecFrame, RecorderHandle};

/// A whole second, so the file names of segments a second apart differ.
const T0_US: u64 = 1_700_000_000_000_000;
const FRAME_INTERVAL_US: u64 = 33_333;

/// How long [`push_all`] waits for the recorder to take a frame before it fails the test...
const PUSH_WAIT: Duration = Duration::from_secs(20);
/// ...and how many refused pushes of one frame it makes at most, whatever the clock says.
const MAX_PUSH_TRIES: u32 = 20_000;

/// A tagged JPEG as the server sends it: the picture changes with `seq`; `noisy` makes it
/// compress badly, for big frames.
fn jpeg(width: usize, height: usize, seq: u64, noisy: bool) -> Bytes {
    let picture = if noisy {
        Picture::Noise(seq)
    } else {
        Picture::Gradient(seq)
    };
    let plain = test_jpeg(width, height, picture, 85, Subsamp::Sub2x2);
    let mut tagged = Vec::new();
    FrameTag {
        seq,
        capture_unix_us: T0_US + seq * FRAME_INTERVAL_US,
        motion: false,
        objects: false,
    }
    .encode_into(&plain, &mut tagged)
    .unwrap();
    Bytes::from(tagged)
}

fn frame(jpeg: Bytes, seq: u64) -> RecFrame {
    RecFrame {
        jpeg,
        capture_unix_us: T0_US + seq * FRAME_INTERVAL_US,
        event: false,
    }
}

/// Pushes every frame, waiting while the queue is full (timing comes from the frames, so
/// waiting changes nothing else). Returns how many pushes were refused. A recorder that takes
/// no frame for [`PUSH_WAIT`] (stuck, or its thread gone) fails the test rather than hanging it.
fn push_all(rec: &RecorderHandle, frames: impl IntoIterator<Item = RecFrame>) -> u64 {
    push_all_within(rec, frames, PUSH_WAIT)
}

/// [`push_all`], waiting at most `wait` for each frame to be taken.
fn push_all_within(
    rec: &RecorderHandle,
    frames: impl IntoIterator<Item = RecFrame>,
    wait: Duration,
) -> u64 {
    let mut refused = 0;
    for f in frames {
        let started = Instant::now();
        let mut tries = 0;
        while !rec.push(f.clone()) {
            refused += 1;
            tries += 1;
            assert!(
                tries < MAX_PUSH_TRIES && started.elapsed() < wait,
                "the recorder took no frame for {:?} ({tries} pushes refused): is it stuck?",
                started.elapsed()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
    refused
}

/// How the recorder should split frames `seqs` into 1-frame-interval-spaced segments of
/// `segment_us`: the ranges of sequence numbers in each.
fn expected_windows(seqs: Range<u64>, segment_us: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(w) if (s - w.start) * FRAME_INTERVAL_US < segment_us => w.end = s + 1,
            _ => out.push(s..s + 1),
        }
    }
    out
}

fn expected_name(seq: u64, suffix: &str) -> String {
    let utc = DateTime::from_timestamp_micros((T0_US + seq * FRAME_INTERVAL_US) as i64);
    let local = utc.unwrap().with_timezone(&Local);
    format!("surv-{}{suffix}.avi", local.format("%Y%m%d-%H%M%S"))
}
/// Checks a closed segment four ways: our RIFF parser (exact sizes and index), ffmpeg decoding
/// every frame and failing on the first complaint, ffmpeg reading back exactly `jpegs` byte
/// for byte, and what ffprobe reports.
fn check_segment(path: &Path, jpegs: &[Bytes], (width, height): (u16, u16)) {
    let frames = jpegs.len() as u64;
    // Capture-time span plus one frame interval: real speed.
    let expected_us = frames * FRAME_INTERVAL_US;
    let file = fs::read(path).unwrap();
    let (w, h) = (u32::from(width), u32::from(height));
    crate::avi::tests::check_file(&file, jpegs, FRAME_INTERVAL_US as u32, w, h);

    media::ffmpeg_check(path).unwrap();
    assert!(
        media::mjpeg_stream(path).unwrap() == jpegs.concat(),
        "{}: the JPEGs read back differ from those recorded",
        path.display()
    );
    let p = media::probe(path).unwrap();
    assert_eq!(p.codec, "mjpeg");
    assert_eq!((p.width, p.height), (w, h));
    assert_eq!(p.frames, frames, "{}", path.display());
    let expected_s = expected_us as f64 / 1e6;
    assert!(
        (p.duration_s - expected_s).abs() <= expected_s * 0.02,
        "{}: duration {} s, capture span {expected_s} s",
        path.display(),
        p.duration_s
    );
}

/// What ffprobe says of an MP4 segment: (codec, frames, duration s), after ffmpeg decoded
/// every frame with its strictest checks.
fn probe_mp4(path: &Path) -> (String, u64, f64) {
    media::ffmpeg_check(path).unwrap();
    media::ffprobe(path).unwrap()
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}
