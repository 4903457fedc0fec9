//! The driver for stream-oriented watchers (TCP streams, HTTP MJPEG): the newest frame to each,
//! at the pace that watcher can take.
//!
//! Each such watcher runs [`serve`] in its own task with its own [`FrameWriter`] (which frames
//! one JPEG for its wire: a multipart part, an OAK header, …; a frame without a JPEG is not
//! theirs, and skipped). It waits until the writer is
//! ready for a frame, then for a new frame, writes it, and waits again: frames published while
//! a write was under way are never queued, only the newest is taken next, and the ones in
//! between are counted as skipped. Capture and the other watchers never wait for it. A writer
//! that does not become ready, or a write that does not finish, within the write deadline (a
//! peer that stopped reading) ends the watcher with reason `timeout`, and so does a writer
//! error of kind `TimedOut` (a deadline of the writer's own); any other error ends it with
//! `closed`.
//!
//! A writer that can tell when its peer will take more (an HTTP body polled by hyper only when
//! its buffer has room) says so in [`FrameWriter::ready`], so that the frame is picked at that
//! moment and is the newest one, instead of being picked early and waiting, stale, in a buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{LiveTally, Tally};
use crate::capture::FrameRx;
use crate::frame::EncodedFrame;
use crate::journal::LeaveReason;
use crate::Stats;

/// What a write of one frame resolves to.
pub type FrameWrite<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// How a stream-oriented watcher kind puts one frame on its wire.
pub trait FrameWriter: Send {
    /// Writes `jpeg`, the JPEG of `frame`, and flushes it.
    fn write_frame<'a>(&'a mut self, frame: &'a EncodedFrame, jpeg: &'a Bytes) -> FrameWrite<'a>;

    /// Resolves when the peer can take the next frame now (an error: it is gone). The default,
    /// for writers that cannot tell, is at once: the write itself then waits.
    fn ready(&mut self) -> FrameWrite<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Sends the newest frame to `writer` until the watcher is gone, too slow, or `shutdown`;
/// returns why it ended and what it was sent. `live` follows the tally as it grows.
pub async fn serve<W: FrameWriter>(
    stats: &Stats,
    mut frames: FrameRx,
    writer: &mut W,
    write_deadline: Duration,
    shutdown: &CancellationToken,
    live: &LiveTally,
) -> (LeaveReason, Tally) {
    let mut tally = Tally::default();
    // The frame current at join goes out at once.
    frames.mark_changed();
    let reason = loop {
        let ready = tokio::select! {
            biased;
            () = shutdown.cancelled() => break LeaveReason::Shutdown,
            res = tokio::time::timeout(write_deadline, writer.ready()) => res,
        };
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => break LeaveReason::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stream watcher gone");
                break LeaveReason::Closed;
            }
            Err(_elapsed) => break LeaveReason::Timeout,
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break LeaveReason::Shutdown,
            res = frames.changed() => if res.is_err() {
                // The capture path is gone: the server is stopping.
                break LeaveReason::Shutdown;
            },
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        let Some(jpeg) = frame.jpeg() else {
            continue;
        };
        tally.seen(frame.seq);
        live.set(&tally);
        let written = tokio::select! {
            biased;
            () = shutdown.cancelled() => break LeaveReason::Shutdown,
            res = tokio::time::timeout(write_deadline, writer.write_frame(&frame, jpeg)) => res,
        };
        match written {
            Ok(Ok(())) => {
                tally.sent(jpeg.len());
                stats.frames_sent.fetch_add(1, Relaxed);
                stats.bytes_sent.fetch_add(jpeg.len() as u64, Relaxed);
                live.set(&tally);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => break LeaveReason::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stream watcher write failed");
                break LeaveReason::Closed;
            }
            Err(_elapsed) => break LeaveReason::Timeout,
        }
    };
    (reason, tally)
}

#[cfg(test)]
mod tests;
