//! The `http://` source end to end: the seeds' HTTP cameras (OAK MJPEG with its boundary quirk,
//! seed 004's server, a no-length/LF camera, the OAK still server, an ESP32-style stream behind
//! Basic auth) feed a real server; a real surv-client and a seed-form viewer decode the
//! camera's own frames, passed through byte for byte at the camera's size. A camera that dies
//! and comes back, and cameras that send garbage, are rejected, counted and survived.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_client::display::Latest;
use surv_proto::{Form, FrameTag, MAX_UDP_PAYLOAD_BYTES, TAG_BYTES};
use surv_server::capture::CaptureConfig;
use surv_server::sources::http::{Deadlines, HttpSource};
use surv_server::sources::{Source, SourceOptions};
use surv_server::{Capture, Journal};
use surv_tests::client_config;
use surv_tests::standins::http::{
    multipart_head, part, HttpCamera, HttpCameraKind, KeepAliveStill, Say, ScriptedHttp,
};
use surv_tests::{
    start_server_with, test_jpeg, Picture, RawViewer, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The camera's size; the server is told `--size 640x480`, which an HTTP camera cannot honour.
const CAM_W: usize = 320;
const CAM_H: usize = 240;
const CAM_FPS: u32 = 15;

fn camera_frames(n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            test_jpeg(
                CAM_W,
                CAM_H,
                Picture::Gradient(i * 5),
                80,
                surv_tests::fixtures::Subsamp::Sub2x2,
            )
        })
        .collect()
}

fn options(fps: u32) -> SourceOptions {
    SourceOptions {
        width: 640,
        height: 480,
        fps,
        ..SourceOptions::default()
    }
}

fn source(url: &str, opts: &SourceOptions, deadlines: Deadlines) -> Box<dyn Source> {
    Box::new(
        HttpSource::new(url, opts)
            .unwrap()
            .with_deadlines(deadlines),
    )
}

/// What a seed-form viewer saw: frames that are the camera's own bytes once surv's tag is
/// removed (and when), anything else (the "no signal" frame), and what did not decode.
#[derive(Debug, Default)]
struct Seen {
    camera_at: Vec<Instant>,
    other_at: Vec<Instant>,
    camera_sizes: HashSet<(usize, usize)>,
    undecodable: u64,
}

/// The datagram without surv's tag: what the camera sent, if it was passed through.
fn untagged(datagram: &[u8]) -> Vec<u8> {
    match FrameTag::decode(datagram) {
        Ok(_) => [&datagram[..2], &datagram[2 + TAG_BYTES..]].concat(),
        Err(_) => datagram.to_vec(),
    }
}

/// Seed 003's viewer: bare port, every datagram decoded whole, `continue` after each.
async fn seed_viewer(server: std::net::SocketAddr, frames: &[Vec<u8>], run: Duration) -> Seen {
    let camera: HashSet<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let v = RawViewer::register(server, Form::Seed).await.unwrap();
    let mut seen = Seen::default();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let until = Instant::now() + run;
    let mut sender = None;
    while let Ok(got) = tokio::time::timeout_at(until, v.udp.recv_from(&mut buf)).await {
        let (n, from) = got.unwrap();
        sender = Some(from);
        let datagram = &buf[..n];
        match turbojpeg::decompress(datagram, turbojpeg::PixelFormat::RGB) {
            Ok(image) if camera.contains(untagged(datagram).as_slice()) => {
                seen.camera_at.push(Instant::now());
                seen.camera_sizes.insert((image.width, image.height));
            }
            Ok(_) => seen.other_at.push(Instant::now()),
            Err(_) => seen.undecodable += 1,
        }
        v.udp.send_to(b"continue", from).await.unwrap();
    }
    if let Some(to) = sender {
        v.end(to).await.unwrap();
    }
    seen
}

/// A surv-client and a seed viewer watch `run`; both decode the camera's frames at its size,
/// and every frame the camera sent went out untouched.
async fn viewers_get_the_cameras_frames(
    srv: &TestServer,
    frames: &[Vec<u8>],
    run: Duration,
    least: usize,
) {
    let latest = Arc::new(Latest::default());
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, run.as_secs_f64()),
        Some(latest.clone()),
        CancellationToken::new(),
    ));
    let seen = seed_viewer(srv.addr, frames, run).await;
    let summary = timeout(run + IO_TIMEOUT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(summary.decoded >= least as u64, "{summary}");
    assert_eq!(summary.decode_failed, 0, "{summary}");
    assert_eq!(summary.ended_by, "time limit", "{summary}");
    let image = latest.take().expect("the viewer decoded a frame");
    assert_eq!(
        (image.width, image.height),
        (CAM_W, CAM_H),
        "the camera's size, not --size"
    );
    assert!(seen.camera_at.len() >= least, "{seen:?}");
    assert_eq!(
        seen.camera_sizes,
        HashSet::from([(CAM_W, CAM_H)]),
        "{seen:?}"
    );
    assert_eq!(seen.undecodable, 0, "{seen:?}");
}

/// After the capture stopped: every frame captured was passed through, none re-encoded,
/// none rejected, the source never lost.
async fn all_passed_through(srv: &mut TestServer, least: u64) {
    srv.stop_capture().await;
    let c = &srv.server.first_camera().capture.stats;
    let (captured, passed) = (c.captured.load(Relaxed), c.passed_through.load(Relaxed));
    assert!(captured >= least, "captured {captured}");
    assert_eq!(passed, captured, "every camera frame passed through");
    assert_eq!(c.published.load(Relaxed), passed, "nothing re-encoded");
    assert_eq!(c.rejected.load(Relaxed), 0);
    assert_eq!(c.source_lost.load(Relaxed), 0);
}

async fn stream_from(kind: HttpCameraKind, user_pass: Option<(&str, &str)>) {
    let frames = camera_frames(6);
    let cam = HttpCamera::start(kind, &frames, CAM_FPS).await.unwrap();
    let url = match user_pass {
        Some((u, p)) => cam.url_with(u, p),
        None => cam.url(),
    };
    let opts = options(30);
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(&url, &opts, Deadlines::default()),
    )
    .await
    .unwrap();
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_secs(2), 10).await;
    all_passed_through(&mut srv, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oak_mjpeg_server_with_its_boundary_quirk() {
    let frames = camera_frames(6);
    let cam = HttpCamera::start(HttpCameraKind::OakMjpeg, &frames, CAM_FPS)
        .await
        .unwrap();
    let opts = options(30);
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url(), &opts, Deadlines::default()),
    )
    .await
    .unwrap();
    // A SURV/1 viewer is told the camera's size, not --size.
    let v1 = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let params = v1.params.clone().unwrap();
    assert_eq!((params.width, params.height), (CAM_W as u32, CAM_H as u32));
    drop(v1);
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_secs(2), 10).await;
    all_passed_through(&mut srv, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_mjpeg_server() {
    stream_from(HttpCameraKind::Seed004Mjpeg, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_without_content_length_and_bare_lf() {
    stream_from(HttpCameraKind::LfNoLength, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_the_right_password_streams() {
    let kind = HttpCameraKind::BasicAuthMjpeg {
        user: "admin".into(),
        pass: "p@ss word".into(),
    };
    stream_from(kind, Some(("admin", "p%40ss%20word"))).await;
}

/// The OAK still server at `--fps 5`: polled at that rate (not the stream's 30), each image
/// passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_image_url_is_polled_at_fps() {
    let frames = camera_frames(6);
    let cam = HttpCamera::start(HttpCameraKind::OakStill, &frames, CAM_FPS)
        .await
        .unwrap();
    let opts = options(5);
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url(), &opts, Deadlines::default()),
    )
    .await
    .unwrap();
    let stats = &srv.server.first_camera().capture.stats;
    let before = stats.captured.load(Relaxed);
    let window = Instant::now();
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_secs(3), 5).await;
    let polled = stats.captured.load(Relaxed) - before;
    let rate = polled as f64 / window.elapsed().as_secs_f64();
    assert!(
        (2.5..=6.0).contains(&rate),
        "{polled} stills in {:?}: {rate:.1}/s, not 5/s",
        window.elapsed()
    );
    all_passed_through(&mut srv, 8).await;
}

/// A snapshot URL that keeps the connection alive is polled on that one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_still_is_polled_on_one_connection() {
    let frames = camera_frames(4);
    let cam = KeepAliveStill::start(frames.clone()).await.unwrap();
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url(), &options(10), Deadlines::default()),
    )
    .await
    .unwrap();
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_secs(2), 8).await;
    all_passed_through(&mut srv, 10).await;
    assert!(cam.requests.load(Relaxed) >= 10);
    assert_eq!(
        cam.connections.load(Relaxed),
        1,
        "the connection was reused"
    );
}

/// A still served with the wrong Content-Type is known by its first bytes (SOI) and polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mislabelled_still_is_known_by_its_bytes() {
    let frames = camera_frames(1);
    let mut answer = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        frames[0].len()
    )
    .into_bytes();
    answer.extend(&frames[0]);
    let cam = ScriptedHttp::start(vec![Say::Bytes(answer)], None)
        .await
        .unwrap();
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(
            &cam.url("/cgi-bin/snap?chn=0"),
            &options(10),
            Deadlines::default(),
        ),
    )
    .await
    .unwrap();
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_millis(1500), 5).await;
    all_passed_through(&mut srv, 8).await;
}

/// Kill the camera mid-stream and start it again on the same port: viewers stay registered,
/// the journal has SOURCE-LOST then SOURCE-BACK, and the camera's frames flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_dies_and_comes_back() {
    let frames = camera_frames(6);
    let mut cam = HttpCamera::start(HttpCameraKind::OakMjpeg, &frames, CAM_FPS)
        .await
        .unwrap();
    let opts = options(30);
    let srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url(), &opts, Deadlines::default()),
    )
    .await
    .unwrap();
    let run = Duration::from_secs(8);
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, run.as_secs_f64()),
        None,
        CancellationToken::new(),
    ));
    let viewer = {
        let (addr, frames) = (srv.addr, frames.clone());
        tokio::spawn(async move { seed_viewer(addr, &frames, run).await })
    };
    srv.wait_sessions(2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cam.kill();
    let killed_at = Instant::now();
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(lost.contains("127.0.0.1"), "{lost}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        srv.server.watchers.len(),
        2,
        "viewers stay registered while the camera is gone"
    );
    cam.restart().await.unwrap();
    srv.wait_journal(|l| l.contains("SOURCE-BACK"))
        .await
        .unwrap();
    let back_at = Instant::now();
    let seen = timeout(run + IO_TIMEOUT, viewer).await.unwrap().unwrap();
    let summary = timeout(run + IO_TIMEOUT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.ended_by, "time limit", "{summary}");
    assert_eq!(summary.decode_failed, 0, "{summary}");
    let before = seen.camera_at.iter().filter(|&&t| t < killed_at).count();
    let after = seen.camera_at.iter().filter(|&&t| t > back_at).count();
    assert!(
        before >= 10 && after >= 10,
        "camera frames before {before}, after {after}: {seen:?}"
    );
    assert_eq!(seen.undecodable, 0);
    let meanwhile = seen
        .other_at
        .iter()
        .filter(|&&t| t > killed_at && t < back_at)
        .count();
    assert!(
        meanwhile >= 1,
        "no \"no signal\" frame while the camera was gone: {seen:?}"
    );
    let journal = srv.journal();
    let lost_at = journal
        .iter()
        .position(|l| l.contains("SOURCE-LOST"))
        .unwrap();
    let back = journal
        .iter()
        .position(|l| l.contains("SOURCE-BACK"))
        .unwrap();
    assert!(lost_at < back, "{journal:#?}");
    assert_eq!(
        srv.server
            .first_camera()
            .capture
            .stats
            .source_lost
            .load(Relaxed),
        1
    );
}

/// A stream of good frames interleaved with bad parts: over the cap with and without a
/// Content-Length, another content type, an endless part header, a "JPEG" that is not one.
/// Each bad part is rejected and counted; every good frame reaches the viewers untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parts_are_rejected_and_the_stream_goes_on() {
    let frames = camera_frames(7);
    let jpeg = |f: &Vec<u8>| {
        part(
            "b",
            &[
                ("Content-Type", "image/jpeg".into()),
                ("Content-Length", f.len().to_string()),
            ],
            f,
        )
    };
    let pause = Say::Pause(Duration::from_millis(40));
    let too_big = vec![0x55u8; 100_000];
    let endless = format!("--b\r\nX-Junk: {}\r\n\r\nrest\r\n", "a".repeat(20_000));
    let script = vec![
        Say::Bytes(multipart_head("b")),
        Say::Bytes(jpeg(&frames[0])),
        pause.clone(),
        Say::Bytes(jpeg(&frames[1])),
        pause.clone(),
        Say::Bytes(part(
            "b",
            &[
                ("Content-Type", "image/jpeg".into()),
                ("Content-Length", too_big.len().to_string()),
            ],
            &too_big,
        )),
        Say::Bytes(jpeg(&frames[2])),
        pause.clone(),
        Say::Bytes(part(
            "b",
            &[("Content-Type", "text/plain".into())],
            b"hello",
        )),
        Say::Bytes(jpeg(&frames[3])),
        pause.clone(),
        Say::Bytes(endless.into_bytes()),
        Say::Bytes(jpeg(&frames[4])),
        pause.clone(),
        Say::Bytes(part(
            "b",
            &[
                ("Content-Type", "image/jpeg".into()),
                ("Content-Length", "5".into()),
            ],
            b"hello",
        )),
        Say::Bytes(jpeg(&frames[5])),
        pause.clone(),
        Say::Bytes(part(
            "b",
            &[("Content-Type", "image/jpeg".into())],
            &too_big,
        )),
        Say::Bytes(jpeg(&frames[6])),
        pause,
    ];
    let cam = ScriptedHttp::start(script, Some(1)).await.unwrap();
    let opts = SourceOptions {
        max_frame_bytes: 64 * 1024,
        ..options(30)
    };
    let mut srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url("/"), &opts, Deadlines::default()),
    )
    .await
    .unwrap();
    viewers_get_the_cameras_frames(&srv, &frames, Duration::from_secs(2), 10).await;
    srv.stop_capture().await;
    let c = &srv.server.first_camera().capture.stats;
    let (passed, rejected) = (c.passed_through.load(Relaxed), c.rejected.load(Relaxed));
    assert_eq!(passed, c.captured.load(Relaxed));
    assert_eq!(
        c.source_lost.load(Relaxed),
        0,
        "the stream was never broken"
    );
    // 7 good and 5 bad parts a round, in that order: every bad kind was counted.
    let rounds = passed / 7;
    assert!(rounds >= 2, "{passed} frames");
    assert!(
        (5 * rounds..=5 * rounds + 5).contains(&rejected),
        "{rejected} rejected for {passed} good frames"
    );
}

/// A camera that stops mid-part: after the body-stall deadline the source is lost (with why),
/// and it comes back when the camera answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_stalling_mid_part_is_lost_and_retried() {
    let frames = camera_frames(3);
    let half = &frames[0][..frames[0].len() / 2];
    let mut stalled = format!(
        "--b\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        frames[0].len()
    )
    .into_bytes();
    stalled.extend(half);
    let mut script = vec![Say::Bytes(multipart_head("b"))];
    for f in &frames {
        script.push(Say::Bytes(part(
            "b",
            &[("Content-Length", f.len().to_string())],
            f,
        )));
        script.push(Say::Pause(Duration::from_millis(50)));
    }
    script.push(Say::Bytes(stalled));
    let cam = ScriptedHttp::start(script, None).await.unwrap();
    let deadlines = Deadlines {
        body_stall: Duration::from_millis(800),
        ..Deadlines::default()
    };
    let srv = start_server_with(
        ServerOpts::default(),
        source(&cam.url("/live"), &options(30), deadlines),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(lost.contains("sent nothing for 800ms"), "{lost}");
    assert!(started.elapsed() < Duration::from_secs(5));
    srv.wait_journal(|l| l.contains("SOURCE-BACK"))
        .await
        .unwrap();
    assert!(
        srv.server
            .first_camera()
            .capture
            .stats
            .captured
            .load(Relaxed)
            >= 4
    );
}

/// Sources that never deliver a frame, run without a server (no first frame to wait for): the
/// journal's SOURCE-LOST line carries a reason the user can act on.
async fn lost_reason(source: Box<dyn Source>) -> (String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let capture = Capture::start(source, CaptureConfig::default(), journal, &shutdown).unwrap();
    let until = Instant::now() + IO_TIMEOUT;
    let line = loop {
        let lines = surv_server::journal::read_all(dir.path()).unwrap_or_default();
        if let Some(l) = lines.into_iter().find(|l| l.contains("SOURCE-LOST")) {
            break l;
        }
        assert!(Instant::now() < until, "no SOURCE-LOST line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let captured = capture.shared.stats.captured.load(Relaxed);
    capture.stop().await;
    (line, captured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_wrong_answers_are_lost_with_their_reason() {
    let frames = camera_frames(2);
    let kind = HttpCameraKind::BasicAuthMjpeg {
        user: "admin".into(),
        pass: "right".into(),
    };
    let auth = HttpCamera::start(kind, &frames, CAM_FPS).await.unwrap();
    let seed = HttpCamera::start(HttpCameraKind::Seed004Mjpeg, &frames, CAM_FPS)
        .await
        .unwrap();
    let html = ScriptedHttp::start(
        vec![Say::Bytes(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\n\r\n<html><b>camera</b></html>".to_vec(),
        )],
        None,
    )
    .await
    .unwrap();
    let endless_head = ScriptedHttp::start(
        vec![
            Say::Bytes(b"HTTP/1.0 200 OK\r\nX-Junk: ".to_vec()),
            Say::Bytes(vec![b'a'; 4096]),
        ],
        Some(1),
    )
    .await
    .unwrap();
    let opts = options(30);
    let d = Deadlines::default();
    let cases = [
        (
            auth.url_with("admin", "hunter2"),
            "HTTP 401: wrong credentials",
        ),
        (auth.url(), "HTTP 401: missing credentials"),
        (seed.url().replace("/stream.mjpg", "/nope"), "HTTP 404"),
        (
            seed.url().replace("/stream.mjpg", "/index.html"),
            "text/html",
        ),
        (html.url("/"), "Content-Type \\\"text/html\\\""),
        (endless_head.url("/"), "too large"),
    ];
    for (url, want) in &cases {
        let (line, captured) = lost_reason(source(url, &opts, d)).await;
        assert!(line.contains(want), "{url}: {line}");
        assert!(
            !line.contains("hunter2"),
            "no password in the journal: {line}"
        );
        assert_eq!(captured, 0, "{url}");
    }
}
