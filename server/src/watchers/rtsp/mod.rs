//! The RTSP server (`--rtsp-port`, default 8554): every camera for players and NVRs, as
//! `rtsp://HOST:PORT/<camera>` (H.264, RTP per RFC 6184) and `rtsp://HOST:PORT/<camera>/mjpeg`
//! (its JPEGs, RFC 2435).
//!
//! ```text
//!  player ──TCP: OPTIONS, DESCRIBE, SETUP, PLAY … TEARDOWN──▶ conn (one task a connection)
//!         ◀──── RTP/RTCP interleaved ($ frames) on the same connection ───┤ (through its link;
//!         ◀──── or RTP/RTCP over UDP, from the one shared port pair ──────┘  H.264 once caught
//!                 (RTP on --rtsp-udp-port, RTCP on the next port)            up: the camera's
//!                                                                            one writer, link.rs)
//! ```
//!
//! A PLAYing session is a watcher like every other (`form=rtsp` in the journal, against
//! `--max-viewers`). H.264 sessions start at once: from the camera's cached GOP (the frames
//! since its newest keyframe), and an encoded camera makes a keyframe for a joining session
//! (at most one a second). A session that falls behind skips to the next keyframe, counted.
//! UDP media go only to the RTSP peer's own address. With `--token`, DESCRIBE/SETUP/PLAY need
//! it, as the password of Basic or Digest authentication (any user name).

mod conn;
mod link;
pub mod request;

pub use link::H264Writer;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Server;

/// The RTSP port when `--rtsp-port` is not given.
pub const DEFAULT_RTSP_PORT: u16 = 8554;
/// The shared UDP pair's RTP port when `--rtsp-udp-port` is not given (RTCP: the next port).
pub const DEFAULT_RTSP_UDP_PORT: u16 = 8000;

/// The sockets the RTSP server serves on.
pub struct RtspSockets {
    pub tcp: TcpListener,
    /// RTP goes out from here (an even port), …
    pub rtp: UdpSocket,
    /// … and RTCP from the next one: players (retina) take media only from the pair the SETUP
    /// answer named.
    pub rtcp: UdpSocket,
    /// The session timeout players are told ([`DEFAULT_SESSION_TIMEOUT`]): they send a
    /// keep-alive within it; a UDP session heard from neither by request nor by RTCP for 5 s
    /// longer ends (`timeout`).
    pub session_timeout: Duration,
}

/// `--rtsp-session-timeout`'s default (RFC 2326's own).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

impl RtspSockets {
    /// Binds RTSP on `tcp` and the UDP pair at `udp_port` and `udp_port + 1` on the same
    /// address; `udp_port` 0 picks a free even/odd pair (for tests).
    pub async fn bind(tcp: SocketAddr, udp_port: u16) -> io::Result<RtspSockets> {
        let tcp = TcpListener::bind(tcp).await?;
        let ip = tcp.local_addr()?.ip();
        let (rtp, rtcp) = if udp_port != 0 {
            if !udp_port.is_multiple_of(2) || udp_port == u16::MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the RTP port must be even, with RTCP on the next one",
                ));
            }
            let rtp = UdpSocket::bind((ip, udp_port)).await?;
            let rtcp = UdpSocket::bind((ip, udp_port + 1)).await?;
            (rtp, rtcp)
        } else {
            free_pair(ip).await?
        };
        Ok(RtspSockets {
            tcp,
            rtp,
            rtcp,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
        })
    }
}

/// A free even/odd UDP port pair on `ip`.
async fn free_pair(ip: IpAddr) -> io::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..64 {
        let rtp = UdpSocket::bind((ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)).await {
            return Ok((rtp, rtcp));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free even/odd UDP port pair found",
    ))
}

/// The RTSP server's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct RtspStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests answered with an error status (4xx, 5xx), 401 challenges included.
    pub errors: AtomicU64,
    /// Connections dropped for bytes that are no RTSP request (or too long a one).
    pub bad_requests: AtomicU64,
    /// RTP packets sent, over TCP and UDP.
    pub rtp_packets: AtomicU64,
    /// RTCP or punch datagrams from players on the shared pair.
    pub udp_heard: AtomicU64,
    /// Datagrams on the shared pair from nobody playing, or not RTP/RTCP: dropped.
    pub udp_foreign: AtomicU64,
    /// JPEG frames an `/mjpeg` session could not send as RTP/JPEG (RFC 2435 cannot carry
    /// them: progressive, 4:4:4, restart markers, over 2040 pixels, …): skipped.
    pub jpeg_unfit: AtomicU64,
    /// Frames sent by a camera's one writer to its caught-up H.264 sessions, over TCP and UDP
    /// (the rest of their frames went from each session's own task: the cached GOP).
    pub writer_frames: AtomicU64,
}

/// Counts `frames` of RTP (`packets`, `bytes`) sent to RTSP sessions: the server's frames and
/// bytes sent, and the RTSP packets.
fn count_sent(stats: &crate::Stats, frames: u64, packets: u64, bytes: u64) {
    stats.rtsp.rtp_packets.fetch_add(packets, Relaxed);
    stats.frames_sent.fetch_add(frames, Relaxed);
    stats.bytes_sent.fetch_add(bytes, Relaxed);
}

/// What the connections share.
pub(crate) struct Shared {
    pub server: Arc<Server>,
    /// RTP goes out from here (H.264 sessions' links hold it too).
    pub rtp: Arc<UdpSocket>,
    pub rtcp: UdpSocket,
    /// The pair's ports, for SETUP answers.
    pub server_ports: (u16, u16),
    /// UDP sessions' player addresses (RTP and RTCP ports), and when a datagram last came
    /// from each: a UDP session's sign of life besides its RTSP requests.
    pub heard: DashMap<SocketAddr, Instant>,
    /// [`RtspSockets::session_timeout`].
    pub session_timeout: Duration,
}

/// How many RTSP connections may be open at once besides `--max-viewers` playing ones.
const SPARE_CONNECTIONS: usize = 64;

/// Serves RTSP on `sockets` until `shutdown`; returns once every connection has ended (or after
/// [`crate::SHUTDOWN_GRACE`]).
pub async fn run(server: Arc<Server>, sockets: RtspSockets, shutdown: CancellationToken) {
    let server_ports = (
        sockets.rtp.local_addr().map_or(0, |a| a.port()),
        sockets.rtcp.local_addr().map_or(0, |a| a.port()),
    );
    let connections = Arc::new(Semaphore::new(server.watchers.max() + SPARE_CONNECTIONS));
    let shared = Arc::new(Shared {
        server,
        rtp: Arc::new(sockets.rtp),
        rtcp: sockets.rtcp,
        server_ports,
        heard: DashMap::new(),
        session_timeout: sockets.session_timeout.max(Duration::from_secs(1)),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(listen_udp(shared.clone(), false, shutdown.clone()));
    tracker.spawn(listen_udp(shared.clone(), true, shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = sockets.tcp.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let stats = &shared.server.stats.rtsp;
                stats.connections.fetch_add(1, Relaxed);
                let Ok(place) = connections.clone().try_acquire_owned() else {
                    stats.bad_requests.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, "RTSP: too many connections; closing this one");
                    continue;
                };
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    conn::serve(shared, stream, peer, shutdown).await;
                    drop(place);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "RTSP: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    crate::wind_down(&tracker, "RTSP connections").await;
}

/// Reads what players send to the shared pair (RTCP receiver reports, NAT "punch" packets):
/// from a playing UDP session's address it is a sign of life; anything else is dropped.
async fn listen_udp(shared: Arc<Shared>, rtcp: bool, shutdown: CancellationToken) {
    let socket = if rtcp { &shared.rtcp } else { &shared.rtp };
    let stats = &shared.server.stats.rtsp;
    let mut buf = vec![0u8; 2048];
    loop {
        let got = tokio::select! {
            () = shutdown.cancelled() => return,
            got = socket.recv_from(&mut buf) => got,
        };
        let Ok((_, from)) = got else {
            // ICMP port unreachable from a vanished player surfaces here: nothing to do.
            continue;
        };
        match shared.heard.get_mut(&from) {
            Some(mut when) => {
                *when = Instant::now();
                stats.udp_heard.fetch_add(1, Relaxed);
            }
            None => {
                stats.udp_foreign.fetch_add(1, Relaxed);
            }
        }
    }
}
