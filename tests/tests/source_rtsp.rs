//! End to end: an RTSP camera as surv's source. The camera is a stand-in
//! (`tests/standins/rtsp_server.py`, GStreamer's gst-rtsp-server, as many cameras and NVR
//! bridges run) showing SMPTE colour bars at 320x240 while the server's `--size` is 640x480, so
//! the camera's frames are told from the "no signal" frame by their size, and from garbage by
//! their colours. Real surv-client viewers and seed-form viewers watch; the counters say whether
//! frames were passed through (MJPEG), or H.264 passed through to the H.264 feed and decoded
//! and encoded once only while a JPEG viewer watches. "surv reads surv": a second server whose
//! camera is the first one's RTSP H.264, read by ffmpeg from the second with no decode there.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_client::display::Latest;
use surv_proto::{Ack, Form, MAX_UDP_PAYLOAD_BYTES};
use surv_server::sources::rtsp::RtspSource;
use surv_server::sources::spec::RtspTransport;
use surv_tests::client_config;
use surv_tests::{
    heavy, start_server, start_server_with, RawViewer, Reaper, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/standins/rtsp_server.py");
const PYTHON: &str = "/usr/bin/python3";
const CAM_W: usize = 320;
const CAM_H: usize = 240;
const CAM_FPS: u32 = 30;
const MAX_FRAME_BYTES: usize = 8 << 20;

/// Whether the stand-in can run here (gst-rtsp-server importable from the system python).
fn standin_available() -> bool {
    let probe = Command::new(PYTHON)
        .args([
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); \
             from gi.repository import GstRtspServer",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let ok = probe.is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: gst-rtsp-server is not importable from {PYTHON} \
             (install gir1.2-gst-rtsp-server-1.0 python3-gi: scripts/setup.sh)"
        );
    }
    ok
}

/// The stand-in camera, killed when dropped.
struct Camera {
    child: Option<Reaper>,
    port: u16,
    args: Vec<String>,
    /// The paths it serves (`/h265` only where GStreamer has x265).
    mounts: Vec<String>,
}

impl Camera {
    /// Starts the stand-in on any free loopback port with `extra` arguments.
    fn start(extra: &[&str]) -> Camera {
        let mut cam = Camera {
            child: None,
            port: 0,
            args: extra.iter().map(|s| s.to_string()).collect(),
            mounts: Vec::new(),
        };
        cam.launch();
        cam
    }

    /// Runs the stand-in (on `self.port`, 0 the first time) and waits (bounded) for READY.
    fn launch(&mut self) {
        let (w, h, fps) = (CAM_W.to_string(), CAM_H.to_string(), CAM_FPS.to_string());
        let mut child = Command::new(PYTHON)
            .arg(STANDIN)
            .args([
                "--port",
                &self.port.to_string(),
                "--width",
                &w,
                "--height",
                &h,
            ])
            .args(["--fps", &fps])
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running the RTSP stand-in");
        let stdout = child.stdout.take().expect("stand-in stdout");
        let reaper = Reaper(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(IO_TIMEOUT)
            .expect("the RTSP stand-in printed no READY line in time");
        let mut words = line.split_whitespace();
        let port = (words.next() == Some("READY"))
            .then(|| words.next())
            .flatten()
            .and_then(|url| url.strip_prefix("rtsp://127.0.0.1:"))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected stand-in line {line:?}"));
        self.port = port;
        self.mounts = words.map(str::to_string).collect();
        self.child = Some(reaper);
    }

    fn url(&self, path: &str, login: Option<(&str, &str)>) -> String {
        let login = login.map_or(String::new(), |(u, p)| format!("{u}:{p}@"));
        format!("rtsp://{login}127.0.0.1:{}{path}", self.port)
    }

    /// The camera dies (SIGKILL: no TEARDOWN, no goodbye).
    fn kill(&mut self) {
        self.child = None;
    }
}

fn source(url: &str, transport: RtspTransport) -> Box<RtspSource> {
    Box::new(RtspSource::new(url, transport, MAX_FRAME_BYTES).expect("a valid rtsp URL"))
}

async fn start(url: &str, transport: RtspTransport) -> TestServer {
    start_server_with(ServerOpts::sized(640, 480), source(url, transport))
        .await
        .expect("server starts")
}

/// Whether packed RGB (`w × h`) shows the stand-in's SMPTE bars: grey, yellow, cyan from the
/// left (a swapped chroma plane or a stride error shows as wrong colours here).
fn shows_colour_bars(rgb: &[u8], w: usize, h: usize) -> Result<(), String> {
    let at = |x: usize| {
        let i = ((h / 4) * w + x) * 3;
        (rgb[i], rgb[i + 1], rgb[i + 2])
    };
    let (grey, yellow, cyan) = (at(w / 14), at(3 * w / 14), at(5 * w / 14));
    let high = |v: u8| v > 140;
    let low = |v: u8| v < 70;
    let ok = high(grey.0)
        && high(grey.1)
        && high(grey.2)
        && high(yellow.0)
        && high(yellow.1)
        && low(yellow.2)
        && low(cyan.0)
        && high(cyan.1)
        && high(cyan.2);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not the colour bars: grey {grey:?} yellow {yellow:?} cyan {cyan:?}"
        ))
    }
}

/// What a seed-form viewer saw: frames by size; the camera's (its size, its colour bars) apart
/// from the rest ("no signal", which takes the camera's last size while it is lost).
#[derive(Debug, Default)]
struct Seen {
    by_size: BTreeMap<(usize, usize), u64>,
    undecodable: u64,
    camera: u64,
    /// Why the last frame that was not the camera's was not.
    other: Option<String>,
}

impl Seen {
    fn camera_frames(&self) -> u64 {
        self.camera
    }

    fn others(&self) -> u64 {
        self.by_size.values().sum::<u64>() - self.camera
    }
}

/// Exactly seed 003's viewer (bare port, whole JPEG datagrams, `continue` after each) for
/// `duration`, decoding every frame.
async fn watch_seed(viewer: &mut RawViewer, duration: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let mut d = turbojpeg::Decompressor::new().unwrap();
    let until = Instant::now() + duration;
    while let Ok(got) = tokio::time::timeout_at(until, viewer.udp.recv_from(&mut buf)).await {
        let (n, from) = got.unwrap();
        let jpeg = &buf[..n];
        let decoded = d.read_header(jpeg).and_then(|hd| {
            let mut px = vec![0u8; hd.width * hd.height * 3];
            d.decompress(
                jpeg,
                turbojpeg::Image {
                    pixels: &mut px[..],
                    width: hd.width,
                    pitch: hd.width * 3,
                    height: hd.height,
                    format: turbojpeg::PixelFormat::RGB,
                },
            )
            .map(|()| (hd.width, hd.height, px))
        });
        match decoded {
            Ok((w, h, px)) => {
                *seen.by_size.entry((w, h)).or_default() += 1;
                let camera = if (w, h) == (CAM_W, CAM_H) {
                    shows_colour_bars(&px, w, h)
                } else {
                    Err(format!("{w}x{h}"))
                };
                match camera {
                    Ok(()) => seen.camera += 1,
                    Err(why) => seen.other = Some(why),
                }
            }
            Err(_) => seen.undecodable += 1,
        }
        viewer
            .udp
            .send_to(&Ack::Continue(None).encode(), from)
            .await
            .unwrap();
    }
    seen
}

/// Counter snapshot.
fn counters(srv: &TestServer) -> (u64, u64, u64) {
    let c = &srv.server.first_camera().capture.stats;
    (
        c.captured.load(Relaxed),
        c.published.load(Relaxed),
        c.passed_through.load(Relaxed),
    )
}

/// H.264 counter snapshot: (captured, H.264 units passed through, units decoded).
fn h264_counters(srv: &TestServer) -> (u64, u64, u64) {
    let c = &srv.server.first_camera().capture.stats;
    (
        c.captured.load(Relaxed),
        c.h264_passed_through.load(Relaxed),
        c.decodes.load(Relaxed),
    )
}

/// The H.264 counters over `secs`: their growth.
async fn h264_growth(srv: &TestServer, secs: Duration) -> (u64, u64, u64) {
    let before = h264_counters(srv);
    tokio::time::sleep(secs).await;
    let after = h264_counters(srv);
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

/// Waits (bounded) until the server has captured `n` frames from its camera.
async fn wait_captured(srv: &TestServer, n: u64) {
    let t0 = Instant::now();
    while h264_counters(srv).0 < n {
        assert!(t0.elapsed() < IO_TIMEOUT, "fewer than {n} frames captured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One camera, one codec, one transport: a surv-client viewer and a seed viewer both get the
/// camera's 320x240 colour bars at about its rate, and the counters say how they were made.
async fn camera_streams_to_viewers(path: &str, transport: RtspTransport) {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&[]);
    let srv = start(&cam.url(path, None), transport).await;
    // The first frame may be "no signal"; wait for the camera's.
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let warmup = watch_seed(&mut seed, Duration::from_secs(2)).await;
    assert!(
        warmup.camera_frames() > 0,
        "no camera frame yet: {warmup:?}"
    );

    let run = Duration::from_secs(3);
    let latest = Arc::new(Latest::default());
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, run.as_secs_f64()),
        Some(latest.clone()),
        CancellationToken::new(),
    ));
    let before = counters(&srv);
    let t0 = Instant::now();
    let seen = watch_seed(&mut seed, run).await;
    let after = counters(&srv);
    let secs = t0.elapsed().as_secs_f64();
    let summary = timeout(run + IO_TIMEOUT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // What the seed viewer saw: only the camera's frames, whole, at about its rate.
    assert_eq!(seen.undecodable, 0, "{seen:?}");
    assert_eq!(
        seen.by_size.len(),
        1,
        "only camera frames once live: {seen:?}"
    );
    let expected = f64::from(CAM_FPS) * secs;
    let share = seen.camera_frames() as f64 / expected;
    assert!(
        share >= 0.8,
        "seed viewer got {:.0}% of frames: {seen:?}",
        share * 100.0
    );

    // What the real viewer saw.
    eprintln!("{path} {transport:?}: {summary}");
    assert!(
        summary.decoded as f64 >= 0.8 * f64::from(CAM_FPS) * run.as_secs_f64(),
        "{summary}"
    );
    assert_eq!(summary.decode_failed, 0, "{summary}");
    let image = latest.take().expect("the viewer decoded a picture");
    assert_eq!(
        (image.width, image.height),
        (CAM_W, CAM_H),
        "the camera's size"
    );
    let rgb: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
        .collect();
    shows_colour_bars(&rgb, image.width, image.height).unwrap();

    // One frame out per camera frame, made the way the codec calls for.
    let (captured, published, passed) =
        (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let decodes = srv
        .server
        .first_camera()
        .capture
        .stats
        .decodes
        .load(Relaxed);
    let rate = captured as f64 / secs;
    assert!(
        (0.8 * f64::from(CAM_FPS)..=1.2 * f64::from(CAM_FPS)).contains(&rate),
        "{captured} frames in {secs:.2} s"
    );
    // Each snapshot reads `captured` a moment before `published`: a frame between the two is
    // counted captured and not yet published, in either snapshot, so the differences may be
    // one apart either way (and a frame still decoding at the end leaves `published` behind).
    assert!(
        published + 2 >= captured && published <= captured + 1,
        "{after:?} - {before:?}"
    );
    if path == "/mjpeg" {
        assert_eq!(
            passed, published,
            "every MJPEG frame passed through untouched"
        );
        assert_eq!(decodes, 0, "MJPEG is never decoded");
    } else {
        assert_eq!(
            passed, 0,
            "H.264 pictures are encoded, never passed through"
        );
        let c = &srv.server.first_camera().capture.stats;
        assert_eq!(
            c.h264_passed_through.load(Relaxed),
            c.captured.load(Relaxed),
            "every H.264 unit is passed through to the H.264 feed"
        );
    }
    assert_eq!(
        srv.server.first_camera().capture.stats.errors.load(Relaxed),
        0
    );
    assert_eq!(
        srv.server.first_camera().capture.shape().width as usize,
        CAM_W
    );
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_over_tcp_is_decoded_once_for_every_viewer() {
    camera_streams_to_viewers("/h264", RtspTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_over_udp_is_decoded_once_for_every_viewer() {
    camera_streams_to_viewers("/h264", RtspTransport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_over_tcp_is_passed_through() {
    camera_streams_to_viewers("/mjpeg", RtspTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_over_udp_is_passed_through() {
    camera_streams_to_viewers("/mjpeg", RtspTransport::Udp).await;
}

/// The right login gets frames; a wrong one is a lost source whose reason says so.
async fn login(auth: &str) {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&["--user", "admin", "--password", "s3cret", "--auth", auth]);

    let good = start(
        &cam.url("/mjpeg", Some(("admin", "s3cret"))),
        RtspTransport::Tcp,
    )
    .await;
    let mut seed = RawViewer::register(good.addr, Form::Seed).await.unwrap();
    let seen = watch_seed(&mut seed, Duration::from_secs(2)).await;
    assert!(seen.camera_frames() >= 10, "{auth}: {seen:?}");
    good.stop().await.unwrap();

    for login in [Some(("admin", "guess")), None] {
        let bad = start(&cam.url("/mjpeg", login), RtspTransport::Tcp).await;
        let lost = bad
            .wait_journal(|l| l.contains("SOURCE-LOST"))
            .await
            .unwrap();
        assert!(
            lost.contains("wrong or missing credentials"),
            "{auth} {login:?}: {lost}"
        );
        assert!(
            !lost.contains("guess"),
            "the password stays out of the journal: {lost}"
        );
        assert_eq!(
            bad.server
                .first_camera()
                .capture
                .stats
                .captured
                .load(Relaxed),
            0
        );
        let journal = bad.stop().await.unwrap();
        assert!(
            !journal.iter().any(|l| l.contains("SOURCE-BACK")),
            "{journal:#?}"
        );
    }
}

/// A camera whose only video is H.265: a lost source whose reason names the codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_codec_is_named() {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&[]);
    if !cam.mounts.iter().any(|m| m == "/h265") {
        eprintln!("SKIPPED: GStreamer has no x265enc here, so the stand-in serves no H.265");
        return;
    }
    let srv = start(&cam.url("/h265", None), RtspTransport::Tcp).await;
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(
        lost.contains("unsupported video codec (video/h265)"),
        "{lost}"
    );
    assert_eq!(
        srv.server
            .first_camera()
            .capture
            .stats
            .captured
            .load(Relaxed),
        0
    );
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong_password() {
    login("basic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_right_and_wrong_password() {
    login("digest").await;
}

/// The camera dies mid-stream and comes back on the same port: the viewers stay registered and
/// see "no signal" meanwhile, the journal has SOURCE-LOST then SOURCE-BACK, and the camera's
/// frames flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_dies_and_comes_back_is_followed() {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let mut cam = Camera::start(&[]);
    let srv = start(&cam.url("/h264", None), RtspTransport::Tcp).await;
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let stop_client = CancellationToken::new();
    let latest = Arc::new(Latest::default());
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, 60.0),
        Some(latest.clone()),
        stop_client.clone(),
    ));
    let before = watch_seed(&mut seed, Duration::from_secs(2)).await;
    assert!(before.camera_frames() >= 20, "{before:?}");

    cam.kill();
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(lost.contains("rtsp://127.0.0.1"), "{lost}");
    // Down for a while: viewers get the "no signal" frame (at the camera's last size).
    let outage = watch_seed(&mut seed, Duration::from_millis(2500)).await;
    assert!(
        outage.others() >= 1,
        "no-signal frames during the outage: {outage:?}"
    );
    assert!(outage.camera_frames() <= 2, "{outage:?}");
    assert_eq!(srv.server.watchers.len(), 2, "viewers stay registered");

    cam.launch();
    srv.wait_journal(|l| l.contains("SOURCE-BACK"))
        .await
        .unwrap();
    let after = watch_seed(&mut seed, Duration::from_secs(2)).await;
    assert!(after.camera_frames() >= 20, "{after:?}");
    // The real viewer watched all along, and shows the camera again.
    stop_client.cancel();
    let summary = timeout(IO_TIMEOUT, client).await.unwrap().unwrap().unwrap();
    assert_eq!(summary.decode_failed, 0, "{summary}");
    assert!(summary.decoded >= 60, "{summary}");
    let image = latest.take().expect("the viewer decoded a picture");
    assert_eq!((image.width, image.height), (CAM_W, CAM_H), "{summary}");
    let journal = srv.stop().await.unwrap();
    let order: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("SOURCE-"))
        .map(|l| {
            if l.contains("SOURCE-LOST") {
                "lost"
            } else {
                "back"
            }
        })
        .collect();
    assert_eq!(order, ["lost", "back"], "{journal:#?}");
}

/// An H.264 camera with no JPEG viewer is passed through and never decoded; one seed viewer
/// makes it decode every unit (after a catch-up from the GOP: its first picture comes at once,
/// not at the camera's next keyframe); after the viewer leaves, decoding stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_decoded_only_while_a_viewer_wants_pictures() {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&[]);
    let srv = start(&cam.url("/h264", None), RtspTransport::Tcp).await;
    let feed = srv.server.first_camera().capture.h264.clone();
    wait_captured(&srv, 15).await;

    // Nobody wants pictures: every unit passed through, none decoded.
    let (captured, passed, decodes) = h264_growth(&srv, Duration::from_secs(2)).await;
    eprintln!("no viewer: captured {captured} passed through {passed} decodes {decodes}");
    assert!(captured >= 45, "{captured} frames in 2 s");
    assert_eq!(passed, captured);
    assert_eq!(h264_counters(&srv).2, 0, "no decode without a viewer");
    assert!(feed.is_passthrough());
    assert!(!feed.encoder_running());

    // A seed viewer: the camera's pictures at once, then one decode per unit.
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let first = watch_seed(&mut seed, Duration::from_millis(500)).await;
    assert!(
        first.camera_frames() > 0,
        "a camera picture within 0.5 s of joining: {first:?}"
    );
    let before = h264_counters(&srv);
    let seen = watch_seed(&mut seed, Duration::from_secs(3)).await;
    let after = h264_counters(&srv);
    let (captured, decodes) = (after.0 - before.0, after.2 - before.2);
    eprintln!(
        "one viewer: captured {captured} decodes {decodes} in 3 s ({} since joining, with \
         the catch-up); seen {seen:?}",
        after.2
    );
    assert!(captured >= 70, "{captured}");
    assert!(
        decodes.abs_diff(captured) <= 2,
        "one decode per unit: {decodes} for {captured}"
    );
    assert!(
        seen.camera_frames() as f64 >= 0.8 * captured as f64,
        "{seen:?} of {captured}"
    );

    // The viewer leaves (`end`, as seed 003 on Esc): decoding stops (a unit in flight may
    // still finish, hence the pause before measuring).
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let (_, from) = timeout(IO_TIMEOUT, seed.udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    seed.end(from).await.unwrap();
    srv.wait_journal(|l| l.contains(" LEAVE ")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (captured, passed, decodes) = h264_growth(&srv, Duration::from_secs(2)).await;
    eprintln!("after leaving: captured {captured} passed through {passed} decodes {decodes}");
    assert!(captured >= 45, "{captured}");
    assert_eq!(passed, captured);
    assert_eq!(decodes, 0, "decoding stopped with the last viewer");
    srv.stop().await.unwrap();
}

/// Motion detection alone (no JPEG viewer) on a passed-through H.264 camera decodes its
/// keyframes and nothing else (`--motion-h264 keyframes`, the default), and the detector
/// analyses each; a seed viewer then makes it decode every unit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_alone_decodes_a_passed_through_camera_s_keyframes() {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&["--key-int", "10"]);
    let opts = ServerOpts {
        motion: Some((2, Duration::from_secs(3))),
        ..ServerOpts::sized(640, 480)
    };
    let srv = start_server_with(opts, source(&cam.url("/h264", None), RtspTransport::Tcp))
        .await
        .expect("server starts");
    let camera = srv.server.first_camera();
    wait_captured(&srv, 15).await;
    // The camera's keyframes, counted from its feed over the window.
    let (_, mut units) = camera.capture.h264.join();
    let analysed = || camera.motion.analysed.load(Relaxed);
    // A keyframe decoded when the window opens may still be on its way to the detector.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while units.try_recv().is_ok() {}
    let (before, analysed_before) = (h264_counters(&srv), analysed());
    let mut keyframes = 0u64;
    let window = Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(unit)) = tokio::time::timeout_at(window, units.recv()).await {
        keyframes += u64::from(unit.au.is_keyframe());
    }
    let after = h264_counters(&srv);
    let (captured, passed, decodes) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let analysed = analysed() - analysed_before;
    eprintln!(
        "motion alone: captured {captured} passed through {passed} keyframes {keyframes} \
         decodes {decodes} analysed {analysed}"
    );
    assert!(captured >= 70, "{captured} frames in 3 s");
    assert_eq!(passed, captured);
    assert!(
        keyframes >= 6 && keyframes * 3 <= captured,
        "{keyframes} keyframes in {captured} frames"
    );
    assert!(
        decodes.abs_diff(keyframes) <= 1,
        "{decodes} decodes for {keyframes} keyframes ({captured} frames)"
    );
    assert!(
        analysed.abs_diff(keyframes) <= 1,
        "{analysed} analysed for {keyframes} keyframes"
    );

    // A JPEG viewer wants every picture: every unit is decoded again.
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    watch_seed(&mut seed, Duration::from_millis(500)).await;
    let before = h264_counters(&srv);
    let seen = watch_seed(&mut seed, Duration::from_secs(2)).await;
    let after = h264_counters(&srv);
    let (captured, decodes) = (after.0 - before.0, after.2 - before.2);
    eprintln!("with a viewer: captured {captured} decodes {decodes} seen {seen:?}");
    assert!(captured >= 45, "{captured}");
    assert!(decodes.abs_diff(captured) <= 2, "{decodes} for {captured}");
    srv.stop().await.unwrap();
}

/// surv reads surv: server A serves its test pattern as RTSP H.264; server B's camera is
/// `rtsp://A/main`. B passes A's units through without decoding while B has no JPEG viewer,
/// and an RTSP player on B (ffmpeg) decodes 60 frames of it; a JPEG viewer on B then makes B
/// decode each unit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surv_reads_surv_and_passes_h264_through() {
    let _serial = heavy().await;
    let a = start_server(ServerOpts {
        rtsp: true,
        ..ServerOpts::sized(320, 240)
    })
    .await
    .unwrap();
    let a_url = format!("rtsp://{}/main", a.rtsp_addr.unwrap());
    let b = start_server_with(
        ServerOpts {
            rtsp: true,
            ..ServerOpts::sized(640, 480)
        },
        source(&a_url, RtspTransport::Tcp),
    )
    .await
    .unwrap();
    wait_captured(&b, 15).await;
    let (captured, passed, _) = h264_growth(&b, Duration::from_secs(2)).await;
    eprintln!("B, no watcher: captured {captured} passed through {passed}");
    assert!(captured >= 45, "{captured}");
    assert_eq!(passed, captured);
    assert_eq!(h264_counters(&b).2, 0, "B never decoded");
    let b_feed = b.server.first_camera().capture.h264.clone();
    assert!(b_feed.is_passthrough());

    // ffmpeg reads B's RTSP: A's H.264, decoded by ffmpeg, not by B.
    let b_url = format!("rtsp://{}/main", b.rtsp_addr.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-rtsp_transport", "tcp", "-i", &b_url])
            .args(["-frames:v", "60", "-f", "framecrc", "-"]);
        surv_tests::child::output_within(&mut cmd, Duration::from_secs(40))
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        out.status.success() && frames == 60,
        "{frames} frames: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_stats = &b.server.first_camera().capture.stats;
    assert_eq!(
        b_stats.decodes.load(Relaxed),
        0,
        "B passed through for ffmpeg"
    );
    assert_eq!(
        b_stats.h264_encodes.load(Relaxed),
        0,
        "B never encoded H.264"
    );
    assert!(!b_feed.encoder_running());

    // A JPEG viewer on B: one decode per unit.
    let seed = RawViewer::register(b.addr, Form::Seed).await.unwrap();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let first = timeout(Duration::from_secs(1), seed.udp.recv_from(&mut buf)).await;
    assert!(first.is_ok(), "a picture within 1 s of joining");
    let before = h264_counters(&b);
    let until = Instant::now() + Duration::from_secs(3);
    let mut pictures = 0u64;
    while let Ok(got) = tokio::time::timeout_at(until, seed.udp.recv_from(&mut buf)).await {
        let (_, from) = got.unwrap();
        pictures += 1;
        seed.udp
            .send_to(&Ack::Continue(None).encode(), from)
            .await
            .unwrap();
    }
    let after = h264_counters(&b);
    let (captured, decodes) = (after.0 - before.0, after.2 - before.2);
    eprintln!("B, one viewer: captured {captured} decodes {decodes} pictures {pictures}");
    assert!(captured >= 70, "{captured}");
    assert!(decodes.abs_diff(captured) <= 2, "{decodes} for {captured}");
    assert!(pictures as f64 >= 0.8 * captured as f64, "{pictures}");
    drop(seed);

    // GStreamer reads B's RTP/JPEG mount: the session wants pictures, so B decodes for it.
    let decodes_before = h264_counters(&b).2;
    let mjpeg = format!("rtsp://{}/main/mjpeg", b.rtsp_addr.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q").args(
            format!(
                "rtspsrc location={mjpeg} protocols=tcp latency=0 ! rtpjpegdepay ! jpegdec ! fakesink num-buffers=30"
            )
            .split(' '),
        );
        surv_tests::child::output_within(&mut cmd, Duration::from_secs(40))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h264_counters(&b).2 > decodes_before, "B decoded for /mjpeg");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// A camera with a keyframe only every 10 s: a player joining surv's RTSP between two of them
/// starts at once, from the cached GOP (the frames since the last keyframe), instead of waiting
/// up to 10 s for the camera's next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_joining_a_passed_through_camera_starts_before_its_next_keyframe() {
    if !standin_available() {
        return;
    }
    let _serial = heavy().await;
    let cam = Camera::start(&["--key-int", "300"]);
    let srv = start_server_with(
        ServerOpts {
            rtsp: true,
            ..ServerOpts::sized(640, 480)
        },
        source(&cam.url("/h264", None), RtspTransport::Tcp),
    )
    .await
    .expect("server starts");
    // Two seconds into the camera's 10 s GOP.
    wait_captured(&srv, 60).await;
    let url = format!("rtsp://{}/main", srv.rtsp_addr.unwrap());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-rtsp_transport", "tcp", "-i", &url])
            .args(["-frames:v", "10", "-f", "framecrc", "-"]);
        surv_tests::child::output_within(&mut cmd, Duration::from_secs(40))
    })
    .await
    .unwrap()
    .unwrap();
    let took = started.elapsed();
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert!(
        out.status.success() && frames == 10,
        "{frames} frames: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let captured = srv
        .server
        .first_camera()
        .capture
        .stats
        .captured
        .load(Relaxed);
    eprintln!("10 frames decoded {took:?} after joining, camera at frame {captured}");
    // The camera's next keyframe comes at its frame 300; ffmpeg needs a keyframe to decode.
    assert!(
        captured < 300,
        "ffmpeg waited for the camera's next keyframe: {captured}"
    );
    srv.stop().await.unwrap();
}
