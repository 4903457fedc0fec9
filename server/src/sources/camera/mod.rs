//! V4L2 cameras through nokhwa, behind the FrameReader trait: the [`Camera`] handle, [`open`], and
//! the worker thread that owns the device.
//!
//! nokhwa's camera handle is not `Send`, so it lives on a worker thread of its own
//! (`surv-camera-N`) that only dequeues frames and copies their bytes out. [`Camera`] is `Send`:
//! [`Camera::next_frame`] takes the newest captured frame (older ones the capture loop did not
//! ask for in time are replaced, costing a memcpy and nothing more) and turns it into I420
//! there: MJPEG decoded by turbojpeg, YUYV converted by [`yuyv_to_i420`]. nokhwa is built
//! without its own decoders.
//!
//! If the worker stops (camera unplugged, driver error), `next_frame` returns
//! [`SourceError::Read`] on every call from then on. The camera does not reopen itself: the
//! capture path owns retry and backoff for every source, so it drops this `Camera` and calls
//! [`open`] again. One unusable frame (corrupt MJPEG) is a [`SourceError::BadFrame`] instead,
//! and the next call may succeed.
//!
//! Modes and their ranking are in `modes.rs`, pixel conversion and MJPEG decoding in
//! `convert.rs`.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::frame::{PixelFormat, RawFrame};
use crate::sources::{unix_micros_now, FrameReader, SourceError};
use nokhwa::utils::{CameraFormat, CameraIndex, RequestedFormat, RequestedFormatType, Resolution};

mod convert;
mod modes;
#[cfg(test)]
mod tests;

pub use convert::{i422_to_i420, yuyv_to_i420, ConvertError};
pub use modes::{rank_modes, CaptureFormat, Mode};

use convert::MjpegDecoder;
use modes::{frame_format, mode_of, WANTED};

/// How long opening the device may take before [`open`] gives up.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `next_frame` waits for a frame before reporting the camera as stalled.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Modes tried, best first, before giving up on a camera that refuses them.
const MODES_TRIED: usize = 4;

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

/// What the worker reads frames from: the nokhwa camera, or a test's stand-in.
trait Device {
    /// Blocks for the next frame and copies its bytes into `buffer`, replacing what was there;
    /// returns the capture time (µs since the Unix epoch), or why the device failed.
    fn read_frame(&mut self, buffer: &mut Vec<u8>) -> Result<u64, String>;
}

impl Device for nokhwa::Camera {
    fn read_frame(&mut self, buffer: &mut Vec<u8>) -> Result<u64, String> {
        let bytes = self.frame_raw().map_err(|e| e.to_string())?;
        let capture_unix_us = unix_micros_now();
        // V4L2 mmap buffers may be longer than the frame (MJPEG especially): `next_frame`
        // trims what it needs.
        buffer.clear();
        buffer.extend_from_slice(&bytes);
        Ok(capture_unix_us)
    }
}

/// A V4L2 camera delivering I420 (or RGB24 for unusual MJPEG) frames.
pub struct Camera {
    device: String,
    name: String,
    mode: Mode,
    shared: Arc<Shared>,
    mjpeg: MjpegDecoder,
    /// The frame being converted, in the camera's format.
    captured: Vec<u8>,
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
    // Before the worker starts, so that a failure here leaves no thread behind.
    let mjpeg = MjpegDecoder::new().map_err(|e| SourceError::Open {
        device: device.clone(),
        reason: format!("no JPEG decoder: {e}"),
    })?;
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
    Ok(Camera::with_worker(device, opened, shared, mjpeg))
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
            run_worker(camera, &worker_shared);
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
        let format = frame_format(mode.format);
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

/// On the worker, once the device is open: captures until stopped or the device fails, closes
/// the device, then marks the worker ended with the reason.
fn run_worker(device: impl Device, shared: &Shared) {
    let reason = capture_until_stopped(device, shared);
    // The device is closed (dropped) by now, so whoever opens it next finds it free.
    shared.lock().ended = Some(reason);
    shared.changed.notify_all();
}

/// On the worker: copies each frame into the slot until told to stop or the device fails;
/// returns why it stopped.
fn capture_until_stopped(mut device: impl Device, shared: &Shared) -> String {
    loop {
        let mut buffer = {
            let mut slot = shared.lock();
            if slot.stop {
                return "stopped".into();
            }
            std::mem::take(&mut slot.spare)
        };
        let capture_unix_us = match device.read_frame(&mut buffer) {
            Ok(at) => at,
            Err(reason) => return reason,
        };
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
    /// The handle of a worker that has opened `device` in `opened.mode`.
    fn with_worker(
        device: String,
        opened: Opened,
        shared: Arc<Shared>,
        mjpeg: MjpegDecoder,
    ) -> Camera {
        Camera {
            device,
            name: opened.name,
            mode: opened.mode,
            shared,
            mjpeg,
            captured: Vec::new(),
        }
    }

    /// Waits for the newest frame, swapping its bytes into `self.captured`. Once the worker
    /// has ended and its last frame is taken, every call fails with the reason it ended.
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
                return Err(self.read_error(reason.clone()));
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
}

impl FrameReader for Camera {
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
        let capture_unix_us = self.take_frame()?;
        let bad = |reason: String| SourceError::BadFrame {
            device: self.device.clone(),
            reason,
        };
        match self.mode.format {
            CaptureFormat::Mjpeg => self.mjpeg.decode(&self.captured, frame).map_err(bad)?,
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
