//! JPEG to H.264 for MP4 recording: turbojpeg decodes each received JPEG straight to YUV 4:2:0,
//! OpenH264 (Cisco's encoder, built from source by the `openh264` crate) codes it.
//!
//! The encoder is told never to skip a frame (OpenH264 does by default, to meet its bit rate):
//! the recorder decides which frames to drop, and counts them. Every picture it is handed comes
//! back coded, and the caller asks for an IDR picture where a fragment starts, so that each
//! fragment of the file can be decoded on its own.
//!
//! The encoder writes Annex B (start codes); each picture is handed out as an
//! [`AvcAccessUnit`]: length-prefixed NAL units with the SPS and PPS apart, the form MP4 stores
//! ([`mp4`](crate::mp4) takes it from here; this codec knows nothing of the container).

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode,
    UsageType,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSlices, YUVSource};
use openh264::{OpenH264API, Timestamp};
use thiserror::Error;
use turbojpeg::{Decompressor, PixelFormat, Subsamp, YuvImage};

/// Bits per pixel per frame the rate control aims at: about 0.9 Mbit/s at 640x480@30 and
/// 2.8 Mbit/s at 1280x720@30, where a scene from a fixed camera looks clean.
const BITS_PER_PIXEL: f64 = 0.1;

/// OpenH264's size limit (level 5.2).
const MAX_DIM: usize = 3840;

/// Why a frame could not be coded.
#[derive(Debug, Error)]
pub enum H264Error {
    #[error("cannot decode the JPEG: {0}")]
    Jpeg(#[from] turbojpeg::Error),
    #[error(
        "frame size {0}x{1} cannot be coded (H.264 needs at least 2x2, OpenH264 at most 3840x2160)"
    )]
    Size(usize, usize),
    #[error("the H.264 encoder failed: {0}")]
    Encoder(#[from] openh264::Error),
}

/// One coded picture.
#[derive(Debug)]
pub struct Coded {
    /// The picture in MP4 form; `sps`/`pps` are set on IDR pictures.
    pub unit: AvcAccessUnit,
    /// Coded size, which is the JPEG's rounded down to even numbers.
    pub width: u16,
    pub height: u16,
}

/// Decodes JPEGs and codes them as H.264, one instance per recorded segment.
pub struct JpegToH264 {
    decompressor: Decompressor,
    encoder: Encoder,
    yuv: Vec<u8>,
    rgb: Vec<u8>,
    annexb: Vec<u8>,
}

impl JpegToH264 {
    /// An encoder for a stream of about `fps` frames per second of `width` x `height`.
    pub fn new(width: u16, height: u16, fps: f32) -> Result<Self, H264Error> {
        let pixels = f64::from(width) * f64::from(height);
        let bps = (pixels * f64::from(fps.max(1.0)) * BITS_PER_PIXEL).clamp(100e3, 50e6);
        let config = EncoderConfig::new()
            .skip_frames(false)
            // Buffer-based: adapts the quantiser to the bit rate without skipping frames (the other
            // modes need skipping to hold their rate, and warn on stderr without it).
            .rate_control_mode(RateControlMode::Bufferbased)
            // In range by the clamp above.
            .bitrate(BitRate::from_bps(bps as u32))
            .max_frame_rate(FrameRate::from_hz(fps.max(1.0)))
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::Low)
            // IDR pictures only where the recorder asks (each fragment's first).
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            // One thread: the recorder must not take the whole machine from the display.
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;
        Ok(JpegToH264 {
            decompressor: Decompressor::new()?,
            encoder,
            yuv: Vec::new(),
            rgb: Vec::new(),
            annexb: Vec::new(),
        })
    }

    /// Codes one JPEG; `idr` asks for a picture that starts a new group (with SPS and PPS).
    /// `at_ms` is its capture time, which OpenH264's rate control uses.
    pub fn encode(&mut self, jpeg: &[u8], idr: bool, at_ms: u64) -> Result<Coded, H264Error> {
        let header = self.decompressor.read_header(jpeg)?;
        let (w, h) = (header.width, header.height);
        // 4:2:0 chroma needs even sizes; an odd row or column is cropped off.
        let (cw, ch) = (w & !1, h & !1);
        if cw < 2 || ch < 2 || cw.max(ch) > MAX_DIM || cw.min(ch) > 2160 {
            return Err(H264Error::Size(w, h));
        }
        if idr {
            self.encoder.force_intra_frame();
        }
        let stamp = Timestamp::from_millis(at_ms);
        let bitstream = if header.subsamp == Subsamp::Sub2x2 {
            // Straight to planar 4:2:0, rows unpadded: no colour conversion at all.
            let len = turbojpeg::yuv_pixels_len(w, 1, h, Subsamp::Sub2x2)?;
            self.yuv.resize(len, 0);
            self.decompressor.decompress_to_yuv(
                jpeg,
                YuvImage {
                    pixels: &mut self.yuv[..],
                    width: w,
                    align: 1,
                    height: h,
                    subsamp: Subsamp::Sub2x2,
                },
            )?;
            let cstride = w.div_ceil(2);
            let (y, rest) = self.yuv.split_at(w * h);
            let (u, v) = rest.split_at(cstride * h.div_ceil(2));
            let src = YUVSlices::new(
                (
                    &y[..w * ch],
                    &u[..cstride * (ch / 2)],
                    &v[..cstride * (ch / 2)],
                ),
                (cw, ch),
                (w, cstride, cstride),
            );
            self.encoder.encode_at(&src, stamp)?
        } else {
            // Other subsamplings (4:2:2 from some cameras, 4:4:4, grey): via RGB.
            self.rgb.resize(cw * ch * 3, 0);
            let mut full = vec![0u8; w * h * 3];
            self.decompressor.decompress(
                jpeg,
                turbojpeg::Image {
                    pixels: &mut full[..],
                    width: w,
                    pitch: w * 3,
                    height: h,
                    format: PixelFormat::RGB,
                },
            )?;
            for row in 0..ch {
                self.rgb[row * cw * 3..(row + 1) * cw * 3]
                    .copy_from_slice(&full[row * w * 3..row * w * 3 + cw * 3]);
            }
            let buffer = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&self.rgb, (cw, ch)));
            debug_assert_eq!(buffer.dimensions(), (cw, ch));
            self.encoder.encode_at(&buffer, stamp)?
        };
        self.annexb.clear();
        bitstream.write_vec(&mut self.annexb);
        Ok(Coded {
            unit: annexb_to_avc(&self.annexb),
            // Bounded by MAX_DIM above.
            width: u16::try_from(cw).unwrap_or(u16::MAX),
            height: u16::try_from(ch).unwrap_or(u16::MAX),
        })
    }
}

/// Converts an Annex B byte stream (NAL units after `00 00 01` or `00 00 00 01` start codes) to
/// the length-prefixed form MP4 stores, and returns the SPS and PPS found, which MP4 keeps in
/// `avcC` rather than in the samples.
pub fn annexb_to_avc(annexb: &[u8]) -> AvcAccessUnit {
    let mut unit = AvcAccessUnit::default();
    for nal in split_annexb(annexb) {
        let Some(&header) = nal.first() else { continue };
        match header & 0x1F {
            7 => unit.sps = Some(nal.to_vec()),
            8 => unit.pps = Some(nal.to_vec()),
            // Access unit delimiters and filler: nothing a player needs.
            9 | 12 => {}
            kind => {
                if kind == 5 {
                    unit.idr = true;
                }
                let len = u32::try_from(nal.len()).unwrap_or(u32::MAX);
                unit.data.extend_from_slice(&len.to_be_bytes());
                unit.data.extend_from_slice(nal);
            }
        }
    }
    unit
}

/// One encoded picture in MP4 form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AvcAccessUnit {
    /// Length-prefixed NAL units, without SPS and PPS.
    pub data: Vec<u8>,
    pub sps: Option<Vec<u8>>,
    pub pps: Option<Vec<u8>>,
    /// Holds an IDR slice.
    pub idr: bool,
}

/// The NAL units of an Annex B stream, without their start codes.
fn split_annexb(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Start-code positions (index of the byte after `00 00 01`).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= buf.len() {
        if buf[i] == 0 && buf[i + 1] == 0 && buf[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next unit's start code, and a leading zero of a 4-byte one, are not ours.
            let mut e = s - 3;
            while e > 0 && buf[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(buf.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &buf[s..e.max(s)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use surv_tests::fixtures::{test_jpeg, Picture};

    fn jpeg(width: usize, height: usize, seq: u8, subsamp: Subsamp) -> Vec<u8> {
        test_jpeg(
            width,
            height,
            Picture::Gradient(u64::from(seq)),
            85,
            subsamp,
        )
    }

    #[test]
    fn annexb_splits_and_strips_parameter_sets() {
        let stream = [
            &[0, 0, 0, 1, 0x67, 1, 2, 3][..], // SPS
            &[0, 0, 0, 1, 0x68, 4][..],       // PPS
            &[0, 0, 1, 0x65, 9, 9, 0][..],    // IDR slice ending in a zero byte... of the next code
            &[0, 0, 0, 1, 0x41, 7][..],       // non-IDR slice
        ]
        .concat();
        let unit = annexb_to_avc(&stream);
        assert_eq!(unit.sps.as_deref(), Some(&[0x67, 1, 2, 3][..]));
        assert_eq!(unit.pps.as_deref(), Some(&[0x68, 4][..]));
        assert!(unit.idr);
        // Trailing zeros before a start code belong to the start code (Annex B's zero_byte).
        assert_eq!(unit.data, [0, 0, 0, 3, 0x65, 9, 9, 0, 0, 0, 2, 0x41, 7]);
        assert_eq!(annexb_to_avc(&[]), AvcAccessUnit::default());
        assert_eq!(annexb_to_avc(&[0, 0, 1]).data, Vec::<u8>::new());
    }

    #[test]
    fn codes_every_frame_and_idr_on_request() {
        for (w, h, subsamp) in [
            (320, 240, Subsamp::Sub2x2),
            (161, 91, Subsamp::Sub2x2),
            (160, 90, Subsamp::Sub2x1),
            (64, 48, Subsamp::None),
        ] {
            let mut enc = JpegToH264::new(w as u16, h as u16, 30.0).unwrap();
            for seq in 0..12u8 {
                let idr = seq % 5 == 0;
                let c = enc
                    .encode(&jpeg(w, h, seq, subsamp), idr, u64::from(seq) * 33)
                    .unwrap();
                assert_eq!((c.width, c.height), ((w & !1) as u16, (h & !1) as u16));
                assert_eq!(c.unit.idr, idr, "{w}x{h} frame {seq}");
                assert_eq!(c.unit.sps.is_some(), idr, "{w}x{h} frame {seq}");
                assert!(!c.unit.data.is_empty(), "{w}x{h} frame {seq} skipped");
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut enc = JpegToH264::new(64, 48, 30.0).unwrap();
        assert!(matches!(
            enc.encode(b"\xFF\xD8 not a jpeg", true, 0),
            Err(H264Error::Jpeg(_))
        ));
        assert!(matches!(
            enc.encode(&jpeg(1, 1, 0, Subsamp::Sub2x2), true, 0),
            Err(H264Error::Size(1, 1))
        ));
    }
}
