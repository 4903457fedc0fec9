//! Camera modes: the formats surv asks for, the modes a camera offers, and which of them to try
//! first for a requested size and rate.
//!
//! Kept apart from the device so that the choice is tested without a camera; the mapping to
//! and from nokhwa's types is here too, in one place.

use nokhwa::utils::{CameraFormat, FrameFormat};

/// The pixel formats surv asks cameras for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaptureFormat {
    /// Motion JPEG: each frame a JPEG, small enough for USB 2 at high resolutions.
    Mjpeg,
    /// Packed 4:2:2, `Y0 U Y1 V` per pixel pair, limited range.
    Yuyv,
}

/// A mode a camera offers: format, size and frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: CaptureFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// The offered modes in order of preference for a `width × height` request at `fps`: closest
/// size first, then closest frame rate, then MJPEG before YUYV.
pub fn rank_modes(offered: &[Mode], width: u32, height: u32, fps: u32) -> Vec<Mode> {
    let mut ranked = offered.to_vec();
    ranked.sort_by_key(|m| {
        let dw = u64::from(m.width.abs_diff(width));
        let dh = u64::from(m.height.abs_diff(height));
        (dw * dw + dh * dh, m.fps.abs_diff(fps), m.format)
    });
    ranked.dedup();
    ranked
}

/// The nokhwa formats surv can use, in the order it prefers them.
pub(super) const WANTED: [FrameFormat; 2] = [FrameFormat::MJPEG, FrameFormat::YUYV];

/// nokhwa's name for a capture format.
pub(super) fn frame_format(format: CaptureFormat) -> FrameFormat {
    match format {
        CaptureFormat::Mjpeg => FrameFormat::MJPEG,
        CaptureFormat::Yuyv => FrameFormat::YUYV,
    }
}

/// A mode as nokhwa reports it, if it is in a format surv can use.
pub(super) fn mode_of(format: CameraFormat) -> Option<Mode> {
    let capture_format = match format.format() {
        FrameFormat::MJPEG => CaptureFormat::Mjpeg,
        FrameFormat::YUYV => CaptureFormat::Yuyv,
        _ => return None,
    };
    Some(Mode {
        format: capture_format,
        width: format.width(),
        height: format.height(),
        fps: format.frame_rate(),
    })
}
