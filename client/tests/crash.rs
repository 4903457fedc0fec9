//! `kill -9` of a recording viewer: the real `surv-client` binary records from a real server on
//! loopback and is killed mid-segment; the `.part` it leaves must play, strictly decoded by
//! ffmpeg, with every frame the recorder had checkpointed up to a second before the kill.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surv_tests::{ffmpeg_check, ffprobe, heavy, start_server, Reaper, ServerOpts};

/// Lines of the child's stderr, each with when it arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

fn collect_stderr(child: &mut Child) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

/// Waits (bounded) for a stderr line containing `needle`; returns when it arrived.
fn wait_line(lines: &Lines, needle: &str) -> Instant {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((at, _)) = lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
        {
            return *at;
        }
        assert!(
            Instant::now() < until,
            "no {needle:?} from surv-client: {:#?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn parts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect()
}

/// Records in `format` for about 2.6 s of a 60 s segment, kills the viewer, and checks the
/// partial file.
async fn killed_mid_segment_leaves_a_playable_part(format: &str, codec: &str) {
    let _serial = heavy().await;
    let srv = start_server(ServerOpts {
        width: 320,
        height: 240,
        ..ServerOpts::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = srv.addr.port().to_string();
    let dir_arg = dir.path().to_path_buf();
    let format = format.to_string();
    let (killed_at, lines) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surv-client"))
            .args(["127.0.0.1", &port, "0", "--headless", "--seconds", "30"])
            .args(["--segment-secs", "60", "--format", &format, "--record-dir"])
            .arg(&dir_arg)
            .env("RUST_LOG", "info,surv_client::recorder=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting surv-client");
        let lines = collect_stderr(&mut child);
        let mut child = Reaper(child);
        let started = wait_line(&lines, "segment started");
        std::thread::sleep(Duration::from_millis(2600).saturating_sub(started.elapsed()));
        child.0.kill().unwrap(); // SIGKILL
        let killed_at = Instant::now();
        child.0.wait().unwrap();
        (killed_at, lines)
    })
    .await
    .unwrap();

    let lines = lines.lock().unwrap().clone();
    let (checkpoint_at, checkpointed) = lines
        .iter()
        .rev()
        .filter(|(at, _)| *at <= killed_at)
        .find_map(|(at, l)| {
            l.contains("segment checkpoint")
                .then(|| field(l, "frames"))
                .flatten()
                .map(|n| (*at, n))
        })
        .unwrap_or_else(|| panic!("no checkpoint before the kill: {lines:#?}"));
    let before_kill = killed_at - checkpoint_at;
    assert!(
        before_kill <= Duration::from_millis(1250),
        "last checkpoint {before_kill:?} before the kill: {lines:#?}"
    );
    assert!(
        checkpointed >= 45,
        "{checkpointed} frames in 2.6 s: {lines:#?}"
    );

    let parts = parts(dir.path());
    assert_eq!(parts.len(), 1, "{parts:?}");
    let part = &parts[0];
    ffmpeg_check(part).unwrap();
    let (got_codec, frames, secs) = ffprobe(part).unwrap();
    assert_eq!(got_codec, codec);
    assert!(
        frames >= checkpointed,
        "{}: {frames} frames playable, {checkpointed} were checkpointed",
        part.display()
    );
    // What plays, plays at capture speed (30 fps, no loss on loopback): from the frames
    // checkpointed (AVI's header is patched there) to all frames found.
    let (lo, hi) = (checkpointed as f64 / 30.0, frames as f64 / 30.0);
    assert!(
        secs >= lo * 0.98 && secs <= hi * 1.02,
        "{}: plays {secs} s; {checkpointed}..{frames} frames at 30 fps",
        part.display()
    );
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_viewer_leaves_a_playable_avi_part() {
    killed_mid_segment_leaves_a_playable_part("avi", "mjpeg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_viewer_leaves_a_playable_mp4_part() {
    killed_mid_segment_leaves_a_playable_part("mp4", "h264").await;
}
