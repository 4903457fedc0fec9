//! Disks and logs for the recorder's tests: a disk that fills up, one that makes the recorder
//! wait, and a log that the test can read.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::recorder::storage::{Disk, SegmentStore};

/// A disk whose first `create_new` waits until the test lets it go.
pub(super) struct GatedDisk {
    pub(super) entered: Sender<()>,
    pub(super) release: Receiver<()>,
}

impl SegmentStore for GatedDisk {
    type File = File;

    fn create_new(&mut self, path: &Path) -> io::Result<File> {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        Disk.create_new(path)
    }

    fn sync(&mut self, file: &File) -> io::Result<()> {
        Disk.sync(file)
    }
}

/// A disk that is full while its files number `full` (counting from 1) are written: they take
/// `room_bytes`, then fail with ENOSPC.
pub(super) struct FlakyDisk {
    pub(super) created: usize,
    pub(super) full: Range<usize>,
    pub(super) room_bytes: u64,
}

pub(super) struct FlakyFile {
    file: File,
    room_bytes: Option<u64>,
}

impl SegmentStore for FlakyDisk {
    type File = FlakyFile;

    fn create_new(&mut self, path: &Path) -> io::Result<FlakyFile> {
        let file = Disk.create_new(path)?;
        self.created += 1;
        let full = self.full.contains(&self.created);
        Ok(FlakyFile {
            file,
            room_bytes: full.then_some(self.room_bytes),
        })
    }

    fn sync(&mut self, file: &FlakyFile) -> io::Result<()> {
        Disk.sync(&file.file)
    }
}

impl Write for FlakyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.room_bytes {
            None => self.file.write(buf),
            Some(0) => Err(io::Error::from_raw_os_error(28)),
            Some(room) => {
                let n = buf.len().min(usize::try_from(*room).unwrap());
                let n = self.file.write(&buf[..n])?;
                *room -= n as u64;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for FlakyFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Collects formatted log lines, including the recorder thread's.
#[derive(Clone, Default)]
pub(super) struct LogBuf(pub(super) Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    /// A subscriber that writes here, debug and up.
    pub(super) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish()
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
