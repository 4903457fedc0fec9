//! The file source's decisions: what a path is, which files of a folder play and in which
//! order, what a file read yields, and the reason a user reads when the source cannot play.
//! (Playback end to end, with viewers, is in tests/tests/source_file.rs.)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};
use tokio_util::sync::CancellationToken;

use super::super::folder::list_jpegs;
use super::super::video::parse_probe;
use super::super::{load_jpeg, sniff, FileSource, Kind, Tools};
use crate::capture::{Capture, CaptureConfig, CaptureError, StreamShape};
use crate::journal::Journal;
use crate::sources::{SourceError, SourceOptions};

fn jpeg(seed: u64) -> Vec<u8> {
    test_jpeg(64, 48, Picture::Gradient(seed), 85, Subsamp::Sub2x2)
}

#[test]
fn files_are_told_apart_by_their_first_bytes() {
    assert_eq!(sniff(&jpeg(1)), Kind::Jpeg);
    assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Kind::Image);
    assert_eq!(sniff(b"BM6\0\0\0"), Kind::Image);
    assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Kind::Image);
    assert_eq!(sniff(b"RIFF\x10\0\0\0AVI LIST"), Kind::Video);
    assert_eq!(sniff(b"\0\0\0\x20ftypisom"), Kind::Video);
    assert_eq!(sniff(b"GIF89a"), Kind::Video);
    assert_eq!(sniff(b""), Kind::Video);
}

#[test]
fn ffprobe_output_gives_size_and_rate() {
    let text = "width=320\nheight=240\nr_frame_rate=30000/1001\navg_frame_rate=30000/1001\n";
    let (shape, exact) = parse_probe(text).unwrap();
    assert_eq!(
        shape,
        StreamShape {
            width: 320,
            height: 240,
            fps: 30
        }
    );
    assert!((exact.unwrap() - 29.97).abs() < 0.01);
    // An unknown average falls back to the base rate; an unknown rate is 0 (the sink measures).
    let (shape, _) =
        parse_probe("width=8\nheight=6\navg_frame_rate=0/0\nr_frame_rate=15/1").unwrap();
    assert_eq!(shape.fps, 15);
    let (shape, exact) =
        parse_probe("width=8\nheight=6\navg_frame_rate=0/0\nr_frame_rate=0/0").unwrap();
    assert_eq!((shape.fps, exact), (0, None));
    // A time-lapse slower than a frame a second: rate 0, but the exact rate is kept.
    let (shape, exact) = parse_probe("width=8\nheight=6\navg_frame_rate=1/60").unwrap();
    assert_eq!(shape.fps, 0);
    assert!(exact.is_some());
    assert_eq!(parse_probe("avg_frame_rate=25/1"), None, "no video stream");
    assert_eq!(parse_probe("width=0\nheight=240"), None);
}

#[test]
fn a_folder_lists_its_jpegs_by_name_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["b.jpg", "a.JPEG", "c.Jpg", "notes.txt", "d.png", "jpg"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    std::fs::create_dir(dir.path().join("e.jpg")).unwrap();
    let names: Vec<_> = list_jpegs(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.JPEG", "b.jpg", "c.Jpg"]);
    assert!(list_jpegs(&dir.path().join("missing")).is_err());
}

#[test]
fn a_jpeg_file_is_read_whole_checked_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good = jpeg(1);
    let loaded = load_jpeg(&write("good.jpg", &good), 1 << 20).unwrap();
    assert_eq!(
        (&loaded.jpeg[..], loaded.width, loaded.height),
        (&good[..], 64, 48)
    );
    assert!(!loaded.more);
    // Trailing bytes some cameras append after EOI are not part of the picture.
    let mut trailing = good.clone();
    trailing.extend(b"\0\0garbage");
    assert_eq!(
        load_jpeg(&write("t.jpg", &trailing), 1 << 20).unwrap().jpeg,
        good
    );
    // Several JPEGs in a row: an MJPEG stream, to be played as a video.
    let two = [jpeg(1), jpeg(2)].concat();
    assert!(load_jpeg(&write("two.mjpeg", &two), 1 << 20).unwrap().more);

    let err = |p: &Path, cap: usize| load_jpeg(p, cap).unwrap_err();
    assert!(err(&write("cut.jpg", &good[..good.len() - 5]), 1 << 20).contains("truncated"));
    assert!(err(&write("text.jpg", b"hello"), 1 << 20).contains("not a JPEG"));
    assert!(err(&write("big.jpg", &good), good.len() - 1).contains("larger than"));
    assert!(err(dir.path(), 1 << 20).contains("not a regular file"));
    // Junk with no JPEG start is not read past the cap.
    assert!(err(&write("junk.jpg", &[0u8; 5000]), 1000).contains("no JPEG in its first 1000"));
    assert!(!err(&dir.path().join("missing.jpg"), 1 << 20).is_empty());
    // Whole JPEG structure, but not a picture turbojpeg reads.
    assert!(err(&write("empty.jpg", &[0xFF, 0xD8, 0xFF, 0xD9]), 1 << 20).contains("unreadable"));
}

/// Runs `source` in a capture path and returns why it failed before its first frame.
async fn first_failure(source: FileSource) -> String {
    let log_dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let capture = Capture::start(
        Box::new(source),
        CaptureConfig::default(),
        journal,
        &shutdown,
    )
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), capture.first_outcome())
        .await
        .expect("the source neither failed nor delivered");
    shutdown.cancel();
    match outcome {
        Err(CaptureError::Source(reason)) => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn source(path: &Path) -> FileSource {
    FileSource::new(path.into(), &SourceOptions::default()).unwrap()
}

#[tokio::test]
async fn sources_that_cannot_play_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = first_failure(source(&dir.path().join("nope.mp4"))).await;
    assert!(
        missing.contains("nope.mp4") && missing.contains("no such file"),
        "{missing}"
    );

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video\n").unwrap();
    let not_video = first_failure(source(&text)).await;
    assert!(
        not_video.contains("Invalid data"),
        "ffmpeg's own words: {not_video}"
    );

    let no_ffmpeg = source(&text).with_tools(Tools {
        ffmpeg: "/nonexistent/ffmpeg".into(),
        ffprobe: "/nonexistent/ffprobe".into(),
    });
    let no_ffmpeg = first_failure(no_ffmpeg).await;
    assert!(
        no_ffmpeg.contains("not found: install ffmpeg"),
        "{no_ffmpeg}"
    );

    let empty = tempfile::tempdir().unwrap();
    let none = first_failure(source(empty.path())).await;
    assert!(none.contains("no .jpg or .jpeg files"), "{none}");

    std::fs::write(empty.path().join("bad.jpg"), "not a picture").unwrap();
    let bad = first_failure(source(empty.path())).await;
    assert!(bad.contains("none of the 1 .jpg/.jpeg files"), "{bad}");

    let png = dir.path().join("fake.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let broken = first_failure(source(&png)).await;
    assert!(
        broken.contains("converting it to JPEG with ffmpeg"),
        "{broken}"
    );
}

#[test]
fn a_rate_of_zero_is_refused_before_anything_runs() {
    let opts = SourceOptions {
        fps: 0,
        ..SourceOptions::default()
    };
    assert!(matches!(
        FileSource::new("x.jpg".into(), &opts),
        Err(SourceError::Fps { fps: 0 })
    ));
}
