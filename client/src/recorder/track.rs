//! One recording track per format behind one trait: what the segment writer asks of the file it
//! is writing, whatever the container. `avi_track` and `mp4_track` implement it.

use std::io::{self, Seek, Write};
use std::time::Duration;

use super::avi_track::AviTrack;
use super::mp4_track::Mp4Track;
use super::Format;

/// What went wrong with one frame.
pub(super) enum FrameError {
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

/// The format-specific part of a segment being written to a file `F`.
pub(super) trait Track<F>: Send {
    /// Frames in the file once it is closed (written or pending).
    fn frames(&self) -> u64;

    /// Capture time spanned by the file, from the first frame to the end of the last, given the
    /// latest capture time written.
    fn duration(&self, last_us: u64) -> Duration;

    /// Why a frame of `jpeg_bytes` must start a new segment rather than go in this one, if it
    /// must for a reason of the format.
    fn cut_before(&self, _jpeg_bytes: usize) -> Option<&'static str> {
        None
    }

    /// Adds `jpeg`, captured at `t` (µs since the Unix epoch, not before the segment's first
    /// frame). Returns whether the frames before it became crash-safe on the way.
    fn write_frame(&mut self, jpeg: &[u8], t: u64) -> Result<bool, FrameError>;

    /// Whether, after a frame captured at `t` was written, a [`checkpoint`](Self::checkpoint)
    /// is due; if so, it counts as taken from `t` on.
    fn checkpoint_due(&mut self, _t: u64) -> bool {
        false
    }

    /// Makes what is written so far playable after a crash.
    fn checkpoint(&mut self) -> io::Result<()>;

    /// Completes the file (index or last fragment, headers) and hands it back.
    fn finish(self: Box<Self>) -> io::Result<F>;
}

/// A track of `format` in `file`, a `width` x `height` stream of nominal interval `frame_us`
/// (`fps` frames per second) whose first frame was captured at `first_us`.
pub(super) fn open<F: Write + Seek + Send + 'static>(
    format: Format,
    file: F,
    (width, height): (u16, u16),
    fps: u32,
    frame_us: u32,
    first_us: u64,
) -> io::Result<Box<dyn Track<F>>> {
    Ok(match format {
        Format::Avi => Box::new(AviTrack::new(file, width, height, frame_us, first_us)?),
        Format::Mp4 => Box::new(Mp4Track::new(file, width, height, fps, frame_us, first_us)?),
    })
}
