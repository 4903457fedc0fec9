//! Motion seen by the viewer: the scripted camera of `surv_tests::motion_script` (still, an
//! object crossing, the lights switched on, still again) on the real server with its motion detector; surv-client with
//! `--record-on motion` records one recording around the object only (and `/status` says what
//! happens), with its pre- and
//! post-roll, judged by ffmpeg and by the frame tags inside the recorded JPEGs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use surv_client::recorder::{Format, RecorderConfig, Retention, Trigger};
use surv_proto::FrameTag;
use surv_tests::http::Limits;
use surv_tests::motion_script::{Script, FPS, H, LIGHTS, MOVE, W};
use surv_tests::{ffmpeg_check, heavy, mjpeg_stream, probe, start_server_with, ServerOpts};
use tokio_util::sync::CancellationToken;

const HOLD: Duration = Duration::from_millis(500);
const PRE: Duration = Duration::from_secs(1);
const POST: Duration = Duration::from_secs(1);
/// One frame interval, µs.
const FRAME_US: u64 = 1_000_000 / FPS;

/// `GET /status`, its JSON body.
async fn status(http: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    let limits = Limits::new(Duration::from_secs(5), 1 << 20);
    let reply = surv_tests::http::get(http, "/status", limits).await?;
    Ok(serde_json::from_slice(&reply.body)?)
}

/// The JPEGs of an MJPEG stream copied out of a file, by their surv tags: (capture µs, motion).
fn tags(stream: &[u8]) -> Vec<FrameTag> {
    let starts: Vec<usize> = stream
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, 0xD8, 0xFF, 0xFE])
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .filter_map(|&i| FrameTag::decode(&stream[i..]).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_motion_keeps_the_object_with_its_rolls_and_not_the_lights() {
    let _serial = heavy().await;
    let t0 = Arc::new(AtomicU64::new(0));
    // The server's motion detector, as `--motion on --motion-every 1 --motion-hold 0.5` runs it.
    let opts = ServerOpts {
        motion: Some((1, HOLD)),
        ..ServerOpts::sized(W as u32, H as u32)
    };
    let srv = start_server_with(opts, Box::new(Script { t0_us: t0.clone() }))
        .await
        .unwrap();
    // The server's HTTP server, whose /status reads the motion state.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let web = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let client = surv_client::Config {
        record: Some(RecorderConfig {
            dir: dir.path().into(),
            segment: Duration::from_secs(30),
            format: Format::Avi,
            keep: Retention::default(),
            trigger: Trigger::Motion {
                pre_roll: PRE,
                post_roll: POST,
            },
        }),
        ..surv_tests::client_config(srv.addr, 6.0)
    };
    // /status, every 100 ms while the viewer runs: what a dashboard would have shown.
    let polls = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..55 {
            if let Ok(s) = status(http).await {
                seen.push((
                    s["motion"]["active"].as_bool(),
                    s["motion"]["events"].as_u64(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    let summary = surv_client::run(client, None, CancellationToken::new())
        .await
        .unwrap();
    let polls = polls.await.unwrap();
    let after = status(http).await.unwrap();
    let journal = srv.stop().await.unwrap();
    web.await.unwrap();

    // /status: an event under way at some point, none before the first, one after.
    assert!(polls.len() >= 40, "{polls:?}");
    assert!(polls.contains(&(Some(true), Some(1))), "{polls:?}");
    assert_eq!(polls[0], (Some(false), Some(0)), "{polls:?}");
    assert_eq!(after["motion"]["active"], false, "{after}");
    assert_eq!(after["motion"]["events"], 1, "{after}");
    assert_eq!(after["motion"]["enabled"], true, "{after}");
    let t0 = t0.load(Relaxed);
    let rel = |us: u64| us as i64 - t0 as i64;

    // The journal: one event, for the object.
    let starts = journal
        .iter()
        .filter(|l| l.contains("MOTION-START"))
        .count();
    assert_eq!(starts, 1, "{journal:#?}");

    // The viewer saw flagged frames, and recorded one recording of them, in one file.
    assert!(summary.motion_frames >= 30, "{summary}");
    assert_eq!(summary.segments.len(), 1, "{summary}");
    assert!(summary.record_idle > 0, "{summary}");
    assert_eq!(
        summary.recorded + summary.record_dropped + summary.record_idle,
        summary.received,
        "{summary}"
    );
    let file = &summary.segments[0];
    ffmpeg_check(file).unwrap();

    let recorded = tags(&mjpeg_stream(file).unwrap());
    assert_eq!(recorded.len() as u64, summary.recorded, "{summary}");
    let flagged: Vec<i64> = recorded
        .iter()
        .filter(|t| t.motion)
        .map(|t| rel(t.capture_unix_us))
        .collect();
    let (first_flag, last_flag) = (flagged[0], *flagged.last().unwrap());
    // Flagged: from the object's start until the hold after its end; not the lights.
    let truth = |us: u64| us as i64;
    assert!(
        (first_flag - truth(MOVE.0)).abs() <= 500_000,
        "first flagged frame at {first_flag} µs, motion from {}",
        MOVE.0
    );
    let flag_end = truth(MOVE.1) + HOLD.as_micros() as i64;
    assert!(
        (last_flag - flag_end).abs() <= 500_000,
        "last flagged frame at {last_flag} µs, motion until {} + hold",
        MOVE.1
    );
    assert!(last_flag < truth(LIGHTS), "the lights flagged as motion");

    // The recording: the pre-roll before the first flagged frame, the post-roll after the last.
    let first = rel(recorded[0].capture_unix_us);
    let last = rel(recorded.last().unwrap().capture_unix_us);
    eprintln!(
        "flagged {first_flag}..{last_flag} µs, recorded {first}..{last} µs ({} frames); {summary}",
        recorded.len()
    );
    let (pre, post) = (PRE.as_micros() as i64, POST.as_micros() as i64);
    let slot = FRAME_US as i64 + 2_000;
    assert!(
        (first - (first_flag - pre)).abs() <= slot,
        "recording starts at {first} µs, first flagged {first_flag} µs, pre-roll {pre} µs"
    );
    assert!(
        (last - (last_flag + post)).abs() <= slot,
        "recording ends at {last} µs, last flagged {last_flag} µs, post-roll {post} µs"
    );
    // Every frame between: all of them when none was lost on the way (loopback, but a loaded
    // machine may still drop a datagram).
    let span = (last - first) / FRAME_US as i64 + 1;
    let n = recorded.len() as i64;
    if summary.lost == 0 {
        assert_eq!(n, span, "{first}..{last}: {summary}");
    } else {
        assert!(
            n <= span && n >= span * 95 / 100,
            "{n} of {span}: {summary}"
        );
    }
    // ffprobe: it plays for as long as it covers, at capture speed.
    let p = probe(file).unwrap();
    let covers = (last - first) as f64 / 1e6 + 1.0 / FPS as f64;
    assert!(
        (p.duration_s - covers).abs() <= 1.0 / FPS as f64 + 0.01,
        "plays {} s, covers {covers} s",
        p.duration_s
    );
    if summary.lost == 0 {
        assert_eq!(p.frames, recorded.len() as u64);
    }
}
