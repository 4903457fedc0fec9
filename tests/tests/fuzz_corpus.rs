//! Replays every saved fuzz input (fuzz/corpus/<target>/, crashers included) through the parser
//! its target fuzzes, so a crash found once by scripts/fuzz.sh stays fixed under plain
//! `cargo test`. Each test below makes the same calls as fuzz/fuzz_targets/<target>.rs.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    surv_tests::fixtures::fuzz_corpus(target)
}

#[test]
fn wire_corpus_parses_without_panicking() {
    let mut understood = 0;
    for (_path, data) in corpus("wire") {
        understood += usize::from(surv_proto::Registration::decode(&data, true).is_ok());
        let _ = surv_proto::Registration::decode(&data, false);
        let _ = surv_proto::RegistrationLine::decode(&data, false);
        understood += usize::from(surv_proto::AppRequest::decode(&data).is_ok());
        understood += usize::from(surv_proto::Ack::decode(&data).is_ok());
        understood += usize::from(surv_proto::Reply::decode(&data).is_ok());
        let _ = surv_proto::FrameTag::decode(&data);
    }
    // The seed inputs are real messages: the replay reaches the parsers' accepting paths.
    assert!(understood >= 5, "only {understood} corpus inputs parsed");
}

#[test]
fn jpeg_split_corpus_splits_without_panicking() {
    use surv_server::sources::file::jpeg_split::JpegSplitter;
    const CAP: usize = 4096;
    let mut frames = 0;
    for (path, data) in corpus("jpeg_split") {
        let Some((&chunk, data)) = data.split_first() else {
            continue;
        };
        let chunk = usize::from(chunk) * 8 + 1;
        let mut splitter = JpegSplitter::new(CAP);
        for piece in data.chunks(chunk) {
            splitter.push(piece);
            loop {
                match splitter.next_frame() {
                    Ok(Some(frame)) => {
                        frames += 1;
                        assert!(frame.len() <= CAP, "{}", path.display());
                        assert!(
                            frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]),
                            "{}",
                            path.display()
                        );
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            assert!(splitter.buffered() <= CAP + chunk + 2, "{}", path.display());
        }
    }
    // The seed inputs hold whole JPEGs: the replay reaches the splitter's accepting path.
    assert!(frames >= 5, "only {frames} frames split from the corpus");
}

#[test]
fn multipart_corpus_reads_without_panicking() {
    use surv_server::sources::http::multipart::{Event, MultipartReader, MAX_HEADER_BYTES};
    const CAP: usize = 256;
    let mut jpegs = 0;
    for (path, data) in corpus("multipart") {
        let Some((&control, body)) = data.split_first() else {
            continue;
        };
        let boundary = match control % 4 {
            0 => Some("b"),
            1 => Some("--jpgboundary"),
            2 => None,
            _ => Some("FRAME"),
        };
        let chunk = usize::from(control / 4) + 1;
        let mut reader = MultipartReader::new(boundary, CAP);
        'input: for piece in body.chunks(chunk) {
            reader.push(piece);
            loop {
                match reader.next_event() {
                    Ok(Some(Event::Jpeg(part))) => {
                        assert!(part.len() <= CAP, "{}", path.display());
                        jpegs += 1;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'input,
                }
            }
            assert!(reader.buffered() <= MAX_HEADER_BYTES + CAP + chunk + 300);
        }
    }
    // The seed inputs are real camera streams: the replay reaches the reader's part paths.
    assert!(jpegs >= 8, "only {jpegs} parts read from the corpus");
}

#[test]
fn framing_corpus_decodes_without_panicking() {
    use bytes::BytesMut;
    use surv_server::sources::tcp::framing::{
        Decoder, FramingError, MAX_ABCDE_OBJECTS_HEADER_BYTES,
    };
    const CAP: usize = 4096;
    let (mut frames, mut invalid, mut objects) = (0, 0, 0);
    for (path, data) in corpus("framing") {
        let Some((&split, stream)) = data.split_first() else {
            continue;
        };
        let read = if split == 0 {
            stream.len().max(1)
        } else {
            usize::from(split)
        };
        let mut decoder = Decoder::new(CAP);
        let mut buf = BytesMut::new();
        'stream: for chunk in stream.chunks(read) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(frame) => {
                        let payload = &frame.payload;
                        assert!(!payload.is_empty() && payload.len() <= CAP, "{path:?}");
                        frames += 1;
                        for d in frame.objects.iter().flat_map(|o| o.iter()) {
                            assert!(d.class < surv_server::detect::LABELS.len(), "{path:?}");
                            let [x, y, w, h] = d.region;
                            let inside = [x, y, w, h, x + w, y + h];
                            assert!(inside.iter().all(|v| (0.0..=1.0).contains(v)), "{path:?}");
                            objects += 1;
                        }
                    }
                    Err(FramingError::Incomplete) => break,
                    Err(FramingError::Invalid(_)) => {
                        invalid += 1;
                        break 'stream;
                    }
                }
            }
            let most = CAP + MAX_ABCDE_OBJECTS_HEADER_BYTES + read;
            assert!(buf.len() <= most, "{path:?}");
        }
    }
    // The seed inputs are real camera streams and real garbage: both paths are reached, and
    // the detecting OAK's detections.
    assert!(
        frames >= 10 && invalid >= 3 && objects >= 4,
        "{frames} frames, {invalid} invalid, {objects} objects"
    );
}

#[test]
fn client_datagram_corpus_is_read_as_the_viewer_reads_it() {
    use surv_client::decoder::{
        decode_bgrx, mark_motion, mark_objects, DecodeError, MAX_FRAME_PIXELS,
    };
    use surv_client::recorder::{jpeg_dims, whole_jpeg};
    use surv_proto::{FrameTag, MAX_UDP_PAYLOAD_BYTES};
    use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

    /// What the viewer makes of the seed datagrams (crafted by hand, see
    /// fuzz/corpus/client_datagram/): `Some((w, h))` is shown and recorded at that size, `None`
    /// neither shown nor recorded. Files the fuzzer added need only not panic.
    const SEEDS: &[(&str, Option<(usize, usize)>)] = &[
        ("v1-96x64-422.jpg", Some((96, 64))),
        ("v1-progressive-arithmetic-33x17.jpg", Some((33, 17))),
        ("v2-160x120-420.jpg", Some((160, 120))),
        ("v2-33x17-odd.jpg", Some((33, 17))),
        ("v2-arithmetic-64x48.jpg", Some((64, 48))),
        ("v2-gray-40x30.jpg", Some((40, 30))),
        ("v2-motion-64x48-444.jpg", Some((64, 48))),
        ("v2-objects-64x48.jpg", Some((64, 48))),
        // Its objects segment claims 9 objects: the objects are refused, the picture shows.
        ("v2-objects-bad-count-64x48.jpg", Some((64, 48))),
        ("v2-progressive-160x120.jpg", Some((160, 120))),
        ("v2-restart-96x64.jpg", Some((96, 64))),
        // Lossless (SOF3, ffmpeg's ljpeg): libjpeg-turbo cannot convert it to the window's BGRX.
        ("v2-lossless-32x24.jpg", None),
        ("v2-claims-65535x65535.jpg", None),
        ("v2-claims-8000x8000.jpg", None),
        ("v2-claims-0x0.jpg", None),
        ("v2-truncated-160x120.jpg", None),
        ("v2-tag-only.jpg", None),
        ("v2-tag-then-noise.bin", None),
    ];

    let good = test_jpeg(16, 16, Picture::Gradient(1), 90, Subsamp::Sub2x2);
    let mut d = turbojpeg::Decompressor::new().expect("JPEG decoder");
    let mut out = Vec::new();
    let (mut tagged, mut shown, mut motion, mut too_big, mut with_objects) = (0, 0, 0, 0, 0);
    let mut seeds_seen = 0;
    for (path, data) in corpus("client_datagram") {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let expected = SEEDS.iter().find(|(seed, _)| *seed == name).map(|s| s.1);
        seeds_seen += usize::from(expected.is_some());
        // The same calls as fuzz/fuzz_targets/client_datagram.rs.
        if data.len() > MAX_UDP_PAYLOAD_BYTES {
            continue;
        }
        let Ok(tag) = FrameTag::decode(&data) else {
            assert_eq!(expected, None, "{name}: a seed lost its tag");
            continue;
        };
        tagged += 1;
        let objects = surv_proto::objects::decode(&data);
        if name == "v2-objects-64x48.jpg" {
            let labels: Vec<String> = objects
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.label)
                .collect();
            assert_eq!(labels, ["person", "traffic_light"], "{name}: {objects:?}");
        }
        if name == "v2-objects-bad-count-64x48.jpg" {
            assert!(objects.is_err(), "{name}: {objects:?}");
        }
        let objects = objects.unwrap_or_default();
        with_objects += usize::from(!objects.is_empty());
        let recorded = whole_jpeg(&data).and_then(|()| jpeg_dims(&data));
        let decoded = decode_bgrx(&mut d, &data, &mut out);
        match &decoded {
            Ok((width, height)) => {
                shown += 1;
                assert!(width * height <= MAX_FRAME_PIXELS, "{name}");
                assert_eq!(out.len(), width * height * 4, "{name}");
                let mut pixels: Vec<u32> = out
                    .chunks_exact(4)
                    .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                    .collect();
                if tag.motion {
                    motion += 1;
                    mark_motion(&mut pixels, *width, *height);
                }
                mark_objects(&mut pixels, *width, *height, &objects);
            }
            Err(DecodeError::TooBig { .. }) => too_big += 1,
            Err(_) => {}
        }
        if let Some(expected) = expected {
            assert_eq!(decoded.as_ref().ok().copied(), expected, "{name}: shown");
            if let Some((w, h)) = expected {
                let dims = (u16::try_from(w).unwrap(), u16::try_from(h).unwrap());
                assert_eq!(recorded, Ok(dims), "{name}: recorded");
            }
        }
        if name == "v2-truncated-160x120.jpg" {
            assert!(recorded.is_err(), "a truncated frame is not recorded");
        }
        // One bad datagram does not end the picture: the next frame decodes.
        let next = decode_bgrx(&mut d, &good, &mut out);
        assert!(matches!(next, Ok((16, 16))), "{name}: then {next:?}");
    }
    assert_eq!(seeds_seen, SEEDS.len(), "a seed file went missing");
    assert!(with_objects >= 1, "no datagram listed objects");
    assert!(tagged >= SEEDS.len(), "only {tagged} tagged datagrams");
    assert!(
        shown >= SEEDS.iter().filter(|s| s.1.is_some()).count() && motion >= 2 && too_big >= 1,
        "{shown} shown, {motion} with motion, {too_big} over the pixel cap"
    );
}

#[test]
fn jpeg_check_corpus_is_read_as_the_capture_path_reads_it() {
    use surv_server::jpeg::{check, JpegReader};
    let good = surv_tests::test_jpeg(
        48,
        32,
        surv_tests::Picture::Gradient(1),
        80,
        surv_tests::fixtures::Subsamp::Sub2x2,
    );
    let mut pictures = 0;
    for (path, data) in corpus("jpeg_check") {
        let mut reader = JpegReader::new();
        if let Ok(info) = check(&data) {
            pictures += 1;
            assert!(info.width > 0 && info.height > 0, "{}", path.display());
            if u64::from(info.width) * u64::from(info.height) <= 7680 * 4320 {
                let _ = reader.header(&data);
            }
        } else {
            let _ = reader.header(&data);
        }
        let header = reader
            .header(&good)
            .unwrap_or_else(|e| panic!("after {}: {e}", path.display()));
        assert_eq!((header.width, header.height), (48, 32));
    }
    // The seed inputs include real pictures: the replay reaches the accepting path.
    assert!(pictures >= 3, "only {pictures} pictures in the corpus");
}

#[test]
fn chunk_corpus_reassembles_without_panicking() {
    use surv_proto::reassembly::SLOTS;
    use surv_proto::{ChunkHeader, Push, Reassembler};
    let mut completed = 0;
    for (path, data) in corpus("chunk") {
        // As fuzz/fuzz_targets/chunk.rs: datagrams after a length byte, key 0, chunks of 8.
        let mut r = Reassembler::new(0, 8);
        let now = std::time::Instant::now();
        let mut rest = &data[..];
        while let Some((&len, tail)) = rest.split_first() {
            let (datagram, next) = tail.split_at(usize::from(len).min(tail.len()));
            rest = next;
            let pushed = r.push(datagram, now);
            if let Push::Complete { frame, .. } = pushed {
                completed += 1;
                let (h, payload) = ChunkHeader::decode(datagram).expect("it was stored");
                assert_eq!(frame.len(), h.frame_bytes as usize, "{}", path.display());
                // A parity chunk completes a frame by restoring its data chunks.
                if let Some(range) = h.data_range() {
                    assert_eq!(&frame[range], payload, "{}", path.display());
                }
            }
            let mut newest = None;
            while let Some((seq, _)) = r.pop_ready() {
                assert!(newest < Some(seq), "{}: out of order", path.display());
                newest = Some(seq);
                completed += 1;
            }
            assert!(r.incomplete().count() <= SLOTS, "{}", path.display());
        }
    }
    // The seed inputs hold whole frames: the replay reaches completion.
    assert!(completed >= 5, "only {completed} frames completed");
}

#[test]
fn chunk_ack_corpus_round_trips() {
    let mut understood = 0;
    for (path, data) in corpus("chunk_ack") {
        // As fuzz/fuzz_targets/chunk_ack.rs.
        if let Ok((ack, key)) = surv_proto::Ack::decode_keyed(&data) {
            understood += 1;
            let wire = ack.encode_keyed(key);
            assert!(wire.len() <= surv_proto::MAX_CHUNK_ACK_BYTES);
            assert_eq!(
                surv_proto::Ack::decode_keyed(&wire),
                Ok((ack, key)),
                "{}",
                path.display()
            );
        }
    }
    assert!(understood >= 5, "only {understood} corpus inputs parsed");
}
