//! surv-server as a library: capture once, encode once, send every frame to every viewer.
//!
//! `main.rs` parses flags, opens the source and binds the listener, then calls [`run`]; tests do
//! the same on `127.0.0.1:0` with the test pattern.
//!
//! * [`capture`]: the capture thread (source → encoder → newest frame).
//! * [`admission`]: the TCP listener and registration.
//! * [`session`]: one task per viewer: its control (end, timeout, the window's schedule).
//! * [`fanout`]: the data path: each frame to every viewer in batches, acks back, on shared sockets.
//! * [`udp_batch`]: `sendmmsg`/`recvmmsg`, the server's only `unsafe`.
//! * [`window`]: the ack window that keeps a lost datagram or ack from stalling a session.
//! * [`journal`]: the join/leave log.
//! * [`source`], [`camera`], [`encoder`]: frames in, JPEG datagrams out.

pub mod admission;
pub mod camera;
pub mod capture;
pub mod encoder;
pub mod fanout;
pub mod journal;
pub mod session;
pub mod source;
pub mod udp_batch;
pub mod window;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use capture::{Capture, CaptureStats, FrameRx, StreamShape};
pub use journal::Journal;
pub use session::SessionInfo;

/// How long sessions get to log their LEAVE after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Admission and session limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Live sessions at most; the next registration is refused with a reason.
    pub max_viewers: usize,
    /// A session that hears nothing from its viewer for this long ends (reason `timeout`).
    pub viewer_timeout: Duration,
    /// A connection that has not completed its registration in this time is dropped.
    pub register_timeout: Duration,
    /// After the seed form's bare digits, how long a pause means "that was all of it".
    pub seed_settle: Duration,
    /// Registrations being read at once; more connections are closed at once (counted).
    pub max_pending_registrations: usize,
    /// Frames a session may send without an ack (see [`window`]).
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_viewers: 4096,
            viewer_timeout: Duration::from_secs(10),
            register_timeout: Duration::from_secs(5),
            seed_settle: Duration::from_millis(50),
            max_pending_registrations: 256,
            max_in_flight: 4,
        }
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    /// Registrations turned away, for any reason.
    pub refused: AtomicU64,
    /// Connections closed without sending a byte (port checks); not refusals.
    pub probes: AtomicU64,
    /// SURV/1 viewers admitted whose connection failed before their acceptance was written:
    /// no session, no JOIN.
    pub gone_before_accepted: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Frames a session did not send because its viewer was behind (summed at LEAVE).
    pub frames_skipped: AtomicU64,
    pub acks: AtomicU64,
    /// Datagrams from the viewer's address that are not acks.
    pub bad_acks: AtomicU64,
    /// Datagrams from any address other than the session's viewer: ignored.
    pub foreign_datagrams: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Everything the listener and the sessions share.
pub struct Server {
    pub config: Config,
    /// Capture parameters, and the datagram cap, as told to SURV/1 viewers.
    pub shape: StreamShape,
    pub max_datagram_bytes: usize,
    pub frames: FrameRx,
    pub capture_stats: Arc<CaptureStats>,
    pub journal: Journal,
    pub stats: Stats,
    /// Live sessions by id.
    pub sessions: DashMap<u64, SessionInfo>,
    /// The shared UDP sockets and the sessions each serves.
    pub data: fanout::DataPath,
    next_id: AtomicU64,
    slots: AtomicUsize,
}

impl Server {
    pub fn new(
        config: Config,
        capture: &Capture,
        max_datagram_bytes: usize,
        journal: Journal,
    ) -> Server {
        Server {
            config,
            shape: capture.shape,
            max_datagram_bytes,
            frames: capture.frames.clone(),
            capture_stats: capture.stats.clone(),
            journal,
            stats: Stats::default(),
            sessions: DashMap::new(),
            data: fanout::DataPath::default(),
            next_id: AtomicU64::new(1),
            slots: AtomicUsize::new(0),
        }
    }

    /// Claims a viewer slot, or says no when `max_viewers` are live.
    fn try_reserve_slot(&self) -> bool {
        self.slots
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.config.max_viewers).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_slot(&self) {
        self.slots.fetch_sub(1, Relaxed);
    }
}

/// Serves viewers on `listener` until `shutdown` is cancelled, then ends every session (each logs
/// its LEAVE) within [`SHUTDOWN_GRACE`].
pub async fn run(server: Arc<Server>, listener: TcpListener, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let fanout = match fanout::spawn_fanout_thread(server.clone(), shutdown.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the fan-out thread; no frames will be sent");
            shutdown.cancel();
            None
        }
    };
    admission::accept_loop(&server, &listener, &tracker, &shutdown).await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "sessions still running after the shutdown grace period"
        );
    }
    if let Some(t) = fanout {
        // It sees the cancellation at once; it may be in the middle of one frame's sends.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    server.log_stats();
}

impl Server {
    /// One line with every counter, at shutdown: what the load tool (`surv-load`) reads to
    /// check "one encode per captured frame" and the encode time.
    pub fn log_stats(&self) {
        let (c, s) = (&self.capture_stats, &self.stats);
        tracing::info!(
            captured = c.captured.load(Relaxed),
            encoded = c.encoded.load(Relaxed),
            encode_attempts = c.encode_attempts.load(Relaxed),
            encode_us = c.encode_us.load(Relaxed),
            capture_errors = c.errors.load(Relaxed),
            joins = s.joins.load(Relaxed),
            leaves = s.leaves.load(Relaxed),
            refused = s.refused.load(Relaxed),
            gone_before_accepted = s.gone_before_accepted.load(Relaxed),
            frames_sent = s.frames_sent.load(Relaxed),
            bytes_sent = s.bytes_sent.load(Relaxed),
            frames_skipped = s.frames_skipped.load(Relaxed),
            acks = s.acks.load(Relaxed),
            bad_acks = s.bad_acks.load(Relaxed),
            foreign_datagrams = s.foreign_datagrams.load(Relaxed),
            send_errors = s.send_errors.load(Relaxed),
            "final stats"
        );
    }
}
