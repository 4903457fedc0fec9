//! OAK host programs (seed 000's `tcp_streaming_server_host.py`) watching over TCP
//! (`--tcp-stream-port`): each client gets, per frame, the framing the OAK PoE
//! `tcp_streaming_server` pipeline writes — a 32-byte ASCII header, `ABCDE ` + the timestamp in
//! seconds centred in 18 characters + the JPEG's size centred in 8, then the JPEG — so the host
//! program reads surv unchanged (it reads 32 bytes, splits on runs of spaces, reads the size).
//!
//! Each client is a watcher (`form=oak-tcp`) driven by [`super::stream::serve`]: newest frame
//! wins, skips counted, a client that stops reading leaves with `timeout`. What the host sends
//! (the OAK focus-control variant writes 32-byte commands) is read and discarded, so that a
//! host that closes its socket leaves at once (`closed`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stream::{serve, FrameWrite, FrameWriter};
use super::{LiveTally, RefusalCause, Refused, WatcherKind, Watchers};
use crate::auth::Presented;
use crate::frame::EncodedFrame;
use crate::journal::LeaveReason;
use crate::{Camera, Server};

/// The header's length: `ABCDE ` (6) + timestamp (18) + size (8).
pub const HEADER_BYTES: usize = 32;

/// A client that does not take a frame within this long is dropped (`timeout`).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// The OAK header for a frame of `len` bytes captured at `capture_unix_us`: exactly
/// [`HEADER_BYTES`] ASCII bytes (the fields are cut if they ever outgrow their widths).
pub fn header(capture_unix_us: u64, len: usize, out: &mut String) {
    out.clear();
    let secs = capture_unix_us as f64 / 1e6;
    let _ = write!(out, "ABCDE {:^18.6}{:^8}", secs, len);
    out.truncate(HEADER_BYTES);
    while out.len() < HEADER_BYTES {
        out.push(' ');
    }
}

/// Serves OAK host programs on `listener` with `camera`'s frames until `shutdown`; returns
/// once every client has left (or after [`crate::SHUTDOWN_GRACE`]).
pub async fn run(
    server: Arc<Server>,
    camera: Arc<Camera>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let camera = camera.clone();
                tracker.spawn(watch(
                    server.clone(),
                    camera,
                    stream,
                    peer,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!(error = %e, "OAK TCP stream: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    crate::wind_down(&tracker, "OAK TCP clients").await;
}

/// One client, from accept to LEAVE.
async fn watch(
    server: Arc<Server>,
    camera: Arc<Camera>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    // The OAK's host program sends nothing: like the seed forms, it cannot carry a token.
    let kind = WatcherKind::OakTcp;
    if let Err(denied) =
        server
            .access
            .check(&server.stats, peer, kind.as_str(), Presented::SeedForm)
    {
        let refused = Refused::new(RefusalCause::Unauthorized, denied.to_string());
        return refused.record(&server, peer, Some(kind));
    }
    let slot = match Watchers::admit(&server) {
        Ok(slot) => slot,
        Err(refused) => return refused.record(&server, peer, Some(kind)),
    };
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let live = Arc::new(LiveTally::default());
    let membership = slot.join_reporting(WatcherKind::OakTcp, peer, &camera, live.clone());
    let stop = shutdown.child_token();
    let closed = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn(drain(read, stop.clone(), closed.clone()));
    let mut writer = OakWriter {
        write,
        header: String::with_capacity(HEADER_BYTES),
    };
    let (mut reason, tally) = serve(
        &server.stats,
        camera.frames.clone(),
        &mut writer,
        WRITE_DEADLINE,
        &stop,
        &live,
    )
    .await;
    if reason == LeaveReason::Shutdown && closed.load(Relaxed) && !shutdown.is_cancelled() {
        reason = LeaveReason::Closed;
    }
    stop.cancel();
    let _ = drain.await;
    let _ = writer.write.shutdown().await;
    membership.leave(reason, &tally);
}

/// Reads and discards what the client sends until it closes (then ends the watcher) or `stop`.
async fn drain(mut read: OwnedReadHalf, stop: CancellationToken, closed: Arc<AtomicBool>) {
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            n = read.read(&mut buf) => n,
        };
        if matches!(n, Ok(0) | Err(_)) {
            closed.store(true, Relaxed);
            stop.cancel();
            return;
        }
    }
}

struct OakWriter {
    write: OwnedWriteHalf,
    header: String,
}

impl FrameWriter for OakWriter {
    fn write_frame<'a>(&'a mut self, frame: &'a EncodedFrame, jpeg: &'a Bytes) -> FrameWrite<'a> {
        Box::pin(async move {
            header(frame.capture_unix_us, jpeg.len(), &mut self.header);
            self.write.write_all(self.header.as_bytes()).await?;
            self.write.write_all(jpeg).await?;
            self.write.flush().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the OAK host program does with the 32 bytes: `re.split(' +', header)`.
    fn host_parse(header: &str) -> (String, f64, usize) {
        let chunks: Vec<&str> = header.split(' ').filter(|c| !c.is_empty()).collect();
        (
            chunks[0].to_string(),
            chunks[1].parse().unwrap(),
            chunks[2].parse().unwrap(),
        )
    }

    #[test]
    fn the_header_is_32_ascii_bytes_the_host_program_splits() {
        let mut h = String::new();
        header(1_763_851_234_123_456, 48_213, &mut h);
        assert_eq!(h.len(), HEADER_BYTES);
        assert!(h.starts_with("ABCDE "));
        let (magic, ts, size) = host_parse(&h);
        assert_eq!(magic, "ABCDE");
        assert!((ts - 1_763_851_234.123_456).abs() < 1e-6, "{ts}");
        assert_eq!(size, 48_213);
        // Centred, as the OAK pipeline's str.center(18) / center(8) write them.
        assert_eq!(&h[6..24], "1763851234.123456 ");
        assert_eq!(&h[24..], " 48213  ");
        for (us, len) in [(0, 0), (u64::MAX, usize::MAX), (5, 99_999_999)] {
            header(us, len, &mut h);
            assert_eq!(h.len(), HEADER_BYTES, "{us} {len}");
        }
    }
}
