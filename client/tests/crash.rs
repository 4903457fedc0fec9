//! `kill -9` of a recording viewer: the real `surv-client` binary records from a real server on
//! loopback and is killed mid-segment; the `.part` it leaves must play, strictly decoded by
//! ffmpeg, with every frame the recorder had checkpointed up to a second before the kill.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surv_tests::{
    ffmpeg_check, ffprobe, heavy, packet_times, start_server_with, ClockedPattern, Reaper,
    ServerOpts,
};

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
    // Capture times from an ideal 30 fps clock: what plays is then what the recorder was
    // given, not how the machine happened to schedule the test pattern.
    let srv = start_server_with(
        ServerOpts::sized(320, 240),
        ClockedPattern::source(320, 240, 30),
    )
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
    // What plays, plays at capture speed. The capture times are exact multiples of 1/30 s,
    // so every frame starts on that grid (a frame the viewer missed on a busy machine leaves
    // a gap of whole intervals, and the file plays that long), and the file plays from its
    // first frame's start to its last frame's end, or (AVI, whose header is patched at each
    // checkpoint) at least as long as the frames checkpointed.
    let times = packet_times(part).unwrap();
    assert_eq!(times.len() as u64, frames, "{}", part.display());
    let ticks = |t: f64| (t - times[0]) * 30.0;
    for &t in &times {
        let off = (ticks(t) - ticks(t).round()).abs();
        assert!(
            off < 0.05,
            "{}: a frame at {t} s, off the 30 fps grid",
            part.display()
        );
    }
    let spanned = ticks(times[times.len() - 1]).round() + 1.0;
    assert!(
        spanned >= frames as f64,
        "{spanned} intervals for {frames} frames"
    );
    let (lo, hi) = (checkpointed as f64 / 30.0, spanned / 30.0);
    let slack = 1.0 / 30.0 + 0.005;
    assert!(
        secs >= lo - slack && secs <= hi + slack,
        "{}: plays {secs} s; {checkpointed} frames checkpointed, {frames} frames over \
         {spanned} intervals of 1/30 s",
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
