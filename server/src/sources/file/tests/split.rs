//! The JPEG splitter: whole JPEGs out of any chunking, thumbnails and stuffed bytes kept inside
//! their frame, oversize and malformed frames reported once and skipped with bounded memory.

use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

use super::super::jpeg_split::{JpegSplitter, SplitError};

/// Everything the splitter makes of `input` fed `chunk` bytes at a time.
fn split(input: &[u8], chunk: usize, cap: usize) -> Vec<Result<Vec<u8>, SplitError>> {
    let mut s = JpegSplitter::new(cap);
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        s.push(piece);
        loop {
            match s.next_frame() {
                Ok(Some(frame)) => out.push(Ok(frame.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        assert!(
            s.buffered() <= cap + chunk + 2,
            "{} bytes buffered under a {cap}-byte cap",
            s.buffered()
        );
    }
    out
}

fn jpeg(seed: u64) -> Vec<u8> {
    test_jpeg(64, 48, Picture::Gradient(seed), 85, Subsamp::Sub2x2)
}

/// A hand-made JPEG whose structure exercises the walker: an APP1 holding a whole thumbnail
/// JPEG (its own SOI … EOI), fill bytes before a marker, a COM segment holding `FF D9`, and
/// entropy-coded data with stuffed `FF 00`, a restart marker and fill bytes.
fn tricky_jpeg() -> Vec<u8> {
    let thumb = jpeg(9);
    let mut j = vec![0xFF, 0xD8];
    let app1_len = u16::try_from(2 + 6 + thumb.len()).unwrap();
    j.extend([0xFF, 0xE1]);
    j.extend(app1_len.to_be_bytes());
    j.extend(b"Exif\0\0");
    j.extend(&thumb);
    j.extend([0xFF, 0xFF, 0xFF, 0xFE, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD8]);
    j.extend([0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
    j.extend([
        0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF, 0x00, 0x78,
    ]);
    j.extend([0xFF, 0xD9]);
    j
}

#[test]
fn whole_jpegs_come_out_of_any_chunking_with_junk_between() {
    let (a, b, c) = (jpeg(1), tricky_jpeg(), jpeg(3));
    let mut stream = b"junk before\xFF".to_vec();
    stream.extend(&a);
    stream.extend(b"\r\n--boundary\r\n");
    stream.extend(&b);
    stream.extend(&c);
    stream.extend(b"trailing");
    for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
        let got = split(&stream, chunk, 1 << 20);
        let want: Vec<Result<Vec<u8>, SplitError>> =
            vec![Ok(a.clone()), Ok(b.clone()), Ok(c.clone())];
        assert_eq!(got, want, "chunk {chunk}");
    }
}

#[test]
fn every_prefix_is_incomplete_and_never_a_frame() {
    let whole = tricky_jpeg();
    for cut in 0..whole.len() {
        let mut s = JpegSplitter::new(1 << 20);
        s.push(&whole[..cut]);
        assert_eq!(s.next_frame(), Ok(None), "prefix of {cut} bytes");
        s.push(&whole[cut..]);
        assert_eq!(
            s.next_frame(),
            Ok(Some(whole.clone().into())),
            "rest after {cut}"
        );
        assert_eq!(s.next_frame(), Ok(None));
        assert!(!s.in_frame());
    }
}

#[test]
fn an_oversize_frame_is_reported_once_and_skipped_unkept() {
    let big = test_jpeg(320, 240, Picture::Noise(1), 95, Subsamp::None);
    let small = jpeg(2);
    let cap = 4096;
    assert!(big.len() > 4 * cap && small.len() < cap);
    let mut stream = small.clone();
    stream.extend(&big);
    stream.extend(&small);
    for chunk in [1, 1000, 65536] {
        let got = split(&stream, chunk, cap);
        let want: Vec<Result<Vec<u8>, SplitError>> = vec![
            Ok(small.clone()),
            Err(SplitError::Oversize {
                max_frame_bytes: cap,
            }),
            Ok(small.clone()),
        ];
        assert_eq!(got, want, "chunk {chunk}");
    }
    // A frame of exactly the cap is fine; one byte over is not.
    assert_eq!(split(&small, 64, small.len()), vec![Ok(small.clone())]);
    assert!(split(&small, 64, small.len() - 1)[0].is_err());
}

#[test]
fn an_endless_segment_or_scan_stays_within_the_cap() {
    let cap = 10_000;
    // A segment declaring 65535 bytes, then an entropy-coded scan that never ends.
    let mut endless = vec![0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF];
    endless.extend(vec![0u8; 65533]);
    endless.extend([0xFF, 0xDA, 0x00, 0x02]);
    endless.extend(std::iter::repeat_n(0x55u8, 200_000));
    let got = split(&endless, 4096, cap);
    assert_eq!(
        got,
        vec![Err(SplitError::Oversize {
            max_frame_bytes: cap
        })]
    );
}

#[test]
fn malformed_frames_are_reported_and_the_next_good_one_found() {
    let good = jpeg(4);
    let cases: [(&[u8], &str); 4] = [
        (&[0xFF, 0xD8, 0x12, 0x34], "not followed by a marker"),
        (&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01], "length below 2"),
        (&[0xFF, 0xD8, 0xFF, 0x00], "FF00"),
        // A JPEG cut short, then a whole one: the cut one is reported, the whole one kept.
        (&good[..good.len() - 10], "new SOI"),
    ];
    for (bad, why) in cases {
        let mut stream = bad.to_vec();
        stream.extend(&good);
        for chunk in [1, 5, stream.len()] {
            let got = split(&stream, chunk, 1 << 20);
            assert_eq!(got.len(), 2, "{why}, chunk {chunk}: {got:?}");
            match &got[0] {
                Err(SplitError::Malformed(reason)) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(got[1], Ok(good.clone()), "{why}, chunk {chunk}");
        }
    }
}

#[test]
fn random_bytes_never_panic_and_never_overrun_the_cap() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let good = jpeg(5);
    for round in 0..200 {
        // Random bytes rich in FF and markers, with a real JPEG spliced in now and then.
        let mut stream: Vec<u8> = (0..2000)
            .map(|_| match next() % 6 {
                0 => 0xFF,
                1 => 0xD8,
                2 => 0xD9,
                3 => 0xDA,
                _ => next() as u8,
            })
            .collect();
        if round % 4 == 0 {
            stream.extend(&good);
        }
        let chunk = (next() % 300 + 1) as usize;
        for frame in split(&stream, chunk, 512).into_iter().flatten() {
            assert!(frame.len() <= 512);
            assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
        }
    }
}
