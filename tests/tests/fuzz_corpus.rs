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
        understood += usize::from(surv_proto::Ack::decode(&data).is_ok());
        understood += usize::from(surv_proto::Reply::decode(&data).is_ok());
        let _ = surv_proto::FrameTag::decode(&data);
    }
    // The seed inputs are real messages: the replay reaches the parsers' accepting paths.
    assert!(understood >= 5, "only {understood} corpus inputs parsed");
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
    assert!(frames >= 10 && invalid >= 3, "{frames} frames, {invalid} invalid");
}
