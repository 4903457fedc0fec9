//! A folder of JPEGs shown at `--fps` in name order: a slideshow, or a time-lapse that a
//! camera keeps adding to. The folder is listed again at each pass, so with `--loop` new files
//! are picked up; without it the source is finished after one pass.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::{blocking, load_jpeg, publish, FileSource, Ticker};
use crate::capture::{FrameSink, StreamShape};
use crate::sources::SourceError;

/// Shows the folder's JPEGs until the end of a pass (no `--loop`), a failure, or `stop`.
pub(super) async fn run(
    src: &FileSource,
    sink: &FrameSink,
    stop: &CancellationToken,
) -> Result<(), SourceError> {
    let mut ticker = Ticker::new(src.fps);
    let mut opened = false;
    loop {
        let dir = src.path.clone();
        let files = blocking(move || list_jpegs(&dir))
            .await
            .and_then(|listed| listed.map_err(|e| e.to_string()))
            .map_err(|reason| src.open_error(format!("listing the folder: {reason}")))?;
        if files.is_empty() {
            return Err(
                src.open_error("no .jpg or .jpeg files in the folder (yet); trying again later")
            );
        }
        if !opened {
            // The size is the first picture's, seen by the sink; pictures may differ in size.
            sink.opened(
                &format!(
                    "folder {} ({} JPEGs) @{}{}",
                    src.path.display(),
                    files.len(),
                    src.fps,
                    if src.looped { " (looped)" } else { "" }
                ),
                StreamShape {
                    width: 0,
                    height: 0,
                    fps: src.fps,
                },
            );
            opened = true;
        }
        let mut shown = 0usize;
        for file in &files {
            let (path, cap) = (file.clone(), src.max_frame_bytes);
            let loaded = blocking(move || load_jpeg(&path, cap))
                .await
                .and_then(|r| r);
            let jpeg = match loaded {
                Ok(loaded) => loaded.jpeg,
                Err(reason) => {
                    // Skipped without taking a turn: the next picture comes on time.
                    let name = file.file_name().unwrap_or(file.as_os_str());
                    sink.reject(&format!("{}: {reason}", Path::new(name).display()));
                    continue;
                }
            };
            if !ticker.tick(stop).await {
                return Ok(());
            }
            publish(sink, jpeg).await;
            ticker.advance();
            shown += 1;
        }
        if shown == 0 {
            return Err(src.read_error(format!(
                "none of the {} .jpg/.jpeg files in the folder is a usable JPEG",
                files.len()
            )));
        }
        if !src.looped {
            return Err(src.finished());
        }
    }
}

/// The folder's `*.jpg` and `*.jpeg` files (any case), sorted by name. Blocking.
pub(super) fn list_jpegs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_jpeg = path
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg"));
        // Followed through symlinks; a FIFO or a folder named x.jpg is not a picture.
        if is_jpeg && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}
