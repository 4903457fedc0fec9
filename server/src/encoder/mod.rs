//! JPEG encoding under the datagram cap: one encode per raw frame, quality and scale adapt to fit.
//!
//! Every frame becomes one datagram: a whole JPEG with the surv [`FrameTag`] after SOI, never
//! larger than [`EncoderConfig::max_datagram_bytes`]. The encoder keeps a setting (JPEG quality
//! and a power-of-two downscale) from frame to frame, so that in steady state each frame costs
//! exactly one `turbojpeg` compress call:
//!
//! * A frame over the cap is re-encoded, the same frame, at a lower quality: a big step
//!   estimated from how far over it was, at least [`MIN_LOWER_STEP`]. At [`QUALITY_FLOOR`] the
//!   image is halved instead (2×2 box filter), down to 1/2^[`MAX_SCALE_SHIFT`]. If even that
//!   does not fit, the frame is dropped with [`EncodeError::TooLarge`]; nothing over the cap
//!   ever leaves the encoder.
//! * Frames comfortably under the cap (below [`COMFORT_PERCENT`] of it) for a while raise the
//!   setting for the next frame, one step at a time: a halving undone (at a quality predicted to
//!   fit) or the quality raised by [`RAISE_STEP`] towards the configured ceiling. A raise costs
//!   no encode; if the next frame does not fit, it is re-encoded lower and the encoder waits
//!   twice as long before trying again, so a setting near the edge does not oscillate.
//!
//! This file is the encoder's public face and its encode loop (the turbojpeg calls); the
//! decisions live in `rate.rs` (quality and scale, the size model) and the downscaling in
//! `scale.rs`.

use std::fmt;

use bytes::Bytes;
use surv_proto::{FrameTag, TagError, MAX_UDP_PAYLOAD_BYTES, MIN_DATAGRAM_BYTES, TAG_BYTES};
use turbojpeg::{Compressor, Image, Subsamp, YuvPlanesImage};

use crate::frame::{EncodedFrame, Payload, PixelFormat, RawFrame};

mod rate;
mod scale;
#[cfg(test)]
mod tests;

use rate::RateControl;
use scale::{scaled_sizes, Halvings};

pub use rate::{
    BASE_PATIENCE_FRAMES, COMFORT_PERCENT, MAX_PATIENCE_FRAMES, MIN_LOWER_STEP, QUALITY_FLOOR,
    RAISE_STEP, TARGET_PERCENT, UNSCALE_MIN_QUALITY,
};
pub use scale::{MAX_SCALE_SHIFT, MIN_SCALED_SIDE_PX};

/// Caps at or below this get Huffman tables optimised per image: with small images the standard
/// tables (about 420 bytes) are a large share of the datagram.
pub const OPTIMIZE_HUFFMAN_CAP_BYTES: usize = 16_384;

/// What the encoder must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// No datagram is larger than this; MIN_DATAGRAM_BYTES..=MAX_UDP_PAYLOAD_BYTES.
    pub max_datagram_bytes: usize,
    /// Quality ceiling, 1..=100; the quality in use drops below it when frames do not fit.
    pub quality: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            max_datagram_bytes: surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
            quality: 80,
        }
    }
}

/// Why a configuration was refused or a frame produced no datagram.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "datagram cap of {bytes} bytes is out of range: must be {min} to {max}",
        min = MIN_DATAGRAM_BYTES,
        max = MAX_UDP_PAYLOAD_BYTES
    )]
    Cap { bytes: usize },
    #[error("jpeg quality {quality} is out of range: must be 1 to 100")]
    Quality { quality: u8 },
    #[error("bad {format:?} frame {width}x{height} of {bytes} bytes: {reason}")]
    BadFrame {
        width: u32,
        height: u32,
        format: PixelFormat,
        bytes: usize,
        reason: &'static str,
    },
    #[error(
        "frame {seq} does not fit in {cap} bytes even at quality {quality} and 1/{divisor} size \
         ({bytes} bytes)"
    )]
    TooLarge {
        seq: u64,
        bytes: usize,
        cap: usize,
        quality: u8,
        divisor: u32,
    },
    #[error("jpeg compression failed: {0}")]
    Jpeg(#[from] turbojpeg::Error),
    #[error("tagging the jpeg: {0}")]
    Tag(#[from] TagError),
}

/// The JPEG encoder of one stream; keeps its quality and scale from frame to frame.
pub struct Encoder {
    cfg: EncoderConfig,
    rate: RateControl,
    compressor: Compressor,
    /// The quality the compressor is set to.
    compressor_quality: Option<u8>,
    /// Worst-case sized output buffer, reused.
    jpeg: Vec<u8>,
    /// The current frame, halved.
    halvings: Halvings,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("cfg", &self.cfg)
            .field("overhead_bytes", &self.rate.model.overhead_bytes)
            .field("quality", &self.rate.quality())
            .field("scale_divisor", &self.scale_divisor())
            .field("calm_frames", &self.rate.calm_frames())
            .field("patience_frames", &self.rate.patience_frames())
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(cfg: EncoderConfig) -> Result<Self, EncodeError> {
        if !(MIN_DATAGRAM_BYTES..=MAX_UDP_PAYLOAD_BYTES).contains(&cfg.max_datagram_bytes) {
            return Err(EncodeError::Cap {
                bytes: cfg.max_datagram_bytes,
            });
        }
        if !(1..=100).contains(&cfg.quality) {
            return Err(EncodeError::Quality {
                quality: cfg.quality,
            });
        }
        let mut compressor = Compressor::new()?;
        compressor.set_subsamp(Subsamp::Sub2x2)?;
        compressor.set_optimize(cfg.max_datagram_bytes <= OPTIMIZE_HUFFMAN_CAP_BYTES)?;
        let mut encoder = Encoder {
            cfg,
            rate: RateControl::new(cfg.quality),
            compressor,
            compressor_quality: None,
            jpeg: Vec::new(),
            halvings: Halvings::new(),
        };
        // What headers and tables cost with these settings: a blank 16x16 image is nearly all
        // overhead.
        let blank = RawFrame {
            width: 16,
            height: 16,
            format: PixelFormat::I420,
            data: vec![128; 16 * 16 * 3 / 2],
            capture_unix_us: 0,
        };
        let blank_bytes = encoder.compress(&blank, (16, 16), 0, QUALITY_FLOOR)?;
        encoder.rate.model.overhead_bytes = blank_bytes + TAG_BYTES;
        Ok(encoder)
    }

    /// JPEG quality the next frame starts at.
    pub fn quality(&self) -> u8 {
        self.rate.quality()
    }

    /// The next frame starts at 1/`scale_divisor` of the width and height.
    pub fn scale_divisor(&self) -> u32 {
        1 << self.rate.scale_shift()
    }

    /// Encodes `frame` into one datagram no larger than the cap, tagged with `seq` and the
    /// frame's capture time.
    pub fn encode(&mut self, frame: &RawFrame, seq: u64) -> Result<EncodedFrame, EncodeError> {
        self.encode_tagged(frame, seq, false, &[])
    }

    /// [`encode`](Self::encode), with the tag's motion flag set to `motion` and `objects` (a
    /// [`surv_proto::objects`] segment, or nothing) after the tag. The segment counts under the
    /// cap; one that would take more than a quarter of it is left out.
    pub fn encode_tagged(
        &mut self,
        frame: &RawFrame,
        seq: u64,
        motion: bool,
        objects: &[u8],
    ) -> Result<EncodedFrame, EncodeError> {
        check_frame(frame)?;
        let cap = self.cfg.max_datagram_bytes;
        let objects = if TAG_BYTES + objects.len() <= cap / 4 {
            objects
        } else {
            &[]
        };
        let ceiling = self.cfg.quality;
        let (old_quality, old_shift) = (self.rate.quality(), self.rate.scale_shift());
        let sizes = scaled_sizes(frame.width, frame.height);
        let max_shift = (sizes.len() - 1) as u32;
        let start = self.rate.start(ceiling, max_shift);

        let (mut quality, mut shift) = (start.quality, start.shift);
        let mut ready_shift = 0;
        let mut attempts = 0;
        let (jpeg_bytes, total) = loop {
            while ready_shift < shift {
                ready_shift += 1;
                self.halvings.compute(frame, &sizes, ready_shift);
            }
            attempts += 1;
            let jpeg_bytes = self.compress(frame, sizes[shift as usize], shift, quality)?;
            let total = jpeg_bytes + TAG_BYTES + objects.len();
            if total <= cap {
                break (jpeg_bytes, total);
            }
            match self.rate.lower(quality, shift, total, cap, max_shift) {
                Some(lower) => (quality, shift) = lower,
                None => {
                    self.rate.gave_up(quality, shift);
                    self.log_change(
                        seq,
                        old_quality,
                        old_shift,
                        total,
                        attempts,
                        "frame over the cap",
                    );
                    return Err(EncodeError::TooLarge {
                        seq,
                        bytes: total,
                        cap,
                        quality,
                        divisor: 1 << shift,
                    });
                }
            }
        };

        let (width, height) = sizes[shift as usize];
        let mut datagram = Vec::new();
        FrameTag {
            seq,
            capture_unix_us: frame.capture_unix_us,
            motion,
            objects: false,
        }
        .encode_with(&self.jpeg[..jpeg_bytes], objects, &mut datagram)?;
        if datagram.len() > cap {
            // FrameTag adds exactly TAG_BYTES, counted above; this keeps the cap a guarantee
            // should that ever change.
            return Err(EncodeError::TooLarge {
                seq,
                bytes: datagram.len(),
                cap,
                quality,
                divisor: 1 << shift,
            });
        }

        let why = self
            .rate
            .fitted(start, (quality, shift), total, attempts, cap, ceiling);
        self.log_change(seq, old_quality, old_shift, total, attempts, why);

        Ok(EncodedFrame {
            seq,
            capture_unix_us: frame.capture_unix_us,
            width,
            height,
            quality,
            attempts,
            payload: Payload::Jpeg(Bytes::from(datagram)),
        })
    }

    fn log_change(
        &self,
        seq: u64,
        old_quality: u8,
        old_shift: u32,
        bytes: usize,
        attempts: u32,
        why: &'static str,
    ) {
        let (quality, shift) = (self.rate.quality(), self.rate.scale_shift());
        if (old_quality, old_shift) != (quality, shift) {
            tracing::info!(
                seq,
                old_quality,
                quality,
                old_scale = %format_args!("1/{}", 1u32 << old_shift),
                scale = %format_args!("1/{}", 1u32 << shift),
                bytes,
                cap = self.cfg.max_datagram_bytes,
                attempts,
                "{why}: jpeg setting changed"
            );
        }
    }

    /// One compress call into `self.jpeg`; returns the JPEG's length.
    fn compress(
        &mut self,
        frame: &RawFrame,
        (width, height): (u32, u32),
        shift: u32,
        quality: u8,
    ) -> Result<usize, EncodeError> {
        if self.compressor_quality != Some(quality) {
            self.compressor.set_quality(i32::from(quality))?;
            self.compressor_quality = Some(quality);
        }
        let (w, h) = (width as usize, height as usize);
        let worst = turbojpeg::compressed_buf_len(w, h, Subsamp::Sub2x2)?;
        if self.jpeg.len() < worst {
            self.jpeg.resize(worst, 0);
        }
        let pixels = self.halvings.pixels(frame, shift);
        let len = match frame.format {
            PixelFormat::I420 => {
                let (y, chroma) = pixels.split_at(w * h);
                let (u, v) = chroma.split_at(w * h / 4);
                let image = YuvPlanesImage {
                    y_plane: y,
                    u_plane: u,
                    v_plane: v,
                    width: w,
                    height: h,
                    y_stride: w,
                    u_stride: w / 2,
                    v_stride: w / 2,
                    subsamp: Subsamp::Sub2x2,
                };
                self.compressor
                    .compress_yuv_planes_to_slice(&image, &mut self.jpeg)?
            }
            PixelFormat::Rgb24 => {
                self.compressor.set_subsamp(Subsamp::Sub2x2)?;
                let image = Image {
                    pixels,
                    width: w,
                    pitch: 3 * w,
                    height: h,
                    format: turbojpeg::PixelFormat::RGB,
                };
                self.compressor.compress_to_slice(image, &mut self.jpeg)?
            }
        };
        Ok(len)
    }
}

/// Rejects frames the compressor would choke on (it panics on short buffers).
fn check_frame(frame: &RawFrame) -> Result<(), EncodeError> {
    let bad = |reason| EncodeError::BadFrame {
        width: frame.width,
        height: frame.height,
        format: frame.format,
        bytes: frame.data.len(),
        reason,
    };
    if frame.width == 0 || frame.height == 0 {
        return Err(bad("empty"));
    }
    if frame.format == PixelFormat::I420 && (frame.width & 1 != 0 || frame.height & 1 != 0) {
        return Err(bad("I420 needs an even width and height"));
    }
    if u32::try_from(i32::MAX).is_ok_and(|max| frame.width > max / 4 || frame.height > max / 4) {
        return Err(bad("too large for the jpeg encoder"));
    }
    match frame.format.frame_bytes(frame.width, frame.height) {
        Some(n) if n == frame.data.len() => Ok(()),
        _ => Err(bad("the length does not match the size")),
    }
}
