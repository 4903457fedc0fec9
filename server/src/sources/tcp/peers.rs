//! What push and TCP sources (tcp-listen, tcp, udp) count and log about their peers: one
//! counter per cause, one log line per cause at most every ten seconds, with the peer.
//!
//! Rejections also go to [`FrameSink::reject`], so the capture path's `rejected` counter sees
//! them; the per-cause counters here are what tests and operators read to tell them apart.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::capture::FrameSink;

/// How often one cause is logged again while it keeps happening.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a peer's bytes did not become frames, or what happened to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The peer is outside `--source-allow`.
    NotAllowed,
    /// Another camera feeds the source (udp: until it falls silent).
    Busy,
    /// Closed before its first frame to make room for a newer connection: too many were
    /// waiting to send their first frame (tcp-listen; the oldest goes).
    TooManyWaiting,
    /// A frame over `--max-frame-bytes`.
    TooLarge,
    /// A datagram that filled the whole receive buffer, so it may have been cut.
    Truncated,
    /// A payload that is not a whole JPEG (no SOI or no EOI).
    NotJpeg,
    /// A stream that starts with neither framing.
    UnknownFraming,
    /// An ABCDE header that does not parse.
    BadHeader,
    /// No byte for too long.
    Idle,
    /// Bytes trickle in but no frame completes in time (slowloris).
    Slow,
    /// The connection failed (reset, read error) or closed in the middle of a frame.
    Broken,
    /// A seed-001 app's `Request` on the source port (watchers there are not served yet).
    WatcherRequest,
    /// A newer connection took over from this one (not a rejection: logged and counted).
    Replaced,
}

impl Cause {
    pub const ALL: [Cause; 13] = [
        Cause::NotAllowed,
        Cause::Busy,
        Cause::TooManyWaiting,
        Cause::TooLarge,
        Cause::Truncated,
        Cause::NotJpeg,
        Cause::UnknownFraming,
        Cause::BadHeader,
        Cause::Idle,
        Cause::Slow,
        Cause::Broken,
        Cause::WatcherRequest,
        Cause::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NotAllowed => "peer not in --source-allow",
            Cause::Busy => "another camera feeds this source",
            Cause::TooManyWaiting => {
                "closed before a frame for a newer connection (too many waiting)"
            }
            Cause::TooLarge => "frame over --max-frame-bytes",
            Cause::Truncated => "datagram may have been truncated",
            Cause::NotJpeg => "not a whole JPEG",
            Cause::UnknownFraming => "neither length-prefixed JPEG nor ABCDE framing",
            Cause::BadHeader => "bad ABCDE header",
            Cause::Idle => "no data within the idle timeout",
            Cause::Slow => "no whole frame within the frame timeout",
            Cause::Broken => "connection broken",
            Cause::WatcherRequest => "a watcher's Request on the source port (not served yet)",
            Cause::Replaced => "replaced by a newer connection",
        }
    }

    fn index(self) -> usize {
        Cause::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }
}

/// Per-cause counters of one push or TCP source, shared with whoever built it.
#[derive(Debug, Default)]
pub struct PeerStats {
    counts: [AtomicU64; Cause::ALL.len()],
    /// Connections accepted (tcp-listen) or made (tcp).
    pub connections: AtomicU64,
    last_log: Mutex<[Option<Instant>; Cause::ALL.len()]>,
}

impl PeerStats {
    /// How many times `cause` happened.
    pub fn count(&self, cause: Cause) -> u64 {
        self.counts[cause.index()].load(Relaxed)
    }

    /// Counts `cause` for `peer`; a rejection also goes to the sink's `rejected`. Logged with
    /// `detail` the first time and then at most every ten seconds per cause.
    pub(crate) fn note(&self, sink: &FrameSink, cause: Cause, peer: SocketAddr, detail: &str) {
        let n = self.counts[cause.index()].fetch_add(1, Relaxed) + 1;
        if cause != Cause::Replaced {
            sink.reject(cause.as_str());
        }
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut last[cause.index()];
        if slot.is_none_or(|t| now.duration_since(t) >= REPEAT_LOG_EVERY) {
            *slot = Some(now);
            tracing::warn!(%peer, cause = cause.as_str(), detail, so_far = n, "camera peer");
        }
    }
}
