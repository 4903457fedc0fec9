//! `--source file:PATH` end to end: video files made by ffmpeg in the test (MP4/H.264 and
//! MJPEG AVI, played at their own rate, once or looped), still images (a JPEG passed through
//! byte for byte, a PNG converted once), a folder of JPEGs in name order with a bad file in it,
//! and a path that appears only after the server started. Real surv-client and seed-form
//! viewers watch. Camera frames are told apart from anything else the server may send (the
//! "no signal" frame) by their content.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_client::display::Latest;
use surv_proto::{Ack, Form, FrameTag, MAX_UDP_PAYLOAD_BYTES, TAG_BYTES};
use surv_server::sources::{SourceOptions, SourceSpec};
use surv_tests::client_config;
use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};
use surv_tests::{
    heavy, output_within, start_server_with, RawViewer, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

/// The test videos: 320x240 at 15 fps.
const W: u32 = 320;
const H: u32 = 240;
const VIDEO_FPS: u32 = 15;

/// Makes a test file with ffmpeg: `args` go between `-v error` and the output path.
fn ffmpeg_make(out: &Path, args: &[&str]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error"]).args(args).arg(out);
    let done = output_within(&mut cmd, Duration::from_secs(60)).expect("ffmpeg runs");
    assert!(
        done.status.success(),
        "ffmpeg could not make {}: {}",
        out.display(),
        String::from_utf8_lossy(&done.stderr)
    );
}

/// ffmpeg's test picture, 320x240 at 15 fps, for `seconds`, encoded with `codec`.
fn test_video(dir: &Path, name: &str, seconds: u32, codec: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let src = format!("testsrc=size={W}x{H}:rate={VIDEO_FPS}:duration={seconds}");
    let mut args = vec!["-f", "lavfi", "-i", &src];
    args.extend_from_slice(codec);
    ffmpeg_make(&path, &args);
    path
}

/// A server playing `path` as `file:PATH` with these options.
async fn serve_file(path: &Path, opts: SourceOptions) -> TestServer {
    let spec = SourceSpec::parse(&format!("file:{}", path.display())).unwrap();
    let source = spec.build(&opts).unwrap();
    start_server_with(ServerOpts::default(), source)
        .await
        .unwrap()
}

fn options(fps: u32, looped: bool) -> SourceOptions {
    SourceOptions {
        fps,
        looped,
        ..SourceOptions::default()
    }
}

/// One datagram a viewer received, and when.
struct Got {
    at: Instant,
    /// The JPEG as the source delivered it: surv's tag taken out again.
    jpeg: Vec<u8>,
    width: u32,
    height: u32,
}

/// Receives for `duration` as the viewer registered (acking `continue`, as seed 003 does, or
/// `continue <seq>` for SURV/1), keeping every frame once (a new viewer may be sent the newest
/// frame twice as it joins).
async fn collect(v: &mut RawViewer, duration: Duration) -> Vec<Got> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let until = Instant::now() + duration;
    while let Ok(res) = timeout_at(until, v.udp.recv_from(&mut buf)).await {
        let (n, from) = res.unwrap();
        let datagram = &buf[..n];
        let tag = FrameTag::decode(datagram).ok();
        let image = turbojpeg::decompress(datagram, turbojpeg::PixelFormat::RGB)
            .expect("every datagram decodes as a JPEG");
        let first_time = tag.is_none_or(|t| seen.insert(t.seq));
        let ack = match v.params {
            None => Ack::Continue(None),
            Some(_) => Ack::Continue(tag.map(|t| t.seq)),
        };
        v.udp.send_to(&v.ack_bytes(ack), from).await.unwrap();
        if !first_time {
            continue;
        }
        got.push(Got {
            at: Instant::now(),
            jpeg: untag(datagram),
            width: image.width as u32,
            height: image.height as u32,
        });
    }
    got
}

/// A datagram without surv's tag: the source's own JPEG when it was passed through.
fn untag(datagram: &[u8]) -> Vec<u8> {
    match FrameTag::decode(datagram) {
        Ok(_) => [&datagram[..2], &datagram[2 + TAG_BYTES..]].concat(),
        Err(_) => datagram.to_vec(),
    }
}

/// Frames per second among `frames` that match, from the first to the last one's arrival.
fn rate(frames: &[&Got]) -> f64 {
    match (frames.first(), frames.last()) {
        (Some(a), Some(b)) if frames.len() > 1 => {
            (frames.len() - 1) as f64 / (b.at - a.at).as_secs_f64()
        }
        _ => 0.0,
    }
}

/// An MP4 (H.264) plays at its own rate to surv-client and to a seed-form viewer, at its own
/// size, every frame passed through as ffmpeg wrote it; at its end the source is journalled as
/// ended, not run again, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mp4_plays_at_its_own_rate_to_both_viewers_then_ends() {
    let _serial = heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let clip = test_video(
        dir.path(),
        "clip.mp4",
        3,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    let srv = serve_file(&clip, options(30, false)).await;

    let latest = Arc::new(Latest::default());
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, 1.5),
        Some(latest.clone()),
        CancellationToken::new(),
    ));
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let got = collect(&mut seed, Duration::from_millis(1500)).await;
    let video: Vec<&Got> = got
        .iter()
        .filter(|g| (g.width, g.height) == (W, H))
        .collect();
    let fps = rate(&video);
    assert!(
        video.len() >= 15 && (12.0..=18.0).contains(&fps),
        "the seed viewer got {} frames of {W}x{H} at {fps:.1} fps",
        video.len()
    );

    let s = timeout(IO_TIMEOUT, client).await.unwrap().unwrap().unwrap();
    assert!(s.received >= 15, "{s}");
    assert_eq!((s.decoded, s.decode_failed), (s.received, 0), "{s}");
    let picture = latest.take().expect("surv-client decoded a frame");
    assert_eq!((picture.width, picture.height), (W as usize, H as usize));

    // 3 s of video: the end is journalled, once; the source is not run again.
    let ended = srv
        .wait_journal(|l| l.contains("SOURCE-LOST") && l.contains("ended"))
        .await
        .unwrap();
    assert!(ended.contains("clip.mp4"), "{ended}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = &srv.server.first_camera().capture.stats;
    assert_eq!(c.source_failures.load(Relaxed), 1, "{c:?}");
    let captured = c.captured.load(Relaxed);
    assert!(
        (43..=46).contains(&captured),
        "3 s at 15 fps, got {captured}"
    );
    assert_eq!(c.passed_through.load(Relaxed), captured, "{c:?}");
    assert_eq!(c.rejected.load(Relaxed), 0, "{c:?}");

    // The server still serves: a new viewer is accepted and told the video's size.
    let late = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let params = late.params.unwrap();
    assert_eq!((params.width, params.height), (W, H));
    srv.stop().await.unwrap();
}

/// An MJPEG AVI with --loop plays on past its end, still at its own rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_mjpeg_avi_plays_on_past_its_end() {
    let _serial = heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let clip = test_video(dir.path(), "clip.avi", 1, &["-c:v", "mjpeg", "-q:v", "3"]);
    let started = Instant::now();
    let srv = serve_file(&clip, options(30, true)).await;
    let mut v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let params = v.params.clone().unwrap();
    assert_eq!((params.width, params.height, params.fps), (W, H, VIDEO_FPS));
    let got = collect(&mut v, Duration::from_millis(3000)).await;
    let elapsed = started.elapsed().as_secs_f64();
    // A 1 s clip, watched for 3 s: frames on through the second, third and fourth plays.
    let video: Vec<&Got> = got
        .iter()
        .filter(|g| (g.width, g.height) == (W, H))
        .collect();
    let after_end: Vec<&Got> = video
        .iter()
        .copied()
        .filter(|g| (g.at - started).as_secs_f64() > 1.5)
        .collect();
    let fps = rate(&after_end);
    assert!(
        after_end.len() >= 18 && (12.0..=18.0).contains(&fps),
        "past the clip's end: {} frames at {fps:.1} fps",
        after_end.len()
    );
    let c = &srv.server.first_camera().capture.stats;
    let captured = c.captured.load(Relaxed) as f64;
    assert!(
        captured >= 2.0 * f64::from(VIDEO_FPS) && captured <= elapsed * f64::from(VIDEO_FPS) + 3.0,
        "{captured} frames in {elapsed:.1} s"
    );
    assert_eq!(c.source_failures.load(Relaxed), 0, "{c:?}");
    assert!(
        !srv.journal().iter().any(|l| l.contains("SOURCE-LOST")),
        "{:#?}",
        srv.journal()
    );
    assert_eq!(players_of(&clip), 1, "one ffmpeg plays the clip");
    srv.stop().await.unwrap();
    // Stopping the server stops its ffmpeg.
    let until = Instant::now() + IO_TIMEOUT;
    while players_of(&clip) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(players_of(&clip), 0, "ffmpeg outlived the server");
}

/// Running processes whose command line names `path` (zombies have none).
fn players_of(path: &Path) -> usize {
    let needle = path.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
        .count()
}

/// A JPEG still goes out at --fps, every frame the file's own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_jpeg_is_passed_through_byte_for_byte_at_fps() {
    let dir = tempfile::tempdir().unwrap();
    let still = dir.path().join("still.jpg");
    let jpeg = test_jpeg(
        W as usize,
        H as usize,
        Picture::Gradient(7),
        85,
        Subsamp::Sub2x2,
    );
    std::fs::write(&still, &jpeg).unwrap();
    let mut srv = serve_file(&still, options(10, false)).await;
    let mut v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let params = v.params.clone().unwrap();
    assert_eq!((params.width, params.height, params.fps), (W, H, 10));
    let got = collect(&mut v, Duration::from_millis(2000)).await;
    let same: Vec<&Got> = got.iter().filter(|g| g.jpeg == jpeg).collect();
    let fps = rate(&same);
    assert!(
        same.len() >= 15 && (8.5..=11.5).contains(&fps),
        "{} of {} frames are the file's bytes, at {fps:.1} fps",
        same.len(),
        got.len()
    );
    // Counters compared with each other are read once the capture has stopped: read
    // while it runs, a frame can land between two loads (CI saw captured 20, passed 21).
    srv.stop_capture().await;
    let c = &srv.server.first_camera().capture.stats;
    let captured = c.captured.load(Relaxed);
    assert!(captured >= same.len() as u64, "{c:?}");
    assert_eq!(c.passed_through.load(Relaxed), captured, "{c:?}");
    assert_eq!(c.published.load(Relaxed), captured, "{c:?}");
    srv.stop().await.unwrap();
}

/// A PNG is converted to JPEG once: every frame is that one JPEG, at the picture's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_png_still_is_converted_once_and_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("still.png");
    ffmpeg_make(
        &png,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240",
            "-frames:v",
            "1",
        ],
    );
    let mut srv = serve_file(&png, options(10, false)).await;
    let mut v = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let got = collect(&mut v, Duration::from_millis(1500)).await;
    let pictures: Vec<&Got> = got
        .iter()
        .filter(|g| (g.width, g.height) == (W, H))
        .collect();
    assert!(pictures.len() >= 10, "{} frames of {W}x{H}", pictures.len());
    assert!(
        pictures.iter().all(|g| g.jpeg == pictures[0].jpeg),
        "converted once: every frame is the same JPEG"
    );
    srv.stop_capture().await;
    let c = &srv.server.first_camera().capture.stats;
    assert_eq!(
        c.passed_through.load(Relaxed),
        c.captured.load(Relaxed),
        "{c:?}"
    );
    srv.stop().await.unwrap();
}

/// Solid colours, one per numbered file, written out of order.
fn colour_folder(dir: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    const COLOURS: [[u8; 3]; 6] = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 255],
        [0, 0, 0],
        [255, 255, 0],
    ];
    let jpegs: Vec<Vec<u8>> = COLOURS[..names.len()]
        .iter()
        .map(|&c| test_jpeg(64, 48, Picture::Solid(c), 85, Subsamp::Sub2x2))
        .collect();
    for i in (0..names.len()).rev() {
        std::fs::write(dir.join(names[i]), &jpegs[i]).unwrap();
    }
    jpegs
}

/// Without --loop a folder plays once: the bad file is rejected and counted, the other files
/// are not pictures, and the source ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_plays_once_skipping_a_bad_file_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    colour_folder(dir.path(), &["01.jpg", "02.jpeg", "03.JPG", "10.jpg"]);
    std::fs::write(dir.path().join("02b.jpg"), b"not a JPEG at all").unwrap();
    std::fs::write(dir.path().join("00_notes.txt"), b"ignored").unwrap();
    let srv = serve_file(dir.path(), options(20, false)).await;
    srv.wait_journal(|l| l.contains("SOURCE-LOST") && l.contains("ended"))
        .await
        .unwrap();
    let c = &srv.server.first_camera().capture.stats;
    assert_eq!(c.captured.load(Relaxed), 4, "one pass of 4 pictures: {c:?}");
    assert_eq!(c.passed_through.load(Relaxed), 4, "{c:?}");
    assert_eq!(c.rejected.load(Relaxed), 1, "02b.jpg: {c:?}");
    srv.stop().await.unwrap();
}

/// With --loop a folder plays in name order pass after pass, skipping the bad file each time,
/// and a picture added meanwhile (a growing time-lapse) joins at its place in the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_folder_plays_in_name_order_and_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["a1.jpg", "a2.jpg", "a3.JPEG", "a5.jpg", "a4.jpg"];
    let jpegs = colour_folder(dir.path(), &names[..4]);
    std::fs::write(dir.path().join("a2x.jpg"), vec![0xFF; 100]).unwrap();
    let srv = serve_file(dir.path(), options(20, true)).await;
    let mut v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let index = |g: &Got| jpegs.iter().position(|j| *j == g.jpeg);

    let first = collect(&mut v, Duration::from_millis(1000)).await;
    let order: Vec<usize> = first.iter().filter_map(index).collect();
    assert!(order.len() >= 12, "{order:?}");
    for pair in order.windows(2) {
        assert_eq!(
            pair[1],
            (pair[0] + 1) % 4,
            "name order a1 a2 a3 a5: {order:?}"
        );
    }
    let rejected = srv
        .server
        .first_camera()
        .capture
        .stats
        .rejected
        .load(Relaxed);
    assert!(rejected >= 2, "a2x.jpg rejected at every pass: {rejected}");

    // a4.jpg sorts between a3 and a5.
    let a4 = test_jpeg(64, 48, Picture::Solid([255, 255, 0]), 85, Subsamp::Sub2x2);
    let tmp = dir.path().join("a4.part");
    std::fs::write(&tmp, &a4).unwrap();
    std::fs::rename(&tmp, dir.path().join(names[4])).unwrap();
    let later = collect(&mut v, Duration::from_millis(1000)).await;
    let order: Vec<usize> = later
        .iter()
        .filter_map(|g| index(g).or((g.jpeg == a4).then_some(4)))
        .collect();
    let cycle = [0, 1, 2, 4, 3]; // a1 a2 a3 a4 a5, by index in `jpegs` (a4 = 4)
    let seen_a4 = order.iter().position(|&i| i == 4).expect("a4 shown");
    for pair in order[seen_a4..].windows(2) {
        let at = cycle.iter().position(|&i| i == pair[0]).unwrap();
        assert_eq!(
            pair[1],
            cycle[(at + 1) % 5],
            "name order with a4: {order:?}"
        );
    }
    assert!(order[seen_a4..].len() >= 6, "{order:?}");
    srv.stop().await.unwrap();
}

/// A path that does not exist yet is an outage, not an error: the server starts, says why in
/// the journal, and plays the file once it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_appears_later_is_played_once_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let still = dir.path().join("later.jpg");
    let jpeg = test_jpeg(
        W as usize,
        H as usize,
        Picture::Gradient(3),
        85,
        Subsamp::Sub2x2,
    );
    let writer = {
        let (still, jpeg) = (still.clone(), jpeg.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let tmp = still.with_extension("part");
            std::fs::write(&tmp, &jpeg).unwrap();
            std::fs::rename(&tmp, &still).unwrap();
        })
    };
    let srv = serve_file(&still, options(10, false)).await;
    writer.await.unwrap();
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(
        lost.contains("later.jpg") && lost.contains("no such file"),
        "{lost}"
    );
    srv.wait_journal(|l| l.contains("SOURCE-BACK"))
        .await
        .unwrap();
    let mut v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let got = collect(&mut v, Duration::from_millis(500)).await;
    assert!(
        got.iter().any(|g| g.jpeg == jpeg),
        "the file's frames arrive"
    );
    srv.stop().await.unwrap();
}
