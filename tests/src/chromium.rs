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
