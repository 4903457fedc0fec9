//! Recording end to end: a real server streams on loopback, the viewer records rolling segments
//! in each format, and independent tools judge the files: ffmpeg decodes every frame with its
//! strictest checks, ffprobe counts frames and measures durations, headless Chromium plays an
//! MP4 in a `<video>` element.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use surv_client::recorder::{self, Format, RecFrame, RecorderConfig, Retention, Trigger};
use surv_client::Config as ClientConfig;
use surv_proto::{Ack, Form, FrameTag, MAX_UDP_PAYLOAD_BYTES};
use surv_tests::{
    ffmpeg_check, heavy, probe, start_server, Probe, RawViewer, ServerOpts, IO_TIMEOUT,
};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const FPS: u32 = 30;
const FRAME_US: u64 = 1_000_000 / FPS as u64;

/// A 320x240 stream: cheap enough to leave CPU for the recorder on a small machine.
fn small() -> ServerOpts {
    ServerOpts {
        width: 320,
        height: 240,
        ..ServerOpts::default()
    }
}

fn codec(format: Format) -> &'static str {
    match format {
        Format::Avi => "mjpeg",
        Format::Mp4 => "h264",
    }
}

/// Runs surv-client against `server` for `seconds`, recording 1 s segments into `dir`.
async fn record_live(
    server: std::net::SocketAddr,
    seconds: f64,
    dir: &Path,
    format: Format,
    keep: Retention,
) -> surv_client::Summary {
    let cfg = ClientConfig {
        record: Some(RecorderConfig {
            dir: dir.into(),
            segment: Duration::from_secs(1),
            format,
            keep,
            trigger: Trigger::Always,
        }),
        ..surv_tests::client_config(server, seconds)
    };
    let run = surv_client::run(cfg, None, CancellationToken::new());
    timeout(Duration::from_secs_f64(seconds) + IO_TIMEOUT, run)
        .await
        .expect("the viewer did not stop")
        .expect("the viewer failed")
}

fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Judges one closed segment: it has lost its `.part`, every frame decodes with ffmpeg's
/// strictest checks, and it holds `format`'s codec at the stream's size. Returns what ffprobe
/// found.
fn judge_segment(path: &Path, format: Format, (width, height): (u32, u32)) -> Probe {
    assert_eq!(
        path.extension().and_then(|e| e.to_str()),
        Some(format.extension()),
        "closed segments lose .part: {}",
        path.display()
    );
    ffmpeg_check(path).unwrap();
    let p = probe(path).unwrap();
    assert_eq!(p.codec, codec(format), "{}", path.display());
    assert_eq!((p.width, p.height), (width, height), "{}", path.display());
    p
}

/// Asserts that a segment plays for `wall_s`, the capture time it covers, within 2 % or one
/// frame interval, whichever is more: frames sit on the stream's frame grid (AVI has one rate
/// per file; MP4's decode times keep to it too), so capture jitter on a busy machine can move
/// the last frame one slot (CI saw 1.000 s for 0.969 s of 1 s segments).
fn assert_real_speed(path: &Path, p: &Probe, wall_s: f64) {
    let slack_s = (0.02 * wall_s).max(FRAME_US as f64 / 1e6 + 0.001);
    assert!(
        (p.duration_s - wall_s).abs() <= slack_s,
        "{}: plays {} s, captured over {wall_s} s",
        path.display(),
        p.duration_s
    );
}

/// Checks one closed segment: judged as above, it holds `frames` frames and plays for `wall_s`.
fn check_segment(path: &Path, format: Format, size: (u32, u32), frames: u64, wall_s: f64) {
    let p = judge_segment(path, format, size);
    assert_eq!(p.frames, frames, "{}: frames", path.display());
    assert_real_speed(path, &p, wall_s);
}

/// The viewer records a live 640x480@30 stream into 1 s segments, in each format: every
/// segment decodes strictly, holds the frames the viewer says it recorded, and plays for as long
/// as it was captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_segments_in_each_format_play_at_real_speed() {
    let _serial = heavy().await;
    let srv = start_server(ServerOpts::default()).await.unwrap();
    for format in [Format::Avi, Format::Mp4] {
        let dir = tempfile::tempdir().unwrap();
        let s = record_live(srv.addr, 4.5, dir.path(), format, Retention::default()).await;
        assert_eq!(s.recorded, s.received, "{format}: {s}");
        assert_eq!(s.record_dropped, 0, "{format}: {s}");
        // Loopback loses nothing, so n frames were captured over n frame intervals.
        assert_eq!(s.lost, 0, "{format}: {s}");
        assert!(s.segments.len() >= 5, "{format}: {:?}", s.segments);
        let mut total = 0;
        for (i, seg) in s.segments.iter().enumerate() {
            let p = judge_segment(seg, format, (640, 480));
            // No loss, so its n frames were captured over n frame intervals.
            let n = p.frames;
            assert_real_speed(seg, &p, n as f64 / f64::from(FPS));
            if i + 1 < s.segments.len() {
                assert!((29..=31).contains(&n), "{}: {n} frames", seg.display());
            }
            total += n;
        }
        assert_eq!(
            total, s.recorded,
            "{format}: every recorded frame is in a segment"
        );
        assert_eq!(files_with(dir.path(), ""), s.segments, "no .part left");
    }
    srv.stop().await.unwrap();
}

/// Frames from a live server, received by a viewer that loses 30 % of them (and acks the rest):
/// what a recorder gets on a bad network.
async fn lossy_live_frames(seconds: u64) -> Vec<RecFrame> {
    let srv = start_server(small()).await.unwrap();
    let v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let mut frames = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while let Ok(res) = tokio::time::timeout_at(until, v.udp.recv_from(&mut buf)).await {
        let (len, from) = res.unwrap();
        let tag = FrameTag::decode(&buf[..len]).unwrap();
        v.udp
            .send_to(&v.ack_bytes(Ack::Continue(Some(tag.seq))), from)
            .await
            .unwrap();
        n += 1;
        // 3 in 10 lost, in a fixed pattern, plus a burst of 20 in the middle.
        if n * 7 % 10 < 3 || (60..80).contains(&n) {
            continue;
        }
        frames.push(RecFrame {
            jpeg: Bytes::copy_from_slice(&buf[..len]),
            capture_unix_us: tag.capture_unix_us,
            event: tag.motion,
        });
    }
    srv.stop().await.unwrap();
    frames
}

/// With 30 % of frames lost and a 0.7 s hole, segments in each format still play for as long
/// as they were captured (±2 %), and hold exactly the frames that arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_keep_real_time_across_lost_frames() {
    let _serial = heavy().await;
    let frames = lossy_live_frames(4).await;
    assert!(frames.len() > 60, "{} frames", frames.len());
    // The segments the recorder should cut: 1 s windows from each window's first frame.
    let mut windows: Vec<(u64, u64, u64)> = Vec::new(); // (first_us, last_us, frames)
    for f in &frames {
        let t = f.capture_unix_us;
        match windows.last_mut() {
            Some((first, last, n)) if t < *first + 1_000_000 => {
                *last = t;
                *n += 1;
            }
            _ => windows.push((t, t, 1)),
        }
    }
    for format in [Format::Avi, Format::Mp4] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RecorderConfig {
            dir: dir.path().into(),
            segment: Duration::from_secs(1),
            format,
            keep: Retention::default(),
            trigger: Trigger::Always,
        };
        let report = record_all(cfg, frames.clone()).await;
        assert_eq!(report.write_errors, 0);
        assert_eq!(report.segments.len(), windows.len(), "{format}: {report:?}");
        for (seg, &(first, last, n)) in report.segments.iter().zip(&windows) {
            let wall_s = (last - first + FRAME_US) as f64 / 1e6;
            check_segment(seg, format, (320, 240), n, wall_s);
        }
        assert_eq!(report.frames_written, frames_len(&windows));
    }
}

fn frames_len(windows: &[(u64, u64, u64)]) -> u64 {
    windows.iter().map(|w| w.2).sum()
}

/// `--keep-segments 2`: while recording 1 s segments for 4.5 s, the folder never holds more than
/// the two newest closed segments plus the one being written; the oldest go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_segments() {
    let _serial = heavy().await;
    let srv = start_server(small()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Someone else's file and an old segment from an earlier run: the old one goes, the other
    // file stays.
    std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();
    let old = dir.path().join("surv-20000101-000000.avi");
    std::fs::write(&old, b"old").unwrap();
    let keep = Retention {
        max_bytes: None,
        max_segments: Some(2),
    };
    let watcher = {
        let dir = dir.path().to_path_buf();
        tokio::spawn(async move {
            let mut most = 0;
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                most = most.max(files_with(&dir, ".avi").len() + files_with(&dir, ".part").len());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let s = record_live(srv.addr, 4.5, dir.path(), Format::Avi, keep).await;
    assert!(s.segments.len() >= 5, "{:?}", s.segments);
    assert!(!old.exists(), "the oldest segment goes first");
    let left = files_with(dir.path(), ".avi");
    assert_eq!(
        left,
        s.segments[s.segments.len() - 2..],
        "the two newest stay"
    );
    assert!(dir.path().join("notes.txt").exists());
    assert!(
        watcher.await.unwrap() <= 3,
        "cap + the segment being written"
    );
    for seg in &left {
        ffmpeg_check(seg).unwrap();
    }

    // By size: a cap of about two segments' bytes keeps at most that.
    let dir = tempfile::tempdir().unwrap();
    let cap = 2 * std::fs::metadata(&left[0]).unwrap().len();
    let keep = Retention {
        max_bytes: Some(cap),
        max_segments: None,
    };
    let s = record_live(srv.addr, 3.5, dir.path(), Format::Avi, keep).await;
    let left = files_with(dir.path(), ".avi");
    let bytes: u64 = left
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes <= cap, "{bytes} bytes kept, cap {cap}");
    assert!(
        !left.is_empty() && left.len() < s.segments.len(),
        "{left:?}"
    );
    assert_eq!(left, s.segments[s.segments.len() - left.len()..]);
    srv.stop().await.unwrap();
}

/// Serves files from `dir` over HTTP/1.0 on loopback, for one browser, until the test ends.
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Bounded: a page and its video, a few range requests, favicon.
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Headers, up to the blank line (bounded by the read timeout and a count).
            for _ in 0..100 {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let name = request.split_whitespace().nth(1).unwrap_or("/");
            let path = dir.join(name.trim_start_matches('/'));
            let (status, kind, body) = match std::fs::read(&path) {
                Ok(b) if name.ends_with(".html") => ("200 OK", "text/html", b),
                Ok(b) if name.ends_with(".mp4") => ("200 OK", "video/mp4", b),
                _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

const PAGE: &str = r#"<!doctype html><html><head><title>loading</title></head><body>
<video id="v" src="segment.mp4" muted autoplay playsinline></video>
<pre id="out">pending</pre>
<script>
const v = document.getElementById('v');
const out = document.getElementById('out');
let start = null;
function check() {
  if (v.error) { out.textContent = 'ERROR code=' + v.error.code + ' ' + v.error.message; return; }
  if (v.readyState >= 2 && start === null) start = v.currentTime;
  if (start !== null && v.currentTime > start + 0.3) {
    out.textContent = 'PLAYING readyState=' + v.readyState + ' currentTime=' + v.currentTime +
      ' size=' + v.videoWidth + 'x' + v.videoHeight;
    return;
  }
  out.textContent = 'WAITING readyState=' + v.readyState + ' currentTime=' + v.currentTime;
  setTimeout(check, 50);
}
v.play().catch(e => { out.textContent = 'ERROR play() ' + e; });
check();
</script></body></html>"#;

/// A recorded MP4 plays in headless Chromium: the `<video>` element reaches
/// `readyState >= 2` (it has a picture) and its `currentTime` advances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_mp4_plays_in_headless_chromium() {
    let _serial = heavy().await;
    let srv = start_server(ServerOpts::default()).await.unwrap();
    let rec = tempfile::tempdir().unwrap();
    let s = record_live(srv.addr, 2.5, rec.path(), Format::Mp4, Retention::default()).await;
    srv.stop().await.unwrap();
    let first = s.segments.first().expect("no segment recorded");

    let site = tempfile::tempdir().unwrap();
    std::fs::copy(first, site.path().join("segment.mp4")).unwrap();
    std::fs::write(site.path().join("index.html"), PAGE).unwrap();
    let port = serve(site.path().to_path_buf());
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let dom = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is missing: run scripts/setup.sh (Debian package chromium)");
        // Bounded: chromium is killed if it has not answered in time.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut dom = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut dom)
            .unwrap();
        dom
    })
    .await
    .unwrap();
    let result = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no result in the page: {dom}"));
    assert!(
        result.starts_with("PLAYING") && result.contains("size=640x480"),
        "{result}"
    );
    let ready: u32 = result
        .split_whitespace()
        .find_map(|w| w.strip_prefix("readyState="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ready >= 2, "{result}");
}

/// Frames of a live `width` x `height` stream at 30 fps, as a viewer receives them (no loss).
async fn live_frames(width: u32, height: u32, count: usize) -> Vec<RecFrame> {
    let srv = start_server(ServerOpts::sized(width, height))
        .await
        .unwrap();
    let v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let mut frames = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while frames.len() < count {
        let Ok(res) = tokio::time::timeout_at(until, v.udp.recv_from(&mut buf)).await else {
            panic!("only {} frames in 60 s", frames.len());
        };
        let (len, from) = res.unwrap();
        let tag = FrameTag::decode(&buf[..len]).unwrap();
        v.udp
            .send_to(&v.ack_bytes(Ack::Continue(Some(tag.seq))), from)
            .await
            .unwrap();
        frames.push(RecFrame {
            jpeg: Bytes::copy_from_slice(&buf[..len]),
            capture_unix_us: tag.capture_unix_us,
            event: tag.motion,
        });
    }
    srv.stop().await.unwrap();
    frames
}

/// The recorder's CPU cost per frame, AVI and MP4, at 640x480@30 and 1280x720@30: frames from a
/// live test-pattern server are collected first, then recorded with nothing else running, and
/// the recorder thread's CPU time is divided by the frames written. A figure, not a check:
///
/// `cargo test --release -p surv-tests --test recording -- --ignored --nocapture recorder_cpu`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release mode"]
async fn recorder_cpu_per_frame() {
    let _serial = heavy().await;
    println!("| stream | format | recorder CPU per frame | of one core at 30 fps | MB/min |");
    println!("|---|---|---|---|---|");
    for (w, h) in [(640, 480), (1280, 720)] {
        let frames = live_frames(w, h, 300).await;
        let span_s = (frames[frames.len() - 1].capture_unix_us - frames[0].capture_unix_us
            + FRAME_US) as f64
            / 1e6;
        for format in [Format::Avi, Format::Mp4] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = RecorderConfig {
                dir: dir.path().into(),
                segment: Duration::from_secs(60),
                format,
                keep: Retention::default(),
                trigger: Trigger::Always,
            };
            let report = record_all(cfg, frames.clone()).await;
            assert_eq!(report.frames_written, 300);
            let bytes: u64 = report
                .segments
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            let us = report.cpu_us_per_frame;
            println!(
                "| {w}x{h}@30 | {format} | {us:.0} µs | {:.1} % | {:.1} |",
                us * f64::from(FPS) / 1e4,
                bytes as f64 / 1e6 / span_s * 60.0
            );
        }
    }
}

/// Feeds every frame to a recorder (waiting, bounded, for room in its queue rather than
/// dropping: timing comes from the frames, so waiting changes nothing else) and closes it.
async fn record_all(cfg: RecorderConfig, frames: Vec<RecFrame>) -> recorder::RecorderReport {
    tokio::task::spawn_blocking(move || {
        let rec = recorder::spawn(cfg, FPS).unwrap();
        for f in frames {
            let until = std::time::Instant::now() + IO_TIMEOUT;
            while !rec.push(f.clone()) {
                assert!(std::time::Instant::now() < until, "recorder stuck");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rec.finish()
    })
    .await
    .unwrap()
}
