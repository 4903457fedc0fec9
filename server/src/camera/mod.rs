//! V4L2 cameras through nokhwa, behind the Source trait.
//!
//! nokhwa's camera handle is not `Send`, so it lives on a worker thread of its own
//! (`surv-camera-N`) that only dequeues frames and copies their bytes out. [`Camera`] is `Send`:
//! [`Camera::next_frame`] takes the newest captured frame (older ones the capture loop did not
//! ask for in time are replaced, costing a memcpy and nothing more) and turns it into I420
//! there: MJPEG decoded by turbojpeg, YUYV converted by [`yuyv_to_i420`]. nokhwa is built
//! without its own decoders.
//!
//! If the worker stops (camera unplugged, driver error), `next_frame` reports it once and then
//! tries to open the device again, at most once per [`REOPEN_INTERVAL`], so a camera that comes
//! back resumes the stream.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nokhwa::utils::{
    CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};
use turbojpeg::{Colorspace, Decompressor, Image, Subsamp, YuvImage};

use crate::source::{unix_micros_now, PixelFormat, RawFrame, Source, SourceError};

/// How long opening the device may take before [`open`] gives up.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `next_frame` waits for a frame before reporting the camera as stalled.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// After the camera is lost, the least time between two attempts to open it again.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// Modes tried, best first, before giving up on a camera that refuses them.
const MODES_TRIED: usize = 4;
/// Largest decoded frame accepted from a camera: 8K UHD.
const MAX_PIXELS: usize = 7680 * 4320;

/// The pixel formats surv asks cameras for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaptureFormat {
    /// Motion JPEG: each frame a JPEG, small enough for USB 2 at high resolutions.
    Mjpeg,
    /// Packed 4:2:2, `Y0 U Y1 V` per pixel pair, limited range.
    Yuyv,
}

/// A mode a camera offers: format, size and frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: CaptureFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// The offered modes in order of preference for a `width × height` request at `fps`: closest
/// size first, then closest frame rate, then MJPEG before YUYV.
pub fn rank_modes(offered: &[Mode], width: u32, height: u32, fps: u32) -> Vec<Mode> {
    let mut ranked = offered.to_vec();
    ranked.sort_by_key(|m| {
        let dw = u64::from(m.width.abs_diff(width));
        let dh = u64::from(m.height.abs_diff(height));
        (dw * dw + dh * dh, m.fps.abs_diff(fps), m.format)
    });
    ranked.dedup();
    ranked
}

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("unsupported frame size {width}x{height}: must be even, non-zero and at most 8K")]
    Size { width: u32, height: u32 },
    #[error("{got} bytes for a {width}x{height} frame; expected {expected}")]
    Length {
        width: u32,
        height: u32,
        got: usize,
        expected: usize,
    },
}

/// Checks that `width × height` is even, non-zero and not huge, and that `src` holds 2 bytes
/// per pixel (YUYV, planar 4:2:2); returns (width, height) as usize.
fn check_422(src: &[u8], width: u32, height: u32) -> Result<(usize, usize), ConvertError> {
    let (w, h) = (width as usize, height as usize);
    let pixels = w.checked_mul(h).filter(|&n| n <= MAX_PIXELS);
    if w == 0 || h == 0 || w & 1 != 0 || h & 1 != 0 || pixels.is_none() {
        return Err(ConvertError::Size { width, height });
    }
    let expected = w * h * 2;
    if src.len() != expected {
        return Err(ConvertError::Length {
            width,
            height,
            got: src.len(),
            expected,
        });
    }
    Ok((w, h))
}

/// Limited-range (16–235 luma, 16–240 chroma) to full-range tables, as JPEG expects.
const fn range_table(chroma: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let v = i as i32;
        let full = if chroma {
            128 + ((v - 128) * 255 * 2 + 224).div_euclid(224 * 2)
        } else {
            ((v - 16) * 255 * 2 + 219).div_euclid(219 * 2)
        };
        table[i] = if full < 0 {
            0
        } else if full > 255 {
            255
        } else {
            full as u8
        };
        i += 1;
    }
    table
}
static LUMA_TO_FULL: [u8; 256] = range_table(false);
static CHROMA_TO_FULL: [u8; 256] = range_table(true);

/// Converts a packed YUYV (4:2:2, `Y0 U Y1 V`, limited range as V4L2 cameras send it) frame to
/// full-range I420; chroma of each pair of rows is averaged. `src` must be exactly
/// `width × height × 2` bytes.
pub fn yuyv_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = check_422(src, width, height)?;
    dst.resize(w * h * 3 / 2, 0);
    let (y_plane, chroma) = dst.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
    for (y_row, src_row) in y_plane.chunks_exact_mut(w).zip(src.chunks_exact(2 * w)) {
        for (y, pair) in y_row.iter_mut().zip(src_row.chunks_exact(2)) {
            *y = LUMA_TO_FULL[usize::from(pair[0])];
        }
    }
    let rows = src.chunks_exact(4 * w);
    let chroma_rows = u_plane
        .chunks_exact_mut(w / 2)
        .zip(v_plane.chunks_exact_mut(w / 2));
    for (two_rows, (u_row, v_row)) in rows.zip(chroma_rows) {
        let (top, bottom) = two_rows.split_at(2 * w);
        let pixels = top.chunks_exact(4).zip(bottom.chunks_exact(4));
        for ((a, b), (u, v)) in pixels.zip(u_row.iter_mut().zip(v_row.iter_mut())) {
            let avg = |i: usize| (u16::from(a[i]) + u16::from(b[i])).div_ceil(2) as usize;
            *u = CHROMA_TO_FULL[avg(1)];
            *v = CHROMA_TO_FULL[avg(3)];
        }
    }
    Ok(())
}

/// Converts planar 4:2:2 (Y `w × h`, then U and V `w/2 × h`, as turbojpeg decodes most webcam
/// MJPEG) to I420 by averaging each pair of chroma rows. `src` must be exactly `w × h × 2` bytes.
pub fn i422_to_i420(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = check_422(src, width, height)?;
    dst.resize(w * h * 3 / 2, 0);
    let (src_y, src_c) = src.split_at(w * h);
    let (dst_y, dst_c) = dst.split_at_mut(w * h);
    dst_y.copy_from_slice(src_y);
    for (src_plane, dst_plane) in src_c
        .chunks_exact(w * h / 2)
        .zip(dst_c.chunks_exact_mut(w * h / 4))
    {
        let rows = src_plane.chunks_exact(w);
        for (two_rows, out) in rows.zip(dst_plane.chunks_exact_mut(w / 2)) {
            let (top, bottom) = two_rows.split_at(w / 2);
            for ((o, a), b) in out.iter_mut().zip(top).zip(bottom) {
                *o = (u16::from(*a) + u16::from(*b)).div_ceil(2) as u8;
            }
        }
    }
    Ok(())
}

/// Decodes one MJPEG frame into `frame`: I420 when the JPEG is 4:2:0 or 4:2:2 YCbCr with an
/// even size (no colour conversion), RGB24 otherwise. `scratch` holds 4:2:2 planes.
fn decode_mjpeg(
    decompressor: &mut Decompressor,
    jpeg: &[u8],
    frame: &mut RawFrame,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let header = decompressor
        .read_header(jpeg)
        .map_err(|e| format!("not a JPEG: {e}"))?;
    let (w, h) = (header.width, header.height);
    if w == 0 || h == 0 || w.saturating_mul(h) > MAX_PIXELS {
        return Err(format!("JPEG of {w}x{h} pixels"));
    }
    let (width, height) = (w as u32, h as u32);
    let even = w & 1 == 0 && h & 1 == 0;
    let decode_err = |e: turbojpeg::Error| format!("corrupt JPEG: {e}");
    match header.subsamp {
        Subsamp::Sub2x2 if even && header.colorspace == Colorspace::YCbCr => {
            frame.data.resize(w * h * 3 / 2, 0);
            let image = YuvImage {
                pixels: &mut frame.data[..],
                width: w,
                align: 1,
                height: h,
                subsamp: Subsamp::Sub2x2,
            };
            decompressor
                .decompress_to_yuv(jpeg, image)
                .map_err(decode_err)?;
            frame.format = PixelFormat::I420;
        }
        Subsamp::Sub2x1 if even && header.colorspace == Colorspace::YCbCr => {
            scratch.resize(w * h * 2, 0);
            let image = YuvImage {
                pixels: &mut scratch[..],
                width: w,
                align: 1,
                height: h,
                subsamp: Subsamp::Sub2x1,
            };
            decompressor
                .decompress_to_yuv(jpeg, image)
                .map_err(decode_err)?;
            i422_to_i420(scratch, width, height, &mut frame.data).map_err(|e| e.to_string())?;
            frame.format = PixelFormat::I420;
        }
        _ => {
            frame.data.resize(w * h * 3, 0);
            let image = Image {
                pixels: &mut frame.data[..],
                width: w,
                pitch: 3 * w,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            };
            decompressor.decompress(jpeg, image).map_err(decode_err)?;
            frame.format = PixelFormat::Rgb24;
        }
    }
    frame.width = width;
    frame.height = height;
    Ok(())
}

/// One dequeued frame, still in the camera's format.
struct Captured {
    data: Vec<u8>,
    capture_unix_us: u64,
}

/// What the worker and [`Camera`] share.
#[derive(Default)]
struct Slot {
    /// The newest frame not yet taken.
    frame: Option<Captured>,
    /// A buffer for the worker to fill next (the one `next_frame` gave back).
    spare: Vec<u8>,
    /// Frames replaced before `next_frame` took them.
    replaced: u64,
    /// Set by [`Camera`] when it is dropped: the worker stops after its current frame.
    stop: bool,
    /// Set when the worker has ended, with the reason.
    ended: Option<String>,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A worker that panicked holding the lock leaves a usable slot: recover it.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks the worker ended, whichever way it leaves (a panic in nokhwa included).
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let mut slot = self.0.lock();
        if slot.ended.is_none() {
            slot.ended = Some("the camera thread ended unexpectedly".into());
        }
        self.0.changed.notify_all();
    }
}

/// What the worker reports once the device is open.
struct Opened {
    mode: Mode,
    name: String,
}

/// A V4L2 camera delivering I420 (or RGB24 for unusual MJPEG) frames.
pub struct Camera {
    index: u32,
    device: String,
    name: String,
    mode: Mode,
    shared: Arc<Shared>,
    /// The worker ended and its reason was reported; the next call tries to reopen.
    lost: Option<Instant>,
    decompressor: Decompressor,
    /// The frame being converted, in the camera's format.
    captured: Vec<u8>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera")
            .field("device", &self.device)
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Opens `/dev/video<index>` in the mode closest to `width × height` at `fps` (MJPEG preferred
/// over YUYV) and starts capturing. Safe to call on any thread: the device itself lives on a
/// worker thread. Fails with [`SourceError::Open`] naming the device if it cannot be opened.
pub fn open(index: u32, width: u32, height: u32, fps: u32) -> Result<Camera, SourceError> {
    let device = format!("/dev/video{index}");
    let (shared, opened) =
        start_worker(index, width, height, fps).map_err(|reason| SourceError::Open {
            device: device.clone(),
            reason,
        })?;
    tracing::info!(
        device = %device,
        name = %opened.name,
        format = ?opened.mode.format,
        width = opened.mode.width,
        height = opened.mode.height,
        fps = opened.mode.fps,
        "camera open"
    );
    let decompressor = Decompressor::new().map_err(|e| SourceError::Open {
        device: device.clone(),
        reason: format!("no JPEG decoder: {e}"),
    })?;
    Ok(Camera {
        index,
        device,
        name: opened.name,
        mode: opened.mode,
        shared,
        lost: None,
        decompressor,
        captured: Vec::new(),
        scratch: Vec::new(),
    })
}

/// Spawns the worker and waits until it has opened the device (or failed to).
fn start_worker(
    index: u32,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(Arc<Shared>, Opened), String> {
    let shared = Arc::new(Shared::default());
    let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
    let worker_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("surv-camera-{index}"))
        .spawn(move || {
            let _guard = EndGuard(worker_shared.clone());
            let camera = match open_device(index, width, height, fps) {
                Ok((camera, opened)) => {
                    if opened_tx.send(Ok(opened)).is_err() {
                        return; // open() gave up waiting
                    }
                    camera
                }
                Err(reason) => {
                    let _ = opened_tx.send(Err(reason));
                    return;
                }
            };
            let reason = capture_until_stopped(camera, &worker_shared);
            // The device is closed (dropped) by now, so a reopen finds it free.
            worker_shared.lock().ended = Some(reason);
            worker_shared.changed.notify_all();
        })
        .map_err(|e| format!("cannot start the camera thread: {e}"))?;
    match opened_rx.recv_timeout(OPEN_TIMEOUT) {
        Ok(Ok(opened)) => Ok((shared, opened)),
        Ok(Err(reason)) => Err(reason),
        Err(RecvTimeoutError::Timeout) => {
            shared.lock().stop = true;
            Err(format!("the device did not open within {OPEN_TIMEOUT:?}"))
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err("the camera thread failed while opening the device".into())
        }
    }
}

/// On the worker: opens the device, picks the mode, starts the stream.
fn open_device(
    index: u32,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(nokhwa::Camera, Opened), String> {
    const WANTED: [FrameFormat; 2] = [FrameFormat::MJPEG, FrameFormat::YUYV];
    let any_usable = RequestedFormat::with_formats(RequestedFormatType::None, &WANTED);
    let mut camera =
        nokhwa::Camera::new(CameraIndex::Index(index), any_usable).map_err(|e| e.to_string())?;
    let offered: Vec<Mode> = camera
        .compatible_camera_formats()
        .map_err(|e| format!("listing its modes: {e}"))?
        .into_iter()
        .filter_map(mode_of)
        .collect();
    let mut last_error = "the camera offers no MJPEG or YUYV mode".to_string();
    let mut chosen = false;
    for mode in rank_modes(&offered, width, height, fps)
        .into_iter()
        .take(MODES_TRIED)
    {
        let format = match mode.format {
            CaptureFormat::Mjpeg => FrameFormat::MJPEG,
            CaptureFormat::Yuyv => FrameFormat::YUYV,
        };
        let wanted = CameraFormat::new(Resolution::new(mode.width, mode.height), format, mode.fps);
        let exactly = RequestedFormat::with_formats(RequestedFormatType::Exact(wanted), &WANTED);
        match camera.set_camera_requset(exactly) {
            Ok(_) => {
                chosen = true;
                break;
            }
            Err(e) => last_error = format!("setting {mode:?}: {e}"),
        }
    }
    if !chosen {
        return Err(last_error);
    }
    camera
        .open_stream()
        .map_err(|e| format!("starting the stream: {e}"))?;
    let mode = mode_of(camera.camera_format())
        .ok_or_else(|| format!("the camera switched to {}", camera.camera_format()))?;
    let name = camera.info().human_name();
    Ok((camera, Opened { mode, name }))
}

fn mode_of(format: CameraFormat) -> Option<Mode> {
    let capture_format = match format.format() {
        FrameFormat::MJPEG => CaptureFormat::Mjpeg,
        FrameFormat::YUYV => CaptureFormat::Yuyv,
        _ => return None,
    };
    Some(Mode {
        format: capture_format,
        width: format.width(),
        height: format.height(),
        fps: format.frame_rate(),
    })
}

/// On the worker: copies each frame into the slot until told to stop or the camera fails;
/// returns why it stopped.
fn capture_until_stopped(mut camera: nokhwa::Camera, shared: &Shared) -> String {
    loop {
        let mut buffer = {
            let mut slot = shared.lock();
            if slot.stop {
                return "stopped".into();
            }
            std::mem::take(&mut slot.spare)
        };
        let bytes = match camera.frame_raw() {
            Ok(bytes) => bytes,
            Err(e) => return e.to_string(),
        };
        let capture_unix_us = unix_micros_now();
        // V4L2 mmap buffers may be longer than the frame (MJPEG especially): `next_frame`
        // trims what it needs.
        buffer.clear();
        buffer.extend_from_slice(&bytes);
        let mut slot = shared.lock();
        if slot.stop {
            return "stopped".into();
        }
        let newest = Captured {
            data: buffer,
            capture_unix_us,
        };
        if let Some(old) = slot.frame.replace(newest) {
            slot.spare = old.data;
            slot.replaced += 1;
        }
        shared.changed.notify_all();
    }
}

impl Camera {
    /// Waits for the newest frame, swapping its bytes into `self.captured`.
    fn take_frame(&mut self) -> Result<u64, SourceError> {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        let mut slot = self.shared.lock();
        loop {
            if let Some(newest) = slot.frame.take() {
                let old = std::mem::replace(&mut self.captured, newest.data);
                if slot.spare.capacity() < old.capacity() {
                    slot.spare = old;
                }
                return Ok(newest.capture_unix_us);
            }
            if let Some(reason) = &slot.ended {
                let reason = reason.clone();
                drop(slot);
                self.lost = Some(Instant::now());
                return Err(self.read_error(reason));
            }
            let now = Instant::now();
            if now >= deadline {
                let reason = format!("no frame for {FRAME_TIMEOUT:?}");
                return Err(self.read_error(reason));
            }
            slot = self
                .shared
                .changed
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn read_error(&self, reason: String) -> SourceError {
        SourceError::Read {
            device: self.device.clone(),
            reason,
        }
    }

    /// After the worker ended: opens the device again, in the mode it had.
    fn reopen(&mut self, lost_at: Instant) -> Result<(), SourceError> {
        if lost_at.elapsed() < REOPEN_INTERVAL {
            return Err(self.read_error("the camera is gone; retrying shortly".into()));
        }
        self.lost = Some(Instant::now());
        let Mode {
            width, height, fps, ..
        } = self.mode;
        let (shared, opened) = start_worker(self.index, width, height, fps)
            .map_err(|reason| self.read_error(format!("reopening: {reason}")))?;
        tracing::info!(device = %self.device, mode = ?opened.mode, "camera reopened");
        self.shared = shared;
        self.mode = opened.mode;
        self.name = opened.name;
        self.lost = None;
        Ok(())
    }
}

impl Source for Camera {
    fn describe(&self) -> String {
        let Mode {
            format,
            width,
            height,
            fps,
        } = self.mode;
        format!(
            "camera {} ({}) {width}x{height}@{fps} {format:?}",
            self.device, self.name
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.mode.width, self.mode.height)
    }

    fn fps(&self) -> u32 {
        self.mode.fps
    }

    fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError> {
        if let Some(lost_at) = self.lost {
            self.reopen(lost_at)?;
        }
        let capture_unix_us = self.take_frame()?;
        let bad = |reason: String| SourceError::BadFrame {
            device: self.device.clone(),
            reason,
        };
        match self.mode.format {
            CaptureFormat::Mjpeg => decode_mjpeg(
                &mut self.decompressor,
                &self.captured,
                frame,
                &mut self.scratch,
            )
            .map_err(bad)?,
            CaptureFormat::Yuyv => {
                let Mode { width, height, .. } = self.mode;
                let expected = (width as usize) * (height as usize) * 2;
                let yuyv = self.captured.get(..expected).ok_or_else(|| {
                    bad(format!(
                        "short YUYV frame: {} bytes, expected {expected}",
                        self.captured.len()
                    ))
                })?;
                yuyv_to_i420(yuyv, width, height, &mut frame.data)
                    .map_err(|e| bad(e.to_string()))?;
                (frame.width, frame.height, frame.format) = (width, height, PixelFormat::I420);
            }
        }
        frame.capture_unix_us = capture_unix_us;
        Ok(())
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let mut slot = self.shared.lock();
        slot.stop = true;
        if slot.replaced > 0 {
            tracing::debug!(
                device = %self.device,
                replaced = slot.replaced,
                "camera frames replaced before they were used"
            );
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// A JPEG from turbojpeg at the given subsampling, of a known picture.
    fn jpeg(width: usize, height: usize, subsamp: Subsamp) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let image = Image {
            pixels: &pixels[..],
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 90, subsamp).unwrap().to_vec()
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
            let mut data = jpeg(w, h, subsamp);
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
            &jpeg(64, 48, Subsamp::Sub2x2)[..200],
        ] {
            assert!(decode_mjpeg(&mut decompressor, garbage, &mut frame, &mut scratch).is_err());
        }
    }
}
