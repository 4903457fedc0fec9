//! Watchers: everyone who receives frames, of every kind, as sessions in one registry.
//!
//! Whatever its kind, a watcher is admitted the same way ([`Watchers::admit`]): a [`Slot`] is
//! reserved against `--max-viewers` (or the watcher is [`Refused`], counted and journalled by
//! [`Refused::record`]), the slot becomes a [`Membership`]
//! when the watcher joins (a JOIN line in the journal, an entry in [`Watchers`]), and the
//! membership ends with one LEAVE line carrying its kind, reason and [`Tally`] — also when it is
//! dropped without [`Membership::leave`] (reason `error`), so every JOIN has its LEAVE.
//!
//! Kinds:
//! * [`udp`]: seed-003 and SURV/1 viewers: registration over TCP, one JPEG datagram per frame,
//!   acks (`continue`/`end`); the batched fast path.
//! * [`stream`]: the driver for stream-oriented kinds (TCP, HTTP): the newest frame to each,
//!   frames it cannot take skipped and counted, a write deadline for one that stops reading.
//! * [`oak_tcp`]: OAK host programs reading the ABCDE-framed TCP stream (`--tcp-stream-port`).
//! * [`request`]: seed 001's apps behind NAT: a `Request` datagram, then every frame as one
//!   JPEG datagram from the same port, no acks, a TTL (`--request-port`).
//! * HTTP MJPEG clients (`crate::http`, kind [`WatcherKind::Http`]) are driven by [`stream`].
//! * [`webrtc`]: browsers and WebRTC players by WHEP (`POST /cam/<name>/whep`), all on one UDP
//!   port (`--webrtc-port`), the camera's one H.264 stream to each.
//! * [`forward`]: not a watcher but a push: a camera's H.264 as RTP to fixed addresses
//!   (`--forward`, each its own stream), from the camera's start to its end, never admitted
//!   or journalled.
//!
//! The registry also keeps, per live watcher, where its tally can be read while it is live
//! ([`TallySource`]), for `/status`; and the server counts refusals by [`RefusalCause`].
//!
//! To add a kind: see docs/ARCHITECTURE.md (a [`WatcherKind`] variant, a file that accepts the
//! watcher, reserves a slot, joins, serves, leaves).

pub mod forward;
pub mod oak_tcp;
pub mod request;
pub mod rtp_out;
pub mod rtsp;
pub mod stream;
pub mod udp;
pub mod webrtc;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use surv_proto::Form;
use tokio::time::Instant;

use crate::cameras::Camera;
use crate::capture::PictureDemand;
use crate::journal::{Leave, LeaveReason};
use crate::Server;

/// What kind of watcher a session serves; `as_str` is the journal's `form=` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatcherKind {
    /// Seed 003's viewer: bare ASCII port, raw JPEG datagrams, `continue`/`end`.
    Seed,
    /// surv-client: `SURV/1 <port>`, a reply line, sequence-numbered acks.
    Surv1,
    /// An OAK host program reading the ABCDE TCP stream ([`oak_tcp`]).
    OakTcp,
    /// Seed 001's app behind NAT: `Request` datagram, JPEG datagrams, no acks ([`request`]).
    Request,
    /// A browser or player reading `/stream.mjpg` (multipart/x-mixed-replace).
    Http,
    /// A player or NVR reading `rtsp://…` ([`rtsp`]).
    Rtsp,
    /// A browser or WebRTC player that came by WHEP ([`webrtc`]).
    Webrtc,
}

impl WatcherKind {
    /// Every kind, for counts by kind that show the kinds nobody uses too.
    pub const ALL: [WatcherKind; 5] = [
        WatcherKind::Seed,
        WatcherKind::Surv1,
        WatcherKind::Http,
        WatcherKind::Rtsp,
        WatcherKind::Webrtc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WatcherKind::Seed => Form::Seed.as_str(),
            WatcherKind::Surv1 => Form::V1.as_str(),
            WatcherKind::OakTcp => "oak-tcp",
            WatcherKind::Request => "request",
            WatcherKind::Http => "http",
            WatcherKind::Rtsp => "rtsp",
            WatcherKind::Webrtc => "webrtc",
        }
    }
}

impl WatcherKind {
    /// Whether a watcher of this kind is sent the camera's JPEG pictures, so that its
    /// membership keeps them coming ([`crate::capture::CaptureShared::want_pictures`]). An RTSP
    /// session may take H.264 (none needed) or `/mjpeg` (its session holds its own demand); a
    /// WebRTC peer takes H.264 only.
    pub fn wants_pictures(self) -> bool {
        match self {
            WatcherKind::Seed
            | WatcherKind::Surv1
            | WatcherKind::OakTcp
            | WatcherKind::Request
            | WatcherKind::Http => true,
            WatcherKind::Rtsp | WatcherKind::Webrtc => false,
        }
    }
}

impl From<Form> for WatcherKind {
    fn from(form: Form) -> WatcherKind {
        match form {
            Form::Seed => WatcherKind::Seed,
            Form::V1 => WatcherKind::Surv1,
        }
    }
}

/// Where a live watcher's tally is read from while it is live (for `/status`).
pub trait TallySource: Send + Sync {
    fn tally(&self) -> Tally;
}

/// A tally its watcher's task keeps up to date, for kinds whose tally lives in that task.
#[derive(Debug, Default)]
pub struct LiveTally(Mutex<Tally>);

impl LiveTally {
    pub fn set(&self, tally: &Tally) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(tally);
    }
}

impl TallySource for LiveTally {
    fn tally(&self) -> Tally {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl TallySource for udp::link::Link {
    fn tally(&self) -> Tally {
        self.state().tally.clone()
    }
}

/// The registry's view of a live watcher.
#[derive(Clone)]
pub struct WatcherInfo {
    pub peer: SocketAddr,
    pub kind: WatcherKind,
    /// The camera it watches.
    pub camera: String,
    pub joined: chrono::DateTime<chrono::Local>,
    /// Its tally so far, when its kind reports one while live.
    pub tally: Option<Arc<dyn TallySource>>,
}

impl WatcherInfo {
    /// What it has been sent and has skipped so far (zeros when its kind does not say).
    pub fn tally_now(&self) -> Tally {
        self.tally.as_ref().map(|t| t.tally()).unwrap_or_default()
    }
}

impl std::fmt::Debug for WatcherInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatcherInfo")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

/// Why a watcher was turned away, for the refusal counters by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// `--max-viewers` watchers are live.
    Full,
    /// What it sent is not a registration (or the connection failed while registering).
    Invalid,
    /// It did not finish registering in time.
    Timeout,
    /// Too many registrations in progress: it was the slowest.
    Crowded,
    /// The server could not serve it (a socket it could not open, …).
    ServerError,
    /// It did not present the access token (`--token`), or a wrong one.
    Unauthorized,
    /// Its IP address already has `--request-per-ip` apps watching.
    PerIp,
    /// It named a camera the server does not have.
    UnknownCamera,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 8] = [
        RefusalCause::Full,
        RefusalCause::Invalid,
        RefusalCause::Timeout,
        RefusalCause::Crowded,
        RefusalCause::ServerError,
        RefusalCause::Unauthorized,
        RefusalCause::PerIp,
        RefusalCause::UnknownCamera,
    ];

    /// The label in `/metrics` and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::Full => "full",
            RefusalCause::Invalid => "invalid",
            RefusalCause::Timeout => "timeout",
            RefusalCause::Crowded => "crowded",
            RefusalCause::ServerError => "server_error",
            RefusalCause::Unauthorized => "unauthorized",
            RefusalCause::PerIp => "per_ip",
            RefusalCause::UnknownCamera => "unknown_camera",
        }
    }
}

/// Refusals counted by cause.
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; RefusalCause::ALL.len()]);

impl Refusals {
    pub fn count(&self, cause: RefusalCause) {
        self.0[cause as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, cause: RefusalCause) -> u64 {
        self.0[cause as usize].load(Relaxed)
    }

    /// Watchers turned away, for any reason.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Relaxed)).sum()
    }
}

/// Every live watcher, and the count against `--max-viewers`.
pub struct Watchers {
    max: usize,
    live: DashMap<u64, WatcherInfo>,
    /// Slots reserved: live watchers plus those being admitted.
    slots: AtomicUsize,
    next_id: AtomicU64,
}

impl Watchers {
    pub fn new(max: usize) -> Watchers {
        Watchers {
            max,
            live: DashMap::new(),
            slots: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// The most watchers at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Watchers that have joined and not left.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A snapshot of the live watchers, by session id.
    pub fn list(&self) -> Vec<(u64, WatcherInfo)> {
        self.live
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }

    /// Live watchers of each kind, every kind listed.
    pub fn count_by_kind(&self) -> [(WatcherKind, usize); WatcherKind::ALL.len()] {
        let mut counts = WatcherKind::ALL.map(|k| (k, 0));
        for e in self.live.iter() {
            if let Some(c) = counts.iter_mut().find(|(k, _)| *k == e.value().kind) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Reserves a place for a watcher being admitted, or refuses it when `--max-viewers` are
    /// live: the one way in for every kind. The refusal is the caller's to
    /// [`record`](Refused::record) (with the kind it knows) and to tell the watcher where its
    /// form can carry words.
    pub fn admit(server: &Arc<Server>) -> Result<Slot, Refused> {
        let watchers = &server.watchers;
        if watchers
            .slots
            .fetch_update(Relaxed, Relaxed, |n| (n < watchers.max).then_some(n + 1))
            .is_err()
        {
            return Err(Refused::new(
                RefusalCause::Full,
                format!("server full ({} viewers)", watchers.max),
            ));
        }
        Ok(Slot {
            server: server.clone(),
            id: watchers.next_id.fetch_add(1, Relaxed),
        })
    }
}

/// A watcher turned away: why, as a cause (counted, a `/metrics` label) and in words (its
/// REFUSE line; the watcher's answer where its form has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub cause: RefusalCause,
    pub reason: String,
}

impl Refused {
    pub fn new(cause: RefusalCause, reason: impl Into<String>) -> Refused {
        Refused {
            cause,
            reason: reason.into(),
        }
    }

    /// Counts it by cause.
    pub fn count(&self, server: &Server) {
        server.stats.refusals.count(self.cause);
    }

    /// Counts it and writes its REFUSE line: every refusal of every kind goes through here
    /// (the Request hub, which rate-limits its lines, counts with [`Refused::count`]).
    pub fn record(&self, server: &Server, peer: SocketAddr, kind: Option<WatcherKind>) {
        self.count(server);
        server.journal.refuse(peer, kind, &self.reason);
    }
}

/// A reserved place; released when dropped unless it became a [`Membership`].
pub struct Slot {
    server: Arc<Server>,
    id: u64,
}

impl Slot {
    /// The session id the watcher will have (SURV/1 tells it before the JOIN).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The watcher joins: a JOIN line, an entry in the registry.
    pub fn join(self, kind: WatcherKind, peer: SocketAddr, camera: &Arc<Camera>) -> Membership {
        self.join_inner(kind, peer, camera, None)
    }

    /// Joins as [`Slot::join`], with where its tally can be read while it is live.
    pub fn join_reporting(
        self,
        kind: WatcherKind,
        peer: SocketAddr,
        camera: &Arc<Camera>,
        tally: Arc<dyn TallySource>,
    ) -> Membership {
        self.join_inner(kind, peer, camera, Some(tally))
    }

    fn join_inner(
        self,
        kind: WatcherKind,
        peer: SocketAddr,
        camera: &Arc<Camera>,
        tally: Option<Arc<dyn TallySource>>,
    ) -> Membership {
        let server = self.server.clone();
        let id = self.id;
        server.watchers.live.insert(
            id,
            WatcherInfo {
                peer,
                kind,
                camera: camera.name.clone(),
                joined: chrono::Local::now(),
                tally,
            },
        );
        server.stats.joins.fetch_add(1, Relaxed);
        server.journal.join(id, peer, kind, &camera.name);
        Membership {
            pictures: kind
                .wants_pictures()
                .then(|| camera.capture.want_pictures()),
            slot: Some(self),
            id,
            kind,
            peer,
            camera: camera.clone(),
            started: Instant::now(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.watchers.slots.fetch_sub(1, Relaxed);
    }
}

/// A joined watcher, until its LEAVE.
pub struct Membership {
    /// `None` once left.
    slot: Option<Slot>,
    pub id: u64,
    pub kind: WatcherKind,
    pub peer: SocketAddr,
    /// The camera it watches.
    pub camera: Arc<Camera>,
    started: Instant,
    /// Keeps the camera's JPEG pictures coming while it is a member, for kinds that watch them.
    pictures: Option<PictureDemand>,
}

impl Membership {
    /// The watcher leaves: one LEAVE line with why and what it was sent; the slot is freed.
    pub fn leave(mut self, reason: LeaveReason, tally: &Tally) {
        self.finish(reason, tally);
    }

    fn finish(&mut self, reason: LeaveReason, tally: &Tally) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        self.pictures = None;
        // Its camera ended under it: a reload removed or changed the camera.
        let reason = match reason {
            LeaveReason::Shutdown if self.camera.is_retired() => LeaveReason::Removed,
            other => other,
        };
        let server = &slot.server;
        let skipped = tally.skipped();
        server.stats.frames_skipped.fetch_add(skipped, Relaxed);
        server.watchers.live.remove(&self.id);
        server.stats.leaves.fetch_add(1, Relaxed);
        server.journal.leave(&Leave {
            session_id: self.id,
            viewer: self.peer,
            kind: self.kind,
            reason,
            duration: self.started.elapsed(),
            frames_sent: tally.frames_sent,
            bytes_sent: tally.bytes_sent,
            frames_skipped: skipped,
            camera: self.camera.name.clone(),
        });
    }
}

impl Drop for Membership {
    /// A session that ends without saying why (a panic, a forgotten path) still leaves.
    fn drop(&mut self) {
        self.finish(LeaveReason::Error, &Tally::default());
    }
}

/// Frames a watcher has seen published and sent, for the LEAVE line and the skip counters.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    first_seq: Option<u64>,
    last_seq: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
}

impl Tally {
    /// A frame was published while the watcher was there (sent to it or not).
    pub fn seen(&mut self, seq: u64) {
        self.first_seq.get_or_insert(seq);
        self.last_seq = self.last_seq.max(seq);
    }

    /// A frame of `bytes` went to the watcher.
    pub fn sent(&mut self, bytes: usize) {
        self.frames_sent += 1;
        self.bytes_sent = self.bytes_sent.saturating_add(bytes as u64);
    }

    /// `frames` counted as sent, `bytes` of them, never left after all (dropped while they
    /// waited for room): they count as skipped.
    pub fn withdraw(&mut self, frames: u64, bytes: usize) {
        self.frames_sent = self.frames_sent.saturating_sub(frames);
        self.bytes_sent = self.bytes_sent.saturating_sub(bytes as u64);
    }

    /// Frames published while the watcher was there that it was not sent.
    pub fn skipped(&self) -> u64 {
        self.first_seq.map_or(0, |first| {
            (self.last_seq - first)
                .saturating_add(1)
                .saturating_sub(self.frames_sent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_what_was_published_but_not_sent() {
        let mut t = Tally::default();
        assert_eq!(t.skipped(), 0);
        for seq in 10..20 {
            t.seen(seq);
            if seq % 2 == 0 {
                t.sent(100);
            }
        }
        assert_eq!((t.frames_sent, t.bytes_sent, t.skipped()), (5, 500, 5));
        t.seen(u64::MAX);
        assert_eq!(t.skipped(), u64::MAX - 10 + 1 - 5);
    }

    #[test]
    fn kinds_keep_the_journal_names_of_the_forms() {
        assert_eq!(WatcherKind::from(Form::Seed).as_str(), "seed");
        assert_eq!(WatcherKind::from(Form::V1).as_str(), "surv1");
        assert_eq!(WatcherKind::Http.as_str(), "http");
        assert_eq!(WatcherKind::Webrtc.as_str(), "webrtc");
    }

    #[test]
    fn refusals_are_counted_by_cause() {
        let r = Refusals::default();
        r.count(RefusalCause::Full);
        r.count(RefusalCause::Full);
        r.count(RefusalCause::Timeout);
        let counts: Vec<_> = RefusalCause::ALL.iter().map(|&c| r.get(c)).collect();
        assert_eq!(counts, [2, 0, 1, 0, 0, 0, 0, 0]);
    }
}
