//! Rate control for the encoder: which quality and scale to try, lower after a frame over the
//! cap, raise after comfortable frames, and the rough JPEG size model those guesses come from.
//!
//! Nothing here compresses or measures: [`RateControl`] is told how big each attempt came out
//! and answers with the next setting, so the encoder's cap guarantee rests on real sizes only.

use super::scale::MAX_SCALE_SHIFT;

/// The lowest JPEG quality used before the image is downscaled instead.
pub const QUALITY_FLOOR: u8 = 10;
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

/// The setting the encoder carries from frame to frame, and how it got there.
#[derive(Debug)]
pub(super) struct RateControl {
    pub(super) model: SizeModel,
    /// Quality and halvings for the next frame.
    quality: u8,
    scale_shift: u32,
    /// Frames in a row comfortably under the cap.
    calm_frames: u32,
    /// Calm frames needed before the next raise.
    patience_frames: u32,
    /// The setting was raised after the last frame and has not been tried yet.
    raised: bool,
}

/// Where a frame's attempts start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Start {
    pub(super) quality: u8,
    pub(super) shift: u32,
    /// The setting is a raise being tried for the first time.
    pub(super) was_raised: bool,
}

impl RateControl {
    /// Starts at full size and the `ceiling` quality; the model's overhead is set once known.
    pub(super) fn new(ceiling: u8) -> Self {
        RateControl {
            model: SizeModel { overhead_bytes: 0 },
            quality: ceiling,
            scale_shift: 0,
            calm_frames: 0,
            patience_frames: BASE_PATIENCE_FRAMES,
            raised: false,
        }
    }

    /// JPEG quality the next frame starts at.
    pub(super) fn quality(&self) -> u8 {
        self.quality
    }

    /// Halvings the next frame starts at.
    pub(super) fn scale_shift(&self) -> u32 {
        self.scale_shift
    }

    pub(super) fn calm_frames(&self) -> u32 {
        self.calm_frames
    }

    pub(super) fn patience_frames(&self) -> u32 {
        self.patience_frames
    }

    /// The first attempt for a frame that can be halved at most `max_shift` times.
    pub(super) fn start(&mut self, ceiling: u8, max_shift: u32) -> Start {
        Start {
            quality: self.quality.min(ceiling),
            shift: self.scale_shift.min(max_shift),
            was_raised: std::mem::take(&mut self.raised),
        }
    }

    /// The next attempt after one at (`quality`, `shift`) came out at `total` bytes, over
    /// `cap`: a big step down in quality (at least [`MIN_LOWER_STEP`]) while above
    /// [`QUALITY_FLOOR`], else as many halvings as predicted to fit; `None` when neither is
    /// left and the frame must be dropped.
    pub(super) fn lower(
        &self,
        quality: u8,
        shift: u32,
        total: usize,
        cap: usize,
        max_shift: u32,
    ) -> Option<(u8, u32)> {
        if quality > QUALITY_FLOOR {
            let estimate = self
                .model
                .quality_for(quality, total, cap * TARGET_PERCENT / 100);
            let quality = estimate
                .min(quality.saturating_sub(MIN_LOWER_STEP))
                .max(QUALITY_FLOOR);
            Some((quality, shift))
        } else if shift < max_shift {
            let halvings = self
                .model
                .halvings_needed(total, cap * TARGET_PERCENT / 100);
            Some((quality, shift + halvings.min(max_shift - shift)))
        } else {
            None
        }
    }

    /// The frame was dropped at (`quality`, `shift`): the next one starts there.
    pub(super) fn gave_up(&mut self, quality: u8, shift: u32) {
        self.quality = quality;
        self.scale_shift = shift;
        self.calm_frames = 0;
    }

    /// A frame fitted at (`quality`, `shift`) in `total` bytes after `attempts` compress calls:
    /// sets up the next frame, raising the setting after enough comfortable frames and waiting
    /// longer after a raise that did not fit. Returns why the setting changed, for the log.
    pub(super) fn fitted(
        &mut self,
        start: Start,
        (quality, shift): (u8, u32),
        total: usize,
        attempts: u32,
        cap: usize,
        ceiling: u8,
    ) -> &'static str {
        if attempts > 1 {
            self.calm_frames = 0;
            if start.was_raised {
                self.patience_frames = (self.patience_frames * 2).min(MAX_PATIENCE_FRAMES);
            }
        } else if start.was_raised {
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
        why
    }
}

/// libjpeg's quality scale: the percentage the standard quantisation tables are multiplied by.
pub(super) fn quant_scale(quality: u8) -> f64 {
    let q = f64::from(quality.clamp(1, 100));
    if q < 50.0 {
        5000.0 / q
    } else {
        (200.0 - 2.0 * q).max(1.0)
    }
}

pub(super) fn quality_for_scale(scale: f64) -> u8 {
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
pub(super) struct SizeModel {
    /// Markers, quantisation and Huffman tables, and the surv tag: what even a blank image costs.
    pub(super) overhead_bytes: usize,
}

impl SizeModel {
    /// The quality predicted to turn a `bytes` datagram made at `quality` into `target_bytes`.
    pub(super) fn quality_for(&self, quality: u8, bytes: usize, target_bytes: usize) -> u8 {
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
    pub(super) fn halvings_needed(&self, bytes: usize, target_bytes: usize) -> u32 {
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
    pub(super) fn step_up(
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
