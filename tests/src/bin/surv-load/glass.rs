//! `--glass SECS`: glass to glass in a browser. The server runs the test pattern, whose frames
//! carry their capture time as a code along the bottom (`TimeCode` in the server's test
//! pattern); headless Chromium opens the camera's live page, and a script in the page reads the
//! code back from every frame it is about to show (WebRTC: `requestVideoFrameCallback` on the
//! `<video>`; MJPEG: the `<img>`'s `load`), draws that row into a canvas and compares the code
//! with the same wall clock. Both ends run on this machine, so there is no clock offset.
//!
//! Per mode (the page's WebRTC, then `?play=mjpeg`): the first frame after the page starts
//! loading, over `LOADS` loads, then over SECS the latency of every frame (p50, p99, max), the
//! frames that came, the codes that could not be read, WebRTC's `freezeCount`, and the bitrate
//! the page measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use surv_tests::chromium::Browser;

use crate::http::free_port;
use crate::server::ServerProc;
use crate::Args;

/// Page loads timed for the first frame.
const LOADS: usize = 10;
/// The longest a load may take to show its first frame before the run fails.
const FIRST_FRAME_LIMIT: Duration = Duration::from_secs(15);

/// Runs at the start of every page the browser loads: `window.glass` collects what each frame
/// shown says. The layout mirrors `TimeCode::layout` (the server's test pattern).
const GLASS: &str = r##"(() => {
  const g = window.glass = { first: null, frames: 0, samples: [], unreadable: 0 };
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const read = (src, w, h) => {
    const cell = Math.floor(w / 32) & ~1, strip = Math.max(8, Math.floor(h / 24)) & ~1;
    if (cell < 2 || strip * 4 > h) return null;
    const x0 = Math.floor((w - 32 * cell) / 2) & ~1, y = h - strip / 2;
    canvas.width = w;
    canvas.height = 1;
    ctx.drawImage(src, 0, y, w, 1, 0, 0, w, 1);
    const row = ctx.getImageData(0, 0, w, 1).data;
    let v = 0;
    for (let i = 0; i < 32; i++) {
      const x = 4 * (x0 + i * cell + cell / 2);
      const luma = 0.299 * row[x] + 0.587 * row[x + 1] + 0.114 * row[x + 2];
      v = v * 2 + (luma >= 128 ? 1 : 0);
    }
    return v;
  };
  const seen = (src, w, h) => {
    const now = Date.now();
    if (g.first === null) g.first = performance.now();
    g.frames += 1;
    const code = w && h ? read(src, w, h) : null;
    const late = code === null ? NaN : ((now % 4294967296) - code + 4294967296) % 4294967296;
    if (late >= 0 && late < 10000) g.samples.push(late); else g.unreadable += 1;
  };
  const hooked = new WeakSet();
  setInterval(() => {
    for (const v of document.querySelectorAll("#picture video")) {
      if (hooked.has(v)) continue;
      hooked.add(v);
      const each = () => { seen(v, v.videoWidth, v.videoHeight); v.requestVideoFrameCallback(each); };
      v.requestVideoFrameCallback(each);
    }
    for (const img of document.querySelectorAll("#picture img")) {
      if (hooked.has(img)) continue;
      hooked.add(img);
      img.addEventListener("load", () => seen(img, img.naturalWidth, img.naturalHeight));
    }
  }, 5);
})()"##;

pub fn run(args: &Args, secs: u64) -> anyhow::Result<()> {
    if !(1..=3600).contains(&secs) {
        bail!("--glass takes 1..=3600 seconds");
    }
    let (w, h) = args.size;
    for (mode, query) in [("webrtc", ""), ("mjpeg", "?play=mjpeg")] {
        let http = free_port()?;
        let webrtc = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let extra = [
            "--http-port".to_string(),
            http.to_string(),
            "--webrtc-port".to_string(),
            webrtc.to_string(),
        ];
        let server = ServerProc::start_with(args, 16, &extra)?;
        let url = format!("http://127.0.0.1:{http}/cam/main/{query}");
        let measured = watch(&url, secs);
        server.stop();
        let m = measured.with_context(|| format!("the {mode} page"))?;
        println!(
            "glass {mode} {w}x{h}@{}: first frame over {LOADS} loads median {:.0} ms, max {:.0} ms; \
             over {secs} s: {} frames ({:.1}/s), latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, \
             unreadable {}, freezeCount {}, bitrate {:.0} kbit/s",
            args.fps,
            m.first_ms[LOADS / 2],
            m.first_ms[LOADS - 1],
            m.frames,
            m.frames as f64 / secs as f64,
            pct(&m.late_ms, 0.50),
            pct(&m.late_ms, 0.99),
            m.late_ms.last().copied().unwrap_or(f64::NAN),
            m.unreadable,
            m.freezes,
            m.kbps,
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
    kbps: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn watch(url: &str, secs: u64) -> anyhow::Result<Measured> {
    // Loopback candidates without mDNS names (as the tests' pages), playing without a gesture.
    let mut browser = Browser::launch_with(&[
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
    ])?;
    browser.open("about:blank")?;
    browser.call("Page.enable", json!({}))?;
    browser.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": GLASS }),
    )?;
    let mut first_ms = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        browser.call("Page.navigate", json!({ "url": url }))?;
        // The previous page's `glass` may answer until the new document replaces it.
        std::thread::sleep(Duration::from_millis(100));
        let until = Instant::now() + FIRST_FRAME_LIMIT;
        let first = loop {
            let first = browser.eval("window.glass && window.glass.first")?;
            if let Some(ms) = first.as_f64() {
                break ms;
            }
            if Instant::now() > until {
                let state = browser.eval("({ glass: window.glass, surv: window.surv })")?;
                bail!("no frame within {FIRST_FRAME_LIMIT:?} of loading {url}: {state}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        first_ms.push(first);
        // Playing a little before the next load, as a person would.
        std::thread::sleep(Duration::from_millis(1000));
    }
    first_ms.sort_by(f64::total_cmp);
    let before = browser.eval(
        "(() => { const g = window.glass; g.samples = []; g.frames = 0; g.unreadable = 0; \
         return (window.surv && window.surv.freezes) || 0; })()",
    )?;
    std::thread::sleep(Duration::from_secs(secs));
    let after: Value = browser.eval(
        "({ glass: window.glass, freezes: (window.surv && window.surv.freezes) || 0, \
            kbps: (window.surv && window.surv.kbps) || 0 })",
    )?;
    browser.close();
    let mut late_ms: Vec<f64> = after["glass"]["samples"]
        .as_array()
        .context("no samples")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    late_ms.sort_by(f64::total_cmp);
    Ok(Measured {
        first_ms,
        frames: after["glass"]["frames"].as_u64().unwrap_or(0),
        late_ms,
        unreadable: after["glass"]["unreadable"].as_u64().unwrap_or(0),
        freezes: after["freezes"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before.as_u64().unwrap_or(0)),
        kbps: after["kbps"].as_f64().unwrap_or(0.0),
    })
}
