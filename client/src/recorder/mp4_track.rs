//! The MP4 track: codes each JPEG as H.264 and gathers the pictures into fragments, each an IDR
//! picture and what follows for under [`CHECKPOINT`] of capture time, written as it completes;
//! every sample keeps its own capture time.

use std::io::{self, Write};
use std::time::Duration;

use super::track::{FrameError, Track};
use super::CHECKPOINT;
use crate::h264::JpegToH264;
use surv_codec::fmp4::{Fmp4Writer, Sample, TIMESCALE};

/// A fragmented MP4 segment being written.
pub(super) struct Mp4Track<F: Write> {
    encoder: JpegToH264,
    /// The file until the first picture gives the SPS and PPS for its header.
    file: Option<F>,
    out: Option<Fmp4Writer<F>>,
    /// The fragment being gathered; written when the next one starts, at a checkpoint, or on
    /// close.
    pending: Vec<Sample>,
    /// Capture time of the pending fragment's first frame.
    fragment_us: u64,
    /// Capture time of the segment's first frame: decode time 0.
    first_us: u64,
    /// The stream's nominal frame interval: how long the last picture lasts.
    frame_us: u32,
    /// The earliest frame slot the next picture may take. Decode times sit on a grid of the
    /// stream's frame interval (as AVI's slots do): a frame takes the slot nearest its capture
    /// time, or the next free one when it came early, late or twice in one interval, so that
    /// decode times rise by at least one frame interval across fragments and checkpoints.
    /// (Players and ffmpeg's strict check time the stream in frame intervals: two pictures
    /// within one interval collide there.)
    next_slot: u64,
}

impl<F: Write> Mp4Track<F> {
    /// An encoder for a `width` x `height` stream at `fps`; the file is written once the first
    /// picture is coded.
    pub(super) fn new(
        file: F,
        width: u16,
        height: u16,
        fps: u32,
        frame_us: u32,
        first_us: u64,
    ) -> io::Result<Self> {
        // Precision loss is irrelevant at frame rates.
        let encoder = JpegToH264::new(width, height, fps as f32)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Mp4Track {
            encoder,
            file: Some(file),
            out: None,
            pending: Vec::new(),
            fragment_us: first_us,
            first_us,
            frame_us,
            next_slot: 0,
        })
    }

    /// Writes the pending fragment. Its last picture lasts until `next_dts`, when the next
    /// picture is known, else one nominal frame interval.
    fn flush_fragment(&mut self, next_dts: Option<u64>) -> io::Result<()> {
        let Some(last) = self.pending.last_mut() else {
            return Ok(());
        };
        last.duration = match next_dts {
            Some(next) => u32::try_from(next.saturating_sub(last.dts)).unwrap_or(u32::MAX),
            None => frame_interval_timescale(self.frame_us),
        };
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.write_fragment(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

impl<F: Write + Send> Track<F> for Mp4Track<F> {
    fn frames(&self) -> u64 {
        self.out.as_ref().map_or(0, Fmp4Writer::samples) + self.pending.len() as u64
    }

    fn duration(&self, last_us: u64) -> Duration {
        Duration::from_micros(last_us.saturating_sub(self.first_us) + u64::from(self.frame_us))
    }

    /// Codes `jpeg` into the pending fragment, writing the previous fragment first when this
    /// frame starts a new one; says whether it did.
    fn write_frame(&mut self, jpeg: &[u8], t: u64) -> Result<bool, FrameError> {
        // The frame's slot on the frame-interval grid (see `next_slot`).
        let frame_us = u64::from(self.frame_us.max(1));
        let offset_us = t.saturating_sub(self.first_us);
        let slot = ((offset_us + frame_us / 2) / frame_us).max(self.next_slot);
        let dts = us_to_timescale(slot.saturating_mul(frame_us));
        let starts_fragment = self.pending.is_empty()
            || t.saturating_sub(self.fragment_us) >= CHECKPOINT.as_micros() as u64;
        let flushes = starts_fragment && !self.pending.is_empty();
        if flushes {
            self.flush_fragment(Some(dts))?;
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
        self.next_slot = slot + 1;
        self.pending.push(Sample {
            data: unit.data,
            dts,
            duration: frame_interval_timescale(self.frame_us),
            sync: unit.idr,
        });
        Ok(flushes)
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        self.flush_fragment(None)
    }

    fn finish(mut self: Box<Self>) -> io::Result<F> {
        self.flush_fragment(None)?;
        match (self.out, self.file) {
            (Some(out), _) => out.into_inner(),
            // No frame was ever coded: an empty file, which the writer removes.
            (None, Some(file)) => Ok(file),
            (None, None) => Err(io::Error::other("segment has no file")),
        }
    }
}

fn us_to_timescale(us: u64) -> u64 {
    // No overflow for any offset under 6 million years.
    us.saturating_mul(u64::from(TIMESCALE)) / 1_000_000
}

fn frame_interval_timescale(frame_us: u32) -> u32 {
    u32::try_from(us_to_timescale(u64::from(frame_us))).unwrap_or(u32::MAX)
}
