//! The live page as a person meets it, in headless Chromium: the picture moves (two screenshots
//! of the one page, more than a second apart, differ in the picture) and the facts beside it
//! are live (they come from /status and change as it does).
//!
//! Chromium is driven over its DevTools pipe (`surv_tests::chromium`). Every wait retries a
//! condition until a deadline, for a cold 2-core machine.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};
use surv_server::sources::Source;
use surv_tests::chromium::Browser;
use surv_tests::{heavy, start_server, start_server_cameras, ServerOpts, TestServer, IO_TIMEOUT};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// How long a cold machine may take for the browser to start and the page to show a frame.
const PAGE_READY_WITHIN: Duration = Duration::from_secs(30);

/// A PNG decoded to RGB by ffmpeg (an independent decoder, and one less crate).
fn png_to_rgb(png: &[u8]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shot.png");
    std::fs::write(&path, png)?;
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
    let out = surv_tests::output_within(&mut cmd, IO_TIMEOUT)?;
    if !out.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// A screenshot of the page's `rect`, decoded to RGB.
fn shot(browser: &mut Browser, rect: &Rect) -> anyhow::Result<Vec<u8>> {
    let r = browser.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "clip": {
            "x": rect.x, "y": rect.y, "width": rect.width, "height": rect.height,
            "scale": 1 } }),
    )?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(r["data"].as_str().context("no screenshot data")?)?;
    png_to_rgb(&png)
}

/// The picture's place on the page.
#[derive(Debug)]
struct Rect {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

/// What the page shows besides the picture, and whether the picture has a frame.
const FACTS: &str = r##"(() => {
  const img = document.querySelector("#picture img");
  const r = img.getBoundingClientRect();
  const text = (id) => document.getElementById(id).textContent;
  return { drawn: img.naturalWidth, x: r.x, y: r.y, width: r.width, height: r.height,
           state: text("state"), size: text("size"), watchers: text("watchers"),
           uptime: text("uptime"), source: text("source"), playing: text("mode"),
           bitrate: text("bitrate") };
})()"##;

/// Pixels whose colour differs clearly between two screenshots of the same size.
fn pixels_changed(a: &[u8], b: &[u8]) -> usize {
    a.chunks_exact(3)
        .zip(b.chunks_exact(3))
        .filter(|(p, q)| p.iter().zip(q.iter()).any(|(x, y)| x.abs_diff(*y) > 64))
        .count()
}

async fn start_web() -> (TestServer, SocketAddr, tokio::task::JoinHandle<()>) {
    let srv = start_server(ServerOpts::sized(320, 240)).await.unwrap();
    serve_http(srv).await
}

async fn serve_http(srv: TestServer) -> (TestServer, SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));
    (srv, addr, task)
}

/// What the browser saw, checked off the runtime (the browser is driven by blocking calls).
fn look_at_the_page(url: &str) {
    let mut browser = Browser::launch().unwrap();
    browser.open(url).unwrap();

    // The page is up when a frame is drawn and the facts came from /status; the page's own
    // stream shows among them once a refresh (each second) follows its request.
    let until = Instant::now() + PAGE_READY_WITHIN;
    let first = loop {
        let facts = browser.eval(FACTS).unwrap_or(Value::Null);
        let counted = facts["watchers"]
            .as_str()
            .is_some_and(|w| w.contains("http 1"));
        if facts["drawn"].as_u64().unwrap_or(0) > 0 && facts["state"] == "live" && counted {
            break facts;
        }
        assert!(
            Instant::now() < until,
            "the page never became ready: {facts}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first["size"], "320×240", "{first}");
    assert_eq!(first["source"], "test pattern 320x240@30", "{first}");
    assert!(
        first["watchers"].as_str().unwrap().contains("http 1"),
        "the page's own stream is counted: {first}"
    );
    // This server has WebRTC off: the page says so and plays MJPEG.
    let playing = first["playing"].as_str().unwrap();
    assert!(
        playing.starts_with("MJPEG") && playing.contains("WebRTC is off"),
        "{first}"
    );
    let rect = Rect {
        x: first["x"].as_f64().unwrap(),
        y: first["y"].as_f64().unwrap(),
        width: first["width"].as_f64().unwrap(),
        height: first["height"].as_f64().unwrap(),
    };
    assert!(rect.width >= 320.0 && rect.height >= 200.0, "{rect:?}");

    // Two screenshots of the picture more than a second apart differ (the pattern's counter
    // and clock move); retried, for a machine too loaded to draw in time.
    let before = shot(&mut browser, &rect).unwrap();
    let mut changed = 0;
    let until = Instant::now() + PAGE_READY_WITHIN;
    while changed < 100 {
        assert!(
            Instant::now() < until,
            "the picture did not move ({changed} pixels changed)"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let after = shot(&mut browser, &rect).unwrap();
        assert_eq!(after.len(), before.len());
        changed = pixels_changed(&before, &after);
    }

    // The facts are live: the uptime shown moves on.
    let later = browser.eval(FACTS).unwrap();
    assert_ne!(later["uptime"], first["uptime"], "{first} then {later}");
    assert!(
        later["bitrate"].as_str().unwrap().ends_with("bit/s"),
        "the page counts the MJPEG bytes it gets: {later}"
    );
    assert_eq!(later["state"], "live");
    browser.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_moving_picture_and_live_facts() {
    let _serial = heavy().await;
    let (srv, addr, task) = start_web().await;
    let url = format!("http://{addr}/");
    tokio::task::spawn_blocking(move || look_at_the_page(&url))
        .await
        .unwrap();
    srv.shutdown.cancel();
    timeout(IO_TIMEOUT, task).await.unwrap().unwrap();
    let journal = srv.stop().await.unwrap();
    assert!(
        journal
            .iter()
            .any(|l| l.contains("JOIN") && l.contains("form=http")),
        "{journal:#?}"
    );
}

/// Each grid tile: its camera, its picture's size as drawn from the snapshot, where it is,
/// and the facts line under it.
const TILES: &str = r#"(() => [...document.querySelectorAll(".tile")].map((a) => {
  const img = a.querySelector("img");
  const r = img.getBoundingClientRect();
  return { name: img.alt, w: img.naturalWidth, h: img.naturalHeight,
           x: r.x, y: r.y, width: r.width, height: r.height,
           facts: a.querySelector("p span:last-child").textContent };
}))()"#;

fn pattern(w: u32, h: u32) -> Box<dyn Source> {
    surv_tests::test_pattern(w, h, 15)
}

/// The grid at `/` of a server with four cameras: four tiles, each showing its own camera's
/// picture (by its size), live, and moving (two screenshots of each tile over a second apart
/// differ). With `SURV_SCREENSHOT=FILE` the whole page is saved there as a PNG.
fn look_at_the_grid(url: &str, cameras: &[(&str, u32, u32)]) {
    let mut browser = Browser::launch().unwrap();
    browser.open(url).unwrap();
    let until = Instant::now() + PAGE_READY_WITHIN;
    let tiles = loop {
        let tiles = browser.eval(TILES).unwrap_or(Value::Null);
        let ready = tiles.as_array().is_some_and(|t| {
            t.len() == cameras.len()
                && t.iter().all(|t| {
                    t["w"].as_u64().unwrap_or(0) > 0
                        && t["facts"].as_str().is_some_and(|f| f.starts_with("live"))
                })
        });
        if ready {
            break tiles;
        }
        assert!(
            Instant::now() < until,
            "the grid never became ready: {tiles}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let tiles = tiles.as_array().unwrap();
    for ((name, w, h), tile) in cameras.iter().zip(tiles) {
        assert_eq!(tile["name"], *name, "{tile}");
        assert_eq!(
            (tile["w"].as_u64(), tile["h"].as_u64()),
            (Some(u64::from(*w)), Some(u64::from(*h))),
            "{name}'s tile shows its own picture: {tile}"
        );
    }
    if let Ok(path) = std::env::var("SURV_SCREENSHOT") {
        let r = browser
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
    for tile in tiles {
        let rect = Rect {
            x: tile["x"].as_f64().unwrap(),
            y: tile["y"].as_f64().unwrap(),
            width: tile["width"].as_f64().unwrap(),
            height: tile["height"].as_f64().unwrap(),
        };
        let before = shot(&mut browser, &rect).unwrap();
        let mut changed = 0;
        let until = Instant::now() + PAGE_READY_WITHIN;
        while changed < 100 {
            assert!(
                Instant::now() < until,
                "{}'s picture did not move ({changed} pixels changed)",
                tile["name"]
            );
            std::thread::sleep(Duration::from_millis(1100));
            let after = shot(&mut browser, &rect).unwrap();
            changed = pixels_changed(&before, &after);
        }
    }
    browser.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grid_shows_every_camera_moving() {
    let _serial = heavy().await;
    let cameras = [
        ("door", 320, 240),
        ("yard", 160, 96),
        ("garage", 240, 180),
        ("attic", 200, 150),
    ];
    let sources = cameras
        .iter()
        .map(|&(name, w, h)| (name, pattern(w, h)))
        .collect();
    let srv = start_server_cameras(ServerOpts::sized(320, 240), sources)
        .await
        .unwrap();
    let (srv, addr, task) = serve_http(srv).await;
    let url = format!("http://{addr}/");
    tokio::task::spawn_blocking(move || look_at_the_grid(&url, &cameras))
        .await
        .unwrap();
    srv.shutdown.cancel();
    timeout(IO_TIMEOUT, task).await.unwrap().unwrap();
    srv.stop().await.unwrap();
}
