//! The AVI track: lays each JPEG, as received, in the slot of the AVI's frame grid nearest its
//! capture time, leaving the slots of missing frames empty (see [`avi`](crate::avi)).

use std::io::{self, BufWriter, Seek, Write};
use std::time::Duration;

use super::track::{FrameError, Track};
use super::CHECKPOINT;
use crate::avi::AviWriter;

/// Write buffer in front of each AVI file: a few typical frames per `write` system call.
pub(super) const WRITE_BUFFER_BYTES: usize = 128 << 10;

/// An MJPEG AVI segment being written.
pub(super) struct AviTrack<F: Write + Seek> {
    avi: AviWriter<BufWriter<F>>,
    /// Slot of the latest frame written.
    last_slot: Option<u64>,
    /// The slot length: the stream's nominal frame interval.
    frame_us: u32,
    /// Capture time of the segment's first frame: slot 0.
    first_us: u64,
    /// Capture time of the last checkpoint.
    checkpoint_us: u64,
}

impl<F: Write + Seek> AviTrack<F> {
    /// Writes the header of a `width` x `height` AVI with slots of `frame_us`.
    pub(super) fn new(
        file: F,
        width: u16,
        height: u16,
        frame_us: u32,
        first_us: u64,
    ) -> io::Result<Self> {
        let out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        Ok(AviTrack {
            avi: AviWriter::new(out, width, height, frame_us)?,
            last_slot: None,
            frame_us,
            first_us,
            checkpoint_us: first_us,
        })
    }
}

impl<F: Write + Seek + Send> Track<F> for AviTrack<F> {
    fn frames(&self) -> u64 {
        u64::from(self.avi.frames())
    }

    fn duration(&self, _last_us: u64) -> Duration {
        Duration::from_micros(u64::from(self.avi.slots()) * u64::from(self.frame_us))
    }

    fn cut_before(&self, jpeg_bytes: usize) -> Option<&'static str> {
        (!self.avi.has_room_for(jpeg_bytes)).then_some("avi 1.0 size limit")
    }

    /// Writes `jpeg` in the slot nearest its capture time, leaving the slots of missing frames
    /// empty. A frame that would share a slot (out of order, or a source faster than its nominal
    /// rate) takes the next free one.
    fn write_frame(&mut self, jpeg: &[u8], t: u64) -> Result<bool, FrameError> {
        let offset_us = t.saturating_sub(self.first_us);
        let frame_us = u64::from(self.frame_us.max(1));
        let nearest = offset_us.saturating_add(frame_us / 2) / frame_us;
        let slot = match self.last_slot {
            Some(last) => nearest.max(last + 1),
            None => 0,
        };
        let empty = slot - self.last_slot.map_or(0, |l| l + 1);
        self.avi.skip(u32::try_from(empty).unwrap_or(u32::MAX))?;
        self.avi.write_frame(jpeg)?;
        self.last_slot = Some(slot);
        Ok(false)
    }

    fn checkpoint_due(&mut self, t: u64) -> bool {
        let due = t.saturating_sub(self.checkpoint_us) >= CHECKPOINT.as_micros() as u64;
        if due {
            self.checkpoint_us = t;
        }
        due
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        self.avi.checkpoint()
    }

    fn finish(self: Box<Self>) -> io::Result<F> {
        self.avi
            .finish()
            .and_then(|out| out.into_inner().map_err(io::IntoInnerError::into_error))
    }
}
