//! The MJPEG-over-HTTP multipart reader (`sources::http::multipart`): any body, any chunking,
//! each boundary form. No input may panic, no part may exceed the cap, and what the reader
//! holds stays bounded by the caps plus one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::sources::http::multipart::{Event, MultipartReader, MAX_HEADER_BYTES};

/// Small, so that the fuzzer reaches the over-cap paths with small inputs.
const CAP: usize = 256;

fuzz_target!(|data: &[u8]| {
    // First byte: which boundary declaration, and the chunk size the body arrives in.
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let boundary = match control % 4 {
        0 => Some("b"),
        1 => Some("--jpgboundary"),
        2 => None,
        _ => Some("FRAME"),
    };
    let chunk = usize::from(control / 4) + 1;
    let mut reader = MultipartReader::new(boundary, CAP);
    for piece in body.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_event() {
                Ok(Some(Event::Jpeg(part))) => assert!(part.len() <= CAP),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(reader.buffered() <= MAX_HEADER_BYTES + CAP + chunk + 300);
    }
});
