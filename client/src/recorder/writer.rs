//! The recorder thread: owns the segment being written and decides, frame by frame, when to cut
//! it (segment time, frame size, the format's limit), when to give a failing one up (and which
//! frames go with it), when to checkpoint, and what to report.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, trace, warn};

use super::gate::{EventGate, Gated};
use super::naming;
use super::storage::{probe_writable, warn_about_leftovers, SegmentStore};
use super::track::{self, FrameError, Track};
use super::{Format, RecFrame, RecorderConfig, RecorderReport, Retention, Trigger, CHECKPOINT};

/// How many `-N` suffixes to try before giving up on a name.
const MAX_NAME_TRIES: u32 = 1000;

/// Segments are cut for an abnormal reason (the frame size changed, capture time went back or
/// leapt ahead) at most once in this long (wall time): one change cuts at once, but a server
/// whose frames alternate sizes or times cannot make a new file per frame; the frames that
/// would have cut sooner are dropped (counted, logged).
const MIN_ABNORMAL_CUT_GAP: Duration = Duration::from_secs(1);

/// How often a run of dropped frames (churn, unreadable) is logged again.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The recorder thread: owns the current segment file.
pub(super) struct SegmentWriter<S: SegmentStore> {
    dir: PathBuf,
    format: Format,
    keep: Retention,
    segment_us: u64,
    fps: u32,
    /// Nominal frame interval, from the stream's rate: AVI's slot length.
    frame_us: u32,
    store: S,
    /// With `--record-on motion` or labels: what is recorded.
    gate: Option<EventGate>,
    current: Option<Segment<S::File>>,
    /// After a failed segment, its window `[start, end)` of capture time: frames in it are
    /// dropped, the first frame outside tries a new file.
    abandoned: Option<(u64, u64)>,
    /// In a run of failures: log the first at error, the rest at debug.
    failing: bool,
    invalid_frames: u64,
    uncoded_frames: u64,
    /// When a segment was last cut for an abnormal reason.
    last_abnormal_cut: Option<Instant>,
    /// Frames dropped because they would have cut again too soon (see
    /// [`MIN_ABNORMAL_CUT_GAP`]), and when that was last logged.
    churn_frames: u64,
    churn_logged: Option<Instant>,
    /// Time spent recording frames, for the CPU-per-frame figure.
    busy: Duration,
    report: RecorderReport,
}

/// The file being written.
struct Segment<F> {
    track: Box<dyn Track<F>>,
    /// Name while being written.
    part: PathBuf,
    /// Name once complete.
    path: PathBuf,
    dims: (u16, u16),
    first_us: u64,
    /// Latest capture time written (frames may arrive slightly out of order).
    last_us: u64,
    /// Time spent on frames, for the close log.
    write_time: Duration,
}

impl<S: SegmentStore> SegmentWriter<S> {
    /// A writer for a stream of `fps` (known, not 0) frames per second.
    pub(super) fn new(cfg: RecorderConfig, fps: u32, store: S) -> Self {
        SegmentWriter {
            dir: cfg.dir,
            format: cfg.format,
            keep: cfg.keep,
            segment_us: u64::try_from(cfg.segment.as_micros()).unwrap_or(u64::MAX),
            fps,
            frame_us: (1_000_000 / fps).max(1),
            gate: match cfg.trigger {
                Trigger::Always => None,
                Trigger::Motion {
                    pre_roll,
                    post_roll,
                }
                | Trigger::Objects {
                    pre_roll,
                    post_roll,
                    ..
                } => Some(EventGate::new(pre_roll, post_roll, fps)),
            },
            store,
            current: None,
            abandoned: None,
            failing: false,
            invalid_frames: 0,
            uncoded_frames: 0,
            last_abnormal_cut: None,
            churn_frames: 0,
            churn_logged: None,
            busy: Duration::ZERO,
            report: RecorderReport::default(),
        }
    }

    /// Records the frames from `rx` until the handle lets go, then closes the last segment.
    pub(super) fn run(mut self, rx: Receiver<RecFrame>) -> RecorderReport {
        match probe_writable(&self.dir) {
            Ok(()) => {
                warn_about_leftovers(&self.dir);
                self.apply_retention();
            }
            Err(e) => self.note_failure("preparing the directory", &self.dir.clone(), &e),
        }
        let mut gated = Vec::new();
        loop {
            match rx.recv_timeout(CHECKPOINT) {
                Ok(f) => {
                    let started = Instant::now();
                    match &mut self.gate {
                        None => self.record(f),
                        Some(gate) => {
                            gate.take(f, &mut gated);
                            for g in gated.drain(..) {
                                self.gated(g);
                            }
                        }
                    }
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
        if let Some(gate) = &mut self.gate {
            gate.finish();
            self.report.frames_idle = gate.idle;
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

    fn gated(&mut self, g: Gated) {
        match g {
            Gated::Record(f) => self.record(f),
            Gated::Cut => {
                debug!("event recording ended");
                if let Some(seg) = self.current.take() {
                    self.close(seg);
                }
                // The next recording is not part of a failed segment's window.
                self.abandoned = None;
            }
        }
    }

    fn record(&mut self, f: RecFrame) {
        let t = f.capture_unix_us;
        let dims = match whole_jpeg(&f.jpeg).and_then(|()| jpeg_dims(&f.jpeg)) {
            Ok(dims) => dims,
            Err(reason) => {
                self.report.frames_dropped += 1;
                self.invalid_frames += 1;
                if self.invalid_frames == 1 {
                    warn!(%reason, "not recording a frame that is not a whole, readable JPEG");
                } else {
                    trace!(%reason, capture_unix_us = t, "unreadable JPEG header");
                }
                return;
            }
        };

        if let Some(seg) = &self.current {
            let window_end = seg.first_us.saturating_add(self.segment_us);
            // (why, whether it is abnormal: something a sane stream does not do every second)
            let cut = if t < seg.first_us {
                Some(("capture time went back", true))
            } else if t >= window_end.saturating_add(self.segment_us) {
                Some(("capture time leapt ahead", true))
            } else if t >= window_end {
                Some(("segment time", false))
            } else if dims != seg.dims {
                Some(("frame size changed", true))
            } else {
                seg.track.cut_before(f.jpeg.len()).map(|r| (r, false))
            };
            if let Some((reason, abnormal)) = cut {
                let too_soon = self
                    .last_abnormal_cut
                    .is_some_and(|at| at.elapsed() < MIN_ABNORMAL_CUT_GAP);
                if abnormal && too_soon {
                    self.report.frames_dropped += 1;
                    self.churn_frames += 1;
                    if self
                        .churn_logged
                        .is_none_or(|at| at.elapsed() >= REPEAT_LOG_EVERY)
                    {
                        self.churn_logged = Some(Instant::now());
                        warn!(
                            reason,
                            dropped_so_far = self.churn_frames,
                            "frame not recorded: the stream changes size or time too often \
                             (a new segment at most once a second for that)"
                        );
                    }
                    return;
                }
                if abnormal {
                    self.last_abnormal_cut = Some(Instant::now());
                }
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
        match seg.track.write_frame(&f.jpeg, t) {
            Ok(checkpointed) => {
                seg.write_time += started.elapsed();
                seg.last_us = seg.last_us.max(t);
                trace!(
                    capture_unix_us = t,
                    jpeg_bytes = f.jpeg.len(),
                    "frame recorded"
                );
                if checkpointed {
                    // The frames before this one are in the file.
                    debug!(
                        path = %seg.part.display(),
                        frames = seg.track.frames() - 1,
                        "segment checkpoint"
                    );
                } else if seg.track.checkpoint_due(t) {
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
                    self.report.frames_dropped += seg.track.frames() + 1;
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
        match seg.track.checkpoint() {
            Ok(()) => debug!(
                path = %seg.part.display(),
                frames = seg.track.frames(),
                "segment checkpoint"
            ),
            Err(e) => {
                if let Some(seg) = self.current.take() {
                    self.note_failure("writing", &seg.part, &e);
                    self.report.frames_dropped += seg.track.frames();
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
        let stem = naming::stem(first_us);
        for n in 0..MAX_NAME_TRIES {
            let name = naming::closed(&stem, n, self.format);
            let path = self.dir.join(&name);
            if path.try_exists()? {
                continue;
            }
            let part = self.dir.join(naming::part(&name));
            let file = match self.store.create_new(&part) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let track = track::open(self.format, file, dims, self.fps, self.frame_us, first_us)?;
            info!(path = %part.display(), width = dims.0, height = dims.1, "segment started");
            return Ok(Segment {
                track,
                part,
                path,
                dims,
                first_us,
                last_us: first_us,
                write_time: Duration::ZERO,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} and {MAX_NAME_TRIES} numbered variants all exist",
                naming::closed(&stem, 0, self.format)
            ),
        ))
    }

    /// Completes a segment: index or last fragment, headers, sync, rename from `.part`; then
    /// retention.
    fn close(&mut self, seg: Segment<S::File>) {
        let frames = seg.track.frames();
        let duration = seg.track.duration(seg.last_us);
        let write_time = seg.write_time;
        let (part, path) = (seg.part, seg.path);
        let file = seg.track.finish();
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

/// A whole JPEG: SOI first, and EOI at the end (a few bytes of padding after it allowed), so
/// that a truncated frame is not stored as if it were one.
pub fn whole_jpeg(jpeg: &[u8]) -> Result<(), String> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no SOI marker)".into());
    }
    let tail = &jpeg[jpeg.len().saturating_sub(32)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err("truncated JPEG (no EOI marker at its end)".into());
    }
    Ok(())
}

/// Width and height from the JPEG header.
pub fn jpeg_dims(jpeg: &[u8]) -> Result<(u16, u16), String> {
    let header = turbojpeg::read_header(jpeg).map_err(|e| e.to_string())?;
    let width = u16::try_from(header.width).map_err(|_| "width over 65535".to_string())?;
    let height = u16::try_from(header.height).map_err(|_| "height over 65535".to_string())?;
    Ok((width, height))
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
