//! Tests of the recorder as a whole: frames in, segment files out, each file checked by our
//! RIFF parser, by ffmpeg decoding every frame and by ffprobe. This file holds the harness; the
//! tests are in `segments` (how frames are cut into files) and `failures` (full queue, unusable
//! directory, full disk), with the failing disks in `fakes`.

mod failures;
mod fakes;
mod segments;

use std::ffi::OsStr;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Local};
use surv_proto::FrameTag;
use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

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
    }
    .encode_into(&plain, &mut tagged)
    .unwrap();
    Bytes::from(tagged)
}

fn frame(jpeg: Bytes, seq: u64) -> RecFrame {
    RecFrame {
        jpeg,
        capture_unix_us: T0_US + seq * FRAME_INTERVAL_US,
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

fn run_tool(name: &str, args: &[&OsStr]) -> std::process::Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {name} ({e}): install ffmpeg (apt-get install ffmpeg) to run the recorder tests")
    })
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

    let out = run_tool(
        "ffmpeg",
        &["-v", "error", "-err_detect", "explode", "-xerror", "-i"]
            .map(OsStr::new)
            .into_iter()
            .chain([path.as_os_str()])
            .chain(["-f", "null", "-"].map(OsStr::new))
            .collect::<Vec<_>>(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ffmpeg failed on {}: {stderr}",
        path.display()
    );
    assert!(
        stderr.is_empty(),
        "ffmpeg complained about {}: {stderr}",
        path.display()
    );

    let copy_args = ["-v", "error", "-i"]
        .map(OsStr::new)
        .into_iter()
        .chain([path.as_os_str()])
        .chain(["-map", "0:v", "-c", "copy", "-f", "mjpeg", "-"].map(OsStr::new))
        .collect::<Vec<_>>();
    let out = run_tool("ffmpeg", &copy_args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == jpegs.concat(),
        "{}: the JPEGs read back differ from those recorded",
        path.display()
    );

    let mut args: Vec<&OsStr> = [
        "-v",
        "error",
        "-count_frames",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=nb_read_frames,codec_name,width,height",
        "-show_entries",
        "format=duration",
        "-of",
        "default=nw=1",
    ]
    .map(OsStr::new)
    .to_vec();
    args.push(path.as_os_str());
    let out = run_tool("ffprobe", &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("ffprobe gave no {key}: {stdout}"))
            .to_string()
    };
    assert_eq!(field("codec_name"), "mjpeg");
    assert_eq!(field("width"), width.to_string());
    assert_eq!(field("height"), height.to_string());
    assert_eq!(
        field("nb_read_frames"),
        frames.to_string(),
        "{}",
        path.display()
    );

    let expected_s = expected_us as f64 / 1e6;
    let duration_s: f64 = field("duration").parse().unwrap();
    assert!(
        (duration_s - expected_s).abs() <= expected_s * 0.02,
        "{}: duration {duration_s} s, capture span {expected_s} s",
        path.display()
    );
}

/// What ffprobe says of an MP4 segment: (codec, frames, duration s), after ffmpeg decoded
/// every frame with its strictest checks.
fn probe_mp4(path: &Path) -> (String, u64, f64) {
    let mut args: Vec<&OsStr> = ["-v", "error", "-err_detect", "explode", "-xerror", "-i"]
        .map(OsStr::new)
        .to_vec();
    args.push(path.as_os_str());
    args.extend(["-f", "null", "-"].map(OsStr::new));
    let out = run_tool("ffmpeg", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{}: {stderr}",
        path.display()
    );
    let mut args: Vec<&OsStr> = ["-v", "error", "-count_frames", "-select_streams", "v:0"]
        .map(OsStr::new)
        .to_vec();
    args.extend(
        [
            "-show_entries",
            "stream=codec_name,nb_read_frames:format=duration",
            "-of",
            "default=nw=1",
        ]
        .map(OsStr::new),
    );
    args.push(path.as_os_str());
    let out = run_tool("ffprobe", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k}: {text}"))
            .to_string()
    };
    (
        field("codec_name"),
        field("nb_read_frames").parse().unwrap(),
        field("duration").parse().unwrap(),
    )
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
