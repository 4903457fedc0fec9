//! Downscaling for the encoder: the sizes a frame can be halved to, and the halved copies
//! themselves (2×2 box filter, per plane for I420).
//!
//! Halving is the encoder's last resort once the quality is at its floor; the halved copies
//! are kept from frame to frame so that their buffers are reused.

use crate::frame::{PixelFormat, RawFrame};

/// At most this many halvings: 1/16 of the width and height.
pub const MAX_SCALE_SHIFT: u32 = 4;
/// No halving makes a side shorter than this.
pub const MIN_SCALED_SIDE_PX: u32 = 16;

/// The current frame halved 1, 2… times, each level computed from the one above it.
#[derive(Debug)]
pub(super) struct Halvings {
    /// `levels[k]` is the current frame halved `k + 1` times (same pixel format).
    levels: Vec<Vec<u8>>,
}

impl Halvings {
    pub(super) fn new() -> Self {
        Halvings {
            levels: (0..MAX_SCALE_SHIFT).map(|_| Vec::new()).collect(),
        }
    }

    /// The pixels of `frame` halved `shift` times (the frame itself for 0); levels up to
    /// `shift` must have been computed for this frame with [`Halvings::compute`].
    pub(super) fn pixels<'a>(&'a self, frame: &'a RawFrame, shift: u32) -> &'a [u8] {
        match shift {
            0 => &frame.data,
            k => &self.levels[k as usize - 1],
        }
    }

    /// Computes level `shift` (the frame halved `shift` times) from the level above it;
    /// `sizes` is [`scaled_sizes`] of the frame.
    pub(super) fn compute(&mut self, frame: &RawFrame, sizes: &[(u32, u32)], shift: u32) {
        let k = shift as usize;
        let (above, below) = self.levels.split_at_mut(k - 1);
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
}

/// Frame size after 0, 1, 2… halvings, each side halved and rounded down to even, while both
/// sides stay at least [`MIN_SCALED_SIDE_PX`] (the full size is always first).
pub(super) fn scaled_sizes(width: u32, height: u32) -> Vec<(u32, u32)> {
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
pub(super) fn halve_i420(
    src: &[u8],
    src_w: u32,
    src_h: u32,
    dst_w: u32,
    dst_h: u32,
    dst: &mut Vec<u8>,
) {
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
pub(super) fn box_halve(
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
