//! JPEG to H.264 for MP4 recording, on the coder the server uses too (`surv-codec`: turbojpeg
//! decodes each received JPEG straight to YUV 4:2:0, OpenH264 codes it, Constrained Baseline).
//!
//! The encoder never skips a frame: the recorder decides which frames to drop, and counts
//! them. Every picture it is handed comes back coded, and the caller asks for an IDR picture
//! where a fragment starts, so that each fragment of the file can be decoded on its own.
//!
//! Each picture is handed out as an [`AvcAccessUnit`]: length-prefixed NAL units with the SPS
//! and PPS apart, the form MP4 stores (`surv_codec::fmp4` takes it from here; this codec knows
//! nothing of the container).

use surv_codec::encoder::DEFAULT_BITS_PER_PIXEL;
use surv_codec::{Bitrate, H264Settings};

pub use surv_codec::annexb::to_avc as annexb_to_avc;
pub use surv_codec::{AvcAccessUnit, H264Error};

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
    coder: surv_codec::JpegToH264,
}

impl JpegToH264 {
    /// An encoder for a stream of about `fps` frames per second of `width` x `height`.
    pub fn new(width: u16, height: u16, fps: f32) -> Result<Self, H264Error> {
        let pixels = f64::from(width) * f64::from(height);
        let bps = (pixels * f64::from(fps.max(1.0)) * DEFAULT_BITS_PER_PIXEL).clamp(100e3, 50e6);
        let settings = H264Settings {
            fps: fps.max(1.0),
            // In range by the clamp above.
            bitrate: Bitrate::Fixed { bps: bps as u32 },
            // IDR pictures only where the recorder asks (each fragment's first).
            idr_period_frames: 0,
            // A recording keeps every picture: no layers to drop.
            temporal_layers: 1,
        };
        Ok(JpegToH264 {
            coder: surv_codec::JpegToH264::new(settings)?,
        })
    }

    /// Codes one JPEG; `idr` asks for a picture that starts a new group (with SPS and PPS).
    /// `at_ms` is its capture time, which OpenH264's rate control uses.
    pub fn encode(&mut self, jpeg: &[u8], idr: bool, at_ms: u64) -> Result<Coded, H264Error> {
        if idr {
            self.coder.force_intra_frame();
        }
        let coded = self.coder.encode(jpeg, at_ms)?;
        Ok(Coded {
            unit: annexb_to_avc(coded.annexb),
            // At most 3840 (the coder's limit).
            width: u16::try_from(coded.width).unwrap_or(u16::MAX),
            height: u16::try_from(coded.height).unwrap_or(u16::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

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
