//! The TCP framings (every prefix incomplete, every split the same frames, caps before
//! allocation, garbage invalid), the OAK's detections with their frames, and one connection's
//! deadlines under paused time.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::conn::{Conn, ConnEnd, Deadlines};
use super::framing::{
    Decoded, Decoder, Framing, FramingError, Invalid, ABCDE_HEADER_BYTES,
    ABCDE_OBJECTS_HEADER_BYTES, MAX_ABCDE_OBJECTS_HEADER_BYTES,
};
use crate::frame::Detection;

const CAP: usize = 1 << 20;

/// A tiny "JPEG": SOI, some bytes, EOI.
fn jpeg(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8];
    v.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    v.extend([0xFF, 0xD9]);
    v
}

/// Seed 004's stream: an empty first message, then `struct.pack('>I', len) + jpeg` each.
fn length_prefixed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = 0u32.to_be_bytes().to_vec();
    for f in frames {
        out.extend((f.len() as u32).to_be_bytes());
        out.extend(f);
    }
    out
}

/// The OAK's stream: `"ABCDE " + str(ts).ljust(18) + str(len).ljust(8)` (or `center`).
fn abcde(frames: &[Vec<u8>], centred: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let ts = format!("{}.{:06}", 1000 + i, 123_456 + i);
        let len = f.len().to_string();
        let header = if centred {
            format!("ABCDE {:^18}{:^8}", ts, len)
        } else {
            format!("ABCDE {:<18}{:<8}", ts, len)
        };
        assert_eq!(header.len(), ABCDE_HEADER_BYTES);
        out.extend(header.as_bytes());
        out.extend(f);
    }
    out
}

/// The stream of an OAK that detects on the device: per frame, its counter and detection list
/// as `str()` writes them, in the header exactly as the script builds it:
/// `"ABCDE " + str(ts).ljust(18) + str(len(data)).ljust(8) + str(counter).ljust(16) +
/// str(data_to_send).ljust(208)` (Rust's `{:<N}` pads and never cuts, as `ljust`).
fn abcde_objects(frames: &[(Vec<u8>, &str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (f, counter, list)) in frames.iter().enumerate() {
        let ts = format!("{}.{:06}", 1000 + i, 123_456 + i);
        let header = format!("ABCDE {ts:<18}{:<8}{counter:<16}{list:<208}", f.len());
        assert!(header.len() >= ABCDE_OBJECTS_HEADER_BYTES);
        out.extend(header.as_bytes());
        out.extend(f);
    }
    out
}

/// Feeds `stream` in pieces of `chunk` bytes; the frames decoded (with what their headers
/// said) and how it ended. The decoder never holds more than a frame, a header and a read.
fn decode_frames(stream: &[u8], chunk: usize, cap: usize) -> (Vec<Decoded>, FramingError) {
    let mut d = Decoder::new(cap);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pieces = stream.chunks(chunk.max(1));
    loop {
        match d.decode(&mut buf) {
            Ok(f) => frames.push(f),
            Err(FramingError::Incomplete) => match pieces.next() {
                Some(p) => buf.put_slice(p),
                None => return (frames, FramingError::Incomplete),
            },
            Err(e) => return (frames, e),
        }
        let most = cap + MAX_ABCDE_OBJECTS_HEADER_BYTES + chunk;
        assert!(buf.len() <= most, "{} bytes buffered", buf.len());
    }
}

/// Feeds `stream` in pieces of `chunk` bytes; the payloads decoded and how it ended.
fn decode_all(stream: &[u8], chunk: usize, cap: usize) -> (Vec<Bytes>, FramingError) {
    let (frames, end) = decode_frames(stream, chunk, cap);
    (frames.into_iter().map(|f| f.payload).collect(), end)
}

fn frames() -> Vec<Vec<u8>> {
    vec![jpeg(1, 10), jpeg(2, 300), jpeg(3, 0), jpeg(4, 5000)]
}

#[test]
fn both_framings_decode_whatever_the_read_sizes() {
    let want = frames();
    for (stream, framing) in [
        (length_prefixed(&want), Framing::LengthPrefixed),
        (abcde(&want, false), Framing::Abcde),
        (abcde(&want, true), Framing::Abcde),
    ] {
        for chunk in [1, 2, 3, 7, 31, 32, 33, 4096, stream.len()] {
            let (got, end) = decode_all(&stream, chunk, CAP);
            assert_eq!(end, FramingError::Incomplete, "{framing:?} chunk {chunk}");
            assert_eq!(got, want, "{framing:?} chunk {chunk}");
        }
        let mut d = Decoder::new(CAP);
        let _ = d.decode(&mut BytesMut::from(&stream[..]));
        assert_eq!(d.framing(), Some(framing));
    }
}

#[test]
fn every_prefix_is_incomplete_never_invalid() {
    let want = frames();
    for stream in [length_prefixed(&want), abcde(&want, false)] {
        for end in 0..stream.len() {
            let (got, how) = decode_all(&stream[..end], 4096, CAP);
            assert_eq!(how, FramingError::Incomplete, "prefix {end}");
            assert!(got.len() < want.len(), "prefix {end}");
        }
    }
}

#[test]
fn lengths_over_the_cap_are_refused_before_buffering_the_frame() {
    let big = jpeg(9, 2000);
    for stream in [
        length_prefixed(std::slice::from_ref(&big)),
        abcde(&[big], false),
    ] {
        let mut d = Decoder::new(1000);
        // Only the header and two bytes of the frame: the verdict needs no more.
        let head = stream.len() - 2000;
        let mut buf = BytesMut::from(&stream[..head]);
        let mut verdict = d.decode(&mut buf);
        if verdict == Err(FramingError::Incomplete) {
            buf.put_slice(&stream[head..head + 2]);
            verdict = d.decode(&mut buf);
        }
        assert_eq!(
            verdict,
            Err(FramingError::Invalid(Invalid::TooLarge {
                len: 2004,
                cap: 1000
            }))
        );
    }
    // A later frame over the cap, once the framing is known.
    let mut stream = length_prefixed(&[jpeg(1, 10)]);
    stream.extend(u32::MAX.to_be_bytes());
    let (got, end) = decode_all(&stream, 5, 1000);
    assert_eq!(got.len(), 1);
    assert!(matches!(
        end,
        FramingError::Invalid(Invalid::TooLarge { .. })
    ));
}

#[test]
fn streams_in_neither_framing_are_invalid() {
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"\x00\x00\x00\x05hello"[..],
        &b"ABCDx 1.0 10                          "[..],
    ] {
        let (got, end) = decode_all(garbage, 3, CAP);
        assert!(got.is_empty());
        assert_eq!(
            end,
            FramingError::Invalid(Invalid::UnknownFraming),
            "{garbage:?}"
        );
    }
}

#[test]
fn an_abcde_timestamp_that_fills_its_field_is_read_by_position() {
    // `str(ts).ljust(18)` pads nothing when the timestamp has 18 characters: it runs into the
    // size. The OAK's host splits on spaces; surv reads such a header by its fields' widths.
    let (a, b) = (jpeg(1, 10), jpeg(2, 10));
    let mut stream = Vec::new();
    for (ts, f) in [("1.2500000000000002", &a), ("12345.678901234567", &b)] {
        let header = format!("ABCDE {ts:<18}{:<8}", f.len());
        assert_eq!(header.len(), ABCDE_HEADER_BYTES);
        stream.extend(header.as_bytes());
        stream.extend(f);
    }
    let (got, end) = decode_all(&stream, 7, CAP);
    assert_eq!(got, [a, b]);
    assert!(matches!(end, FramingError::Incomplete), "{end:?}");
}

#[test]
fn bad_abcde_headers_are_invalid() {
    let good = abcde(&[jpeg(1, 10)], false);
    let header = |text: &str| {
        let mut s = good.clone();
        s.extend(format!("{text:<32}").as_bytes());
        s
    };
    for bad in [
        "ABCDE 1.5",
        "ABCDE 1.5 12 13",
        "ABCDE nan 12",
        "ABCDE 1.5 -12",
        "ABCDE 1.5 0x10",
        "ABCDE 1.5 99999999999999999999",
        "ABCDX 1.5 10",
        "ABCDE 1.5\t10",
        "ABCDE 1.250000000000000x10",
        "ABCDE 1.2500000000000002-10",
        "ABCDE 1.2500000000000002",
    ] {
        let (got, end) = decode_all(&header(bad), 7, CAP);
        assert_eq!(got.len(), 1, "{bad}");
        assert!(
            matches!(
                end,
                FramingError::Invalid(Invalid::BadHeader(_) | Invalid::TooLarge { .. })
            ),
            "{bad}: {end:?}"
        );
    }
}

/// A person the device reports, as surv has it: box corners in pixels of the 640x640 input.
fn person(x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
    Detection {
        class: 0,
        score: 1.0,
        region: [x1 / 640.0, y1 / 640.0, (x2 - x1) / 640.0, (y2 - y1) / 640.0],
    }
}

/// One tracked person as the YOLO script writes the entry.
fn tracklet(id: u32, x1: u32, y1: u32, x2: u32, y2: u32) -> String {
    let (cx, cy) = ((x1 + x2) / 2, (y1 + y2) / 2);
    format!("['ID {id}', {cx}, {cy}, 'person', [{x1}, {y1}, {x2}, {y2}], [0, 0, 0, 0], 29.87]")
}

/// The frames of [`detecting_stream`]: JPEG, counter, detection list, what surv should read.
fn detecting_frames() -> Vec<(Vec<u8>, String, String, Vec<Detection>)> {
    let one = format!("[{}]", tracklet(1, 100, 100, 300, 400));
    let three = format!(
        "[{}, {}, {}]",
        tracklet(1, 100, 100, 300, 400),
        tracklet(2, 0, 0, 64, 64),
        tracklet(13, 320, 0, 640, 640)
    );
    assert!(three.len() > 208, "three people overflow the field");
    let mobilenet = "[['ID 1', 150, 150], ['ID 2', 10, 20]]".to_string();
    vec![
        (
            jpeg(1, 10),
            "29".into(),
            one,
            vec![person(100., 100., 300., 400.)],
        ),
        (jpeg(2, 300), "3".into(), "[]".into(), vec![]),
        (
            jpeg(3, 0),
            // An int counter that overflows its 16 characters.
            "1234567890123456789".into(),
            three,
            vec![
                person(100., 100., 300., 400.),
                person(0., 0., 64., 64.),
                person(320., 0., 640., 640.),
            ],
        ),
        // The mobilenet tracker's line counters, overflowing too, and entries with no box.
        (
            jpeg(4, 5000),
            "[10, 12, 100, 123]".into(),
            mobilenet,
            vec![],
        ),
        (jpeg(5, 20), "[0, 0, 0, 0]".into(), "[]".into(), vec![]),
    ]
}

fn detecting_stream() -> Vec<u8> {
    let frames = detecting_frames();
    let headers: Vec<(Vec<u8>, &str, &str)> = frames
        .iter()
        .map(|(f, c, l, _)| (f.clone(), c.as_str(), l.as_str()))
        .collect();
    abcde_objects(&headers)
}

#[test]
fn the_detecting_oak_stream_decodes_with_its_objects_whatever_the_read_sizes() {
    let want = detecting_frames();
    let stream = detecting_stream();
    for chunk in [1, 2, 3, 7, 31, 32, 33, 255, 256, 257, 4096, stream.len()] {
        let (got, end) = decode_frames(&stream, chunk, CAP);
        assert_eq!(end, FramingError::Incomplete, "chunk {chunk}");
        assert_eq!(got.len(), want.len(), "chunk {chunk}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.payload, w.0, "frame {i} chunk {chunk}");
            assert_eq!(g.objects.as_deref(), Some(&w.3[..]), "frame {i}");
        }
        let skipped: Vec<usize> = got.iter().map(|f| f.skipped_objects).collect();
        assert_eq!(
            skipped,
            [0, 0, 0, 2, 0],
            "the mobilenet entries have no box"
        );
    }
    let mut d = Decoder::new(CAP);
    assert!(d.decode(&mut BytesMut::from(&stream[..])).is_ok());
    assert_eq!(d.framing(), Some(Framing::AbcdeObjects));
    // The other framings say nothing of objects.
    let (got, _) = decode_frames(&abcde(&frames(), false), 7, CAP);
    assert!(got.iter().all(|f| f.objects.is_none()));
}

#[test]
fn a_header_python_wrote_decodes_byte_for_byte() {
    // Printed by Python 3 from the script's expression, three people: 258 bytes.
    let header = "ABCDE 1234.567891       6       29              [['ID 1', 101, 201, 'person', [10, 20, 74, 148], [0, 0, 0, 0], 29.87], ['ID 2', 102, 202, 'person', [20, 40, 84, 168], [0, 0, 0, 0], 29.87], ['ID 3', 103, 203, 'person', [30, 60, 94, 188], [0, 0, 0, 0], 29.87]]";
    assert_eq!(header.len(), 258);
    let mut stream = header.as_bytes().to_vec();
    stream.extend([0xFF, 0xD8, b'x', b'x', 0xFF, 0xD9]);
    let (got, end) = decode_frames(&stream, 5, CAP);
    assert_eq!(end, FramingError::Incomplete);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], &stream[258..]);
    assert_eq!(
        got[0].objects.as_deref(),
        Some(
            &[
                person(10., 20., 74., 148.),
                person(20., 40., 84., 168.),
                person(30., 60., 94., 188.),
            ][..]
        )
    );
}

#[test]
fn every_prefix_of_the_detecting_stream_is_incomplete() {
    let stream = detecting_stream();
    let frames = detecting_frames().len();
    for end in 0..stream.len() {
        let (got, how) = decode_frames(&stream[..end], 4096, CAP);
        assert_eq!(how, FramingError::Incomplete, "prefix {end}");
        assert!(got.len() < frames, "prefix {end}");
    }
}

#[test]
fn a_detecting_frame_over_the_cap_is_refused_after_its_header() {
    let stream = abcde_objects(&[(jpeg(9, 2000), "1", "[]")]);
    let head = stream.len() - 2004;
    assert_eq!(head, ABCDE_OBJECTS_HEADER_BYTES);
    let (got, end) = decode_frames(&stream[..head + 1], 4096, 1000);
    assert!(got.is_empty());
    assert_eq!(
        end,
        FramingError::Invalid(Invalid::TooLarge {
            len: 2004,
            cap: 1000
        })
    );
}

#[test]
fn bad_detecting_headers_are_invalid() {
    let good = abcde_objects(&[(jpeg(1, 10), "1", "[]")]);
    let frame = jpeg(2, 10);
    let n = frame.len();
    let long_list = format!("[{}]", vec![tracklet(1, 1, 2, 3, 4); 80].join(", "));
    assert!(long_list.len() > MAX_ABCDE_OBJECTS_HEADER_BYTES);
    let deep = "[".repeat(20) + &"]".repeat(20);
    let fields = format!("{:<18}{n:<8}", "1.5");
    // Timestamp and size, counter, detections: each as the script would pad it.
    let cases: Vec<(String, &str, String)> = vec![
        (fields.clone(), "1", "[['ID 1', 320".into()),
        (fields.clone(), "1", "[['ID 1', 320]]]".into()),
        (fields.clone(), "x", "[]".into()),
        (fields.clone(), "'1'", "[]".into()),
        (fields.clone(), "1", "7".into()),
        (fields.clone(), "1", deep),
        (fields.clone(), "1", long_list),
        (fields.clone(), "1", "['caf\u{e9}']".into()),
        (fields.clone(), "1", "[] x".into()),
        (fields.clone(), "1", format!("{:<209}", "[]")),
        (fields.clone(), "1 2", "[]".into()),
        (format!("{:<18}{n:<8}", "nan"), "1", "[]".into()),
        (format!("{:<18}{n:<8}", "1.5 2"), "1", "[]".into()),
        (format!("{:<18}{:<8}", "1.5", "-12"), "1", "[]".into()),
        (format!("{:<18}{:<8}", "1.5", "99999999"), "1", "[]".into()),
        (format!("{:<18}{:<8}", "1.5", ""), "1", "[]".into()),
    ];
    for (fields, counter, list) in cases {
        let mut s = good.clone();
        s.extend(format!("ABCDE {fields}{counter:<16}{list:<208}").as_bytes());
        s.extend(&frame);
        let (got, end) = decode_frames(&s, 7, CAP);
        assert_eq!(got.len(), 1, "{fields}|{counter}|{list}");
        assert!(
            matches!(
                end,
                FramingError::Invalid(Invalid::BadHeader(_) | Invalid::TooLarge { .. })
            ),
            "{fields}|{counter}|{list}: {end:?}"
        );
    }
}

#[test]
fn byte_32_tells_the_two_abcde_headers_apart() {
    // The 32-byte form: the JPEG at byte 32, or the next header after an empty message.
    let mut stream = abcde(&[jpeg(1, 10)], false);
    let (got, _) = decode_frames(&stream, 3, CAP);
    assert_eq!(got.len(), 1);
    assert!(got[0].objects.is_none());
    let empty = format!("ABCDE {:<18}{:<8}", "1.5", 0);
    stream.splice(0..0, empty.bytes());
    let mut d = Decoder::new(CAP);
    assert!(d.decode(&mut BytesMut::from(&stream[..])).is_ok());
    assert_eq!(d.framing(), Some(Framing::Abcde));
    // Neither form is known before byte 32: read more.
    let (got, end) = decode_frames(&stream[..ABCDE_HEADER_BYTES], 1, CAP);
    assert!(got.is_empty());
    assert_eq!(end, FramingError::Incomplete);
}

#[test]
fn payloads_that_are_not_jpegs_are_handed_over_for_the_caller_to_reject() {
    // After the first frame the framing is known: a length-prefixed text is its payload.
    let mut stream = length_prefixed(&[jpeg(1, 10)]);
    stream.extend(5u32.to_be_bytes());
    stream.extend(b"hello");
    stream.extend(length_prefixed(&[jpeg(2, 10)])[4..].iter());
    let (got, end) = decode_all(&stream, 3, CAP);
    assert_eq!(end, FramingError::Incomplete);
    assert_eq!(got.len(), 3);
    assert_eq!(&got[1][..], b"hello");
    assert!(!super::is_whole_jpeg(&got[1]));
    assert_eq!(got[2], jpeg(2, 10));
}

fn peer() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

const SHORT: Deadlines = Deadlines {
    idle: Duration::from_secs(5),
    frame: Duration::from_secs(10),
};

#[tokio::test(start_paused = true)]
async fn a_silent_camera_ends_at_the_idle_deadline() {
    let (mut cam, ours) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(ours, peer(), CAP, SHORT);
    cam.write_all(&length_prefixed(&[jpeg(1, 10)]))
        .await
        .unwrap();
    assert!(conn.next_frame().await.is_ok());
    let t0 = tokio::time::Instant::now();
    let end = conn.next_frame().await.unwrap_err();
    assert!(matches!(end, ConnEnd::Idle(_)), "{end}");
    assert_eq!(t0.elapsed(), SHORT.idle);
    assert_eq!(conn.framing(), Some(Framing::LengthPrefixed));
}

#[tokio::test(start_paused = true)]
async fn a_trickling_camera_ends_at_the_frame_deadline() {
    let (mut cam, ours) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(ours, peer(), CAP, SHORT);
    let stream = length_prefixed(&[jpeg(1, 100)]);
    let t0 = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for b in stream {
            if cam.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let end = conn.next_frame().await.unwrap_err();
    assert!(matches!(end, ConnEnd::Slow(_)), "{end}");
    assert_eq!(t0.elapsed(), SHORT.frame);
    trickle.abort();
}

#[tokio::test(start_paused = true)]
async fn a_connection_counts_the_detections_it_skips() {
    let (mut cam, ours) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(ours, peer(), CAP, SHORT);
    cam.write_all(&detecting_stream()).await.unwrap();
    drop(cam);
    let mut objects = Vec::new();
    while let Ok(frame) = conn.next_frame().await {
        objects.push(frame.objects.map(|o| o.len()));
    }
    assert_eq!(objects, [Some(1), Some(0), Some(3), Some(0), Some(0)]);
    assert_eq!(conn.skipped_objects(), 2);
    assert_eq!(conn.framing(), Some(Framing::AbcdeObjects));
}

#[tokio::test(start_paused = true)]
async fn a_close_between_frames_is_clean_and_within_one_is_broken() {
    let (mut cam, ours) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(ours, peer(), CAP, SHORT);
    cam.write_all(&abcde(&[jpeg(1, 10)], false)).await.unwrap();
    drop(cam);
    assert!(conn.next_frame().await.is_ok());
    assert!(matches!(conn.next_frame().await, Err(ConnEnd::Closed)));

    let (mut cam, ours) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(ours, peer(), CAP, SHORT);
    let stream = abcde(&[jpeg(1, 10)], false);
    cam.write_all(&stream[..40]).await.unwrap();
    drop(cam);
    let end = conn.next_frame().await.unwrap_err();
    assert!(matches!(end, ConnEnd::Broken(_)), "{end}");
    assert_eq!(end.cause(), Some(super::Cause::Broken));
}
