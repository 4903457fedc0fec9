//! The TCP camera framings (seed 004's length prefix, the OAK's ABCDE headers of 32 bytes and of
//! 256 with the device's detections) as a hostile camera could send them, split into reads of
//! any size. No input may panic, the decoder never holds more than one capped frame plus a
//! header and a read, and every detection it passes on is a COCO class with a box inside the
//! picture.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use surv_server::sources::tcp::framing::{Decoder, FramingError, MAX_ABCDE_OBJECTS_HEADER_BYTES};

/// Small, so that the fuzzer reaches the cap easily.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    // The first byte is the read size (0: the whole stream at once).
    let read = if split == 0 {
        stream.len().max(1)
    } else {
        usize::from(split)
    };
    let mut decoder = Decoder::new(CAP);
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(read) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(frame) => {
                    assert!(!frame.payload.is_empty() && frame.payload.len() <= CAP);
                    for d in frame.objects.iter().flat_map(|o| o.iter()) {
                        assert!(d.class < surv_server::detect::LABELS.len());
                        let [x, y, w, h] = d.region;
                        assert!([x, y, w, h, x + w, y + h]
                            .iter()
                            .all(|v| (0.0..=1.0).contains(v)));
                    }
                }
                Err(FramingError::Incomplete) => break,
                Err(FramingError::Invalid(_)) => return,
            }
        }
        assert!(buf.len() <= CAP + MAX_ABCDE_OBJECTS_HEADER_BYTES + read);
    }
});
