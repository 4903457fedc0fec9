//! Cameras by name: each one captured once (its own capture path), with its own UDP data path
//! and motion state; every kind of watcher picks one (the first when it cannot say which).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureShared, FrameRx};
use crate::http::status::RateMeter;
use crate::motion::watch::MotionState;
use crate::watchers::forward::Forwarding;
use crate::watchers::udp::DataPath;

pub use surv_proto::MAX_CAMERA_NAME_BYTES;

/// The name a camera gets when none is given (`--camera-name`'s default).
pub const DEFAULT_CAMERA_NAME: &str = "main";

/// One camera as the watchers see it: its newest frame, its capture path's state and
/// counters, and the UDP viewers watching it.
pub struct Camera {
    /// Letters, digits, `-` and `_` ([`check_name`]): it appears in URLs, topics and the journal.
    pub name: String,
    /// The newest frame.
    pub frames: FrameRx,
    /// The capture path's counters, the stream's shape, the source's state, and the H.264
    /// feed (`capture.h264`).
    pub capture: Arc<CaptureShared>,
    /// The UDP viewers' shared sockets and the sessions each serves.
    pub data: DataPath,
    /// What the motion detector reports (all zero when it does not run).
    pub motion: Arc<MotionState>,
    /// What the object detector reports (all zero when it does not run).
    pub detect: Arc<crate::detect::watch::DetectState>,
    /// Cancelled when the camera ends: at shutdown, or when a reload removes or changes it.
    /// Everything serving this camera (its sessions, fan-out, own ports, motion detector)
    /// stops on it.
    pub stop: CancellationToken,
    /// Set before `stop` when a reload ends the camera, so that its watchers leave with reason
    /// `removed` rather than `shutdown`.
    retired: AtomicBool,
    /// Its measured frame rate, for `/status`.
    pub(crate) rate: RateMeter,
    /// The fan-out thread sending its frames to its UDP viewers, while it runs.
    pub(crate) fanout: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Its `--forward`s (set once, when they start), in the order given: where each sends
    /// its RTP, its counters, its SDP. Each destination is its own RTP stream (SSRC,
    /// sequence numbers) over the camera's one H.264 feed and its packets made once.
    pub forwards: OnceLock<Vec<Arc<Forwarding>>>,
    /// Its RTP packets, made once per frame for every RTSP session and the forward.
    pub rtp: Arc<crate::rtp::CameraPackets>,
    /// The one writer of its H.264 RTSP sessions (over TCP and UDP), while any plays.
    pub rtsp_writer: crate::watchers::rtsp::H264Writer,
}

impl Camera {
    /// The camera `name` watching `capture`'s frames; it ends when [`Camera::stop`] is
    /// cancelled ([`crate::run_with`] does at shutdown).
    pub fn new(name: &str, capture: &Capture) -> Camera {
        Camera::ending_with(name, capture, CancellationToken::new())
    }

    /// The camera `name` watching `capture`'s frames, ending when `stop` is cancelled.
    pub fn ending_with(name: &str, capture: &Capture, stop: CancellationToken) -> Camera {
        capture.shared.h264.set_label(name);
        Camera {
            name: name.to_string(),
            frames: capture.frames.clone(),
            capture: capture.shared.clone(),
            data: DataPath::default(),
            motion: Arc::default(),
            detect: Arc::default(),
            rate: RateMeter::new(
                capture.shared.stats.captured.load(Relaxed),
                std::time::Instant::now(),
            ),
            stop,
            retired: AtomicBool::new(false),
            fanout: Mutex::new(None),
            forwards: OnceLock::new(),
            rtsp_writer: Default::default(),
            rtp: Arc::default(),
        }
    }

    /// Ends the camera for a reload: its watchers leave with reason `removed`.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
        self.stop.cancel();
    }

    /// Whether a reload ended it ([`Camera::retire`]).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera")
            .field("name", &self.name)
            .field("source", &self.capture.source)
            .finish()
    }
}

/// Whether `name` may name a camera: 1 to [`MAX_CAMERA_NAME_BYTES`] letters, digits, `-`, `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    if surv_proto::is_valid_camera_name(name.as_bytes()) {
        return Ok(());
    }
    if name.is_empty() || name.len() > MAX_CAMERA_NAME_BYTES {
        return Err(format!(
            "a camera name is 1 to {MAX_CAMERA_NAME_BYTES} characters, not {}",
            name.len()
        ));
    }
    let c = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        .unwrap_or(' ');
    Err(format!(
        "camera name {name:?}: {c:?} is not a letter, digit, '-' or '_'"
    ))
}

/// The cameras of a server, in the order they were configured (the first is the default). A
/// reload replaces the list; readers take a snapshot ([`Cameras::list`]) and hold no lock.
#[derive(Debug)]
pub struct Cameras(RwLock<Arc<[Arc<Camera>]>>);

impl Cameras {
    /// At least one camera, names unique (checked by whoever built the list: the config).
    pub fn new(cameras: Vec<Camera>) -> Cameras {
        Cameras::of(cameras.into_iter().map(Arc::new).collect())
    }

    /// At least one camera, shared already.
    pub fn of(cameras: Vec<Arc<Camera>>) -> Cameras {
        assert!(!cameras.is_empty(), "a server has at least one camera");
        Cameras(RwLock::new(cameras.into()))
    }

    /// Every camera now, in order.
    pub fn list(&self) -> Arc<[Arc<Camera>]> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `cameras` in place of the list (a reload): watchers that pick a camera from now on
    /// pick among these.
    pub fn replace(&self, cameras: Vec<Arc<Camera>>) {
        assert!(!cameras.is_empty(), "a server has at least one camera");
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = cameras.into();
    }

    /// The first camera: the one watchers get when they cannot name one.
    pub fn first(&self) -> Arc<Camera> {
        self.list()[0].clone()
    }

    /// The camera called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Camera>> {
        self.list().iter().find(|c| c.name == name).cloned()
    }

    /// The camera a watcher asked for, or the first one without a name; an unknown name is an
    /// error naming the cameras there are.
    pub fn pick(&self, name: Option<&str>) -> Result<Arc<Camera>, String> {
        match name {
            None => Ok(self.first()),
            Some(name) => self.get(name).ok_or_else(|| {
                format!(
                    "no camera {name:?} here (cameras: {})",
                    self.names().join(", ")
                )
            }),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.list().iter().map(|c| c.name.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_digits_dashes_and_underscores() {
        for good in ["main", "front-door", "cam_2", "A", &"x".repeat(32)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "front door", "a/b", "é", "cam.1", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
