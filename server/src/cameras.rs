//! Cameras by name: each one captured once (its own capture path), with its own UDP data path
//! and motion state; every kind of watcher picks one (the first when it cannot say which).

use std::sync::Arc;

use crate::capture::{Capture, CaptureShared, FrameRx};
use crate::motion::watch::MotionState;
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
    /// The capture path's counters, the stream's shape and the source's state.
    pub capture: Arc<CaptureShared>,
    /// The UDP viewers' shared sockets and the sessions each serves.
    pub data: DataPath,
    /// What the motion detector reports (all zero when it does not run).
    pub motion: Arc<MotionState>,
}

impl Camera {
    /// The camera `name` watching `capture`'s frames.
    pub fn new(name: &str, capture: &Capture) -> Camera {
        Camera {
            name: name.to_string(),
            frames: capture.frames.clone(),
            capture: capture.shared.clone(),
            data: DataPath::default(),
            motion: Arc::default(),
        }
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

/// The cameras of a server, in the order they were configured (the first is the default).
#[derive(Debug)]
pub struct Cameras(Vec<Arc<Camera>>);

impl Cameras {
    /// At least one camera, names unique (checked by whoever built the list: the config).
    pub fn new(cameras: Vec<Camera>) -> Cameras {
        assert!(!cameras.is_empty(), "a server has at least one camera");
        Cameras(cameras.into_iter().map(Arc::new).collect())
    }

    /// The first camera: the one watchers get when they cannot name one.
    pub fn first(&self) -> &Arc<Camera> {
        &self.0[0]
    }

    /// The camera called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Camera>> {
        self.0.iter().find(|c| c.name == name)
    }

    /// The camera a watcher asked for, or the first one without a name; an unknown name is an
    /// error naming the cameras there are.
    pub fn pick(&self, name: Option<&str>) -> Result<&Arc<Camera>, String> {
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

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|c| c.name.as_str()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Camera>> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
