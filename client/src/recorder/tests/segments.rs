//! How the recorder cuts frames into files: by capture time, on a frame size change, around a
//! name that is taken, and with lost frames keeping their time.

use std::fs;
use std::time::Duration;

use bytes::Bytes;

use super::{
    check_segment, expected_name, expected_windows, files_ending, frame, jpeg, probe_mp4, push_all,
    FRAME_INTERVAL_US,
};
use crate::recorder::{spawn, RecFrame, RecorderConfig, RecorderError};

#[test]
fn rolling_segments_play_back_at_capture_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not/yet/there");
    let rec = spawn(
        RecorderConfig {
            dir: dir.clone(),
            segment: Duration::from_secs(1),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    // 3.2 s of frames: three full segments and a short one closed by finish().
    let seqs = 0..97;
    let jpegs: Vec<Bytes> = seqs.clone().map(|s| jpeg(160, 90, s, false)).collect();
    let refused = push_all(
        &rec,
        seqs.clone().map(|s| frame(jpegs[s as usize].clone(), s)),
    );
    let report = rec.finish();

    let windows = expected_windows(seqs, 1_000_000);
    assert_eq!(windows.len(), 4);
    assert_eq!(report.frames_written, 97);
    assert_eq!(report.frames_dropped, refused);
    assert_eq!(report.write_errors, 0);
    assert_eq!(report.segments.len(), windows.len(), "{report:?}");
    for (path, w) in report.segments.iter().zip(&windows) {
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(name, expected_name(w.start, ""));
        let range = w.start as usize..w.end as usize;
        check_segment(path, &jpegs[range], (160, 90));
    }
    assert_eq!(files_ending(&dir, ".avi"), report.segments);
    assert!(files_ending(&dir, ".part").is_empty());
}

#[test]
fn frame_size_change_starts_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    let big: Vec<Bytes> = (0..10).map(|s| jpeg(160, 90, s, false)).collect();
    let small: Vec<Bytes> = (11..21).map(|s| jpeg(80, 45, s, false)).collect();
    let mut frames: Vec<RecFrame> = (0..10).map(|s| frame(big[s].clone(), s as u64)).collect();
    frames.push(frame(Bytes::from_static(b"\xFF\xD8 not a jpeg"), 10));
    frames.extend((11..21).map(|s| frame(small[s - 11].clone(), s as u64)));
    let refused = push_all(&rec, frames);
    let report = rec.finish();

    assert_eq!(report.frames_written, 20);
    assert_eq!(report.frames_dropped, refused + 1, "the unreadable frame");
    assert_eq!(report.write_errors, 0);
    let names: Vec<_> = report
        .segments
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Both start in the same second: the second gets a suffix.
    assert_eq!(names, [expected_name(0, ""), expected_name(11, "-1")]);
    check_segment(&report.segments[0], &big, (160, 90));
    check_segment(&report.segments[1], &small, (80, 45));
}

#[test]
fn existing_file_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = tmp.path().join(expected_name(0, ""));
    fs::write(&taken, b"someone else's").unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    let jpeg = jpeg(160, 90, 0, false);
    assert!(rec.push(frame(jpeg.clone(), 0)));
    let report = rec.finish();
    assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
    assert_eq!(report.segments, [tmp.path().join(expected_name(0, "-1"))]);
    check_segment(&report.segments[0], &[jpeg], (160, 90));
}

#[test]
fn zero_segment_is_an_error_from_spawn() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        dir: tmp.path().to_path_buf(),
        segment: Duration::ZERO,
        ..RecorderConfig::default()
    };
    assert!(matches!(spawn(cfg, 30), Err(RecorderError::ZeroSegment)));
}

/// AVI with frames missing: the gaps are empty slots, so the file plays at capture speed.
#[test]
fn avi_gaps_keep_capture_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    // Frames 0..60 with every third lost and a hole of 15.
    let seqs: Vec<u64> = (0..60)
        .filter(|s| s % 3 != 1 && !(20..35).contains(s))
        .collect();
    let jpegs: Vec<Bytes> = (0..60).map(|s| jpeg(160, 90, s, false)).collect();
    let refused = push_all(
        &rec,
        seqs.iter().map(|&s| frame(jpegs[s as usize].clone(), s)),
    );
    let report = rec.finish();
    assert_eq!(report.frames_written, seqs.len() as u64);
    assert_eq!(report.frames_dropped, refused);
    // One slot per frame interval from the first frame to the last: empty where lost.
    let slots: Vec<Bytes> = (0..60)
        .map(|s| {
            if seqs.contains(&s) {
                jpegs[s as usize].clone()
            } else {
                Bytes::new()
            }
        })
        .collect();
    let file = fs::read(&report.segments[0]).unwrap();
    crate::avi::tests::check_file(&file, &slots, FRAME_INTERVAL_US as u32, 160, 90);
}

/// A hostile (or broken) server alternating frame sizes and capture times cannot make a file
/// per frame: the first change cuts at once, later ones at most once a second; the frames in
/// between are dropped and counted.
#[test]
fn alternating_sizes_and_times_do_not_make_a_file_per_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    let mut frames = Vec::new();
    for s in 0..40u64 {
        let (w, h) = if s % 2 == 0 { (160, 90) } else { (80, 45) };
        frames.push(frame(jpeg(w, h, s, false), s));
    }
    // Capture time jumping back and forth by an hour, at one size.
    for s in 40..80u64 {
        let mut f = frame(jpeg(160, 90, s, false), s);
        if s % 2 == 1 {
            f.capture_unix_us += 3_600_000_000;
        }
        frames.push(f);
    }
    let started = std::time::Instant::now();
    let refused = push_all(&rec, frames);
    let report = rec.finish();
    // One abnormal cut at once, then at most one a second: without the limit, 79 segments.
    let allowed = 2 + started.elapsed().as_secs() as usize;
    assert!(report.segments.len() <= allowed, "{:?}", report.segments);
    assert_eq!(report.frames_written + report.frames_dropped, 80 + refused);
    assert!(report.frames_dropped >= 55 + refused, "{report:?}");
}

/// A frame cut short in transit (no EOI) is not stored as if it were a picture.
#[test]
fn truncated_jpegs_are_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    let whole: Vec<Bytes> = (0..10).map(|s| jpeg(160, 90, s, false)).collect();
    let mut frames = Vec::new();
    for s in 0..10u64 {
        let cut = whole[s as usize].slice(..whole[s as usize].len() * 2 / 3);
        frames.push(frame(cut, s));
        frames.push(frame(whole[s as usize].clone(), s));
    }
    let refused = push_all(&rec, frames);
    let report = rec.finish();
    assert_eq!(report.frames_written, 10);
    assert_eq!(report.frames_dropped, 10 + refused);
    check_segment(&report.segments[0], &whole, (160, 90));
}

/// MP4 decode times rise strictly even when capture times repeat, go back, or come closer
/// than the timescale, also across fragment boundaries and checkpoints (ffmpeg's strict check
/// refused "non monotonically increasing dts" when a fragment started with a repeated time).
#[test]
fn mp4_decode_times_rise_whatever_the_capture_times() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = spawn(
        RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            format: crate::recorder::Format::Mp4,
            ..RecorderConfig::default()
        },
        30,
    )
    .unwrap();
    let mut frames = Vec::new();
    for s in 0..80u64 {
        let mut f = frame(jpeg(160, 90, s, false), s);
        // Every 7th repeats the previous capture time, every 11th goes 5 ms back, and around
        // each fragment boundary (1 s of capture time) two frames share a time.
        if s % 7 == 0 || s % 30 == 0 {
            f.capture_unix_us -= FRAME_INTERVAL_US;
        }
        if s % 11 == 0 {
            f.capture_unix_us -= 5_000;
        }
        frames.push(f);
    }
    let refused = push_all(&rec, frames);
    let report = rec.finish();
    assert_eq!(report.write_errors, 0);
    assert_eq!(report.frames_written + report.frames_dropped, 80 + refused);
    for path in &report.segments {
        let (codec, n, _) = probe_mp4(path);
        assert_eq!(codec, "h264");
        assert!(n > 0);
    }
}
