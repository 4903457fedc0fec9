//! Test fixtures shared by every crate's tests: JPEGs of known pictures, and a child process
//! that is killed when the test lets go of it.
//!
//! The server and the client use these from their unit tests through a dev-dependency on this
//! crate, so that there is one generator of test JPEGs, not one per file.

use std::process::Child;

pub use turbojpeg::Subsamp;

/// Kills the child when dropped, so a failing test leaves nothing running.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a test JPEG shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picture {
    /// Diagonal colour ramps that move with the seed: compresses well, differs frame to frame.
    Gradient(u64),
    /// Pseudo-random bytes from the seed: compresses badly, for large frames.
    Noise(u64),
    /// One colour everywhere.
    Solid([u8; 3]),
}

impl Picture {
    /// The picture as packed RGB bytes, `width × height × 3`.
    pub fn rgb(self, width: usize, height: usize) -> Vec<u8> {
        let n = width * height * 3;
        match self {
            Picture::Gradient(seed) => (0..n)
                .map(|i| {
                    let (x, y) = ((i / 3) % width, (i / 3) / width);
                    (x as u64 * 2 + y as u64 + seed * 8 + (i % 3) as u64 * 80) as u8
                })
                .collect(),
            Picture::Noise(seed) => {
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                (0..n)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng as u8
                    })
                    .collect()
            }
            Picture::Solid(rgb) => rgb.iter().copied().cycle().take(n).collect(),
        }
    }
}

/// A JPEG of `picture` from turbojpeg, at `quality` (1-100) and the given chroma subsampling.
pub fn test_jpeg(
    width: usize,
    height: usize,
    picture: Picture,
    quality: i32,
    subsamp: Subsamp,
) -> Vec<u8> {
    let pixels = picture.rgb(width, height);
    let image = turbojpeg::Image {
        pixels: &pixels[..],
        width,
        pitch: width * 3,
        height,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, quality, subsamp)
        .expect("turbojpeg compresses a test picture")
        .to_vec()
}

/// Broken JPEGs of the kinds cameras send, each with what it is: made from `good` (a whole
/// JPEG) so that its tables and frame header are real. None is a picture; a server must
/// refuse each and lose nothing but it.
pub fn broken_jpegs(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let sos = good
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("a whole JPEG has a start of scan");
    let sof = good
        .windows(2)
        .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
        .expect("a baseline or progressive frame header");
    let with_eoi = |mut b: Vec<u8>| {
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    };
    // The start-of-scan header cut short: every table and the frame header readable, then EOI.
    let sos_cut = with_eoi(good[..sos + 5].to_vec());
    // Tables and frame header, then EOI with no scan at all.
    let no_scan = with_eoi(good[..sos].to_vec());
    // Tables only.
    let tables_only = with_eoi(good[..sof].to_vec());
    // A frame header claiming 65535x65535, the rest as it was.
    let mut huge = good.to_vec();
    huge[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    // Random bytes between SOI and EOI.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = vec![0xFF, 0xD8];
    random.extend((0..2000).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }));
    let random = with_eoi(random);
    // The second half of the frame lost: SOI, tables, a part of the scan, and no EOI.
    let half = good[..good.len() / 2].to_vec();
    vec![
        ("start-of-scan header cut short", sos_cut),
        ("no scan", no_scan),
        ("tables only", tables_only),
        ("frame header claiming 65535x65535", huge),
        ("random bytes between SOI and EOI", random),
        ("SOI EOI and nothing else", vec![0xFF, 0xD8, 0xFF, 0xD9]),
        ("second half lost", half),
    ]
}

/// Every file of `fuzz/corpus/<target>/`, sorted; at least one, or the corpus went missing.
/// For the tests that replay a fuzz target's corpus under plain `cargo test`.
pub fn fuzz_corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_jpegs_decode_to_their_size_and_differ_by_seed() {
        let a = test_jpeg(64, 48, Picture::Gradient(1), 85, Subsamp::Sub2x2);
        let b = test_jpeg(64, 48, Picture::Gradient(2), 85, Subsamp::Sub2x2);
        assert_ne!(a, b);
        let header = turbojpeg::read_header(&a).unwrap();
        assert_eq!((header.width, header.height), (64, 48));
        let noise = test_jpeg(64, 48, Picture::Noise(1), 85, Subsamp::Sub2x2);
        assert!(
            noise.len() > 2 * a.len(),
            "noise compresses worse than a ramp"
        );
    }
}
