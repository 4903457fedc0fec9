//! H.264 access units → I420 pictures: the openh264 decoder, waiting for a key frame after a
//! start or an error, and the copy of each picture's planes (rows padded to the decoder's
//! strides) into a tightly packed [`RawFrame`].

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

use crate::frame::{PixelFormat, RawFrame, MAX_DECODED_PIXELS};

/// What one access unit gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A picture, copied into the frame.
    Picture,
    /// A picture, not copied (no frame was given: a newer one is waiting).
    NotCopied,
    /// Nothing to show yet (the decoder wants more).
    Nothing,
    /// Skipped: the decoder waits for a key frame (at the start, or after an error).
    WaitingForKey,
}

/// The decoder of one RTSP session's H.264 stream.
pub struct H264Decoder {
    decoder: Decoder,
    /// Until a key frame arrives, P frames would decode to garbage (or fail): skip them.
    need_key: bool,
}

impl H264Decoder {
    pub fn new() -> Result<H264Decoder, String> {
        Ok(H264Decoder {
            decoder: Decoder::new().map_err(|e| format!("cannot start the H.264 decoder: {e}"))?,
            need_key: true,
        })
    }

    /// Starts again at the next key frame (a catch-up from a GOP).
    pub fn restart(&mut self) {
        self.need_key = true;
    }

    /// Decodes one Annex B access unit (SPS/PPS before key frames, as retina's
    /// `FrameFormat::SIMPLE` gives them). With `out`, the picture (if any) is copied into it.
    /// A decode error is returned once, and the decoder then waits for the next key frame.
    pub fn decode(
        &mut self,
        access_unit: &[u8],
        is_key: bool,
        out: Option<&mut RawFrame>,
    ) -> Result<Decoded, String> {
        if self.need_key && !is_key {
            return Ok(Decoded::WaitingForKey);
        }
        let picture = match self.decoder.decode(access_unit) {
            Ok(p) => p,
            Err(e) => {
                self.need_key = true;
                return Err(format!("H.264 decode error: {e}"));
            }
        };
        self.need_key = false;
        match (picture, out) {
            (Some(yuv), Some(out)) => {
                if let Err(e) = copy_i420(&yuv, out) {
                    self.need_key = true;
                    return Err(e);
                }
                Ok(Decoded::Picture)
            }
            (Some(_), None) => Ok(Decoded::NotCopied),
            (None, _) => Ok(Decoded::Nothing),
        }
    }
}

/// Copies a decoded picture (planes with strides) into `out` as tightly packed I420.
pub fn copy_i420(yuv: &impl YUVSource, out: &mut RawFrame) -> Result<(), String> {
    let (w, h) = yuv.dimensions();
    let (y_stride, u_stride, v_stride) = yuv.strides();
    let (width, height) = (
        u32::try_from(w).map_err(|_| "picture too wide")?,
        u32::try_from(h).map_err(|_| "picture too tall")?,
    );
    if w == 0 || h == 0 || (w as u64) * (h as u64) > MAX_DECODED_PIXELS {
        return Err(format!("decoded picture of {w}x{h} is out of range"));
    }
    let len = PixelFormat::I420
        .frame_bytes(width, height)
        .ok_or("decoded picture size overflows")?;
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    out.data.resize(len, 0);
    let (y_out, chroma) = out.data.split_at_mut(w * h);
    let (u_out, v_out) = chroma.split_at_mut(cw * ch);
    copy_plane(yuv.y(), y_stride, w, h, y_out).ok_or("short Y plane from the decoder")?;
    copy_plane(yuv.u(), u_stride, cw, ch, u_out).ok_or("short U plane from the decoder")?;
    copy_plane(yuv.v(), v_stride, cw, ch, v_out).ok_or("short V plane from the decoder")?;
    out.width = width;
    out.height = height;
    out.format = PixelFormat::I420;
    Ok(())
}

/// `rows` rows of `row_bytes` from a plane whose rows start `stride` apart; `None` if the plane
/// is shorter than that (never read past it).
fn copy_plane(
    src: &[u8],
    stride: usize,
    row_bytes: usize,
    rows: usize,
    dst: &mut [u8],
) -> Option<()> {
    if stride < row_bytes {
        return None;
    }
    for (r, dst_row) in dst.chunks_exact_mut(row_bytes).take(rows).enumerate() {
        let start = r.checked_mul(stride)?;
        dst_row.copy_from_slice(src.get(start..start.checked_add(row_bytes)?)?);
    }
    Some(())
}
