//! `surv-client --pipe`: the real binary's standard output read by the real ffmpeg as an MJPEG
//! stream (seed 002's `app | ffmpeg`), and a reader that closes the pipe early.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use surv_tests::{output_within_reading, start_server, Reaper, ServerOpts};

fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `surv-client … --pipe | ffmpeg -f mjpeg -i - …`: ffmpeg decodes, strictly, every frame the
/// viewer received, and the summary goes to standard error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_every_frame_piped() {
    let srv = start_server(ServerOpts::sized(320, 240)).await.unwrap();
    let port = srv.addr.port().to_string();
    let (stderr, decoded, ffmpeg_errors) = tokio::task::spawn_blocking(move || {
        let mut client = Command::new(env!("CARGO_BIN_EXE_surv-client"))
            .args(["127.0.0.1", &port, "0", "--headless", "--no-record"])
            .args(["--frames", "90", "--seconds", "20", "--pipe"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting surv-client");
        let video = client.stdout.take().unwrap();
        let mut client_stderr = client.stderr.take().unwrap();
        let client = Reaper(client);
        // One line per decoded frame; every frame as it came (no rate conversion).
        let mut ffmpeg = Command::new("ffmpeg");
        ffmpeg
            .args([
                "-nostdin",
                "-v",
                "error",
                "-err_detect",
                "explode",
                "-xerror",
            ])
            .args(["-f", "mjpeg", "-i", "-", "-fps_mode", "passthrough"])
            .args(["-f", "framemd5", "-"]);
        let out = output_within_reading(&mut ffmpeg, Stdio::from(video), Duration::from_secs(60))
            .expect("running ffmpeg");
        let mut stderr = String::new();
        client_stderr.read_to_string(&mut stderr).unwrap();
        drop(client);
        let frames = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count() as u64;
        (
            stderr,
            frames,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    let summary = stderr
        .lines()
        .find(|l| l.contains("frames received="))
        .unwrap_or_else(|| panic!("no summary on stderr: {stderr}"));
    let received = field(summary, "received").unwrap();
    assert_eq!(received, 90, "{summary}; ffmpeg: {ffmpeg_errors}");
    assert_eq!(field(summary, "piped"), Some(received), "{summary}");
    assert_eq!(field(summary, "pipe_dropped"), Some(0), "{summary}");
    assert_eq!(decoded, received, "ffmpeg decoded {decoded} of {received}");
    assert!(ffmpeg_errors.is_empty(), "ffmpeg: {ffmpeg_errors}");
    srv.stop().await.unwrap();
}

/// A reader that takes a little and closes the pipe: the viewer ends by itself, cleanly, and
/// tells the server (`end`, not a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_viewer_cleanly() {
    let srv = start_server(ServerOpts::sized(320, 240)).await.unwrap();
    let port = srv.addr.port().to_string();
    let (status, stderr, took) = tokio::task::spawn_blocking(move || {
        let mut client = Command::new(env!("CARGO_BIN_EXE_surv-client"))
            .args(["127.0.0.1", &port, "0", "--headless", "--no-record"])
            .args(["--seconds", "30", "--pipe"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting surv-client");
        let mut video = client.stdout.take().unwrap();
        let mut client_stderr = client.stderr.take().unwrap();
        let mut client = Reaper(client);
        let mut some = vec![0u8; 64 * 1024];
        video.read_exact(&mut some).expect("64 KiB of video");
        assert_eq!(&some[..2], [0xFF, 0xD8], "the stream starts with a JPEG");
        drop(video);
        let closed = Instant::now();
        let until = closed + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = client.0.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = closed.elapsed();
        let _ = client.0.kill();
        let mut stderr = String::new();
        client_stderr.read_to_string(&mut stderr).unwrap();
        (status, stderr, took)
    })
    .await
    .unwrap();
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after the pipe closed: {stderr}"));
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("ended_by=pipe closed"), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}: {stderr}");
    let leave = srv.wait_journal(|l| l.contains("LEAVE")).await.unwrap();
    assert!(leave.contains("reason=end"), "{leave}");
    srv.stop().await.unwrap();
}
