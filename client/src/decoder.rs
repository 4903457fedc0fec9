//! The decoding thread: turns each received JPEG into pixels for the window, off the network path.
//!
//! Frames arrive through a small bounded queue; when the decoder falls behind, the network loop
//! does not wait: the frame is not decoded and is counted as skipped.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use thiserror::Error;

use crate::display::{Image, Latest};

/// Frames waiting to be decoded at most.
const QUEUE_FRAMES: usize = 8;

/// The largest picture decoded, in pixels: 8K UHD (7680x4320), the largest frame surv's server
/// makes, in either orientation. The output buffer is sized from the JPEG header, which the peer
/// writes: a header claiming 65500x65500 would otherwise ask for 17 GB. At this cap the buffer
/// is at most about 127 MiB.
pub const MAX_FRAME_PIXELS: usize = 7680 * 4320;

/// The most pixels a JPEG may claim per byte it has. A Huffman-coded JPEG spends at least one
/// bit on each 8x8 block of each component (a DC code; sequential scans an end-of-block code
/// too), so even one flat grey picture cannot beat 512 pixels a byte; surv's server makes
/// baseline colour JPEGs, about 64 pixels a byte when flat (tests below). A header claiming
/// more (4000x4000 in a 700-byte datagram) is a lie or arithmetic coding, which nothing of surv
/// makes: it is refused before a buffer of its claimed size is allocated and filled with grey.
pub const MAX_PIXELS_PER_BYTE: usize = 1024;

/// Why a frame was not decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("cannot decode the JPEG: {0}")]
    Jpeg(#[from] turbojpeg::Error),
    #[error("frame size {width}x{height} is over the {MAX_FRAME_PIXELS}-pixel cap")]
    TooBig { width: usize, height: usize },
    #[error(
        "frame size {width}x{height} is more than {MAX_PIXELS_PER_BYTE} pixels a byte of its \
         {bytes} bytes"
    )]
    Implausible {
        width: usize,
        height: usize,
        bytes: usize,
    },
}

/// What the decoder did, reported when it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCounts {
    pub decoded: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Handle to the decoding thread.
pub struct Decoder {
    tx: SyncSender<Bytes>,
    skipped: u64,
    thread: JoinHandle<DecodeCounts>,
}

impl Decoder {
    /// Starts the thread. Decoded frames go to `latest` (the window), if there is one.
    pub fn spawn(latest: Option<Arc<Latest>>) -> std::io::Result<Decoder> {
        let (tx, rx) = sync_channel(QUEUE_FRAMES);
        let thread = std::thread::Builder::new()
            .name("surv-decode".into())
            .spawn(move || decode_loop(&rx, latest.as_deref()))?;
        Ok(Decoder {
            tx,
            skipped: 0,
            thread,
        })
    }

    /// Queues a frame; never blocks.
    pub fn push(&mut self, jpeg: Bytes) {
        match self.tx.try_send(jpeg) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.skipped += 1,
        }
    }

    /// Decodes what is queued, stops, and reports.
    pub fn finish(self) -> DecodeCounts {
        drop(self.tx);
        let mut counts = self.thread.join().unwrap_or_else(|_| {
            tracing::error!("the decoding thread panicked");
            DecodeCounts::default()
        });
        counts.skipped += self.skipped;
        counts
    }
}

fn decode_loop(rx: &Receiver<Bytes>, latest: Option<&Latest>) -> DecodeCounts {
    let mut counts = DecodeCounts::default();
    let mut decompressor = match turbojpeg::Decompressor::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the JPEG decoder; frames will not be shown");
            counts.failed = rx.iter().count() as u64;
            return counts;
        }
    };
    let mut bgrx = Vec::new();
    while let Ok(jpeg) = rx.recv() {
        match decode_bgrx(&mut decompressor, &jpeg, &mut bgrx) {
            Ok((width, height)) => {
                counts.decoded += 1;
                if let Some(latest) = latest {
                    let mut pixels: Vec<u32> = bgrx
                        .chunks_exact(4)
                        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                        .collect();
                    let tag = surv_proto::FrameTag::decode(&jpeg).ok();
                    if tag.is_some_and(|t| t.motion) {
                        mark_motion(&mut pixels, width, height);
                    }
                    if tag.is_some_and(|t| t.objects) {
                        let objects = surv_proto::objects::decode(&jpeg).unwrap_or_default();
                        mark_objects(&mut pixels, width, height, &objects);
                    }
                    latest.put(Image {
                        width,
                        height,
                        pixels,
                    });
                }
            }
            Err(e) => {
                counts.failed += 1;
                tracing::debug!(error = %e, bytes = jpeg.len(), "frame did not decode");
            }
        }
    }
    counts
}

/// Colour of the motion mark.
pub const MOTION_RED: u32 = 0x00FF_2020;

/// The on-screen motion mark: a red border, `max(2, 1/60 of the smaller side)` pixels wide, on a
/// frame the server flagged as inside a motion event.
pub fn mark_motion(pixels: &mut [u32], width: usize, height: usize) {
    if pixels.len() < width * height {
        return;
    }
    let b = (width.min(height) / 60).max(2);
    for y in 0..height {
        let row = &mut pixels[y * width..(y + 1) * width];
        if y < b || y + b >= height {
            row.fill(MOTION_RED);
        } else {
            let edge = b.min(width);
            row[..edge].fill(MOTION_RED);
            row[width - edge..].fill(MOTION_RED);
        }
    }
}

/// Colour of the boxes around objects.
pub const OBJECT_GREEN: u32 = 0x0020_FF20;

/// The on-screen object marks: a green outline, `max(2, 1/160 of the smaller side)` pixels
/// wide, around each object the server's detector lists for the frame.
pub fn mark_objects(
    pixels: &mut [u32],
    width: usize,
    height: usize,
    objects: &[surv_proto::Object],
) {
    if width == 0 || height == 0 || pixels.len() < width * height {
        return;
    }
    let t = (width.min(height) / 160).max(2);
    let to_px = |f: f32, side: usize| ((f.clamp(0.0, 1.0) * side as f32) as usize).min(side - 1);
    for o in objects {
        let [x, y, w, h] = o.region;
        let (x0, y0) = (to_px(x, width), to_px(y, height));
        let (x1, y1) = (to_px(x + w, width), to_px(y + h, height));
        if x1 < x0 || y1 < y0 {
            continue;
        }
        for py in y0..=y1 {
            let row = &mut pixels[py * width..(py + 1) * width];
            if py < y0 + t || py + t > y1 {
                row[x0..=x1].fill(OBJECT_GREEN);
            } else {
                row[x0..=(x0 + t - 1).min(x1)].fill(OBJECT_GREEN);
                row[x1.saturating_sub(t - 1).max(x0)..=x1].fill(OBJECT_GREEN);
            }
        }
    }
}

/// Decodes one JPEG into `out` as BGRX bytes, which read as little-endian `u32` are the
/// `0x00RRGGBB` pixels the window wants. A header over [`MAX_FRAME_PIXELS`], or over
/// [`MAX_PIXELS_PER_BYTE`] for the JPEG's length, is refused before anything is allocated.
pub fn decode_bgrx(
    d: &mut turbojpeg::Decompressor,
    jpeg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(usize, usize), DecodeError> {
    let header = match d.read_header(jpeg) {
        Ok(header) => header,
        Err(e) => {
            // A header that fails after its frame size was read (a side over libjpeg-turbo's
            // 65500) leaves the decompressor mid-header, and every later frame would fail with
            // "two SOI markers": one bad datagram must not end the picture, so start afresh.
            *d = turbojpeg::Decompressor::new()?;
            return Err(e.into());
        }
    };
    let (width, height) = (header.width, header.height);
    let bytes = bgrx_bytes(width, height)?;
    if width * height > jpeg.len().saturating_mul(MAX_PIXELS_PER_BYTE) {
        return Err(DecodeError::Implausible {
            width,
            height,
            bytes: jpeg.len(),
        });
    }
    out.resize(bytes, 0);
    // In range: the width is at most the whole buffer's pixels.
    let pitch = width * 4;
    d.decompress(
        jpeg,
        turbojpeg::Image {
            pixels: out.as_mut_slice(),
            width,
            pitch,
            height,
            format: turbojpeg::PixelFormat::BGRX,
        },
    )?;
    Ok((width, height))
}

/// The size of a `width` x `height` BGRX picture, if it is within [`MAX_FRAME_PIXELS`].
fn bgrx_bytes(width: usize, height: usize) -> Result<usize, DecodeError> {
    width
        .checked_mul(height)
        .filter(|&pixels| pixels <= MAX_FRAME_PIXELS)
        .map(|pixels| pixels * 4)
        .ok_or(DecodeError::TooBig { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;
    use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

    #[test]
    fn object_marks_outline_each_box_and_stay_inside_the_picture() {
        let (w, h) = (100, 50);
        let mut px = vec![0u32; w * h];
        let object = |region| surv_proto::Object {
            label: "person".into(),
            score: 0.9,
            region,
        };
        mark_objects(&mut px, w, h, &[object([0.1, 0.2, 0.5, 0.6])]);
        // x 10..=60, y 10..=40, 2 pixels wide.
        assert_eq!(px[10 * w + 10], OBJECT_GREEN);
        assert_eq!(px[40 * w + 60], OBJECT_GREEN);
        assert_eq!(px[25 * w + 11], OBJECT_GREEN);
        assert_eq!(px[25 * w + 12], 0, "inside the box");
        assert_eq!(px[25 * w + 35], 0, "inside the box");
        assert_eq!(px[5 * w + 5], 0, "outside the box");
        // Boxes over the edges, empty and inverted ones are clipped, never out of bounds.
        mark_objects(
            &mut px,
            w,
            h,
            &[
                object([0.9, 0.9, 5.0, 5.0]),
                object([-1.0, 2.0, -3.0, 0.0]),
                object([0.5, 0.5, -0.2, -0.2]),
            ],
        );
        assert_eq!(px[(h - 1) * w + (w - 1)], OBJECT_GREEN);
        mark_objects(&mut [0; 3], 1, 3, &[object([0.0, 0.0, 1.0, 1.0])]);
        mark_objects(&mut [0; 2], 4, 4, &[object([0.0, 0.0, 1.0, 1.0])]);
    }

    #[test]
    fn the_motion_mark_is_a_border_and_leaves_the_inside() {
        let (w, h) = (120, 90);
        let mut px = vec![0x0012_3456; w * h];
        mark_motion(&mut px, w, h);
        let at = |x: usize, y: usize| px[y * w + x];
        for (x, y) in [(0, 0), (w - 1, h - 1), (1, h / 2), (w / 2, 1), (w - 2, 40)] {
            assert_eq!(at(x, y), MOTION_RED, "({x}, {y})");
        }
        assert_eq!(at(2, 2), 0x0012_3456);
        assert_eq!(at(w / 2, h / 2), 0x0012_3456);
        let red = px.iter().filter(|&&p| p == MOTION_RED).count();
        assert_eq!(red, w * h - (w - 4) * (h - 4));
        // Tiny and short buffers: no panic.
        mark_motion(&mut [0; 3], 1, 3);
        mark_motion(&mut [0; 2], 4, 4);
    }

    fn jpeg(width: usize, height: usize, rgb: [u8; 3]) -> Vec<u8> {
        test_jpeg(width, height, Picture::Solid(rgb), 95, Subsamp::None)
    }

    /// `jpeg` with the size in its frame header (SOF0) replaced: what a peer can send.
    fn claiming_size(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = jpeg
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("a baseline JPEG has an SOF0 segment");
        // FF C0, length (2), precision (1), height (2), width (2).
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn decodes_to_window_pixels_and_counts_failures() {
        let latest = Arc::new(Latest::default());
        let mut d = Decoder::spawn(Some(latest.clone())).unwrap();
        d.push(Bytes::from(jpeg(32, 16, [200, 100, 50])));
        d.push(Bytes::from_static(b"\xff\xd8 not really a jpeg"));
        let counts = d.finish();
        assert_eq!(
            counts,
            DecodeCounts {
                decoded: 1,
                failed: 1,
                skipped: 0
            }
        );
        let image = latest.take().expect("one image shown");
        assert_eq!((image.width, image.height), (32, 16));
        let px = image.pixels[16 * 8 + 8];
        let (r, g, b) = ((px >> 16) & 0xff, (px >> 8) & 0xff, px & 0xff);
        assert!(
            r.abs_diff(200) < 6 && g.abs_diff(100) < 6 && b.abs_diff(50) < 6,
            "{px:06x}"
        );
    }

    #[test]
    fn the_cap_admits_8k_either_way_and_nothing_bigger() {
        assert_eq!(bgrx_bytes(7680, 4320).unwrap(), 7680 * 4320 * 4);
        assert_eq!(bgrx_bytes(4320, 7680).unwrap(), 7680 * 4320 * 4);
        assert_eq!(bgrx_bytes(32, 16).unwrap(), 32 * 16 * 4);
        for (w, h) in [
            (7681, 4320),
            (4320, 7681),
            (65_535, 65_535),
            (usize::MAX, 2),
        ] {
            assert!(
                matches!(bgrx_bytes(w, h), Err(DecodeError::TooBig { width, height })
                    if (width, height) == (w, h)),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn a_header_claiming_a_huge_frame_is_refused_without_allocating() {
        let small = jpeg(32, 16, [10, 20, 30]);
        let mut d = turbojpeg::Decompressor::new().unwrap();
        // 65500 is the largest side libjpeg-turbo reads; here the cap must refuse it.
        for (w, h) in [(65_500, 65_500), (7681, 4320)] {
            let big = claiming_size(small.clone(), w, h);
            let mut out = Vec::new();
            let err = decode_bgrx(&mut d, &big, &mut out).unwrap_err();
            assert!(
                matches!(err, DecodeError::TooBig { width, height }
                    if (width, height) == (usize::from(w), usize::from(h))),
                "{w}x{h}: {err}"
            );
            assert_eq!(out.capacity(), 0, "{w}x{h}: allocated for a refused frame");
        }
        let mut out = Vec::new();
        assert_eq!(decode_bgrx(&mut d, &small, &mut out).unwrap(), (32, 16));
        assert_eq!(out.len(), 32 * 16 * 4);
    }

    /// Frames claiming 65535x65535 (which libjpeg-turbo refuses half-way through the header) and
    /// 65500x65500 (which the cap refuses) are counted as failures, and the frames after them
    /// still decode.
    #[test]
    fn huge_frames_are_counted_failures_and_the_next_frame_decodes() {
        let small = jpeg(32, 16, [10, 20, 30]);
        let mut d = Decoder::spawn(None).unwrap();
        for (w, h) in [(65_535, 65_535), (65_500, 65_500)] {
            d.push(Bytes::from(claiming_size(small.clone(), w, h)));
            d.push(Bytes::from(small.clone()));
        }
        assert_eq!(
            d.finish(),
            DecodeCounts {
                decoded: 2,
                failed: 2,
                skipped: 0
            }
        );
    }

    /// The server's own flat pictures, the ones that compress best, at every chroma layout and
    /// at the lowest quality, stay well under the pixels-a-byte bound and decode.
    #[test]
    fn the_flattest_frames_a_server_makes_are_under_the_pixels_a_byte_bound() {
        let mut d = turbojpeg::Decompressor::new().unwrap();
        let mut out = Vec::new();
        let mut densest = 0;
        for (w, h) in [(1920, 1080), (4096, 2160)] {
            for subsamp in [
                Subsamp::None,
                Subsamp::Sub2x1,
                Subsamp::Sub2x2,
                Subsamp::Gray,
            ] {
                for quality in [1, 95] {
                    let flat = test_jpeg(w, h, Picture::Solid([0, 0, 0]), quality, subsamp);
                    let per_byte = w * h / flat.len();
                    densest = densest.max(per_byte);
                    assert_eq!(
                        decode_bgrx(&mut d, &flat, &mut out).unwrap(),
                        (w, h),
                        "{w}x{h} {subsamp:?} q{quality}: {} bytes",
                        flat.len()
                    );
                }
            }
        }
        assert!(
            densest * 2 <= MAX_PIXELS_PER_BYTE,
            "the bound should keep a margin of 2 over {densest} pixels a byte"
        );
    }

    #[test]
    fn a_short_jpeg_claiming_a_large_frame_is_refused_without_allocating() {
        let small = jpeg(32, 16, [10, 20, 30]);
        let claimed = (small.len() * MAX_PIXELS_PER_BYTE).isqrt() + 1;
        let lie = claiming_size(small.clone(), claimed as u16, claimed as u16);
        let mut d = turbojpeg::Decompressor::new().unwrap();
        let mut out = Vec::new();
        let err = decode_bgrx(&mut d, &lie, &mut out).unwrap_err();
        assert!(
            matches!(err, DecodeError::Implausible { width, height, bytes }
                if (width, height, bytes) == (claimed, claimed, lie.len())),
            "{err}"
        );
        assert_eq!(out.capacity(), 0, "allocated for a refused frame");
        // Just within the bound, the same bytes go to the decoder, which finds the data short.
        let side = (small.len() * MAX_PIXELS_PER_BYTE).isqrt();
        let fits = claiming_size(small.clone(), side as u16, side as u16);
        let err = decode_bgrx(&mut d, &fits, &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::Jpeg(_)), "{err}");
        assert_eq!(decode_bgrx(&mut d, &small, &mut out).unwrap(), (32, 16));
    }
}
