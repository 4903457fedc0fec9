//! `surv-server --config FILE`: the cameras and the server-wide settings, in TOML.
//!
//! ```toml
//! # Server-wide settings: any long flag of surv-server, by its name (`http-port` or
//! # `http_port`). A flag given on the command line overrides the file's value.
//! port = 9999
//! http-port = 8080
//!
//! # Each camera: a name (letters, digits, '-', '_') and a source (every --source form);
//! # the other keys override the server-wide value for that camera only.
//! [[camera]]
//! name = "door"
//! source = "rtsp://user:pass@192.0.2.10/stream1"
//!
//! [[camera]]
//! name = "yard"
//! source = "test"
//! size = "320x240"
//! fps = 15
//! motion = false
//! forward = "rtp://192.0.2.20:5004"   # its H.264 as RTP, to Janus, GStreamer, ffmpeg
//! detect = "person,car"                # object detection (detect-every, detect-on,
//!                                      # detect-threshold too)
//!
//! [[camera]]
//! name = "gate"
//! source = "test"
//! forward = ["rtp://192.0.2.20:5006", "rtp://192.0.2.21:5006"]   # two Janus edges
//! ```
//!
//! Every error names the file's line and what is wrong with it; nothing is half-applied.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::cameras::check_name;
use crate::watchers::forward::ForwardUrl;

/// What is wrong with a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ConfigError {
    /// 1-based; 0 when the fault has no one line (an empty camera list…).
    pub line: usize,
    pub reason: String,
}

/// One `[[camera]]` table. Options left out take the server-wide value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CameraEntry {
    pub name: String,
    pub source: String,
    pub size: Option<String>,
    pub fps: Option<u32>,
    pub quality: Option<u8>,
    pub motion: Option<bool>,
    /// Object detection on this camera: COCO labels, comma-separated (`""` or `"off"`: none).
    pub detect: Option<String>,
    pub detect_every: Option<u64>,
    /// `every` or `motion`.
    pub detect_on: Option<String>,
    pub detect_threshold: Option<f32>,
    #[serde(rename = "loop")]
    pub looped: Option<bool>,
    pub max_frame_bytes: Option<usize>,
    pub source_allow: Option<Vec<String>>,
    pub rtsp_transport: Option<String>,
    /// This camera's port for seed 001's apps (`--request-port` is the first camera's).
    pub request_port: Option<u16>,
    /// This camera's port for OAK host programs (`--tcp-stream-port` is the first camera's).
    pub tcp_stream_port: Option<u16>,
    /// Where this camera's H.264 is pushed as RTP, `rtp://HOST:PORT` or a list of them
    /// (`--forward` is the first camera's).
    pub forward: Option<Forwards>,
}

/// A camera's `forward`: one URL, or a list (each destination its own RTP stream).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Forwards {
    One(String),
    Many(Vec<String>),
}

impl Forwards {
    pub fn urls(&self) -> &[String] {
        match self {
            Forwards::One(url) => std::slice::from_ref(url),
            Forwards::Many(urls) => urls,
        }
    }
}

/// A server-wide setting: a flag's long name (as written, `_` turned into `-`) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub flag: String,
    pub value: toml::Value,
    pub line: usize,
}

/// A parsed config file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileConfig {
    /// In the file's order, each with the line of its `[[camera]]` header.
    pub cameras: Vec<(CameraEntry, usize)>,
    pub settings: Vec<Setting>,
}

/// Parses a config file's text. Names are checked (form, uniqueness); sources and settings
/// are left to the caller, which reports their faults with the lines given here.
pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        reason: e.message().trim().to_string(),
    })?;
    let mut config = FileConfig::default();
    let headers = camera_headers(text);
    for (key, value) in table {
        if key != "camera" {
            config.settings.push(Setting {
                flag: key.replace('_', "-"),
                line: key_line(text, &key, 0),
                value,
            });
            continue;
        }
        let toml::Value::Array(entries) = value else {
            return Err(ConfigError {
                line: key_line(text, "camera", 0),
                reason: "`camera` is a list of tables: write each as [[camera]]".into(),
            });
        };
        let mut names = BTreeSet::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let line = headers.get(i).copied().unwrap_or(0);
            let entry: CameraEntry = entry.try_into().map_err(|e: toml::de::Error| {
                let reason = e.message().trim().to_string();
                // The offending key, if the message names one, on a line after the header.
                let at = reason
                    .split('`')
                    .nth(1)
                    .map_or(line, |key| key_line(text, key, line.saturating_sub(1)));
                ConfigError {
                    line: at.max(line),
                    reason: format!("[[camera]] {reason}"),
                }
            })?;
            check_name(&entry.name).map_err(|reason| ConfigError { line, reason })?;
            if let Some(forwards) = &entry.forward {
                // The form is checked here, for the line; the host is resolved at start.
                let line = key_line(text, "forward", line.saturating_sub(1)).max(line);
                if forwards.urls().is_empty() {
                    return Err(ConfigError {
                        line,
                        reason: "forward: an empty list (leave the key out for no forward)".into(),
                    });
                }
                for url in forwards.urls() {
                    ForwardUrl::parse(url).map_err(|reason| ConfigError {
                        line,
                        reason: format!("forward: {reason}"),
                    })?;
                }
            }
            if !names.insert(entry.name.clone()) {
                return Err(ConfigError {
                    line,
                    reason: format!("a second camera named {:?}", entry.name),
                });
            }
            config.cameras.push((entry, line));
        }
    }
    config.settings.sort_by_key(|s| s.line);
    Ok(config)
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The lines of the `[[camera]]` headers, in order.
fn camera_headers(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            l.starts_with("[[") && l.trim_start_matches('[').trim_start().starts_with("camera")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The first line at or after line `from` (0-based count of lines to skip) where `key` is set.
fn key_line(text: &str, key: &str, from: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('=') || rest.starts_with(']'))
        })
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# comment
port = 9999
http_port = 8080

[[camera]]
name = "door"
source = "test"

[[camera]]
name = "yard"
source = "tcp-listen://0.0.0.0:5000"
size = "320x240"
fps = 15
motion = false
loop = true
source-allow = ["192.0.2.0/24"]
"#;

    #[test]
    fn cameras_and_settings_with_their_lines() {
        let c = parse(GOOD).unwrap();
        let names: Vec<_> = c
            .cameras
            .iter()
            .map(|(e, l)| (e.name.as_str(), *l))
            .collect();
        assert_eq!(names, [("door", 6), ("yard", 10)]);
        let yard = &c.cameras[1].0;
        assert_eq!(yard.size.as_deref(), Some("320x240"));
        assert_eq!(
            (yard.fps, yard.motion, yard.looped),
            (Some(15), Some(false), Some(true))
        );
        assert_eq!(
            yard.source_allow.as_deref(),
            Some(&["192.0.2.0/24".to_string()][..])
        );
        let settings: Vec<_> = c
            .settings
            .iter()
            .map(|s| (s.flag.as_str(), s.line, s.value.clone()))
            .collect();
        assert_eq!(
            settings,
            [
                ("port", 3, toml::Value::Integer(9999)),
                ("http-port", 4, toml::Value::Integer(8080))
            ]
        );
    }

    #[test]
    fn forward_is_an_rtp_url() {
        let c = parse(
            "[[camera]]\nname = \"a\"\nsource = \"test\"\nforward = \"rtp://127.0.0.1:5004\"\n",
        )
        .unwrap();
        assert_eq!(
            c.cameras[0].0.forward.as_ref().map(Forwards::urls),
            Some(&["rtp://127.0.0.1:5004".to_string()][..])
        );
        // A list: each destination its own stream.
        let c = parse(
            "[[camera]]\nname = \"a\"\nsource = \"test\"\nforward = [\"rtp://127.0.0.1:5004\", \"rtp://[::1]:6000\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.cameras[0].0.forward.as_ref().map(Forwards::urls),
            Some(
                &[
                    "rtp://127.0.0.1:5004".to_string(),
                    "rtp://[::1]:6000".to_string()
                ][..]
            )
        );
        for (text, line, says) in [
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\nforward = [\"rtp://h:5004\", \"rtp://h\"]\n",
                4,
                "forward: \"rtp://h\" has no port",
            ),
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\nforward = []\n",
                4,
                "forward: an empty list",
            ),
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\n\nforward = \"http://x\"\n",
                5,
                "forward: \"http://x\" is not rtp://HOST:PORT",
            ),
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\n[[camera]]\nname = \"b\"\nsource = \"test\"\nforward = \"rtp://h:0\"\n",
                7,
                "forward: \"rtp://h:0\": port 0 cannot be used",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn faults_are_named_with_their_line() {
        let cases: [(&str, usize, &str); 6] = [
            ("port = \n", 1, "string values must be quoted"),
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\nsize = \"1x1\"\ncolour = 3\n",
                5,
                "unknown field `colour`",
            ),
            ("[[camera]]\nname = \"a b\"\nsource = \"test\"\n", 1, "not a letter"),
            (
                "[[camera]]\nname = \"a\"\nsource = \"test\"\n\n[[camera]]\nname = \"a\"\nsource = \"test\"\n",
                5,
                "a second camera named \"a\"",
            ),
            ("[[camera]]\nname = \"a\"\n", 1, "missing field `source`"),
            ("camera = 3\n", 1, "[[camera]]"),
        ];
        for (text, line, says) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }
}
