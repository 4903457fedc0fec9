//! The TCP framings (every prefix incomplete, every split the same frames, caps before
//! allocation, garbage invalid) and one connection's deadlines under paused time.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::conn::{Conn, ConnEnd, Deadlines};
use super::framing::{Decoder, Framing, FramingError, Invalid, ABCDE_HEADER_BYTES};

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

/// Feeds `stream` in pieces of `chunk` bytes; the frames decoded and how it ended.
fn decode_all(stream: &[u8], chunk: usize, cap: usize) -> (Vec<Bytes>, FramingError) {
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
    }
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
        assert!(d.wanted(buf.len()) <= ABCDE_HEADER_BYTES);
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
