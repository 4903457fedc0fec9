//! Replays every saved fuzz input (fuzz/corpus/<target>/, crashers included) through the parser
//! its target fuzzes, so a crash found once by scripts/fuzz.sh stays fixed under plain
//! `cargo test`. Each test below makes the same calls as fuzz/fuzz_targets/<target>.rs.

use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>/`; at least one, or the corpus went missing.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
    use surv_server::sources::tcp::framing::{Decoder, FramingError, ABCDE_HEADER_BYTES};
    const CAP: usize = 4096;
    let (mut frames, mut invalid) = (0, 0);
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
                    Ok(payload) => {
                        assert!(!payload.is_empty() && payload.len() <= CAP, "{path:?}");
                        frames += 1;
                    }
                    Err(FramingError::Incomplete) => break,
                    Err(FramingError::Invalid(_)) => {
                        invalid += 1;
                        break 'stream;
                    }
                }
            }
            assert!(buf.len() <= CAP + ABCDE_HEADER_BYTES + read, "{path:?}");
        }
    }
    // The seed inputs are real camera streams and real garbage: both paths are reached.
    assert!(
        frames >= 10 && invalid >= 3,
        "{frames} frames, {invalid} invalid"
    );
}
