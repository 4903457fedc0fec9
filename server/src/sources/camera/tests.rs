//! Unit tests of the camera without a camera: mode ranking, pixel conversion, MJPEG decoding,
//! and the worker/handle pair driven through the `Device` seam by a stand-in device.
//!
//! Not covered here, for want of a device: `open_device` (nokhwa's mode negotiation) and the
//! `FRAME_TIMEOUT` stall, which would take five seconds of real time.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use surv_tests::fixtures::Subsamp;
use surv_tests::{test_jpeg, Picture};
use turbojpeg::Decompressor;

use super::convert::{decode_mjpeg, MjpegDecoder, CHROMA_TO_FULL, LUMA_TO_FULL};
use super::*;

fn mode(format: CaptureFormat, width: u32, height: u32, fps: u32) -> Mode {
    Mode {
        format,
        width,
        height,
        fps,
    }
}

#[test]
fn opening_a_missing_camera_names_the_device() {
    let err = open(99, 640, 480, 30).unwrap_err();
    assert!(matches!(err, SourceError::Open { .. }), "{err}");
    assert!(err.to_string().contains("/dev/video99"), "{err}");
}

#[test]
fn ranks_closest_size_then_rate_then_mjpeg() {
    use CaptureFormat::{Mjpeg, Yuyv};
    let offered = [
        mode(Yuyv, 640, 480, 30),
        mode(Mjpeg, 1920, 1080, 30),
        mode(Mjpeg, 640, 480, 30),
        mode(Yuyv, 1280, 720, 10),
        mode(Mjpeg, 1280, 720, 30),
        mode(Mjpeg, 1280, 720, 60),
        mode(Yuyv, 320, 240, 30),
    ];
    assert_eq!(
        rank_modes(&offered, 640, 480, 30)[..2],
        [mode(Mjpeg, 640, 480, 30), mode(Yuyv, 640, 480, 30)]
    );
    assert_eq!(
        rank_modes(&offered, 1280, 720, 30)[0],
        mode(Mjpeg, 1280, 720, 30)
    );
    assert_eq!(
        rank_modes(&offered, 1280, 720, 50)[0],
        mode(Mjpeg, 1280, 720, 60)
    );
    assert_eq!(
        rank_modes(&offered, 1280, 720, 10)[0],
        mode(Yuyv, 1280, 720, 10)
    );
    // No exact size: the nearest one.
    assert_eq!(
        rank_modes(&offered, 800, 600, 30)[0],
        mode(Mjpeg, 640, 480, 30)
    );
    assert_eq!(
        rank_modes(&offered, 4000, 3000, 30)[0],
        mode(Mjpeg, 1920, 1080, 30)
    );
    assert!(rank_modes(&[], 640, 480, 30).is_empty());
}

#[test]
fn yuyv_becomes_full_range_i420() {
    // 4x2 pixels: two rows of two Y0 U Y1 V macropixels.
    #[rustfmt::skip]
    let src = [
        16, 128, 235, 128,   126, 16, 126, 240,
        16, 128, 235, 128,   126, 18, 126, 238,
    ];
    let mut dst = Vec::new();
    yuyv_to_i420(&src, 4, 2, &mut dst).unwrap();
    #[rustfmt::skip]
    assert_eq!(dst, [
        // Y: 16 -> 0, 235 -> 255, 126 -> 128
        0, 255, 128, 128,
        0, 255, 128, 128,
        // U per 2x2 block: 128, (16 + 18) / 2 = 17 -> 1.6
        128, 2,
        // V: 128, (240 + 238) / 2 = 239 -> 254
        128, 254,
    ]);
}

#[test]
fn range_tables_hit_the_ends() {
    assert_eq!(LUMA_TO_FULL[16], 0);
    assert_eq!(LUMA_TO_FULL[0], 0);
    assert_eq!(LUMA_TO_FULL[235], 255);
    assert_eq!(LUMA_TO_FULL[255], 255);
    assert_eq!(CHROMA_TO_FULL[128], 128);
    assert!(CHROMA_TO_FULL[16] <= 1); // 0.5: the limited range is not centred on 128
    assert_eq!(CHROMA_TO_FULL[0], 0);
    assert_eq!(CHROMA_TO_FULL[240], 255);
}

#[test]
fn wrong_buffers_are_errors_not_panics() {
    let mut dst = Vec::new();
    assert_eq!(
        yuyv_to_i420(&[0; 15], 4, 2, &mut dst),
        Err(ConvertError::Length {
            width: 4,
            height: 2,
            got: 15,
            expected: 16
        })
    );
    assert!(yuyv_to_i420(&[0; 17], 4, 2, &mut dst).is_err());
    assert!(yuyv_to_i420(&[0; 12], 3, 2, &mut dst).is_err());
    assert!(yuyv_to_i420(&[], 0, 0, &mut dst).is_err());
    assert!(yuyv_to_i420(&[0; 16], u32::MAX - 1, 2, &mut dst).is_err());
    assert!(i422_to_i420(&[0; 15], 4, 2, &mut dst).is_err());
    assert!(i422_to_i420(&[0; 16], 4, 3, &mut dst).is_err());
}

#[test]
fn planar_422_rows_are_averaged() {
    // 2x2: Y 4 bytes, U 1x2, V 1x2.
    let src = [1, 2, 3, 4, 10, 21, 200, 100];
    let mut dst = Vec::new();
    i422_to_i420(&src, 2, 2, &mut dst).unwrap();
    assert_eq!(dst, [1, 2, 3, 4, 16, 150]);
}

#[test]
fn mjpeg_frames_decode_to_i420_or_rgb() {
    let mut decompressor = Decompressor::new().unwrap();
    let mut scratch = Vec::new();
    let mut frame = RawFrame::new();
    for (w, h, subsamp, format) in [
        (64, 48, Subsamp::Sub2x2, PixelFormat::I420),
        (64, 48, Subsamp::Sub2x1, PixelFormat::I420),
        (64, 48, Subsamp::None, PixelFormat::Rgb24),
        (63, 47, Subsamp::Sub2x2, PixelFormat::Rgb24),
    ] {
        let mut data = test_jpeg(w, h, Picture::Gradient(0), 90, subsamp);
        // V4L2 buffers carry the frame followed by stale bytes.
        data.extend_from_slice(&[0xAA; 100]);
        decode_mjpeg(&mut decompressor, &data, &mut frame, &mut scratch).unwrap();
        assert_eq!((frame.width, frame.height), (w as u32, h as u32));
        assert_eq!(frame.format, format, "{subsamp:?} {w}x{h}");
        assert_eq!(
            Some(frame.data.len()),
            format.frame_bytes(w as u32, h as u32)
        );
    }
    for garbage in [
        &b""[..],
        b"\xFF\xD8\xFF",
        b"continue",
        &test_jpeg(64, 48, Picture::Gradient(0), 90, Subsamp::Sub2x2)[..200],
    ] {
        assert!(decode_mjpeg(&mut decompressor, garbage, &mut frame, &mut scratch).is_err());
    }
}

/// A stand-in for the camera: hands the worker each frame the test sends, stamped with
/// capture times 1000, 1001…, and fails like an unplugged camera once the sender is dropped.
struct FakeDevice {
    frames: Receiver<Vec<u8>>,
    next_us: u64,
}

impl Device for FakeDevice {
    fn read_frame(&mut self, buffer: &mut Vec<u8>) -> Result<u64, String> {
        let bytes = self
            .frames
            .recv()
            .map_err(|_| "the device was unplugged".to_string())?;
        buffer.clear();
        buffer.extend_from_slice(&bytes);
        self.next_us += 1;
        Ok(self.next_us - 1)
    }
}

/// A device whose driver panics on the first read.
struct PanickingDevice;

impl Device for PanickingDevice {
    fn read_frame(&mut self, _: &mut Vec<u8>) -> Result<u64, String> {
        panic!("a driver bug");
    }
}

/// Frames from a list, then the device fails.
struct ListDevice(std::vec::IntoIter<Vec<u8>>);

impl Device for ListDevice {
    fn read_frame(&mut self, buffer: &mut Vec<u8>) -> Result<u64, String> {
        let bytes = self.0.next().ok_or("the list ran out")?;
        *buffer = bytes;
        Ok(7)
    }
}

const FAKE_DEVICE: &str = "/dev/video-fake";

/// A worker thread running `device` as `start_worker`'s would once the device is open, and
/// the [`Camera`] handle on it; the receiver hears when the worker thread has finished.
fn spawn_worker(
    device: impl Device + Send + 'static,
    mode: Mode,
) -> (Camera, Arc<Shared>, Receiver<()>) {
    let shared = Arc::new(Shared::default());
    let (done_tx, done) = mpsc::channel();
    let worker_shared = shared.clone();
    std::thread::spawn(move || {
        {
            let _guard = EndGuard(worker_shared.clone());
            run_worker(device, &worker_shared);
        }
        let _ = done_tx.send(());
    });
    let opened = Opened {
        mode,
        name: "stand-in".into(),
    };
    let camera = Camera::with_worker(
        FAKE_DEVICE.into(),
        opened,
        shared.clone(),
        MjpegDecoder::new().unwrap(),
    );
    (camera, shared, done)
}

/// A camera on a [`FakeDevice`]: frames sent reach the worker one at a time (the channel is a
/// rendezvous), dropping the sender unplugs it.
fn fake_camera(mode: Mode) -> (Camera, SyncSender<Vec<u8>>, Arc<Shared>, Receiver<()>) {
    let (tx, frames) = mpsc::sync_channel(0);
    let device = FakeDevice {
        frames,
        next_us: 1000,
    };
    let (camera, shared, done) = spawn_worker(device, mode);
    (camera, tx, shared, done)
}

/// Asserts that `next_frame` now fails with a read error naming the device and `reason`, on
/// every call: the capture path, not the camera, decides when to open it again.
fn assert_read_error_every_call(camera: &mut Camera, reason: &str) {
    let mut frame = RawFrame::new();
    for call in 0..3 {
        match camera.next_frame(&mut frame) {
            Err(e @ SourceError::Read { .. }) => {
                let text = e.to_string();
                assert!(text.contains(FAKE_DEVICE), "call {call}: {text}");
                assert!(text.contains(reason), "call {call}: {text}");
            }
            other => panic!("call {call}: expected a read error, got {other:?}"),
        }
    }
}

#[test]
fn yuyv_frames_arrive_as_i420_until_the_camera_is_unplugged() {
    let (mut camera, tx, _shared, done) = fake_camera(mode(CaptureFormat::Yuyv, 4, 2, 30));
    assert_eq!(camera.size(), (4, 2));
    assert_eq!(camera.fps(), 30);
    assert!(
        camera.describe().contains(FAKE_DEVICE),
        "{}",
        camera.describe()
    );
    #[rustfmt::skip]
    let yuyv = vec![
        16, 128, 235, 128,   126, 16, 126, 240,
        16, 128, 235, 128,   126, 18, 126, 238,
    ];
    let mut expected = Vec::new();
    yuyv_to_i420(&yuyv, 4, 2, &mut expected).unwrap();
    let mut frame = RawFrame::new();

    // V4L2 buffers may be longer than the frame: the tail is ignored.
    let mut padded = yuyv.clone();
    padded.extend_from_slice(&[0xAA; 8]);
    tx.send(padded).unwrap();
    camera.next_frame(&mut frame).unwrap();
    assert_eq!(
        (frame.width, frame.height, frame.format),
        (4, 2, PixelFormat::I420)
    );
    assert_eq!(frame.data, expected);
    assert_eq!(frame.capture_unix_us, 1000);

    // A short frame is that frame's problem only.
    tx.send(yuyv[..10].to_vec()).unwrap();
    let err = camera.next_frame(&mut frame).unwrap_err();
    assert!(matches!(err, SourceError::BadFrame { .. }), "{err}");
    assert!(err.to_string().contains("short YUYV frame"), "{err}");
    tx.send(yuyv).unwrap();
    camera.next_frame(&mut frame).unwrap();
    assert_eq!(frame.data, expected);
    assert_eq!(frame.capture_unix_us, 1002);

    drop(tx);
    assert_read_error_every_call(&mut camera, "the device was unplugged");
    done.recv_timeout(Duration::from_secs(5))
        .expect("the worker thread ends once its device fails");
}

#[test]
fn a_corrupt_mjpeg_frame_is_skipped_and_the_next_one_decodes() {
    let (mut camera, tx, _shared, _done) = fake_camera(mode(CaptureFormat::Mjpeg, 64, 48, 30));
    let jpeg = test_jpeg(64, 48, Picture::Gradient(0), 90, Subsamp::Sub2x1);
    let mut frame = RawFrame::new();

    tx.send(jpeg[..jpeg.len() / 2].to_vec()).unwrap();
    let err = camera.next_frame(&mut frame).unwrap_err();
    assert!(matches!(err, SourceError::BadFrame { .. }), "{err}");

    tx.send(jpeg).unwrap();
    camera.next_frame(&mut frame).unwrap();
    assert_eq!(
        (frame.width, frame.height, frame.format),
        (64, 48, PixelFormat::I420)
    );
    assert_eq!(
        Some(frame.data.len()),
        PixelFormat::I420.frame_bytes(64, 48)
    );
    assert_eq!(frame.capture_unix_us, 1001);

    drop(tx);
    assert_read_error_every_call(&mut camera, "the device was unplugged");
}

#[test]
fn a_worker_that_panics_is_reported_as_ended() {
    let (mut camera, _shared, done) =
        spawn_worker(PanickingDevice, mode(CaptureFormat::Mjpeg, 64, 48, 30));
    // The thread unwound without finishing: its sender went with it.
    assert_eq!(
        done.recv_timeout(Duration::from_secs(5)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_read_error_every_call(&mut camera, "the camera thread ended unexpectedly");
}

#[test]
fn dropping_the_camera_stops_the_worker_and_closes_the_device() {
    let (camera, tx, shared, done) = fake_camera(mode(CaptureFormat::Yuyv, 4, 2, 30));
    drop(camera);
    // If the worker is already waiting in a read, it stops after that frame; if it had not
    // got that far, it stops without reading and the send finds the device closed.
    let _ = tx.send(vec![0; 16]);
    done.recv_timeout(Duration::from_secs(5))
        .expect("the worker thread ends once the camera is dropped");
    assert_eq!(shared.lock().ended.as_deref(), Some("stopped"));
    assert!(tx.send(vec![0; 16]).is_err(), "the device is still open");
}

#[test]
fn frames_not_taken_in_time_are_replaced_by_the_newest() {
    let shared = Shared::default();
    let frames = vec![vec![1], vec![2, 2], vec![3, 3, 3]];
    let reason = capture_until_stopped(ListDevice(frames.into_iter()), &shared);
    assert_eq!(reason, "the list ran out");
    let slot = shared.lock();
    assert_eq!(
        slot.frame.as_ref().map(|f| &f.data[..]),
        Some(&[3, 3, 3][..])
    );
    assert_eq!(slot.replaced, 2);

    // Told to stop before a read: nothing more is read.
    let stopped = Shared::default();
    stopped.lock().stop = true;
    let reason = capture_until_stopped(ListDevice(vec![vec![9]].into_iter()), &stopped);
    assert_eq!(reason, "stopped");
    assert!(stopped.lock().frame.is_none());
}

#[test]
fn a_jpeg_cut_short_anywhere_does_not_spoil_the_next_frame() {
    let mut decoder = MjpegDecoder::new().unwrap();
    let mut frame = RawFrame::new();
    for subsamp in [Subsamp::Sub2x2, Subsamp::Sub2x1, Subsamp::None] {
        let jpeg = test_jpeg(64, 48, Picture::Gradient(0), 90, subsamp);
        for cut in 0..jpeg.len() {
            // The prefix may or may not decode; it must not panic, and the whole JPEG after
            // it must decode.
            let _ = decoder.decode(&jpeg[..cut], &mut frame);
            if let Err(e) = decoder.decode(&jpeg, &mut frame) {
                panic!("{subsamp:?}: after a prefix of {cut} bytes: {e}");
            }
            assert_eq!((frame.width, frame.height), (64, 48));
        }
    }
}
