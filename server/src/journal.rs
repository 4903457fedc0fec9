//! The journal: one line per watcher JOIN, LEAVE and REFUSE, per SOURCE-LOST and SOURCE-BACK,
//! per MOTION-START and MOTION-END, and per OBJECT-START and OBJECT-END, in daily files under
//! the log folder.
//!
//! ```text
//! 2026-11-21T21:40:00.123+01:00 JOIN session=3 viewer=127.0.0.1:5000 form=seed
//! 2026-11-21T21:40:10.456+01:00 LEAVE session=3 viewer=127.0.0.1:5000 form=seed reason=end duration_s=10.333 frames_sent=310 bytes_sent=1534210 frames_skipped=0
//! 2026-11-21T21:40:11.000+01:00 REFUSE peer=127.0.0.1:40112 form=surv1 reason="server full (16 viewers)"
//! 2026-11-21T21:41:00.000+01:00 SOURCE-LOST source="camera 0" reason="reading a frame from /dev/video0: …"
//! 2026-11-21T21:41:03.200+01:00 SOURCE-BACK source="camera 0" down_s=3.200
//! 2026-11-21T21:42:00.050+01:00 MOTION-START at=2026-11-21T21:42:00.010+01:00 score=3.125 box=0.250,0.400,0.125,0.167
//! 2026-11-21T21:42:08.020+01:00 MOTION-END start=2026-11-21T21:42:00.010+01:00 end=2026-11-21T21:42:05.000+01:00 duration_s=4.990 peak=6.250 box=0.000,0.400,1.000,0.167
//! 2026-11-21T21:42:00.300+01:00 OBJECT-START at=2026-11-21T21:42:00.210+01:00 label=person score=0.628 box=0.312,0.051,0.541,0.902
//! 2026-11-21T21:42:09.100+01:00 OBJECT-END start=2026-11-21T21:42:00.210+01:00 end=2026-11-21T21:42:06.010+01:00 duration_s=5.800 label=person peak=0.641 box=0.290,0.060,0.550,0.890
//! ```
//!
//! `form` is the watcher's kind ([`WatcherKind::as_str`]); every kind of watcher has the same
//! JOIN and LEAVE lines.
//!
//! Files are written through tracing-appender's rolling appender (`surv-journal.YYYY-MM-DD.log`),
//! a line at a time and flushed, so a crash loses nothing already logged. A failed write is
//! counted and reported once per run of failures; the server goes on streaming.
//!
//! Every line (but REFUSE) is also an [`Event`] for whoever [subscribes](Journal::subscribe) (the
//! MQTT publisher): one place says what happened, whatever reads it. Motion updates (a running
//! event's score and box, at most once a second) are events only, not lines. A subscriber that
//! falls behind loses the oldest events (a `broadcast` channel), never slows the writer.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Local, SecondsFormat};
use tokio::sync::broadcast;
use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::watchers::WatcherKind;

/// File names are `surv-journal.<date>.log`.
pub const FILE_PREFIX: &str = "surv-journal";

/// Why a session ended, as written in the LEAVE line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The viewer sent `end`.
    End,
    /// Nothing from the viewer for the viewer timeout.
    Timeout,
    /// The watcher closed its connection (a UDP viewer's TCP registration, an HTTP stream).
    Closed,
    /// The server is shutting down.
    Shutdown,
    /// A socket error ended the session.
    Error,
    /// A reload of the config removed or changed its camera.
    Removed,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::End => "end",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Closed => "closed",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::Error => "error",
            LeaveReason::Removed => "removed",
        }
    }
}

/// What a LEAVE line reports about a finished session.
#[derive(Debug, Clone)]
pub struct Leave {
    pub session_id: u64,
    pub viewer: SocketAddr,
    pub kind: WatcherKind,
    pub reason: LeaveReason,
    pub duration: Duration,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_skipped: u64,
    /// The camera it watched.
    pub camera: String,
}

/// Events a subscriber may fall behind by before it loses the oldest.
const EVENT_BACKLOG: usize = 1024;

/// What happened, as the journal tells subscribers. Times are µs since the Unix epoch.
#[derive(Debug, Clone)]
pub enum Event {
    Join {
        at_us: u64,
        session_id: u64,
        viewer: SocketAddr,
        kind: WatcherKind,
        camera: String,
    },
    Leave {
        at_us: u64,
        leave: Leave,
    },
    SourceLost {
        at_us: u64,
        source: String,
        reason: String,
        /// The camera, when the line came from a camera's view ([`Journal::for_camera`]).
        camera: Option<String>,
    },
    SourceBack {
        at_us: u64,
        source: String,
        down: Duration,
        /// The camera, when the line came from a camera's view ([`Journal::for_camera`]).
        camera: Option<String>,
    },
    /// A motion event began at `at_us` (capture time).
    MotionStart {
        at_us: u64,
        score: f32,
        region: [f32; 4],
        camera: Option<String>,
    },
    /// A running motion event: the frame at `at_us` scored `score`; `region` is the event's box
    /// so far.
    MotionUpdate {
        at_us: u64,
        start_us: u64,
        score: f32,
        peak: f32,
        region: [f32; 4],
        camera: Option<String>,
    },
    MotionEnd {
        start_us: u64,
        end_us: u64,
        peak: f32,
        region: [f32; 4],
        camera: Option<String>,
    },
    /// An object of `label` appeared at `at_us` (capture time): its score (0–1) and box.
    ObjectStart {
        at_us: u64,
        label: &'static str,
        score: f32,
        region: [f32; 4],
        camera: Option<String>,
    },
    /// `label` is gone: seen from `start_us` to `end_us`, best score `peak`, its last box.
    ObjectEnd {
        start_us: u64,
        end_us: u64,
        label: &'static str,
        peak: f32,
        region: [f32; 4],
        camera: Option<String>,
    },
    /// How many of `label` the detector sees now (0 at its end). An event only, no line.
    ObjectCount {
        at_us: u64,
        label: &'static str,
        count: usize,
        camera: Option<String>,
    },
}

/// The join/leave log. Cheap to share behind an `Arc`; [`Journal::for_camera`] gives a view
/// of the same log whose source and motion lines name their camera.
pub struct Journal {
    log: Arc<Log>,
    /// The camera this view's SOURCE-* and MOTION-* lines are about (`cam=NAME`).
    camera: Option<String>,
}

/// The file and the subscribers, shared by every view.
struct Log {
    dir: PathBuf,
    file: Mutex<RollingFileAppender>,
    write_errors: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Journal, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let file = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(FILE_PREFIX)
            .filename_suffix("log")
            .build(dir)
            .map_err(std::io::Error::other)?;
        Ok(Journal {
            log: Arc::new(Log {
                dir: dir.to_path_buf(),
                file: Mutex::new(file),
                write_errors: AtomicU64::new(0),
                events: broadcast::Sender::new(EVENT_BACKLOG),
            }),
            camera: None,
        })
    }

    /// The same log, for camera `name`'s capture path and motion detector: their lines end
    /// `cam=NAME` and their events carry the name.
    pub fn for_camera(&self, name: &str) -> Journal {
        Journal {
            log: self.log.clone(),
            camera: Some(name.to_string()),
        }
    }

    /// ` cam=NAME` for a camera's view, nothing for the server's.
    fn cam(&self) -> String {
        self.camera
            .as_deref()
            .map_or_else(String::new, |c| format!(" cam={c}"))
    }

    /// Every event from now on. A receiver more than 1024 events behind gets
    /// `RecvError::Lagged(n)`: the `n` oldest were dropped for it.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.log.events.subscribe()
    }

    fn tell(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.log.events.send(event);
    }

    pub fn dir(&self) -> &Path {
        &self.log.dir
    }

    /// Lines that could not be written (disk full, folder gone, …).
    pub fn write_errors(&self) -> u64 {
        self.log.write_errors.load(Ordering::Relaxed)
    }

    pub fn join(&self, session_id: u64, viewer: SocketAddr, kind: WatcherKind, camera: &str) {
        tracing::info!(target: "surv::journal", session_id, %viewer, form = kind.as_str(), camera, "JOIN");
        self.write(&format!(
            "JOIN session={session_id} viewer={viewer} form={} cam={camera}",
            kind.as_str()
        ));
        self.tell(Event::Join {
            at_us: surv_proto::unix_micros_now(),
            session_id,
            viewer,
            kind,
            camera: camera.to_string(),
        });
    }

    pub fn leave(&self, l: &Leave) {
        tracing::info!(
            target: "surv::journal",
            session_id = l.session_id,
            viewer = %l.viewer,
            reason = l.reason.as_str(),
            frames_sent = l.frames_sent,
            frames_skipped = l.frames_skipped,
            "LEAVE"
        );
        self.write(&format!(
            "LEAVE session={} viewer={} form={} reason={} duration_s={:.3} frames_sent={} bytes_sent={} frames_skipped={} cam={}",
            l.session_id,
            l.viewer,
            l.kind.as_str(),
            l.reason.as_str(),
            l.duration.as_secs_f64(),
            l.frames_sent,
            l.bytes_sent,
            l.frames_skipped,
            l.camera
        ));
        self.tell(Event::Leave {
            at_us: surv_proto::unix_micros_now(),
            leave: l.clone(),
        });
    }

    /// A watcher that was turned away. `kind` is `None` when its bytes had no form at all.
    pub fn refuse(&self, peer: SocketAddr, kind: Option<WatcherKind>, reason: &str) {
        tracing::info!(target: "surv::journal", %peer, reason, "REFUSE");
        let form = kind.map_or("unknown", WatcherKind::as_str);
        self.write(&format!("REFUSE peer={peer} form={form} reason={reason:?}"));
    }

    /// The source stopped delivering (the first failure of an outage).
    pub fn source_lost(&self, source: &str, reason: &str) {
        self.write(&format!(
            "SOURCE-LOST source={source:?} reason={reason:?}{}",
            self.cam()
        ));
        self.tell(Event::SourceLost {
            at_us: surv_proto::unix_micros_now(),
            source: source.to_owned(),
            reason: reason.to_owned(),
            camera: self.camera.clone(),
        });
    }

    /// The source delivers again after being lost for `down`.
    pub fn source_back(&self, source: &str, down: Duration) {
        self.write(&format!(
            "SOURCE-BACK source={source:?} down_s={:.3}{}",
            down.as_secs_f64(),
            self.cam()
        ));
        self.tell(Event::SourceBack {
            at_us: surv_proto::unix_micros_now(),
            source: source.to_owned(),
            down,
            camera: self.camera.clone(),
        });
    }

    /// A motion event began at `at_us` (capture time) with `score` (share of the picture) in
    /// `region` (x, y, w, h as fractions of the picture).
    pub fn motion_start(&self, at_us: u64, score: f32, region: [f32; 4]) {
        let [x, y, w, h] = region;
        self.write(&format!(
            "MOTION-START at={} score={:.3} box={x:.3},{y:.3},{w:.3},{h:.3}{}",
            stamp_us(at_us),
            score * 100.0,
            self.cam()
        ));
        self.tell(Event::MotionStart {
            at_us,
            score,
            region,
            camera: self.camera.clone(),
        });
    }

    /// A running motion event, for subscribers only (no line).
    pub fn motion_update(
        &self,
        at_us: u64,
        start_us: u64,
        score: f32,
        peak: f32,
        region: [f32; 4],
    ) {
        self.tell(Event::MotionUpdate {
            at_us,
            start_us,
            score,
            peak,
            region,
            camera: self.camera.clone(),
        });
    }

    /// A motion event ended: motion from `start_us` to `end_us` (its last frame with motion).
    pub fn motion_end(&self, start_us: u64, end_us: u64, peak: f32, region: [f32; 4]) {
        let [x, y, w, h] = region;
        self.write(&format!(
            "MOTION-END start={} end={} duration_s={:.3} peak={:.3} box={x:.3},{y:.3},{w:.3},{h:.3}{}",
            stamp_us(start_us),
            stamp_us(end_us),
            end_us.saturating_sub(start_us) as f64 / 1e6,
            peak * 100.0,
            self.cam()
        ));
        self.tell(Event::MotionEnd {
            start_us,
            end_us,
            peak,
            region,
            camera: self.camera.clone(),
        });
    }

    /// An object of `label` appeared at `at_us` (capture time) with `score` (0–1) in `region`.
    pub fn object_start(&self, at_us: u64, label: &'static str, score: f32, region: [f32; 4]) {
        let [x, y, w, h] = region;
        self.write(&format!(
            "OBJECT-START at={} label={label} score={score:.3} box={x:.3},{y:.3},{w:.3},{h:.3}{}",
            stamp_us(at_us),
            self.cam()
        ));
        self.tell(Event::ObjectStart {
            at_us,
            label,
            score,
            region,
            camera: self.camera.clone(),
        });
    }

    /// `label` is gone: seen from `start_us` to `end_us` (its last sighting).
    pub fn object_end(
        &self,
        start_us: u64,
        end_us: u64,
        label: &'static str,
        peak: f32,
        region: [f32; 4],
    ) {
        let [x, y, w, h] = region;
        self.write(&format!(
            "OBJECT-END start={} end={} duration_s={:.3} label={label} peak={peak:.3} box={x:.3},{y:.3},{w:.3},{h:.3}{}",
            stamp_us(start_us),
            stamp_us(end_us),
            end_us.saturating_sub(start_us) as f64 / 1e6,
            self.cam()
        ));
        self.tell(Event::ObjectEnd {
            start_us,
            end_us,
            label,
            peak,
            region,
            camera: self.camera.clone(),
        });
    }

    /// How many of `label` are seen now, for subscribers only (no line).
    pub fn object_count(&self, label: &'static str, count: usize) {
        self.tell(Event::ObjectCount {
            at_us: surv_proto::unix_micros_now(),
            label,
            count,
            camera: self.camera.clone(),
        });
    }

    fn write(&self, line: &str) {
        let stamped = format!(
            "{} {line}\n",
            Local::now().to_rfc3339_opts(SecondsFormat::Millis, false)
        );
        // A poisoned lock only means another writer panicked mid-line; the file is still usable.
        let log = &*self.log;
        let mut file = log.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file
            .write_all(stamped.as_bytes())
            .and_then(|()| file.flush())
        {
            if log.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(dir = %log.dir.display(), error = %e, "cannot write the join/leave log; streaming goes on, lines are lost until it recovers");
            }
        }
    }
}

/// Reads every journal line in `dir`, oldest file first. For tests and tools.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(FILE_PREFIX))
        })
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        lines.extend(std::fs::read_to_string(f)?.lines().map(str::to_owned));
    }
    Ok(lines)
}

/// A time (µs since the epoch) as local RFC 3339 with milliseconds: the journal's form, also
/// MQTT's.
pub(crate) fn stamp_us(us: u64) -> String {
    i64::try_from(us)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map_or_else(
            || us.to_string(),
            |t| {
                t.with_timezone(&Local)
                    .to_rfc3339_opts(SecondsFormat::Millis, false)
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_what_an_operator_needs() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let viewer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        j.join(3, viewer, WatcherKind::Seed, "door");
        j.leave(&Leave {
            session_id: 3,
            viewer,
            kind: WatcherKind::Seed,
            reason: LeaveReason::Closed,
            duration: Duration::from_millis(10_333),
            frames_sent: 310,
            bytes_sent: 1_534_210,
            frames_skipped: 2,
            camera: "door".into(),
        });
        j.refuse(
            "127.0.0.1:40112".parse().unwrap(),
            None,
            "registration timeout",
        );
        j.source_lost("camera 0", "cannot open /dev/video0: \u{1b}]0;x");
        j.source_back("camera 0", Duration::from_millis(3_200));
        let lines = read_all(dir.path()).unwrap();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[0].ends_with(" JOIN session=3 viewer=127.0.0.1:5000 form=seed cam=door"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(
                " LEAVE session=3 viewer=127.0.0.1:5000 form=seed reason=closed duration_s=10.333 frames_sent=310 bytes_sent=1534210 frames_skipped=2 cam=door"
            ),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(
            r#"REFUSE peer=127.0.0.1:40112 form=unknown reason="registration timeout""#
        ));
        // Peer-controlled text is quoted with control characters escaped.
        assert!(
            lines[3].ends_with(
                r#"SOURCE-LOST source="camera 0" reason="cannot open /dev/video0: \u{1b}]0;x""#
            ),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].ends_with(r#"SOURCE-BACK source="camera 0" down_s=3.200"#),
            "{}",
            lines[4]
        );
        // Each line starts with an RFC 3339 timestamp chrono can read back.
        for l in &lines {
            let stamp = l.split(' ').next().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
                "{stamp}"
            );
        }
        assert_eq!(j.write_errors(), 0);
    }

    #[test]
    fn an_unusable_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        assert!(Journal::open(&file).is_err());
    }
}
