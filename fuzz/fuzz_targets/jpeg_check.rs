//! The capture path's JPEG intake: [`surv_server::jpeg::check`] (what makes bytes a picture)
//! then turbojpeg's header read through a [`JpegReader`], as `FrameSink::publish_jpeg` does. No
//! input may panic; a picture's size is never zero; and whatever the input did to the reader,
//! the next good frame still reads (one bad frame costs one frame).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use surv_server::jpeg::{check, JpegReader};

/// A real 48x32 JPEG, made once.
fn good() -> &'static [u8] {
    static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
    GOOD.get_or_init(|| {
        let pixels: Vec<u8> = (0..48 * 32 * 3).map(|i| (i % 251) as u8).collect();
        let image = turbojpeg::Image {
            pixels: &pixels[..],
            width: 48,
            pitch: 48 * 3,
            height: 32,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2)
            .expect("a test JPEG")
            .to_vec()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut reader = JpegReader::new();
    if let Ok(info) = check(data) {
        assert!(info.width > 0 && info.height > 0 && (1..=4).contains(&info.components));
        assert!(data.starts_with(&[0xFF, 0xD8]) && data.ends_with(&[0xFF, 0xD9]));
        // Only read by turbojpeg under the capture path's pixel cap.
        if u64::from(info.width) * u64::from(info.height) <= 7680 * 4320 {
            let _ = reader.header(data);
        }
    } else {
        // The capture path never hands these to turbojpeg; the reader must survive them anyway.
        let _ = reader.header(data);
    }
    let header = reader.header(good()).expect("the next good frame reads");
    assert_eq!((header.width, header.height), (48, 32));
});
