//! The JPEG splitter that cuts ffmpeg's MJPEG pipe (and files) into frames: any bytes, fed in
//! any chunking, under a small cap. No input may panic; every frame is SOI … EOI within the cap,
//! and the splitter never holds more than the cap plus one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::sources::file::jpeg_split::JpegSplitter;

/// Small, so that oversize frames are common.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so that every split point is tried.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) * 8 + 1;
    let mut splitter = JpegSplitter::new(CAP);
    for piece in data.chunks(chunk) {
        splitter.push(piece);
        loop {
            match splitter.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= CAP);
                    assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        assert!(splitter.buffered() <= CAP + chunk + 2);
    }
});
