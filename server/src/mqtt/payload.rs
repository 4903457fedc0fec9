//! What goes on the wire to the broker: the JSON of an `events` message, one per journal
//! [`Event`], and of a `stats` message (the `/status` JSON, less its per-watcher rows).
//!
//! Every event has `type`, `at` (RFC 3339, local time with its offset, milliseconds) and
//! `at_us` (µs since the Unix epoch): the capture time for motion, the moment it was journalled
//! for the rest. Scores are percent of the picture, boxes fractions of it.
//!
//! ```text
//! {"type":"join","at":"…","at_us":…,"session":3,"kind":"surv1","address":"127.0.0.1:5000"}
//! {"type":"leave",…,"session":3,"kind":"surv1","address":"…","reason":"end","duration_s":10.333,
//!  "frames":310,"frames_skipped":0,"bytes":1534210}
//! {"type":"source_lost",…,"source":"camera 0","reason":"…"}
//! {"type":"source_back",…,"source":"camera 0","down_s":3.2}
//! {"type":"motion_start",…,"score":3.125,"box":{"x":0.25,"y":0.4,"w":0.125,"h":0.1667}}
//! {"type":"motion_update",…,"start":"…","start_us":…,"score":2.5,"peak":6.25,"box":{…}}
//! {"type":"motion_end",…,"start":"…","start_us":…,"end":"…","end_us":…,"duration_s":4.99,
//!  "peak":6.25,"box":{…}}
//! {"type":"object_start",…,"label":"person","score":0.628,"box":{…}}
//! {"type":"object_end",…,"start":"…","start_us":…,"end":"…","end_us":…,"duration_s":5.8,
//!  "label":"person","peak":0.641,"box":{…}}
//! {"type":"object_count",…,"label":"person","count":2}
//! ```
//!
//! Object scores are the detector's (0–1), not percent.

use serde::Serialize;

use crate::journal::{stamp_us, Event};

/// Peer-supplied text (a source's error, say) is cut to this many characters.
pub const MAX_TEXT_CHARS: usize = 1000;

/// A motion box: left, top, width, height as fractions of the picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MotionBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// What an `_end` event says of its time: `at` is the end (its last frame), and the start,
/// the end and the duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub at: String,
    pub at_us: u64,
    pub start: String,
    pub start_us: u64,
    pub end: String,
    pub end_us: u64,
    pub duration_s: f64,
}

impl Span {
    fn new(start_us: u64, end_us: u64) -> Span {
        Span {
            at: stamp_us(end_us),
            at_us: end_us,
            start: stamp_us(start_us),
            start_us,
            end: stamp_us(end_us),
            end_us,
            duration_s: round(end_us.saturating_sub(start_us) as f64 / 1e6, 3),
        }
    }
}

/// One `PREFIX/events` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventJson {
    Join {
        at: String,
        at_us: u64,
        session: u64,
        kind: &'static str,
        address: String,
        camera: String,
    },
    Leave {
        at: String,
        at_us: u64,
        session: u64,
        kind: &'static str,
        address: String,
        camera: String,
        reason: &'static str,
        duration_s: f64,
        /// Frames sent to the watcher.
        frames: u64,
        frames_skipped: u64,
        bytes: u64,
    },
    SourceLost {
        at: String,
        at_us: u64,
        source: String,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    SourceBack {
        at: String,
        at_us: u64,
        source: String,
        down_s: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    MotionStart {
        at: String,
        at_us: u64,
        score: f64,
        #[serde(rename = "box")]
        region: MotionBox,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    MotionUpdate {
        at: String,
        at_us: u64,
        start: String,
        start_us: u64,
        score: f64,
        peak: f64,
        #[serde(rename = "box")]
        region: MotionBox,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    /// `at` is the end: the last frame with motion.
    MotionEnd {
        #[serde(flatten)]
        span: Span,
        peak: f64,
        #[serde(rename = "box")]
        region: MotionBox,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    ObjectStart {
        at: String,
        at_us: u64,
        label: &'static str,
        score: f64,
        #[serde(rename = "box")]
        region: MotionBox,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    /// `at` is the end: the last frame that showed it.
    ObjectEnd {
        #[serde(flatten)]
        span: Span,
        label: &'static str,
        peak: f64,
        #[serde(rename = "box")]
        region: MotionBox,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
    ObjectCount {
        at: String,
        at_us: u64,
        label: &'static str,
        count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        camera: Option<String>,
    },
}

impl EventJson {
    pub fn of(event: &Event) -> EventJson {
        match event {
            Event::Join {
                at_us,
                session_id,
                viewer,
                kind,
                camera,
            } => EventJson::Join {
                at: stamp_us(*at_us),
                at_us: *at_us,
                session: *session_id,
                kind: kind.as_str(),
                address: viewer.to_string(),
                camera: camera.clone(),
            },
            Event::Leave { at_us, leave } => EventJson::Leave {
                at: stamp_us(*at_us),
                at_us: *at_us,
                session: leave.session_id,
                kind: leave.kind.as_str(),
                address: leave.viewer.to_string(),
                camera: leave.camera.clone(),
                reason: leave.reason.as_str(),
                duration_s: round(leave.duration.as_secs_f64(), 3),
                frames: leave.frames_sent,
                frames_skipped: leave.frames_skipped,
                bytes: leave.bytes_sent,
            },
            Event::SourceLost {
                at_us,
                source,
                reason,
                camera,
            } => EventJson::SourceLost {
                at: stamp_us(*at_us),
                at_us: *at_us,
                source: cut(source),
                reason: cut(reason),
                camera: camera.clone(),
            },
            Event::SourceBack {
                at_us,
                source,
                down,
                camera,
            } => EventJson::SourceBack {
                at: stamp_us(*at_us),
                at_us: *at_us,
                source: cut(source),
                down_s: round(down.as_secs_f64(), 3),
                camera: camera.clone(),
            },
            Event::MotionStart {
                at_us,
                score,
                region,
                camera,
            } => EventJson::MotionStart {
                at: stamp_us(*at_us),
                at_us: *at_us,
                score: percent(*score),
                region: motion_box(region),
                camera: camera.clone(),
            },
            Event::MotionUpdate {
                at_us,
                start_us,
                score,
                peak,
                region,
                camera,
            } => EventJson::MotionUpdate {
                at: stamp_us(*at_us),
                at_us: *at_us,
                start: stamp_us(*start_us),
                start_us: *start_us,
                score: percent(*score),
                peak: percent(*peak),
                region: motion_box(region),
                camera: camera.clone(),
            },
            Event::MotionEnd {
                start_us,
                end_us,
                peak,
                region,
                camera,
            } => EventJson::MotionEnd {
                span: Span::new(*start_us, *end_us),
                peak: percent(*peak),
                region: motion_box(region),
                camera: camera.clone(),
            },
            Event::ObjectStart {
                at_us,
                label,
                score,
                region,
                camera,
            } => EventJson::ObjectStart {
                at: stamp_us(*at_us),
                at_us: *at_us,
                label,
                score: round(f64::from(*score), 3),
                region: motion_box(region),
                camera: camera.clone(),
            },
            Event::ObjectEnd {
                start_us,
                end_us,
                label,
                peak,
                region,
                camera,
            } => EventJson::ObjectEnd {
                span: Span::new(*start_us, *end_us),
                label,
                peak: round(f64::from(*peak), 3),
                region: motion_box(region),
                camera: camera.clone(),
            },
            Event::ObjectCount {
                at_us,
                label,
                count,
                camera,
            } => EventJson::ObjectCount {
                at: stamp_us(*at_us),
                at_us: *at_us,
                label,
                count: *count,
                camera: camera.clone(),
            },
        }
    }

    /// The message's bytes.
    pub fn to_json(&self) -> String {
        // Plain strings and numbers only: serialising cannot fail, but say so rather than panic.
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}

/// The camera an event is about, when it says.
pub fn camera_of(event: &Event) -> Option<&str> {
    match event {
        Event::Join { camera, .. } => Some(camera),
        Event::Leave { leave, .. } => Some(&leave.camera),
        Event::SourceLost { camera, .. }
        | Event::SourceBack { camera, .. }
        | Event::MotionStart { camera, .. }
        | Event::MotionUpdate { camera, .. }
        | Event::MotionEnd { camera, .. }
        | Event::ObjectStart { camera, .. }
        | Event::ObjectEnd { camera, .. }
        | Event::ObjectCount { camera, .. } => camera.as_deref(),
    }
}

/// What an event does to the retained `PREFIX/motion` state, if anything.
pub fn motion_state(event: &Event) -> Option<bool> {
    match event {
        Event::MotionStart { .. } => Some(true),
        Event::MotionEnd { .. } => Some(false),
        _ => None,
    }
}

/// The `PREFIX/stats` message: `/status`'s JSON without its `sessions` rows (one per watcher:
/// thousands of them would not fit an MQTT message), with the time it was taken.
pub(crate) fn stats_json(status: &crate::http::status::Status, at_us: u64) -> String {
    let mut value = match serde_json::to_value(status) {
        Ok(v) => v,
        Err(e) => return format!(r#"{{"error":"{e}"}}"#),
    };
    if let Some(map) = value.as_object_mut() {
        map.remove("sessions");
        map.insert("at".into(), stamp_us(at_us).into());
        map.insert("at_us".into(), at_us.into());
    }
    value.to_string()
}

fn round(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// A share of the picture (0..1) as percent, 3 decimals as in the journal.
fn percent(share: f32) -> f64 {
    round(f64::from(share) * 100.0, 3)
}

fn motion_box(r: &[f32; 4]) -> MotionBox {
    let [x, y, w, h] = r.map(|v| round(f64::from(v), 4));
    MotionBox { x, y, w, h }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
