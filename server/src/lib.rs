//! surv-server as a library: capture once, encode once, send every frame to every watcher.
//!
//! `main.rs` parses flags, builds the source and binds the listener, then calls [`run`]; tests
//! do the same on `127.0.0.1:0` with the test pattern or a scripted source. docs/ARCHITECTURE.md
//! draws the whole data path.
//!
//! * [`app`]: the whole server from a plan: every camera and service started by one call,
//!   reloaded (`SIGHUP`), stopped by one token.
//! * [`cameras`]: cameras by name, each with its capture path and its UDP viewers.
//! * [`sources`]: where frames come from, one file per kind, behind one trait.
//! * [`capture`]: the one capture path: runs the source (again after a failure, with backoff),
//!   encodes raw frames once, passes JPEGs through, publishes the newest frame.
//! * [`encoder`]: JPEG encoding under the datagram cap.
//! * [`watchers`]: every kind of watcher as a session in one registry; [`watchers::udp`] is
//!   the UDP viewers' fast path, [`watchers::stream`] the driver for stream-oriented kinds.
//! * [`http`]: the HTTP server for browsers: the live page, `/stream.mjpg`, `/snapshot.jpg`,
//!   `/status` and `/metrics`.
//! * [`journal`]: the join/leave and source lost/back log.
//! * [`mqtt`]: the journal's events, the motion state and the stats, published to a broker.
//! * [`auth`]: the access token and who must present it.
//! * [`sys`]: every system call through `libc`, and so all of the server's `unsafe`.

pub mod app;
pub mod auth;
pub mod cameras;
pub mod capture;
pub mod config;
pub mod detect;
pub mod encoder;
pub mod frame;
pub mod hls;
pub mod http;
pub mod journal;
pub mod jpeg;
pub mod motion;
pub mod mqtt;
pub(crate) mod places;
pub mod rtp;
pub mod sources;
pub mod sys;
pub mod watchers;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cameras::{Camera, Cameras};
pub use capture::{Capture, CaptureShared, CaptureStats, FrameRx, StreamShape};
pub use journal::Journal;
pub use watchers::{RefusalCause, WatcherInfo, WatcherKind, Watchers};

/// How long sessions get to log their LEAVE after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// `--max-viewers-per-ip`'s default.
pub const DEFAULT_MAX_VIEWERS_PER_IP: usize = 64;

/// Admission and session limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Live sessions at most; the next registration is refused with a reason.
    pub max_viewers: usize,
    /// Live UDP viewers (seed form and SURV/1) from one IP at most: a registration draws frames
    /// to a port of the registering IP, and the seed form cannot prove that port asked.
    pub max_viewers_per_ip: usize,
    /// A session that hears nothing from its viewer for this long ends (reason `timeout`).
    pub viewer_timeout: Duration,
    /// A connection that has not completed its registration in this time is dropped.
    pub register_timeout: Duration,
    /// After the seed form's bare digits, how long a pause means "that was all of it".
    pub seed_settle: Duration,
    /// Registrations being read at once; when all are taken, the oldest one is refused to make
    /// room for a new connection (so idle connections cannot lock viewers out).
    pub max_pending_registrations: usize,
    /// Frames a session may send without an ack (see [`watchers::udp::window`]).
    pub max_in_flight: usize,
    /// The largest chunk datagram sent to a SURV/1 viewer that asks for frames in chunks
    /// (`--mtu`, told in the `OK` line); `None`: whole frame datagrams to everyone.
    pub mtu: Option<u16>,
    /// With `mtu`: send parity chunks to a chunked viewer that reports its loss (`--fec`, told
    /// in the `OK` line as `fec=1`).
    pub fec: bool,
    /// With `mtu`: pace a chunked viewer's frames to the path rate it reports (`--pace`, told
    /// in the `OK` line as `pace=1`).
    pub pace: bool,
    /// The access token (`--token`); `None`: everyone may watch.
    pub token: Option<auth::Token>,
    /// With a token set, still let in the seed forms, which cannot carry one.
    pub allow_unauthenticated: bool,
    /// An HTTP client that takes nothing of what it was sent for this long is dropped (an
    /// MJPEG watcher with reason `timeout`).
    pub http_write_deadline: Duration,
    /// `/metrics` answers without the token (`--metrics-public`), for a scraper.
    pub metrics_public: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_viewers: 4096,
            max_viewers_per_ip: DEFAULT_MAX_VIEWERS_PER_IP,
            viewer_timeout: Duration::from_secs(10),
            register_timeout: Duration::from_secs(5),
            seed_settle: Duration::from_millis(50),
            // A pending registration costs a task and a socket (a few KiB). With more places
            // than an attacker holds idle, idle ones wait out the deadline instead of pushing
            // each other out in a loop as fast as they reconnect (the chaos run's 2,000 at once:
            // with 256 places, 12,000 evictions a second and honest lines pushed out before
            // they were read).
            max_pending_registrations: 4096,
            max_in_flight: 4,
            mtu: Some(surv_proto::DEFAULT_MTU_BYTES),
            fec: true,
            pace: true,
            token: None,
            allow_unauthenticated: false,
            http_write_deadline: Duration::from_secs(10),
            metrics_public: false,
        }
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    /// Watchers turned away, by cause (`total()`: for any reason).
    pub refusals: watchers::Refusals,
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
    /// Acks from a SURV/1 viewer's address without its session key, or with another: not the
    /// viewer's (a forged `end`, say); ignored.
    pub keyless_acks: AtomicU64,
    pub send_errors: AtomicU64,
    /// Chunks sent again to chunked SURV/1 viewers that named them in a `nack`.
    pub chunks_resent: AtomicU64,
    /// Parity chunks sent to chunked viewers that report loss (`--fec`).
    pub parity_chunks_sent: AtomicU64,
    /// Frames sent paced to chunked viewers whose path is slow enough (`--pace`).
    pub frames_paced: AtomicU64,
    /// `nack`s not answered: for a frame no longer held or already repaired twice, past the
    /// repair time, or naming chunks the frame does not have.
    pub nacks_refused: AtomicU64,
    /// Watchers refused for a missing or wrong access token (see [`auth`]).
    pub auth_failures: AtomicU64,
    /// Watchers refused unchecked because their address presented too many wrong tokens lately
    /// (see [`auth::throttle`]). `refusals` of cause `unauthorized` counts these and
    /// `auth_failures`.
    pub auth_throttled: AtomicU64,
    /// The RTSP server's own counters.
    pub rtsp: watchers::rtsp::RtspStats,
    /// The WebRTC server's counters and its live peers.
    pub webrtc: watchers::webrtc::WebrtcStats,
    /// LL-HLS: muxers, playlists, parts and segments, waits, refusals.
    pub hls: hls::HlsStats,
}

/// Everything the listeners and the sessions share.
pub struct Server {
    pub config: Config,
    /// The datagram cap, as told to SURV/1 viewers.
    pub max_datagram_bytes: usize,
    /// Every camera, by name; the first is the one watchers get when they name none.
    pub cameras: Cameras,
    pub journal: Arc<Journal>,
    pub stats: Stats,
    /// Every live watcher, of every kind.
    pub watchers: Watchers,
    /// Who may watch (from `config.token`).
    pub access: auth::Access,
    /// Run the fan-out as a task on the runtime instead of a thread of its own: for tests under
    /// paused time, whose clock must not run ahead of a thread it cannot see.
    pub(crate) fanout_on_runtime: bool,
    /// When the server started, for its uptime.
    pub started: std::time::Instant,
    /// The MQTT publisher's health (all zero without `--mqtt`).
    pub mqtt: Arc<mqtt::MqttStats>,
}

impl Server {
    /// A server for one camera, [`cameras::DEFAULT_CAMERA_NAME`], on `capture`.
    pub fn new(
        config: Config,
        capture: &Capture,
        max_datagram_bytes: usize,
        journal: Arc<Journal>,
    ) -> Server {
        let camera = Camera::new(cameras::DEFAULT_CAMERA_NAME, capture);
        Server::with_cameras(
            config,
            Cameras::new(vec![camera]),
            max_datagram_bytes,
            journal,
        )
    }

    /// A server for `cameras`.
    pub fn with_cameras(
        config: Config,
        cameras: Cameras,
        max_datagram_bytes: usize,
        journal: Arc<Journal>,
    ) -> Server {
        Server {
            max_datagram_bytes,
            cameras,
            journal,
            stats: Stats::default(),
            watchers: Watchers::new(config.max_viewers),
            access: auth::Access::new(config.token.clone(), config.allow_unauthenticated),
            fanout_on_runtime: false,
            started: std::time::Instant::now(),
            mqtt: Arc::default(),
            config,
        }
    }
}

/// Where watchers reach the server.
pub struct Listeners {
    /// UDP viewers register here (seed 003's port, SURV/1).
    pub viewers: TcpListener,
    /// Browsers and MJPEG players ([`http`]); `None`: no HTTP server.
    pub http: Option<TcpListener>,
    /// Players and NVRs over RTSP ([`watchers::rtsp`]); `None`: no RTSP server.
    pub rtsp: Option<watchers::rtsp::RtspSockets>,
    /// WebRTC peers' media ([`watchers::webrtc`]; their offers come over `http`); `None`: no
    /// WebRTC.
    pub webrtc: Option<watchers::webrtc::WebrtcSocket>,
}

/// Serves viewers on `listener` until `shutdown` is cancelled, then ends every session (each logs
/// its LEAVE) within [`SHUTDOWN_GRACE`].
pub async fn run(server: Arc<Server>, listener: TcpListener, shutdown: CancellationToken) {
    let listeners = Listeners {
        viewers: listener,
        http: None,
        rtsp: None,
        webrtc: None,
    };
    run_with(server, listeners, shutdown).await
}

/// Serves every kind of watcher on its listener until `shutdown` is cancelled, then ends every
/// session (each logs its LEAVE) within [`SHUTDOWN_GRACE`].
pub async fn run_with(server: Arc<Server>, listeners: Listeners, shutdown: CancellationToken) {
    let Listeners {
        viewers: listener,
        http,
        rtsp,
        webrtc,
    } = listeners;
    let tracker = TaskTracker::new();
    let webrtc = webrtc.and_then(|socket| {
        match watchers::webrtc::start(server.clone(), socket, shutdown.clone()) {
            Ok((handle, ended)) => {
                tracker.spawn(ended);
                Some(handle)
            }
            Err(e) => {
                tracing::error!(error = %e, "WebRTC is off");
                None
            }
        }
    });
    if let Some(http) = http {
        tracker.spawn(http::serve_with(
            server.clone(),
            http,
            webrtc,
            shutdown.clone(),
        ));
    }
    if let Some(rtsp) = rtsp {
        tracker.spawn(watchers::rtsp::run(server.clone(), rtsp, shutdown.clone()));
    }
    // Each camera ends with the server (a camera a reload adds ends with the server too: its
    // token is a child of `shutdown`, see `app`).
    tracker.spawn(end_cameras_with(server.clone(), shutdown.clone()));
    for camera in server.cameras.list().iter() {
        start_fanout(&server, camera, &tracker);
    }
    watchers::udp::admission::accept_loop(&server, &listener, &tracker, &shutdown).await;
    wind_down(&tracker, "sessions").await;
    for camera in server.cameras.list().iter() {
        stop_fanout(camera).await;
    }
    server.log_stats();
}

/// Ends every camera (cancels its [`Camera::stop`]) when `shutdown` is cancelled.
pub(crate) async fn end_cameras_with(server: Arc<Server>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    for camera in server.cameras.list().iter() {
        camera.stop.cancel();
    }
}

/// Starts `camera`'s fan-out (its frames to its UDP viewers) until [`Camera::stop`]: a thread of
/// its own, so that a frame of one camera never waits for another's sends.
pub(crate) fn start_fanout(server: &Arc<Server>, camera: &Arc<Camera>, tracker: &TaskTracker) {
    let stop = camera.stop.clone();
    if server.fanout_on_runtime {
        tracker.spawn(watchers::udp::data_path::fan_out_loop(
            server.clone(),
            camera.clone(),
            stop,
        ));
        return;
    }
    match watchers::udp::data_path::spawn_fanout_thread(server.clone(), camera.clone(), stop) {
        Ok(t) => *camera.fanout.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
        Err(e) => {
            tracing::error!(camera = %camera.name, error = %e, "cannot start the fan-out thread; no frames will be sent to UDP viewers");
        }
    }
}

/// Waits for `camera`'s fan-out thread to end (after [`Camera::stop`]).
pub(crate) async fn stop_fanout(camera: &Camera) {
    let thread = camera
        .fanout
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(t) = thread {
        // It sees the cancellation at once; it may be in the middle of one frame's sends.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// Closes `tracker` and waits for its tasks (watchers logging their LEAVE) at most
/// [`SHUTDOWN_GRACE`]; says how many of `what` were still running if they did not all end.
pub(crate) async fn wind_down(tracker: &TaskTracker, what: &str) {
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "{what} still running after the shutdown grace period"
        );
    }
}

impl Server {
    /// The first camera: the one watchers get when they name none (seed-form viewers, today's
    /// `/stream.mjpg`).
    pub fn first_camera(&self) -> Arc<Camera> {
        self.cameras.first()
    }

    /// One line with every counter, at shutdown (the capture counters summed over the cameras,
    /// and a line for each camera when there are several): what the load tool (`surv-load`)
    /// reads to check "one encode per captured frame" and the encode time.
    pub fn log_stats(&self) {
        let cameras = self.cameras.list();
        let sum = |f: fn(&CaptureStats) -> &AtomicU64| -> u64 {
            cameras
                .iter()
                .map(|c| f(&c.capture.stats).load(Relaxed))
                .sum()
        };
        if cameras.len() > 1 {
            for camera in cameras.iter() {
                let c = &camera.capture.stats;
                tracing::info!(
                    camera = %camera.name,
                    captured = c.captured.load(Relaxed),
                    published = c.published.load(Relaxed),
                    passed_through = c.passed_through.load(Relaxed),
                    rejected = c.rejected.load(Relaxed),
                    source_lost = c.source_lost.load(Relaxed),
                    "camera stats"
                );
            }
        }
        let s = &self.stats;
        tracing::info!(
            captured = sum(|c| &c.captured),
            published = sum(|c| &c.published),
            passed_through = sum(|c| &c.passed_through),
            rejected = sum(|c| &c.rejected),
            source_lost = sum(|c| &c.source_lost),
            encode_attempts = sum(|c| &c.encode_attempts),
            encode_us = sum(|c| &c.encode_us),
            capture_errors = sum(|c| &c.errors),
            joins = s.joins.load(Relaxed),
            leaves = s.leaves.load(Relaxed),
            refused = s.refusals.total(),
            probes = s.probes.load(Relaxed),
            gone_before_accepted = s.gone_before_accepted.load(Relaxed),
            frames_sent = s.frames_sent.load(Relaxed),
            bytes_sent = s.bytes_sent.load(Relaxed),
            frames_skipped = s.frames_skipped.load(Relaxed),
            acks = s.acks.load(Relaxed),
            bad_acks = s.bad_acks.load(Relaxed),
            foreign_datagrams = s.foreign_datagrams.load(Relaxed),
            keyless_acks = s.keyless_acks.load(Relaxed),
            send_errors = s.send_errors.load(Relaxed),
            auth_failures = s.auth_failures.load(Relaxed),
            auth_throttled = s.auth_throttled.load(Relaxed),
            "final stats"
        );
    }
}
