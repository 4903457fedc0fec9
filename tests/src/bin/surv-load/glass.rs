//! `--glass SECS`: glass to glass in a browser. The server runs the test pattern, whose frames
//! carry their capture time as a code along the bottom (`TimeCode` in the server's test
//! pattern); headless Chromium opens the camera's live page, and a script in the page reads the
//! code back from every frame it is about to show (WebRTC: `requestVideoFrameCallback` on the
//! `<video>`; MJPEG: the `<img>`'s `load`), draws that row into a canvas and compares the code
//! with the same wall clock. Both ends run on this machine, so there is no clock offset.
//! With `--glass-origin` it plays a server it did not start: `scripts/webrtc-rtt.sh` runs one
//! in a network namespace and this tool in another, behind a router that delays and drops (one
//! machine still, one clock).
//!
//! Per mode (the page's WebRTC; the same with Chromium sending no UDP, so that it plays WebRTC
//! over TCP, ICE-TCP; then `?play=mjpeg`; then LL-HLS: hls.js, from `models/`, playing
//! `/cam/main/index.m3u8` in a page of the server's origin): the first frame after the page
//! starts loading, over `LOADS` loads, then over SECS the latency of every frame (p50, p99,
//! max), the frames that came, the codes that could not be read, and for the camera's page
//! WebRTC's `freezeCount` and the bitrate the page measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use surv_tests::chromium::{glass_samples, play_hls, Browser, TIME_CODE_READER};

use crate::http::free_port;
use crate::server::ServerProc;
use crate::Args;

/// Page loads timed for the first frame.
const LOADS: usize = 10;
/// The longest a load may take to show its first frame before the run fails.
const FIRST_FRAME_LIMIT: Duration = Duration::from_secs(15);

pub fn run(args: &Args, secs: u64) -> anyhow::Result<()> {
    if !(1..=3600).contains(&secs) {
        bail!("--glass takes 1..=3600 seconds");
    }
    let (w, h) = args.size;
    const MODES: [&str; 4] = ["webrtc", "webrtc-tcp", "mjpeg", "hls"];
    if let Some(unknown) = args
        .glass_modes
        .iter()
        .find(|m| !MODES.contains(&m.as_str()))
    {
        bail!("--glass-modes: {unknown:?} is none of {}", MODES.join(", "));
    }
    if let Some(origin) = &args.glass_origin {
        if !origin.starts_with("http://") || origin.trim_end_matches('/').contains("/cam") {
            bail!("--glass-origin takes the server's origin, http://IP:PORT, not {origin:?}");
        }
    }
    for mode in args.glass_modes.iter().map(String::as_str) {
        // The server: the one at --glass-origin, or one of ours per mode.
        let (server, origin) = match &args.glass_origin {
            Some(origin) => (None, origin.trim_end_matches('/').to_string()),
            None => {
                let http = free_port()?;
                let webrtc = match args.glass_webrtc_port {
                    0 => std::net::UdpSocket::bind("127.0.0.1:0")?
                        .local_addr()?
                        .port(),
                    port => port,
                };
                let extra = [
                    "--http-port".to_string(),
                    http.to_string(),
                    "--webrtc-port".to_string(),
                    webrtc.to_string(),
                ];
                let server = ServerProc::start_with(args, 16, &extra)?;
                (Some(server), format!("http://127.0.0.1:{http}"))
            }
        };
        // LL-HLS: hls.js in a page of the server's origin (the JSON of `/status`; the camera's
        // page would play WebRTC beside it), as a site that embeds the camera would play it.
        let (url, after_load) = match mode {
            "webrtc" | "webrtc-tcp" => (format!("{origin}/cam/main/"), None),
            "mjpeg" => (format!("{origin}/cam/main/?play=mjpeg"), None),
            _ => (
                format!("{origin}/status"),
                Some(play_hls(&format!("{origin}/cam/main/index.m3u8"))?),
            ),
        };
        // No UDP but through a proxy, and there is none: WebRTC goes over TCP or not at all.
        let no_udp =
            (mode == "webrtc-tcp").then_some("--webrtc-ip-handling-policy=disable_non_proxied_udp");
        let measured = watch(&url, secs, after_load.as_deref(), no_udp);
        if let Some(server) = server {
            server.stop();
        }
        let m = measured.with_context(|| format!("the {mode} page"))?;
        // The camera's page counts these; hls.js in a bare page does not.
        let (freezes, bitrate) = if mode == "hls" {
            ("n/a".to_string(), "n/a".to_string())
        } else {
            (m.freezes.to_string(), format!("{:.0} kbit/s", m.kbps))
        };
        // Decoded frames: WebRTC's `getStats` alone says them.
        let decoded = if mode.starts_with("webrtc") {
            m.decoded.to_string()
        } else {
            "n/a".to_string()
        };
        println!(
            "glass {mode} {w}x{h}@{}: first frame over {LOADS} loads median {:.0} ms, max {:.0} ms; \
             over {secs} s: {} frames shown ({:.1}/s; decoded {decoded}), latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, \
             unreadable {}, freezeCount {}, bitrate {}",
            args.fps,
            m.first_ms[LOADS / 2],
            m.first_ms[LOADS - 1],
            m.frames,
            m.frames as f64 / secs as f64,
            pct(&m.late_ms, 0.50),
            pct(&m.late_ms, 0.99),
            m.late_ms.last().copied().unwrap_or(f64::NAN),
            m.unreadable,
            freezes,
            bitrate,
        );
    }
    Ok(())
}

struct Measured {
    /// Sorted.
    first_ms: Vec<f64>,
    frames: u64,
    /// Sorted.
    late_ms: Vec<f64>,
    unreadable: u64,
    freezes: u64,
    /// WebRTC: the frames Chromium decoded (`framesDecoded`), of which `frames` are those it
    /// showed: frames that come together (after a resend) are decoded but only the last is shown.
    decoded: u64,
    kbps: f64,
}

/// How much the player's counter `key` grew from `before` to `after`.
fn counted(before: &Value, after: &Value, key: &str) -> u64 {
    let at = |v: &Value| v[key].as_u64().unwrap_or(0);
    at(after).saturating_sub(at(before))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Loads `url` `LOADS` times, timing the first frame of each (after evaluating `after_load` in
/// the page once it has loaded, if given), then measures the last load for `secs`; Chromium
/// runs with `switch` too, if given.
fn watch(
    url: &str,
    secs: u64,
    after_load: Option<&str>,
    switch: Option<&str>,
) -> anyhow::Result<Measured> {
    // Loopback candidates without mDNS names (as the tests' pages), playing without a gesture.
    let mut switches = vec![
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
    ];
    switches.extend(switch);
    let mut browser = Browser::launch_with(&switches)?;
    browser.open("about:blank")?;
    browser.on_every_document(TIME_CODE_READER)?;
    let mut first_ms = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        let until = Instant::now() + FIRST_FRAME_LIMIT;
        if let Some(script) = after_load {
            browser.navigate_loaded(url, until)?;
            browser.eval(script)?;
        } else {
            browser.call("Page.navigate", json!({ "url": url }))?;
            // The previous page's `glass` may answer until the new document replaces it.
            std::thread::sleep(Duration::from_millis(100));
        }
        let first = browser
            .first_picture(
                until,
                "({ glass: window.glass, surv: window.surv, hls: window.hlsErrors })",
            )
            .with_context(|| format!("within {FIRST_FRAME_LIMIT:?} of loading {url}"))?;
        first_ms.push(first);
        // Playing a little before the next load, as a person would.
        std::thread::sleep(Duration::from_millis(1000));
    }
    first_ms.sort_by(f64::total_cmp);
    browser.reset_glass()?;
    const PLAYER: &str = "({ freezes: (window.surv && window.surv.freezes) || 0, \
        decoded: (window.surv && window.surv.frames) || 0, kbps: (window.surv && window.surv.kbps) || 0 })";
    let before = browser.eval(PLAYER)?;
    std::thread::sleep(Duration::from_secs(secs));
    let after: Value = browser.eval(&format!("({{ glass: window.glass, player: {PLAYER} }})"))?;
    browser.close();
    let late_ms = glass_samples(&after["glass"]).context("no samples")?;
    Ok(Measured {
        first_ms,
        frames: after["glass"]["frames"].as_u64().unwrap_or(0),
        late_ms,
        unreadable: after["glass"]["unreadable"].as_u64().unwrap_or(0),
        freezes: counted(&before, &after["player"], "freezes"),
        decoded: counted(&before, &after["player"], "decoded"),
        kbps: after["player"]["kbps"].as_f64().unwrap_or(0.0),
    })
}
