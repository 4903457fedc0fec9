//! Pixel conversion for cameras: YUYV and planar 4:2:2 to I420 with limited-to-full range
//! tables, and MJPEG decoding into I420 (or RGB24 for unusual JPEGs).
//!
//! Camera bytes are peer data of a kind: every length and size is checked against a cap
//! before anything is sliced or allocated, and a bad frame is an error, never a panic.

use turbojpeg::{Colorspace, Decompressor, Image, Subsamp, YuvImage};

use crate::jpeg::JpegReader;

use crate::frame::{PixelFormat, RawFrame};

/// Largest decoded frame accepted from a camera: 8K UHD.
const MAX_PIXELS: usize = 7680 * 4320;

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("unsupported frame size {width}x{height}: must be even, non-zero and at most 8K")]
    Size { width: u32, height: u32 },
    #[error("{got} bytes for a {width}x{height} frame; expected {expected}")]
    Length {
        width: u32,
        height: u32,
        got: usize,
        expected: usize,
    },
}

/// Checks that `width × height` is even, non-zero and not huge, and that `src` holds 2 bytes
/// per pixel (YUYV, planar 4:2:2); returns (width, height) as usize.
fn check_422(src: &[u8], width: u32, height: u32) -> Result<(usize, usize), ConvertError> {
    let (w, h) = (width as usize, height as usize);
    let pixels = w.checked_mul(h).filter(|&n| n <= MAX_PIXELS);
    if w == 0 || h == 0 || w & 1 != 0 || h & 1 != 0 || pixels.is_none() {
        return Err(ConvertError::Size { width, height });
    }
    let expected = w * h * 2;
    if src.len() != expected {
        return Err(ConvertError::Length {
            width,
            height,
            got: src.len(),
            expected,
        });
    }
    Ok((w, h))
}

/// Limited-range (16–235 luma, 16–240 chroma) to full-range tables, as JPEG expects.
const fn range_table(chroma: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let v = i as i32;
        let full = if chroma {
            128 + ((v - 128) * 255 * 2 + 224).div_euclid(224 * 2)
        } else {
            ((v - 16) * 255 * 2 + 219).div_euclid(219 * 2)
        };
        table[i] = if full < 0 {
            0
        } else if full > 255 {
            255
        } else {
            full as u8
        };
        i += 1;
    }
    table
}
pub(super) static LUMA_TO_FULL: [u8; 256] = range_table(false);
pub(super) static CHROMA_TO_FULL: [u8; 256] = range_table(true);

/// Converts a packed YUYV (4:2:2, `Y0 U Y1 V`, limited range as V4L2 cameras send it) frame to
/// full-range I420; chroma of each pair of rows is averaged. `src` must be exactly
/// `width × height × 2` bytes.
pub fn yuyv_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = check_422(src, width, height)?;
    dst.resize(w * h * 3 / 2, 0);
    let (y_plane, chroma) = dst.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
    for (y_row, src_row) in y_plane.chunks_exact_mut(w).zip(src.chunks_exact(2 * w)) {
        for (y, pair) in y_row.iter_mut().zip(src_row.chunks_exact(2)) {
            *y = LUMA_TO_FULL[usize::from(pair[0])];
        }
    }
    let rows = src.chunks_exact(4 * w);
    let chroma_rows = u_plane
        .chunks_exact_mut(w / 2)
        .zip(v_plane.chunks_exact_mut(w / 2));
    for (two_rows, (u_row, v_row)) in rows.zip(chroma_rows) {
        let (top, bottom) = two_rows.split_at(2 * w);
        let pixels = top.chunks_exact(4).zip(bottom.chunks_exact(4));
        for ((a, b), (u, v)) in pixels.zip(u_row.iter_mut().zip(v_row.iter_mut())) {
            let avg = |i: usize| (u16::from(a[i]) + u16::from(b[i])).div_ceil(2) as usize;
            *u = CHROMA_TO_FULL[avg(1)];
            *v = CHROMA_TO_FULL[avg(3)];
        }
    }
    Ok(())
}

/// Converts planar 4:2:2 (Y `w × h`, then U and V `w/2 × h`, as turbojpeg decodes most webcam
/// MJPEG) to I420 by averaging each pair of chroma rows. `src` must be exactly `w × h × 2` bytes.
pub fn i422_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = check_422(src, width, height)?;
    dst.resize(w * h * 3 / 2, 0);
    let (src_y, src_c) = src.split_at(w * h);
    let (dst_y, dst_c) = dst.split_at_mut(w * h);
    dst_y.copy_from_slice(src_y);
    for (src_plane, dst_plane) in src_c
        .chunks_exact(w * h / 2)
        .zip(dst_c.chunks_exact_mut(w * h / 4))
    {
        let rows = src_plane.chunks_exact(w);
        for (two_rows, out) in rows.zip(dst_plane.chunks_exact_mut(w / 2)) {
            let (top, bottom) = two_rows.split_at(w / 2);
            for ((o, a), b) in out.iter_mut().zip(top).zip(bottom) {
                *o = (u16::from(*a) + u16::from(*b)).div_ceil(2) as u8;
            }
        }
    }
    Ok(())
}

/// The MJPEG decoder of one camera: turbojpeg's decompressor and a buffer for 4:2:2 planes.
pub(super) struct MjpegDecoder {
    reader: JpegReader,
    scratch: Vec<u8>,
}

impl MjpegDecoder {
    pub(super) fn new() -> Result<Self, turbojpeg::Error> {
        let mut reader = JpegReader::new();
        // Fail here, at open, if turbojpeg cannot start at all.
        reader.run(|_| Ok::<_, turbojpeg::Error>(()))?;
        Ok(MjpegDecoder {
            reader,
            scratch: Vec::new(),
        })
    }

    /// Decodes one MJPEG frame into `frame`, as [`decode_mjpeg`] does. A frame that is not a
    /// picture ([`crate::jpeg::check`]) is refused before turbojpeg reads it, and after a bad
    /// frame the decompressor is renewed ([`JpegReader`]): one corrupt frame costs one frame.
    pub(super) fn decode(&mut self, jpeg: &[u8], frame: &mut RawFrame) -> Result<(), String> {
        crate::jpeg::check(jpeg).map_err(|e| format!("not a picture: {e}"))?;
        let scratch = &mut self.scratch;
        self.reader
            .run_for_reason(|d| decode_mjpeg(d, jpeg, frame, scratch))
    }
}

/// Decodes one MJPEG frame into `frame`: I420 when the JPEG is 4:2:0 or 4:2:2 YCbCr with an
/// even size (no colour conversion), RGB24 otherwise. `scratch` holds 4:2:2 planes.
pub(super) fn decode_mjpeg(
    decompressor: &mut Decompressor,
    jpeg: &[u8],
    frame: &mut RawFrame,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let header = decompressor
        .read_header(jpeg)
        .map_err(|e| format!("not a JPEG: {e}"))?;
    let (w, h) = (header.width, header.height);
    if w == 0 || h == 0 || w.saturating_mul(h) > MAX_PIXELS {
        return Err(format!("JPEG of {w}x{h} pixels"));
    }
    let (width, height) = (w as u32, h as u32);
    let even = w & 1 == 0 && h & 1 == 0;
    let decode_err = |e: turbojpeg::Error| format!("corrupt JPEG: {e}");
    match header.subsamp {
        Subsamp::Sub2x2 if even && header.colorspace == Colorspace::YCbCr => {
            frame.data.resize(w * h * 3 / 2, 0);
            let image = YuvImage {
                pixels: &mut frame.data[..],
                width: w,
                align: 1,
                height: h,
                subsamp: Subsamp::Sub2x2,
            };
            decompressor
                .decompress_to_yuv(jpeg, image)
                .map_err(decode_err)?;
            frame.format = PixelFormat::I420;
        }
        Subsamp::Sub2x1 if even && header.colorspace == Colorspace::YCbCr => {
            scratch.resize(w * h * 2, 0);
            let image = YuvImage {
                pixels: &mut scratch[..],
                width: w,
                align: 1,
                height: h,
                subsamp: Subsamp::Sub2x1,
            };
            decompressor
                .decompress_to_yuv(jpeg, image)
                .map_err(decode_err)?;
            i422_to_i420(scratch, width, height, &mut frame.data).map_err(|e| e.to_string())?;
            frame.format = PixelFormat::I420;
        }
        _ => {
            frame.data.resize(w * h * 3, 0);
            let image = Image {
                pixels: &mut frame.data[..],
                width: w,
                pitch: 3 * w,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            };
            decompressor.decompress(jpeg, image).map_err(decode_err)?;
            frame.format = PixelFormat::Rgb24;
        }
    }
    frame.width = width;
    frame.height = height;
    Ok(())
}
