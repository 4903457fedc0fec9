//! ffmpeg and ffprobe as independent judges of recorded files: strict decoding, what a file
//! declares and holds, and its video copied out unchanged. Each run is bounded in time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::child::output_within;

/// No file a test records takes ffmpeg or ffprobe longer than this.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// What ffprobe says of a file's first video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Frames ffprobe decoded (`-count_frames`), not the count the container declares.
    pub frames: u64,
    /// How long the file plays, seconds.
    pub duration_s: f64,
}

fn run(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<std::process::Output> {
    output_within(Command::new(tool).args(args), TOOL_TIMEOUT)
        .with_context(|| format!("running {tool} (install ffmpeg: scripts/setup.sh)"))
}

/// Runs the strict decode check on a media file: every frame must decode, and ffmpeg
/// must not complain about anything.
pub fn ffmpeg_check(path: &Path) -> anyhow::Result<()> {
    let mut args: Vec<&std::ffi::OsStr> = ["-v", "error", "-err_detect", "explode", "-xerror"]
        .iter()
        .map(|s| s.as_ref())
        .collect();
    args.extend([
        "-i".as_ref(),
        path.as_os_str(),
        "-f".as_ref(),
        "null".as_ref(),
        "-".as_ref(),
    ]);
    let out = run("ffmpeg", &args)?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "ffmpeg rejects {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What ffprobe says of a file's first video stream, its frames counted by decoding them.
pub fn probe(path: &Path) -> anyhow::Result<Probe> {
    let mut args: Vec<&std::ffi::OsStr> = [
        "-v",
        "error",
        "-count_frames",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,width,height,nb_read_frames:format=duration",
        "-of",
        "default=nw=1",
    ]
    .iter()
    .map(|s| s.as_ref())
    .collect();
    args.push(path.as_os_str());
    let out = run("ffprobe", &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ffprobe failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("ffprobe gave no {k} for {}: {text}", path.display()))
    };
    let number = |k: &str| -> anyhow::Result<u64> {
        let v = field(k)?;
        v.parse()
            .with_context(|| format!("ffprobe's {k}={v} for {}", path.display()))
    };
    Ok(Probe {
        codec: field("codec_name")?.to_owned(),
        width: u32::try_from(number("width")?)?,
        height: u32::try_from(number("height")?)?,
        frames: number("nb_read_frames")?,
        duration_s: field("duration")?
            .parse()
            .with_context(|| format!("ffprobe's duration for {}", path.display()))?,
    })
}

/// The presentation times (s) of the packets of a file's first video stream, in file order.
pub fn packet_times(path: &Path) -> anyhow::Result<Vec<f64>> {
    let mut args: Vec<&std::ffi::OsStr> = [
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time",
        "-of",
        "csv=p=0",
    ]
    .iter()
    .map(|s| s.as_ref())
    .collect();
    args.push(path.as_os_str());
    let out = run("ffprobe", &args)?;
    if !out.status.success() {
        bail!(
            "ffprobe failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.trim_end_matches(',')
                .parse::<f64>()
                .with_context(|| format!("ffprobe's pts_time {l:?} for {}", path.display()))
        })
        .collect()
}

/// What ffprobe says of a file's first video stream: (codec, frames decoded, duration in s).
pub fn ffprobe(path: &Path) -> anyhow::Result<(String, u64, f64)> {
    let p = probe(path)?;
    Ok((p.codec, p.frames, p.duration_s))
}

/// The file's video stream copied out without re-encoding, as concatenated JPEGs: for an MJPEG
/// file, exactly the JPEGs that were stored, byte for byte.
pub fn mjpeg_stream(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["-v".as_ref(), "error".as_ref(), "-i".as_ref()];
    args.push(path.as_os_str());
    args.extend(
        ["-map", "0:v", "-c", "copy", "-f", "mjpeg", "-"]
            .iter()
            .map(|s| -> &std::ffi::OsStr { s.as_ref() }),
    );
    let out = run("ffmpeg", &args)?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not copy the video out of {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{test_jpeg, Picture, Subsamp};

    #[test]
    fn an_mjpeg_avi_is_judged_and_a_truncated_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = test_jpeg(64, 48, Picture::Gradient(3), 85, Subsamp::Sub2x2);
        let image = dir.path().join("frame.jpg");
        std::fs::write(&image, &jpeg).unwrap();
        // Three copies of the JPEG at 10 fps, muxed by ffmpeg itself without re-encoding.
        let avi = dir.path().join("three.avi");
        let mut mux = Command::new("ffmpeg");
        mux.args(["-v", "error", "-framerate", "10", "-loop", "1", "-i"])
            .arg(&image)
            .args(["-frames:v", "3", "-c", "copy"])
            .arg(&avi);
        assert!(output_within(&mut mux, TOOL_TIMEOUT)
            .unwrap()
            .status
            .success());

        ffmpeg_check(&avi).unwrap();
        let p = probe(&avi).unwrap();
        assert_eq!(
            (p.codec.as_str(), p.width, p.height, p.frames),
            ("mjpeg", 64, 48, 3)
        );
        assert!((p.duration_s - 0.3).abs() < 0.001, "{p:?}");
        assert_eq!(
            ffprobe(&avi).unwrap(),
            ("mjpeg".to_string(), 3, p.duration_s)
        );
        assert_eq!(mjpeg_stream(&avi).unwrap(), jpeg.repeat(3));

        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() / 2]).unwrap();
        assert!(ffmpeg_check(&cut).is_err());
        assert!(probe(&dir.path().join("missing.avi")).is_err());
    }
}
