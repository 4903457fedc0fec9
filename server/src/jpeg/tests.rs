use super::*;
use surv_tests::fixtures::{broken_jpegs, test_jpeg, Picture, Subsamp};

fn good(width: usize, height: usize, subsamp: Subsamp) -> Vec<u8> {
    test_jpeg(width, height, Picture::Gradient(7), 80, subsamp)
}

#[test]
fn real_jpegs_are_pictures_of_the_size_turbojpeg_reads() {
    for (w, h) in [(16, 16), (160, 90), (641, 479), (1920, 1080)] {
        for subsamp in [
            Subsamp::Sub2x2,
            Subsamp::Sub2x1,
            Subsamp::None,
            Subsamp::Gray,
        ] {
            let jpeg = good(w, h, subsamp);
            let info = check(&jpeg).unwrap_or_else(|e| panic!("{w}x{h} {subsamp:?}: {e}"));
            let header = turbojpeg::read_header(&jpeg).unwrap();
            assert_eq!(
                (info.width as usize, info.height as usize),
                (header.width, header.height)
            );
            let components = if subsamp == Subsamp::Gray { 1 } else { 3 };
            assert_eq!(info.components, components);
        }
    }
}

#[test]
fn a_progressive_jpeg_is_a_picture() {
    let pixels = Picture::Gradient(3).rgb(64, 48);
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_quality(80).unwrap();
    c.set_optimize(true).unwrap();
    c.set_progressive(true).unwrap();
    let jpeg = c
        .compress_to_vec(turbojpeg::Image {
            pixels: &pixels[..],
            width: 64,
            pitch: 64 * 3,
            height: 48,
            format: turbojpeg::PixelFormat::RGB,
        })
        .unwrap();
    let info = check(&jpeg).unwrap();
    assert_eq!(
        (info.width, info.height, info.components),
        (64, 48, 3),
        "{info:?}"
    );
    // The head ends where the scan's data starts: after the SOS segment's length.
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let sos_len = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    assert_eq!(info.head_bytes, sos + 2 + sos_len);
}

#[test]
fn broken_frames_are_not_pictures() {
    let good = good(160, 90, Subsamp::Sub2x2);
    for (what, bytes) in broken_jpegs(&good) {
        let verdict = check(&bytes);
        if what == "frame header claiming 65535x65535" {
            // Well-formed: the size cap, not the structure, refuses it (in the capture path).
            assert_eq!(verdict.map(|i| (i.width, i.height)), Ok((65535, 65535)));
        } else {
            assert!(verdict.is_err(), "{what}: {verdict:?}");
        }
    }
}

#[test]
fn each_malformed_segment_is_named() {
    let good = good(32, 32, Subsamp::Sub2x2);
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let eoi = |mut b: Vec<u8>| {
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    };
    assert_eq!(check(b"GIF89a"), Err(NotAPicture::NoSoi));
    assert_eq!(check(&good[..good.len() - 1]), Err(NotAPicture::NoEoi));
    assert_eq!(check(&[0xFF, 0xD8, 0xFF, 0xD9]), Err(NotAPicture::NoFrame));
    assert_eq!(check(&eoi(good[..sos].to_vec())), Err(NotAPicture::NoScan));
    assert_eq!(
        check(&eoi(good[..sos + 5].to_vec())),
        Err(NotAPicture::Truncated)
    );
    // The scan header whole, then EOI at once: no scan data.
    let sos_len = usize::from(u16::from_be_bytes([good[sos + 2], good[sos + 3]]));
    assert_eq!(
        check(&eoi(good[..sos + 2 + sos_len].to_vec())),
        Err(NotAPicture::EmptyScan)
    );
    // A scan before any frame header.
    let mut scan_first = good[..sof].to_vec();
    scan_first.extend_from_slice(&good[sos..]);
    assert_eq!(check(&scan_first), Err(NotAPicture::NoFrame));
    // Zero width.
    let mut zero = good.clone();
    zero[sof + 7..sof + 9].copy_from_slice(&[0, 0]);
    assert_eq!(check(&zero), Err(NotAPicture::ZeroSize));
    // Two frame headers.
    let sof_len = usize::from(u16::from_be_bytes([good[sof + 2], good[sof + 3]]));
    let mut two = good[..sof + 2 + sof_len].to_vec();
    two.extend_from_slice(&good[sof..]);
    assert_eq!(check(&two), Err(NotAPicture::TwoFrames));
    // A frame header whose component count disagrees with its length.
    let mut bad_sof = good.clone();
    bad_sof[sof + 9] = 2;
    assert_eq!(check(&bad_sof), Err(NotAPicture::BadFrameHeader));
    // A scan naming more components than the frame has.
    let mut bad_sos = good.clone();
    bad_sos[sos + 4] = 4;
    assert_eq!(check(&bad_sos), Err(NotAPicture::BadScanHeader));
    // Bytes where a marker should be.
    let mut garbage = vec![0xFF, 0xD8, 0x12, 0x34];
    garbage.extend_from_slice(&good[2..]);
    assert_eq!(check(&garbage), Err(NotAPicture::NoMarker));
}

#[test]
fn fill_bytes_and_stray_restart_markers_before_the_frame_are_skipped() {
    let good = good(32, 32, Subsamp::Sub2x2);
    let mut padded = vec![0xFF, 0xD8, 0xFF, 0xFF, 0xFF, 0xD0];
    padded.extend_from_slice(&good[2..]);
    assert_eq!(check(&padded).map(|i| i.width), Ok(32));
}

#[test]
fn a_reader_that_failed_reads_the_next_good_frame() {
    let good = good(160, 90, Subsamp::Sub2x2);
    let mut reader = JpegReader::new();
    for (what, bytes) in broken_jpegs(&good) {
        let _ = reader.header(&bytes);
        let header = reader
            .header(&good)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!((header.width, header.height), (160, 90), "after {what}");
    }
}

#[test]
fn a_reader_is_renewed_only_after_a_failure() {
    let good = good(16, 16, Subsamp::Sub2x2);
    let mut reader = JpegReader::new();
    let first = reader.run(|d| Ok::<_, turbojpeg::Error>(d as *const Decompressor));
    let again = reader.run(|d| Ok::<_, turbojpeg::Error>(d as *const Decompressor));
    assert_eq!(first.unwrap(), again.unwrap(), "kept while calls succeed");
    let failed: Result<(), turbojpeg::Error> =
        reader.run(|d| d.read_header(b"not a jpeg").map(drop));
    assert!(failed.is_err());
    assert!(reader.decompressor.is_none(), "dropped after a failure");
    assert!(reader.header(&good).is_ok());
}
