//! Motion detection on the real server with a scripted camera: a still scene, an object that
//! crosses it, the lights switched on, still again. One event for the object (start and end
//! within 0.5 s of the script), none for the lights, in the journal.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_tests::motion_script::{Script, END, FPS, H, MOVE, W};
use surv_tests::{start_server_with, ServerOpts};

/// `key=<RFC 3339>` from a journal line, as µs since the epoch.
fn time_of(line: &str, key: &str) -> u64 {
    let start = line.find(&format!("{key}=")).expect(key) + key.len() + 1;
    let text = line[start..].split(' ').next().unwrap();
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_micros() as u64
}

#[tokio::test]
async fn one_event_for_the_object_none_for_the_lights() -> anyhow::Result<()> {
    let t0 = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The server's motion detector, as `--motion on --motion-every 2 --motion-hold 1` runs it.
    let opts = ServerOpts {
        motion: Some((2, Duration::from_secs(1))),
        ..ServerOpts::sized(W as u32, H as u32)
    };
    let srv = start_server_with(opts, Box::new(Script { t0_us: t0.clone() })).await?;
    let state = srv.server.first_camera().motion.clone();
    tokio::time::sleep(Duration::from_micros(END + 500_000)).await;
    let journal = srv.stop().await?;
    let t0 = t0.load(Relaxed);
    let starts: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("MOTION-START"))
        .collect();
    let ends: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("MOTION-END"))
        .collect();
    assert_eq!((starts.len(), ends.len()), (1, 1), "{journal:#?}");
    let start = time_of(starts[0], "at") - t0;
    let end = time_of(ends[0], "end") - t0;
    assert!(
        start.abs_diff(MOVE.0) <= 500_000,
        "start {start} µs, truth {}",
        MOVE.0
    );
    assert!(
        end.abs_diff(MOVE.1) <= 500_000,
        "end {end} µs, truth {}",
        MOVE.1
    );
    assert_eq!(time_of(ends[0], "start") - t0, start);
    assert!(state.analysed.load(Relaxed) >= (END / 1_000_000 * FPS / 2) * 8 / 10);
    assert_eq!(state.events.load(Relaxed), 1);
    assert!(!state.active.load(Relaxed));
    assert!(state.enabled.load(Relaxed));
    Ok(())
}
