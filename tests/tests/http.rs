//! The HTTP server end to end, with real clients on loopback: ffmpeg reading `/stream.mjpg`,
//! raw MJPEG readers that keep up, read slowly or stop reading, `/snapshot.jpg`, `/status`
//! and `/metrics` as a person or a scraper would read them, and the journal's JOIN/LEAVE.
//! Every test here takes the `heavy()` lock: one of them bounds the process's memory growth,
//! which a server of another test starting alongside would confound.

#[path = "http/client.rs"]
mod client;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine as _;
use surv_proto::FrameTag;
use surv_server::auth::Token;
use surv_server::{Config, RefusalCause};
use surv_tests::{ffmpeg_check, heavy, mjpeg_stream, probe, ServerOpts, IO_TIMEOUT};
use tokio::time::Instant;

use client::{
    decode, ffmpeg_reads, get, get_with, parse_metrics, read_slowly, rss_bytes, share, start_web,
    tagged_seqs, MjpegReader,
};

/// ffmpeg, an independent MJPEG client, reads `/stream.mjpg` (both part layouts): every frame
/// decodes strictly, and it got ≥ 90 % of the frames published while it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_reads_the_stream_at_the_full_rate() {
    let _serial = heavy().await;
    let web = start_web(ServerOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for query in ["", "?advance_headers=1"] {
        let url = format!("http://{}/stream.mjpg{query}", web.http);
        let out = dir.path().join("got.avi");
        let frames = 60;
        let run = {
            let (url, out) = (url.clone(), out.clone());
            tokio::task::spawn_blocking(move || ffmpeg_reads(&url, frames, &out))
        };
        run.await.unwrap().unwrap();
        ffmpeg_check(&out).unwrap();
        let p = probe(&out).unwrap();
        assert_eq!(
            (p.width, p.height, p.frames),
            (640, 480, u64::from(frames)),
            "{url}"
        );
        let seqs = tagged_seqs(&mjpeg_stream(&out).unwrap());
        assert_eq!(seqs.len(), frames as usize, "{url}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{url}: {seqs:?}");
        assert!(
            share(&seqs) >= 0.90,
            "{url}: {:.1} %: {seqs:?}",
            share(&seqs) * 100.0
        );
    }
    let journal = web.stop().await;
    let leaves: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("LEAVE") && l.contains("form=http"))
        .collect();
    assert_eq!(leaves.len(), 2, "{journal:#?}");
    assert!(
        leaves.iter().all(|l| l.contains("reason=closed")),
        "{leaves:#?}"
    );
}

/// `/snapshot.jpg` is the newest frame and decodes; `/status` says what the page shows and has
/// a row per watcher; the page is there.
#[tokio::test]
async fn snapshot_status_and_page() {
    let _serial = heavy().await;
    let web = start_web(ServerOpts::sized(320, 240)).await;
    let mut a = MjpegReader::open(web.http, None).await.unwrap();
    let mut b = MjpegReader::open(web.http, None).await.unwrap();
    for _ in 0..3 {
        a.next().await.unwrap();
        b.next().await.unwrap();
    }

    let snap = get(web.http, "/snapshot.jpg").await.unwrap();
    assert_eq!(
        (snap.status, snap.header("content-type")),
        (200, Some("image/jpeg"))
    );
    assert_eq!(decode(&snap.body).unwrap(), (320, 240));
    let seq = FrameTag::decode(&snap.body).unwrap().seq;
    let newest = web
        .srv
        .server
        .first_camera()
        .frames
        .borrow()
        .as_ref()
        .unwrap()
        .seq;
    assert!(newest - seq <= 3, "snapshot {seq}, newest {newest}");

    let reply = get(web.http, "/status").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let s: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        s["source"]["description"], "test pattern 320x240@30",
        "{s:#}"
    );
    assert_eq!(s["source"]["state"], "live");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(s["fps"], 30);
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(s["encoder"]["quality"].as_u64().unwrap() > 0);
    // No detector runs in this server: said so, and nothing under way.
    assert_eq!(s["motion"]["enabled"], false, "{s}");
    assert_eq!(s["motion"]["active"], false, "{s}");
    assert_eq!(s["motion"]["events"], 0, "{s}");
    assert_eq!(
        s["encoder"]["max_datagram_bytes"],
        surv_proto::DEFAULT_MAX_DATAGRAM_BYTES
    );
    for counter in [
        "captured",
        "published",
        "passed_through",
        "rejected",
        "frames_sent",
        "frames_skipped",
        "refused",
    ] {
        assert!(s["counters"][counter].is_u64(), "{counter}: {s:#}");
    }
    // The old name of `published` stays one release more.
    assert_eq!(
        s["counters"]["encoded"], s["counters"]["published"],
        "{s:#}"
    );
    assert!(s["counters"]["frames_sent"].as_u64().unwrap() >= 6);
    assert_eq!(s["watchers"]["total"], 2);
    assert_eq!(s["watchers"]["by_kind"]["http"], 2);
    assert_eq!(s["watchers"]["by_kind"]["surv1"], 0);
    let rows = s["sessions"].as_array().unwrap();
    let mut addresses: Vec<&str> = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    addresses.sort();
    let mut ours = [
        a.tcp.local_addr().unwrap().to_string(),
        b.tcp.local_addr().unwrap().to_string(),
    ];
    ours.sort();
    assert_eq!(addresses, ours);
    for r in rows {
        assert_eq!(r["kind"], "http");
        assert!(r["frames_sent"].as_u64().unwrap() >= 3, "{r}");
        assert!(
            r["frames_skipped"].is_u64() && r["since"].is_string(),
            "{r}"
        );
    }

    let page = get(web.http, "/").await.unwrap();
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        html.contains("function survPlay(") && html.contains("\"stream.mjpg\""),
        "{html}"
    );
    assert!(html.contains("name=\"viewport\""));
    assert_eq!(get(web.http, "/nothing").await.unwrap().status, 404);
    drop((a, b));
    web.stop().await;
}

/// `/metrics` parses strictly and its figures are the server's; a watcher past
/// `--max-viewers` is refused with 503, journalled, and counted by reason.
#[tokio::test]
async fn metrics_and_refusals() {
    let _serial = heavy().await;
    let mut opts = ServerOpts::sized(320, 240);
    opts.config = Config {
        max_viewers: 1,
        ..Config::default()
    };
    let web = start_web(opts).await;
    let mut a = MjpegReader::open(web.http, None).await.unwrap();
    a.next().await.unwrap();
    let refused = get(web.http, "/stream.mjpg").await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&refused.body),
        "server full (1 viewers)\n"
    );
    web.srv
        .wait_journal(|l| {
            l.contains("REFUSE") && l.contains("form=http") && l.contains("server full")
        })
        .await
        .unwrap();

    let reply = get(web.http, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(reply.body).unwrap();
    let samples = parse_metrics(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("surv_watchers{kind=\"http\"}"), 1.0);
    assert_eq!(value("surv_watchers{kind=\"seed\"}"), 0.0);
    assert_eq!(value("surv_refusals_total{reason=\"full\"}"), 1.0);
    assert_eq!(web.srv.server.stats.refusals.get(RefusalCause::Full), 1);
    // Per-camera series carry the camera's name.
    let cam = |name: &str| format!("{name}{{camera=\"main\"}}");
    assert_eq!(
        value("surv_source_state{camera=\"main\",state=\"live\"}"),
        1.0,
        "{text}"
    );
    assert!(
        value(&cam("surv_frames_captured_total")) >= value(&cam("surv_frames_published_total"))
    );
    assert!(value(&cam("surv_frames_published_total")) > 0.0);
    // The old name stays one release more, the same series.
    assert_eq!(
        value(&cam("surv_frames_encoded_total")),
        value(&cam("surv_frames_published_total"))
    );
    assert!(value("surv_frames_sent_total") >= 1.0);
    assert!(value(&cam("surv_encode_seconds_count")) > 0.0);
    assert_eq!(
        value("surv_encode_seconds_bucket{le=\"+Inf\",camera=\"main\"}"),
        value(&cam("surv_encode_seconds_count"))
    );
    for series in [
        "surv_source_lost_total",
        "surv_source_failures_total",
        "surv_frames_passed_through_total",
        "surv_frames_no_signal_total",
        "surv_motion_active",
        "surv_motion_events_total",
    ] {
        value(&cam(series));
    }
    for series in [
        "surv_acks_total",
        "surv_sent_bytes_total",
        "surv_frames_skipped_total",
        "surv_foreign_datagrams_total",
        "surv_probes_total",
        "surv_gone_before_accepted_total",
    ] {
        value(series);
    }
    drop(a);
    web.stop().await;
}

/// A slowloris on the HTTP port: idle connections (never a request) beyond every connection
/// place (`--max-viewers` + 256) do not lock out a request, nor push out a stream: a new
/// connection takes the place of the oldest idle one. Before, the server stopped accepting
/// until the header deadline (10 s) freed places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_every_place_do_not_lock_out_requests() {
    let _serial = heavy().await;
    let mut opts = ServerOpts::sized(160, 120);
    opts.config = Config {
        max_viewers: 1,
        ..Config::default()
    };
    let web = start_web(opts).await;
    let mut stream = MjpegReader::open(web.http, None).await.unwrap();
    stream.next().await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..400 {
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(web.http))
            .await
            .expect("connect timed out")
            .unwrap();
        idle.push(tcp);
    }
    // Let the server take them all in (bounded), then ask.
    let until = Instant::now() + IO_TIMEOUT;
    while web.srv.server.stats.refusals.get(RefusalCause::Crowded) < 400 - 257
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(3), get(web.http, "/status"))
            .await
            .expect("/status not answered within 3 s while idle connections fill the places")
            .unwrap();
        assert_eq!(reply.status, 200);
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    assert!(web.srv.server.stats.refusals.get(RefusalCause::Crowded) >= 400 - 257);
    // The stream, which made its request, kept its place.
    stream.read_for(Duration::from_millis(500)).await.unwrap();
    drop(idle);
    web.stop().await;
}

/// JOIN/LEAVE with form=http: a client that goes is `closed`, one that stops reading is
/// `timeout` after the write deadline, one still reading at shutdown is `shutdown`.
#[tokio::test]
async fn http_watchers_join_and_leave_with_a_reason() {
    let _serial = heavy().await;
    let mut opts = ServerOpts::sized(320, 240);
    opts.config = Config {
        http_write_deadline: Duration::from_secs(1),
        ..Config::default()
    };
    let web = start_web(opts).await;
    let journal_port = |r: &MjpegReader| format!("viewer={}", r.tcp.local_addr().unwrap());

    let mut goes = MjpegReader::open(web.http, None).await.unwrap();
    goes.next().await.unwrap();
    let goes_at = journal_port(&goes);
    drop(goes);
    let line = web
        .srv
        .wait_journal(|l| l.contains("LEAVE") && l.contains(&goes_at))
        .await
        .unwrap();
    assert!(
        line.contains("form=http") && line.contains("reason=closed"),
        "{line}"
    );

    let stops = MjpegReader::open(web.http, Some(4096)).await.unwrap();
    let stops_at = journal_port(&stops);
    let mut stays = MjpegReader::open(web.http, None).await.unwrap();
    let stays_at = journal_port(&stays);
    let started = Instant::now();
    // The one that stays reads on while the other's buffers fill and its deadline passes.
    let line = loop {
        stays.next().await.unwrap();
        let found = web
            .srv
            .journal()
            .into_iter()
            .find(|l| l.contains("LEAVE") && l.contains(&stops_at));
        if let Some(l) = found {
            break l;
        }
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "no LEAVE for the stalled client"
        );
    };
    assert!(
        line.contains("form=http") && line.contains("reason=timeout"),
        "{line}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(stops);

    let journal = web.stop().await;
    let leave = journal
        .iter()
        .find(|l| l.contains("LEAVE") && l.contains(&stays_at))
        .unwrap_or_else(|| panic!("{journal:#?}"));
    assert!(
        leave.contains("form=http") && leave.contains("reason=shutdown"),
        "{leave}"
    );
    for at in [&goes_at, &stops_at, &stays_at] {
        let joins = journal
            .iter()
            .filter(|l| l.contains("JOIN") && l.contains(at.as_str()))
            .count();
        assert_eq!(joins, 1, "{at}: {journal:#?}");
    }
    drop(stays);
}

/// Two slow clients (a tenth of the rate) and two that stop reading do not disturb a normal
/// one (≥ 99 % of the frames in the window); the slow ones skip to newer frames instead of
/// being queued every one; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_clients_do_not_disturb_a_normal_one() {
    let _serial = heavy().await;
    let web = start_web(ServerOpts::default()).await;
    let frame_bytes = web
        .srv
        .server
        .first_camera()
        .frames
        .borrow()
        .as_ref()
        .unwrap()
        .payload_bytes();
    eprintln!("frame {frame_bytes} B");
    let rate_bytes = frame_bytes * 30;
    let rss_before = rss_bytes();
    let window = Duration::from_secs(4);

    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(MjpegReader::open(web.http, Some(8192)).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..2 {
        let r = MjpegReader::open(web.http, Some(16 * 1024)).await.unwrap();
        slow.push(tokio::spawn(read_slowly(r, window, rate_bytes / 10)));
    }
    let mut normal = MjpegReader::open(web.http, None).await.unwrap();
    // Settle: the first part, then the window.
    normal.next().await.unwrap();
    let got = normal.read_for(window).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    let normal_share = share(&seqs);
    assert!(
        normal_share >= 0.99,
        "the normal client got {:.1} % ({} frames): {seqs:?}",
        normal_share * 100.0,
        seqs.len()
    );
    assert!(
        seqs.len() as f64 >= 0.9 * 30.0 * window.as_secs_f64(),
        "{}",
        seqs.len()
    );

    for s in slow {
        let got = s.await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
        eprintln!("a slow client got {seqs:?}");
        assert!(seqs.len() >= 3, "a slow client got {seqs:?}");
        // It was sent the newest frame each time it could take one, not a queue of every frame.
        assert!(
            share(&seqs) < 0.5,
            "a slow client got {:.0} %: {seqs:?}",
            share(&seqs) * 100.0
        );
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "normal: {} frames, {:.1} %; RSS grew {} KiB",
        seqs.len(),
        normal_share * 100.0,
        grown >> 10
    );
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(stalled);
    web.stop().await;
}

/// With `--token`, every route wants it (Bearer, Basic with any user name, `?token=`), and one
/// without or with a wrong one is answered 401 with a Basic challenge and counted; with
/// `--metrics-public` a scraper reads `/metrics` without it.
#[tokio::test]
async fn the_token_guards_every_route() {
    let _serial = heavy().await;
    const TOKEN: &str = "s3cret+token";
    for metrics_public in [false, true] {
        let mut opts = ServerOpts::sized(320, 240);
        opts.config = Config {
            token: Some(Token::new(TOKEN).unwrap()),
            metrics_public,
            ..Config::default()
        };
        let web = start_web(opts).await;
        let mut refused = 0;
        for path in ["/", "/stream.mjpg", "/snapshot.jpg", "/status", "/metrics"] {
            let public = metrics_public && path == "/metrics";
            for headers in [
                &[][..],
                &[("Authorization", "Bearer wrong")][..],
                &[("Authorization", "Basic dXNlcjp3cm9uZw==")][..], // user:wrong
            ] {
                let reply = get_with(web.http, path, headers).await.unwrap();
                if public {
                    assert_eq!(reply.status, 200, "{path} {headers:?}");
                    continue;
                }
                refused += 1;
                assert_eq!(reply.status, 401, "{path} {headers:?}");
                assert_eq!(
                    reply.header("www-authenticate"),
                    Some("Basic realm=\"surv\""),
                    "{path}"
                );
                assert!(
                    !reply
                        .body
                        .windows(TOKEN.len())
                        .any(|w| w == TOKEN.as_bytes()),
                    "the refusal does not echo the token"
                );
            }
            let wrong = get(web.http, &format!("{path}?token=wrong")).await.unwrap();
            if !public {
                refused += 1;
                assert_eq!(wrong.status, 401, "{path}?token=wrong");
            }
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("vlc:{TOKEN}"))
            );
            let bearer = format!("Bearer {TOKEN}");
            for headers in [
                &[("Authorization", bearer.as_str())][..],
                &[("Authorization", basic.as_str())][..],
            ] {
                if path == "/stream.mjpg" {
                    continue; // read below, as a stream
                }
                let reply = get_with(web.http, path, headers).await.unwrap();
                assert_eq!(reply.status, 200, "{path} {headers:?}");
            }
            // `+` in a token is `%2B` in a query string. (The right token also clears this
            // address's wrong ones, five of which in a row would slow it down: see access.rs.)
            let right = format!("{path}?token=s3cret%2Btoken");
            if path == "/stream.mjpg" {
                let mut stream = MjpegReader::open_path(web.http, &right, None)
                    .await
                    .unwrap();
                stream.next().await.unwrap();
            } else {
                let reply = get(web.http, &right).await.unwrap();
                assert_eq!(reply.status, 200, "{path}?token=");
            }
        }
        let stats = &web.srv.server.stats;
        assert_eq!(stats.refusals.get(RefusalCause::Unauthorized), refused);
        assert_eq!(stats.auth_failures.load(Relaxed), refused);
        web.stop().await;
    }
}
