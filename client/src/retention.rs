//! Retention: keeps the recording folder under a size and/or segment-count cap by deleting the
//! oldest closed segments.
//!
//! Only closed segments are candidates (`surv-*.avi` / `surv-*.mp4`, the names the recorder
//! gives on close); a `.part` being written, and any other file, are never touched. Oldest is by
//! the capture time in the name (`surv-YYYYmmdd-HHMMSS[-N]`, parsed by `recorder::naming`, which
//! also builds it), then by modification time, so segments from other viewers sharing the folder
//! age together; a `surv-*` name of another form counts as older than all of them. The recorder
//! enforces the cap after each segment it closes: the folder holds at most the cap plus the one
//! segment being written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use crate::recorder::naming::{self, SegmentName};

/// How much to keep; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Total bytes of closed segments.
    pub max_bytes: Option<u64>,
    /// Number of closed segments.
    pub max_segments: Option<usize>,
}

impl Retention {
    /// Whether there is any cap at all.
    pub fn is_unlimited(&self) -> bool {
        self.max_bytes.is_none() && self.max_segments.is_none()
    }
}

/// A closed segment found in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub path: PathBuf,
    pub bytes: u64,
    modified: SystemTime,
}

/// Whether `name` is a closed segment's name.
pub fn is_closed_segment(name: &str) -> bool {
    naming::is_closed(name)
}

/// Closed segments in `dir`, oldest first.
pub fn closed_segments(dir: &Path) -> io::Result<Vec<Closed>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_closed_segment(name) {
            continue;
        }
        // A file deleted meanwhile (another viewer's retention) is simply not there.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push(Closed {
            path: entry.path(),
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    out.sort_by_cached_key(|c| {
        let name = c.path.file_name().and_then(|n| n.to_str());
        let age = name.and_then(naming::parse).map(SegmentName::into_age);
        (age, c.modified, c.path.clone())
    });
    Ok(out)
}

/// What [`enforce`] did.
#[derive(Debug, Default)]
pub struct Enforced {
    /// Deleted segments, oldest first.
    pub deleted: Vec<Closed>,
    /// Segments that could not be deleted, and why.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Deletes the oldest closed segments in `dir` until it is within `keep`. A segment that cannot
/// be deleted is skipped (and reported) so that one stuck file does not stop the rest.
pub fn enforce(dir: &Path, keep: &Retention) -> io::Result<Enforced> {
    if keep.is_unlimited() {
        return Ok(Enforced::default());
    }
    let segments = closed_segments(dir)?;
    let mut bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut count = segments.len();
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for s in segments {
        let over_bytes = keep.max_bytes.is_some_and(|max| bytes > max);
        let over_count = keep.max_segments.is_some_and(|max| count > max);
        if !over_bytes && !over_count {
            break;
        }
        match fs::remove_file(&s.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                failed.push((s.path.clone(), e));
                continue;
            }
        }
        bytes -= s.bytes;
        count -= 1;
        deleted.push(s);
    }
    Ok(Enforced { deleted, failed })
}

/// A size as given on the command line: bytes, or with a K/M/G/T suffix (powers of 1024,
/// optionally followed by `B` or `iB`), e.g. `500M`, `2G`, `1.5GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_uppercase();
        let unit = unit
            .strip_suffix("IB")
            .or_else(|| unit.strip_suffix('B'))
            .unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("{s:?}: unknown unit (use e.g. 500M, 2G, 1T)")),
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (use e.g. 500M, 2G, 1T)"))?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
            return Err(format!("{s:?} is not a usable size"));
        }
        // In range by the check above.
        Ok(ByteSize(bytes as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        for (s, v) in [
            ("1000", 1000),
            ("500M", 500 << 20),
            ("2G", 2 << 30),
            ("2gb", 2 << 30),
            ("1.5GiB", 3 << 29),
            ("64 k", 64 << 10),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(v)), "{s}");
        }
        for s in ["", "M", "-1", "0", "1X", "1e400", "nan"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }

    fn touch(dir: &Path, name: &str, bytes: usize) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, vec![0u8; bytes]).unwrap();
        p
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn deletes_oldest_closed_segments_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        // Created newest first: the names, not creation order, say what is oldest.
        touch(d, "surv-20260101-000300.mp4", 100);
        touch(d, "surv-20260101-000200-10.avi", 100);
        touch(d, "surv-20260101-000200-9.avi", 100);
        touch(d, "surv-20260101-000200.avi", 100);
        touch(d, "surv-20260101-000100.avi", 100);
        touch(d, "surv-20260101-000000.avi.part", 1000);
        touch(d, "notes.txt", 1000);
        let order: Vec<String> = closed_segments(d)
            .unwrap()
            .iter()
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            order,
            [
                "surv-20260101-000100.avi",
                "surv-20260101-000200.avi",
                "surv-20260101-000200-9.avi",
                "surv-20260101-000200-10.avi",
                "surv-20260101-000300.mp4"
            ]
        );

        let Enforced { deleted, failed } = enforce(
            d,
            &Retention {
                max_bytes: Some(350),
                max_segments: None,
            },
        )
        .unwrap();
        assert!(failed.is_empty());
        assert_eq!(deleted.len(), 2);
        assert_eq!(
            names(d),
            [
                "notes.txt",
                "surv-20260101-000000.avi.part",
                "surv-20260101-000200-10.avi",
                "surv-20260101-000200-9.avi",
                "surv-20260101-000300.mp4"
            ]
        );

        let keep_two = Retention {
            max_bytes: Some(1 << 20),
            max_segments: Some(2),
        };
        let deleted = enforce(d, &keep_two).unwrap().deleted;
        assert_eq!(deleted[0].path, d.join("surv-20260101-000200-9.avi"));
        assert_eq!(closed_segments(d).unwrap().len(), 2);
        // Within the cap: nothing more goes.
        assert!(enforce(d, &keep_two).unwrap().deleted.is_empty());
        assert!(enforce(d, &Retention::default())
            .unwrap()
            .deleted
            .is_empty());
    }

    /// A `surv-*.avi` the recorder did not name (hand-copied, or a clock past year 9999) is
    /// still a candidate, and goes before the recorder's own segments.
    #[test]
    fn names_of_another_form_count_as_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        touch(d, "surv-20260101-000100.avi", 100);
        touch(d, "surv-+100000101-000000.avi", 100);
        touch(d, "surv-copy.mp4", 100);
        let order: Vec<String> = closed_segments(d)
            .unwrap()
            .iter()
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], "surv-20260101-000100.avi");
        let keep_one = Retention {
            max_bytes: None,
            max_segments: Some(1),
        };
        assert_eq!(enforce(d, &keep_one).unwrap().deleted.len(), 2);
        assert_eq!(names(d), ["surv-20260101-000100.avi"]);
    }
}
