//! Motion detection, once per analysed frame for every watcher: a small grayscale picture of the
//! frame (the JPEG decoded at 1/8 scale, which skips the inverse DCT) compared with the previous
//! analysed one.
//!
//! * A pixel changed when its brightness moved by more than `noise` (0–255); a changed pixel
//!   counts only with at least two changed neighbours (lone specks are sensor and JPEG noise).
//! * The score is the share of the picture that changed; motion when it is at least
//!   `threshold_pct`.
//! * When most of the picture changes at once (`lightswitch_pct`: the lights, the camera's auto
//!   exposure), that frame is not motion: the comparison simply moves on to the new picture.
//! * Hysteresis: an event starts at the first frame with motion and ends once there has been
//!   none for `hold`; its end time is the last frame with motion. One event, one start and one
//!   end, with its peak score and the box around everything that changed.
//!
//! Comparing with the previous frame, not with a slowly learnt background, is what makes the
//! end of an event follow the end of the movement (a background takes seconds to forget where
//! an object was) and what makes a stationary object stop being motion at once.

#[cfg(test)]
mod tests;
pub mod watch;

use std::time::Duration;

use crate::jpeg::JpegReader;

/// What counts as motion.
#[derive(Debug, Clone, Copy)]
pub struct MotionConfig {
    /// Brightness change (0–255) below which a pixel has not changed.
    pub noise: u8,
    /// Share of the picture (%) that must change for motion.
    pub threshold_pct: f32,
    /// Share of the picture (%) above which a change is a lighting change, not motion.
    pub lightswitch_pct: f32,
    /// How long without motion ends an event.
    pub hold: Duration,
    /// An H.264 camera passed through decodes its keyframes alone for the detector while
    /// nothing else wants its pictures (else every frame).
    pub h264_keyframes_only: bool,
}

impl Default for MotionConfig {
    fn default() -> MotionConfig {
        MotionConfig {
            noise: 25,
            threshold_pct: 0.5,
            lightswitch_pct: 60.0,
            hold: Duration::from_secs(3),
            h264_keyframes_only: true,
        }
    }
}

/// A rectangle of the picture, as fractions of its width and height (0.0–1.0), so that it
/// holds whatever size the frame is shown at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// What a frame changed about the current event.
#[derive(Debug, Clone, PartialEq)]
pub enum MotionEvent {
    /// Motion began at `at_us` (capture time, µs since the epoch).
    Start {
        at_us: u64,
        score: f32,
        region: MotionBox,
    },
    /// The event ended: motion from `start_us` to `end_us` (its last frame with motion).
    End {
        start_us: u64,
        end_us: u64,
        peak: f32,
        region: MotionBox,
    },
}

/// What one analysed frame showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Analysis {
    /// Share of the picture that changed, 0.0–1.0 (0 for a lighting change).
    pub score: f32,
    /// Whether an event is under way after this frame.
    pub active: bool,
}

#[derive(Debug)]
struct Active {
    start_us: u64,
    last_motion_us: u64,
    peak: f32,
    /// Changed area so far, in thumbnail pixels: x0, y0, x1, y1 (exclusive).
    region: (usize, usize, usize, usize),
}

/// The detector of one stream.
#[derive(Debug)]
pub struct Detector {
    cfg: MotionConfig,
    previous: Vec<u8>,
    changed: Vec<bool>,
    width: usize,
    height: usize,
    active: Option<Active>,
}

impl Detector {
    pub fn new(cfg: MotionConfig) -> Detector {
        Detector {
            cfg,
            previous: Vec::new(),
            changed: Vec::new(),
            width: 0,
            height: 0,
            active: None,
        }
    }

    /// Whether an event is under way.
    pub fn active(&self) -> bool {
        self.active.is_some()
    }

    /// The event under way: its start (µs), peak score so far, and box so far.
    pub fn current(&self) -> Option<(u64, f32, MotionBox)> {
        let a = self.active.as_ref()?;
        Some((a.start_us, a.peak, self.fraction(a.region)))
    }

    /// Ends the event under way now (the source went away), at its last frame with motion.
    pub fn finish(&mut self) -> Option<MotionEvent> {
        let active = self.active.take()?;
        Some(MotionEvent::End {
            start_us: active.start_us,
            end_us: active.last_motion_us,
            peak: active.peak,
            region: self.fraction(active.region),
        })
    }

    /// Compares `gray` (`width × height`, one byte a pixel, rows unpadded) captured at `at_us`
    /// with the previous picture; returns what it showed and the event it started or ended.
    pub fn analyse(
        &mut self,
        gray: &[u8],
        width: usize,
        height: usize,
        at_us: u64,
    ) -> (Analysis, Option<MotionEvent>) {
        let n = width * height;
        if gray.len() < n || n == 0 {
            return (self.analysis(0.0), None);
        }
        let gray = &gray[..n];
        if (width, height) != (self.width, self.height) || self.previous.len() != n {
            // A first picture, or a new size: nothing to compare with yet.
            (self.width, self.height) = (width, height);
            self.previous = gray.to_vec();
            self.changed = vec![false; n];
            return (self.analysis(0.0), None);
        }
        let noise = i16::from(self.cfg.noise);
        let mut raw_changed = 0usize;
        for ((c, &now), &before) in self.changed.iter_mut().zip(gray).zip(&self.previous) {
            *c = (i16::from(now) - i16::from(before)).abs() > noise;
            raw_changed += usize::from(*c);
        }
        self.previous.copy_from_slice(gray);
        let raw_share = raw_changed as f32 / n as f32;
        if raw_share * 100.0 >= self.cfg.lightswitch_pct {
            // The lights: not motion, and the next frame compares with this new picture.
            return (self.analysis(0.0), self.maybe_end(at_us));
        }
        let (solid, region) = self.solid_changes();
        let score = solid as f32 / n as f32;
        if score * 100.0 < self.cfg.threshold_pct {
            return (self.analysis(score), self.maybe_end(at_us));
        }
        let event = match &mut self.active {
            Some(active) => {
                active.last_motion_us = at_us;
                active.peak = active.peak.max(score);
                let r = &mut active.region;
                *r = (
                    r.0.min(region.0),
                    r.1.min(region.1),
                    r.2.max(region.2),
                    r.3.max(region.3),
                );
                None
            }
            None => {
                self.active = Some(Active {
                    start_us: at_us,
                    last_motion_us: at_us,
                    peak: score,
                    region,
                });
                Some(MotionEvent::Start {
                    at_us,
                    score,
                    region: self.fraction(region),
                })
            }
        };
        (self.analysis(score), event)
    }

    fn analysis(&self, score: f32) -> Analysis {
        Analysis {
            score,
            active: self.active.is_some(),
        }
    }

    /// Ends the event when there has been no motion for `hold`.
    fn maybe_end(&mut self, at_us: u64) -> Option<MotionEvent> {
        let hold_us = u64::try_from(self.cfg.hold.as_micros()).unwrap_or(u64::MAX);
        let active = self.active.as_ref()?;
        if at_us.saturating_sub(active.last_motion_us) < hold_us {
            return None;
        }
        self.finish()
    }

    /// Changed pixels with at least two changed 4-neighbours, and their bounding box.
    fn solid_changes(&self) -> (usize, (usize, usize, usize, usize)) {
        let (w, h) = (self.width, self.height);
        let c = &self.changed;
        let mut count = 0;
        let mut region = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..h {
            let row = y * w;
            for x in 0..w {
                if !c[row + x] {
                    continue;
                }
                let neighbours = usize::from(x > 0 && c[row + x - 1])
                    + usize::from(x + 1 < w && c[row + x + 1])
                    + usize::from(y > 0 && c[row + x - w])
                    + usize::from(y + 1 < h && c[row + x + w]);
                if neighbours >= 2 {
                    count += 1;
                    region = (
                        region.0.min(x),
                        region.1.min(y),
                        region.2.max(x + 1),
                        region.3.max(y + 1),
                    );
                }
            }
        }
        (count, region)
    }

    fn fraction(&self, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> MotionBox {
        let (w, h) = (self.width.max(1) as f32, self.height.max(1) as f32);
        MotionBox {
            x: x0 as f32 / w,
            y: y0 as f32 / h,
            w: x1.saturating_sub(x0) as f32 / w,
            h: y1.saturating_sub(y0) as f32 / h,
        }
    }
}

/// Decodes a JPEG at 1/8 scale in grayscale into `out` (reused); returns its width and height.
/// At 1/8 libjpeg takes each block's DC coefficient and skips the inverse DCT, so this costs
/// little more than the entropy decoding.
pub fn thumbnail(
    reader: &mut JpegReader,
    jpeg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(usize, usize), String> {
    reader.run_for_reason(|d| thumbnail_with(d, jpeg, out))
}

fn thumbnail_with(
    decompressor: &mut turbojpeg::Decompressor,
    jpeg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(usize, usize), String> {
    decompressor
        .set_scaling_factor(turbojpeg::ScalingFactor::ONE_EIGHTH)
        .map_err(|e| e.to_string())?;
    let header = decompressor
        .read_header(jpeg)
        .map_err(|e| e.to_string())?
        .scaled(turbojpeg::ScalingFactor::ONE_EIGHTH);
    let (w, h) = (header.width, header.height);
    if w == 0 || h == 0 || w * h > 4096 * 4096 {
        return Err(format!("unusable thumbnail size {w}x{h}"));
    }
    out.resize(w * h, 0);
    let image = turbojpeg::Image {
        pixels: &mut out[..],
        width: w,
        pitch: w,
        height: h,
        format: turbojpeg::PixelFormat::GRAY,
    };
    decompressor
        .decompress(jpeg, image)
        .map_err(|e| e.to_string())?;
    Ok((w, h))
}
