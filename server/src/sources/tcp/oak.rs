//! What an OAK that detects on the device says is in a frame (the detection list of its
//! 256-byte ABCDE header, see [`super::framing`]), made into surv's [`Detection`]s.
//!
//! The YOLO people tracker sends one entry per tracklet that is tracked:
//!
//! ```text
//! ['ID 1', 320, 240, 'person', [100, 100, 300, 400], [0, 0, 0, 0], 29.87]
//!   text   centroid  label     box x1, y1, x2, y2    line crossings fps
//! ```
//!
//! The label (a name, or the class number when the script's `labelMap` lookup failed) and the
//! box are used; the text, the centroid, the line-crossing counters and the fps are not. The box
//! is in pixels of the network's input ([`NETWORK_INPUT_PIXELS`] square), made a fraction of
//! the picture; the device applied its confidence threshold and sends no score, so every
//! object scores [`DEVICE_SCORE`]. Entries with no label or box (the mobilenet tracker sends
//! `['ID 1', cx, cy]`) or with one surv cannot use (a label outside COCO-80, a box that is not
//! four finite numbers) are skipped and counted, not an error.

use crate::detect::{class_of, LABELS};
use crate::frame::Detection;

use super::pylit::Value;

/// Width and height, in pixels, of the picture the device's network sees (the script's
/// `setPreviewSize(640, 640)` for YOLO), which the boxes are in. The camera's frames are the
/// same view, so a box as a fraction of this square is a box as a fraction of the frame.
pub const NETWORK_INPUT_PIXELS: f64 = 640.0;

/// The score of every object the device reports: it sends none, having kept only those over
/// its own confidence threshold, so each counts as certain.
pub const DEVICE_SCORE: f32 = 1.0;

/// The list's entries surv can use, and how many it could not.
pub fn detections(list: &[Value]) -> (Vec<Detection>, usize) {
    let mut found = Vec::new();
    for entry in list {
        if let Some(d) = detection(entry) {
            found.push(d);
        }
    }
    let skipped = list.len() - found.len();
    (found, skipped)
}

fn detection(entry: &Value) -> Option<Detection> {
    let Value::List(fields) = entry else {
        return None;
    };
    let class = match fields.get(3)? {
        Value::Str(name) => class_of(name)?,
        Value::Int(n) => usize::try_from(*n).ok().filter(|&c| c < LABELS.len())?,
        _ => return None,
    };
    let Value::List(corners) = fields.get(4)? else {
        return None;
    };
    let [x1, y1, x2, y2] = corners.as_slice() else {
        return None;
    };
    let fraction = |v: &Value| {
        let v = v.as_f64().filter(|v| v.is_finite())?;
        Some((v / NETWORK_INPUT_PIXELS).clamp(0.0, 1.0))
    };
    let (x1, y1, x2, y2) = (fraction(x1)?, fraction(y1)?, fraction(x2)?, fraction(y2)?);
    let (left, right) = (x1.min(x2), x1.max(x2));
    let (top, bottom) = (y1.min(y2), y1.max(y2));
    Some(Detection {
        class,
        score: DEVICE_SCORE,
        region: [
            left as f32,
            top as f32,
            (right - left) as f32,
            (bottom - top) as f32,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::tcp::pylit;

    fn list(text: &str) -> Vec<Value> {
        match pylit::parse(text.as_bytes()) {
            Ok((Value::List(items), _)) => items,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_tracked_person_is_a_person_box_as_fractions_scored_one() {
        let (found, skipped) = detections(&list(
            "[['ID 1', 320, 240, 'person', [160, 64, 480, 640], [0, 0, 0, 0], 29.87]]",
        ));
        assert_eq!(skipped, 0);
        assert_eq!(
            found,
            [Detection {
                class: 0,
                score: 1.0,
                region: [0.25, 0.1, 0.5, 0.9],
            }]
        );
    }

    #[test]
    fn labels_by_name_or_number_boxes_clamped_and_ordered() {
        let (found, skipped) = detections(&list(
            "[['ID 1', 0, 0, 'traffic light', [-64, 0, 64, 64], [0, 0, 0, 0], 1.0], \
              ['ID 2', 0, 0, 2, [640, 1280, 320, 320.0], [0, 0, 0, 0], 1.0], \
              ['ID 3', 0, 0, 'Person', [0, 0, 64, 64]]]",
        ));
        assert_eq!(skipped, 0);
        let classes: Vec<usize> = found.iter().map(|d| d.class).collect();
        assert_eq!(classes, [9, 2, 0]);
        assert_eq!(found[0].region, [0.0, 0.0, 0.1, 0.1]);
        assert_eq!(found[1].region, [0.5, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn unusable_entries_are_skipped_and_counted() {
        let (found, skipped) = detections(&list(
            "[['ID 1', 150, 150], \
              ['ID 2', 0, 0, 'unicorn', [0, 0, 1, 1]], \
              ['ID 3', 0, 0, 80, [0, 0, 1, 1]], \
              ['ID 4', 0, 0, -1, [0, 0, 1, 1]], \
              ['ID 5', 0, 0, 'person', [0, 0, 1]], \
              ['ID 6', 0, 0, 'person', [0, 0, 1, nan]], \
              ['ID 7', 0, 0, 'person', [0, 0, 1, inf]], \
              ['ID 8', 0, 0, 'person', 'box'], \
              ['ID 9', 0, 0, None, [0, 0, 1, 1]], \
              'ID 10', 17, \
              ['ID 11', 0, 0, 'person', [0, 0, 64, 64]]]",
        ));
        assert_eq!(skipped, 11);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].region, [0.0, 0.0, 0.1, 0.1]);
        assert_eq!(detections(&[]), (vec![], 0));
    }
}
