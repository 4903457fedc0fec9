//! A still image shown at `--fps`: a JPEG read once and sent as it is, again and again (each
//! frame the same bytes, passed through); another format converted to JPEG once by ffmpeg.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::jpeg_split::JpegSplitter;
use super::{
    blocking, checked, ffmpeg_input, load_jpeg, publish, spawn_error, stderr_tail, video,
    FileSource, Loaded, Ticker, READ_CHUNK_BYTES,
};
use crate::capture::{FrameSink, StreamShape};
use crate::sources::SourceError;

/// Converting one picture takes ffmpeg well under this.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(30);

/// JPEG quality ffmpeg converts at (`-q:v`, 2 = best, 31 = worst): it is done once.
const CONVERT_QSCALE: &str = "2";

/// Shows the still at `--fps` until `stop`. `convert`: not a JPEG, ffmpeg converts it first.
pub(super) async fn run(
    src: &FileSource,
    convert: bool,
    sink: &FrameSink,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    let loaded = if convert {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            converted = convert_once(src) => converted?,
        }
    } else {
        let (path, cap) = (src.path.clone(), src.max_frame_bytes);
        blocking(move || load_jpeg(&path, cap))
            .await
            .and_then(|r| r)
            .map_err(|reason| src.open_error(reason))?
    };
    if loaded.more {
        // Starts like a JPEG but holds several: an MJPEG stream file, played as a video.
        return video::run(src, sink, stop).await;
    }
    let Loaded {
        jpeg,
        width,
        height,
        ..
    } = loaded;
    let fps = src.fps;
    sink.opened(
        &format!("still image {} {width}x{height}@{fps}", src.path.display()),
        StreamShape { width, height, fps },
    );
    let mut ticker = Ticker::new(fps);
    while ticker.tick(stop).await {
        publish(sink, jpeg.clone()).await;
        ticker.advance();
    }
    Ok(())
}

/// The picture as one JPEG, converted by ffmpeg (its output capped), checked.
async fn convert_once(src: &FileSource) -> Result<Loaded, SourceError> {
    let ffmpeg = &src.tools.ffmpeg;
    let mut child = Command::new(ffmpeg)
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(ffmpeg_input(&src.path))
        .args(["-map", "0:v:0", "-frames:v", "1", "-f", "mjpeg", "-q:v"])
        .args([CONVERT_QSCALE, "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| src.open_error(spawn_error(ffmpeg, &e)))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(src.open_error("ffmpeg's pipes were not opened"));
    };
    let errors = tokio::spawn(stderr_tail(stderr));
    let mut splitter = JpegSplitter::new(src.max_frame_bytes);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let read = async {
        loop {
            match splitter.next_frame() {
                Ok(Some(jpeg)) => return Ok(Some(jpeg)),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match stdout.read(&mut chunk).await {
                Ok(0) => return Ok(None),
                Ok(n) => splitter.push(&chunk[..n]),
                Err(e) => return Err(format!("reading ffmpeg's output: {e}")),
            }
        }
    };
    let outcome = tokio::time::timeout(CONVERT_TIMEOUT, read).await;
    // One picture is all that is wanted: ffmpeg is done or is stopped here.
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let stderr = tokio::time::timeout(Duration::from_secs(1), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let why = |what: &str| {
        let what = format!("converting it to JPEG with ffmpeg: {what}");
        if stderr.is_empty() {
            src.open_error(what)
        } else {
            src.open_error(format!("{what}: {stderr}"))
        }
    };
    match outcome {
        Err(_) => Err(why("no picture within 30 s")),
        Ok(Err(reason)) => Err(why(&reason)),
        Ok(Ok(None)) => Err(why("no picture")),
        Ok(Ok(Some(jpeg))) => checked(jpeg, false).map_err(|reason| why(&reason)),
    }
}
