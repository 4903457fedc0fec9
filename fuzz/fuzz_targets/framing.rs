//! The TCP camera framings (seed 004's length prefix, the OAK's ABCDE header) as a hostile
//! camera could send them, split into reads of any size. No input may panic, and the decoder
//! never holds more than one capped frame plus a header and a read.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use surv_server::sources::tcp::framing::{Decoder, FramingError, ABCDE_HEADER_BYTES};

/// Small, so that the fuzzer reaches the cap easily.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    // The first byte is the read size (0: the whole stream at once).
    let read = if split == 0 { stream.len().max(1) } else { usize::from(split) };
    let mut decoder = Decoder::new(CAP);
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(read) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(payload) => assert!(!payload.is_empty() && payload.len() <= CAP),
                Err(FramingError::Incomplete) => break,
                Err(FramingError::Invalid(_)) => return,
            }
        }
        assert!(buf.len() <= CAP + ABCDE_HEADER_BYTES + read);
    }
});
