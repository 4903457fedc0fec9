//! `udp://HOST:PORT`: seed 001's Raspberry Pi, which `sendto`s each JPEG as one datagram (no
//! header, ~10 fps) and never reads anything back.
//!
//! * Every datagram is judged by [`classify`]. Seed 001's server takes its camera's frames and
//!   its apps' `Request`s on one port (one firewall hole): with a [`SharedPort`] (`udp://…:P`
//!   with `--request-port P`), whatever is not a JPEG is offered to the watchers that share the
//!   port first ([`PortSharer`], the `Request` hub), and the apps are served from this same
//!   socket. Without one, a `Request` is counted and dropped.
//! * The receive buffer holds any UDP datagram (65,536 bytes, over the 65,507 of IPv4 and the
//!   65,527 of IPv6); a datagram that fills it may have been cut and is rejected, never used.
//! * Peers outside `--source-allow` are rejected, counted, and logged once per cause.
//! * **One sender at a time**: the first allowed sender of a JPEG owns the source until it has
//!   been silent long enough to be reported lost ([`silence_limit`]: ten frame intervals, from
//!   1 to 3 s); datagrams from anyone else meanwhile are rejected as [`Cause::Busy`]. A Pi that
//!   restarts (new source port) is therefore back within 3 s, and a stray sender cannot
//!   interleave its pictures with the camera's.
//! * A silent owner is reported with [`FrameSink::lost`] ("no frames from … for 1.0 s"); the
//!   source keeps receiving, and the next frame is SOURCE-BACK.
//!
//! The arrival time is each frame's capture time.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::tcp::is_whole_jpeg;
use super::tcp::peers::{Cause, PeerStats};
use super::{unix_micros_now, OnStall, Source, SourceError, SourceOptions, SourceRun};
use crate::capture::{FrameSink, StreamShape};
use crate::frame::JpegFrame;

/// Receive buffer: larger than any UDP payload, so a full buffer means a cut datagram.
pub const RECV_BUFFER_BYTES: usize = 65_536;
/// Kernel receive buffer asked for: a few frames of slack while one is re-encoded.
const SOCKET_RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Silence before the owner is reported lost, before its frame rate is known, and at most.
pub const MAX_SILENCE: Duration = Duration::from_secs(3);
/// Silence before the owner is reported lost, at least (a fast camera).
pub const MIN_SILENCE: Duration = Duration::from_secs(1);

/// What a datagram on the source port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Starts like a JPEG: a camera frame.
    Jpeg,
    /// Seed 001's app asking for the stream (`Request`): a watcher, not a camera.
    WatcherRequest,
    /// Anything else.
    Other,
}

/// The one place datagrams on the source port are told apart.
pub fn classify(datagram: &[u8]) -> Datagram {
    if datagram.starts_with(&[0xFF, 0xD8]) {
        Datagram::Jpeg
    } else if datagram == b"Request" {
        Datagram::WatcherRequest
    } else {
        Datagram::Other
    }
}

/// How long the owner may be silent before it is reported lost: ten of its frame intervals,
/// within [`MIN_SILENCE`]..=[`MAX_SILENCE`] ([`MAX_SILENCE`] while the interval is unknown).
pub fn silence_limit(frame_interval: Option<Duration>) -> Duration {
    frame_interval.map_or(MAX_SILENCE, |i| {
        i.saturating_mul(10).clamp(MIN_SILENCE, MAX_SILENCE)
    })
}

/// The sender feeding the source.
#[derive(Debug, Clone, Copy)]
struct Owner {
    addr: SocketAddr,
    last_frame_at: Instant,
    /// Smoothed time between its frames.
    interval: Option<Duration>,
}

impl Owner {
    fn frame_at(&mut self, now: Instant) {
        let gap = now.duration_since(self.last_frame_at);
        self.interval = Some(match self.interval {
            None => gap,
            Some(i) => (i * 4 + gap) / 5,
        });
        self.last_frame_at = now;
    }

    fn lost_at(&self) -> Instant {
        self.last_frame_at + silence_limit(self.interval)
    }
}

/// Watchers that take datagrams arriving on the source's port (the `Request` hub).
pub trait PortSharer: Send + Sync {
    /// `true` when `datagram` was theirs and is consumed.
    fn offer(&self, datagram: &[u8], from: SocketAddr) -> bool;
}

/// The source's socket, bound before the source runs, and the watchers sharing it (set once the
/// server exists, after the capture path has started).
#[derive(Clone)]
pub struct SharedPort {
    pub socket: Arc<UdpSocket>,
    pub sharer: Arc<OnceLock<Arc<dyn PortSharer>>>,
}

/// A source fed by JPEG datagrams.
pub struct UdpSource {
    host: String,
    port: u16,
    opts: SourceOptions,
    stats: Arc<PeerStats>,
    shared: Option<SharedPort>,
}

impl UdpSource {
    pub fn new(host: &str, port: u16, opts: &SourceOptions) -> UdpSource {
        UdpSource {
            host: host.to_string(),
            port,
            opts: opts.clone(),
            stats: Arc::default(),
            shared: None,
        }
    }

    /// Reads `shared.socket` (bound by the caller, on this source's address) instead of binding
    /// its own, and offers what is not a JPEG to `shared.sharer`.
    pub fn sharing(mut self, shared: SharedPort) -> UdpSource {
        self.shared = Some(shared);
        self
    }

    /// The per-cause counters of this source.
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }

    /// Why `datagram` from `from` may not feed the source (`owner` being what it is), if so.
    fn judge(&self, datagram: &[u8], from: SocketAddr, owner: Option<&Owner>) -> Option<Cause> {
        if !self.opts.allows(from.ip()) {
            return Some(Cause::NotAllowed);
        }
        if datagram.len() >= RECV_BUFFER_BYTES {
            return Some(Cause::Truncated);
        }
        match classify(datagram) {
            Datagram::WatcherRequest => return Some(Cause::WatcherRequest),
            Datagram::Other => return Some(Cause::NotJpeg),
            Datagram::Jpeg => {}
        }
        if owner.is_some_and(|o| o.addr != from) {
            return Some(Cause::Busy);
        }
        if datagram.len() > self.opts.max_frame_bytes {
            return Some(Cause::TooLarge);
        }
        if !is_whole_jpeg(datagram) {
            return Some(Cause::NotJpeg);
        }
        None
    }
}

impl Source for UdpSource {
    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("udp://[{}]:{}", self.host, self.port)
        } else {
            format!("udp://{}:{}", self.host, self.port)
        }
    }

    /// Cameras push to it: a stall is reported, the socket stays open for the camera.
    fn on_stall(&self) -> OnStall {
        OnStall::Report
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            let device = self.describe();
            let socket = match &self.shared {
                Some(shared) => shared.socket.clone(),
                None => Arc::new(
                    UdpSocket::bind((self.host.as_str(), self.port))
                        .await
                        .map_err(|e| SourceError::Open {
                            device: device.clone(),
                            reason: format!("cannot bind: {e}"),
                        })?,
                ),
            };
            let sharer = self.shared.as_ref().map(|s| s.sharer.clone());
            let fd = socket.as_raw_fd();
            if let Err(e) = crate::sys::set_buffer(fd, libc::SO_RCVBUF, SOCKET_RECV_BUFFER_BYTES) {
                tracing::debug!(error = %e, "SO_RCVBUF not raised");
            }
            sink.opened(&device, StreamShape::default());
            let mut buf = vec![0u8; RECV_BUFFER_BYTES];
            let mut owner: Option<Owner> = None;
            loop {
                // Checked here, not only on a quiet socket: datagrams from others keep coming.
                if let Some(o) = owner.filter(|o| Instant::now() >= o.lost_at()) {
                    owner = None;
                    let silent = silence_limit(o.interval).as_secs_f64();
                    sink.lost(&format!("no frames from {} for {silent:.1} s", o.addr));
                }
                // Far enough to never fire while nobody owns the source.
                let lost_at = owner.map_or(Instant::now() + MAX_SILENCE * 100, |o| o.lost_at());
                let received = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    r = timeout_at(lost_at, socket.recv_from(&mut buf)) => r,
                };
                let (n, from) = match received {
                    Err(_) => continue,
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        return Err(SourceError::Read {
                            device,
                            reason: e.to_string(),
                        })
                    }
                };
                let datagram = &buf[..n];
                let sharer = sharer.as_ref().and_then(|s| s.get());
                if classify(datagram) != Datagram::Jpeg
                    && sharer.is_some_and(|s| s.offer(datagram, from))
                {
                    continue;
                }
                if let Some(cause) = self.judge(datagram, from, owner.as_ref()) {
                    let detail = format!("{n}-byte datagram dropped");
                    self.stats.note(sink, cause, from, &detail);
                    continue;
                }
                let now = Instant::now();
                match owner.as_mut() {
                    Some(o) => o.frame_at(now),
                    None => {
                        tracing::info!(source = %device, camera = %from, "camera streaming");
                        owner = Some(Owner {
                            addr: from,
                            last_frame_at: now,
                            interval: None,
                        });
                    }
                }
                let frame = JpegFrame::new(Bytes::copy_from_slice(datagram), unix_micros_now());
                sink.publish(frame).await;
            }
        })
    }
}
