//! Frames: what a source hands the capture path, and what the capture path publishes.
//!
//! ```text
//! source ──RawFrame (pixels) ──▶ capture: encoded once  ──┐
//!        ──JpegFrame (a JPEG)──▶ capture: passed through ─┴▶ EncodedFrame ──▶ every watcher
//! ```
//!
//! [`EncodedFrame`] is published once per frame and shared by every watcher (`Arc`). Its
//! [`Payload`] says what it carries: a JPEG tagged for the UDP viewers (all the capture path
//! produces so far) or an H.264 access unit. Every watcher kind today sends JPEG: it takes
//! [`EncodedFrame::jpeg`] and skips a frame without one.
//!
//! Types only, no I/O and no coding; their `Debug` prints lengths, not bytes.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// The largest picture surv decodes (8K UHD): a JPEG header claiming more is rejected before
/// anything is allocated for it.
pub const MAX_DECODED_PIXELS: u64 = 7680 * 4320;

/// How the bytes of a [`RawFrame`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Planar YCbCr 4:2:0, full range (as JPEG stores it): the Y plane (`width × height`), then
    /// U (Cb), then V (Cr), each `ceil(width / 2) × ceil(height / 2)`. Rows are not padded.
    I420,
    /// Packed R, G, B bytes, rows of `3 × width` bytes, not padded.
    Rgb24,
}

impl PixelFormat {
    /// Bytes in one `width × height` frame of this format; `None` if that overflows `usize`.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (usize::try_from(width).ok()?, usize::try_from(height).ok()?);
        match self {
            PixelFormat::I420 => {
                let chroma = w.div_ceil(2).checked_mul(h.div_ceil(2))?;
                w.checked_mul(h)?.checked_add(chroma.checked_mul(2)?)
            }
            PixelFormat::Rgb24 => w.checked_mul(h)?.checked_mul(3),
        }
    }
}

/// One uncompressed frame, as a source produced it.
pub struct RawFrame {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Exactly `format.frame_bytes(width, height)` bytes once a source has filled the frame.
    pub data: Vec<u8>,
    /// Capture time, microseconds since the Unix epoch, server clock.
    pub capture_unix_us: u64,
}

impl RawFrame {
    /// An empty frame for a source to fill (e.g. in
    /// [`FrameReader::next_frame`](crate::sources::FrameReader::next_frame)); its buffer grows
    /// on first use.
    pub fn new() -> Self {
        RawFrame {
            width: 0,
            height: 0,
            format: PixelFormat::I420,
            data: Vec::new(),
            capture_unix_us: 0,
        }
    }
}

impl Default for RawFrame {
    fn default() -> Self {
        RawFrame::new()
    }
}

impl fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("data_bytes", &self.data.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .finish()
    }
}

/// An already-encoded JPEG from a source that delivers JPEG (a network camera, a folder of
/// images): passed through without re-encoding when it fits the datagram cap.
#[derive(Clone)]
pub struct JpegFrame {
    /// One whole JPEG, SOI to EOI.
    pub jpeg: Bytes,
    /// Capture time, microseconds since the Unix epoch, server clock (arrival time when the
    /// source does not say).
    pub capture_unix_us: u64,
    /// What a camera that detects on the device (an OAK running a detection network) says is
    /// in this picture; `None` from a camera that does not say.
    pub objects: Option<Arc<[Detection]>>,
}

impl JpegFrame {
    /// A frame from a camera that says nothing of what is in it.
    pub fn new(jpeg: Bytes, capture_unix_us: u64) -> JpegFrame {
        JpegFrame {
            jpeg,
            capture_unix_us,
            objects: None,
        }
    }
}

impl fmt::Debug for JpegFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JpegFrame")
            .field("jpeg_bytes", &self.jpeg.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .field("objects", &self.objects.as_ref().map(|o| o.len()))
            .finish()
    }
}

/// An object in a picture: its class (an index into the detector's COCO-80 labels), score
/// (0–1) and box as fractions of the picture (x, y of the top-left corner, width, height), as
/// motion boxes are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class: usize,
    pub score: f32,
    pub region: [f32; 4],
}

/// One frame as the capture path publishes it: once per frame the source delivered (and per
/// "no signal" frame), whatever the number of watchers.
pub struct EncodedFrame {
    /// Increases from frame to frame; a gap is a frame the encoder could not fit under the cap.
    pub seq: u64,
    pub capture_unix_us: u64,
    /// As coded, after any downscale.
    pub width: u32,
    /// As coded, after any downscale.
    pub height: u32,
    /// The JPEG quality the capture path encoded it at; 0 when it was passed through as the
    /// source sent it.
    pub quality: u8,
    /// turbojpeg compress calls for this frame (1 in steady state); 0 when passed through.
    pub attempts: u32,
    pub payload: Payload,
}

impl EncodedFrame {
    /// The frame's JPEG (with surv's tag, one datagram), or `None` when it carries another
    /// codec: a watcher that sends JPEG skips such a frame.
    pub fn jpeg(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Jpeg(datagram) => Some(datagram),
            Payload::H264(_) => None,
        }
    }

    /// The payload's size, for byte counters and buffer sizing.
    pub fn payload_bytes(&self) -> usize {
        match &self.payload {
            Payload::Jpeg(datagram) => datagram.len(),
            Payload::H264(unit) => unit.data.len(),
        }
    }
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
            .field("payload", &self.payload)
            .finish()
    }
}

/// What an [`EncodedFrame`] carries.
#[derive(Clone)]
pub enum Payload {
    /// A whole JPEG with surv's `FrameTag` after SOI, at most the datagram cap: sent to UDP
    /// viewers as one datagram as it is, and as the picture of every stream and snapshot.
    Jpeg(Bytes),
    /// One H.264 access unit (a picture), from a source whose H.264 is passed through.
    H264(H264AccessUnit),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Jpeg(datagram) => f
                .debug_struct("Jpeg")
                .field("bytes", &datagram.len())
                .finish(),
            Payload::H264(unit) => unit.fmt(f),
        }
    }
}

/// One H.264 access unit.
#[derive(Clone)]
pub struct H264AccessUnit {
    /// Its NAL units in Annex B form, each after a start code (`00 00 00 01`). A keyframe's may
    /// repeat the parameter sets in band, as retina's `FrameFormat::SIMPLE` gives them.
    pub data: Bytes,
    /// For a keyframe (an IDR picture, where a decoder can start), the parameter sets that
    /// decoder needs; `None` for every other picture.
    pub parameter_sets: Option<ParameterSets>,
    /// Its temporal layer: 0 for a picture others may refer to, up to [`TOP_LAYER`]. A picture
    /// refers only to pictures of lower layers (a layer-0 picture to layer-0 ones), so a sender
    /// may leave out every picture above a layer and the rest still decodes. surv's encoder says
    /// each picture's (OpenH264's temporal id); a passed-through picture is 0, or
    /// [`TOP_LAYER`] when no picture refers to it (all its slices have `nal_ref_idc` 0).
    pub layer: u8,
}

/// The highest [`H264AccessUnit::layer`]: pictures no other picture refers to.
pub const TOP_LAYER: u8 = 2;

impl H264AccessUnit {
    /// Whether a decoder (a viewer joining, a recording starting) can start at this picture.
    pub fn is_keyframe(&self) -> bool {
        self.parameter_sets.is_some()
    }
}

impl fmt::Debug for H264AccessUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H264")
            .field("bytes", &self.data.len())
            .field("keyframe", &self.is_keyframe())
            .finish()
    }
}

/// An H.264 stream's sequence and picture parameter sets, each one NAL unit without its start
/// code: what an SDP's `sprop-parameter-sets` or an MP4 `avcC` box is made from.
#[derive(Clone, PartialEq, Eq)]
pub struct ParameterSets {
    pub sps: Bytes,
    pub pps: Bytes,
}

impl fmt::Debug for ParameterSets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParameterSets")
            .field("sps_bytes", &self.sps.len())
            .field("pps_bytes", &self.pps.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: Payload) -> EncodedFrame {
        EncodedFrame {
            seq: 7,
            capture_unix_us: 1,
            width: 16,
            height: 16,
            quality: 0,
            attempts: 0,
            payload,
        }
    }

    fn h264(parameter_sets: Option<ParameterSets>) -> Payload {
        Payload::H264(H264AccessUnit {
            layer: 0,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88, 0x84]),
            parameter_sets,
        })
    }

    fn parameter_sets() -> ParameterSets {
        ParameterSets {
            sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E]),
            pps: Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]),
        }
    }

    #[test]
    fn pixel_format_sizes() {
        assert_eq!(PixelFormat::I420.frame_bytes(640, 480), Some(460_800));
        assert_eq!(PixelFormat::I420.frame_bytes(3, 3), Some(9 + 2 * 4));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(4, 2), Some(24));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(u32::MAX, u32::MAX), None);
    }

    #[test]
    fn only_a_jpeg_payload_is_a_jpeg() {
        let jpeg = Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xD9]);
        let f = frame(Payload::Jpeg(jpeg.clone()));
        assert_eq!(f.jpeg(), Some(&jpeg));
        assert_eq!(f.payload_bytes(), 4);

        let f = frame(h264(None));
        assert_eq!(f.jpeg(), None, "an H.264 frame is skipped by JPEG watchers");
        assert_eq!(f.payload_bytes(), 7);
    }

    #[test]
    fn a_keyframe_is_one_with_parameter_sets() {
        let key = H264AccessUnit {
            layer: 0,
            data: Bytes::new(),
            parameter_sets: Some(parameter_sets()),
        };
        let delta = H264AccessUnit {
            layer: 0,
            data: Bytes::new(),
            parameter_sets: None,
        };
        assert!(key.is_keyframe());
        assert!(!delta.is_keyframe());
    }

    #[test]
    fn debug_shows_lengths_not_bytes() {
        let f = frame(Payload::Jpeg(Bytes::from(vec![0xAB; 1000])));
        let shown = format!("{f:?}");
        assert!(shown.contains("Jpeg { bytes: 1000 }"), "{shown}");
        assert!(!shown.contains("171"), "no byte values: {shown}");

        let shown = format!("{:?}", frame(h264(Some(parameter_sets()))));
        assert!(
            shown.contains("H264 { bytes: 7, keyframe: true }"),
            "{shown}"
        );
        assert_eq!(
            format!("{:?}", parameter_sets()),
            "ParameterSets { sps_bytes: 4, pps_bytes: 4 }"
        );
        let raw = RawFrame {
            data: vec![0xAB; 24],
            ..RawFrame::new()
        };
        assert!(format!("{raw:?}").contains("data_bytes: 24"));
        let jpeg = JpegFrame::new(Bytes::from(vec![0xAB; 9]), 0);
        assert!(format!("{jpeg:?}").contains("jpeg_bytes: 9"));
    }
}
