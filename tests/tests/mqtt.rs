//! MQTT with a real broker: mosquitto on a free loopback port, started by each test, and a
//! rumqttc subscriber reading back what surv published: `available` online and offline (the
//! Last Will when the server is SIGKILLed), join and leave events with their documented fields,
//! stats at the configured interval, motion events and the `motion` state; and that a broker
//! stopped mid-stream, or never there, costs watchers nothing.

#[path = "mqtt/broker.rs"]
mod broker;
#[path = "mqtt/server_proc.rs"]
mod server_proc;

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use surv_proto::Form;
use surv_server::mqtt::{self, BrokerUrl, MqttConfig};
use surv_tests::motion_script::{Script, END, H, MOVE, W};
use surv_tests::{
    client_config, output_within, start_server, start_server_with, AckStyle, RawViewer, ServerOpts,
    IO_TIMEOUT,
};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use broker::{free_port, json, terminate, Broker, Sub, WAIT};
use server_proc::{server_exe, ServerProc};

fn config(broker: &Broker, prefix: &str) -> MqttConfig {
    let mut c = MqttConfig::new(BrokerUrl::parse(&broker.url()).unwrap(), "test");
    c.prefix = prefix.to_string();
    c.client_id = format!("surv-{}", prefix.replace('/', "-"));
    c.stats_every = Duration::from_secs(1);
    c
}

/// `key=value` from a journal line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!(" {key}=")).expect(key) + key.len() + 2;
    line[start..].split(' ').next().unwrap()
}

#[tokio::test]
async fn joins_leaves_and_stats_reach_the_broker_as_documented() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let prefix = "surv/a";
    let mut sub = Sub::start(broker.port, "surv/a/#", "sub-a").await?;
    let srv = start_server(ServerOpts::sized(320, 240)).await?;
    let stop = CancellationToken::new();
    let task = mqtt::spawn(srv.server.clone(), config(&broker, prefix), stop.clone());
    let online = sub
        .next("available", WAIT, |m| m.topic == "surv/a/available")
        .await?;
    assert_eq!(online.payload, "online");

    // A real viewer watches for 1.5 s and ends.
    let viewer = surv_client::run(client_config(srv.addr, 1.5), None, CancellationToken::new());
    let report = timeout(IO_TIMEOUT + Duration::from_secs(2), viewer).await??;
    let join = sub.event(prefix, "join", |_| true).await?;
    let leave = sub.event(prefix, "leave", |_| true).await?;
    let journal_leave = srv.wait_journal(|l| l.contains(" LEAVE ")).await?;
    let address = field(&journal_leave, "viewer");
    assert_eq!(join["kind"], "surv1", "{join}");
    assert_eq!(join["address"], address, "{join}");
    assert_eq!(join["session"], leave["session"]);
    assert!(
        join["at_us"].as_u64().is_some() && join["at"].is_string(),
        "{join}"
    );
    assert_eq!(leave["kind"], "surv1");
    assert_eq!(leave["address"], address);
    assert_eq!(leave["reason"], "end", "{leave}");
    let frames = leave["frames"].as_u64().context("frames")?;
    assert_eq!(frames.to_string(), field(&journal_leave, "frames_sent"));
    assert!(
        frames >= report.received && report.received > 20,
        "{leave} vs {report}"
    );
    assert!(leave["frames_skipped"].is_u64() && leave["duration_s"].as_f64() > Some(1.0));

    // Stats every second (--mqtt-stats-secs 1), with what /status shows.
    let mut stats = Vec::new();
    for _ in 0..3 {
        let m = sub
            .next("stats", Duration::from_secs(5), |m| {
                m.topic == "surv/a/stats"
            })
            .await?;
        stats.push((m.at, json(&m.payload).context("stats JSON")?));
    }
    for pair in stats.windows(2) {
        let gap_us = pair[1].1["at_us"].as_u64().unwrap() - pair[0].1["at_us"].as_u64().unwrap();
        assert!(
            (700_000..=1_600_000).contains(&gap_us),
            "stats {gap_us} µs apart"
        );
        let arrived = pair[1].0 - pair[0].0;
        assert!(
            arrived < Duration::from_secs(2),
            "stats arrived {arrived:?} apart"
        );
    }
    let s = &stats[2].1;
    assert_eq!(s["source"]["state"], "live", "{s}");
    assert_eq!(s["fps"], 30);
    assert!(s["fps_measured"].as_f64() > Some(20.0), "{s}");
    assert!(s["watchers"]["by_kind"]["surv1"].is_u64(), "{s}");
    assert!(s["counters"]["frames_skipped"].is_u64());
    assert!(s["counters"]["joins"].as_u64() >= Some(1));
    assert!(s["encoder"]["encode_ms_mean"].as_f64() > Some(0.0), "{s}");
    assert_eq!(s["mqtt"]["connected"], true);
    assert!(s.get("sessions").is_none(), "no per-watcher rows in stats");

    // A clean stop says `offline` (retained) before it goes.
    stop.cancel();
    timeout(IO_TIMEOUT, task).await??;
    let offline = sub
        .next("available offline", WAIT, |m| m.topic == "surv/a/available")
        .await?;
    assert_eq!(offline.payload, "offline");
    let m = &srv.server.mqtt;
    assert!(m.published.load(Relaxed) >= 6);
    assert_eq!(m.dropped.load(Relaxed), 0);
    Ok(())
}

#[tokio::test]
async fn motion_start_and_end_reach_the_broker_with_the_motion_state() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let prefix = "surv/b";
    let mut sub = Sub::start(broker.port, "surv/b/#", "sub-b").await?;
    let t0 = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opts = ServerOpts {
        motion: Some((2, Duration::from_secs(1))),
        ..ServerOpts::sized(W as u32, H as u32)
    };
    let srv = start_server_with(opts, Box::new(Script { t0_us: t0.clone() })).await?;
    let stop = CancellationToken::new();
    let task = mqtt::spawn(srv.server.clone(), config(&broker, prefix), stop.clone());
    let start = sub.event(prefix, "motion_start", |_| true).await?;
    let end = sub.event(prefix, "motion_end", |_| true).await?;
    // Until the script is over: the lights must not start a second event.
    sleep(
        Duration::from_micros(END + 500_000).saturating_sub(Duration::from_micros(
            surv_proto::unix_micros_now().saturating_sub(t0.load(Relaxed)),
        )),
    )
    .await;
    stop.cancel();
    timeout(IO_TIMEOUT, task).await??;
    srv.stop().await?;
    while let Ok(m) = sub
        .next("the rest", Duration::from_millis(300), |_| false)
        .await
    {
        drop(m);
    }

    let t0 = t0.load(Relaxed);
    let start_us = start["at_us"].as_u64().context("at_us")? - t0;
    let end_us = end["end_us"].as_u64().context("end_us")? - t0;
    assert!(
        start_us.abs_diff(MOVE.0) <= 500_000,
        "start {start_us} µs: {start}"
    );
    assert!(end_us.abs_diff(MOVE.1) <= 500_000, "end {end_us} µs: {end}");
    assert_eq!(end["start_us"], start["at_us"]);
    for e in [&start, &end] {
        let b = &e["box"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| b[k].as_f64().unwrap_or(-1.0));
        assert!(x >= 0.0 && y >= 0.0 && w > 0.0 && h > 0.0, "{e}");
        assert!(x + w <= 1.0001 && y + h <= 1.0001, "{e}");
    }
    assert!(start["score"].as_f64() > Some(0.0));
    assert!(
        end["peak"].as_f64() >= start["score"].as_f64(),
        "{start} {end}"
    );
    assert!(chrono::DateTime::parse_from_rfc3339(end["end"].as_str().unwrap_or("")).is_ok());
    assert_eq!(start["camera"], "main", "{start}");
    // Each event on the server's topic and on its camera's, the same message.
    for topic in ["surv/b/events", "surv/b/main/events"] {
        let starts: Vec<&str> = sub
            .seen
            .iter()
            .filter(|m| m.topic == topic && m.payload.contains(r#""type":"motion_start""#))
            .map(|m| m.payload.as_str())
            .collect();
        assert_eq!(
            starts.len(),
            1,
            "{topic}: one event for the object, none for the lights"
        );
        assert_eq!(json(starts[0]).unwrap(), start);
    }
    // The retained states, the server's and the camera's: OFF at first (the server's), ON for
    // the event, OFF after it.
    for (topic, want) in [
        ("surv/b/motion", &["OFF", "ON", "OFF"][..]),
        ("surv/b/main/motion", &["ON", "OFF"][..]),
    ] {
        let mut states: Vec<&str> = sub
            .seen
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload.as_str())
            .collect();
        states.dedup();
        assert_eq!(states, want, "{topic}");
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_server_is_announced_offline_by_its_last_will() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let mut sub = Sub::start(broker.port, "surv/killed/#", "sub-c").await?;
    let mut server = ServerProc::start(&["--mqtt", &broker.url(), "--name", "killed"]).await?;
    let online = sub
        .next("available", WAIT, |m| m.topic == "surv/killed/available")
        .await?;
    assert_eq!(online.payload, "online");
    server.child.0.kill()?; // SIGKILL: no goodbye, only the broker's will.
    let killed = Instant::now();
    server.child.0.wait()?;
    // Only `offline` counts: an `online` may come again first when the server's first connect
    // attempt timed out on a loaded machine and it connected again (it re-sends `online` on
    // every connect; CI saw that once).
    let offline = sub
        .next("available offline", WAIT, |m| {
            m.topic == "surv/killed/available" && m.payload == "offline"
        })
        .await?;
    // The socket closed with the process: the broker did not wait for the keep-alive (10 s).
    assert!(
        offline.at - killed < Duration::from_secs(3),
        "{:?}",
        offline.at - killed
    );
    // Retained: whoever subscribes later reads `offline` at once.
    let mut late = Sub::start(broker.port, "surv/killed/available", "sub-c-late").await?;
    let m = late.next("retained available", WAIT, |_| true).await?;
    assert_eq!((m.payload.as_str(), m.retain), ("offline", true));
    Ok(())
}

#[tokio::test]
async fn without_a_broker_the_server_warns_serves_and_connects_when_one_comes() -> anyhow::Result<()>
{
    let port = free_port(); // nothing listens there yet
    let url = format!("mqtt://cam:s3cret-pw@127.0.0.1:{port}");
    let server =
        ServerProc::start(&["--mqtt", &url, "--name", "late", "--mqtt-stats-secs", "1"]).await?;
    server.wait_log("MQTT: cannot reach the broker").await?;
    let mut viewer = RawViewer::register(server.addr, Form::V1).await?;
    let got = viewer
        .receive(Duration::from_secs(2), u64::MAX, AckStyle::Seq, 0)
        .await?;
    assert!(got.decoded >= 45, "{got:?}");

    // The broker comes: the server connects (backoff at most 10 s) and says it is online.
    let mut broker = Broker {
        port,
        dir: tempfile::tempdir()?,
        proc: None,
        login: None,
    };
    broker.restart().await?;
    let mut sub = Sub::start(port, "surv/late/#", "sub-e").await?;
    let online = sub
        .next("available", WAIT, |m| m.topic == "surv/late/available")
        .await?;
    assert_eq!(online.payload, "online");
    sub.next("stats", WAIT, |m| m.topic == "surv/late/stats")
        .await?;

    // SIGTERM: a clean stop, `offline` said, nothing hangs.
    terminate(&server.child.0);
    let mut child = server.child;
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break s;
        }
        if Instant::now() > until {
            bail!("the server did not stop within {WAIT:?}");
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let offline = sub
        .next("available offline", WAIT, |m| {
            m.topic == "surv/late/available"
        })
        .await?;
    assert_eq!(offline.payload, "offline");
    let log = std::fs::read_to_string(&server.stderr)?;
    assert!(
        !log.contains("s3cret-pw"),
        "the password was logged:\n{log}"
    );
    assert!(log.contains("cam:***@127.0.0.1"), "{log}");
    Ok(())
}

/// `--mqtt-password-file`: the password reaches a broker that lets in nobody else, and it is
/// not in the server's command line.
#[tokio::test]
async fn a_password_from_a_file_logs_in_to_a_broker_that_requires_it() -> anyhow::Result<()> {
    let broker = Broker::start_with_login("cam", "fi1e-pw").await?;
    // The broker does refuse a wrong password (so the login below is what let the server in).
    let (_client, mut wrong) = rumqttc::AsyncClient::new(
        {
            let mut o = rumqttc::MqttOptions::new("sub-wrong", "127.0.0.1", broker.port);
            o.set_credentials("cam", "not-it");
            o
        },
        4,
    );
    let refused = timeout(IO_TIMEOUT, wrong.poll()).await?;
    assert!(
        matches!(refused, Err(rumqttc::ConnectionError::ConnectionRefused(_))),
        "{refused:?}"
    );
    let mut sub = Sub::start_as(
        broker.port,
        "surv/pwfile/#",
        "sub-f",
        Some(("cam", "fi1e-pw")),
    )
    .await?;
    let file = broker.dir.path().join("surv-mqtt-password");
    std::fs::write(&file, "fi1e-pw\n")?;
    let url = format!("mqtt://cam@127.0.0.1:{}", broker.port);
    let file_arg = file.to_str().context("a UTF-8 temp path")?;
    let server = ServerProc::start(&[
        "--mqtt",
        &url,
        "--mqtt-password-file",
        file_arg,
        "--name",
        "pwfile",
    ])
    .await?;
    let online = sub
        .next("available", WAIT, |m| m.topic == "surv/pwfile/available")
        .await?;
    assert_eq!(online.payload, "online");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.child.0.id()))?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--mqtt-password-file"), "{cmdline}");
    assert!(!cmdline.contains("fi1e-pw"), "{cmdline}");
    Ok(())
}

#[tokio::test]
async fn a_broker_stopped_mid_stream_costs_watchers_nothing_and_events_resume() -> anyhow::Result<()>
{
    const FPS: u32 = 30;
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut broker = Broker::start().await?;
    let prefix = "surv/d";
    let mut sub = Sub::start(broker.port, "surv/d/#", "sub-d").await?;
    let srv = start_server(ServerOpts::sized(320, 240)).await?;
    let stop = CancellationToken::new();
    let task = mqtt::spawn(srv.server.clone(), config(&broker, prefix), stop.clone());
    sub.next("available", WAIT, |m| m.topic == "surv/d/available")
        .await?;
    let mut viewer = RawViewer::register(srv.addr, Form::V1).await?;
    viewer
        .receive(Duration::from_secs(1), u64::MAX, AckStyle::Seq, 0)
        .await?;
    let before = viewer
        .receive(OUTAGE, u64::MAX, AckStyle::Seq, 0)
        .await?
        .datagrams;

    // The broker goes for 5 s; meanwhile the viewer counts frames and another one comes and
    // goes (its JOIN and LEAVE wait in the queue).
    let outage = async {
        let began = Instant::now();
        broker.stop().await?;
        let mut side = RawViewer::register(srv.addr, Form::V1).await?;
        let side_addr = side.udp.local_addr()?;
        let got = side
            .receive(Duration::from_secs(1), u64::MAX, AckStyle::Seq, 0)
            .await?;
        side.end(got.from.context("the side viewer got no frame")?)
            .await?;
        tokio::time::sleep_until(began + OUTAGE).await;
        broker.restart().await?;
        anyhow::Ok((side_addr, Instant::now()))
    };
    let (during, side_addr) =
        tokio::join!(viewer.receive(OUTAGE, u64::MAX, AckStyle::Seq, 0), outage);
    let (during, (side_addr, restarted)) = (during?.datagrams, side_addr?);
    let floor = (f64::from(FPS) * OUTAGE.as_secs_f64() * 0.9) as u64;
    eprintln!("frames in 5 s: before the outage {before}, during it {during}");
    assert!(
        before >= floor && during >= floor,
        "frames in 5 s before the outage {before}, during it {during}: both should be >= {floor}"
    );

    // Events resume: the queued JOIN, then a JOIN made after the restart.
    let side = side_addr.to_string();
    sub.event(prefix, "join", |e| e["address"] == side.as_str())
        .await?;
    sub.event(prefix, "leave", |e| e["address"] == side.as_str())
        .await?;
    let after = RawViewer::register(srv.addr, Form::V1).await?;
    let after_addr = after.udp.local_addr()?.to_string();
    sub.event(prefix, "join", |e| e["address"] == after_addr.as_str())
        .await?;
    // `online` is said again on the new connection.
    assert!(
        sub.seen
            .iter()
            .any(|m| m.topic == "surv/d/available" && m.payload == "online" && m.at > restarted),
        "{:#?}",
        sub.seen
    );
    let m = &srv.server.mqtt;
    assert!(m.reconnects.load(Relaxed) >= 1);
    assert!(m.connected.load(Relaxed));
    assert_eq!(m.dropped.load(Relaxed), 0);
    stop.cancel();
    timeout(IO_TIMEOUT, task).await??;
    Ok(())
}

#[test]
fn bad_mqtt_flags_are_refused_with_a_reason_and_no_password() {
    let exe = server_exe().unwrap();
    for (args, want) in [
        (&["--mqtt", "mqtts://u:hunter2@127.0.0.1"][..], "mqtt://"),
        (&["--mqtt", "mqtt://u:hunter2@127.0.0.1/x"][..], "no path"),
        (
            &["--mqtt", "mqtt://127.0.0.1", "--mqtt-topic", "surv/#"][..],
            "--mqtt-topic",
        ),
        (
            &["--mqtt", "mqtt://127.0.0.1", "--name", "a/b"][..],
            "--name",
        ),
        (
            // The old spelling still works; the error names the flag by its name now.
            &["--mqtt", "mqtt://127.0.0.1", "--mqtt-stats-secs", "0"][..],
            "--mqtt-stats-every",
        ),
        (
            &[
                "--mqtt",
                "mqtt://u:hunter2@127.0.0.1",
                "--mqtt-password-file",
                "/nonexistent/pw",
            ][..],
            "--mqtt-password-file",
        ),
        (
            &[
                "--mqtt",
                "mqtt://u@127.0.0.1",
                "--mqtt-password-file",
                "/nonexistent/pw",
            ][..],
            "/nonexistent/pw",
        ),
    ] {
        let out = output_within(
            Command::new(&exe)
                .args(["--source", "test", "--port", "0", "--http-port", "0"])
                .args(["--rtsp-port", "0"])
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--log-dir",
                    "/nonexistent/never-made",
                ])
                .args(args),
            Duration::from_secs(30),
        )
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
    }
}
