//! End to end: an OAK PoE camera that detects on the device as surv's source (issue 22). The
//! camera is a stand-in (`tests/standins/oak_yolo_tracker.py`) that builds each 256-byte ABCDE
//! header with the DepthAI script's own expression, tracked people in it, and sends its JPEGs
//! after them. surv reads it with `tcp://` (the script is a TCP server) or `tcp-listen://`
//! (the same bytes from a connecting camera), passes the JPEGs through and gives the device's
//! people to the camera's detector: one OBJECT-START and one OBJECT-END per presence in the
//! journal, with no model loaded (the worktree has none; the detector needs none for a camera
//! that says what it sees). `/status` and `/metrics` count what the device counts.

#[path = "http/client.rs"]
#[allow(dead_code)]
mod client;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use surv_server::cameras::Camera;
use surv_server::detect::{parse_labels, DetectConfig};
use surv_server::frame::Detection;
use surv_server::sources::spec::{SourceOptions, SourceSpec};
use surv_tests::{
    free_tcp_port, start_server_with, test_jpeg, Picture, Reaper, ServerOpts, TestServer,
    IO_TIMEOUT,
};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use turbojpeg::Subsamp;

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/standins/oak_yolo_tracker.py");
const PYTHON: &str = "/usr/bin/python3";
/// The stand-in's frame rate.
const FPS: u32 = 15;
/// How long a person must go unseen before OBJECT-END: short, so the tests are.
const HOLD: Duration = Duration::from_millis(500);

/// The stand-in OAK, killed when dropped.
struct Oak {
    child: Reaper,
    lines: mpsc::UnboundedReceiver<String>,
    /// Its first line: `LISTENING PORT` or `CONNECTED PORT`.
    first: String,
}

impl Oak {
    /// Runs the stand-in with `scenes` (see its docstring) and `extra` arguments; waits
    /// (bounded) for its first line.
    async fn start(dir: &Path, scenes: serde_json::Value, extra: &[&str]) -> anyhow::Result<Oak> {
        let file = dir.join("scenes.json");
        std::fs::write(&file, scenes.to_string())?;
        let mut child = Command::new(PYTHON)
            .arg(STANDIN)
            .args(["--port", "0", "--fps", &FPS.to_string(), "--scenes"])
            .arg(&file)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the OAK stand-in under /usr/bin/python3")?;
        let stdout = child.stdout.take().context("stand-in stdout")?;
        let (tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = timeout(IO_TIMEOUT, lines.recv())
            .await
            .context("the OAK stand-in said nothing in time")?
            .context("the OAK stand-in ended before saying it listens")?;
        Ok(Oak {
            child: Reaper(child),
            lines,
            first,
        })
    }

    /// The port of `LISTENING PORT`.
    fn port(&self) -> anyhow::Result<u16> {
        self.first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the stand-in said {:?}", self.first))
    }

    fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// Waits (bounded) for the stand-in to send its last frame and exit: its exit status,
    /// frames sent and longest header.
    async fn finish(&mut self, within: Duration) -> anyhow::Result<(ExitStatus, u64, usize)> {
        let until = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.0.try_wait()? {
                break status;
            }
            if Instant::now() > until {
                bail!("the OAK stand-in still runs after {within:?}");
            }
            sleep(Duration::from_millis(50)).await;
        };
        let mut sent = None;
        while let Ok(Some(line)) = timeout(Duration::from_secs(2), self.lines.recv()).await {
            let mut words = line.split_whitespace();
            if words.next() == Some("SENT") {
                let frames = words.next().and_then(|w| w.parse().ok());
                let longest = words.next().and_then(|w| w.parse().ok());
                sent = frames.zip(longest);
            }
        }
        let (frames, longest) = sent.unwrap_or_default();
        Ok((status, frames, longest))
    }
}

/// A tracklet of the YOLO tracker: label 0 ("person"), its box normalised as `t.roi` is.
fn tracklet(id: u32, roi: [f64; 4]) -> serde_json::Value {
    json!({"id": id, "label": 0, "status": "TRACKED", "roi": roi})
}

/// The box surv should read for a tracklet's normalised `roi` (its corners are multiples of
/// 1/64, so the script's `int(x * 640)` loses nothing).
fn region(roi: [f64; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = roi;
    [x1 as f32, y1 as f32, (x2 - x1) as f32, (y2 - y1) as f32]
}

fn detecting() -> ServerOpts {
    let mut detect = DetectConfig::new(parse_labels("person").expect("person is a label"));
    detect.every = 1;
    detect.hold = HOLD;
    ServerOpts {
        detect: Some(detect),
        http: true,
        ..ServerOpts::sized(320, 240)
    }
}

/// The camera's JPEG, written where the scene file names it.
fn picture(dir: &Path) -> anyhow::Result<String> {
    let jpeg = test_jpeg(320, 240, Picture::Gradient(7), 80, Subsamp::Sub2x2);
    let path = dir.join("frame.jpg");
    std::fs::write(&path, jpeg)?;
    Ok(path.display().to_string())
}

fn main_camera(srv: &TestServer) -> anyhow::Result<Arc<Camera>> {
    srv.server
        .cameras
        .list()
        .first()
        .cloned()
        .context("no camera")
}

/// Waits (bounded) until the camera has passed `n` frames through (the last ones may still be
/// on their way when the stand-in exits); the count then.
async fn passed_through(camera: &Camera, n: u64) -> u64 {
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        let passed = camera.capture.stats.passed_through.load(Relaxed);
        if passed >= n || Instant::now() > until {
            return passed;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the server; its journal's OBJECT-START and OBJECT-END lines.
async fn object_lines(srv: TestServer) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let journal = srv.stop().await?;
    let of = |kind: &str| -> Vec<String> {
        journal
            .iter()
            .filter(|l| l.contains(kind))
            .cloned()
            .collect()
    };
    Ok((of("OBJECT-START"), of("OBJECT-END")))
}

#[tokio::test]
async fn a_person_the_oak_tracks_is_one_object_start_then_one_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jpeg = picture(dir.path())?;
    let roi = [0.25, 0.1, 0.75, 0.9];
    // A person for 1.6 s, then nobody for 3 s (six holds).
    let (with, without) = (24, 45);
    let scenes = json!([
        {"frames": with, "jpeg": jpeg, "tracklets": [tracklet(1, roi)]},
        {"frames": without, "jpeg": jpeg, "tracklets": []},
    ]);
    let mut oak = Oak::start(dir.path(), scenes, &[]).await?;
    let url = format!("tcp://127.0.0.1:{}", oak.port()?);
    let source = SourceSpec::parse(&url)
        .map_err(anyhow::Error::msg)?
        .build(&SourceOptions::default())?;
    let srv = start_server_with(detecting(), source).await?;

    let start = srv
        .wait_journal(|l| l.contains("OBJECT-START") && l.contains("label=person"))
        .await?;
    // The device's box, made a fraction of its 640x640 input; no score from the device.
    assert!(
        start.contains(" score=1.000 box=0.250,0.100,0.500,0.800"),
        "{start}"
    );
    assert!(start.ends_with(" cam=main"), "{start}");
    let end = srv
        .wait_journal(|l| l.contains("OBJECT-END") && l.contains("label=person"))
        .await?;
    assert!(end.ends_with(" cam=main"), "{end}");
    // The end came from frames that show nobody, not from the camera going away.
    assert!(oak.running(), "the stand-in had stopped before OBJECT-END");

    let (status, sent, longest) = oak.finish(Duration::from_secs(20)).await?;
    assert!(status.success(), "the stand-in: {status}");
    assert_eq!(sent, with + without);
    assert_eq!(longest, 256, "one person fits the 256 bytes");
    // Every frame was passed through as the camera sent it.
    let camera = main_camera(&srv)?;
    assert_eq!(passed_through(&camera, sent).await, sent);
    let (starts, ends) = object_lines(srv).await?;
    assert_eq!(starts.len(), 1, "{starts:#?}");
    assert_eq!(ends.len(), 1, "{ends:#?}");
    Ok(())
}

#[tokio::test]
async fn three_people_overflow_the_header_and_all_three_are_read_over_tcp_listen(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jpeg = picture(dir.path())?;
    let rois = [
        [0.125, 0.25, 0.375, 0.75],
        [0.5, 0.0, 0.625, 0.5],
        [0.75, 0.25, 1.0, 1.0],
    ];
    let people: Vec<_> = (0..3).map(|i| tracklet(i + 1, rois[i as usize])).collect();
    let (with, without) = (30, 45);
    let scenes = json!([
        {"frames": with, "jpeg": jpeg, "tracklets": people},
        {"frames": without, "jpeg": jpeg, "tracklets": []},
    ]);
    // The camera connects to surv: tcp-listen://, the framing told from its first bytes.
    let port = free_tcp_port();
    let url = format!("tcp-listen://127.0.0.1:{port}");
    let source = SourceSpec::parse(&url)
        .map_err(anyhow::Error::msg)?
        .build(&SourceOptions::default())?;
    let srv = start_server_with(detecting(), source).await?;
    let to = format!("127.0.0.1:{port}");
    let mut oak = Oak::start(dir.path(), scenes, &["--connect", &to]).await?;

    srv.wait_journal(|l| l.contains("OBJECT-START") && l.contains("label=person"))
        .await?;
    // The detector counts three and holds their three boxes.
    let camera = main_camera(&srv)?;
    let want: Vec<Detection> = rois
        .iter()
        .map(|&roi| Detection {
            class: 0,
            score: 1.0,
            region: region(roi),
        })
        .collect();
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        let count = camera.detect.present_now().first().map(|p| p.count);
        if count == Some(3) && camera.detect.boxes_now() == want {
            break;
        }
        if Instant::now() > until {
            bail!(
                "present {:?}, boxes {:?}",
                camera.detect.present_now(),
                camera.detect.boxes_now()
            );
        }
        sleep(Duration::from_millis(20)).await;
    }
    // As a user sees it, while the three are still in view (2 s).
    let http = srv.http_addr.context("http")?;
    let status = client::get(http, "/status").await?;
    let status: serde_json::Value = serde_json::from_slice(&status.body)?;
    let objects = &status["cameras"][0]["objects"];
    assert_eq!(objects["present"][0]["label"], "person", "{objects}");
    assert_eq!(objects["present"][0]["count"], 3, "{objects}");
    let metrics = client::get(http, "/metrics").await?;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"surv_objects{camera="main",label="person"} 3"#),
        "{text}"
    );
    srv.wait_journal(|l| l.contains("OBJECT-END") && l.contains("label=person"))
        .await?;
    assert!(oak.running(), "the stand-in had stopped before OBJECT-END");

    let (status, sent, longest) = oak.finish(Duration::from_secs(20)).await?;
    assert!(status.success(), "the stand-in: {status}");
    assert_eq!(sent, with + without);
    assert!(longest > 256, "three people overflow the header: {longest}");
    assert_eq!(passed_through(&camera, sent).await, sent);
    let (starts, ends) = object_lines(srv).await?;
    assert_eq!((starts.len(), ends.len()), (1, 1), "{starts:#?} {ends:#?}");
    Ok(())
}

#[tokio::test]
async fn the_mobilenet_tracker_sends_no_boxes_frames_pass_and_no_object_is_made_up(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jpeg = picture(dir.path())?;
    let frames = 30;
    let scenes = json!([
        {"frames": frames, "jpeg": jpeg, "tracklets": [tracklet(1, [0.25, 0.25, 0.5, 0.5])]},
    ]);
    let mut oak = Oak::start(dir.path(), scenes, &["--mobilenet"]).await?;
    let url = format!("tcp://127.0.0.1:{}", oak.port()?);
    let source = SourceSpec::parse(&url)
        .map_err(anyhow::Error::msg)?
        .build(&SourceOptions::default())?;
    let srv = start_server_with(detecting(), source).await?;

    // Entries of `[text, cx, cy]` are skipped, not a broken stream: the connection stays up
    // to the last frame and every frame is passed through.
    let (status, sent, _) = oak.finish(Duration::from_secs(20)).await?;
    assert!(status.success(), "the stand-in: {status}");
    assert_eq!(sent, frames);
    let camera = main_camera(&srv)?;
    assert_eq!(passed_through(&camera, sent).await, sent);
    let analysed = camera.detect.analysed.load(Relaxed);
    assert!(analysed > 0, "the detector saw the camera's (empty) lists");
    let (starts, ends) = object_lines(srv).await?;
    assert!(
        starts.is_empty() && ends.is_empty(),
        "{starts:#?} {ends:#?}"
    );
    Ok(())
}
