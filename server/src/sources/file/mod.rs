//! `file:PATH` (or a plain path): a video file, a still image or a folder of JPEGs, told apart
//! by what the path is each time the source opens (seed 002's "image, video or webcam").
//!
//! * a folder (`folder.rs`): its `*.jpg`/`*.jpeg` files in name order at `--fps`, a slideshow or
//!   time-lapse; re-listed at each pass (`--loop`), so a growing folder is picked up;
//! * a JPEG (`still.rs`): read once, repeated at `--fps`, passed through untouched; another
//!   image format (PNG, BMP, WebP, TIFF) is converted to JPEG once by ffmpeg;
//! * anything else is a video (`video.rs`): Debian's `ffmpeg` plays it at its own rate as a
//!   child process writing MJPEG to a pipe, split into JPEGs by [`jpeg_split`].
//!
//! A path that does not exist (yet), an empty folder, a file ffmpeg cannot read: an error, and
//! the capture path runs the source again later. A video or folder that played to its end
//! without `--loop` is [`SourceError::Finished`]. Every file read and every frame from ffmpeg is
//! capped at `--max-frame-bytes`; every wait on ffmpeg is bounded.

mod folder;
pub mod jpeg_split;
mod still;
#[cfg(test)]
mod tests;
mod video;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pacer::Pacer;
use super::test_pattern::MAX_FPS;
use super::{unix_micros_now, Source, SourceError, SourceOptions, SourceRun};
use crate::capture::FrameSink;
use crate::frame::{JpegFrame, MAX_DECODED_PIXELS};
use jpeg_split::JpegSplitter;

/// Of ffmpeg's stderr, the last this many bytes are kept for the error a user reads.
const STDERR_KEEP_BYTES: usize = 2048;

/// Bytes read from a pipe or file at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A video file, a still image or a folder of JPEGs.
pub struct FileSource {
    path: PathBuf,
    /// `--fps`, for stills and folders.
    fps: u32,
    max_frame_bytes: usize,
    looped: bool,
    tools: Tools,
}

/// The programs a file source runs (the test suite points them elsewhere).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
        }
    }
}

/// What the path turned out to be when the source opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Folder,
    /// Starts like a JPEG.
    Jpeg,
    /// Another still-image format, converted once.
    Image,
    Video,
}

impl FileSource {
    /// Checks the settings; nothing is opened until the source runs.
    pub fn new(path: PathBuf, opts: &SourceOptions) -> Result<FileSource, SourceError> {
        if !(1..=MAX_FPS).contains(&opts.fps) {
            return Err(SourceError::Fps { fps: opts.fps });
        }
        Ok(FileSource {
            path,
            fps: opts.fps,
            max_frame_bytes: opts.max_frame_bytes,
            looped: opts.looped,
            tools: Tools::default(),
        })
    }

    /// Runs these programs instead of `ffmpeg` and `ffprobe` from `PATH`.
    pub fn with_tools(mut self, tools: Tools) -> FileSource {
        self.tools = tools;
        self
    }

    fn device(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn open_error(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Open {
            device: self.device(),
            reason: reason.into(),
        }
    }

    fn read_error(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Read {
            device: self.device(),
            reason: reason.into(),
        }
    }

    fn finished(&self) -> SourceError {
        SourceError::Finished {
            device: self.device(),
        }
    }

    /// Folder, JPEG, other image or video: by the file system and the file's first bytes.
    async fn kind(&self) -> Result<Kind, SourceError> {
        let path = self.path.clone();
        let sniffed = blocking(move || -> std::io::Result<Option<Kind>> {
            let meta = match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                other => other?,
            };
            if meta.is_dir() {
                return Ok(Some(Kind::Folder));
            }
            if !meta.is_file() {
                // A FIFO or a device: reading its first bytes would take them from ffmpeg.
                return Ok(Some(Kind::Video));
            }
            let mut head = [0u8; 16];
            let mut file = std::fs::File::open(&path)?;
            let n = read_up_to(&mut file, &mut head)?;
            Ok(Some(sniff(&head[..n])))
        })
        .await
        .map_err(|e| self.open_error(e))?;
        match sniffed {
            Ok(Some(kind)) => Ok(kind),
            Ok(None) => Err(self.open_error("no such file or folder (yet); trying again later")),
            Err(e) => Err(self.open_error(e.to_string())),
        }
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.device()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            match self.kind().await? {
                Kind::Folder => folder::run(self, sink, stop).await,
                Kind::Jpeg => still::run(self, false, sink, stop).await,
                Kind::Image => still::run(self, true, sink, stop).await,
                Kind::Video => video::run(self, sink, stop).await,
            }
        })
    }
}

/// A file's kind by its magic bytes; what is not a known still-image format is left to ffmpeg
/// as a video (animated GIFs included).
fn sniff(head: &[u8]) -> Kind {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Kind::Jpeg
    } else if starts(b"\x89PNG\r\n\x1a\n")
        || starts(b"BM")
        || starts(b"II*\0")
        || starts(b"MM\0*")
        || (starts(b"RIFF") && head.get(8..12) == Some(b"WEBP"))
    {
        Kind::Image
    } else {
        Kind::Video
    }
}

/// One checked JPEG read from a file.
#[derive(Debug, Clone)]
struct Loaded {
    jpeg: Bytes,
    width: u32,
    height: u32,
    /// Another JPEG follows the first: the file is an MJPEG stream, not a still.
    more: bool,
}

/// Reads the first whole JPEG of a file (no more than `max_frame_bytes` of it), checks that its
/// header reads and its size is sane. Blocking: call on a blocking thread.
fn load_jpeg(path: &Path, max_frame_bytes: usize) -> Result<Loaded, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut splitter = JpegSplitter::new(max_frame_bytes);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut first = None;
    // Bounded: the splitter keeps at most the cap plus a chunk, and reading stops at most a
    // cap past the first JPEG.
    let mut read_after_first = 0usize;
    let mut read_total = 0usize;
    loop {
        let n = file.read(&mut chunk).map_err(|e| e.to_string())?;
        read_total = read_total.saturating_add(n);
        splitter.push(&chunk[..n]);
        if first.is_none() {
            first = splitter.next_frame().map_err(|e| e.to_string())?;
            if first.is_none() && read_total > max_frame_bytes {
                // A big file with no JPEG start: not read to its end.
                return Err(format!("no JPEG in its first {max_frame_bytes} bytes"));
            }
        }
        if let Some(jpeg) = &first {
            // Anything JPEG-like after it makes the file a stream of JPEGs.
            if !matches!(splitter.next_frame(), Ok(None)) {
                return checked(jpeg.clone(), true);
            }
            read_after_first = read_after_first.saturating_add(n);
            if n == 0 || read_after_first > max_frame_bytes {
                return checked(jpeg.clone(), splitter.in_frame());
            }
        }
        if n == 0 {
            break;
        }
    }
    Err(if splitter.in_frame() {
        "truncated JPEG (no EOI marker)".into()
    } else {
        "not a JPEG (no SOI marker)".into()
    })
}

/// A whole JPEG whose header turbojpeg reads and whose size surv would decode.
fn checked(jpeg: Bytes, more: bool) -> Result<Loaded, String> {
    let header = turbojpeg::read_header(&jpeg).map_err(|e| format!("unreadable JPEG: {e}"))?;
    let (Ok(width), Ok(height)) = (u32::try_from(header.width), u32::try_from(header.height))
    else {
        return Err("JPEG size out of range".into());
    };
    if width == 0 || height == 0 || u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS {
        return Err(format!("JPEG size {width}x{height} out of range"));
    }
    Ok(Loaded {
        jpeg,
        width,
        height,
        more,
    })
}

/// Reads until `buf` is full or the end of the file.
fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Runs blocking file work (reads, JPEG header checks) off the reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("file task failed: {e}"))
}

/// Hands a JPEG to the sink, stamped now (see [`FrameSink::publish`]: one too big to pass
/// through is decoded and re-encoded on a blocking thread, never on the reactor).
async fn publish(sink: &FrameSink, jpeg: Bytes) {
    let frame = JpegFrame::new(jpeg, unix_micros_now());
    sink.publish(frame).await;
}

/// The `--fps` schedule of stills and folders, on the tokio clock.
struct Ticker {
    pacer: Pacer,
    start: Instant,
}

impl Ticker {
    fn new(fps: u32) -> Ticker {
        Ticker {
            pacer: Pacer::new(fps),
            start: Instant::now(),
        }
    }

    /// Waits for the next frame's turn; `false` when `stop` came first.
    async fn tick(&mut self, stop: &CancellationToken) -> bool {
        let wait = self.pacer.wait(self.start.elapsed());
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// The frame of this turn went out.
    fn advance(&mut self) {
        self.pacer.advance();
    }
}

/// The tail of a child's stderr, at most [`STDERR_KEEP_BYTES`], read until the pipe closes.
async fn stderr_tail(mut pipe: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > STDERR_KEEP_BYTES {
            kept.drain(..kept.len() - STDERR_KEEP_BYTES);
        }
    }
    let text = String::from_utf8_lossy(&kept);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to tell the user when a program could not be started.
fn spawn_error(program: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "{} not found: install ffmpeg (scripts/setup.sh, or apt-get install ffmpeg)",
            program.display()
        )
    } else {
        format!("cannot start {}: {e}", program.display())
    }
}

/// The path as ffmpeg's `file:` protocol, so that a file name such as `concat:x` or `tcp:y`
/// is never taken for another protocol.
fn ffmpeg_input(path: &Path) -> std::ffi::OsString {
    let mut input = std::ffi::OsString::from("file:");
    input.push(path.as_os_str());
    input
}

/// Seconds of silence from ffmpeg after which a video source counts as stuck.
const STALL: Duration = Duration::from_secs(20);
