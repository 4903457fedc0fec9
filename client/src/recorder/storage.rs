//! Where segment files are created: the [`SegmentStore`] seam (the disk, or in tests a disk that
//! fails on purpose), and the checks on the recording directory at start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::Path;

use tracing::warn;

use super::naming;

/// Where segment files are created: the seam through which tests inject a failing disk.
pub(super) trait SegmentStore: Send + 'static {
    type File: Write + Seek + Send + 'static;
    /// Creates `path`, failing with `AlreadyExists` if it is there.
    fn create_new(&mut self, path: &Path) -> io::Result<Self::File>;
    /// Makes the written bytes durable, before the file is renamed to its final name.
    fn sync(&mut self, file: &Self::File) -> io::Result<()>;
}

/// The real file system.
pub(super) struct Disk;

impl SegmentStore for Disk {
    type File = File;

    fn create_new(&mut self, path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    fn sync(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// Creates `dir` if need be and a file in it, so that an unusable directory is reported at
/// start-up rather than at the first segment.
pub(super) fn probe_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".surv-write-probe-{}", std::process::id()));
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"surv"));
    let removed = fs::remove_file(&probe);
    written.and(removed)
}

/// Segments left as `.part` by an earlier run that was killed (or by another viewer writing
/// now): they play up to their last checkpoint; say so once.
pub(super) fn warn_about_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let parts: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| naming::is_part(n))
        .collect();
    if let Some(first) = parts.first() {
        warn!(
            count = parts.len(),
            first = %first,
            "unfinished segments (.part) in the recording directory: from an interrupted run, \
             or another viewer's; they play up to their last checkpoint and are left as they are"
        );
    }
}
