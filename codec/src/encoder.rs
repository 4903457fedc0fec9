//! JPEG to H.264: turbojpeg decodes each JPEG straight to planar YUV 4:2:0 (no colour
//! conversion for the 4:2:0 JPEGs surv and most cameras make), OpenH264 codes it.
//!
//! Settings every caller gets:
//! * **Constrained Baseline** (`Profile::Baseline`; the SPS starts `67 42 c0`): what every RTSP
//!   player, browser and MP4 reader decodes.
//! * **Never a skipped frame** (`skip_frames(false)`; OpenH264 skips by default to hold its bit
//!   rate): every picture handed in comes back coded. Callers drop frames, and count them.
//! * **Bit-rate rate control** (`RateControlMode::Bitrate`), low complexity, one thread: it
//!   holds the rate by the quantiser alone, even without skipping (a test codes a noisy picture
//!   at its target; the buffer-based mode used before sent 21 times the rate on it).
//!
//! An IDR picture comes every [`H264Settings::idr_period_frames`] frames, on request
//! ([`JpegToH264::force_intra_frame`]), and first after the picture size changes: the encoder is
//! made again for the new size (the SPS says the size). Nowhere else: OpenH264's scene change
//! detection is off, so a GOP is as long as the caller says (rounded up to a whole number of
//! temporal-layer periods, below).
//!
//! **Temporal layers** ([`H264Settings::temporal_layers`]): with 3, pictures go T0 T2 T1 T2 T0…
//! (a period of 4); a T0 picture refers only to T0 pictures, a T1 only to T0, a T2 to T0 or T1.
//! So a sender may drop every T2 picture (half the frame rate) or every T1 and T2 (a quarter)
//! for one viewer and the others still get the whole stream: one encode, every rate. Each
//! [`Coded`] says its layer; the top layer's slices have `nal_ref_idc` 0 (no picture refers to
//! them). Constrained Baseline allows all of it: the stream is plain H.264 to every decoder.

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSlices};
use openh264::{OpenH264API, Timestamp};
use thiserror::Error;
use turbojpeg::{Decompressor, PixelFormat, Subsamp, YuvImage};

/// OpenH264's size limit (level 5.2): the longer side at most this...
pub const MAX_LONG_SIDE: usize = 3840;
/// ...and the shorter at most this.
pub const MAX_SHORT_SIDE: usize = 2160;

/// Bits per pixel per frame that look clean for a fixed camera's scene: about 0.9 Mbit/s at
/// 640x480@30 and 2.8 Mbit/s at 1280x720@30.
pub const DEFAULT_BITS_PER_PIXEL: f64 = 0.1;

/// The highest bit rate asked of the encoder.
pub const MAX_BITRATE_BPS: u32 = 50_000_000;

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
    #[error("the H.264 encoder returned no picture")]
    Skipped,
}

/// The bit rate the encoder aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bitrate {
    /// The same whatever the picture size.
    Fixed { bps: u32 },
    /// `bits_per_pixel` per pixel per frame at the settings' rate, at least `min_bps` (and at
    /// most [`MAX_BITRATE_BPS`]); worked out again when the size changes.
    PerPixel { bits_per_pixel: f64, min_bps: u32 },
}

impl Bitrate {
    /// The bit rate for `width` x `height` pictures at `fps`.
    pub fn bps(self, width: usize, height: usize, fps: f32) -> u32 {
        match self {
            Bitrate::Fixed { bps } => bps.clamp(1, MAX_BITRATE_BPS),
            Bitrate::PerPixel {
                bits_per_pixel,
                min_bps,
            } => {
                let pixels = width as f64 * height as f64;
                let bps = pixels * f64::from(fps.max(1.0)) * bits_per_pixel;
                // In u32 range by the clamp.
                bps.clamp(
                    f64::from(min_bps.min(MAX_BITRATE_BPS)),
                    f64::from(MAX_BITRATE_BPS),
                ) as u32
            }
        }
    }
}

/// How a stream is coded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H264Settings {
    /// The stream's frame rate (rate control works per frame).
    pub fps: f32,
    pub bitrate: Bitrate,
    /// An IDR picture every this many frames (the GOP), rounded up to a multiple of the
    /// temporal-layer period (OpenH264 needs it); 0: only when asked and when the size changes.
    pub idr_period_frames: u32,
    /// Temporal layers, 1 to [`MAX_TEMPORAL_LAYERS`]: 1 makes every picture a reference (T0).
    pub temporal_layers: u8,
}

/// The most temporal layers [`H264Settings::temporal_layers`] takes.
pub const MAX_TEMPORAL_LAYERS: u8 = 3;

/// One coded picture: an Annex B access unit, borrowed from the encoder until the next frame.
#[derive(Debug)]
pub struct Coded<'a> {
    /// NAL units after 4-byte start codes; an IDR picture's begins with its SPS and PPS.
    pub annexb: &'a [u8],
    /// An IDR picture: a decoder can start here.
    pub idr: bool,
    /// Its temporal layer, 0 (the base) to `temporal_layers - 1`: a picture refers only to
    /// pictures of lower layers (and T0 to T0), so dropping every picture above a layer leaves a
    /// stream that decodes. An IDR is always 0.
    pub layer: u8,
    /// Coded size: the JPEG's, rounded down to even numbers (4:2:0 chroma needs them).
    pub width: u32,
    pub height: u32,
}

/// Decodes JPEGs and codes them as one H.264 stream.
pub struct JpegToH264 {
    settings: H264Settings,
    decompressor: Decompressor,
    /// The encoder and the size it codes; made at the first frame and again when it changes.
    encoder: Option<(Encoder, (usize, usize))>,
    /// The next picture is to be an IDR (asked before there was an encoder to tell).
    idr_wanted: bool,
    yuv: Vec<u8>,
    rgb: Vec<u8>,
    full: Vec<u8>,
    annexb: Vec<u8>,
}

impl JpegToH264 {
    /// A stream coded with `settings`; the size comes from the JPEGs.
    pub fn new(settings: H264Settings) -> Result<Self, H264Error> {
        Ok(JpegToH264 {
            settings,
            decompressor: Decompressor::new()?,
            encoder: None,
            idr_wanted: false,
            yuv: Vec::new(),
            rgb: Vec::new(),
            full: Vec::new(),
            annexb: Vec::new(),
        })
    }

    pub fn settings(&self) -> &H264Settings {
        &self.settings
    }

    /// The next picture coded is an IDR picture (with SPS and PPS).
    pub fn force_intra_frame(&mut self) {
        self.idr_wanted = true;
    }

    /// Codes one JPEG; `at_ms` is its capture time, which OpenH264's rate control uses.
    pub fn encode(&mut self, jpeg: &[u8], at_ms: u64) -> Result<Coded<'_>, H264Error> {
        let header = self
            .decompressor
            .read_header(jpeg)
            .map_err(|e| renewed(&mut self.decompressor, e))?;
        let (w, h) = (header.width, header.height);
        let (cw, ch) = (w & !1, h & !1);
        if cw < 2 || ch < 2 || cw.max(ch) > MAX_LONG_SIDE || cw.min(ch) > MAX_SHORT_SIDE {
            return Err(H264Error::Size(w, h));
        }
        // A new encoder, rather than OpenH264's own re-initialisation: the bit rate follows
        // the size, and its first picture is an IDR with the new parameter sets.
        let fresh = !matches!(&self.encoder, Some((_, size)) if *size == (cw, ch));
        if fresh {
            self.encoder = None;
            self.idr_wanted = false;
            self.encoder = Some((new_encoder(&self.settings, cw, ch)?, (cw, ch)));
        }
        let layers = self.settings.temporal_layers.clamp(1, MAX_TEMPORAL_LAYERS);
        if fresh && layers > 1 {
            // OpenH264 takes temporal layers only once it is initialised, which the crate does
            // at the first picture, and setting them restarts its GOP with an IDR: so the first
            // picture is coded twice, the first result dropped. Once per encoder.
            if let Err(e) = self.picture(jpeg, &header, at_ms) {
                // Made again at the next picture, so that it gets its layers.
                self.encoder = None;
                return Err(e);
            }
            let Some((encoder, _)) = &mut self.encoder else {
                return Err(H264Error::Skipped);
            };
            if let Err(e) = set_temporal_layers(encoder, layers, self.settings.idr_period_frames) {
                // The stream goes on with one layer, from an IDR: this picture is lost.
                self.idr_wanted = true;
                return Err(e);
            }
        }
        let Some((encoder, _)) = &mut self.encoder else {
            return Err(H264Error::Skipped);
        };
        if std::mem::take(&mut self.idr_wanted) {
            encoder.force_intra_frame();
        }
        let (idr, layer) = self.picture(jpeg, &header, at_ms)?;
        if self.annexb.is_empty() {
            return Err(H264Error::Skipped);
        }
        Ok(Coded {
            annexb: &self.annexb,
            idr,
            layer,
            // Bounded by MAX_LONG_SIDE above.
            width: u32::try_from(cw).unwrap_or(u32::MAX),
            height: u32::try_from(ch).unwrap_or(u32::MAX),
        })
    }

    /// Codes one picture with the current encoder into `self.annexb`: whether it is an IDR,
    /// and its temporal layer.
    fn picture(
        &mut self,
        jpeg: &[u8],
        header: &turbojpeg::DecompressHeader,
        at_ms: u64,
    ) -> Result<(bool, u8), H264Error> {
        let (w, h) = (header.width, header.height);
        let (cw, ch) = (w & !1, h & !1);
        let Some((encoder, _)) = &mut self.encoder else {
            return Err(H264Error::Skipped);
        };
        let stamp = Timestamp::from_millis(at_ms);
        let bitstream = if header.subsamp == Subsamp::Sub2x2 {
            // Straight to planar 4:2:0, rows unpadded: no colour conversion at all.
            let len = turbojpeg::yuv_pixels_len(w, 1, h, Subsamp::Sub2x2)?;
            self.yuv.resize(len, 0);
            self.decompressor
                .decompress_to_yuv(
                    jpeg,
                    YuvImage {
                        pixels: &mut self.yuv[..],
                        width: w,
                        align: 1,
                        height: h,
                        subsamp: Subsamp::Sub2x2,
                    },
                )
                .map_err(|e| renewed(&mut self.decompressor, e))?;
            let cstride = w.div_ceil(2);
            let (y, rest) = self.yuv.split_at(w * h);
            let (u, v) = rest.split_at(cstride * h.div_ceil(2));
            // An odd last row or column is cropped off by the size and strides.
            let src = YUVSlices::new(
                (
                    &y[..w * ch],
                    &u[..cstride * (ch / 2)],
                    &v[..cstride * (ch / 2)],
                ),
                (cw, ch),
                (w, cstride, cstride),
            );
            encoder.encode_at(&src, stamp)?
        } else {
            // Other subsamplings (4:2:2 from some cameras, 4:4:4, grey): via RGB.
            self.full.resize(w * h * 3, 0);
            self.decompressor
                .decompress(
                    jpeg,
                    turbojpeg::Image {
                        pixels: &mut self.full[..],
                        width: w,
                        pitch: w * 3,
                        height: h,
                        format: PixelFormat::RGB,
                    },
                )
                .map_err(|e| renewed(&mut self.decompressor, e))?;
            self.rgb.resize(cw * ch * 3, 0);
            for row in 0..ch {
                self.rgb[row * cw * 3..(row + 1) * cw * 3]
                    .copy_from_slice(&self.full[row * w * 3..row * w * 3 + cw * 3]);
            }
            let buffer = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&self.rgb, (cw, ch)));
            encoder.encode_at(&buffer, stamp)?
        };
        let idr = match bitstream.frame_type() {
            FrameType::IDR => true,
            FrameType::Skip | FrameType::Invalid => return Err(H264Error::Skipped),
            _ => false,
        };
        // One spatial layer: every layer of the output is the same picture's.
        let layer = if idr || bitstream.num_layers() == 0 {
            0
        } else {
            let tid = bitstream.raw_info().sLayerInfo[0].uiTemporalId;
            tid.min(MAX_TEMPORAL_LAYERS - 1)
        };
        self.annexb.clear();
        bitstream.write_vec(&mut self.annexb);
        Ok((idr, layer))
    }
}

/// A JPEG turbojpeg failed on can leave its handle unusable (seen: the first JPEG a handle
/// read, cut inside its header; every later header read failed, `IntegerOverflow("width")`),
/// and one bad frame would stop the stream: a fresh handle for the next. The error is the
/// frame's.
fn renewed(decompressor: &mut Decompressor, e: turbojpeg::Error) -> H264Error {
    if let Ok(fresh) = Decompressor::new() {
        *decompressor = fresh;
    }
    H264Error::Jpeg(e)
}

/// Gives an initialised encoder `layers` temporal layers, the IDR period rounded up to a
/// multiple of their period (OpenH264 refuses others).
fn set_temporal_layers(
    encoder: &mut Encoder,
    layers: u8,
    idr_period: u32,
) -> Result<(), H264Error> {
    let mut params = openh264_sys2::SEncParamExt::default();
    // SAFETY: the encoder is initialised (it coded a picture); both calls read or write
    // `params`, a whole `SEncParamExt` that outlives them, as the option says.
    let (got, set) = unsafe {
        let api = encoder.raw_api();
        let got = api.get_option(
            openh264_sys2::ENCODER_OPTION_SVC_ENCODE_PARAM_EXT,
            (&raw mut params).cast(),
        );
        params.iTemporalLayerNum = i32::from(layers);
        params.uiIntraPeriod = idr_period.next_multiple_of(layer_period(layers));
        let set = api.set_option(
            openh264_sys2::ENCODER_OPTION_SVC_ENCODE_PARAM_EXT,
            (&raw mut params).cast(),
        );
        (got, set)
    };
    if got != 0 || set != 0 {
        return Err(H264Error::Encoder(openh264::Error::msg(
            "OpenH264 refused temporal layers",
        )));
    }
    Ok(())
}

/// Pictures per temporal-layer period: 1, 2 or 4.
pub fn layer_period(layers: u8) -> u32 {
    1 << (layers.clamp(1, MAX_TEMPORAL_LAYERS) - 1)
}

fn new_encoder(settings: &H264Settings, width: usize, height: usize) -> Result<Encoder, H264Error> {
    let fps = settings.fps.max(1.0);
    let config = EncoderConfig::new()
        .skip_frames(false)
        // Bit-rate mode holds the rate by the quantiser even with skipping off (OpenH264 warns
        // that it cannot: `quiet` below silences that; `the_bit_rate_holds_on_a_noisy_picture`
        // shows it does). The buffer-based mode let busy pictures run to 21 times the rate.
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(settings.bitrate.bps(width, height, fps)))
        .max_frame_rate(FrameRate::from_hz(fps))
        .usage_type(UsageType::CameraVideoRealTime)
        .complexity(Complexity::Low)
        .profile(Profile::Baseline)
        // IDR pictures only where asked, every period and at a new size: OpenH264's scene
        // change detection would add some where a picture changes a lot, unasked.
        .scene_change_detect(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(
            settings.idr_period_frames,
        ))
        // One thread: callers run one encoder per stream beside other work.
        .num_threads(1);
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;
    quiet(&mut encoder);
    Ok(encoder)
}

/// OpenH264's own log off before its first initialisation, as the crate sets it after: else
/// every new encoder prints, on stderr, that without frame skipping "bitrate can't be
/// controlled" in bit-rate mode, which is not what it does (it holds the rate: see
/// `RateControlMode::Bitrate` above).
fn quiet(encoder: &mut Encoder) {
    let mut level = openh264_sys2::WELS_LOG_QUIET as std::ffi::c_int;
    // SAFETY: the encoder exists (made by `with_api_config`), OpenH264 takes the trace level
    // before initialisation, and `level` outlives the call, which only reads it.
    unsafe {
        encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_LEVEL,
            (&raw mut level).cast(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annexb;

    /// A `width` x `height` gradient JPEG that moves with `seq`.
    fn jpeg(width: usize, height: usize, seq: usize, subsamp: Subsamp) -> Vec<u8> {
        let mut rgb = vec![0u8; width * height * 3];
        for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
            let (x, y) = (i % width, i / width);
            px.copy_from_slice(&[(x + seq * 4) as u8, (y * 2) as u8, (x + y + seq) as u8]);
        }
        let image = turbojpeg::Image {
            pixels: &rgb[..],
            width,
            pitch: width * 3,
            height,
            format: PixelFormat::RGB,
        };
        turbojpeg::compress(image, 85, subsamp).unwrap().to_vec()
    }

    fn settings(idr_period_frames: u32) -> H264Settings {
        H264Settings {
            fps: 30.0,
            bitrate: Bitrate::PerPixel {
                bits_per_pixel: DEFAULT_BITS_PER_PIXEL,
                min_bps: 200_000,
            },
            idr_period_frames,
            temporal_layers: 1,
        }
    }

    /// A busy, noisy picture (a sensor's noise over fine moving detail) holds the bit rate.
    /// OpenH264's buffer-based mode, used before, sent 21 times the rate on such pictures
    /// (58 Mbit/s for 2.76 at 1280x720@30: more than the JPEGs).
    #[test]
    fn the_bit_rate_holds_on_a_noisy_picture() {
        let (w, h) = (640usize, 480usize);
        let mut state = 12345u32;
        let frames: Vec<Vec<u8>> = (0..30)
            .map(|seq| {
                let mut rgb = vec![0u8; w * h * 3];
                for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                    let (x, y) = (i % w, i / w);
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let noise = ((state >> 24) % 13) as i32 - 6;
                    let detail = [(x + seq * 4) / 8 * 8, y / 4 * 4, (x + y) / 16 * 16];
                    for (c, d) in px.iter_mut().zip(detail) {
                        *c = ((d % 256) as i32 + noise).clamp(0, 255) as u8;
                    }
                }
                let image = turbojpeg::Image {
                    pixels: &rgb[..],
                    width: w,
                    pitch: w * 3,
                    height: h,
                    format: PixelFormat::RGB,
                };
                turbojpeg::compress(image, 85, Subsamp::Sub2x2)
                    .unwrap()
                    .to_vec()
            })
            .collect();
        let s = settings(60);
        let target_bytes_per_frame = f64::from(s.bitrate.bps(w, h, s.fps)) / 8.0 / 30.0;
        let mut enc = JpegToH264::new(s).unwrap();
        let mut bytes = Vec::new();
        for (i, jpeg) in frames.iter().cycle().take(120).enumerate() {
            bytes.push(enc.encode(jpeg, i as u64 * 33).unwrap().annexb.len());
        }
        // After the first second (the rate control settling, the first IDR).
        let late = &bytes[30..];
        let mean = late.iter().sum::<usize>() as f64 / late.len() as f64;
        assert!(
            mean <= 1.5 * target_bytes_per_frame,
            "{mean:.0} B a frame for a target of {target_bytes_per_frame:.0}"
        );
    }

    #[test]
    fn constrained_baseline_with_parameter_sets_on_each_idr() {
        let mut enc = JpegToH264::new(settings(0)).unwrap();
        let c = enc.encode(&jpeg(320, 240, 0, Subsamp::Sub2x2), 0).unwrap();
        assert!(c.idr, "the first picture is an IDR");
        let (sps, pps) = annexb::parameter_sets(c.annexb).expect("SPS and PPS in band");
        assert_eq!(&sps[..3], [0x67, 0x42, 0xC0], "Constrained Baseline");
        assert_eq!(annexb::nal_type(pps), Some(annexb::nal_type::PPS));
        assert!(annexb::has_idr_slice(c.annexb));
        let c = enc.encode(&jpeg(320, 240, 1, Subsamp::Sub2x2), 33).unwrap();
        assert!(!c.idr);
        assert_eq!(annexb::parameter_sets(c.annexb), None);
    }

    #[test]
    fn idr_every_period_on_request_and_after_a_resize() {
        let mut enc = JpegToH264::new(settings(5)).unwrap();
        let mut idrs = Vec::new();
        for seq in 0..12 {
            if seq == 7 {
                enc.force_intra_frame();
            }
            let c = enc
                .encode(&jpeg(160, 90, seq, Subsamp::Sub2x2), seq as u64 * 33)
                .unwrap();
            if c.idr {
                idrs.push(seq);
            }
        }
        // The forced IDR restarts the period.
        assert_eq!(idrs, [0, 5, 7]);
        let c = enc.encode(&jpeg(64, 48, 12, Subsamp::Sub2x2), 400).unwrap();
        assert!(c.idr, "a new size starts with an IDR");
        assert_eq!((c.width, c.height), (64, 48));
        let (sps, _) = annexb::parameter_sets(c.annexb).unwrap();
        assert_eq!(&sps[..3], [0x67, 0x42, 0xC0]);
    }

    /// Three temporal layers: T0 T2 T1 T2 from each IDR, the top layer unreferenced
    /// (`nal_ref_idc` 0), the IDR period rounded up to the layers' period, and a stream thinned
    /// to any layer decodes, every picture, with no error.
    #[test]
    fn temporal_layers_can_be_dropped_and_the_rest_decodes() {
        let mut s = settings(6);
        s.temporal_layers = 3;
        let mut enc = JpegToH264::new(s).unwrap();
        let mut coded = Vec::new();
        for seq in 0..20 {
            if seq == 13 {
                enc.force_intra_frame();
            }
            let c = enc
                .encode(&jpeg(320, 240, seq, Subsamp::Sub2x2), seq as u64 * 33)
                .unwrap();
            coded.push((c.idr, c.layer, c.annexb.to_vec()));
        }
        let layers: Vec<u8> = coded.iter().map(|c| c.1).collect();
        let idrs: Vec<usize> = (0..20).filter(|&i| coded[i].0).collect();
        // A period of 6 becomes 8; the forced IDR at 13 restarts both the GOP and the layers.
        assert_eq!(idrs, [0, 8, 13]);
        assert_eq!(
            layers,
            [0, 2, 1, 2, 0, 2, 1, 2, 0, 2, 1, 2, 0, 0, 2, 1, 2, 0, 2, 1]
        );
        for (idr, layer, annexb) in &coded {
            assert_eq!(annexb::parameter_sets(annexb).is_some(), *idr);
            let nri: Vec<u8> = annexb::nal_units(annexb)
                .filter(|n| matches!(annexb::nal_type(n), Some(1 | 5)))
                .map(|n| n[0] >> 5 & 3)
                .collect();
            assert!(!nri.is_empty());
            assert_eq!(
                nri.iter().all(|&r| r == 0),
                *layer == 2,
                "layer {layer}: {nri:?}"
            );
        }
        for top in 0..3u8 {
            let mut decoder = openh264::decoder::Decoder::new().expect("an OpenH264 decoder");
            let mut pictures = 0;
            for (i, (_, layer, annexb)) in coded.iter().enumerate() {
                if *layer > top {
                    continue;
                }
                match decoder.decode(annexb) {
                    Ok(Some(_)) => pictures += 1,
                    Ok(None) => panic!("layers ≤ {top}: picture {i} gave nothing"),
                    Err(e) => panic!("layers ≤ {top}: picture {i}: {e}"),
                }
            }
            let expected = layers.iter().filter(|&&l| l <= top).count();
            assert_eq!(pictures, expected, "layers ≤ {top}");
        }
    }

    /// A JPEG cut short fails its frame only: the next ones are coded (turbojpeg's handle
    /// was left unusable before, and every later frame failed), and a fresh encoder whose
    /// first picture failed is made again at the next, layers and all.
    #[test]
    fn a_bad_jpeg_fails_its_frame_only_and_the_layers_survive_it() {
        let mut s = settings(8);
        s.temporal_layers = 3;
        let mut enc = JpegToH264::new(s).unwrap();
        let good = jpeg(160, 90, 0, Subsamp::Sub2x2);
        // The header reads; the scan is cut off.
        let cut = &good[..good.len() * 3 / 4];
        assert!(enc.encode(cut, 0).is_err(), "a JPEG cut short is an error");
        let layers: Vec<u8> = (0..4)
            .map(|seq| {
                enc.encode(&jpeg(160, 90, seq, Subsamp::Sub2x2), 33 * seq as u64 + 33)
                    .unwrap()
                    .layer
            })
            .collect();
        assert_eq!(layers, [0, 2, 1, 2]);
        // A new coder whose first JPEG is cut inside its header: that one left turbojpeg's
        // handle unusable for every later frame.
        let mut enc = JpegToH264::new(s).unwrap();
        assert!(enc.encode(&good[..good.len() / 3], 0).is_err());
        for seq in 1..3 {
            let next = enc.encode(&jpeg(160, 90, seq, Subsamp::Sub2x2), 33 * seq as u64);
            assert!(next.is_ok(), "{:?}", next.err());
        }
    }

    #[test]
    fn one_layer_makes_every_picture_a_reference() {
        let mut enc = JpegToH264::new(settings(0)).unwrap();
        for seq in 0..6 {
            let c = enc
                .encode(&jpeg(160, 90, seq, Subsamp::Sub2x2), seq as u64 * 33)
                .unwrap();
            assert_eq!(c.layer, 0);
            let slice = annexb::nal_units(c.annexb)
                .find(|n| matches!(annexb::nal_type(n), Some(1 | 5)))
                .unwrap();
            assert_ne!(slice[0] >> 5 & 3, 0, "picture {seq} is a reference");
        }
    }

    #[test]
    fn odd_sizes_and_other_subsamplings_are_coded() {
        for (w, h, subsamp) in [
            (161, 91, Subsamp::Sub2x2),
            (160, 90, Subsamp::Sub2x1),
            (64, 48, Subsamp::None),
        ] {
            let mut enc = JpegToH264::new(settings(0)).unwrap();
            for seq in 0..4 {
                let c = enc
                    .encode(&jpeg(w, h, seq, subsamp), seq as u64 * 33)
                    .unwrap();
                assert_eq!((c.width, c.height), ((w & !1) as u32, (h & !1) as u32));
                assert_eq!(c.idr, seq == 0);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut enc = JpegToH264::new(settings(0)).unwrap();
        assert!(matches!(
            enc.encode(b"\xFF\xD8 not a jpeg", 0),
            Err(H264Error::Jpeg(_))
        ));
        assert!(matches!(
            enc.encode(&jpeg(1, 1, 0, Subsamp::Sub2x2), 0),
            Err(H264Error::Size(1, 1))
        ));
    }

    #[test]
    fn bitrate_per_pixel_has_a_floor() {
        let b = Bitrate::PerPixel {
            bits_per_pixel: 0.1,
            min_bps: 200_000,
        };
        assert_eq!(b.bps(1280, 720, 30.0), 2_764_800);
        assert_eq!(b.bps(160, 90, 10.0), 200_000);
        assert_eq!(Bitrate::Fixed { bps: 5 }.bps(1, 1, 1.0), 5);
    }
}
