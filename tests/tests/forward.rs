//! `--forward rtp://HOST:PORT` end to end: a server pushes its camera's H.264 to a loopback
//! port; GStreamer (`sdpdemux`) and ffmpeg read it with nothing but the SDP from
//! `/cam/<name>/stream.sdp` (behind `--token` like every HTTP route); a reload that changes
//! the destination restarts the camera, and the new forward sends there.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_server::app::CameraPlan;
use surv_server::auth::Token;
use surv_server::Config;
use surv_tests::child::output_within;
use surv_tests::http::Limits;
use surv_tests::{
    capture_config, heavy, start_server_cameras, test_pattern, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A receiver gets this long to do its job (it waits up to a GOP, 2 s, for a keyframe).
const PLAYER_LIMIT: Duration = Duration::from_secs(40);
const TOKEN: &str = "fwd-s3cret";

/// An even UDP port of 127.0.0.1 whose next port is free too, a moment ago.
fn free_even_port() -> u16 {
    loop {
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
        let port = rtp.local_addr().expect("its address").port();
        if port.is_multiple_of(2)
            && port < u16::MAX
            && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
        {
            return port;
        }
    }
}

/// A server whose camera `main` (320x240) forwards to `dest`, with a second camera `door`
/// without a forward, `--token`, and HTTP on a free port.
async fn forwarding_server(dest: SocketAddr) -> (TestServer, SocketAddr, JoinHandle<()>) {
    let opts = ServerOpts {
        forward: vec![dest],
        config: Config {
            token: Some(Token::new(TOKEN).unwrap()),
            ..Config::default()
        },
        ..ServerOpts::sized(320, 240)
    };
    let srv = start_server_cameras(
        opts,
        vec![
            ("main", test_pattern(320, 240, 30)),
            ("door", test_pattern(160, 96, 30)),
        ],
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let task = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));
    (srv, http, task)
}

/// `GET path`: the status, the Content-Type and the body.
async fn get(http: SocketAddr, path: &str) -> (u16, String, String) {
    let r = surv_tests::http::get(http, path, Limits::new(IO_TIMEOUT, 1 << 20))
        .await
        .unwrap();
    let content_type = r.header("content-type").unwrap_or_default().to_string();
    (r.status, content_type, String::from_utf8(r.body).unwrap())
}

/// Runs a receiver (blocking) off the runtime; its output.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || output_within(&mut cmd, PLAYER_LIMIT))
        .await
        .unwrap()
        .unwrap()
}

/// The SDP at `/cam/main/stream.sdp` names the destination and the parameter sets; with it
/// alone GStreamer decodes 60 frames and ffmpeg 60; the forward counts what it sent, no send
/// error, and lets go of its H.264 demand when the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_and_ffmpeg_play_the_forward_from_its_sdp() {
    let _serial = heavy().await;
    let port = free_even_port();
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let (srv, http, web) = forwarding_server(dest).await;

    // Behind --token as every route; 404 for a camera without a forward, or none at all.
    let (status, ..) = get(http, "/cam/main/stream.sdp").await;
    assert_eq!(status, 401);
    let with_token = |path: &str| format!("{path}?token={TOKEN}");
    for path in ["/cam/door/stream.sdp", "/cam/nope/stream.sdp"] {
        let (status, _, body) = get(http, &with_token(path)).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, content_type, sdp) = get(http, &with_token("/cam/main/stream.sdp")).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/sdp"),
        "{sdp}"
    );
    for line in [
        "c=IN IP4 127.0.0.1\r\n".to_string(),
        format!("m=video {port} RTP/AVP 96\r\n"),
        "a=rtpmap:96 H264/90000\r\n".to_string(),
    ] {
        assert!(sdp.contains(&line), "{line:?} missing from:\n{sdp}");
    }
    assert!(
        sdp.contains("a=fmtp:96 packetization-mode=1;profile-level-id=")
            && sdp.contains(";sprop-parameter-sets="),
        "{sdp}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.sdp");
    std::fs::write(&file, &sdp).unwrap();
    let file = file.to_str().unwrap().to_string();

    let pipeline = format!(
        "filesrc location={file} ! sdpdemux ! rtph264depay ! avdec_h264 ! fakesink num-buffers=60"
    );
    let mut gst = Command::new("gst-launch-1.0");
    gst.arg("-q").args(pipeline.split(' '));
    let out = run(gst).await;
    assert!(
        out.status.success(),
        "{pipeline}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut ffmpeg = Command::new("ffmpeg");
    ffmpeg
        .args([
            "-v",
            "error",
            "-protocol_whitelist",
            "file,udp,rtp",
            "-i",
            &file,
        ])
        .args(["-frames:v", "60", "-f", "framecrc", "-"]);
    let out = run(ffmpeg).await;
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert!(
        out.status.success() && frames == 60,
        "ffmpeg: {frames} frames; {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let camera = srv.server.cameras.get("main").unwrap();
    let forward = camera.forwards.get().unwrap()[0].clone();
    assert_eq!(forward.dest, dest);
    assert!(srv
        .server
        .cameras
        .get("door")
        .unwrap()
        .forwards
        .get()
        .is_none());
    let s = &forward.stats;
    // Both receivers took 60 frames, at 30 fps, one after the other.
    assert!(s.frames.load(Relaxed) >= 120, "{s:?}");
    assert!(s.packets.load(Relaxed) >= s.frames.load(Relaxed), "{s:?}");
    assert!(s.sender_reports.load(Relaxed) >= 1, "{s:?}");
    assert_eq!(s.send_errors.load(Relaxed), 0, "{s:?}");
    assert_eq!(camera.capture.h264.demanded(), 1);
    // The same counters in /status and /metrics, for the camera that forwards.
    let (status, _, body) = get(http, &with_token("/status")).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let main = &json["cameras"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["forward"]["destination"], dest.to_string());
    assert!(main["forward"]["frames"].as_u64().unwrap() >= 120, "{main}");
    assert_eq!(main["forwards"][0], main["forward"], "{main}");
    assert!(json["cameras"][1].get("forward").is_none(), "{body}");
    let (_, _, metrics) = get(http, &with_token("/metrics")).await;
    let frames: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "surv_forward_frames_total{{camera=\"main\",destination=\"{dest}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no forward frames in /metrics:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(frames >= 120, "{frames}");
    assert!(!metrics.contains("surv_forward_frames_total{camera=\"door\""));

    srv.shutdown.cancel();
    timeout(IO_TIMEOUT, web).await.unwrap().unwrap();
    srv.stop().await.unwrap();
    assert_eq!(camera.capture.h264.demanded(), 0);
    let frames = s.frames.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.frames.load(Relaxed),
        frames,
        "the forward ended with the server"
    );
}

/// The first RTP packet's SSRC on `socket`, within the timeout.
async fn first_ssrc(socket: &UdpSocket) -> u32 {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = timeout(IO_TIMEOUT, socket.recv(&mut buf))
            .await
            .expect("RTP within the timeout")
            .unwrap();
        if let Some((h, _)) = surv_server::rtp::RtpHeader::parse(&buf[..n]) {
            assert_eq!(h.payload_type, 96);
            return h.ssrc;
        }
    }
}

/// A reload that changes a camera's forward restarts the camera: the old destination stops
/// getting packets, the new one gets them (from a new SSRC), and the SDP names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_forward() {
    let _serial = heavy().await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (dest_a, dest_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let srv = start_server_cameras(
        ServerOpts {
            forward: vec![dest_a],
            ..ServerOpts::sized(160, 96)
        },
        vec![("main", test_pattern(160, 96, 30))],
    )
    .await
    .unwrap();
    let ssrc_a = first_ssrc(&a).await;

    let moved = CameraPlan {
        forward: vec![dest_b],
        ..CameraPlan::given("main", test_pattern(160, 96, 30), capture_config(160, 96))
    };
    let done = srv.app.reload(vec![moved]).await;
    assert_eq!(done.restarted, ["main"], "{done:?}");
    let ssrc_b = first_ssrc(&b).await;
    assert_ne!(ssrc_a, ssrc_b);
    // Nothing more to the old destination, once what it was sent before the restart is read.
    let mut buf = vec![0u8; 2048];
    while a.try_recv(&mut buf).is_ok() {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.try_recv(&mut buf).is_err(),
        "the old destination still gets RTP"
    );
    let camera = srv.server.cameras.get("main").unwrap();
    assert_eq!(camera.forwards.get().unwrap()[0].dest, dest_b);
    let sdp = camera.forwards.get().unwrap()[0]
        .sdp("main", &camera.capture.h264, 30)
        .await;
    assert!(
        sdp.contains(&format!("m=video {} RTP/AVP 96", dest_b.port())),
        "{sdp}"
    );
    srv.stop().await.unwrap();
}

/// Two destinations (two Janus edges): each gets its own RTP stream (its own SSRC and
/// counters) of the camera's one H.264 encode, `/status` and `/metrics` count each, and the
/// SDP of the second is at `stream.sdp?n=2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_destinations_get_their_own_streams_of_one_encode() {
    let _serial = heavy().await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (dest_a, dest_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let srv = start_server_cameras(
        ServerOpts {
            forward: vec![dest_a, dest_b],
            ..ServerOpts::sized(160, 96)
        },
        vec![("main", test_pattern(160, 96, 30))],
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let web = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));
    let (ssrc_a, ssrc_b) = (first_ssrc(&a).await, first_ssrc(&b).await);
    assert_ne!(ssrc_a, ssrc_b, "one stream per destination");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let camera = srv.server.cameras.get("main").unwrap();
    let forwards = camera.forwards.get().unwrap().clone();
    assert_eq!(
        forwards.iter().map(|f| f.dest).collect::<Vec<_>>(),
        [dest_a, dest_b]
    );
    let frames: Vec<u64> = forwards
        .iter()
        .map(|f| f.stats.frames.load(Relaxed))
        .collect();
    assert!(frames.iter().all(|&n| n >= 20), "{frames:?}");
    // One encode for both: the encoder made about as many pictures as one forward sent.
    let encodes = camera.capture.stats.h264_encodes.load(Relaxed);
    let most = frames.iter().copied().max().unwrap();
    assert!(
        encodes <= most + 10,
        "{encodes} encodes for {frames:?} frames forwarded"
    );
    assert!(forwards
        .iter()
        .all(|f| f.stats.send_errors.load(Relaxed) == 0));

    let (status, _, body) = get(http, "/status").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = json["cameras"][0]["forwards"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{body}");
    assert_eq!(listed[1]["destination"], dest_b.to_string());
    let (_, _, metrics) = get(http, "/metrics").await;
    for dest in [dest_a, dest_b] {
        let line = format!("surv_forward_frames_total{{camera=\"main\",destination=\"{dest}\"}} ");
        assert!(metrics.contains(&line), "{line:?} missing from:\n{metrics}");
    }
    let (status, _, sdp) = get(http, "/cam/main/stream.sdp?n=2").await;
    assert_eq!(status, 200, "{sdp}");
    assert!(
        sdp.contains(&format!("m=video {} RTP/AVP 96", dest_b.port())),
        "{sdp}"
    );
    for n in ["0", "3", "x"] {
        let (status, _, body) = get(http, &format!("/cam/main/stream.sdp?n={n}")).await;
        assert!(status == 404 || status == 400, "n={n}: {status} {body}");
    }
    srv.shutdown.cancel();
    timeout(IO_TIMEOUT, web).await.unwrap().unwrap();
    srv.stop().await.unwrap();
}
