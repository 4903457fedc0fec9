//! Seed 001's apps behind NAT (`--request-port`): an app sends the datagram `Request` (or
//! `Request <token>`) to the server's UDP port; the server learns the app's address as its NAT
//! maps it and sends every frame there, **from that same socket** (the NAT's mapping is to
//! this port), as one whole JPEG datagram. The app never acks.
//!
//! Each app is a watcher (`form=request`, against `--max-viewers`, JOIN/LEAVE in the journal).
//! Any later datagram from it renews it; after `--request-ttl` without one it leaves with
//! `timeout` (TTL 0: never, until `shutdown`). A forged source address would make this a
//! reflector, so the kind is opt-in, needs the token when one is set, and is limited per
//! source IP (`--request-per-ip`).
//!
//! The [`RequestHub`] is given the socket. It either reads the socket itself ([`RequestHub::run`],
//! when the port is its own), or is handed each datagram by whoever reads it
//! ([`RequestHub::offer`] + [`RequestHub::serve`]: a `udp://` source on the same port, as seed
//! 001's server has camera and apps on one port, one firewall hole).
//!
//! For a source sharing the port, the wiring is:
//!
//! ```text
//! let socket = RequestHub::bind(addr)?;                    // or the source's own Arc<UdpSocket>
//! let hub = RequestHub::new(server, camera, socket.clone(), config);
//! tokio::spawn(hub.clone().serve(shutdown.clone()));       // fan-out, expiry, LEAVEs at shutdown
//! // in the source's receive loop, for each datagram:
//! if hub.offer(&datagram, from) { continue; }              // a Request: not a frame
//! ```
//!
//! The hub sends from that socket (it never reads it then), so replies leave from the port the
//! apps' NAT mappings point to. [`RequestHub::offer`] is cheap (a parse of at most
//! [`MAX_REQUEST_BYTES`] bytes and one map lookup) and never blocks.
//!
//! Fan-out: one task sends each new frame to every app with `sendmmsg`
//! ([`crate::sys::BatchSender`]) without waiting on any; when the socket buffer stays full for
//! a few milliseconds, the apps not yet served skip that frame (counted), nothing is queued.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use surv_proto::{AppRequest, RequestError, MAX_REQUEST_BYTES};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Membership, RefusalCause, Refused, Tally, WatcherKind, Watchers};
use crate::auth::{Presented, FAILURE_LOG_EVERY};
use crate::capture::SharedFrame;
use crate::journal::LeaveReason;
use crate::sys::{self, BatchSender};
use crate::{Camera, Server};

/// `--request-ttl` by default: an app that has said nothing for this long is dropped.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// `--request-per-ip` by default: a household behind one NAT rarely has more phones watching.
pub const DEFAULT_PER_IP: usize = 4;

/// Socket buffer asked for (the kernel caps it at `net.core.wmem_max`): one frame to every app.
const SEND_BUFFER_BYTES: usize = 8 << 20;

/// When a send would block, how long the fan-out waits for room, and how often, before the
/// apps not yet served skip the frame.
const SEND_WAIT: Duration = Duration::from_millis(5);
const SEND_WAITS: u32 = 4;

/// After a receive error, wait before reading again rather than spin.
const RECV_BACKOFF: Duration = Duration::from_millis(50);

/// The hub's limits.
#[derive(Debug, Clone)]
pub struct RequestConfig {
    /// An app silent for this long leaves (`timeout`); `None`: apps stay until shutdown.
    pub ttl: Option<Duration>,
    /// Live apps per source IP at most.
    pub per_ip: usize,
}

impl Default for RequestConfig {
    fn default() -> RequestConfig {
        RequestConfig {
            ttl: Some(DEFAULT_TTL),
            per_ip: DEFAULT_PER_IP,
        }
    }
}

/// The hub's counters (beside the server's `frames_sent`, `refused`, `auth_failures`).
#[derive(Debug, Default)]
pub struct RequestStats {
    /// `Request` datagrams that registered an app.
    pub joined: AtomicU64,
    /// Datagrams from a live app (a `Request` again, or anything else): it stays.
    pub renewals: AtomicU64,
    /// `Request`s turned away: over the per-IP limit.
    pub refused_per_ip: AtomicU64,
    /// `Request`s turned away: server full.
    pub refused_full: AtomicU64,
    /// `Request`s turned away: no or a wrong token, or too many wrong ones from that address
    /// lately (also in `Stats::auth_failures`, `Stats::auth_throttled`).
    pub refused_auth: AtomicU64,
    /// Datagrams that are no `Request`, from an address that is no app: ignored.
    pub garbage: AtomicU64,
    /// Frames an app did not get because the socket buffer stayed full.
    pub skipped_sends: AtomicU64,
    pub send_errors: AtomicU64,
}

/// What became of one datagram offered to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A `Request` (a new app, a renewal, or refused): consumed.
    Request,
    /// Something else from a live app: it is renewed; the datagram is not consumed.
    Renewal,
    /// Neither: not for the hub.
    NotMine,
}

struct App {
    membership: Membership,
    tally: Tally,
    last_heard: Instant,
    /// The newest frame sent, so that the frame sent at join is not sent again.
    last_seq: Option<u64>,
}

#[derive(Default)]
struct Apps {
    by_addr: HashMap<SocketAddr, App>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Seed 001's apps on one UDP socket: registration, renewal, expiry and the fan-out.
pub struct RequestHub {
    server: Arc<Server>,
    /// The camera the apps watch.
    camera: Arc<Camera>,
    socket: Arc<UdpSocket>,
    config: RequestConfig,
    apps: Mutex<Apps>,
    pub stats: RequestStats,
    /// When a refusal was last logged, and how many since went unlogged.
    refusal_log: Mutex<(Option<Instant>, u64)>,
    /// [`RequestHub::serve`] has ended: no app joins any more.
    stopped: AtomicBool,
}

impl RequestHub {
    /// Binds the `--request-port` socket, with a send buffer for a frame to every app.
    pub fn bind(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        // Best effort: a smaller buffer only means more skipped frames under a burst.
        let _ = sys::set_buffer(std.as_raw_fd(), libc::SO_SNDBUF, SEND_BUFFER_BYTES);
        Ok(Arc::new(UdpSocket::from_std(std)?))
    }

    /// A hub that sends `camera`'s frames from `socket` (and, with [`RequestHub::run`], reads
    /// it).
    pub fn new(
        server: Arc<Server>,
        camera: Arc<Camera>,
        socket: Arc<UdpSocket>,
        config: RequestConfig,
    ) -> Arc<RequestHub> {
        Arc::new(RequestHub {
            server,
            camera,
            socket,
            config,
            apps: Mutex::default(),
            stats: RequestStats::default(),
            refusal_log: Mutex::default(),
            stopped: AtomicBool::new(false),
        })
    }

    /// The socket the apps are served from.
    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// Apps live now.
    pub fn len(&self) -> usize {
        self.apps().by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apps(&self) -> MutexGuard<'_, Apps> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Owns the port: reads every datagram on the socket, and serves the apps, until
    /// `shutdown`; returns when every app has left (`shutdown`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let serving = tokio::spawn(self.clone().serve(shutdown.clone()));
        // One byte over the cap: a longer datagram is seen as too long, not cut to a request.
        let mut buf = [0u8; MAX_REQUEST_BYTES + 1];
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((n, from)) => {
                    if self.take(&buf[..n], from) == Taken::NotMine {
                        self.stats.garbage.fetch_add(1, Relaxed);
                        tracing::trace!(%from, bytes = n, "not a request: ignored");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "request port: receive failed");
                    tokio::time::sleep(RECV_BACKOFF).await;
                }
            }
        }
        let _ = serving.await;
    }

    /// A datagram that reached the hub's port, read by someone else (a `udp://` source sharing
    /// the port): `true` when it was a `Request` and is consumed (the app is registered,
    /// renewed, or refused); `false` otherwise — then it is the caller's (a frame, say), though
    /// one from a live app still renews that app.
    pub fn offer(&self, datagram: &[u8], from: SocketAddr) -> bool {
        self.take(datagram, from) == Taken::Request
    }

    /// What [`RequestHub::offer`] does, saying what became of the datagram.
    pub fn take(&self, datagram: &[u8], from: SocketAddr) -> Taken {
        let now = Instant::now();
        let request = match AppRequest::decode(datagram) {
            Ok(request) => request,
            // "Request" with something unusable after it: meant for us, and refused.
            Err(RequestError::BadToken) => {
                self.stats.garbage.fetch_add(1, Relaxed);
                return Taken::Request;
            }
            Err(_) => {
                return if self.renew(from, now) {
                    Taken::Renewal
                } else {
                    Taken::NotMine
                };
            }
        };
        if !self.renew(from, now) {
            self.register(request, from, now);
        }
        Taken::Request
    }

    /// Renews the app at `from`, if there is one.
    fn renew(&self, from: SocketAddr, now: Instant) -> bool {
        let mut apps = self.apps();
        let Some(app) = apps.by_addr.get_mut(&from) else {
            return false;
        };
        app.last_heard = now;
        self.stats.renewals.fetch_add(1, Relaxed);
        true
    }

    /// A `Request` from an address that is no app yet: it joins, or is refused with a reason.
    fn register(&self, request: AppRequest, from: SocketAddr, now: Instant) {
        let server = &self.server;
        let presented = request
            .token
            .as_deref()
            .map_or(Presented::SeedForm, |t| Presented::Token(t.as_bytes()));
        let kind = WatcherKind::Request.as_str();
        if let Err(denied) = server
            .access
            .check_datagram(&server.stats, from, kind, presented)
        {
            self.stats.refused_auth.fetch_add(1, Relaxed);
            return self.refuse(
                from,
                Refused::new(RefusalCause::Unauthorized, denied.to_string()),
            );
        }
        let mut apps = self.apps();
        if self.stopped.load(Relaxed) {
            return; // shutting down: nobody would send it frames or its LEAVE
        }
        let from_ip = apps.per_ip.get(&from.ip()).copied().unwrap_or(0);
        if from_ip >= self.config.per_ip {
            drop(apps);
            self.stats.refused_per_ip.fetch_add(1, Relaxed);
            let per_ip = self.config.per_ip;
            let reason = format!("{per_ip} apps already watch from this IP");
            return self.refuse(from, Refused::new(RefusalCause::PerIp, reason));
        }
        let slot = match Watchers::admit(server) {
            Ok(slot) => slot,
            Err(refused) => {
                drop(apps);
                self.stats.refused_full.fetch_add(1, Relaxed);
                return self.refuse(from, refused);
            }
        };
        let membership = slot.join(WatcherKind::Request, from, &self.camera);
        self.stats.joined.fetch_add(1, Relaxed);
        *apps.per_ip.entry(from.ip()).or_default() += 1;
        let mut app = App {
            membership,
            tally: Tally::default(),
            last_heard: now,
            last_seq: None,
        };
        // The frame current at join goes out at once, as for every other kind (if it is a JPEG:
        // an app decodes nothing else).
        let current = self.camera.frames.borrow().clone();
        if let Some((frame, datagram)) = current.as_ref().and_then(|f| Some((f, f.jpeg()?))) {
            app.tally.seen(frame.seq);
            if self.socket.try_send_to(datagram, from).is_ok() {
                app.tally.sent(datagram.len());
                app.last_seq = Some(frame.seq);
                server.stats.frames_sent.fetch_add(1, Relaxed);
                let bytes = datagram.len() as u64;
                server.stats.bytes_sent.fetch_add(bytes, Relaxed);
            }
        }
        apps.by_addr.insert(from, app);
    }

    /// Counts a refused `Request`; journals and logs it at most every ten seconds (datagrams
    /// cost nothing to send: a flood must not flood the journal too).
    fn refuse(&self, from: SocketAddr, refused: Refused) {
        refused.count(&self.server);
        let reason = refused.reason.as_str();
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log.0.is_some_and(|t| now - t < FAILURE_LOG_EVERY) {
            log.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        tracing::warn!(%from, reason, not_logged_since_last = unlogged, "request refused");
        self.server
            .journal
            .refuse(from, Some(WatcherKind::Request), reason);
    }

    /// Serves the apps registered through [`RequestHub::offer`] (or [`RequestHub::run`]): every
    /// new frame to each, expiry after the TTL, until `shutdown`; then every app leaves.
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        let mut frames = self.camera.frames.clone();
        let mut fanout = Fanout::default();
        // Expiry is checked a few times per TTL: an app leaves at most a quarter TTL late.
        let tick = self.config.ttl.map_or(Duration::from_secs(3600), |ttl| {
            (ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        });
        let mut expiry = tokio::time::interval(tick);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = expiry.tick() => self.expire(Instant::now()),
                res = frames.changed() => {
                    if res.is_err() {
                        break; // the capture path is gone: the server is stopping
                    }
                    let frame = frames.borrow_and_update().clone();
                    if let Some(frame) = frame {
                        self.fan_out(&frame, &mut fanout).await;
                    }
                }
            }
        }
        let apps = {
            let mut apps = self.apps();
            self.stopped.store(true, Relaxed);
            std::mem::take(&mut *apps)
        };
        for app in apps.by_addr.into_values() {
            app.membership.leave(LeaveReason::Shutdown, &app.tally);
        }
        let st = &self.stats;
        tracing::info!(
            joined = st.joined.load(Relaxed),
            renewals = st.renewals.load(Relaxed),
            refused_per_ip = st.refused_per_ip.load(Relaxed),
            refused_full = st.refused_full.load(Relaxed),
            refused_auth = st.refused_auth.load(Relaxed),
            garbage = st.garbage.load(Relaxed),
            skipped_sends = st.skipped_sends.load(Relaxed),
            send_errors = st.send_errors.load(Relaxed),
            "request port: final stats"
        );
    }

    /// Drops the apps silent for the TTL (`timeout`).
    fn expire(&self, now: Instant) {
        let Some(ttl) = self.config.ttl else {
            return;
        };
        let expired: Vec<App> = {
            let mut apps = self.apps();
            let gone: Vec<SocketAddr> = apps
                .by_addr
                .iter()
                .filter(|(_, app)| now.saturating_duration_since(app.last_heard) >= ttl)
                .map(|(addr, _)| *addr)
                .collect();
            gone.iter()
                .filter_map(|addr| {
                    let app = apps.by_addr.remove(addr)?;
                    if let Some(n) = apps.per_ip.get_mut(&addr.ip()) {
                        *n -= 1;
                        if *n == 0 {
                            apps.per_ip.remove(&addr.ip());
                        }
                    }
                    Some(app)
                })
                .collect()
        };
        for app in expired {
            app.membership.leave(LeaveReason::Timeout, &app.tally);
        }
    }

    /// Sends `frame` to every app that does not have it yet; waits a little for room when the
    /// socket buffer is full, then lets the rest skip it. A frame without a JPEG is not sent.
    async fn fan_out(&self, frame: &SharedFrame, fanout: &mut Fanout) {
        let Some(payload) = frame.jpeg() else {
            return;
        };
        fanout.dests.clear();
        {
            let mut apps = self.apps();
            for (addr, app) in apps.by_addr.iter_mut() {
                app.tally.seen(frame.seq);
                if app.last_seq.is_none_or(|s| s < frame.seq) {
                    fanout.dests.push(*addr);
                }
            }
        }
        if fanout.dests.is_empty() {
            return;
        }
        let fd = self.socket.as_raw_fd();
        let mut done = 0;
        let mut waits = 0;
        fanout.failed.clear();
        while done < fanout.dests.len() {
            let rest = &fanout.dests[done..];
            let sender = &mut fanout.sender;
            match self
                .socket
                .try_io(Interest::WRITABLE, || sender.send(fd, payload, rest))
            {
                Ok(n) if n > 0 => done += n,
                Ok(_) => break, // nothing went and no error: the rest skip this frame
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if waits == SEND_WAITS {
                        break;
                    }
                    waits += 1;
                    let _ = tokio::time::timeout(SEND_WAIT, self.socket.writable()).await;
                }
                Err(e) => {
                    // This destination failed (a batch stops at the first error); the others
                    // still get the frame.
                    tracing::trace!(app = %rest[0], error = %e, "sending a frame failed");
                    fanout.failed.push(rest[0]);
                    done += 1;
                }
            }
        }
        let skipped = fanout.dests.len().saturating_sub(done);
        let failed = fanout.failed.len();
        let sent = done - failed;
        if skipped > 0 {
            self.stats.skipped_sends.fetch_add(skipped as u64, Relaxed);
        }
        if failed > 0 {
            self.stats.send_errors.fetch_add(failed as u64, Relaxed);
            self.server
                .stats
                .send_errors
                .fetch_add(failed as u64, Relaxed);
        }
        let bytes = payload.len();
        {
            let mut apps = self.apps();
            for addr in &fanout.dests[..done] {
                if fanout.failed.contains(addr) {
                    continue;
                }
                if let Some(app) = apps.by_addr.get_mut(addr) {
                    app.tally.sent(bytes);
                    app.last_seq = Some(frame.seq);
                }
            }
        }
        let stats = &self.server.stats;
        stats.frames_sent.fetch_add(sent as u64, Relaxed);
        stats.bytes_sent.fetch_add((sent * bytes) as u64, Relaxed);
        tracing::trace!(seq = frame.seq, apps = sent, skipped, "fanned out to apps");
    }
}

/// Scratch space for one frame's fan-out, reused.
#[derive(Default)]
struct Fanout {
    sender: BatchSender,
    dests: Vec<SocketAddr>,
    /// Few: a linear search is fine.
    failed: Vec<SocketAddr>,
}

impl crate::sources::udp::PortSharer for RequestHub {
    fn offer(&self, datagram: &[u8], from: SocketAddr) -> bool {
        RequestHub::offer(self, datagram, from)
    }
}

#[cfg(test)]
mod tests;
