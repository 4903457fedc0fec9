//! The recorder when things go wrong: a full queue, a directory that cannot be used, a disk
//! that fills up (AVI and MP4). The stream goes on, one error is logged per run of failures, and
//! recording comes back by itself.

use std::fs;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fakes::{FlakyDisk, GatedDisk, LogBuf};
use super::{
    check_segment, expected_name, expected_windows, files_ending, frame, jpeg, probe_mp4, push_all,
    push_all_within, FRAME_INTERVAL_US,
};
use crate::recorder::avi_track::WRITE_BUFFER_BYTES;
use crate::recorder::handle::spawn_with;
use crate::recorder::{spawn, Format, RecFrame, RecorderConfig, QUEUE_FRAMES};

/// An unusable directory does not stop the viewer: one error, frames dropped, and recording
/// starts by itself once the directory can be created.
#[test]
fn unusable_dir_is_reported_once_and_recording_starts_when_fixed() {
    keep_every_callsite_enabled();
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, b"x").unwrap();
    let dir = blocker.join("rec");
    let logs = LogBuf::default();
    let subscriber = logs.subscriber();
    let jpegs: Vec<Bytes> = (0..75).map(|s| jpeg(160, 90, s, false)).collect();
    let (report, refused) = tracing::subscriber::with_default(subscriber, || {
        let cfg = RecorderConfig {
            dir: dir.clone(),
            segment: Duration::from_secs(1),
            ..RecorderConfig::default()
        };
        let rec = spawn(cfg, 30).unwrap();
        let mut refused = push_all(&rec, (0..30).map(|s| frame(jpegs[s as usize].clone(), s)));
        let until = Instant::now() + Duration::from_secs(10);
        while !logs.text().contains("creating a segment") && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        fs::remove_file(&blocker).unwrap();
        refused += push_all(&rec, (30..75).map(|s| frame(jpegs[s as usize].clone(), s)));
        (rec.finish(), refused)
    });
    let logs = logs.text();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
    assert!(errors[0].contains(&*dir.to_string_lossy()), "{}", errors[0]);
    assert_eq!(
        report.write_errors, 2,
        "the start-up probe and the first segment"
    );
    // The failed first window takes its frames with it (seq 30 is still inside it).
    let windows = expected_windows(0..75, 1_000_000);
    assert_eq!(windows.len(), 3);
    let lost = windows[0].end;
    assert_eq!(report.frames_written, 75 - lost, "{report:?}");
    assert_eq!(report.frames_dropped, lost + refused);
    assert_eq!(report.segments.len(), 2);
    for (seg, w) in report.segments.iter().zip(&windows[1..]) {
        check_segment(seg, &jpegs[w.start as usize..w.end as usize], (160, 90));
    }
    assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
}

#[test]
fn full_queue_refuses_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let cfg = RecorderConfig {
        dir: tmp.path().to_path_buf(),
        segment: Duration::from_secs(60),
        ..RecorderConfig::default()
    };
    let disk = GatedDisk {
        entered: entered_tx,
        release: release_rx,
    };
    let rec = spawn_with(cfg, 30, disk).unwrap();
    let jpeg = jpeg(160, 90, 0, false);
    assert!(rec.push(frame(jpeg.clone(), 0)));
    // The thread now holds frame 0 and waits in create_new: the queue is empty.
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("recorder thread never started a segment");
    for s in 1..=QUEUE_FRAMES as u64 {
        assert!(rec.push(frame(jpeg.clone(), s)), "frame {s} refused");
    }
    let started = Instant::now();
    assert!(!rec.push(frame(jpeg.clone(), 65)));
    assert!(!rec.push(frame(jpeg.clone(), 66)));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "push blocked"
    );
    drop(release_tx);
    let report = rec.finish();
    assert_eq!(report.frames_written, 65);
    assert_eq!(report.frames_dropped, 2);
    assert_eq!(report.segments.len(), 1);
    check_segment(&report.segments[0], &vec![jpeg; 65], (160, 90));
}

/// Tests in this binary run in parallel, most without a subscriber: tracing would cache a
/// callsite they reach first as "never enabled", and the log-capturing tests below would miss
/// its lines (CI saw "segment closed" missing). A global subscriber that enables every level
/// (and writes nowhere) keeps every callsite live for the scoped ones.
fn keep_every_callsite_enabled() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sink = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _ = tracing::subscriber::set_global_default(sink);
    });
}

#[test]
fn disk_full_abandons_segments_and_recovers() {
    keep_every_callsite_enabled();
    let tmp = tempfile::tempdir().unwrap();
    let logs = LogBuf::default();
    let subscriber = {
        let logs = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish()
    };
    // Files 2 and 3 hit a full disk; 1, 4 and 5 are fine.
    let disk = FlakyDisk {
        created: 0,
        full: 2..4,
        room_bytes: 10_000,
    };
    let seqs = 0..127;
    let jpegs: Vec<Bytes> = seqs.clone().map(|s| jpeg(320, 180, s, true)).collect();
    let frames: Vec<RecFrame> = seqs
        .clone()
        .map(|s| frame(jpegs[s as usize].clone(), s))
        .collect();
    // Big enough that the write buffer spills inside a segment: the failure hits
    // write_frame, not just the close.
    assert!(frames[0].jpeg.len() * 10 > WRITE_BUFFER_BYTES);

    let (report, refused) = tracing::subscriber::with_default(subscriber, || {
        let cfg = RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(1),
            ..RecorderConfig::default()
        };
        let rec = spawn_with(cfg, 30, disk).unwrap();
        let refused = push_all(&rec, frames);
        (rec.finish(), refused)
    });
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();

    let windows = expected_windows(seqs, 1_000_000);
    assert_eq!(windows.len(), 5);
    let lost: u64 = windows[1..3].iter().map(|w| w.end - w.start).sum();
    assert_eq!(report.write_errors, 2, "{logs}");
    assert_eq!(report.frames_written, 127 - lost);
    assert_eq!(report.frames_dropped, lost + refused);
    assert_eq!(report.segments.len(), 3);
    for (path, w) in report
        .segments
        .iter()
        .zip([&windows[0], &windows[3], &windows[4]])
    {
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            expected_name(w.start, "")
        );
        check_segment(path, &jpegs[w.start as usize..w.end as usize], (320, 180));
    }
    let parts = files_ending(tmp.path(), ".part");
    let expected_parts: Vec<PathBuf> = windows[1..3]
        .iter()
        .map(|w| tmp.path().join(expected_name(w.start, "") + ".part"))
        .collect();
    assert_eq!(parts, expected_parts, "failed segments keep their .part");

    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
    assert!(
        errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("while writing"), "{}", errors[0]);
    assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
    assert_eq!(logs.matches("segment closed").count(), 3, "{logs}");
}

/// MP4 on a disk that fills up: the segments that hit it are abandoned (their `.part` left),
/// one error is logged, the others are whole, and recording recovers by itself; frames missing
/// in the stream keep their time.
#[test]
fn mp4_disk_full_abandons_segments_and_recovers() {
    keep_every_callsite_enabled();
    let tmp = tempfile::tempdir().unwrap();
    let logs = LogBuf::default();
    let subscriber = logs.subscriber();
    // Files 2 and 3 hit a full disk after their header; 1, 4 and 5 are fine.
    let disk = FlakyDisk {
        created: 0,
        full: 2..4,
        room_bytes: 2_000,
    };
    // Every fourth frame lost on the way.
    let seqs: Vec<u64> = (0..150).filter(|s| s % 4 != 3).collect();
    let jpegs: Vec<Bytes> = (0..150).map(|s| jpeg(320, 180, s, false)).collect();
    let frames: Vec<RecFrame> = seqs
        .iter()
        .map(|&s| frame(jpegs[s as usize].clone(), s))
        .collect();
    let (report, refused) = tracing::subscriber::with_default(subscriber, || {
        let cfg = RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(1),
            format: Format::Mp4,
            ..RecorderConfig::default()
        };
        let rec = spawn_with(cfg, 30, disk).unwrap();
        let refused = push_all(&rec, frames);
        (rec.finish(), refused)
    });
    let logs = logs.text();

    // Windows by capture time, over the frames that arrived.
    let mut windows: Vec<Vec<u64>> = Vec::new();
    for &s in &seqs {
        match windows.last_mut() {
            Some(w) if (s - w[0]) * FRAME_INTERVAL_US < 1_000_000 => w.push(s),
            _ => windows.push(vec![s]),
        }
    }
    assert_eq!(windows.len(), 5);
    let lost = (windows[1].len() + windows[2].len()) as u64;
    assert_eq!(report.write_errors, 2, "{logs}");
    assert_eq!(report.frames_written, seqs.len() as u64 - lost);
    assert_eq!(report.frames_dropped, lost + refused);
    assert_eq!(report.segments.len(), 3);
    for (path, w) in report
        .segments
        .iter()
        .zip([&windows[0], &windows[3], &windows[4]])
    {
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(name, expected_name(w[0], "").replace(".avi", ".mp4"));
        let (codec, n, secs) = probe_mp4(path);
        assert_eq!(codec, "h264");
        assert_eq!(n, w.len() as u64, "{name}");
        // Capture span plus one frame: real speed, the lost frames' time included.
        let wall = ((w[w.len() - 1] - w[0] + 1) * FRAME_INTERVAL_US) as f64 / 1e6;
        assert!(
            (secs / wall - 1.0).abs() <= 0.02,
            "{name}: {secs} s, wall {wall} s"
        );
    }
    assert_eq!(files_ending(tmp.path(), ".part").len(), 2);
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
    assert!(
        errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
}

/// The harness's own bound: a recorder that takes no frame (here its thread waits forever in
/// `create_new`, with the queue full behind it) fails the test instead of hanging it.
#[test]
fn push_all_gives_up_on_a_stuck_recorder() {
    let tmp = tempfile::tempdir().unwrap();
    let (entered_tx, _entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let disk = GatedDisk {
        entered: entered_tx,
        release: release_rx,
    };
    let cfg = RecorderConfig {
        dir: tmp.path().to_path_buf(),
        segment: Duration::from_secs(60),
        ..RecorderConfig::default()
    };
    let rec = spawn_with(cfg, 30, disk).unwrap();
    let jpeg = jpeg(160, 90, 0, false);
    let frames: Vec<RecFrame> = (0..QUEUE_FRAMES as u64 + 2)
        .map(|s| frame(jpeg.clone(), s))
        .collect();
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        push_all_within(&rec, frames, Duration::from_millis(300))
    }));
    let message = outcome.expect_err("push_all returned though the recorder took nothing");
    let message = message.downcast_ref::<String>().map_or("", String::as_str);
    assert!(message.contains("took no frame"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(release_tx);
    let report = rec.finish();
    assert_eq!(report.frames_written, QUEUE_FRAMES as u64 + 1);
}
