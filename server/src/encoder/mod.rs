//! JPEG encoding under the datagram cap: one encode per captured frame, quality and scale adapt to fit.
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

use std::fmt;

use bytes::Bytes;
use surv_proto::{FrameTag, TagError, MAX_UDP_PAYLOAD_BYTES, MIN_DATAGRAM_BYTES, TAG_BYTES};
use turbojpeg::{Compressor, Image, Subsamp, YuvPlanesImage};

use crate::source::{PixelFormat, RawFrame};

/// The lowest JPEG quality used before the image is downscaled instead.
pub const QUALITY_FLOOR: u8 = 10;
/// At most this many halvings: 1/16 of the width and height.
pub const MAX_SCALE_SHIFT: u32 = 4;
/// No halving makes a side shorter than this.
pub const MIN_SCALED_SIDE_PX: u32 = 16;
/// Frames below this share of the cap count towards raising the quality.
pub const COMFORT_PERCENT: usize = 70;
/// Lowering the quality aims for this share of the cap, leaving room for the next frames.
pub const TARGET_PERCENT: usize = 85;
/// Quality steps up by this much at a time.
pub const RAISE_STEP: u8 = 5;
/// Quality steps down by at least this much per re-encode.
pub const MIN_LOWER_STEP: u8 = 5;
/// Comfortable frames in a row before the first raise.
pub const BASE_PATIENCE_FRAMES: u32 = 15;
/// The wait between raises doubles after each raise that did not fit, up to this.
pub const MAX_PATIENCE_FRAMES: u32 = 480;
/// A halving is undone only if the full-size image is predicted to fit at this quality or more
/// (or at the quality in use, if lower): a sharp small image beats a blocky big one.
pub const UNSCALE_MIN_QUALITY: u8 = 40;
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

/// One frame, ready to send: the datagram and what went into it.
pub struct EncodedFrame {
    pub seq: u64,
    pub capture_unix_us: u64,
    /// As encoded, after any downscale.
    pub width: u32,
    /// As encoded, after any downscale.
    pub height: u32,
    pub quality: u8,
    /// turbojpeg compress calls for this frame; 1 in steady state.
    pub attempts: u32,
    /// The whole JPEG with the surv FrameTag COM segment inserted, at most `max_datagram_bytes`.
    pub datagram: Bytes,
}

impl fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("seq", &self.seq)
            .field("capture_unix_us", &self.capture_unix_us)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("quality", &self.quality)
            .field("attempts", &self.attempts)
            .field("datagram_bytes", &self.datagram.len())
            .finish()
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
    model: SizeModel,
    compressor: Compressor,
    /// The quality the compressor is set to.
    compressor_quality: Option<u8>,
    /// Worst-case sized output buffer, reused.
    jpeg: Vec<u8>,
    /// Quality and halvings for the next frame.
    quality: u8,
    scale_shift: u32,
    /// Frames in a row comfortably under the cap.
    calm_frames: u32,
    /// Calm frames needed before the next raise.
    patience_frames: u32,
    /// The setting was raised after the last frame and has not been tried yet.
    raised: bool,
    /// `scaled[k]` is the current frame halved `k + 1` times (same pixel format).
    scaled: Vec<Vec<u8>>,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("cfg", &self.cfg)
            .field("overhead_bytes", &self.model.overhead_bytes)
            .field("quality", &self.quality)
            .field("scale_divisor", &self.scale_divisor())
            .field("calm_frames", &self.calm_frames)
            .field("patience_frames", &self.patience_frames)
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
            model: SizeModel { overhead_bytes: 0 },
            compressor,
            compressor_quality: None,
            jpeg: Vec::new(),
            quality: cfg.quality,
            scale_shift: 0,
            calm_frames: 0,
            patience_frames: BASE_PATIENCE_FRAMES,
            raised: false,
            scaled: (0..MAX_SCALE_SHIFT).map(|_| Vec::new()).collect(),
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
        encoder.model.overhead_bytes = blank_bytes + TAG_BYTES;
        Ok(encoder)
    }

    /// JPEG quality the next frame starts at.
    pub fn quality(&self) -> u8 {
        self.quality
    }

    /// The next frame starts at 1/`scale_divisor` of the width and height.
    pub fn scale_divisor(&self) -> u32 {
        1 << self.scale_shift
    }

    /// Encodes `frame` into one datagram no larger than the cap, tagged with `seq` and the
    /// frame's capture time.
    pub fn encode(&mut self, frame: &RawFrame, seq: u64) -> Result<EncodedFrame, EncodeError> {
        check_frame(frame)?;
        let cap = self.cfg.max_datagram_bytes;
        let ceiling = self.cfg.quality;
        let (old_quality, old_shift) = (self.quality, self.scale_shift);
        let was_raised = std::mem::take(&mut self.raised);
        let sizes = scaled_sizes(frame.width, frame.height);
        let max_shift = (sizes.len() - 1) as u32;

        let mut quality = self.quality.min(ceiling);
        let mut shift = self.scale_shift.min(max_shift);
        let mut ready_shift = 0;
        let mut attempts = 0;
        let (jpeg_bytes, total) = loop {
            while ready_shift < shift {
                ready_shift += 1;
                self.halve_into_level(frame, &sizes, ready_shift);
            }
            attempts += 1;
            let jpeg_bytes = self.compress(frame, sizes[shift as usize], shift, quality)?;
            let total = jpeg_bytes + TAG_BYTES;
            if total <= cap {
                break (jpeg_bytes, total);
            }
            if quality > QUALITY_FLOOR {
                let estimate = self
                    .model
                    .quality_for(quality, total, cap * TARGET_PERCENT / 100);
                quality = estimate
                    .min(quality.saturating_sub(MIN_LOWER_STEP))
                    .max(QUALITY_FLOOR);
            } else if shift < max_shift {
                let halvings = self
                    .model
                    .halvings_needed(total, cap * TARGET_PERCENT / 100);
                shift += halvings.min(max_shift - shift);
            } else {
                self.quality = quality;
                self.scale_shift = shift;
                self.calm_frames = 0;
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
        };

        let (width, height) = sizes[shift as usize];
        let mut datagram = Vec::new();
        FrameTag {
            seq,
            capture_unix_us: frame.capture_unix_us,
        }
        .encode_into(&self.jpeg[..jpeg_bytes], &mut datagram)?;
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

        // Adapt for the next frame.
        if attempts > 1 {
            self.calm_frames = 0;
            if was_raised {
                self.patience_frames = (self.patience_frames * 2).min(MAX_PATIENCE_FRAMES);
            }
        } else if was_raised {
            self.patience_frames = (self.patience_frames / 2).max(BASE_PATIENCE_FRAMES);
        }
        let (mut next_quality, mut next_shift) = (quality, shift);
        let mut why = "frame over the cap";
        if total * 100 < cap * COMFORT_PERCENT {
            self.calm_frames += 1;
            if self.calm_frames >= self.patience_frames {
                self.calm_frames = 0;
                if let Some((q, s)) = self.model.step_up(quality, shift, total, cap, ceiling) {
                    (next_quality, next_shift) = (q, s);
                    self.raised = true;
                    why = "frames well under the cap";
                }
            }
        } else {
            self.calm_frames = 0;
        }
        self.quality = next_quality;
        self.scale_shift = next_shift;
        self.log_change(seq, old_quality, old_shift, total, attempts, why);

        Ok(EncodedFrame {
            seq,
            capture_unix_us: frame.capture_unix_us,
            width,
            height,
            quality,
            attempts,
            datagram: Bytes::from(datagram),
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
        if (old_quality, old_shift) != (self.quality, self.scale_shift) {
            tracing::info!(
                seq,
                old_quality,
                quality = self.quality,
                old_scale = %format_args!("1/{}", 1u32 << old_shift),
                scale = %format_args!("1/{}", 1u32 << self.scale_shift),
                bytes,
                cap = self.cfg.max_datagram_bytes,
                attempts,
                "{why}: jpeg setting changed"
            );
        }
    }

    /// Computes `scaled[shift - 1]` from the level above it.
    fn halve_into_level(&mut self, frame: &RawFrame, sizes: &[(u32, u32)], shift: u32) {
        let k = shift as usize;
        let (above, below) = self.scaled.split_at_mut(k - 1);
        let src: &[u8] = if k == 1 { &frame.data } else { &above[k - 2] };
        let (sw, sh) = sizes[k - 1];
        let (dw, dh) = sizes[k];
        let dst = &mut below[0];
        match frame.format {
            PixelFormat::I420 => halve_i420(src, sw, sh, dw, dh, dst),
            PixelFormat::Rgb24 => {
                let (sw, sh, dw, dh) = (sw as usize, sh as usize, dw as usize, dh as usize);
                dst.resize(dw * dh * 3, 0);
                box_halve(src, sw, sh, 3, dst, dw, dh);
            }
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
        let pixels: &[u8] = match shift {
            0 => &frame.data,
            k => &self.scaled[k as usize - 1],
        };
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

/// Frame size after 0, 1, 2… halvings, each side halved and rounded down to even, while both
/// sides stay at least [`MIN_SCALED_SIDE_PX`] (the full size is always first).
fn scaled_sizes(width: u32, height: u32) -> Vec<(u32, u32)> {
    let mut sizes = vec![(width, height)];
    let (mut w, mut h) = (width, height);
    for _ in 0..MAX_SCALE_SHIFT {
        (w, h) = ((w / 2) & !1, (h / 2) & !1);
        if w < MIN_SCALED_SIDE_PX || h < MIN_SCALED_SIDE_PX {
            break;
        }
        sizes.push((w, h));
    }
    sizes
}

/// Halves an I420 image (`src_w × src_h`, even) into `dst_w × dst_h` (even, at most half) with a
/// 2×2 box filter on each plane.
fn halve_i420(src: &[u8], src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, dst: &mut Vec<u8>) {
    let (sw, sh, dw, dh) = (
        src_w as usize,
        src_h as usize,
        dst_w as usize,
        dst_h as usize,
    );
    let (src_y, src_c) = src.split_at(sw * sh);
    let (src_u, src_v) = src_c.split_at(sw * sh / 4);
    dst.resize(dw * dh * 3 / 2, 0);
    let (dst_y, dst_c) = dst.split_at_mut(dw * dh);
    let (dst_u, dst_v) = dst_c.split_at_mut(dw * dh / 4);
    box_halve(src_y, sw, sh, 1, dst_y, dw, dh);
    box_halve(src_u, sw / 2, sh / 2, 1, dst_u, dw / 2, dh / 2);
    box_halve(src_v, sw / 2, sh / 2, 1, dst_v, dw / 2, dh / 2);
}

/// 2×2 box filter: each `dst` pixel is the rounded mean of the 2×2 block of `src` at twice its
/// coordinates. `channels` interleaved bytes per pixel; rows unpadded; needs
/// `2 × dst_w <= src_w` and `2 × dst_h <= src_h` (extra source columns and rows are ignored).
fn box_halve(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
) {
    debug_assert!(2 * dst_w <= src_w && 2 * dst_h <= src_h);
    let src_stride = src_w * channels;
    let dst_stride = dst_w * channels;
    for (y, out) in dst.chunks_exact_mut(dst_stride).take(dst_h).enumerate() {
        let top = &src[2 * y * src_stride..][..src_stride];
        let bottom = &src[(2 * y + 1) * src_stride..][..src_stride];
        for x in 0..dst_w {
            for c in 0..channels {
                let i = 2 * x * channels + c;
                let sum = u16::from(top[i])
                    + u16::from(top[i + channels])
                    + u16::from(bottom[i])
                    + u16::from(bottom[i + channels]);
                out[x * channels + c] = ((sum + 2) / 4) as u8;
            }
        }
    }
}

/// libjpeg's quality scale: the percentage the standard quantisation tables are multiplied by.
fn quant_scale(quality: u8) -> f64 {
    let q = f64::from(quality.clamp(1, 100));
    if q < 50.0 {
        5000.0 / q
    } else {
        (200.0 - 2.0 * q).max(1.0)
    }
}

fn quality_for_scale(scale: f64) -> u8 {
    let q = if scale >= 100.0 {
        5000.0 / scale
    } else {
        (200.0 - scale) / 2.0
    };
    q.round().clamp(1.0, 100.0) as u8
}

/// How JPEG size follows the quantisation scale: bytes ∝ scale^-EXPONENT, fitted on a photo and
/// on noise (0.5–0.55). Flat synthetic pictures follow it less (much of their size is per-block
/// overhead), which costs an extra re-encode while settling, no more.
const SIZE_EXPONENT: f64 = 0.5;

/// Undoing a halving quadruples the pixels; the bytes grow about this much (2.5–3.5 on photos).
const UNSCALE_GROWTH: usize = 3;

/// A rough model of JPEG size: fixed headers plus picture data that shrinks with the quality
/// and the pixel count. Only used to choose the next attempt; the cap is enforced on real sizes.
#[derive(Debug, Clone, Copy)]
struct SizeModel {
    /// Markers, quantisation and Huffman tables, and the surv tag: what even a blank image costs.
    overhead_bytes: usize,
}

impl SizeModel {
    /// The quality predicted to turn a `bytes` datagram made at `quality` into `target_bytes`.
    fn quality_for(&self, quality: u8, bytes: usize, target_bytes: usize) -> u8 {
        let data = bytes.saturating_sub(self.overhead_bytes);
        let target_data = target_bytes.saturating_sub(self.overhead_bytes);
        if data == 0 {
            return quality;
        }
        if target_data == 0 {
            return 1;
        }
        let ratio = data as f64 / target_data as f64;
        quality_for_scale(quant_scale(quality) * ratio.powf(1.0 / SIZE_EXPONENT))
    }

    /// Halvings predicted to bring `bytes` under `target_bytes` (each quarters the picture
    /// data); at least 1, at most [`MAX_SCALE_SHIFT`].
    fn halvings_needed(&self, bytes: usize, target_bytes: usize) -> u32 {
        let target_data = target_bytes.saturating_sub(self.overhead_bytes);
        let mut data = bytes.saturating_sub(self.overhead_bytes) / 4;
        let mut n = 1;
        while data > target_data && n < MAX_SCALE_SHIFT {
            n += 1;
            data /= 4;
        }
        n
    }

    /// Predicted datagram size once a halving is undone.
    fn unscaled(&self, bytes: usize) -> usize {
        let data = bytes.saturating_sub(self.overhead_bytes);
        self.overhead_bytes + data * UNSCALE_GROWTH
    }

    /// The next better setting after comfortable frames at (`quality`, `shift`) of `bytes`, if
    /// any: undo a halving if the full size is predicted to fit comfortably at a decent quality
    /// (or at all, once the quality is at the ceiling), else raise the quality.
    fn step_up(
        &self,
        quality: u8,
        shift: u32,
        bytes: usize,
        cap: usize,
        ceiling: u8,
    ) -> Option<(u8, u32)> {
        if shift > 0 {
            let predicted = self.unscaled(bytes);
            let comfortable = cap * COMFORT_PERCENT / 100;
            let full_quality = if predicted <= comfortable {
                quality
            } else {
                self.quality_for(quality, predicted, comfortable)
                    .min(quality)
            };
            let decent =
                full_quality == quality || full_quality >= UNSCALE_MIN_QUALITY.min(ceiling);
            let nothing_else = quality >= ceiling && full_quality > QUALITY_FLOOR;
            if decent || nothing_else {
                return Some((full_quality, shift - 1));
            }
        }
        (quality < ceiling).then(|| (quality.saturating_add(RAISE_STEP).min(ceiling), shift))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Source, TestPattern};
    use surv_proto::DEFAULT_MAX_DATAGRAM_BYTES;

    /// Decodes with turbojpeg, independently of the encoder: (width, height) of the image.
    fn decode(datagram: &[u8]) -> (usize, usize) {
        let image = turbojpeg::decompress(datagram, turbojpeg::PixelFormat::RGB)
            .expect("datagram is a valid JPEG");
        (image.width, image.height)
    }

    struct Run {
        frames: Vec<EncodedFrame>,
        errors: usize,
    }

    fn run(width: u32, height: u32, cap: usize, frames: usize) -> Run {
        let mut source = TestPattern::new(width, height, 240).unwrap();
        let mut encoder = Encoder::new(EncoderConfig {
            max_datagram_bytes: cap,
            quality: 80,
        })
        .unwrap();
        let mut raw = RawFrame::new();
        let mut out = Run {
            frames: Vec::new(),
            errors: 0,
        };
        for seq in 0..frames as u64 {
            source.next_frame(&mut raw).unwrap();
            match encoder.encode(&raw, seq) {
                Ok(frame) => {
                    assert!(frame.datagram.len() <= cap, "{frame:?} over {cap}");
                    let tag = FrameTag::decode(&frame.datagram).unwrap();
                    assert_eq!(tag.seq, seq);
                    assert_eq!(tag.capture_unix_us, raw.capture_unix_us);
                    assert_eq!(
                        decode(&frame.datagram),
                        (frame.width as usize, frame.height as usize)
                    );
                    out.frames.push(frame);
                }
                Err(EncodeError::TooLarge { .. }) => out.errors += 1,
                Err(e) => panic!("frame {seq}: {e}"),
            }
        }
        out
    }

    #[test]
    fn vga_at_the_default_cap_settles_on_one_encode_per_frame() {
        let run = run(640, 480, DEFAULT_MAX_DATAGRAM_BYTES, 30);
        assert_eq!(run.errors, 0);
        for f in &run.frames {
            assert_eq!((f.width, f.height), (640, 480), "{f:?}");
        }
        let last: Vec<_> = run.frames[20..].iter().map(|f| f.attempts).collect();
        assert!(
            last.iter().all(|&a| a == 1),
            "attempts of the last 10 frames: {last:?}"
        );
    }

    #[test]
    fn hd_at_the_default_cap_fits_every_frame() {
        let run = run(1280, 720, DEFAULT_MAX_DATAGRAM_BYTES, 30);
        assert_eq!(run.errors, 0);
        let total: u32 = run.frames.iter().map(|f| f.attempts).sum();
        // Some re-encodes while settling; afterwards nearly one per frame.
        assert!(total < 30 + 10, "{total} compress calls for 30 frames");
    }

    #[test]
    fn vga_under_an_mtu_sized_cap_downscales() {
        let run = run(640, 480, 1400, 30);
        assert_eq!(run.errors, 0);
        let last = run.frames.last().unwrap();
        assert!(last.width < 640 && last.height < 480, "{last:?}");
        let total: u32 = run.frames[20..].iter().map(|f| f.attempts).sum();
        assert!(total <= 12, "{total} compress calls for the last 10 frames");
    }

    #[test]
    fn noise_never_exceeds_the_cap() {
        // A xorshift generator: incompressible, deterministic.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut noise = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        for (cap, format, (w, h)) in [
            (DEFAULT_MAX_DATAGRAM_BYTES, PixelFormat::I420, (640, 480)),
            (1400, PixelFormat::I420, (640, 480)),
            (MIN_DATAGRAM_BYTES, PixelFormat::I420, (320, 240)),
            (DEFAULT_MAX_DATAGRAM_BYTES, PixelFormat::Rgb24, (640, 480)),
            (1400, PixelFormat::Rgb24, (320, 240)),
        ] {
            let mut encoder = Encoder::new(EncoderConfig {
                max_datagram_bytes: cap,
                quality: 100,
            })
            .unwrap();
            for seq in 0..3 {
                let frame = RawFrame {
                    width: w,
                    height: h,
                    format,
                    data: noise(format.frame_bytes(w, h).unwrap()),
                    capture_unix_us: 1,
                };
                match encoder.encode(&frame, seq) {
                    Ok(f) => {
                        assert!(f.datagram.len() <= cap, "{f:?} over {cap}");
                        let (dw, dh) = decode(&f.datagram);
                        assert_eq!((dw as u32, dh as u32), (f.width, f.height));
                    }
                    Err(EncodeError::TooLarge { bytes, cap: c, .. }) => {
                        assert!(bytes > c && c == cap)
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn rgb_frames_are_encoded_too() {
        let (w, h) = (64, 48);
        let data = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let frame = RawFrame {
            width: w,
            height: h,
            format: PixelFormat::Rgb24,
            data,
            capture_unix_us: 5,
        };
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        let f = encoder.encode(&frame, 9).unwrap();
        assert_eq!(decode(&f.datagram), (64, 48));
        assert_eq!(
            FrameTag::decode(&f.datagram).unwrap(),
            FrameTag {
                seq: 9,
                capture_unix_us: 5
            }
        );
    }

    #[test]
    fn rejects_bad_configs_and_frames() {
        for (bytes, quality) in [
            (MIN_DATAGRAM_BYTES - 1, 80),
            (MAX_UDP_PAYLOAD_BYTES + 1, 80),
            (1400, 0),
            (1400, 101),
        ] {
            let cfg = EncoderConfig {
                max_datagram_bytes: bytes,
                quality,
            };
            assert!(Encoder::new(cfg).is_err(), "{cfg:?}");
        }
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        for (w, h, format, len) in [
            (64, 48, PixelFormat::I420, 64 * 48),
            (64, 48, PixelFormat::I420, 64 * 48 * 3 / 2 + 1),
            (63, 48, PixelFormat::I420, 63 * 48 * 3 / 2),
            (0, 0, PixelFormat::I420, 0),
            (64, 48, PixelFormat::Rgb24, 64 * 48 * 3 / 2),
        ] {
            let frame = RawFrame {
                width: w,
                height: h,
                format,
                data: vec![0; len],
                capture_unix_us: 0,
            };
            let err = encoder.encode(&frame, 0).unwrap_err();
            assert!(matches!(err, EncodeError::BadFrame { .. }), "{err}");
        }
    }

    #[test]
    fn box_filter_averages_two_by_two_blocks() {
        // 4x2 grey plane -> 2x1.
        let src = [0, 2, 10, 20, 4, 6, 30, 41];
        let mut dst = [0; 2];
        box_halve(&src, 4, 2, 1, &mut dst, 2, 1);
        assert_eq!(dst, [3, 25]); // (0+2+4+6)/4 = 3, (10+20+30+41)/4 = 25.25

        // 2x2 RGB -> 1x1, channels kept apart.
        let rgb = [255, 0, 1, 255, 0, 2, 255, 0, 3, 255, 4, 4];
        let mut one = [0; 3];
        box_halve(&rgb, 2, 2, 3, &mut one, 1, 1);
        assert_eq!(one, [255, 1, 3]); // (0+0+0+4)/4 = 1, (1+2+3+4)/4 = 2.5 rounds to 3
    }

    #[test]
    fn halving_i420_keeps_the_planes_apart() {
        // 4x4 I420: Y 16 bytes, U 4, V 4 -> 2x2: Y 4, U 1, V 1.
        let mut src: Vec<u8> = (0..16).map(|i| i * 10).collect();
        src.extend([100, 102, 104, 106]);
        src.extend([200, 200, 0, 0]);
        let mut dst = Vec::new();
        halve_i420(&src, 4, 4, 2, 2, &mut dst);
        assert_eq!(dst, vec![25, 45, 105, 125, 103, 100]);
    }

    #[test]
    fn scaled_sizes_stay_even_and_large_enough() {
        assert_eq!(
            scaled_sizes(640, 480),
            vec![(640, 480), (320, 240), (160, 120), (80, 60), (40, 30)]
        );
        assert_eq!(scaled_sizes(160, 90), vec![(160, 90), (80, 44), (40, 22)]);
        assert_eq!(scaled_sizes(16, 16), vec![(16, 16)]);
    }

    #[test]
    fn quality_estimates_move_the_right_way() {
        let model = SizeModel { overhead_bytes: 0 };
        assert_eq!(model.quality_for(80, 1000, 1000), 80);
        let lower = model.quality_for(80, 2000, 1000);
        assert!((1..80).contains(&lower), "{lower}");
        assert!(model.quality_for(80, 10_000, 1000) < lower);
        assert!(model.quality_for(50, 500, 1000) > 50);
        assert_eq!(model.quality_for(80, 1_000_000, 1), 1);
        for q in 1..=100 {
            assert_eq!(quality_for_scale(quant_scale(q)), q);
        }
        // Only the picture data shrinks: 1000 bytes of which 600 headers, to 800, is halving
        // the data, a bigger step than 1000 -> 800 without headers.
        let with_headers = SizeModel {
            overhead_bytes: 600,
        };
        assert!(with_headers.quality_for(80, 1000, 800) < model.quality_for(80, 1000, 800));
        // A target below the headers: as low as it goes.
        assert_eq!(with_headers.quality_for(80, 1000, 500), 1);
    }

    #[test]
    fn halvings_predicted_from_the_picture_data() {
        let model = SizeModel {
            overhead_bytes: 400,
        };
        assert_eq!(model.halvings_needed(1000, 900), 1);
        assert_eq!(model.halvings_needed(400 + 4 * 500, 900), 1);
        assert_eq!(model.halvings_needed(400 + 4 * 501, 900), 2);
        assert_eq!(model.halvings_needed(100_000, 900), 4);
        assert_eq!(model.halvings_needed(100_000, 100), MAX_SCALE_SHIFT);
    }

    #[test]
    fn step_up_prefers_the_full_size_when_it_will_fit() {
        let model = SizeModel { overhead_bytes: 0 };
        // Half size, tiny frames: undo the halving at the same quality.
        assert_eq!(model.step_up(60, 1, 1000, 65_000, 80), Some((60, 0)));
        // Half size, frames at 60% of the cap: full size would need a very low quality; raise
        // the quality instead.
        assert_eq!(model.step_up(30, 1, 39_000, 65_000, 80), Some((35, 1)));
        // Half size at 30% of the cap: full size fits at a decent, lower quality.
        let (q, shift) = model.step_up(80, 1, 20_000, 65_000, 80).unwrap();
        assert_eq!(shift, 0);
        assert!((UNSCALE_MIN_QUALITY..80).contains(&q), "{q}");
        // Half size at the ceiling: nothing better at this size, so try the full size even at
        // a low quality...
        let (q, shift) = model.step_up(80, 1, 35_000, 65_000, 80).unwrap();
        assert_eq!(shift, 0);
        assert!((QUALITY_FLOOR + 1..UNSCALE_MIN_QUALITY).contains(&q), "{q}");
        // ...but not if it would only fit at the floor.
        assert_eq!(model.step_up(80, 1, 60_000, 65_000, 80), None);
        // Full size below the ceiling: raise.
        assert_eq!(model.step_up(75, 0, 1000, 65_000, 80), Some((80, 0)));
        // Full size at the ceiling: nothing better.
        assert_eq!(model.step_up(80, 0, 1000, 65_000, 80), None);
        // Headers do not triple: 1400-byte cap, 550-byte frames of which 400 headers.
        let small = SizeModel {
            overhead_bytes: 400,
        };
        assert_eq!(small.step_up(30, 2, 550, 1400, 80), Some((30, 1)));
    }

    /// Rough figures for the record, not a benchmark:
    /// `cargo test --release -p surv-server --lib -- --ignored --nocapture encode_speed`
    #[test]
    #[ignore]
    fn encode_speed() {
        for (w, h, cap) in [(640, 480, 65_000), (1280, 720, 65_000), (640, 480, 1400)] {
            let mut source = TestPattern::new(w, h, 240).unwrap();
            let frames: Vec<RawFrame> = (0..60)
                .map(|_| {
                    let mut raw = RawFrame::new();
                    source.next_frame(&mut raw).unwrap();
                    raw
                })
                .collect();
            let mut encoder = Encoder::new(EncoderConfig {
                max_datagram_bytes: cap,
                quality: 80,
            })
            .unwrap();
            // The first frames settle the setting; time the steady state.
            for (seq, frame) in frames[..10].iter().enumerate() {
                encoder.encode(frame, seq as u64).unwrap();
            }
            let start = std::time::Instant::now();
            let mut bytes = 0;
            let mut last = None;
            for (seq, frame) in frames[10..].iter().enumerate() {
                let f = encoder.encode(frame, seq as u64 + 10).unwrap();
                bytes += f.datagram.len();
                last = Some(f);
            }
            let per_frame = start.elapsed() / 50;
            let avg = bytes / 50;
            println!("{w}x{h} cap {cap}: {per_frame:?}/frame, {avg} bytes avg, last {last:?}");
        }
    }
}
