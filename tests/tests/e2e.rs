//! End to end: real servers and real viewers on loopback.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_proto::Form;
use surv_server::Config;
use surv_tests::client_config;
use surv_tests::{
    heavy, share, start_server, start_server_with, try_registration, AckStyle, RawViewer,
    ServerOpts, IO_TIMEOUT,
};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// N surv-client viewers for 5 s at 640x480@30: each gets ≥ 90 % of frames, all decode, and the
/// server encoded each captured frame exactly once however many viewers there were.
async fn viewers_get_the_full_stream(n: usize) {
    let _serial = heavy().await;
    let mut srv = start_server(ServerOpts::default()).await.unwrap();
    let run = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let cfg = client_config(srv.addr, run.as_secs_f64());
        tasks.push(tokio::spawn(surv_client::run(
            cfg,
            None,
            CancellationToken::new(),
        )));
    }
    for t in tasks {
        let s = timeout(run + IO_TIMEOUT, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let got = share(s.received, 30, run);
        assert!(
            got >= 0.90,
            "a viewer got {:.1}% of frames: {s}",
            got * 100.0
        );
        assert_eq!(s.decoded + s.decode_skipped, s.received, "{s}");
        assert_eq!(s.decode_failed, 0, "{s}");
        assert_eq!(
            s.decoded, s.received,
            "every frame received was decoded: {s}"
        );
        assert_eq!(s.ended_by, "time limit");
    }
    srv.stop_capture().await;
    let c = &srv.server.first_camera().capture.stats;
    let (captured, published) = (c.captured.load(Relaxed), c.published.load(Relaxed));
    assert!(captured >= 150, "captured {captured}");
    assert_eq!(
        c.passed_through.load(Relaxed),
        0,
        "the test pattern is encoded"
    );
    assert_eq!(
        published, captured,
        "one encode per captured frame, not per viewer"
    );
    // Adapting the quality may re-encode a frame, but never once per viewer.
    assert!(c.encode_attempts.load(Relaxed) < captured + 20, "{c:?}");
    let sent = srv.server.stats.frames_sent.load(Relaxed);
    assert!(
        sent >= (n as u64) * 135,
        "sent {sent} datagrams to {n} viewers"
    );
    // A viewer's `end` datagram may still be on its way when its task returns: wait for the
    // server to log every LEAVE before stopping it (a stop would log the rest as `shutdown`).
    let leaves = srv
        .wait_journal_count(n, |l| l.contains(" LEAVE ") && l.contains("reason=end"))
        .await
        .unwrap();
    let journal = srv.stop().await.unwrap();
    assert_eq!(leaves.len(), n, "each viewer's `end` logged: {journal:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_viewer_gets_the_full_stream() {
    viewers_get_the_full_stream(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_viewers_get_the_full_stream() {
    viewers_get_the_full_stream(16).await;
}

/// Exactly what seed 003's viewer does: bare port over TCP, raw JPEG datagrams decoded whole,
/// `continue` after each, `end` to leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_viewer_streams_and_its_end_is_logged() {
    let _serial = heavy().await;
    let srv = start_server(ServerOpts::default()).await.unwrap();
    let mut v = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let got = v
        .receive(Duration::from_secs(2), u64::MAX, AckStyle::Seed, 0)
        .await
        .unwrap();
    assert!(got.datagrams >= 50, "{got:?}");
    assert_eq!(got.decoded, got.datagrams, "every datagram is a whole JPEG");
    v.end(got.from.unwrap()).await.unwrap();
    let leave = srv.wait_journal(|l| l.contains(" LEAVE ")).await.unwrap();
    assert!(
        leave.contains("form=seed") && leave.contains("reason=end"),
        "{leave}"
    );
    let join = srv
        .journal()
        .into_iter()
        .find(|l| l.contains(" JOIN "))
        .unwrap();
    assert!(
        join.contains(&format!(
            "viewer=127.0.0.1:{}",
            v.udp.local_addr().unwrap().port()
        )),
        "{join}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_viewer_is_reaped_after_receiving_only_a_few_datagrams() {
    let opts = ServerOpts {
        width: 160,
        height: 90,
        config: Config {
            viewer_timeout: Duration::from_secs(2),
            ..Config::default()
        },
        ..ServerOpts::default()
    };
    let srv = start_server(opts).await.unwrap();
    // Seed form (nothing proves it is there): 4 in flight, a probe after 250 ms and then every
    // 100 ms up to 16 datagrams, then backed-off probes; against 60 frames captured meanwhile.
    // SURV/1: its hello makes it alive for a second (4 frames per 250 ms, written off
    // unacked), then backed-off probes.
    for (form, most) in [(Form::Seed, 20), (Form::V1, 20)] {
        let mut v = RawViewer::register(srv.addr, form).await.unwrap();
        let got = v
            .receive(Duration::from_secs(3), u64::MAX, AckStyle::Silent, 0)
            .await
            .unwrap();
        assert!((1..=most).contains(&got.datagrams), "{form:?}: {got:?}");
    }
    let leaves: Vec<String> = srv
        .journal()
        .into_iter()
        .filter(|l| l.contains(" LEAVE "))
        .collect();
    assert_eq!(leaves.len(), 2, "{leaves:#?}");
    assert!(
        leaves.iter().all(|l| l.contains("reason=timeout")),
        "{leaves:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_losing_30_percent_keep_receiving() {
    let _serial = heavy().await;
    let srv = start_server(ServerOpts::sized(320, 240)).await.unwrap();
    for (form, style) in [(Form::V1, AckStyle::Seq), (Form::Seed, AckStyle::Seed)] {
        let mut v = RawViewer::register(srv.addr, form).await.unwrap();
        let run = Duration::from_secs(3);
        let got = v.receive(run, u64::MAX, style, 3).await.unwrap();
        // 70 % of what was sent arrives; the window must not shrink to a stall.
        let kept = share(got.datagrams, 30, run);
        eprintln!(
            "{style:?} acks, 30% dropped: kept {:.0}% of captured frames, longest gap {:?}",
            kept * 100.0,
            got.longest_gap
        );
        assert!(
            kept >= 0.6,
            "{style:?}: kept {:.0}% of frames: {got:?}",
            kept * 100.0
        );
        // The picture never froze for a second, and was still moving when the run ended.
        let since_last = got.last_at.map(|t| t.elapsed());
        assert!(
            got.longest_gap < Duration::from_secs(1),
            "{style:?}: no frame for {:?}: {got:?}",
            got.longest_gap
        );
        assert!(
            since_last.is_some_and(|d| d < Duration::from_secs(1)),
            "{style:?}: the last frame came {since_last:?} before the end: {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_without_disturbing_viewers() {
    let _serial = heavy().await;
    let opts = ServerOpts {
        config: Config {
            register_timeout: Duration::from_secs(1),
            ..Config::default()
        },
        ..ServerOpts::default()
    };
    let srv = start_server(opts).await.unwrap();
    let mut watcher = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let addr = srv.addr;
    let attack = tokio::spawn(async move {
        let cases: &[(&[u8], &str)] = &[
            (b"hello\n", "neither a UDP port"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "neither a UDP port"),
            (&[b'7'; 100], "over 64 bytes"),
            (b"70000", "not in 1..=65535"),
            (b"0", "not in 1..=65535"),
            (b"SURV/1 0\n", "not in 1..=65535"),
            (b"SURV/2 5000\n", "unsupported protocol version"),
            (b"", "registration timeout"), // connects, says nothing
            (b"SURV/1 50", "registration timeout"), // never finishes its line
        ];
        for (bytes, want) in cases {
            let (reply, closed) = try_registration(addr, bytes).await.unwrap();
            assert!(closed, "{bytes:?}: connection left open");
            assert!(
                reply.starts_with("ERR SURV/1 ") && reply.contains(want),
                "{bytes:?}: {reply:?}"
            );
        }
        cases.len()
    });
    let run = Duration::from_secs(4);
    let got = watcher
        .receive(run, u64::MAX, AckStyle::Seq, 0)
        .await
        .unwrap();
    let n = timeout(IO_TIMEOUT, attack).await.unwrap().unwrap();
    assert!(
        share(got.datagrams, 30, run) >= 0.9,
        "the streaming viewer was disturbed: {got:?}"
    );
    assert_eq!(srv.server.stats.refusals.total(), n as u64);
    let refusals = srv
        .journal()
        .iter()
        .filter(|l| l.contains(" REFUSE "))
        .count();
    assert_eq!(refusals, n);
    assert_eq!(srv.server.watchers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_over_max_viewers_is_told_why() {
    let opts = ServerOpts {
        width: 160,
        height: 90,
        config: Config {
            max_viewers: 2,
            ..Config::default()
        },
        ..ServerOpts::default()
    };
    let srv = start_server(opts).await.unwrap();
    let _a = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let _b = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    srv.wait_sessions(2).await.unwrap();
    let refused = surv_client::run(client_config(srv.addr, 1.0), None, CancellationToken::new());
    let err = timeout(IO_TIMEOUT, refused)
        .await
        .expect("the refused viewer did not return")
        .unwrap_err();
    assert!(
        matches!(&err, surv_client::ClientError::Refused(r) if r.contains("server full (2 viewers)")),
        "{err}"
    );
    srv.wait_journal(|l| l.contains(" REFUSE ") && l.contains("server full"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_end_from_another_port_has_no_effect() {
    let srv = start_server(ServerOpts::sized(160, 90)).await.unwrap();
    let mut v = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let first = v
        .receive(Duration::from_secs(1), 5, AckStyle::Seed, 0)
        .await
        .unwrap();
    let session_udp = first.from.unwrap();
    let spoofer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..3 {
        spoofer.send_to(b"end", session_udp).await.unwrap();
    }
    let later = v
        .receive(Duration::from_secs(1), u64::MAX, AckStyle::Seed, 0)
        .await
        .unwrap();
    assert!(later.datagrams >= 20, "stream went on: {later:?}");
    assert_eq!(srv.server.stats.foreign_datagrams.load(Relaxed), 3);
    assert!(srv.journal().iter().all(|l| !l.contains(" LEAVE ")));
}

/// No datagram over the cap, at sizes where the seed died with EMSGSIZE and with a 1400-byte cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_datagram_exceeds_the_cap() {
    let _serial = heavy().await;
    for (width, height, cap) in [(640, 480, 65_000), (1280, 720, 65_000), (640, 480, 1400)] {
        let srv = start_server(ServerOpts {
            width,
            height,
            max_datagram_bytes: cap,
            ..ServerOpts::default()
        })
        .await
        .unwrap();
        let mut v = RawViewer::register(srv.addr, Form::V1).await.unwrap();
        let got = v
            .receive(Duration::from_secs(2), u64::MAX, AckStyle::Seq, 0)
            .await
            .unwrap();
        assert!(got.datagrams >= 45, "{width}x{height} cap {cap}: {got:?}");
        assert!(
            got.largest <= cap,
            "{width}x{height}: a {}-byte datagram over the {cap} cap",
            got.largest
        );
        assert_eq!(got.decoded, got.datagrams, "{width}x{height} cap {cap}");
        srv.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_tcp_and_shutdown_are_logged_with_their_reasons() {
    let srv = start_server(ServerOpts::sized(160, 90)).await.unwrap();
    let mut quitter = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    quitter
        .receive(Duration::from_secs(1), 3, AckStyle::Seed, 0)
        .await
        .unwrap();
    drop(quitter);
    let leave = srv.wait_journal(|l| l.contains(" LEAVE ")).await.unwrap();
    assert!(leave.contains("reason=closed"), "{leave}");

    let mut stayers = Vec::new();
    for form in [Form::Seed, Form::V1, Form::V1] {
        let mut v = RawViewer::register(srv.addr, form).await.unwrap();
        v.receive(Duration::from_secs(1), 3, AckStyle::Seed, 0)
            .await
            .unwrap();
        stayers.push(v);
    }
    let journal = srv.stop().await.unwrap();
    let shutdowns = journal
        .iter()
        .filter(|l| l.contains(" LEAVE ") && l.contains("reason=shutdown"))
        .count();
    assert_eq!(shutdowns, 3, "{journal:#?}");
}

/// surv-client records a live stream: segments rotate on time, every frame decodes with ffmpeg's
/// strictest check, and each segment plays for as long as it was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_avi_segments_rotate_and_play_at_real_speed() {
    let _serial = heavy().await;
    // Capture times from an ideal 30 fps clock, so that what plays is what the recorder was
    // given, however the machine scheduled the test pattern.
    let srv = start_server_with(
        ServerOpts::sized(320, 240),
        surv_tests::ClockedPattern::source(320, 240, 30),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = client_config(srv.addr, 3.5);
    cfg.record = Some(surv_client::recorder::RecorderConfig {
        dir: dir.path().into(),
        segment: Duration::from_secs(1),
        ..Default::default()
    });
    let run = surv_client::run(cfg, None, CancellationToken::new());
    let s = timeout(Duration::from_secs_f64(3.5) + IO_TIMEOUT, run)
        .await
        .expect("the recording viewer did not stop")
        .unwrap();
    assert_eq!(s.recorded, s.received, "{s}");
    assert!(
        s.segments.len() >= 4,
        "3.5 s in 1 s segments: {:?}",
        s.segments
    );
    let mut frames = 0;
    for (i, seg) in s.segments.iter().enumerate() {
        assert_eq!(
            seg.extension().and_then(|e| e.to_str()),
            Some("avi"),
            "closed segments lose .part"
        );
        surv_tests::ffmpeg_check(seg).unwrap();
        let (codec, n, secs) = surv_tests::ffprobe(seg).unwrap();
        assert_eq!(codec, "mjpeg");
        frames += n;
        // Real speed: n frames captured at 30 fps play for n/30 s (±2 %), and for as long as
        // the frames the viewer missed on a busy machine took, if any (s.lost in the run).
        let real = n as f64 / 30.0;
        let with_gaps = (n + s.lost) as f64 / 30.0;
        assert!(
            secs >= real * 0.98 && secs <= with_gaps * 1.02,
            "{}: {secs} s for {n} frames ({} lost in the run)",
            seg.display(),
            s.lost
        );
        if i + 1 < s.segments.len() {
            // A full segment holds 1 s of capture time (a frame more or less at the boundary,
            // fewer where frames were missed).
            let fewest = 29u64.saturating_sub(s.lost);
            assert!((fewest..=31).contains(&n), "{}: {n} frames", seg.display());
        }
    }
    assert_eq!(frames, s.recorded, "every recorded frame is in a segment");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
