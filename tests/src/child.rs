//! Programs a test runs to completion (the server binary, ffmpeg, ffprobe): each is given a
//! time limit and killed when it overruns it, so a broken build fails a test instead of hanging.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::fixtures::Reaper;

/// How often a running child is looked at.
const POLL: Duration = Duration::from_millis(10);

/// Runs `cmd` with no stdin and captured stdout and stderr, like [`Command::output`], but kills
/// it and fails if it has not exited within `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    output_within_reading(cmd, Stdio::null(), limit)
}

/// [`output_within`] with `stdin` as the child's standard input (another child's output, say).
pub fn output_within_reading(
    cmd: &mut Command,
    stdin: Stdio,
    limit: Duration,
) -> anyhow::Result<Output> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = Reaper(
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    );
    // Both pipes drained as the child writes, so that a chatty child never blocks on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.0.stderr.take().map(|p| Box::new(p) as _));
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().context("waiting for the child")? {
            break status;
        }
        if Instant::now() >= until {
            drop(child); // killed and reaped; its pipes close, so the drains end
            let err = stderr.join().unwrap_or_default();
            bail!(
                "{what} did not exit within {limit:?} and was killed; its stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(POLL);
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_captured_like_command_output() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_child_that_overruns_is_killed_and_reported() {
        let started = Instant::now();
        let err = output_within(
            Command::new("sh").args(["-c", "echo started >&2; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(
            err.contains("did not exit within") && err.contains("started"),
            "{err}"
        );
    }
}
