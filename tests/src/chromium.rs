//! Headless Chromium for the tests that look at a page as a person would: driven through its
//! DevTools protocol over `--remote-debugging-pipe` (messages on its fds 3 and 4, given here as
//! the pipes to its stdin and stdout by the shell that starts it), so no websocket client is
//! needed. Needs `chromium` (scripts/setup.sh); a missing browser fails the test rather than
//! skipping it. Blocking: run it off the async runtime.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{Reaper, IO_TIMEOUT};

/// A headless Chromium on a DevTools pipe, with one page attached. Blocking: run it off the
/// async runtime.
pub struct Browser {
    to: ChildStdin,
    /// Messages from chromium, read by a thread of their own (so every wait has a deadline).
    from: mpsc::Receiver<Vec<u8>>,
    next_id: u64,
    session: Option<String>,
    // Dropped last: the browser is killed, then its profile removed.
    child: Reaper,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch() -> anyhow::Result<Browser> {
        Browser::launch_with(&[])
    }

    /// [`Browser::launch`] with more switches (each one word, no shell quoting needed).
    pub fn launch_with(switches: &[&str]) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --no-first-run --remote-debugging-pipe --user-data-dir={} --window-size=1000,700 \
             {} about:blank 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null",
            profile.path().display(),
            switches.join(" ")
        );
        let mut child: Child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting chromium (install it: scripts/setup.sh)")?;
        let to = child.stdin.take().context("no pipe to chromium")?;
        let mut pipe = BufReader::new(child.stdout.take().context("no pipe from chromium")?);
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match pipe.read_until(0, &mut msg) {
                Ok(n) if n > 0 && msg.last() == Some(&0) => {
                    msg.pop();
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        });
        Ok(Browser {
            to,
            from,
            next_id: 1,
            session: None,
            child: Reaper(child),
            _profile: profile,
        })
    }

    /// Sends a command (to the attached page, once there is one) and waits for its result.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to.write_all(&bytes).context("chromium's pipe")?;
        let until = Instant::now() + IO_TIMEOUT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let buf = self
                .from
                .recv_timeout(left)
                .with_context(|| format!("no answer to {method}"))?;
            let reply: Value = serde_json::from_slice(&buf)?;
            if reply["id"] != json!(id) {
                continue; // an event
            }
            if let Some(e) = reply.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(reply["result"].clone());
        }
    }

    /// Opens `url` in a new page and attaches to it.
    pub fn open(&mut self, url: &str) -> anyhow::Result<()> {
        let target = self.call("Target.createTarget", json!({ "url": url }))?;
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )?;
        let session = attached["sessionId"].as_str().context("no session")?;
        self.session = Some(session.to_string());
        Ok(())
    }

    /// Runs `script` at the start of every document the page loads from now on.
    pub fn on_every_document(&mut self, script: &str) -> anyhow::Result<()> {
        self.call("Page.enable", json!({}))?;
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": script }),
        )?;
        Ok(())
    }

    /// Navigates the page to `url` and waits until that document has loaded, `until` at most.
    pub fn navigate_loaded(&mut self, url: &str, until: Instant) -> anyhow::Result<()> {
        self.call("Page.navigate", json!({ "url": url }))?;
        let loaded = format!(
            "document.readyState === 'complete' && location.href === {}",
            serde_json::to_string(url)?
        );
        while self.eval(&loaded)? != json!(true) {
            if Instant::now() > until {
                bail!("{url} did not load in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until the page's [`TIME_CODE_READER`] has seen a first picture, and returns when
    /// (`window.glass.first`, ms from the navigation's start); after `until`, fails with what
    /// `state` (a JS expression) says of the page.
    pub fn first_picture(&mut self, until: Instant, state: &str) -> anyhow::Result<f64> {
        loop {
            if let Some(ms) = self.eval("window.glass && window.glass.first")?.as_f64() {
                return Ok(ms);
            }
            if Instant::now() > until {
                bail!("no picture in time: {}", self.eval(state)?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts [`TIME_CODE_READER`]'s counts afresh (frames, samples, unreadable codes).
    pub fn reset_glass(&mut self) -> anyhow::Result<()> {
        self.eval(
            "(() => { const g = window.glass; g.samples = []; g.frames = 0; g.unreadable = 0; })()",
        )?;
        Ok(())
    }

    /// Evaluates a JS expression in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        Ok(r["result"]["value"].clone())
    }

    pub fn close(mut self) {
        let _ = self.call("Browser.close", json!({}));
        let until = Instant::now() + IO_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// hls.js, which `scripts/setup.sh` puts in the workspace's `models/`: the LL-HLS player of web
/// pages where the browser has no HLS of its own, as Chromium has none. Its source, to evaluate
/// in a page; a missing file fails the caller (setup installs it).
fn hls_js() -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/hls.min.js");
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (scripts/setup.sh installs it)", path.display()))
}

/// A script that loads hls.js ([`hls_js`]) and plays `playlist` (of any origin: HLS answers
/// with CORS) with it in low-latency mode, in a muted `<video>` inside a new `#picture`:
/// `window.hlsErrors` lists hls.js's errors (`"fatal: …"` for a fatal one), `window.hls` is
/// the player; the script's value is hls.js's version.
pub fn play_hls(playlist: &str) -> anyhow::Result<String> {
    let url = serde_json::to_string(playlist)?;
    let player = format!(
        r#"(() => {{
  const box = document.createElement("div");
  box.id = "picture";
  const v = document.createElement("video");
  v.muted = true;
  v.autoplay = true;
  v.playsInline = true;
  box.appendChild(v);
  document.body.appendChild(box);
  const errors = window.hlsErrors = [];
  const hls = window.hls = new Hls({{ lowLatencyMode: true }});
  hls.on(Hls.Events.ERROR, (_, d) => errors.push((d.fatal ? "fatal: " : "") + d.details +
    (d.response ? " " + d.response.code + " " + d.response.text : "") + (d.error ? " " + d.error : "")));
  hls.loadSource({url});
  hls.attachMedia(v);
  v.play().catch(e => errors.push("play: " + e));
  return Hls.version;
}})()"#
    );
    Ok(format!("{};\n{player}", hls_js()?))
}

/// The lateness behind capture (ms) of every picture [`TIME_CODE_READER`] read, sorted, from
/// the page's `window.glass` as evaluated; `None` when it has no samples.
pub fn glass_samples(glass: &Value) -> Option<Vec<f64>> {
    let mut late: Vec<f64> = glass["samples"]
        .as_array()?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    late.sort_by(f64::total_cmp);
    Some(late)
}

/// A script for the start of every page (`Page.addScriptToEvaluateOnNewDocument`): every
/// `<video>` and `<img>` inside `#picture` is watched, and `window.glass` collects what each
/// frame shown says: `first` (`performance.now()` at the first frame), `frames`, `samples` (each
/// frame's lateness behind its capture, ms, by the code the test pattern draws along its
/// bottom and the same wall clock) and `unreadable`. The layout mirrors `TimeCode::layout`.
pub const TIME_CODE_READER: &str = r##"(() => {
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
