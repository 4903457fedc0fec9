//! The one thread that drives every WebRTC peer: datagrams from the shared socket to the peer
//! that accepts them, each peer's timeouts, each camera's H.264 units to its peers, and every
//! peer's output to the socket. str0m is sans-IO: each peer is an [`Rtc`] this loop feeds and
//! drains; nothing here waits on one peer.
//!
//! The thread runs a current-thread tokio runtime of its own, so that its CPU work (SRTP for
//! every peer, every frame) never runs on the server's reactor. A camera with peers has a relay
//! task on it reading the camera's broadcast once for all of its peers; sends never wait (a
//! datagram the socket's buffer cannot take is dropped and counted, as the network would).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::bwe::{Bitrate, BweKind};
use str0m::media::{KeyframeRequestKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::offer::INITIAL_ESTIMATE;
use super::thin::{self, LevelRates, Thinning};
use super::{
    Command, NewPeer, PeerReport, WebrtcStats, CONNECT_WITHIN, MAX_TCP_LINKS, SILENCE_LIMIT,
};
use crate::cameras::Camera;
use crate::capture::h264::{H264Demand, H264Unit};
use crate::journal::LeaveReason;
use crate::sys::MmsgReceiver;
use crate::watchers::{LiveTally, Membership, RefusalCause, Refused, Slot, Tally, WatcherKind};
use crate::Server;

/// Units relayed from the cameras and not yet taken by the engine, at most.
const UNIT_QUEUE: usize = 256;
/// Datagrams per `recvmmsg`, and the most bytes one may have (str0m's MTU is 1150-1500;
/// anything longer is not WebRTC).
const RECV_BATCH: usize = 32;
const MAX_DATAGRAM_BYTES: usize = 2048;
/// The loop wakes at least this often to look for peers that went quiet.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);
/// The shortest sleep between two rounds of timeouts.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Outputs drained from a closing peer at most (its DTLS close_notify and RTCP BYE).
const CLOSE_OUTPUTS: usize = 64;
/// Packets queued for one TCP link's writer, at most (about a second of a 1.2 Mbit/s stream):
/// past it a packet is dropped and counted, as a full UDP buffer drops it.
const TCP_QUEUE: usize = 128;
/// Packets from TCP links not yet taken by the engine, at most (then the readers wait).
const TCP_INBOX: usize = 1024;

/// A unit from a camera's relay, with its bytes as str0m takes them (made once for all peers).
enum Relayed {
    Unit(usize, Arc<H264Unit>, Arc<[u8]>),
    /// The relay fell behind the camera: its peers skip to the next keyframe.
    Lagged(usize),
    /// The camera ended (shutdown, or a reload removed it).
    Ended(usize),
}

/// A camera with peers: keeps its encoder running and its relay reading.
struct Feed {
    _demand: H264Demand,
    relay: CancellationToken,
    peers: usize,
    /// The stream's bit rate at each level, which the peers' levels are chosen by.
    rates: LevelRates,
}

pub(super) struct Engine {
    server: Arc<Server>,
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    connecting: Arc<AtomicUsize>,
    peers: Vec<Peer>,
    /// Which peer a source address last belonged to: tried first.
    by_source: HashMap<SocketAddr, u64>,
    /// Cameras with peers, by the camera's address (a reloaded camera is a new one).
    feeds: HashMap<usize, Feed>,
}

/// Where a peer is in its life.
enum Stage {
    /// Answered; ICE and DTLS under way. Holds its place against `--max-viewers`.
    Connecting(Slot),
    /// A watcher.
    Joined(Membership),
    /// Left; removed at the next sweep.
    Gone,
}

struct Peer {
    id: u64,
    token: String,
    rtc: Rtc,
    mid: Mid,
    pt: Pt,
    camera: Arc<Camera>,
    feed: usize,
    stage: Stage,
    http_peer: SocketAddr,
    created: Instant,
    timeout: Instant,
    last_heard: Instant,
    /// The newest address it sent from, and by what.
    remote: Option<SocketAddr>,
    transport: Protocol,
    /// The next unit it should get; `None` until it connected.
    next_seq: Option<u64>,
    /// It lost units: nothing until a keyframe.
    wait_key: bool,
    /// The camera's cached GOP at connect, still to write.
    backlog: VecDeque<Arc<H264Unit>>,
    /// How much of the stream its link carries (`thin.rs`).
    thin: Thinning,
    /// Packets str0m had sent it at its last statistics.
    egress_packets: u64,
    /// str0m's newest estimate for it, bits per second, and whether `thin` has seen it.
    estimate: Option<(u64, bool)>,
    /// The bit rate str0m's estimator was last told to probe up to.
    desired_bps: u64,
    /// The lowest round trip its receiver reports showed: the path without a queue.
    min_rtt: Option<Duration>,
    tally: Tally,
    live: Arc<LiveTally>,
    report: PeerReport,
    /// For the bit rate: the last peer statistics' bytes sent and time.
    last_tx: Option<(u64, Instant)>,
    /// Why it ends, once it does.
    ending: Option<LeaveReason>,
    /// The count of connecting peers it is in until it connects.
    connecting: Arc<AtomicUsize>,
}

impl Engine {
    pub(super) fn new(
        server: Arc<Server>,
        local: SocketAddr,
        candidates: Vec<SocketAddr>,
        connecting: Arc<AtomicUsize>,
    ) -> Engine {
        Engine {
            server,
            local,
            candidates,
            connecting,
            peers: Vec::new(),
            by_source: HashMap::new(),
            feeds: HashMap::new(),
        }
    }

    /// Runs the engine on this thread until `shutdown`; every peer has left when it returns.
    /// `tcp`: players' TCP connections to take too (ICE-TCP).
    pub(super) fn run_on_thread(
        self,
        socket: std::net::UdpSocket,
        tcp: Option<std::net::TcpListener>,
        commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "WebRTC: cannot start the engine's runtime; WebRTC is off");
                return;
            }
        };
        runtime.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::error!(error = %e, "WebRTC: cannot use the socket; WebRTC is off");
                    return;
                }
            };
            let tcp = tcp.and_then(|l| match TcpListener::from_std(l) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "WebRTC: cannot use the TCP listener; ICE-TCP is off");
                    None
                }
            });
            self.run(socket, tcp, commands, shutdown).await;
        });
    }

    async fn run(
        mut self,
        socket: UdpSocket,
        tcp: Option<TcpListener>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let (units_tx, mut units) = mpsc::channel(UNIT_QUEUE);
        let mut receiver = MmsgReceiver::new(RECV_BATCH, MAX_DATAGRAM_BYTES);
        if self.local.is_ipv4() {
            receiver = receiver.with_control();
        }
        let (links_tx, mut links) = mpsc::channel(TCP_INBOX);
        let links_stop = shutdown.child_token();
        if let Some(listener) = tcp {
            tokio::spawn(accept_links(
                listener,
                links_tx,
                self.server.clone(),
                links_stop.clone(),
            ));
        } else {
            drop(links_tx);
        }
        let mut wire = Wire {
            udp: socket,
            tcp: HashMap::new(),
        };
        // Strangers' links are looked for at housekeeping's pace, not at every datagram.
        let mut strangers_at = Instant::now();
        loop {
            let now = Instant::now();
            let wake = self
                .peers
                .iter()
                .map(|p| p.timeout)
                .min()
                .unwrap_or(now + HOUSEKEEPING_EVERY)
                .min(now + HOUSEKEEPING_EVERY)
                // A timeout that str0m keeps at "now" must not spin the thread.
                .max(now + MIN_WAIT);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.command(command, &wire, &units_tx),
                Some(relayed) = units.recv() => self.relayed(relayed, &wire),
                ready = wire.udp.readable() => {
                    if ready.is_ok() {
                        self.receive(&wire, &mut receiver);
                    }
                }
                Some(event) = links.recv() => self.link_event(event, &mut wire),
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            self.drive(&wire, Instant::now());
            self.sweep(&wire);
            let now = Instant::now();
            if now >= strangers_at {
                close_strangers(&mut wire, now);
                strangers_at = now + HOUSEKEEPING_EVERY;
            }
        }
        for peer in &mut self.peers {
            peer.end(LeaveReason::Shutdown);
        }
        self.sweep(&wire);
        links_stop.cancel();
        for feed in self.feeds.values() {
            feed.relay.cancel();
        }
    }

    /// A TCP link opened, brought a packet, or closed.
    fn link_event(&mut self, event: LinkEvent, wire: &mut Wire) {
        match event {
            LinkEvent::Opened { remote, out, stop } => {
                let link = Link {
                    out,
                    stop,
                    opened: Instant::now(),
                    taken: std::cell::Cell::new(false),
                };
                if let Some(old) = wire.tcp.insert(remote, link) {
                    old.stop.cancel();
                }
            }
            LinkEvent::Packet {
                remote,
                local,
                bytes,
            } => {
                self.stats().datagrams_received.fetch_add(1, Relaxed);
                let to = Some(local.ip());
                self.datagram(wire, Instant::now(), Protocol::Tcp, remote, to, &bytes);
            }
            LinkEvent::Closed { remote } => {
                if wire.tcp.get(&remote).is_some_and(|l| l.stop.is_cancelled()) {
                    wire.tcp.remove(&remote);
                }
            }
        }
    }

    fn stats(&self) -> &WebrtcStats {
        &self.server.stats.webrtc
    }

    fn command(&mut self, command: Command, wire: &Wire, units: &mpsc::Sender<Relayed>) {
        match command {
            Command::Add(new) => self.add(*new, wire, units),
            Command::Delete {
                camera,
                token,
                done,
            } => {
                let found = self
                    .peers
                    .iter_mut()
                    .find(|p| p.token == token && p.camera.name == camera && p.ending.is_none());
                let found = match found {
                    Some(peer) => {
                        peer.end(LeaveReason::End);
                        true
                    }
                    None => false,
                };
                let _ = done.send(found);
                self.sweep(wire);
            }
        }
    }

    fn add(&mut self, new: NewPeer, wire: &Wire, units: &mpsc::Sender<Relayed>) {
        let NewPeer {
            slot,
            token,
            camera,
            http_peer,
            answered,
        } = new;
        let key = Arc::as_ptr(&camera) as usize;
        let feed = self.feeds.entry(key).or_insert_with(|| {
            let feed = camera.capture.h264.clone();
            // The encoder starts now, while ICE and DTLS are under way: the first picture is
            // ready by the time the peer is.
            let demand = feed.demand();
            let (_, rx) = feed.join();
            let relay = CancellationToken::new();
            tokio::spawn(relay_units(
                key,
                camera.clone(),
                rx,
                units.clone(),
                relay.clone(),
            ));
            Feed {
                _demand: demand,
                relay,
                peers: 0,
                rates: LevelRates::default(),
            }
        });
        feed.peers += 1;
        let desired_bps = desired_bps(&feed.rates);
        let id = slot.id();
        let now = Instant::now();
        let report = PeerReport {
            id,
            camera: camera.name.clone(),
            address: http_peer.to_string(),
            state: "connecting",
            level: thin::level_name(thin::ALL),
            ..PeerReport::default()
        };
        self.stats()
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, report.clone());
        tracing::debug!(id, camera = %camera.name, %http_peer, "WebRTC: peer answered");
        let mut rtc = answered.rtc;
        // The estimate starts at a little more than the stream when its rate is known (a slow
        // link is not flooded at the start), else at `INITIAL_ESTIMATE`.
        rtc.bwe().reset(Bitrate::bps(desired_bps));
        rtc.bwe().set_desired_bitrate(Bitrate::bps(desired_bps));
        let mut peer = Peer {
            id,
            token,
            rtc,
            mid: answered.mid,
            pt: answered.pt,
            camera,
            feed: key,
            stage: Stage::Connecting(slot),
            http_peer,
            created: now,
            timeout: answered.timeout,
            last_heard: now,
            remote: None,
            transport: Protocol::Udp,
            next_seq: None,
            wait_key: false,
            backlog: VecDeque::new(),
            thin: Thinning::default(),
            estimate: None,
            egress_packets: 0,
            desired_bps,
            min_rtt: None,
            tally: Tally::default(),
            live: Arc::new(LiveTally::default()),
            report,
            last_tx: None,
            ending: None,
            connecting: self.connecting.clone(),
        };
        for t in &answered.transmits {
            wire.send(self.stats(), t);
        }
        peer.drain(wire, &self.server);
        self.peers.push(peer);
    }

    fn relayed(&mut self, relayed: Relayed, wire: &Wire) {
        match relayed {
            Relayed::Unit(key, unit, data) => {
                let Some(feed) = self.feeds.get_mut(&key) else {
                    return;
                };
                let level = thin::unit_level(unit.au.is_keyframe(), unit.au.layer);
                feed.rates.add(unit.media_time_90k, level, data.len());
                let now = Instant::now();
                for peer in self.peers.iter_mut().filter(|p| p.feed == key) {
                    peer.follow_estimate(&feed.rates, &self.server.stats.webrtc, now);
                    peer.send_unit(&unit, &data, &self.server);
                    peer.drain(wire, &self.server);
                }
            }
            Relayed::Lagged(key) => {
                for peer in self.peers.iter_mut().filter(|p| p.feed == key) {
                    peer.lost_units();
                }
            }
            Relayed::Ended(key) => {
                for peer in self.peers.iter_mut().filter(|p| p.feed == key) {
                    peer.end(LeaveReason::Shutdown);
                }
                self.sweep(wire);
            }
        }
    }

    /// Takes in what is queued on the socket (a few batches; the loop comes back for more).
    fn receive(&mut self, wire: &Wire, receiver: &mut MmsgReceiver) {
        let socket = &wire.udp;
        let fd = socket.as_raw_fd();
        let mut inbox: Vec<(SocketAddr, Option<IpAddr>, Vec<u8>)> = Vec::new();
        for _ in 0..4 {
            let got = socket.try_io(Interest::READABLE, || {
                receiver.recv(fd, |d| {
                    if d.len <= d.bytes.len() {
                        inbox.push((d.from, d.to.map(IpAddr::V4), d.bytes.to_vec()));
                    } else {
                        inbox.push((d.from, None, Vec::new()));
                    }
                })
            });
            match got {
                Ok(n) if n == receiver.capacity() => continue,
                _ => break,
            }
        }
        let now = Instant::now();
        for (from, to, bytes) in inbox {
            self.stats().datagrams_received.fetch_add(1, Relaxed);
            self.datagram(wire, now, Protocol::Udp, from, to, &bytes);
        }
    }

    /// One datagram, to the peer that accepts it.
    fn datagram(
        &mut self,
        wire: &Wire,
        now: Instant,
        proto: Protocol,
        from: SocketAddr,
        to: Option<IpAddr>,
        bytes: &[u8],
    ) {
        let stats = &self.server.stats.webrtc;
        let Ok(contents) = bytes.try_into() else {
            stats.datagrams_foreign.fetch_add(1, Relaxed);
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source: from,
                destination: self.destination(from, to),
                contents,
            },
        );
        let cached = self
            .by_source
            .get(&from)
            .and_then(|id| self.peers.iter().position(|p| p.id == *id))
            .filter(|&i| self.peers[i].accepts(&input));
        let Some(i) = cached.or_else(|| self.peers.iter().position(|p| p.accepts(&input))) else {
            stats.datagrams_foreign.fetch_add(1, Relaxed);
            return;
        };
        let peer = &mut self.peers[i];
        self.by_source.insert(from, peer.id);
        peer.last_heard = now;
        peer.remote = Some(from);
        peer.transport = proto;
        if proto == Protocol::Tcp {
            if let Some(link) = wire.tcp.get(&from) {
                link.taken.set(true);
            }
        }
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(id = peer.id, error = %e, "WebRTC: peer input failed");
            peer.end(LeaveReason::Error);
            return;
        }
        peer.drain(wire, &self.server);
    }

    /// The local candidate a datagram came in on ([`local_candidate`]).
    fn destination(&self, from: SocketAddr, to: Option<IpAddr>) -> SocketAddr {
        local_candidate(self.local, &self.candidates, from, to)
    }

    /// Gives every peer whose timeout has come its time.
    fn drive(&mut self, wire: &Wire, now: Instant) {
        for peer in self.peers.iter_mut().filter(|p| p.timeout <= now) {
            if peer.ending.is_some() {
                continue;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(id = peer.id, error = %e, "WebRTC: peer timeout failed");
                peer.end(LeaveReason::Error);
                continue;
            }
            peer.drain(wire, &self.server);
        }
    }

    /// Ends peers that did not connect in time, went quiet or were closed, and removes the ones
    /// that ended: each connected one leaves (its LEAVE line), each other one is journalled as
    /// refused if it timed out.
    fn sweep(&mut self, wire: &Wire) {
        let now = Instant::now();
        for peer in &mut self.peers {
            if peer.ending.is_some() {
                continue;
            }
            match peer.stage {
                Stage::Connecting(_) if now.duration_since(peer.created) > CONNECT_WITHIN => {
                    peer.end(LeaveReason::Timeout);
                }
                Stage::Joined(_) if now.duration_since(peer.last_heard) > SILENCE_LIMIT => {
                    peer.end(LeaveReason::Timeout);
                }
                _ if !peer.rtc.is_alive() => peer.end(LeaveReason::Closed),
                _ => {}
            }
        }
        if self.peers.iter().all(|p| p.ending.is_none()) {
            return;
        }
        let (gone, live): (Vec<Peer>, Vec<Peer>) = std::mem::take(&mut self.peers)
            .into_iter()
            .partition(|p| p.ending.is_some());
        self.peers = live;
        for mut peer in gone {
            let reason = peer.ending.unwrap_or(LeaveReason::Error);
            peer.close(wire, &self.server);
            self.by_source.retain(|_, id| *id != peer.id);
            self.stats()
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer.id);
            match std::mem::replace(&mut peer.stage, Stage::Gone) {
                Stage::Connecting(slot) => {
                    self.connecting.fetch_sub(1, Relaxed);
                    if reason == LeaveReason::Timeout {
                        self.stats().connect_timeouts.fetch_add(1, Relaxed);
                        Refused::new(
                            RefusalCause::Timeout,
                            format!(
                                "WebRTC: no ICE and DTLS within {} s",
                                CONNECT_WITHIN.as_secs()
                            ),
                        )
                        .record(
                            &self.server,
                            peer.http_peer,
                            Some(WatcherKind::Webrtc),
                        );
                    }
                    drop(slot);
                }
                Stage::Joined(membership) => membership.leave(reason, &peer.tally),
                Stage::Gone => {}
            }
            tracing::debug!(id = peer.id, reason = reason.as_str(), "WebRTC: peer ends");
            if let Some(feed) = self.feeds.get_mut(&peer.feed) {
                feed.peers = feed.peers.saturating_sub(1);
                if feed.peers == 0 {
                    feed.relay.cancel();
                    self.feeds.remove(&peer.feed);
                }
            }
        }
    }
}

impl Peer {
    fn accepts(&self, input: &Input) -> bool {
        self.ending.is_none() && self.rtc.accepts(input)
    }

    /// The peer ends (at the next sweep) with `reason`; the first reason given stands.
    fn end(&mut self, reason: LeaveReason) {
        self.ending.get_or_insert(reason);
    }

    /// Polls the peer until it wants a timeout: its datagrams go out, its events are handled.
    /// Media written while handling an event (the GOP, at connect) are sent by the same loop.
    fn drain(&mut self, wire: &Wire, server: &Arc<Server>) {
        let stats = &server.stats.webrtc;
        loop {
            if self.ending.is_some() {
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if let Some(unit) = self.backlog.pop_front() {
                        if unit.au.layer > 0 && self.next_seq == Some(unit.seq) {
                            // The GOP is the past: its layer-0 pictures (a chain that decodes)
                            // bring the player to the present with half the bytes or less,
                            // which a slow link is seconds shorter at.
                            self.tally.seen(unit.seq);
                            self.next_seq = Some(unit.seq + 1);
                            continue;
                        }
                        let data = access_unit_bytes(&unit);
                        self.send_unit(&unit, &data, server);
                        continue;
                    }
                    self.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => wire.send(stats, &t),
                Ok(Output::Event(e)) => self.event(e, server),
                Err(e) => {
                    tracing::debug!(id = self.id, error = %e, "WebRTC: peer failed");
                    self.end(LeaveReason::Error);
                    return;
                }
            }
        }
    }

    fn event(&mut self, event: Event, server: &Arc<Server>) {
        let stats = &server.stats.webrtc;
        match event {
            Event::Connected => self.connected(server),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end(LeaveReason::Timeout);
            }
            Event::KeyframeRequest(req) if req.mid == self.mid => {
                stats.keyframe_requests.fetch_add(1, Relaxed);
                self.report.keyframe_requests += 1;
                tracing::trace!(id = self.id, kind = ?req.kind, "WebRTC: keyframe request");
                if matches!(
                    req.kind,
                    KeyframeRequestKind::Pli | KeyframeRequestKind::Fir
                ) {
                    self.camera.capture.h264.want_keyframe();
                }
                self.publish_report(server);
            }
            Event::MediaEgressStats(s) if s.mid == self.mid => {
                let new_nacks = s.nacks.saturating_sub(self.report.nacks);
                let new_packets = s.packets.saturating_sub(self.egress_packets);
                self.egress_packets = s.packets;
                if let Some(rtt) = s.rtt {
                    self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                }
                let lossy = thin::lossy(new_nacks, new_packets, s.rtt, self.min_rtt);
                if self.estimate.is_some() && lossy {
                    tracing::trace!(
                        id = self.id,
                        nacks = new_nacks,
                        packets = new_packets,
                        rtt = ?s.rtt,
                        min_rtt = ?self.min_rtt,
                        "WebRTC: peer losing packets at a queue"
                    );
                    let before = self.thin.level();
                    self.thin.losing(Instant::now());
                    self.log_level(before, "loss");
                }
                // What the thinning goes by, each second (`RUST_LOG=surv_server::watchers::
                // webrtc::engine=trace`): how a slow peer's round trip, pacer queue and estimate
                // move together.
                if tracing::enabled!(tracing::Level::TRACE) {
                    let queued = self.queued();
                    tracing::trace!(
                        id = self.id,
                        rtt = ?s.rtt,
                        min_rtt = ?self.min_rtt,
                        nacks = new_nacks,
                        packets = new_packets,
                        ?queued,
                        estimate_bps = self.estimate.map(|(bps, _)| bps),
                        level = thin::level_name(self.thin.level()),
                        "WebRTC: egress stats"
                    );
                }
                stats.nacks.fetch_add(new_nacks, Relaxed);
                self.report.nacks = s.nacks;
                if let Some(rtt) = s.rtt {
                    self.report.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
                if s.loss.is_some() {
                    self.report.loss = s.loss;
                }
                self.publish_report(server);
            }
            Event::PeerStats(s) => {
                if let Some((bytes, at)) = self.last_tx {
                    let secs = s.timestamp.saturating_duration_since(at).as_secs_f64();
                    if secs > 0.0 {
                        let bits = s.peer_bytes_tx.saturating_sub(bytes) as f64 * 8.0;
                        self.report.bitrate_bps = Some((bits / secs) as u64);
                    }
                }
                self.last_tx = Some((s.peer_bytes_tx, s.timestamp));
                let ice_rtt = s
                    .selected_candidate_pair
                    .as_ref()
                    .and_then(|p| p.current_round_trip_time);
                if let Some(rtt) = s.rtt.or(ice_rtt) {
                    self.report.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
                if s.egress_loss_fraction.is_some() {
                    self.report.loss = s.egress_loss_fraction;
                }
                self.publish_report(server);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.estimate = Some((estimate.as_u64(), true));
                self.report.estimate_bps = Some(estimate.as_u64());
            }
            Event::Closed => self.end(LeaveReason::Closed),
            _ => {}
        }
    }

    /// The newest estimate sets the peer's level (`thin.rs`), at every unit (a step up waits
    /// for it to hold), and a peer held below all by an application-limited estimate asks for a
    /// probe (`Thinning::wants_probe`); a new estimate also tells the estimator to probe up to a
    /// little more than the whole stream, as that changes.
    fn follow_estimate(&mut self, rates: &LevelRates, stats: &WebrtcStats, now: Instant) {
        let Some((bps, new)) = self.estimate else {
            return;
        };
        let (before, waited) = (self.thin.level(), self.thin.waits_for_keyframe());
        self.thin.estimate(bps, rates, now);
        self.log_level(before, "estimate");
        if self.thin.waits_for_keyframe() && !waited {
            // Up from keyframes alone: at a keyframe, asked for (at most one a second is
            // forced for the camera) rather than a whole GOP away.
            self.camera.capture.h264.want_keyframe();
        }
        if self.thin.wants_probe(bps, rates, now) {
            // A new estimator at the same estimate: str0m's starts by probing (padding at
            // up to twice the desired rate for a few milliseconds), and its result is the
            // estimate from then on.
            tracing::debug!(id = self.id, estimate_bps = bps, "WebRTC: probe");
            self.rtc.bwe().reset(Bitrate::bps(bps));
            self.report.probes = self.thin.probes;
            stats.probes.fetch_add(1, Relaxed);
        }
        if !new {
            return;
        }
        self.estimate = Some((bps, false));
        tracing::trace!(
            id = self.id,
            estimate_bps = bps,
            level = before,
            "WebRTC: estimate"
        );
        let desired = desired_bps(rates);
        if desired.abs_diff(self.desired_bps) > self.desired_bps / 10 {
            self.desired_bps = desired;
            self.rtc.bwe().set_desired_bitrate(Bitrate::bps(desired));
        }
    }

    /// ICE and DTLS are through: the peer joins, and gets the camera's cached GOP at once, or
    /// waits for the keyframe its joining asked for when the encoder makes it next (or nothing
    /// is cached).
    fn connected(&mut self, server: &Arc<Server>) {
        let Stage::Connecting(_) = self.stage else {
            return;
        };
        let Stage::Connecting(slot) = std::mem::replace(&mut self.stage, Stage::Gone) else {
            return;
        };
        let stats = &server.stats.webrtc;
        stats.connected.fetch_add(1, Relaxed);
        let address = self.remote.unwrap_or(self.http_peer);
        let membership = slot.join_reporting(
            WatcherKind::Webrtc,
            address,
            &self.camera,
            self.live.clone(),
        );
        self.stage = Stage::Joined(membership);
        // Its place among the connecting peers is free again.
        self.connecting.fetch_sub(1, Relaxed);
        self.report.state = "connected";
        self.report.transport = match self.transport {
            Protocol::Udp => "udp",
            _ => "tcp",
        };
        self.report.address = address.to_string();
        self.publish_report(server);
        tracing::debug!(id = self.id, %address, "WebRTC: peer connected");
        let feed = self.camera.capture.h264.clone();
        let (gop, _) = feed.join();
        match gop.first() {
            // The encoder's next picture is the keyframe this join asked for: no need for the
            // past (a slow link would take seconds over it before anything live).
            Some(_) if feed.keyframe_due() => {
                self.next_seq = Some(0);
                self.wait_key = true;
            }
            Some(first) => {
                // Only its layer-0 pictures, written one by one as the peer drains (see
                // `drain`): without the pacer (`--webrtc-adapt=false`) str0m holds one
                // picture's packets at a time, with it they wait in the pacer's queue.
                self.next_seq = Some(first.seq);
                self.backlog = gop.into();
            }
            None => {
                // No keyframe cached: the next one (join asked for it) starts the peer.
                self.next_seq = Some(0);
                self.wait_key = true;
            }
        }
    }

    /// The relay fell behind: the peer waits for the next keyframe, and asks for one.
    fn lost_units(&mut self) {
        if self.next_seq.is_some() && !self.wait_key {
            self.wait_key = true;
            self.camera.capture.h264.want_keyframe();
        }
    }

    /// Writes one access unit to the peer, unless it has it already or waits for a keyframe.
    fn send_unit(&mut self, unit: &H264Unit, data: &Arc<[u8]>, server: &Arc<Server>) {
        let Some(next) = self.next_seq else {
            // Not connected: str0m would drop it.
            return;
        };
        if unit.seq < next || self.ending.is_some() {
            return;
        }
        self.tally.seen(unit.seq);
        let keyframe = unit.au.is_keyframe();
        if unit.seq > next && !keyframe && next != 0 {
            // Units were lost on the way: a P picture now would show garbage.
            self.lost_units();
        }
        self.next_seq = Some(unit.seq + 1);
        if self.wait_key && !keyframe {
            return;
        }
        self.wait_key = false;
        let before = self.thin.level();
        let queued = self.queued();
        let admitted = self.thin.admit(
            thin::unit_level(keyframe, unit.au.layer),
            queued,
            Instant::now(),
        );
        self.log_level(before, "climb");
        self.report.level = thin::level_name(self.thin.level());
        if !admitted {
            self.report.frames_thinned = self.thin.thinned;
            self.report.frames_late = self.thin.late;
            server.stats.webrtc.frames_thinned.fetch_add(1, Relaxed);
            return;
        }
        let Some(writer) = self.rtc.writer(self.mid) else {
            self.end(LeaveReason::Error);
            return;
        };
        let written = writer.write(
            self.pt,
            wallclock(unit.capture_unix_us),
            MediaTime::from_90khz(unit.media_time_90k),
            data.clone(),
        );
        match written {
            Ok(()) => {
                self.tally.sent(data.len());
                self.live.set(&self.tally);
                server.stats.frames_sent.fetch_add(1, Relaxed);
                server
                    .stats
                    .bytes_sent
                    .fetch_add(data.len() as u64, Relaxed);
            }
            Err(e) => {
                tracing::debug!(id = self.id, error = %e, "WebRTC: cannot write a frame");
                self.end(LeaveReason::Error);
            }
        }
    }

    /// Logs a change of the peer's level from `before`, and what made it: the estimate
    /// falling, its link losing packets, or the climb back at a unit of the new level.
    fn log_level(&self, before: u8, cause: &'static str) {
        let level = self.thin.level();
        if level != before {
            tracing::debug!(
                id = self.id,
                from = thin::level_name(before),
                level = thin::level_name(level),
                estimate_bps = self.estimate.map(|(bps, _)| bps),
                cause,
                "WebRTC: peer's level changes"
            );
        }
    }

    /// How long the peer's send queue (str0m's pacer) takes to drain at the estimate, as the
    /// pacer last looked; nothing without an estimate (`--webrtc-adapt=false`: no pacer).
    fn queued(&mut self) -> Duration {
        let Some((bps, _)) = self.estimate else {
            return Duration::ZERO;
        };
        let mut api = self.rtc.direct_api();
        let bytes = api
            .stream_tx_by_mid(self.mid, None)
            .and_then(|tx| tx.queue_info().map(|q| q.byte_size()))
            .unwrap_or(0);
        Duration::from_secs_f64(bytes as f64 * 8.0 / bps.max(1) as f64)
    }

    /// Sends what str0m has to say on the way out (DTLS close_notify) for peers that end
    /// politely; every peer's engine is dropped after.
    fn close(&mut self, wire: &Wire, server: &Server) {
        let polite = matches!(
            self.ending,
            Some(LeaveReason::End | LeaveReason::Shutdown | LeaveReason::Removed)
        );
        if !polite || self.rtc.close().is_err() {
            self.rtc.disconnect();
            return;
        }
        for _ in 0..CLOSE_OUTPUTS {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => wire.send(&server.stats.webrtc, &t),
                Ok(Output::Event(_)) => {}
                Ok(Output::Timeout(_)) | Err(_) => break,
            }
        }
        self.rtc.disconnect();
    }

    fn publish_report(&self, server: &Server) {
        if let Some(r) = server
            .stats
            .webrtc
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            r.clone_from(&self.report);
        }
    }
}

/// What a peer's estimator probes up to: a quarter more than the whole stream (room for
/// resends and RTCP), or [`INITIAL_ESTIMATE`] before the stream's rate is known.
fn desired_bps(rates: &LevelRates) -> u64 {
    rates
        .bps(thin::ALL)
        .map_or(INITIAL_ESTIMATE.as_u64(), |bps| bps + bps / 4)
}

/// Closes the TCP links no peer has taken a packet from within [`CONNECT_WITHIN`] of their
/// opening: a stranger's connection holds no place for long.
fn close_strangers(wire: &mut Wire, now: Instant) {
    wire.tcp.retain(|_, link| {
        let stranger = !link.taken.get() && now.duration_since(link.opened) > CONNECT_WITHIN;
        if stranger {
            link.stop.cancel();
        }
        !stranger && !link.stop.is_cancelled()
    });
}

/// Where peers' datagrams leave: the shared UDP socket, or the TCP link a peer reached us by
/// (ICE-TCP), each packet framed with its length (RFC 4571).
struct Wire {
    udp: UdpSocket,
    /// Open TCP links, by the player's address.
    tcp: HashMap<SocketAddr, Link>,
}

/// A player's TCP connection, as the engine holds it.
struct Link {
    /// Framed packets to its writer task; full, a packet is dropped (counted).
    out: mpsc::Sender<Vec<u8>>,
    /// Ends its reader and writer.
    stop: CancellationToken,
    opened: Instant,
    /// A peer took a packet from it: it is some peer's path, not a stranger's.
    taken: std::cell::Cell<bool>,
}

impl Wire {
    /// Sends one datagram without waiting: a full socket buffer or link queue drops it
    /// (counted). A TCP packet for an address with no link is not sent: str0m's checks toward a
    /// player's own TCP candidates (active ones, which only the player can open), or a link
    /// that has closed.
    fn send(&self, stats: &WebrtcStats, t: &Transmit) {
        let bytes: &[u8] = &t.contents;
        let sent = match t.proto {
            Protocol::Udp => self.udp.try_send_to(bytes, t.destination).is_ok(),
            _ => {
                let Some(link) = self.tcp.get(&t.destination) else {
                    tracing::trace!(to = %t.destination, "WebRTC: no TCP link there; not sent");
                    return;
                };
                // str0m's packets are at most its MTU, far under RFC 4571's 64 KiB.
                match u16::try_from(bytes.len()) {
                    Ok(len) => {
                        let mut framed = Vec::with_capacity(bytes.len() + 2);
                        framed.extend_from_slice(&len.to_be_bytes());
                        framed.extend_from_slice(bytes);
                        link.out.try_send(framed).is_ok()
                    }
                    Err(_) => false,
                }
            }
        };
        if sent {
            stats.packets_sent.fetch_add(1, Relaxed);
            stats.bytes_sent.fetch_add(bytes.len() as u64, Relaxed);
        } else {
            stats.send_errors.fetch_add(1, Relaxed);
        }
    }
}

/// What the TCP links' tasks tell the engine, in order for each link.
enum LinkEvent {
    Opened {
        remote: SocketAddr,
        out: mpsc::Sender<Vec<u8>>,
        stop: CancellationToken,
    },
    Packet {
        remote: SocketAddr,
        local: SocketAddr,
        bytes: Vec<u8>,
    },
    Closed {
        remote: SocketAddr,
    },
}

/// Takes players' TCP connections until `stop`: each gets a reader task (packets to the engine)
/// and a writer task (the engine's packets to it); past [`MAX_TCP_LINKS`] open, one is closed
/// at once (counted).
async fn accept_links(
    listener: TcpListener,
    events: mpsc::Sender<LinkEvent>,
    server: Arc<Server>,
    stop: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stats = &server.stats.webrtc;
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::debug!(error = %e, "WebRTC: cannot accept a TCP link");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_TCP_LINKS).then_some(n + 1))
            .is_err()
        {
            stats.tcp_links_refused.fetch_add(1, Relaxed);
            continue;
        }
        stats.tcp_links.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            open.fetch_sub(1, Relaxed);
            continue;
        };
        let (reader, writer) = stream.into_split();
        let (out, queued) = mpsc::channel(TCP_QUEUE);
        let link_stop = stop.child_token();
        let opened = LinkEvent::Opened {
            remote,
            out,
            stop: link_stop.clone(),
        };
        if events.send(opened).await.is_err() {
            return;
        }
        tokio::spawn(write_link(writer, queued, link_stop.clone()));
        let (events, open) = (events.clone(), open.clone());
        tokio::spawn(async move {
            read_link(reader, remote, local, &events, &link_stop).await;
            link_stop.cancel();
            open.fetch_sub(1, Relaxed);
            let _ = events.send(LinkEvent::Closed { remote }).await;
        });
    }
}

/// A link's packets to the engine until it closes, goes quiet for [`SILENCE_LIMIT`], frames a
/// packet no WebRTC peer sends (empty, or over [`MAX_DATAGRAM_BYTES`]), or is stopped.
async fn read_link(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    remote: SocketAddr,
    local: SocketAddr,
    events: &mpsc::Sender<LinkEvent>,
    stop: &CancellationToken,
) {
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = tokio::time::timeout(SILENCE_LIMIT, reader.read_exact(&mut len)) => read,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_DATAGRAM_BYTES {
            tracing::debug!(%remote, len, "WebRTC: a TCP link framed no WebRTC packet; closed");
            return;
        }
        let mut bytes = vec![0u8; len];
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = tokio::time::timeout(SILENCE_LIMIT, reader.read_exact(&mut bytes)) => read,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let packet = LinkEvent::Packet {
            remote,
            local,
            bytes,
        };
        if events.send(packet).await.is_err() {
            return;
        }
    }
}

/// Writes the engine's framed packets to a link, as many as are queued in one write, until the
/// engine lets go of it, a write fails, or it is stopped.
async fn write_link(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queued: mpsc::Receiver<Vec<u8>>,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            first = queued.recv() => first,
        };
        let Some(first) = first else {
            return;
        };
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 64 * 1024 {
            match queued.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            () = stop.cancelled() => return,
            written = writer.write_all(&batch) => written,
        };
        if written.is_err() {
            stop.cancel();
            return;
        }
    }
}

/// The instant a capture time (µs since the Unix epoch) was, on this process's clock.
fn wallclock(capture_unix_us: u64) -> Instant {
    let now = Instant::now();
    let now_unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let age = Duration::from_micros(now_unix_us.saturating_sub(capture_unix_us));
    now.checked_sub(age).unwrap_or(now)
}

/// A unit's bytes as str0m's packetizer takes them: Annex B, with a keyframe's SPS and PPS in
/// band (a camera passed through may send them only out of band; the player needs them).
fn access_unit_bytes(unit: &H264Unit) -> Arc<[u8]> {
    let au = &unit.au;
    match &au.parameter_sets {
        Some(ps) if surv_codec::annexb::parameter_sets(&au.data).is_none() => {
            const START: [u8; 4] = [0, 0, 0, 1];
            let mut v = Vec::with_capacity(au.data.len() + ps.sps.len() + ps.pps.len() + 8);
            for nal in [&ps.sps[..], &ps.pps[..]] {
                v.extend_from_slice(&START);
                v.extend_from_slice(nal);
            }
            v.extend_from_slice(&au.data);
            v.into()
        }
        _ => Arc::from(&au.data[..]),
    }
}

/// Reads a camera's units once for all its peers and hands them to the engine, until `stop`
/// (its last peer left) or the camera ends.
async fn relay_units(
    key: usize,
    camera: Arc<Camera>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<H264Unit>>,
    to: mpsc::Sender<Relayed>,
    stop: CancellationToken,
) {
    loop {
        let got = tokio::select! {
            () = stop.cancelled() => return,
            () = camera.stop.cancelled() => {
                let _ = to.send(Relayed::Ended(key)).await;
                return;
            }
            got = rx.recv() => got,
        };
        let relayed = match got {
            Ok(unit) => {
                let data = access_unit_bytes(&unit);
                Relayed::Unit(key, unit, data)
            }
            Err(RecvError::Lagged(_)) => Relayed::Lagged(key),
            Err(RecvError::Closed) => {
                let _ = to.send(Relayed::Ended(key)).await;
                return;
            }
        };
        if to.send(relayed).await.is_err() {
            return;
        }
    }
}

/// The local candidate a datagram from `from` came in on, as ICE must be told it: str0m drops
/// a connectivity check whose destination is none of our host candidates.
///
/// * Its destination address (IPv4: the kernel says it) or, without one, the bound address,
///   when that is one of our candidates.
/// * Else the first candidate of its family. That is a player behind no NAT of ours reaching
///   an address we were told to give (`--webrtc-host`) through a port forward or a 1:1 NAT:
///   it arrives at our private address, yet the player sent it to the public one, and that
///   is the candidate its checks are paired with. Bound to every address (IPv6, where the
///   destination is not read) it is the same.
/// * Else what it arrived at.
///
/// Replies leave from the one socket whatever this says: only ICE's bookkeeping uses it.
fn local_candidate(
    local: SocketAddr,
    candidates: &[SocketAddr],
    from: SocketAddr,
    to: Option<IpAddr>,
) -> SocketAddr {
    let arrived = match to {
        Some(ip) => SocketAddr::new(ip, local.port()),
        None => local,
    };
    if candidates.contains(&arrived) {
        return arrived;
    }
    candidates
        .iter()
        .find(|c| c.is_ipv4() == from.is_ipv4())
        .copied()
        .unwrap_or(arrived)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{H264AccessUnit, ParameterSets};
    use bytes::Bytes;

    fn unit(data: &'static [u8], keyframe: bool) -> H264Unit {
        H264Unit {
            seq: 0,
            au: H264AccessUnit {
                layer: 0,
                data: Bytes::from_static(data),
                parameter_sets: keyframe.then(|| ParameterSets {
                    sps: Bytes::from_static(&[0x67, 0x42, 0xe0, 0x1f]),
                    pps: Bytes::from_static(&[0x68, 0xce]),
                }),
            },
            media_time_90k: 0,
            capture_unix_us: 0,
        }
    }

    #[test]
    fn a_keyframe_carries_its_parameter_sets_in_band() {
        let idr = access_unit_bytes(&unit(&[0, 0, 0, 1, 0x65, 0x88], true));
        assert_eq!(
            &idr[..],
            &[0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88]
        );
        // Already in band: as it is.
        let inband: &'static [u8] = &[
            0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88,
        ];
        assert_eq!(&access_unit_bytes(&unit(inband, true))[..], inband);
        let p = access_unit_bytes(&unit(&[0, 0, 0, 1, 0x41, 0x9a], false));
        assert_eq!(&p[..], &[0, 0, 0, 1, 0x41, 0x9a]);
    }

    #[test]
    fn wallclock_is_the_capture_time_on_the_monotonic_clock() {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let t = wallclock(now_us - 500_000);
        let age = Instant::now().duration_since(t);
        assert!(
            age >= Duration::from_millis(499) && age < Duration::from_secs(2),
            "{age:?}"
        );
        // A capture time in the future (clock set back) is now.
        assert!(Instant::now().duration_since(wallclock(u64::MAX)) < Duration::from_secs(1));
    }

    #[test]
    fn a_datagram_through_a_port_forward_is_paired_with_the_address_players_were_given() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let player = addr("198.51.100.9:50000");
        // Bound to one address, which is the candidate.
        let local = addr("10.0.0.5:8555");
        assert_eq!(
            local_candidate(local, &[local], player, ip("10.0.0.5")),
            local
        );
        assert_eq!(local_candidate(local, &[local], player, None), local);
        // Behind a port forward: told 203.0.113.7, it arrives at 10.0.0.5.
        let public = addr("203.0.113.7:8555");
        let lan = addr("192.168.1.20:8555");
        assert_eq!(
            local_candidate(local, &[public], player, ip("10.0.0.5")),
            public
        );
        // Two addresses given: the one it came to when it is one of them, else the first.
        assert_eq!(
            local_candidate(
                addr("0.0.0.0:8555"),
                &[public, lan],
                player,
                ip("192.168.1.20")
            ),
            lan
        );
        assert_eq!(
            local_candidate(addr("0.0.0.0:8555"), &[public, lan], player, ip("10.0.0.5")),
            public
        );
        // Bound to every IPv6 address (no destination read): the first IPv6 candidate.
        let v6 = addr("[2001:db8::5]:8555");
        assert_eq!(
            local_candidate(addr("[::]:8555"), &[v6], addr("[2001:db8::9]:5000"), None),
            v6
        );
        // No candidate of its family: what it arrived at.
        assert_eq!(local_candidate(local, &[v6], player, ip("10.0.0.5")), local);
    }

    /// Reads `input` (each `Vec` one read, the whole of it) as a link and returns the packets
    /// it passed on.
    fn read_as_link(input: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut io = tokio_test::io::Builder::new();
        for read in input {
            io.read(read);
        }
        packets_of(io.build())
    }

    /// The packets a link reading `reader` passes on.
    fn packets_of(reader: impl tokio::io::AsyncRead + Unpin) -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (events, mut got) = mpsc::channel(16);
            let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
            read_link(reader, addr, addr, &events, &CancellationToken::new()).await;
            drop(events);
            let mut packets = Vec::new();
            while let Some(e) = got.recv().await {
                if let LinkEvent::Packet { bytes, .. } = e {
                    packets.push(bytes);
                }
            }
            packets
        })
    }

    #[test]
    fn a_link_reads_rfc_4571_frames_split_anywhere() {
        let mut stream = vec![0u8, 3, b'a', b'b', b'c', 0, 1, b'z'];
        let want = vec![b"abc".to_vec(), b"z".to_vec()];
        assert_eq!(read_as_link(&[stream.clone()]), want);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                read_as_link(&[a.to_vec(), b.to_vec()]),
                want,
                "cut at {cut}"
            );
        }
        // A byte at a time.
        let bytes: Vec<Vec<u8>> = stream.iter().map(|b| vec![*b]).collect();
        assert_eq!(read_as_link(&bytes), want);
        // Ends mid-frame: what came whole is passed, the rest dropped with the link.
        stream.extend([0, 9, b'x']);
        assert_eq!(read_as_link(&[stream]), want);
    }

    #[test]
    fn a_link_framing_no_webrtc_packet_ends_there() {
        // Empty: the link ends, what follows is not read.
        assert!(packets_of(&[0u8, 0, 0, 1, b'a'][..]).is_empty());
        // Over MAX_DATAGRAM_BYTES: ends before anything is read or allocated for it.
        let len = u16::try_from(MAX_DATAGRAM_BYTES + 1).unwrap().to_be_bytes();
        let mut stream = vec![0, 1, b'k'];
        stream.extend(len);
        stream.extend([1, 2, 3]);
        assert_eq!(packets_of(&stream[..]), vec![b"k".to_vec()]);
        // The largest allowed is passed.
        let len = u16::try_from(MAX_DATAGRAM_BYTES).unwrap().to_be_bytes();
        let mut frame = len.to_vec();
        frame.extend(vec![7u8; MAX_DATAGRAM_BYTES]);
        assert_eq!(read_as_link(&[frame]), vec![vec![7u8; MAX_DATAGRAM_BYTES]]);
    }
}
