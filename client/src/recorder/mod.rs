//! Rolling recording segments of the received stream, AVI (the JPEGs as they came) or MP4
//! (H.264), written off the display path.
//!
//! The display hands each received frame to [`RecorderHandle::push`], which never blocks: a
//! bounded queue feeds one dedicated thread that owns the file and, for MP4, the encoder. When the
//! queue is full (a slow disk, or an encoder that cannot keep up) the frame is dropped and counted,
//! so a slow recorder costs recorded frames, never displayed ones, and never memory.
//!
//! Segments follow the capture clock carried in the stream, not arrival time, so network jitter
//! does not move the cuts, and playback runs at capture speed across lost frames: AVI lays frames
//! on a grid of slots at the stream's nominal interval with empty slots for missing ones (see
//! [`avi`](crate::avi)), MP4 gives each sample its own capture time. A segment covers
//! `[first capture, first capture + segment)` and starts on a whole frame (for MP4 an IDR picture);
//! the first frame outside that window starts the next one. A segment is also cut early when
//!
//! * the frame dimensions change (the server downscales under load): each file has one size.
//! * an AVI would pass the AVI 1.0 size limit ([`MAX_AVI_BYTES`](crate::avi::MAX_AVI_BYTES)).
//!
//! A segment is written as `surv-YYYYmmdd-HHMMSS.avi.part` (or `.mp4.part`; local time of its
//! first frame, `-N` appended if the name is taken) and renamed once complete and synced, so a
//! `.avi`/`.mp4` file is always whole. What is written becomes crash-safe at least every
//! [`CHECKPOINT`] of capture time (and after that long without frames): MP4 writes each fragment
//! (an IDR picture and what follows, under [`CHECKPOINT`] long) as it completes, AVI flushes and
//! patches its header. A killed viewer leaves a `.part` that plays up to the last checkpoint.
//!
//! If writing fails (disk full, directory gone), the segment is abandoned: its `.part` stays, the
//! frames of its window are dropped, and the next window tries a fresh file. One error is logged
//! per run of failures, not one per frame. After each closed segment, [`Retention`] deletes the
//! oldest closed segments beyond the cap.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Local, Utc};
use thiserror::Error;
use tracing::{debug, error, info, trace, warn};

use crate::avi::AviWriter;
use crate::h264::JpegToH264;
use crate::mp4::{Fmp4Writer, Sample, TIMESCALE};
pub use crate::retention::Retention;

/// Frames waiting for the recorder thread: about two seconds at 30 fps.
pub const QUEUE_FRAMES: usize = 64;

/// What is written becomes playable-after-a-crash at least this often: the MP4 fragment length
/// bound, and the AVI header-patch interval (both by capture time, and after this long idle).
pub const CHECKPOINT: Duration = Duration::from_secs(1);

/// Frame rate assumed when the stream does not say: 30 fps.
const DEFAULT_FPS: u32 = 30;

/// Write buffer in front of each AVI file: a few typical frames per `write` system call.
const WRITE_BUFFER_BYTES: usize = 128 << 10;

/// At most one "dropping frames" warning per this interval.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// How many `-N` suffixes to try before giving up on a name.
const MAX_NAME_TRIES: u32 = 1000;

/// Container and codec of the segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// MJPEG in AVI 1.0: the received JPEGs stored as they came.
    #[default]
    Avi,
    /// H.264 in fragmented MP4: plays in browsers; each JPEG is decoded and re-encoded.
    Mp4,
}

impl Format {
    /// File extension of a closed segment.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Avi => "avi",
            Format::Mp4 => "mp4",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "avi" => Ok(Format::Avi),
            "mp4" => Ok(Format::Mp4),
            _ => Err(format!("unknown format {s:?} (use avi or mp4)")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Where, how long, in what format, and how much to keep.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Directory for the segments; created if missing.
    pub dir: PathBuf,
    /// Capture time covered by one file.
    pub segment: Duration,
    pub format: Format,
    /// Oldest closed segments beyond this are deleted.
    pub keep: Retention,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            dir: PathBuf::from("recordings"),
            segment: Duration::from_secs(15),
            format: Format::Avi,
            keep: Retention::default(),
        }
    }
}

/// One received frame to record.
#[derive(Clone)]
pub struct RecFrame {
    /// A whole JPEG, stored as is (including the surv tag's COM segment).
    pub jpeg: Bytes,
    /// Capture time carried in the stream, µs since the Unix epoch.
    pub capture_unix_us: u64,
}

impl fmt::Debug for RecFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecFrame")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .finish()
    }
}

/// What the recorder did, returned by [`RecorderHandle::finish`].
///
/// Every pushed frame is counted once: `frames_written + frames_dropped` = frames pushed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecorderReport {
    /// Closed (complete, renamed) segments, in order; some may since have been deleted by
    /// retention (see `deleted`).
    pub segments: Vec<PathBuf>,
    /// Frames in those segments.
    pub frames_written: u64,
    /// Frames not in any closed segment: the queue was full, the JPEG was unreadable or could
    /// not be coded, or their segment failed to write.
    pub frames_dropped: u64,
    /// Failed attempts to create, write or close a segment.
    pub write_errors: u64,
    /// Closed segments deleted by retention (from this run or earlier ones).
    pub deleted: Vec<PathBuf>,
    /// CPU time of the recorder thread per written frame (JPEG decode, H.264 encode, muxing,
    /// write system calls), µs.
    pub cpu_us_per_frame: f64,
}

/// Why the recorder could not start.
#[derive(Debug, Error)]
pub enum RecorderError {
    #[error("recording segment length must be more than zero")]
    ZeroSegment,
    #[error("cannot start the recorder thread")]
    Spawn(#[source] io::Error),
}

/// The display side of the recorder: push frames, then [`finish`](Self::finish).
///
/// Dropped without `finish`, the thread still closes the segment, but in the background: a
/// process that exits right after may leave it as `.part`.
pub struct RecorderHandle {
    tx: SyncSender<RecFrame>,
    /// Frames refused because the queue was full or the thread was gone.
    refused: AtomicU64,
    /// When refusals were last logged, ms after `started`; `u64::MAX` for never. A disk that
    /// is just too slow refuses every few frames: that is one warning per interval, not a flood.
    refusal_logged_ms: AtomicU64,
    started: Instant,
    thread: JoinHandle<RecorderReport>,
}

/// Starts the recorder thread for a stream of `stream_fps` frames per second (0: unknown).
///
/// A directory that cannot be created or written to is logged as an error, not returned: the
/// stream goes on, and recording starts by itself once the directory is usable.
pub fn spawn(cfg: RecorderConfig, stream_fps: u32) -> Result<RecorderHandle, RecorderError> {
    spawn_with(cfg, stream_fps, Disk)
}

impl RecorderHandle {
    /// Queues a frame for recording. Never blocks: returns false, and counts the frame as
    /// dropped, if the queue is full.
    pub fn push(&self, f: RecFrame) -> bool {
        match self.tx.try_send(f) {
            Ok(()) => true,
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                let dropped = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let logged_ms = self.refusal_logged_ms.load(Ordering::Relaxed);
                let due = logged_ms == u64::MAX
                    || now_ms.saturating_sub(logged_ms) >= REFUSAL_LOG_INTERVAL_MS;
                if due
                    && self
                        .refusal_logged_ms
                        .compare_exchange(logged_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    warn!(
                        frames_dropped = dropped,
                        "recorder falling behind (slow disk or encoder), dropping frames from the \
                         recording"
                    );
                }
                trace!(capture_unix_us = f.capture_unix_us, "recorder queue full");
                false
            }
        }
    }

    /// Records what is queued, closes the current segment properly and stops the thread.
    pub fn finish(self) -> RecorderReport {
        let RecorderHandle {
            tx,
            refused,
            thread,
            ..
        } = self;
        drop(tx);
        let mut report = thread.join().unwrap_or_else(|_| {
            // The thread does not panic by design; if it did, its segments are unaccounted.
            error!("recorder thread panicked; the last segment may be left as .part");
            RecorderReport::default()
        });
        report.frames_dropped += refused.into_inner();
        report
    }
}

/// Where segment files are created: the seam through which tests inject a failing disk.
trait SegmentStore: Send + 'static {
    type File: Write + Seek + Send;
    /// Creates `path`, failing with `AlreadyExists` if it is there.
    fn create_new(&mut self, path: &Path) -> io::Result<Self::File>;
    /// Makes the written bytes durable, before the file is renamed to its final name.
    fn sync(&mut self, file: &Self::File) -> io::Result<()>;
}

struct Disk;

impl SegmentStore for Disk {
    type File = File;

    fn create_new(&mut self, path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    fn sync(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

fn spawn_with<S: SegmentStore>(
    cfg: RecorderConfig,
    stream_fps: u32,
    store: S,
) -> Result<RecorderHandle, RecorderError> {
    if cfg.segment.is_zero() {
        return Err(RecorderError::ZeroSegment);
    }
    let fps = if stream_fps == 0 {
        DEFAULT_FPS
    } else {
        stream_fps
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
    let span = tracing::info_span!("recorder", dir = %cfg.dir.display(), format = %cfg.format);
    // The thread logs to the caller's subscriber, also when it is a thread-local default.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let writer = SegmentWriter {
        dir: cfg.dir,
        format: cfg.format,
        keep: cfg.keep,
        segment_us: u64::try_from(cfg.segment.as_micros()).unwrap_or(u64::MAX),
        fps,
        frame_us: (1_000_000 / fps).max(1),
        store,
        current: None,
        abandoned: None,
        failing: false,
        invalid_frames: 0,
        uncoded_frames: 0,
        busy: Duration::ZERO,
        report: RecorderReport::default(),
    };
    let thread = thread::Builder::new()
        .name("surv-recorder".into())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || span.in_scope(|| writer.run(rx)))
        })
        .map_err(RecorderError::Spawn)?;
    Ok(RecorderHandle {
        tx,
        refused: AtomicU64::new(0),
        refusal_logged_ms: AtomicU64::new(u64::MAX),
        started: Instant::now(),
        thread,
    })
}

/// Creates `dir` if need be and a file in it, so that an unusable directory is reported at
/// start-up rather than at the first segment.
fn probe_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".surv-write-probe-{}", std::process::id()));
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"surv"));
    let removed = fs::remove_file(&probe);
    written.and(removed)
}

/// The recorder thread: owns the current segment file.
struct SegmentWriter<S: SegmentStore> {
    dir: PathBuf,
    format: Format,
    keep: Retention,
    segment_us: u64,
    fps: u32,
    /// Nominal frame interval, from the stream's rate: AVI's slot length.
    frame_us: u32,
    store: S,
    current: Option<Segment<S::File>>,
    /// After a failed segment, its window `[start, end)` of capture time: frames in it are
    /// dropped, the first frame outside tries a new file.
    abandoned: Option<(u64, u64)>,
    /// In a run of failures: log the first at error, the rest at debug.
    failing: bool,
    invalid_frames: u64,
    uncoded_frames: u64,
    /// Time spent recording frames, for the CPU-per-frame figure.
    busy: Duration,
    report: RecorderReport,
}

/// The file being written.
struct Segment<F: Write + Seek> {
    body: Body<F>,
    /// Name while being written.
    part: PathBuf,
    /// Name once complete.
    path: PathBuf,
    dims: (u16, u16),
    first_us: u64,
    /// Latest capture time written (frames may arrive slightly out of order).
    last_us: u64,
    /// Capture time of the last checkpoint.
    checkpoint_us: u64,
    /// Time spent on frames, for the close log.
    write_time: Duration,
}

/// The format-specific part of a segment.
enum Body<F: Write + Seek> {
    Avi {
        avi: AviWriter<BufWriter<F>>,
        /// Slot of the latest frame written.
        last_slot: Option<u64>,
    },
    Mp4(Box<Mp4Body<F>>),
}

struct Mp4Body<F: Write> {
    encoder: JpegToH264,
    /// The file until the first picture gives the SPS and PPS for its header.
    file: Option<F>,
    out: Option<Fmp4Writer<F>>,
    /// The fragment being gathered; written when the next one starts, at a checkpoint, or on
    /// close.
    pending: Vec<Sample>,
    /// Capture time of the pending fragment's first frame.
    fragment_us: u64,
}

impl<F: Write + Seek> Segment<F> {
    /// Frames in the file once it is closed (written or pending).
    fn frames(&self) -> u64 {
        match &self.body {
            Body::Avi { avi, .. } => u64::from(avi.frames()),
            Body::Mp4(m) => m.out.as_ref().map_or(0, Fmp4Writer::samples) + m.pending.len() as u64,
        }
    }

    /// Capture time spanned by the file: from the first frame to the end of the last one.
    fn duration(&self, frame_us: u32) -> Duration {
        match &self.body {
            Body::Avi { avi, .. } => {
                Duration::from_micros(u64::from(avi.slots()) * u64::from(frame_us))
            }
            Body::Mp4(_) => {
                Duration::from_micros(self.last_us - self.first_us + u64::from(frame_us))
            }
        }
    }
}

/// What went wrong with one frame.
enum FrameError {
    /// The file failed: abandon the segment.
    Io(io::Error),
    /// This frame cannot be coded: drop it, keep the segment.
    Uncodable(String),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl<S: SegmentStore> SegmentWriter<S> {
    fn run(mut self, rx: Receiver<RecFrame>) -> RecorderReport {
        match probe_writable(&self.dir) {
            Ok(()) => {
                warn_about_leftovers(&self.dir);
                self.apply_retention();
            }
            Err(e) => self.note_failure("preparing the directory", &self.dir.clone(), &e),
        }
        loop {
            match rx.recv_timeout(CHECKPOINT) {
                Ok(f) => {
                    let started = Instant::now();
                    self.record(f);
                    self.busy += started.elapsed();
                }
                // Nothing new for a while: make what is buffered safe.
                Err(RecvTimeoutError::Timeout) => self.checkpoint(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(seg) = self.current.take() {
            let started = Instant::now();
            self.close(seg);
            self.busy += started.elapsed();
        }
        // CPU time of this thread (decode, encode, mux, write system calls), not wall time:
        // what recording costs the machine. Wall time stands in where the clock is missing.
        let cpu = thread_cpu_time().unwrap_or(self.busy);
        self.report.cpu_us_per_frame = if self.report.frames_written == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / self.report.frames_written as f64
        };
        info!(
            segments = self.report.segments.len(),
            frames_written = self.report.frames_written,
            frames_dropped = self.report.frames_dropped,
            cpu_us_per_frame = self.report.cpu_us_per_frame as u64,
            "recorder finished"
        );
        self.report
    }

    fn record(&mut self, f: RecFrame) {
        let t = f.capture_unix_us;
        let dims = match jpeg_dims(&f.jpeg) {
            Ok(dims) => dims,
            Err(reason) => {
                self.report.frames_dropped += 1;
                self.invalid_frames += 1;
                if self.invalid_frames == 1 {
                    warn!(%reason, "not recording a frame whose JPEG header is unreadable");
                } else {
                    trace!(%reason, capture_unix_us = t, "unreadable JPEG header");
                }
                return;
            }
        };

        if let Some(seg) = &self.current {
            let window_end = seg.first_us.saturating_add(self.segment_us);
            let cut = if t >= window_end || t < seg.first_us {
                Some("segment time")
            } else if dims != seg.dims {
                Some("frame size changed")
            } else if let Body::Avi { avi, .. } = &seg.body {
                (!avi.has_room_for(f.jpeg.len())).then_some("avi 1.0 size limit")
            } else {
                None
            };
            if let Some(reason) = cut {
                debug!(reason, "cutting segment");
                if let Some(seg) = self.current.take() {
                    self.close(seg);
                }
            }
        }

        if self.current.is_none() {
            if let Some((start, end)) = self.abandoned {
                if (start..end).contains(&t) {
                    self.report.frames_dropped += 1;
                    trace!(capture_unix_us = t, "segment abandoned, frame dropped");
                    return;
                }
                self.abandoned = None;
            }
            match self.open(t, dims) {
                Ok(seg) => self.current = Some(seg),
                Err(e) => {
                    self.note_failure("creating a segment", &self.dir.clone(), &e);
                    self.abandoned = Some((t, t.saturating_add(self.segment_us)));
                    self.report.frames_dropped += 1;
                    return;
                }
            }
        }

        let Some(seg) = self.current.as_mut() else {
            return;
        };
        let started = Instant::now();
        let frame_us = self.frame_us;
        let result = match &mut seg.body {
            Body::Avi { avi, last_slot } => {
                write_avi_frame(avi, last_slot, &f.jpeg, t - seg.first_us, frame_us)
            }
            Body::Mp4(m) => m.write_frame(&f.jpeg, t, seg.first_us, frame_us),
        };
        match result {
            Ok(fragment_written) => {
                seg.write_time += started.elapsed();
                seg.last_us = seg.last_us.max(t);
                trace!(
                    capture_unix_us = t,
                    jpeg_bytes = f.jpeg.len(),
                    "frame recorded"
                );
                if fragment_written {
                    // MP4: the previous fragment is in the file.
                    debug!(
                        path = %seg.part.display(),
                        frames = seg.frames() - 1,
                        "segment checkpoint"
                    );
                } else if matches!(seg.body, Body::Avi { .. })
                    && t.saturating_sub(seg.checkpoint_us) >= CHECKPOINT.as_micros() as u64
                {
                    seg.checkpoint_us = t;
                    self.checkpoint();
                }
            }
            Err(FrameError::Uncodable(reason)) => {
                self.report.frames_dropped += 1;
                self.uncoded_frames += 1;
                if self.uncoded_frames == 1 {
                    warn!(%reason, "not recording a frame that cannot be coded");
                } else {
                    trace!(%reason, capture_unix_us = t, "frame not coded");
                }
            }
            Err(FrameError::Io(e)) => {
                if let Some(seg) = self.current.take() {
                    self.note_failure("writing", &seg.part, &e);
                    // The frames already in the file, and this one.
                    self.report.frames_dropped += seg.frames() + 1;
                    let end = seg.first_us.saturating_add(self.segment_us);
                    self.abandoned = Some((seg.first_us, end));
                }
            }
        }
    }

    /// Makes the current segment's frames safe against a crash (see [`CHECKPOINT`]).
    fn checkpoint(&mut self) {
        let Some(seg) = self.current.as_mut() else {
            return;
        };
        let frame_us = self.frame_us;
        let result = match &mut seg.body {
            Body::Avi { avi, .. } => avi.checkpoint(),
            Body::Mp4(m) => m.flush_fragment(None, frame_us),
        };
        match result {
            Ok(()) => debug!(
                path = %seg.part.display(),
                frames = seg.frames(),
                "segment checkpoint"
            ),
            Err(e) => {
                if let Some(seg) = self.current.take() {
                    self.note_failure("writing", &seg.part, &e);
                    self.report.frames_dropped += seg.frames();
                    let end = seg.first_us.saturating_add(self.segment_us);
                    self.abandoned = Some((seg.first_us, end));
                }
            }
        }
    }

    /// Creates the `.part` file of a segment starting at capture time `first_us`.
    fn open(&mut self, first_us: u64, dims: (u16, u16)) -> io::Result<Segment<S::File>> {
        // The directory may have been removed, or not be creatable yet at start.
        fs::create_dir_all(&self.dir)?;
        let stem = file_stem(first_us);
        let ext = self.format.extension();
        for n in 0..MAX_NAME_TRIES {
            let name = match n {
                0 => format!("{stem}.{ext}"),
                n => format!("{stem}-{n}.{ext}"),
            };
            let path = self.dir.join(&name);
            if path.try_exists()? {
                continue;
            }
            let part = self.dir.join(format!("{name}.part"));
            let file = match self.store.create_new(&part) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let body = match self.format {
                Format::Avi => {
                    let out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
                    Body::Avi {
                        avi: AviWriter::new(out, dims.0, dims.1, self.frame_us)?,
                        last_slot: None,
                    }
                }
                Format::Mp4 => {
                    // Precision loss is irrelevant at frame rates.
                    let encoder = JpegToH264::new(dims.0, dims.1, self.fps as f32)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    Body::Mp4(Box::new(Mp4Body {
                        encoder,
                        file: Some(file),
                        out: None,
                        pending: Vec::new(),
                        fragment_us: first_us,
                    }))
                }
            };
            info!(path = %part.display(), width = dims.0, height = dims.1, "segment started");
            return Ok(Segment {
                body,
                part,
                path,
                dims,
                first_us,
                last_us: first_us,
                checkpoint_us: first_us,
                write_time: Duration::ZERO,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{stem}.{ext} and {MAX_NAME_TRIES} numbered variants all exist"),
        ))
    }

    /// Completes a segment: index or last fragment, headers, sync, rename from `.part`; then
    /// retention.
    fn close(&mut self, seg: Segment<S::File>) {
        let frames = seg.frames();
        let duration = seg.duration(self.frame_us);
        let write_time = seg.write_time;
        let frame_us = self.frame_us;
        let (part, path) = (seg.part, seg.path);
        let file = match seg.body {
            Body::Avi { avi, .. } => avi
                .finish()
                .and_then(|out| out.into_inner().map_err(io::IntoInnerError::into_error)),
            Body::Mp4(mut m) => m.flush_fragment(None, frame_us).and_then(|()| {
                match (m.out, m.file) {
                    (Some(out), _) => out.into_inner(),
                    // No frame was ever coded: an empty file, removed below.
                    (None, Some(file)) => Ok(file),
                    (None, None) => Err(io::Error::other("segment has no file")),
                }
            }),
        };
        let result = file.and_then(|file| self.store.sync(&file)).and_then(|()| {
            if frames == 0 {
                fs::remove_file(&part)
            } else {
                fs::rename(&part, &path)
            }
        });
        match result {
            Ok(()) if frames == 0 => debug!(path = %part.display(), "empty segment removed"),
            Ok(()) => {
                if self.failing {
                    info!("recording works again");
                    self.failing = false;
                }
                info!(
                    path = %path.display(),
                    frames,
                    duration_ms = duration.as_millis(),
                    cpu_us_per_frame = write_time.as_micros() / u128::from(frames.max(1)),
                    "segment closed"
                );
                self.report.frames_written += frames;
                self.report.segments.push(path);
                self.apply_retention();
            }
            Err(e) => {
                self.note_failure("closing", &part, &e);
                self.report.frames_dropped += frames;
            }
        }
    }

    fn apply_retention(&mut self) {
        match crate::retention::enforce(&self.dir, &self.keep) {
            Ok(crate::retention::Enforced { deleted, failed }) => {
                for d in deleted {
                    info!(path = %d.path.display(), bytes = d.bytes, "retention: deleted the oldest segment");
                    self.report.deleted.push(d.path);
                }
                for (path, e) in failed {
                    warn!(path = %path.display(), error = %e, "retention: cannot delete a segment");
                }
            }
            Err(e) => warn!(error = %e, "retention: cannot list the recording directory"),
        }
    }

    fn note_failure(&mut self, doing: &str, path: &Path, e: &io::Error) {
        self.report.write_errors += 1;
        if self.failing {
            debug!(path = %path.display(), error = %e, "recording still failing ({doing})");
        } else {
            self.failing = true;
            error!(
                path = %path.display(),
                error = %e,
                "recording failed while {doing}; frames are lost until a new segment can be \
                 written (is the disk full, or the directory not writable?); the stream goes on, \
                 and recording resumes by itself; a partial file is left as .part"
            );
        }
    }
}

/// Writes `jpeg`, captured `offset_us` after the segment's first frame, in the slot nearest its
/// capture time, leaving the slots of missing frames empty. A frame that would share a slot
/// (out of order, or a source faster than its nominal rate) takes the next free one.
fn write_avi_frame<W: Write + Seek>(
    avi: &mut AviWriter<W>,
    last_slot: &mut Option<u64>,
    jpeg: &[u8],
    offset_us: u64,
    frame_us: u32,
) -> Result<bool, FrameError> {
    let frame_us = u64::from(frame_us.max(1));
    let nearest = (offset_us + frame_us / 2) / frame_us;
    let slot = match *last_slot {
        Some(last) => nearest.max(last + 1),
        None => 0,
    };
    let empty = slot - last_slot.map_or(0, |l| l + 1);
    avi.skip(u32::try_from(empty).unwrap_or(u32::MAX))?;
    avi.write_frame(jpeg)?;
    *last_slot = Some(slot);
    Ok(false)
}

impl<F: Write> Mp4Body<F> {
    /// Codes `jpeg` (captured at `t`, in a segment whose first frame was at `first_us`) into the
    /// pending fragment, writing the previous fragment first when this frame starts a new one;
    /// says whether it did.
    fn write_frame(
        &mut self,
        jpeg: &[u8],
        t: u64,
        first_us: u64,
        frame_us: u32,
    ) -> Result<bool, FrameError> {
        let dts = us_to_timescale(t.saturating_sub(first_us));
        // Decode times must rise; an out-of-order frame goes right after the previous one.
        let dts = match self.pending.last() {
            Some(prev) => dts.max(prev.dts + 1),
            None => dts,
        };
        let starts_fragment = self.pending.is_empty()
            || t.saturating_sub(self.fragment_us) >= CHECKPOINT.as_micros() as u64;
        let flushes = starts_fragment && !self.pending.is_empty();
        if flushes {
            self.flush_fragment(Some(dts), frame_us)?;
        }
        let coded = self
            .encoder
            .encode(jpeg, starts_fragment, t / 1000)
            .map_err(|e| FrameError::Uncodable(e.to_string()))?;
        let unit = coded.unit;
        if unit.data.is_empty() {
            return Err(FrameError::Uncodable(
                "the encoder returned no picture".into(),
            ));
        }
        if self.out.is_none() {
            let (Some(sps), Some(pps)) = (&unit.sps, &unit.pps) else {
                return Err(FrameError::Uncodable(
                    "the first picture has no SPS/PPS".into(),
                ));
            };
            let Some(file) = self.file.take() else {
                return Err(FrameError::Io(io::Error::other("segment has no file")));
            };
            self.out = Some(Fmp4Writer::new(file, coded.width, coded.height, sps, pps)?);
        }
        if starts_fragment {
            self.fragment_us = t;
        }
        if let Some(prev) = self.pending.last_mut() {
            prev.duration = u32::try_from(dts - prev.dts).unwrap_or(u32::MAX);
        }
        self.pending.push(Sample {
            data: unit.data,
            dts,
            duration: frame_interval_timescale(frame_us),
            sync: unit.idr,
        });
        Ok(flushes)
    }

    /// Writes the pending fragment. Its last picture lasts until `next_dts`, when the next
    /// picture is known, else one nominal frame interval.
    fn flush_fragment(&mut self, next_dts: Option<u64>, frame_us: u32) -> io::Result<()> {
        let Some(last) = self.pending.last_mut() else {
            return Ok(());
        };
        last.duration = match next_dts {
            Some(next) => u32::try_from(next.saturating_sub(last.dts)).unwrap_or(u32::MAX),
            None => frame_interval_timescale(frame_us),
        };
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.write_fragment(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

fn us_to_timescale(us: u64) -> u64 {
    // No overflow for any offset under 6 million years.
    us.saturating_mul(u64::from(TIMESCALE)) / 1_000_000
}

fn frame_interval_timescale(frame_us: u32) -> u32 {
    u32::try_from(us_to_timescale(u64::from(frame_us))).unwrap_or(u32::MAX)
}

/// Segments left as `.part` by an earlier run that was killed (or by another viewer writing
/// now): they play up to their last checkpoint; say so once.
fn warn_about_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let parts: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("surv-") && n.ends_with(".part"))
        .collect();
    if let Some(first) = parts.first() {
        warn!(
            count = parts.len(),
            first = %first,
            "unfinished segments (.part) in the recording directory: from an interrupted run, \
             or another viewer's; they play up to their last checkpoint and are left as they are"
        );
    }
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives on this stack.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    (rc == 0).then(|| Duration::new(secs, nanos))
}

/// Width and height from the JPEG header.
fn jpeg_dims(jpeg: &[u8]) -> Result<(u16, u16), String> {
    let header = turbojpeg::read_header(jpeg).map_err(|e| e.to_string())?;
    let width = u16::try_from(header.width).map_err(|_| "width over 65535".to_string())?;
    let height = u16::try_from(header.height).map_err(|_| "height over 65535".to_string())?;
    Ok((width, height))
}

/// `surv-YYYYmmdd-HHMMSS` in local time. A capture time chrono cannot represent (a corrupt or
/// far-future clock) falls back to the current time so that recording goes on.
fn file_stem(capture_unix_us: u64) -> String {
    let utc = i64::try_from(capture_unix_us)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .unwrap_or_else(Utc::now);
    format!("surv-{}", utc.with_timezone(&Local).format("%Y%m%d-%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::ops::Range;
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    use surv_proto::FrameTag;
    use turbojpeg::{Image, PixelFormat, Subsamp};

    /// A whole second, so the file names of segments a second apart differ.
    const T0_US: u64 = 1_700_000_000_000_000;
    const FRAME_INTERVAL_US: u64 = 33_333;

    /// A tagged JPEG as the server sends it: the picture changes with `seq`; `noisy` makes it
    /// compress badly, for big frames.
    fn jpeg(width: usize, height: usize, seq: u64, noisy: bool) -> Bytes {
        let mut pixels = vec![0u8; width * height * 3];
        let mut rng = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for (i, p) in pixels.iter_mut().enumerate() {
            *p = if noisy {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            } else {
                let (x, y) = ((i / 3) % width, (i / 3) / width);
                (x as u64 * 2 + y as u64 + seq * 8 + (i % 3) as u64 * 80) as u8
            };
        }
        let image = Image {
            pixels: &pixels[..],
            width,
            pitch: width * 3,
            height,
            format: PixelFormat::RGB,
        };
        let plain = turbojpeg::compress(image, 85, Subsamp::Sub2x2).unwrap();
        let mut tagged = Vec::new();
        FrameTag {
            seq,
            capture_unix_us: T0_US + seq * FRAME_INTERVAL_US,
        }
        .encode_into(&plain, &mut tagged)
        .unwrap();
        Bytes::from(tagged)
    }

    fn frame(jpeg: Bytes, seq: u64) -> RecFrame {
        RecFrame {
            jpeg,
            capture_unix_us: T0_US + seq * FRAME_INTERVAL_US,
        }
    }

    /// Pushes every frame, waiting while the queue is full (timing comes from the frames, so
    /// waiting changes nothing else). Returns how many pushes were refused.
    fn push_all(rec: &RecorderHandle, frames: impl IntoIterator<Item = RecFrame>) -> u64 {
        let mut refused = 0;
        for f in frames {
            while !rec.push(f.clone()) {
                refused += 1;
                thread::sleep(Duration::from_millis(1));
            }
        }
        refused
    }

    /// How the recorder should split frames `seqs` into 1-frame-interval-spaced segments of
    /// `segment_us`: the ranges of sequence numbers in each.
    fn expected_windows(seqs: Range<u64>, segment_us: u64) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for s in seqs {
            match out.last_mut() {
                Some(w) if (s - w.start) * FRAME_INTERVAL_US < segment_us => w.end = s + 1,
                _ => out.push(s..s + 1),
            }
        }
        out
    }

    fn expected_name(seq: u64, suffix: &str) -> String {
        let utc = DateTime::from_timestamp_micros((T0_US + seq * FRAME_INTERVAL_US) as i64);
        let local = utc.unwrap().with_timezone(&Local);
        format!("surv-{}{suffix}.avi", local.format("%Y%m%d-%H%M%S"))
    }

    fn run_tool(name: &str, args: &[&OsStr]) -> std::process::Output {
        Command::new(name).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run {name} ({e}): install ffmpeg (apt-get install ffmpeg) to run the recorder tests")
        })
    }

    /// Checks a closed segment four ways: our RIFF parser (exact sizes and index), ffmpeg decoding
    /// every frame and failing on the first complaint, ffmpeg reading back exactly `jpegs` byte
    /// for byte, and what ffprobe reports.
    fn check_segment(path: &Path, jpegs: &[Bytes], (width, height): (u16, u16)) {
        let frames = jpegs.len() as u64;
        // Capture-time span plus one frame interval: real speed.
        let expected_us = frames * FRAME_INTERVAL_US;
        let file = fs::read(path).unwrap();
        let (w, h) = (u32::from(width), u32::from(height));
        crate::avi::tests::check_file(&file, jpegs, FRAME_INTERVAL_US as u32, w, h);

        let out = run_tool(
            "ffmpeg",
            &["-v", "error", "-err_detect", "explode", "-xerror", "-i"]
                .map(OsStr::new)
                .into_iter()
                .chain([path.as_os_str()])
                .chain(["-f", "null", "-"].map(OsStr::new))
                .collect::<Vec<_>>(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ffmpeg failed on {}: {stderr}",
            path.display()
        );
        assert!(
            stderr.is_empty(),
            "ffmpeg complained about {}: {stderr}",
            path.display()
        );

        let copy_args = ["-v", "error", "-i"]
            .map(OsStr::new)
            .into_iter()
            .chain([path.as_os_str()])
            .chain(["-map", "0:v", "-c", "copy", "-f", "mjpeg", "-"].map(OsStr::new))
            .collect::<Vec<_>>();
        let out = run_tool("ffmpeg", &copy_args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == jpegs.concat(),
            "{}: the JPEGs read back differ from those recorded",
            path.display()
        );

        let mut args: Vec<&OsStr> = [
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,codec_name,width,height",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1",
        ]
        .map(OsStr::new)
        .to_vec();
        args.push(path.as_os_str());
        let out = run_tool("ffprobe", &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("ffprobe gave no {key}: {stdout}"))
                .to_string()
        };
        assert_eq!(field("codec_name"), "mjpeg");
        assert_eq!(field("width"), width.to_string());
        assert_eq!(field("height"), height.to_string());
        assert_eq!(
            field("nb_read_frames"),
            frames.to_string(),
            "{}",
            path.display()
        );

        let expected_s = expected_us as f64 / 1e6;
        let duration_s: f64 = field("duration").parse().unwrap();
        assert!(
            (duration_s - expected_s).abs() <= expected_s * 0.02,
            "{}: duration {duration_s} s, capture span {expected_s} s",
            path.display()
        );
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rolling_segments_play_back_at_capture_speed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("not/yet/there");
        let rec = spawn(
            RecorderConfig {
                dir: dir.clone(),
                segment: Duration::from_secs(1),
                ..RecorderConfig::default()
            },
            30,
        )
        .unwrap();
        // 3.2 s of frames: three full segments and a short one closed by finish().
        let seqs = 0..97;
        let jpegs: Vec<Bytes> = seqs.clone().map(|s| jpeg(160, 90, s, false)).collect();
        let refused = push_all(
            &rec,
            seqs.clone().map(|s| frame(jpegs[s as usize].clone(), s)),
        );
        let report = rec.finish();

        let windows = expected_windows(seqs, 1_000_000);
        assert_eq!(windows.len(), 4);
        assert_eq!(report.frames_written, 97);
        assert_eq!(report.frames_dropped, refused);
        assert_eq!(report.write_errors, 0);
        assert_eq!(report.segments.len(), windows.len(), "{report:?}");
        for (path, w) in report.segments.iter().zip(&windows) {
            assert_eq!(path.parent(), Some(dir.as_path()));
            let name = path.file_name().unwrap().to_string_lossy();
            assert_eq!(name, expected_name(w.start, ""));
            let range = w.start as usize..w.end as usize;
            check_segment(path, &jpegs[range], (160, 90));
        }
        assert_eq!(files_ending(&dir, ".avi"), report.segments);
        assert!(files_ending(&dir, ".part").is_empty());
    }

    #[test]
    fn frame_size_change_starts_a_new_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = spawn(
            RecorderConfig {
                dir: tmp.path().to_path_buf(),
                segment: Duration::from_secs(60),
                ..RecorderConfig::default()
            },
            30,
        )
        .unwrap();
        let big: Vec<Bytes> = (0..10).map(|s| jpeg(160, 90, s, false)).collect();
        let small: Vec<Bytes> = (11..21).map(|s| jpeg(80, 45, s, false)).collect();
        let mut frames: Vec<RecFrame> = (0..10).map(|s| frame(big[s].clone(), s as u64)).collect();
        frames.push(frame(Bytes::from_static(b"\xFF\xD8 not a jpeg"), 10));
        frames.extend((11..21).map(|s| frame(small[s - 11].clone(), s as u64)));
        let refused = push_all(&rec, frames);
        let report = rec.finish();

        assert_eq!(report.frames_written, 20);
        assert_eq!(report.frames_dropped, refused + 1, "the unreadable frame");
        assert_eq!(report.write_errors, 0);
        let names: Vec<_> = report
            .segments
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // Both start in the same second: the second gets a suffix.
        assert_eq!(names, [expected_name(0, ""), expected_name(11, "-1")]);
        check_segment(&report.segments[0], &big, (160, 90));
        check_segment(&report.segments[1], &small, (80, 45));
    }

    #[test]
    fn existing_file_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let taken = tmp.path().join(expected_name(0, ""));
        fs::write(&taken, b"someone else's").unwrap();
        let rec = spawn(
            RecorderConfig {
                dir: tmp.path().to_path_buf(),
                segment: Duration::from_secs(60),
                ..RecorderConfig::default()
            },
            30,
        )
        .unwrap();
        let jpeg = jpeg(160, 90, 0, false);
        assert!(rec.push(frame(jpeg.clone(), 0)));
        let report = rec.finish();
        assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
        assert_eq!(report.segments, [tmp.path().join(expected_name(0, "-1"))]);
        check_segment(&report.segments[0], &[jpeg], (160, 90));
    }

    #[test]
    fn zero_segment_is_an_error_from_spawn() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::ZERO,
            ..RecorderConfig::default()
        };
        assert!(matches!(spawn(cfg, 30), Err(RecorderError::ZeroSegment)));
    }

    /// An unusable directory does not stop the viewer: one error, frames dropped, and recording
    /// starts by itself once the directory can be created.
    #[test]
    fn unusable_dir_is_reported_once_and_recording_starts_when_fixed() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("a-file");
        fs::write(&blocker, b"x").unwrap();
        let dir = blocker.join("rec");
        let logs = LogBuf::default();
        let subscriber = logs.subscriber();
        let jpegs: Vec<Bytes> = (0..75).map(|s| jpeg(160, 90, s, false)).collect();
        let (report, refused) = tracing::subscriber::with_default(subscriber, || {
            let cfg = RecorderConfig {
                dir: dir.clone(),
                segment: Duration::from_secs(1),
                ..RecorderConfig::default()
            };
            let rec = spawn(cfg, 30).unwrap();
            let mut refused = push_all(&rec, (0..30).map(|s| frame(jpegs[s as usize].clone(), s)));
            let until = Instant::now() + Duration::from_secs(10);
            while !logs.text().contains("creating a segment") && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            fs::remove_file(&blocker).unwrap();
            refused += push_all(&rec, (30..75).map(|s| frame(jpegs[s as usize].clone(), s)));
            (rec.finish(), refused)
        });
        let logs = logs.text();
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
        assert!(errors[0].contains(&*dir.to_string_lossy()), "{}", errors[0]);
        assert_eq!(
            report.write_errors, 2,
            "the start-up probe and the first segment"
        );
        // The failed first window takes its frames with it (seq 30 is still inside it).
        let windows = expected_windows(0..75, 1_000_000);
        assert_eq!(windows.len(), 3);
        let lost = windows[0].end;
        assert_eq!(report.frames_written, 75 - lost, "{report:?}");
        assert_eq!(report.frames_dropped, lost + refused);
        assert_eq!(report.segments.len(), 2);
        for (seg, w) in report.segments.iter().zip(&windows[1..]) {
            check_segment(seg, &jpegs[w.start as usize..w.end as usize], (160, 90));
        }
        assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
    }

    /// A disk whose first `create_new` waits until the test lets it go.
    struct GatedDisk {
        entered: mpsc::Sender<()>,
        release: Receiver<()>,
    }

    impl SegmentStore for GatedDisk {
        type File = File;

        fn create_new(&mut self, path: &Path) -> io::Result<File> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            Disk.create_new(path)
        }

        fn sync(&mut self, file: &File) -> io::Result<()> {
            Disk.sync(file)
        }
    }

    #[test]
    fn full_queue_refuses_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let cfg = RecorderConfig {
            dir: tmp.path().to_path_buf(),
            segment: Duration::from_secs(60),
            ..RecorderConfig::default()
        };
        let disk = GatedDisk {
            entered: entered_tx,
            release: release_rx,
        };
        let rec = spawn_with(cfg, 30, disk).unwrap();
        let jpeg = jpeg(160, 90, 0, false);
        assert!(rec.push(frame(jpeg.clone(), 0)));
        // The thread now holds frame 0 and waits in create_new: the queue is empty.
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("recorder thread never started a segment");
        for s in 1..=QUEUE_FRAMES as u64 {
            assert!(rec.push(frame(jpeg.clone(), s)), "frame {s} refused");
        }
        let started = Instant::now();
        assert!(!rec.push(frame(jpeg.clone(), 65)));
        assert!(!rec.push(frame(jpeg.clone(), 66)));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "push blocked"
        );
        drop(release_tx);
        let report = rec.finish();
        assert_eq!(report.frames_written, 65);
        assert_eq!(report.frames_dropped, 2);
        assert_eq!(report.segments.len(), 1);
        check_segment(&report.segments[0], &vec![jpeg; 65], (160, 90));
    }

    /// A disk that is full while its files number `full` (counting from 1) are written: they take
    /// `room_bytes`, then fail with ENOSPC.
    struct FlakyDisk {
        created: usize,
        full: Range<usize>,
        room_bytes: u64,
    }

    struct FlakyFile {
        file: File,
        room_bytes: Option<u64>,
    }

    impl SegmentStore for FlakyDisk {
        type File = FlakyFile;

        fn create_new(&mut self, path: &Path) -> io::Result<FlakyFile> {
            let file = Disk.create_new(path)?;
            self.created += 1;
            let full = self.full.contains(&self.created);
            Ok(FlakyFile {
                file,
                room_bytes: full.then_some(self.room_bytes),
            })
        }

        fn sync(&mut self, file: &FlakyFile) -> io::Result<()> {
            Disk.sync(&file.file)
        }
    }

    impl Write for FlakyFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match &mut self.room_bytes {
                None => self.file.write(buf),
                Some(0) => Err(io::Error::from_raw_os_error(28)),
                Some(room) => {
                    let n = buf.len().min(usize::try_from(*room).unwrap());
                    let n = self.file.write(&buf[..n])?;
                    *room -= n as u64;
                    Ok(n)
                }
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    impl Seek for FlakyFile {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            self.file.seek(pos)
        }
    }

    /// Collects formatted log lines, including the recorder thread's.
    #[derive(Clone, Default)]
    struct LogBuf(Arc<Mutex<Vec<u8>>>);

    impl LogBuf {
        /// A subscriber that writes here, debug and up.
        fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
            let logs = self.clone();
            tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish()
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl Write for LogBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn disk_full_abandons_segments_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = LogBuf::default();
        let subscriber = {
            let logs = logs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish()
        };
        // Files 2 and 3 hit a full disk; 1, 4 and 5 are fine.
        let disk = FlakyDisk {
            created: 0,
            full: 2..4,
            room_bytes: 10_000,
        };
        let seqs = 0..127;
        let jpegs: Vec<Bytes> = seqs.clone().map(|s| jpeg(320, 180, s, true)).collect();
        let frames: Vec<RecFrame> = seqs
            .clone()
            .map(|s| frame(jpegs[s as usize].clone(), s))
            .collect();
        // Big enough that the write buffer spills inside a segment: the failure hits
        // write_frame, not just the close.
        assert!(frames[0].jpeg.len() * 10 > WRITE_BUFFER_BYTES);

        let (report, refused) = tracing::subscriber::with_default(subscriber, || {
            let cfg = RecorderConfig {
                dir: tmp.path().to_path_buf(),
                segment: Duration::from_secs(1),
                ..RecorderConfig::default()
            };
            let rec = spawn_with(cfg, 30, disk).unwrap();
            let refused = push_all(&rec, frames);
            (rec.finish(), refused)
        });
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();

        let windows = expected_windows(seqs, 1_000_000);
        assert_eq!(windows.len(), 5);
        let lost: u64 = windows[1..3].iter().map(|w| w.end - w.start).sum();
        assert_eq!(report.write_errors, 2, "{logs}");
        assert_eq!(report.frames_written, 127 - lost);
        assert_eq!(report.frames_dropped, lost + refused);
        assert_eq!(report.segments.len(), 3);
        for (path, w) in report
            .segments
            .iter()
            .zip([&windows[0], &windows[3], &windows[4]])
        {
            assert_eq!(
                path.file_name().unwrap().to_string_lossy(),
                expected_name(w.start, "")
            );
            check_segment(path, &jpegs[w.start as usize..w.end as usize], (320, 180));
        }
        let parts = files_ending(tmp.path(), ".part");
        let expected_parts: Vec<PathBuf> = windows[1..3]
            .iter()
            .map(|w| tmp.path().join(expected_name(w.start, "") + ".part"))
            .collect();
        assert_eq!(parts, expected_parts, "failed segments keep their .part");

        let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
        assert!(
            errors[0].contains("No space left on device"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("while writing"), "{}", errors[0]);
        assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
        assert_eq!(logs.matches("segment closed").count(), 3, "{logs}");
    }

    /// What ffprobe says of an MP4 segment: (codec, frames, duration s), after ffmpeg decoded
    /// every frame with its strictest checks.
    fn probe_mp4(path: &Path) -> (String, u64, f64) {
        let mut args: Vec<&OsStr> = ["-v", "error", "-err_detect", "explode", "-xerror", "-i"]
            .map(OsStr::new)
            .to_vec();
        args.push(path.as_os_str());
        args.extend(["-f", "null", "-"].map(OsStr::new));
        let out = run_tool("ffmpeg", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            path.display()
        );
        let mut args: Vec<&OsStr> = ["-v", "error", "-count_frames", "-select_streams", "v:0"]
            .map(OsStr::new)
            .to_vec();
        args.extend(
            [
                "-show_entries",
                "stream=codec_name,nb_read_frames:format=duration",
                "-of",
                "default=nw=1",
            ]
            .map(OsStr::new),
        );
        args.push(path.as_os_str());
        let out = run_tool("ffprobe", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {k}: {text}"))
                .to_string()
        };
        (
            field("codec_name"),
            field("nb_read_frames").parse().unwrap(),
            field("duration").parse().unwrap(),
        )
    }

    /// MP4 on a disk that fills up: the segments that hit it are abandoned (their `.part` left),
    /// one error is logged, the others are whole, and recording recovers by itself; frames missing
    /// in the stream keep their time.
    #[test]
    fn mp4_disk_full_abandons_segments_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = LogBuf::default();
        let subscriber = logs.subscriber();
        // Files 2 and 3 hit a full disk after their header; 1, 4 and 5 are fine.
        let disk = FlakyDisk {
            created: 0,
            full: 2..4,
            room_bytes: 2_000,
        };
        // Every fourth frame lost on the way.
        let seqs: Vec<u64> = (0..150).filter(|s| s % 4 != 3).collect();
        let jpegs: Vec<Bytes> = (0..150).map(|s| jpeg(320, 180, s, false)).collect();
        let frames: Vec<RecFrame> = seqs
            .iter()
            .map(|&s| frame(jpegs[s as usize].clone(), s))
            .collect();
        let (report, refused) = tracing::subscriber::with_default(subscriber, || {
            let cfg = RecorderConfig {
                dir: tmp.path().to_path_buf(),
                segment: Duration::from_secs(1),
                format: Format::Mp4,
                ..RecorderConfig::default()
            };
            let rec = spawn_with(cfg, 30, disk).unwrap();
            let refused = push_all(&rec, frames);
            (rec.finish(), refused)
        });
        let logs = logs.text();

        // Windows by capture time, over the frames that arrived.
        let mut windows: Vec<Vec<u64>> = Vec::new();
        for &s in &seqs {
            match windows.last_mut() {
                Some(w) if (s - w[0]) * FRAME_INTERVAL_US < 1_000_000 => w.push(s),
                _ => windows.push(vec![s]),
            }
        }
        assert_eq!(windows.len(), 5);
        let lost = (windows[1].len() + windows[2].len()) as u64;
        assert_eq!(report.write_errors, 2, "{logs}");
        assert_eq!(report.frames_written, seqs.len() as u64 - lost);
        assert_eq!(report.frames_dropped, lost + refused);
        assert_eq!(report.segments.len(), 3);
        for (path, w) in report
            .segments
            .iter()
            .zip([&windows[0], &windows[3], &windows[4]])
        {
            let name = path.file_name().unwrap().to_string_lossy();
            assert_eq!(name, expected_name(w[0], "").replace(".avi", ".mp4"));
            let (codec, n, secs) = probe_mp4(path);
            assert_eq!(codec, "h264");
            assert_eq!(n, w.len() as u64, "{name}");
            // Capture span plus one frame: real speed, the lost frames' time included.
            let wall = ((w[w.len() - 1] - w[0] + 1) * FRAME_INTERVAL_US) as f64 / 1e6;
            assert!(
                (secs / wall - 1.0).abs() <= 0.02,
                "{name}: {secs} s, wall {wall} s"
            );
        }
        assert_eq!(files_ending(tmp.path(), ".part").len(), 2);
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one error for the run of failures: {logs}");
        assert!(
            errors[0].contains("No space left on device"),
            "{}",
            errors[0]
        );
        assert_eq!(logs.matches("recording works again").count(), 1, "{logs}");
    }

    /// AVI with frames missing: the gaps are empty slots, so the file plays at capture speed.
    #[test]
    fn avi_gaps_keep_capture_speed() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = spawn(
            RecorderConfig {
                dir: tmp.path().to_path_buf(),
                segment: Duration::from_secs(60),
                ..RecorderConfig::default()
            },
            30,
        )
        .unwrap();
        // Frames 0..60 with every third lost and a hole of 15.
        let seqs: Vec<u64> = (0..60)
            .filter(|s| s % 3 != 1 && !(20..35).contains(s))
            .collect();
        let jpegs: Vec<Bytes> = (0..60).map(|s| jpeg(160, 90, s, false)).collect();
        let refused = push_all(
            &rec,
            seqs.iter().map(|&s| frame(jpegs[s as usize].clone(), s)),
        );
        let report = rec.finish();
        assert_eq!(report.frames_written, seqs.len() as u64);
        assert_eq!(report.frames_dropped, refused);
        // One slot per frame interval from the first frame to the last: empty where lost.
        let slots: Vec<Bytes> = (0..60)
            .map(|s| {
                if seqs.contains(&s) {
                    jpegs[s as usize].clone()
                } else {
                    Bytes::new()
                }
            })
            .collect();
        let file = fs::read(&report.segments[0]).unwrap();
        crate::avi::tests::check_file(&file, &slots, FRAME_INTERVAL_US as u32, 160, 90);
    }
}
