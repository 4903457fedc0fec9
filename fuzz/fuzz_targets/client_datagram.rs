//! The viewer's datagram path, as surv-client runs it on each datagram a (hostile) server sends:
//! the frame tag and its objects segment, the recorder's check (a whole JPEG whose header reads),
//! and the decoder (header read under the pixel cap, decode to BGRX, the window's pixels, motion
//! mark and object boxes). No input may
//! panic, a decoded picture is never over the cap, and a bad datagram never stops the next good
//! frame from decoding with the same decompressor (the viewer keeps one for the whole stream).
#![no_main]

use std::cell::RefCell;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use surv_client::decoder::{decode_bgrx, mark_motion, mark_objects, MAX_FRAME_PIXELS};
use surv_client::recorder::{jpeg_dims, whole_jpeg};
use surv_proto::{FrameTag, MAX_UDP_PAYLOAD_BYTES};

/// A small, valid baseline JPEG: the frame that must still decode after any input.
fn good_frame() -> &'static [u8] {
    static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
    GOOD.get_or_init(|| {
        let pixels: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let image = turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: 16,
            pitch: 16 * 3,
            height: 16,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2)
            .expect("compressing the reference frame")
            .to_vec()
    })
}

/// ASan's default options for this binary. surv-client links openh264 (for MP4 recording, not on
/// this path), whose C++ decoder and encoder each define the same table; the default ODR check
/// (level 2) aborts at start on that. Level 1 still reports a global defined twice with different
/// sizes. `ASAN_OPTIONS` in the environment still overrides this.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_odr_violation=1".as_ptr()
}

thread_local! {
    /// Like the viewer's decoding thread: one decompressor and one output buffer for every frame.
    static DECODER: RefCell<(turbojpeg::Decompressor, Vec<u8>)> = RefCell::new((
        turbojpeg::Decompressor::new().expect("starting the JPEG decoder"),
        Vec::new(),
    ));
}

fuzz_target!(|datagram: &[u8]| {
    // The receive buffer holds one byte more than this; longer datagrams are ignored.
    if datagram.len() > MAX_UDP_PAYLOAD_BYTES {
        return;
    }
    // receiver.rs: an untagged datagram is ignored; a tagged one goes to the recorder and decoder.
    let Ok(tag) = FrameTag::decode(datagram) else {
        return;
    };
    // The objects it lists (title, boxes, --record-on LABELS): never more than the format allows.
    let objects = surv_proto::objects::decode(datagram).unwrap_or_default();
    assert!(objects.len() <= surv_proto::objects::MAX_OBJECTS);
    assert!(objects.is_empty() || tag.objects);
    // recorder/writer.rs: only whole JPEGs whose header reads are recorded.
    if let Ok((width, height)) = whole_jpeg(datagram).and_then(|()| jpeg_dims(datagram)) {
        assert!(width > 0 && height > 0);
    }
    DECODER.with(|cell| {
        let (d, out) = &mut *cell.borrow_mut();
        // decoder.rs's decode_loop, with a window.
        if let Ok((width, height)) = decode_bgrx(d, datagram, out) {
            assert!(width * height <= MAX_FRAME_PIXELS);
            assert_eq!(out.len(), width * height * 4);
            let mut pixels: Vec<u32> = out
                .chunks_exact(4)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                .collect();
            if tag.motion {
                mark_motion(&mut pixels, width, height);
            }
            mark_objects(&mut pixels, width, height, &objects);
        }
        // The next frame of the stream still shows.
        let next = decode_bgrx(d, good_frame(), out);
        assert!(
            matches!(next, Ok((16, 16))),
            "a good frame after this datagram: {next:?}"
        );
    });
});
