//! A video file played by Debian's `ffmpeg` as a child process, at the file's own rate (`-re`),
//! its frames written as MJPEG to a pipe and split into JPEGs that the sink passes through.
//!
//! The size and rate come from `ffprobe` first. The child is killed when the source stops or is
//! dropped (`kill_on_drop`); its stderr is kept (the tail) for the error a user reads. At the
//! end of the file: [`SourceError::Finished`], or with `--loop` ffmpeg starts it again itself
//! (`-stream_loop -1`).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::jpeg_split::JpegSplitter;
use super::{ffmpeg_input, publish, spawn_error, stderr_tail, FileSource, READ_CHUNK_BYTES, STALL};
use crate::capture::{FrameSink, StreamShape};
use crate::sources::SourceError;

/// ffprobe answers within this for any file that ffmpeg could play.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long ffmpeg may take to exit once its output has ended.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// JPEG quality of the frames ffmpeg writes (`-q:v`, 2 = best, 31 = worst): near the source's
/// quality at a size that usually fits one datagram at 640x480.
const QSCALE: &str = "3";

/// Plays the file until its end (`Finished`), a failure, or `stop`.
pub(super) async fn run(
    src: &FileSource,
    sink: &FrameSink,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    let (shape, exact_fps) = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        probed = probe(src) => probed?,
    };
    let ffmpeg = &src.tools.ffmpeg;
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"]);
    if src.looped {
        cmd.args(["-stream_loop", "-1"]);
    }
    cmd.arg("-i")
        .arg(ffmpeg_input(&src.path))
        .args(["-map", "0:v:0", "-f", "mjpeg", "-q:v", QSCALE])
        // Each frame written as soon as it is encoded, not when ffmpeg's buffer fills.
        .args(["-flush_packets", "1", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| src.open_error(spawn_error(ffmpeg, &e)))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(src.open_error("ffmpeg's pipes were not opened"));
    };
    let errors = tokio::spawn(stderr_tail(stderr));
    sink.opened(
        &format!(
            "video {} {}x{}@{}{}",
            src.path.display(),
            shape.width,
            shape.height,
            shape.fps,
            if src.looped { " (looped)" } else { "" }
        ),
        shape,
    );

    // A very slow video (a time-lapse at one frame a minute) may be silent longer than STALL.
    let stall = exact_fps
        .and_then(|fps| Duration::try_from_secs_f64(3.0 / fps).ok())
        .map_or(STALL, |three_frames| STALL.max(three_frames));
    let mut splitter = JpegSplitter::new(src.max_frame_bytes);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut frames = 0u64;
    let ended = loop {
        loop {
            match splitter.next_frame() {
                Ok(Some(jpeg)) => {
                    frames += 1;
                    publish(sink, jpeg).await;
                }
                Ok(None) => break,
                Err(e) => sink.reject(&format!("from ffmpeg: {e}")),
            }
        }
        let read = tokio::select! {
            () = stop.cancelled() => {
                // Killed and reaped here rather than left to kill_on_drop's lazy reaping.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await;
                return Ok(());
            }
            read = tokio::time::timeout(stall, stdout.read(&mut chunk)) => read,
        };
        match read {
            Err(_) => break Err(format!("ffmpeg wrote nothing for {} s", stall.as_secs())),
            Ok(Err(e)) => break Err(format!("reading ffmpeg's output: {e}")),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => splitter.push(&chunk[..n]),
        }
    };
    if splitter.in_frame() {
        sink.reject("from ffmpeg: its last JPEG was cut short");
    }
    let status = match ended {
        Ok(()) => tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await,
        Err(_) => {
            let _ = child.start_kill();
            Ok(child.wait().await)
        }
    };
    let stderr = tokio::time::timeout(Duration::from_secs(1), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let said = |what: String| {
        if stderr.is_empty() {
            what
        } else {
            format!("{what}: {stderr}")
        }
    };
    if let Err(why) = ended {
        return Err(src.read_error(said(why)));
    }
    match status {
        Err(_) => Err(src.read_error(said("ffmpeg did not exit after its output ended".into()))),
        Ok(Err(e)) => Err(src.read_error(format!("waiting for ffmpeg: {e}"))),
        Ok(Ok(status)) if !status.success() => {
            let what = format!("ffmpeg failed ({status}) after {frames} frames");
            Err(if frames == 0 {
                src.open_error(said(what))
            } else {
                src.read_error(said(what))
            })
        }
        // With -stream_loop -1 ffmpeg never ends by itself; it did: try again later.
        Ok(Ok(_)) if src.looped => Err(src.read_error(said(format!(
            "ffmpeg stopped looping after {frames} frames"
        )))),
        Ok(Ok(_)) => {
            tracing::info!(source = %src.device(), frames, "video played to its end");
            Err(src.finished())
        }
    }
}

/// The video's size and rate from ffprobe (rate 0 when it does not say: the sink measures it),
/// and the rate unrounded.
async fn probe(src: &FileSource) -> Result<(StreamShape, Option<f64>), SourceError> {
    let ffprobe = &src.tools.ffprobe;
    let run = Command::new(ffprobe)
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args([
            "stream=width,height,avg_frame_rate,r_frame_rate",
            "-of",
            "default=nw=1",
        ])
        .arg(ffmpeg_input(&src.path))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Err(_) => return Err(src.open_error("ffprobe did not answer within 10 s")),
        Ok(Err(e)) => return Err(src.open_error(spawn_error(ffprobe, &e))),
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        return Err(src.open_error(format!(
            "not a video ffmpeg can play: {}",
            if stderr.is_empty() {
                "ffprobe failed"
            } else {
                stderr
            }
        )));
    }
    parse_probe(&text).ok_or_else(|| src.open_error("no video stream in the file"))
}

/// `width=…`, `height=…`, `avg_frame_rate=N/D`, `r_frame_rate=N/D` lines: the shape (its rate
/// rounded, 0 below one frame a second or unknown) and the exact rate; `None` without a size
/// (no video stream).
pub(super) fn parse_probe(text: &str) -> Option<(StreamShape, Option<f64>)> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
    };
    let width = field("width")?.parse().ok().filter(|&w| w > 0)?;
    let height = field("height")?.parse().ok().filter(|&h| h > 0)?;
    let rate = |key: &str| -> Option<f64> {
        let (num, den) = field(key)?.split_once('/')?;
        let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
        let fps = num / den;
        (fps.is_finite() && fps > 0.0 && fps <= 1000.0).then_some(fps)
    };
    let exact = rate("avg_frame_rate").or_else(|| rate("r_frame_rate"));
    // In range 0..=1000 by the filter above: the cast cannot truncate.
    let fps = exact.map_or(0, |f| f.round() as u32);
    Some((StreamShape { width, height, fps }, exact))
}
