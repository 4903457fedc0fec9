//! The recorder: rolling segments of the received stream, AVI (the JPEGs as they came) or MP4
//! (H.264), written off the display path. This file holds what callers see; the parts are
//!
//! * `handle`: the display side ([`spawn`], [`RecorderHandle::push`]) and the thread's start.
//! * `writer`: the recorder thread: when to cut a segment, when to give one up, the report.
//! * `track`: one track per format behind one trait (`avi_track`, `mp4_track`).
//! * `storage`: where segment files are created (the seam tests fail on purpose), and the checks
//!   on the recording directory.
//! * `naming`: segment file names, built for the recorder and parsed for
//!   [`retention`](crate::retention).
//! * `gate`: with [`Trigger::Motion`] or [`Trigger::Objects`], which frames are recorded: those
//!   around the events, with a pre- and post-roll.
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

mod avi_track;
mod gate;
mod handle;
mod mp4_track;
pub(crate) mod naming;
mod storage;
mod track;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

pub use crate::retention::Retention;
pub use gate::MAX_PRE_ROLL;
pub use handle::{spawn, RecorderHandle};
pub use writer::{jpeg_dims, whole_jpeg};

/// Frames waiting for the recorder thread: about two seconds at 30 fps.
pub const QUEUE_FRAMES: usize = 64;

/// What is written becomes playable-after-a-crash at least this often: the MP4 fragment length
/// bound, and the AVI header-patch interval (both by capture time, and after this long idle).
pub const CHECKPOINT: Duration = Duration::from_secs(1);

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
    /// What is recorded: everything, or only around motion or objects.
    pub trigger: Trigger,
}

/// What the recorder records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trigger {
    /// Every frame received.
    #[default]
    Always,
    /// Frames around those the server flagged as motion: `pre_roll` of capture time before the
    /// first flagged frame (at most [`MAX_PRE_ROLL`]), `post_roll` after the last. Each such
    /// recording starts a new segment and ends its last one.
    Motion {
        pre_roll: Duration,
        post_roll: Duration,
    },
    /// Frames around those in which the server's detector sees one of `labels` (`person`,
    /// `car`: its objects segment, `surv_proto::objects`), with the same rolls as
    /// [`Trigger::Motion`].
    Objects {
        labels: Vec<String>,
        pre_roll: Duration,
        post_roll: Duration,
    },
}

impl Trigger {
    /// Whether a frame tagged `tag`, listing `objects` (its objects segment, read once by the
    /// caller), is one of the frames recordings form around.
    pub fn is_event(&self, tag: &surv_proto::FrameTag, objects: &[surv_proto::Object]) -> bool {
        match self {
            Trigger::Always => false,
            Trigger::Motion { .. } => tag.motion,
            Trigger::Objects { labels, .. } => objects.iter().any(|o| labels.contains(&o.label)),
        }
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            dir: PathBuf::from("recordings"),
            segment: Duration::from_secs(15),
            format: Format::Avi,
            keep: Retention::default(),
            trigger: Trigger::Always,
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
    /// The frame is one recordings form around ([`Trigger::is_event`]): flagged as motion, or
    /// showing a wanted object.
    pub event: bool,
}

impl fmt::Debug for RecFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecFrame")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .field("event", &self.event)
            .finish()
    }
}

/// What the recorder did, returned by [`RecorderHandle::finish`].
///
/// Every pushed frame is counted once: `frames_written + frames_dropped + frames_idle` = frames
/// pushed.
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
    /// Frames not recorded by choice: with [`Trigger::Motion`] or [`Trigger::Objects`], those
    /// outside every pre- and post-roll.
    pub frames_idle: u64,
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
