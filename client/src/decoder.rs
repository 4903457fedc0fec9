//! The decoding thread: turns each received JPEG into pixels for the window, off the network path.
//!
//! Frames arrive through a small bounded queue; when the decoder falls behind, the network loop
//! does not wait: the frame is not decoded and is counted as skipped.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::display::{Image, Latest};

/// Frames waiting to be decoded at most.
const QUEUE_FRAMES: usize = 8;

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
                    let pixels = bgrx
                        .chunks_exact(4)
                        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                        .collect();
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

/// Decodes one JPEG into `out` as BGRX bytes, which read as little-endian `u32` are the
/// `0x00RRGGBB` pixels the window wants.
pub fn decode_bgrx(
    d: &mut turbojpeg::Decompressor,
    jpeg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(usize, usize), turbojpeg::Error> {
    let header = d.read_header(jpeg)?;
    let (width, height) = (header.width, header.height);
    let pitch = width * 4;
    out.resize(pitch * height, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: usize, height: usize, rgb: [u8; 3]) -> Vec<u8> {
        let pixels: Vec<u8> = rgb
            .iter()
            .copied()
            .cycle()
            .take(width * height * 3)
            .collect();
        let image = turbojpeg::Image {
            pixels: pixels.as_slice(),
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 95, turbojpeg::Subsamp::None)
            .unwrap()
            .to_vec()
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
}
