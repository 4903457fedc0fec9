//! The multipart reader against the bytes real cameras write, their quirks, and hostile
//! streams: the same events whatever the chunking, never a panic, memory bounded.

use super::*;

/// A JPEG-like body with the bytes that trip naive readers: line breaks, dashes, a near-miss of
/// the boundary.
fn body(seed: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8];
    b.extend(b"\r\n--jpgboundar\n--FRAMEX\r\n\n-");
    b.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b.extend([0xFF, 0xD9]);
    b
}

/// Feeds `stream` in chunks of `chunk` bytes, draining events after each; also returns the most
/// that was ever buffered.
fn read_all(
    boundary: Option<&str>,
    cap: usize,
    stream: &[u8],
    chunk: usize,
) -> (Vec<Event>, Result<(), MultipartError>, usize) {
    let mut r = MultipartReader::new(boundary, cap);
    let mut events = Vec::new();
    let mut most = 0;
    for piece in stream.chunks(chunk.max(1)) {
        r.push(piece);
        loop {
            match r.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => return (events, Err(e), most),
            }
        }
        most = most.max(r.buffered());
    }
    (events, Ok(()), most)
}

/// The same events at every chunking: whole, byte by byte, and split once at every offset.
fn events_at_any_chunking(boundary: Option<&str>, cap: usize, stream: &[u8]) -> Vec<Event> {
    let (whole, res, _) = read_all(boundary, cap, stream, stream.len());
    res.unwrap();
    for chunk in [1, 2, 3, 7, 64] {
        let (ev, res, _) = read_all(boundary, cap, stream, chunk);
        res.unwrap();
        assert_eq!(ev, whole, "chunks of {chunk}");
    }
    for split in 0..=stream.len() {
        let mut r = MultipartReader::new(boundary, cap);
        let mut ev = Vec::new();
        for piece in [&stream[..split], &stream[split..]] {
            r.push(piece);
            while let Some(e) = r.next_event().unwrap() {
                ev.push(e);
            }
        }
        assert_eq!(ev, whole, "split at {split}");
    }
    whole
}

fn jpegs(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Jpeg(b) => Some(b.to_vec()),
            _ => None,
        })
        .collect()
}

/// luxonis depthai-python `examples/Script/script_mjpeg_server.py`: declares
/// `boundary=--jpgboundary`, writes `--jpgboundary` CRLF, then BaseHTTPRequestHandler's
/// `Content-type`/`Content-length` headers, the JPEG, and `end_headers()`'s CRLF.
#[test]
fn oak_mjpeg_server_with_its_boundary_quirk() {
    let frames = [body(1, 300), body(2, 500), body(3, 10)];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(b"--jpgboundary\r\n");
        stream.extend(
            format!(
                "Content-type: image/jpeg\r\nContent-length: {}\r\n\r\n",
                f.len()
            )
            .bytes(),
        );
        stream.extend(f);
        stream.extend(b"\r\n");
    }
    let events = events_at_any_chunking(Some("--jpgboundary"), 1 << 20, &stream);
    assert_eq!(jpegs(&events), frames);
    assert_eq!(events.len(), 3, "{events:?}");
    // And had it written what RFC 2046 says for that declaration:
    let rfc = String::from_utf8_lossy(&stream).replace("--jpgboundary\r\n", "----jpgboundary\r\n");
    let events = events_at_any_chunking(Some("--jpgboundary"), 1 << 20, rfc.as_bytes());
    assert_eq!(events.len(), 3, "{events:?}");
}

/// Seed 004 (picamera's web-streaming recipe): `boundary=FRAME`, `--FRAME` lines.
#[test]
fn seed_004_frame_boundary() {
    let frames = [body(4, 200), body(5, 200)];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(b"--FRAME\r\nContent-Type: image/jpeg\r\n");
        stream.extend(format!("Content-Length: {}\r\n\r\n", f.len()).bytes());
        stream.extend(f);
        stream.extend(b"\r\n");
    }
    let events = events_at_any_chunking(Some("FRAME"), 1 << 20, &stream);
    assert_eq!(jpegs(&events), frames);
}

/// No Content-Length, bare LF line ends, a preamble, a closing delimiter, delimiter lines
/// without `--` and with transport padding.
#[test]
fn parts_without_length_end_at_the_next_delimiter() {
    let frames = [body(6, 100), body(7, 0), body(8, 1000)];
    let mut stream = b"this is a preamble\n\n".to_vec();
    stream.extend(b"--myboundary\nContent-Type: image/jpeg\n\n");
    stream.extend(&frames[0]);
    stream.extend(b"\nmyboundary \t\r\nContent-Type: image/jpeg\r\n\r\n");
    stream.extend(&frames[1]);
    stream.extend(b"\r\n--myboundary\n\n");
    stream.extend(&frames[2]);
    stream.extend(b"\n--myboundary--\nepilogue");
    let events = events_at_any_chunking(Some("myboundary"), 1 << 20, &stream);
    assert_eq!(jpegs(&events), frames);
    assert_eq!(events.last(), Some(&Event::End));
}

#[test]
fn a_jpeg_right_after_the_delimiter_and_an_undeclared_boundary() {
    let frames = [body(9, 50), body(10, 60)];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(b"--cam\r\n");
        stream.extend(f);
        stream.extend(b"\r\n");
    }
    stream.extend(b"--cam\r\n");
    for boundary in [Some("cam"), None] {
        let events = events_at_any_chunking(boundary, 1 << 20, &stream);
        assert_eq!(jpegs(&events), frames, "{boundary:?}");
    }
}

#[test]
fn boundaries_from_content_types() {
    let cases = [
        (
            "multipart/x-mixed-replace; boundary=--jpgboundary",
            Some("--jpgboundary"),
        ),
        (
            "multipart/x-mixed-replace;boundary=123456789000000000000987654321",
            Some("123456789000000000000987654321"),
        ),
        (
            "Multipart/X-Mixed-Replace; charset=x; Boundary=\"my frame\"",
            Some("my frame"),
        ),
        ("multipart/x-mixed-replace", None),
        ("multipart/x-mixed-replace; boundary=", None),
    ];
    for (ct, want) in cases {
        assert!(is_multipart(ct), "{ct}");
        assert_eq!(boundary_param(ct).as_deref(), want, "{ct}");
    }
    assert!(!is_multipart("text/html"));
    assert!(!is_multipart("multipart/"));
    assert!(is_jpeg_type("image/JPEG; q=1") && is_jpeg_type("image/jpg"));
    assert!(!is_jpeg_type("image/png"));
}

/// Parts over the cap (declared or not), parts of another type and an endless header are
/// skipped with their reason; the parts after them still come through, and nothing close to an
/// oversized part is ever held.
#[test]
fn bad_parts_are_skipped_and_the_stream_goes_on() {
    let cap = 4096;
    let good = body(11, 100);
    let big = body(12, 50_000);
    let mut stream = Vec::new();
    let part = |s: &mut Vec<u8>, headers: &str, data: &[u8]| {
        s.extend(b"--b\r\n");
        s.extend(headers.bytes());
        s.extend(b"\r\n");
        s.extend(data);
        s.extend(b"\r\n");
    };
    part(
        &mut stream,
        &format!("Content-Length: {}\r\n", good.len()),
        &good,
    );
    part(
        &mut stream,
        &format!("Content-Length: {}\r\n", big.len()),
        &big,
    );
    part(&mut stream, "Content-Type: image/jpeg\r\n", &good);
    part(&mut stream, "Content-Type: image/jpeg\r\n", &big);
    part(&mut stream, "Content-Type: image/jpeg\r\n", &good);
    part(
        &mut stream,
        "Content-Type: text/plain\r\nContent-Length: 5\r\n",
        b"hello",
    );
    part(
        &mut stream,
        "Content-Type: application/json\r\n",
        b"{\"a\":1}",
    );
    let endless = format!("X-Junk: {}\r\n", "a".repeat(40_000));
    part(&mut stream, &endless, &good);
    part(
        &mut stream,
        &format!("Content-Length: {}\r\n", good.len()),
        &good,
    );
    let (events, res, most) = read_all(Some("b"), cap, &stream, 1500);
    res.unwrap();
    let skips: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Skipped(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(jpegs(&events).len(), 4, "{events:?}");
    assert!(jpegs(&events).iter().all(|j| *j == good));
    let declared = big.len() as u64;
    assert_eq!(
        skips[0],
        Skip::TooLarge {
            bytes: declared,
            max_bytes: cap
        }
    );
    assert!(matches!(skips[1], Skip::TooLarge { .. }), "{skips:?}");
    assert_eq!(
        skips[2],
        Skip::NotJpeg {
            content_type: "text/plain".into()
        }
    );
    assert_eq!(
        skips[3],
        Skip::NotJpeg {
            content_type: "application/json".into()
        }
    );
    assert_eq!(skips[4], Skip::HeaderTooLong);
    assert_eq!(skips.len(), 5, "{skips:?}");
    let bound = cap.max(MAX_HEADER_BYTES) + 1500 + 200;
    assert!(most < bound, "held {most} bytes with a cap of {cap}");
    assert!(skips.iter().all(|s| !s.to_string().is_empty()));
}

/// A stream that never writes its delimiter is an error after a bounded amount, whatever
/// the chunking, with little ever held.
#[test]
fn a_stream_without_delimiters_is_an_error_and_holds_little() {
    let junk: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in [1000, 65_536] {
        let (events, res, most) = read_all(Some("b"), 4096, &junk, chunk);
        assert!(events.is_empty(), "{events:?}");
        let err = res.expect_err("no delimiter in 3 MB");
        assert!(err.to_string().contains("\"b\""), "{err}");
        assert!(most <= chunk + 200, "held {most}");
    }
    // An endless header line, after a good delimiter: rejected once, then junk.
    let mut endless = b"--b\r\nX-Endless: ".to_vec();
    endless.extend(std::iter::repeat_n(b'x', 2_000_000));
    let (events, res, most) = read_all(Some("b"), 4096, &endless, 8192);
    assert_eq!(events, vec![Event::Skipped(Skip::HeaderTooLong)]);
    assert!(res.is_err());
    assert!(most <= MAX_HEADER_BYTES + 8192, "held {most}");
}

/// Every prefix of a valid stream is "read more" (or the events of the parts it holds) and
/// garbage never panics.
#[test]
fn prefixes_are_incomplete_and_garbage_never_panics() {
    let f = body(13, 40);
    let mut stream = format!("--x\r\nContent-Length: {}\r\n\r\n", f.len()).into_bytes();
    stream.extend(&f);
    for n in 0..stream.len() {
        let (events, res, _) = read_all(Some("x"), 1 << 20, &stream[..n], n.max(1));
        res.unwrap();
        assert!(events.is_empty(), "prefix {n}: {events:?}");
    }
    let mut rng = 0x1234_5678_9abc_def0u64;
    for round in 0..2000 {
        let len = (round % 97) + 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                b"--x\r\n:ContentLength0123456789\xFF\xD8"[(rng % 31) as usize]
            })
            .collect();
        for boundary in [Some("x"), None, Some("")] {
            let _ = read_all(boundary, 64, &data, 3);
        }
    }
}

#[test]
fn a_huge_declared_length_is_skipped_without_allocating() {
    let stream = b"--b\r\nContent-Length: 18446744073709551615\r\n\r\n\xFF\xD8...";
    let (events, res, most) = read_all(Some("b"), 1 << 20, stream, 7);
    res.unwrap();
    assert!(matches!(
        events.as_slice(),
        [Event::Skipped(Skip::TooLarge {
            bytes: u64::MAX,
            ..
        })]
    ));
    assert!(most < 64);
}

/// Found by `scripts/fuzz.sh multipart`: a part without Content-Length that arrives whole, with
/// the next delimiter, in one chunk was delivered over the cap.
#[test]
fn an_unlengthed_part_over_the_cap_in_one_chunk_is_skipped() {
    let big = body(14, 300);
    let mut stream = b"--b\r\n\r\n".to_vec();
    stream.extend(&big);
    stream.extend(b"\r\n--b\r\n\r\n");
    stream.extend(body(15, 10));
    stream.extend(b"\r\n--b\r\n");
    let (events, res, _) = read_all(Some("b"), 256, &stream, stream.len());
    res.unwrap();
    assert_eq!(
        events,
        vec![
            Event::Skipped(Skip::TooLarge {
                bytes: big.len() as u64,
                max_bytes: 256
            }),
            Event::Jpeg(body(15, 10).into()),
        ]
    );
}
