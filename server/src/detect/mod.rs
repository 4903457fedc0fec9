//! Object detection: who or what is in the picture, from a pretrained COCO-80 detector (a
//! CenterNet with a MobileNetV3 backbone, converted to ONNX by `scripts/setup.sh`) run by ONNX
//! Runtime, loaded at run time.
//!
//! * `model.rs`: the runtime and the model (loaded once per server, shared by every camera),
//!   the picture made into the model's input (JPEG decoded at the smallest scale that still
//!   covers 512x512, then stretched to 512x512 RGB) and its output into [`Detection`]s.
//! * `presence.rs`: hysteresis, sans-IO: one event per presence of a label (start at the first
//!   frame that shows it, end once it has not been seen for `hold`), and its count.
//! * `watch.rs`: each camera's detector thread on the live stream (the newest frame wins,
//!   frames it was too busy for counted), reporting to the journal (OBJECT-START, OBJECT-END,
//!   counts for MQTT) and to [`watch::DetectState`] (`/status`, `/metrics`).

pub mod model;
pub mod presence;
#[cfg(test)]
mod tests;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

/// The model's 80 classes, in its class order, COCO's names with `_` for a space (as flags,
/// topics and the journal write them).
pub const LABELS: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic_light",
    "fire_hydrant",
    "stop_sign",
    "parking_meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports_ball",
    "kite",
    "baseball_bat",
    "baseball_glove",
    "skateboard",
    "surfboard",
    "tennis_racket",
    "bottle",
    "wine_glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot_dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "dining_table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell_phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy_bear",
    "hair_drier",
    "toothbrush",
];

/// The default `--detect-threshold`: the model's score at or above which an object counts.
/// Measured on the photographs in `tests/photos` (docs/PERFORMANCE.md, "Detection"): people
/// score 0.39 to 0.66, the best "person" in pictures without one 0.25 (a cat).
pub const DEFAULT_THRESHOLD: f32 = 0.35;

/// A label's class number, from its name (`traffic_light` or `traffic light`).
pub fn class_of(name: &str) -> Option<usize> {
    let name = name.trim().replace(' ', "_");
    LABELS.iter().position(|l| l.eq_ignore_ascii_case(&name))
}

/// Parses `--detect`'s list (`person,car`): the classes, in the order given, none twice.
pub fn parse_labels(text: &str) -> Result<Vec<usize>, String> {
    let mut classes = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let class = class_of(name).ok_or_else(|| {
            format!("{name:?} is not a COCO label the model knows (person, car, dog, …; see `surv-server --help`)")
        })?;
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    if classes.is_empty() {
        return Err("no label given (e.g. person,car)".into());
    }
    Ok(classes)
}

/// Which frames a camera's detector looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectOn {
    /// Every `every`-th frame.
    Every,
    /// Every `every`-th frame while the camera's motion detector sees motion (and the hold
    /// after it), no other: the usual way to keep the cost down.
    Motion,
}

/// One camera's detection settings (`--detect…`, or its `[[camera]]` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// The classes reported (indices into [`LABELS`]); others are ignored.
    pub classes: Vec<usize>,
    /// Analyse every Nth frame (at least 1).
    pub every: u64,
    pub on: DetectOn,
    /// Score (0–1) at or above which an object counts.
    pub threshold: f32,
    /// How long a label must go unseen for its presence to end.
    pub hold: Duration,
}

impl DetectConfig {
    pub fn new(classes: Vec<usize>) -> DetectConfig {
        DetectConfig {
            classes,
            every: 5,
            on: DetectOn::Every,
            threshold: DEFAULT_THRESHOLD,
            hold: Duration::from_secs(3),
        }
    }

    /// The classes by name, comma-separated.
    pub fn label_list(&self) -> String {
        let names: Vec<&str> = self.classes.iter().map(|&c| LABELS[c]).collect();
        names.join(",")
    }
}

/// Where the runtime library and the model file are (`--detect-runtime`, `--detect-model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    pub runtime: PathBuf,
    pub model: PathBuf,
}

impl Default for ModelPaths {
    /// Where `scripts/setup.sh` puts them, from the folder the server runs in.
    fn default() -> ModelPaths {
        ModelPaths {
            runtime: PathBuf::from("models/libonnxruntime.so"),
            model: PathBuf::from("models/centernet.onnx"),
        }
    }
}

pub use crate::frame::Detection;

impl Detection {
    pub fn label(&self) -> &'static str {
        LABELS.get(self.class).copied().unwrap_or("unknown")
    }
}
