//! WebRTC by WHEP (`--webrtc-port`, default 8555): every camera's H.264 to browsers and other
//! WebRTC players, all peers on one UDP port, driven by str0m (sans-IO) on one thread.
//!
//! ```text
//!  player ──HTTP POST /cam/<name>/whep (SDP offer)──▶ http::whep ──offer::answer──▶ 201 + answer
//!                                                          │ the peer's Rtc and watcher slot
//!                                                          ▼
//!  player ◀────── STUN, DTLS, SRTP/SRTCP: one UDP port ──▶ engine thread (every peer's Rtc)
//!  player ◀── the same over TCP, same port (ICE-TCP) ──▶ a reader and a writer task per link
//!                                                          ▲ Arc<H264Unit>: one relay task per camera
//!                                       H264Feed (one encode per camera, GOP cache, keyframe on join)
//! ```
//!
//! A peer is admitted against `--max-viewers` when its offer is answered, and joins (JOIN
//! `form=webrtc`) once ICE and DTLS are through; it starts at once from the camera's cached GOP
//! (an encoded camera also makes a keyframe for it, at most one a second). A PLI or FIR asks the
//! camera for a keyframe; a peer that lost units (it fell behind) waits for the next keyframe.
//! NACKs are answered by str0m from each peer's packet history. It leaves with `end` (DELETE
//! on its `Location`), `timeout` (no datagram from it for [`SILENCE_LIMIT`], or ICE
//! disconnected), `closed` (it closed DTLS), `shutdown` or `removed`. A peer that does not
//! finish ICE and DTLS within [`CONNECT_WITHIN`] is dropped and its refusal journalled (cause
//! `timeout`); at most [`MAX_CONNECTING`] may be connecting at once.
//!
//! Where UDP is blocked (a company network, some guest Wi-Fi), a player may reach the same
//! port number over TCP (`--webrtc-tcp`, on by default): every answer also offers a passive
//! TCP host candidate per address (RFC 6544), lower in priority than UDP, so a player uses it
//! only when UDP does not connect. Each packet on it is framed with a 2-byte length (RFC 4571).
//! A link no peer has taken within [`CONNECT_WITHIN`] is closed, as is one silent for
//! [`SILENCE_LIMIT`]; at most [`MAX_TCP_LINKS`] are open at once.

mod engine;
pub mod offer;
mod thin;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cameras::Camera;
use crate::watchers::{RefusalCause, Refused, Watchers};
use crate::Server;
use offer::{OfferError, PeerConfig};

/// The WebRTC port when `--webrtc-port` is not given.
pub const DEFAULT_WEBRTC_PORT: u16 = 8555;
/// Peers answered whose ICE and DTLS are not through yet, at most: one more is answered 503.
pub const MAX_CONNECTING: usize = 32;
/// A peer answered that has not connected (ICE and DTLS) within this is dropped.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(15);
/// A connected peer that sends nothing for this long leaves (`timeout`): players send STUN
/// consent checks every few seconds and RTCP receiver reports every second.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// The kernel buffers of the shared socket: many peers' bursts of an IDR at once.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Players' TCP links (ICE-TCP) open at once, at most: one more is closed at once (counted).
pub const MAX_TCP_LINKS: usize = 256;
/// Offers queued for the engine thread at most.
const COMMAND_QUEUE: usize = 64;

/// The UDP socket every peer shares, and the addresses players are told to reach it at.
#[derive(Debug)]
pub struct WebrtcSocket {
    socket: std::net::UdpSocket,
    /// `--webrtc-host`: the addresses of our ICE host candidates. Empty: the bound address, or
    /// every interface's when bound to all.
    hosts: Vec<IpAddr>,
    /// `--webrtc-adapt`: each peer sent what its link carries (`thin.rs`), by str0m's estimate.
    adapt: bool,
    /// `--webrtc-tcp`: the same address and port over TCP, for players whose UDP is blocked.
    tcp: Option<std::net::TcpListener>,
}

impl WebrtcSocket {
    /// Binds `addr` (port 0: a free port, for tests).
    pub fn bind(addr: SocketAddr) -> io::Result<WebrtcSocket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            if let Err(e) = crate::sys::set_buffer(fd, option, SOCKET_BUFFER_BYTES) {
                tracing::debug!(error = %e, "WebRTC: cannot size the socket's buffers");
            }
        }
        if addr.is_ipv4() {
            // Each datagram's destination address: the local candidate it came in on.
            crate::sys::set_destination_and_timestamp(fd)?;
        }
        Ok(WebrtcSocket {
            socket,
            hosts: Vec::new(),
            adapt: true,
            tcp: None,
        })
    }

    /// Listens on the same address and port over TCP too (ICE-TCP: players whose network
    /// blocks UDP). Fails if that TCP port is taken.
    pub fn with_tcp(mut self) -> io::Result<WebrtcSocket> {
        let listener = std::net::TcpListener::bind(self.socket.local_addr()?)?;
        listener.set_nonblocking(true)?;
        self.tcp = Some(listener);
        Ok(self)
    }

    /// The addresses players are told to send to (`--webrtc-host`), instead of the bound one.
    pub fn with_hosts(mut self, hosts: Vec<IpAddr>) -> WebrtcSocket {
        self.hosts = hosts;
        self
    }

    /// Whether each peer gets what its link carries (bandwidth estimation, pacing, fewer
    /// frames for a slow link: the default), or every frame whatever its link (`false`).
    pub fn with_adapt(mut self, adapt: bool) -> WebrtcSocket {
        self.adapt = adapt;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Our ICE host candidates: the `--webrtc-host` addresses, else the bound address, else
    /// (bound to every address) each interface's address of the socket's family.
    fn candidates(&self) -> io::Result<Vec<SocketAddr>> {
        let local = self.socket.local_addr()?;
        let ips = if !self.hosts.is_empty() {
            self.hosts.clone()
        } else if !local.ip().is_unspecified() {
            vec![local.ip()]
        } else {
            let found = crate::sys::interface_addresses(local.is_ipv6())?;
            if found.is_empty() {
                // Only loopback is up: players on this host can still connect.
                vec![if local.is_ipv6() {
                    IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                } else {
                    IpAddr::from([127, 0, 0, 1])
                }]
            } else {
                found
            }
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, local.port()))
            .collect())
    }
}

/// The WebRTC server's counters (`/metrics`, `/status`), and each live peer's report.
#[derive(Debug, Default)]
pub struct WebrtcStats {
    /// Offers POSTed (answered or not).
    pub offers: AtomicU64,
    /// Offers refused: not SDP, no H.264 video, unknown camera, server full, too many
    /// connecting, WebRTC off.
    pub offers_refused: AtomicU64,
    /// Offers answered (201).
    pub sessions: AtomicU64,
    /// Peers whose ICE and DTLS went through (they joined).
    pub connected: AtomicU64,
    /// Peers dropped for not connecting within [`CONNECT_WITHIN`].
    pub connect_timeouts: AtomicU64,
    /// Datagrams sent (STUN, DTLS, SRTP, SRTCP) and their bytes.
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Datagrams the socket did not take (its buffer full): lost, as on the network.
    pub send_errors: AtomicU64,
    /// Datagrams received from players.
    pub datagrams_received: AtomicU64,
    /// Datagrams no peer accepted (not STUN/DTLS/RTP, or from nobody we answered): dropped.
    pub datagrams_foreign: AtomicU64,
    /// TCP connections of players taken (ICE-TCP), and those closed at once because
    /// [`MAX_TCP_LINKS`] were open.
    pub tcp_links: AtomicU64,
    pub tcp_links_refused: AtomicU64,
    /// PLI and FIR from players, each passed to the camera as a keyframe wish.
    pub keyframe_requests: AtomicU64,
    /// NACKs from players (str0m resends from the peer's packet history).
    pub nacks: AtomicU64,
    /// Frames left out for peers whose links carry less than the stream (`thin.rs`).
    pub frames_thinned: AtomicU64,
    /// Probes asked of peers' estimators held below the whole stream (`thin.rs`).
    pub probes: AtomicU64,
    /// Live peers, by watcher id.
    pub peers: Mutex<BTreeMap<u64, PeerReport>>,
}

impl WebrtcStats {
    /// Every live peer's report, by id.
    pub fn peer_reports(&self) -> Vec<PeerReport> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.values().cloned().collect()
    }
}

/// One live peer as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerReport {
    pub id: u64,
    pub camera: String,
    /// Where its media go (the ICE pair's remote address), or whence its offer came while it
    /// connects.
    pub address: String,
    /// `connecting` or `connected`.
    pub state: &'static str,
    /// How its media go: `udp`, or `tcp` where its network blocks UDP (ICE-TCP); empty while
    /// it connects.
    pub transport: &'static str,
    /// Round-trip time, from RTCP receiver reports or ICE consent checks.
    pub rtt_ms: Option<f64>,
    /// What we send it, bits per second, over the last statistics interval.
    pub bitrate_bps: Option<u64>,
    /// Share of our packets it reported lost, 0 to 1.
    pub loss: Option<f32>,
    pub nacks: u64,
    pub keyframe_requests: u64,
    /// What its link carries by str0m's estimate (TWCC), bits per second.
    pub estimate_bps: Option<u64>,
    /// What it is sent of the camera's frames: `all`, `half`, `quarter` or `keyframes`, the
    /// most its estimate fits (surv's encoder makes three temporal layers).
    pub level: &'static str,
    /// Frames left out to fit its link...
    pub frames_thinned: u64,
    /// ...of which because its send queue was long (`thin.rs`).
    pub frames_late: u64,
    /// Probes asked of its estimator while it was held below the whole stream (`thin.rs`).
    pub probes: u64,
}

/// An answered offer for the engine.
pub(crate) struct NewPeer {
    pub slot: crate::watchers::Slot,
    /// The secret part of its `Location`.
    pub token: String,
    pub camera: Arc<Camera>,
    /// Whence its offer came.
    pub http_peer: SocketAddr,
    pub answered: offer::Answered,
}

/// What the HTTP side asks of the engine.
pub(crate) enum Command {
    Add(Box<NewPeer>),
    /// DELETE on a peer's `Location`: whether there was such a peer.
    Delete {
        camera: String,
        token: String,
        done: oneshot::Sender<bool>,
    },
}

/// The WebRTC server as the HTTP handlers see it: answers offers, ends sessions.
#[derive(Clone)]
pub struct Webrtc {
    server: Arc<Server>,
    config: Arc<PeerConfig>,
    commands: mpsc::Sender<Command>,
    /// Peers answered and not yet connected (or dropped).
    connecting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Webrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webrtc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An offer turned away: the HTTP status, and why (the body the player reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRefused {
    pub status: u16,
    pub reason: String,
    /// Seconds after which to try again (503s).
    pub retry_after_s: Option<u32>,
}

impl OfferRefused {
    fn from_refused(r: &Refused) -> OfferRefused {
        OfferRefused {
            status: 503,
            reason: r.reason.clone(),
            retry_after_s: Some(1),
        }
    }
}

/// An answered offer: where the session lives and the SDP answer.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub answer: String,
}

impl Webrtc {
    /// Answers a player's offer for `camera`: admitted against `--max-viewers` and
    /// [`MAX_CONNECTING`], negotiated, handed to the engine. A refusal is counted and journalled
    /// here (kind `webrtc`).
    pub async fn open(
        &self,
        camera: Arc<Camera>,
        offer: str0m::change::SdpOffer,
        http_peer: SocketAddr,
    ) -> Result<Session, OfferRefused> {
        let server = &self.server;
        let kind = Some(crate::watchers::WatcherKind::Webrtc);
        if self
            .connecting
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_CONNECTING).then_some(n + 1))
            .is_err()
        {
            let refused = Refused::new(
                RefusalCause::Crowded,
                format!("{MAX_CONNECTING} WebRTC sessions are connecting already; try again"),
            );
            refused.record(server, http_peer, kind);
            return Err(OfferRefused::from_refused(&refused));
        }
        // Released on every way out but the engine's taking the peer.
        let mut connecting = Connecting(Some(self.connecting.clone()));
        let slot = Watchers::admit(server).map_err(|refused| {
            refused.record(server, http_peer, kind);
            OfferRefused::from_refused(&refused)
        })?;
        let answered =
            offer::answer(offer, &self.config, std::time::Instant::now()).map_err(|e| {
                Refused::new(RefusalCause::Invalid, e.to_string()).record(server, http_peer, kind);
                OfferRefused {
                    status: e.status(),
                    reason: e.to_string(),
                    retry_after_s: None,
                }
            })?;
        let token = random_token();
        let answer = answered.answer.clone();
        let peer = NewPeer {
            slot,
            token: token.clone(),
            camera,
            http_peer,
            answered,
        };
        if self
            .commands
            .try_send(Command::Add(Box::new(peer)))
            .is_err()
        {
            let refused = Refused::new(RefusalCause::ServerError, "the WebRTC engine is busy");
            refused.record(server, http_peer, kind);
            return Err(OfferRefused::from_refused(&refused));
        }
        connecting.0 = None;
        Ok(Session { token, answer })
    }

    /// Ends the session at `/cam/<camera>/whep/<token>`; whether there was one.
    pub async fn delete(&self, camera: &str, token: &str) -> bool {
        let (done, answered) = oneshot::channel();
        let command = Command::Delete {
            camera: camera.to_string(),
            token: token.to_string(),
            done,
        };
        if self.commands.send(command).await.is_err() {
            return false;
        }
        answered.await.unwrap_or(false)
    }
}

/// A place among the [`MAX_CONNECTING`], given back when dropped unless taken.
struct Connecting(Option<Arc<AtomicUsize>>);

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, Relaxed);
        }
    }
}

/// Why WebRTC could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("WebRTC: reading the socket's address: {0}")]
    Socket(#[from] io::Error),
    #[error("WebRTC: no DTLS certificate could be made")]
    Certificate,
}

/// Starts the engine thread on `socket`: the handle for the HTTP handlers, and a future that
/// ends when the engine has ended every peer (after `shutdown`).
pub fn start(
    server: Arc<Server>,
    socket: WebrtcSocket,
    shutdown: CancellationToken,
) -> Result<(Webrtc, impl std::future::Future<Output = ()>), StartError> {
    let local = socket.socket.local_addr()?;
    let candidates = socket.candidates()?;
    let tcp = socket.tcp.is_some();
    let config = Arc::new(
        PeerConfig::new(candidates.clone(), socket.adapt, tcp).ok_or(StartError::Certificate)?,
    );
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let connecting = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = oneshot::channel::<()>();
    let engine = engine::Engine::new(
        server.clone(),
        local,
        candidates.clone(),
        connecting.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("webrtc".into())
        .spawn(move || {
            engine.run_on_thread(socket.socket, socket.tcp, inbox, shutdown);
            let _ = ended_tx.send(());
        })?;
    drop(spawned);
    tracing::info!(%local, candidates = ?candidates, tcp, "WebRTC: WHEP at http://…/cam/CAMERA/whep");
    let handle = Webrtc {
        server,
        config,
        commands,
        connecting,
    };
    Ok((handle, async move {
        // A dropped sender (the thread panicked) ends the wait too.
        let _ = ended.await;
    }))
}

/// 128 random bits in hex: a session's `Location` cannot be guessed by another player.
fn random_token() -> String {
    let mut b = [0u8; 16];
    // The OS's generator does not fail on Linux once booted.
    let _ = getrandom::getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Answers why an offer is refused before it reaches [`Webrtc::open`] (its bytes are not an
/// offer): counted and journalled like the others.
pub fn refuse_offer(
    server: &Server,
    http_peer: SocketAddr,
    cause: RefusalCause,
    error: &OfferError,
) -> OfferRefused {
    Refused::new(cause, error.to_string()).record(
        server,
        http_peer,
        Some(crate::watchers::WatcherKind::Webrtc),
    );
    OfferRefused {
        status: error.status(),
        reason: error.to_string(),
        retry_after_s: None,
    }
}
