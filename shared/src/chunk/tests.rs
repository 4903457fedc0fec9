//! Unit tests of the chunk header: round trips at every field's bounds, each hostile header
//! refused with its reason, every truncated prefix refused, and a sender's headers covering a
//! frame exactly.

use super::*;

/// A frame of `frame_bytes`, chunked at `chunk_bytes`, as datagrams.
fn datagrams(seq: u64, key: u64, frame: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
    ChunkHeader::for_frame(seq, key, frame.len(), chunk_bytes)
        .expect("chunkable")
        .map(|h| {
            let mut d = h.encode().to_vec();
            d.extend_from_slice(&frame[h.data_range().expect("a data chunk")]);
            d
        })
        .collect()
}

fn header() -> ChunkHeader {
    ChunkHeader {
        resent: false,
        index: 0,
        data_chunks: 3,
        parity_chunks: 0,
        chunk_bytes: 10,
        frame_bytes: 25,
        seq: 7,
        key: 0x0123_4567_89ab_cdef,
    }
}

/// `h`'s encoding followed by a payload of `len` bytes.
fn wire(h: &ChunkHeader, len: usize) -> Vec<u8> {
    let mut d = h.encode().to_vec();
    d.resize(CHUNK_HEADER_BYTES + len, 0xAB);
    d
}

#[test]
fn header_layout_is_the_documented_one() {
    let h = ChunkHeader {
        resent: true,
        index: 2,
        data_chunks: 3,
        parity_chunks: 1,
        chunk_bytes: 0x0102,
        frame_bytes: 0x0304,
        seq: 0x1122_3344_5566_7788,
        key: 0x99aa_bbcc_ddee_ff00,
    };
    let b = h.encode();
    assert_eq!(&b[..2], b"SC");
    assert_eq!(b[2], 0x11, "version 1, flag R");
    assert_eq!((b[3], b[4], b[5]), (2, 3, 1));
    assert_eq!(&b[6..8], &[1, 2]);
    assert_eq!(&b[8..12], &[0, 0, 3, 4]);
    assert_eq!(&b[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
    assert_eq!(&b[20..28], &0x99aa_bbcc_ddee_ff00u64.to_be_bytes());
}

#[test]
fn round_trips_at_the_bounds() {
    let mut cases = Vec::new();
    // The smallest frame and chunk; the largest frame at the largest chunk; the largest frame
    // at the smallest mtu (85 chunks) with the most parity; the last (short) chunk; a parity
    // chunk; every seq and key extreme.
    for (chunk, frame, m, index) in [
        (2usize, 1usize, 0u8, 0u8),
        (2, 2, 0, 0),
        (MAX_CHUNK_BYTES, MAX_UDP_PAYLOAD_BYTES, 0, 7),
        (
            chunk_bytes_for_mtu(MIN_MTU_BYTES),
            MAX_UDP_PAYLOAD_BYTES,
            32,
            84,
        ),
        (
            chunk_bytes_for_mtu(MIN_MTU_BYTES),
            MAX_UDP_PAYLOAD_BYTES,
            32,
            116,
        ),
        (1172, 25_000, 3, 21),
        (1172, 25_000, 0, 0),
    ] {
        let k = data_chunks(frame, chunk).unwrap();
        for (seq, key, resent) in [(0, 0, false), (u64::MAX, u64::MAX, true)] {
            cases.push(ChunkHeader {
                resent,
                index,
                data_chunks: k as u8,
                parity_chunks: m,
                chunk_bytes: chunk as u16,
                frame_bytes: frame as u32,
                seq,
                key,
            });
        }
    }
    for h in cases {
        let len = h.payload_bytes().unwrap_or_else(|e| panic!("{h:?}: {e}"));
        let d = wire(&h, len);
        let (got, payload) = ChunkHeader::decode(&d).unwrap();
        assert_eq!(got, h);
        assert_eq!(payload.len(), len);
        assert!(d.len() <= usize::from(MAX_MTU_BYTES), "{h:?}");
    }
}

#[test]
fn the_default_mtu_gives_the_documented_chunk() {
    assert_eq!(chunk_bytes_for_mtu(DEFAULT_MTU_BYTES), 1172);
    assert_eq!(chunk_bytes_for_mtu(1201), 1172, "rounded down to even");
    assert_eq!(chunk_bytes_for_mtu(MIN_MTU_BYTES), 772);
    assert_eq!(chunk_bytes_for_mtu(MAX_MTU_BYTES), MAX_CHUNK_BYTES);
    // The largest frame fits the chunk limit at the smallest mtu.
    assert_eq!(
        data_chunks(MAX_UDP_PAYLOAD_BYTES, chunk_bytes_for_mtu(MIN_MTU_BYTES)),
        Some(85)
    );
}

#[test]
fn hostile_headers_are_refused_with_their_reason() {
    let ok = header();
    let with = |f: &dyn Fn(&mut ChunkHeader)| {
        let mut h = ok;
        f(&mut h);
        h
    };
    let cases: Vec<(ChunkHeader, usize, ChunkError)> = vec![
        (
            with(&|h| h.index = 3),
            10,
            ChunkError::Index { index: 3, count: 3 },
        ),
        (
            with(&|h| h.index = 255),
            10,
            ChunkError::Index {
                index: 255,
                count: 3,
            },
        ),
        (
            with(&|h| h.data_chunks = 0),
            10,
            ChunkError::DataChunks { got: 0, want: 3 },
        ),
        (
            with(&|h| h.data_chunks = 255),
            10,
            ChunkError::DataChunks { got: 255, want: 3 },
        ),
        (
            with(&|h| h.data_chunks = 2),
            10,
            ChunkError::DataChunks { got: 2, want: 3 },
        ),
        (with(&|h| h.parity_chunks = 33), 10, ChunkError::Parity(33)),
        (
            with(&|h| h.parity_chunks = 255),
            10,
            ChunkError::Parity(255),
        ),
        (with(&|h| h.chunk_bytes = 0), 10, ChunkError::ChunkBytes(0)),
        (with(&|h| h.chunk_bytes = 9), 10, ChunkError::ChunkBytes(9)),
        (
            with(&|h| h.chunk_bytes = u16::MAX - 1),
            10,
            ChunkError::ChunkBytes(u16::MAX - 1),
        ),
        (with(&|h| h.frame_bytes = 0), 10, ChunkError::FrameBytes(0)),
        (
            with(&|h| h.frame_bytes = 65_508),
            10,
            ChunkError::FrameBytes(65_508),
        ),
        (
            with(&|h| h.frame_bytes = u32::MAX),
            10,
            ChunkError::FrameBytes(u32::MAX),
        ),
        // A frame that needs 128 data chunks and 32 parity: 160 chunks.
        (
            ChunkHeader {
                data_chunks: 128,
                parity_chunks: 32,
                chunk_bytes: 2,
                frame_bytes: 256,
                ..ok
            },
            2,
            ChunkError::TooMany(160),
        ),
        // A frame that would need more than 255 chunks can never claim the right k.
        (
            ChunkHeader {
                data_chunks: 255,
                chunk_bytes: 2,
                frame_bytes: 60_000,
                ..ok
            },
            2,
            ChunkError::DataChunks {
                got: 255,
                want: 30_000,
            },
        ),
        // Sizes that do not add up: a long or short payload, a full-size last chunk.
        (ok, 11, ChunkError::Payload { got: 11, want: 10 }),
        (ok, 9, ChunkError::Payload { got: 9, want: 10 }),
        (
            with(&|h| h.index = 2),
            10,
            ChunkError::Payload { got: 10, want: 5 },
        ),
        (
            with(&|h| {
                h.index = 3;
                h.parity_chunks = 1;
            }),
            5,
            ChunkError::Payload { got: 5, want: 10 },
        ),
    ];
    for (h, len, want) in cases {
        assert_eq!(ChunkHeader::decode(&wire(&h, len)), Err(want), "{h:?}");
    }
    let mut bad = wire(&ok, 10);
    bad[0] = 0xFF;
    assert_eq!(ChunkHeader::decode(&bad), Err(ChunkError::Magic));
    for version in [0u8, 2, 15] {
        let mut bad = wire(&ok, 10);
        bad[2] = version << 4;
        assert_eq!(ChunkHeader::decode(&bad), Err(ChunkError::Version(version)));
    }
    // Unknown flag bits are ignored (room to grow).
    let mut flagged = wire(&ok, 10);
    flagged[2] |= 0b1110;
    assert_eq!(ChunkHeader::decode(&flagged).map(|(h, _)| h), Ok(ok));
}

#[test]
fn every_truncated_prefix_is_refused() {
    let frame: Vec<u8> = (0..25u8).collect();
    for d in datagrams(1, 2, &frame, 10) {
        for cut in 0..d.len() {
            let err = ChunkHeader::decode(&d[..cut]).unwrap_err();
            if cut < CHUNK_HEADER_BYTES {
                assert_eq!(err, ChunkError::Short(cut));
            } else {
                assert!(matches!(err, ChunkError::Payload { .. }), "{cut}: {err}");
            }
        }
    }
}

#[test]
fn a_senders_chunks_cover_the_frame_exactly() {
    for (frame_bytes, chunk) in [
        (1usize, 2usize),
        (2, 2),
        (3, 2),
        (25, 10),
        (30, 10),
        (22_000, 1172),
    ] {
        let frame: Vec<u8> = (0..frame_bytes).map(|i| (i % 251) as u8).collect();
        let mut joined = Vec::new();
        let ds = datagrams(9, 3, &frame, chunk);
        assert_eq!(ds.len(), frame_bytes.div_ceil(chunk));
        for (i, d) in ds.iter().enumerate() {
            let (h, payload) = ChunkHeader::decode(d).unwrap();
            assert_eq!((usize::from(h.index), h.seq, h.key), (i, 9, 3));
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined, frame);
    }
    assert!(ChunkHeader::for_frame(0, 0, 0, 10).is_none(), "empty frame");
    assert!(ChunkHeader::for_frame(0, 0, 300, 2).is_none(), "150 chunks");
    assert!(ChunkHeader::for_frame(0, 0, 30, 9).is_none(), "odd chunk");
    assert!(
        ChunkHeader::for_frame(0, 0, 65_508, 1172).is_none(),
        "over the UDP cap"
    );
}
