//! The UDP data path: each frame to every session in batches over shared UDP sockets; the acks
//! come back through `acks.rs`, matched to their session by the viewer's address.
//!
//! A session's control (its TCP connection, timeouts, probes, the journal) stays in its own task
//! ([`super::session`]); what happens once per frame per viewer does not wake that task:
//!
//! * One fan-out thread waits for each new frame and, for every session whose ack window is
//!   open, queues the viewer's address; one `sendmmsg` per [`sys::SEND_BATCH`] viewers
//!   then sends the same shared bytes to all of them (no copy in user space). Viewers that
//!   asked for chunks (a SURV/1 `hello mtu=`) get the same bytes as chunks, one GSO message
//!   each in one more `sendmmsg` ([`super::chunks`]).
//! * One ack task per shared socket takes acks in with `recvmmsg` and settles them in the
//!   session's window, found by the sender's address; an ack that opens a full window sends the
//!   frame waiting there at once, and a chunked viewer's `nack` has the chunks it names sent
//!   again at once ([`repair`]).
//! * A session's task is woken only for what is rare: an `end`, a frame waiting on a full window
//!   (it probes or expires on the window's schedule), its timeout.
//!
//! Sessions share one socket per local address; a second session for a viewer address already
//! served (the same IP and port registered twice) gets a socket of its own, so that each socket
//! knows whose acks it receives; such an extra socket closes when its last session leaves.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acks::{ack_loop, drain, Reader, ACK_BATCHES_PER_FRAME};
use super::chunks::{parity_chunks, ChunkJob, ChunkSender, Chunks};
use super::link::{Attached, Link, LinkState};
use super::pacing::{self, Paced, PACE_TICK};
use super::window::Window;
use crate::cameras::Camera;
use crate::capture::{FrameRx, SharedFrame};
use crate::sys::{self, BatchReceiver, BatchSender};
use crate::watchers::Tally;
use crate::Server;

/// Consecutive failed sends after which a session gives up (reason `error`).
pub const MAX_SEND_ERRORS: u32 = 100;

/// Socket buffers asked for (the kernel caps them at `net.core.{w,r}mem_max`): a frame burst to
/// every viewer, and an ack from each, must not overflow them.
const SEND_BUFFER_BYTES: usize = 8 << 20;
const RECV_BUFFER_BYTES: usize = 8 << 20;

/// When a send would block, how long the fan-out waits for room, and how often, before the rest
/// of that frame's viewers skip it.
const SEND_WAIT: Duration = Duration::from_millis(5);
const SEND_WAITS: u32 = 4;

/// A chunked viewer's `nack` is answered for each of the frames last sent to it, this many.
pub(super) const REPAIR_FRAMES: usize = 4;

/// ... at most this many times per frame ...
pub(super) const MAX_REPAIRS: u8 = 2;

/// ... and only this long after the frame was sent: a frame repaired later would arrive after
/// newer ones have been shown (one repair round at a 40 ms round trip and 30 fps takes about
/// 90 ms; surv-client waits 250 ms at most).
pub(super) const REPAIR_FOR: Duration = Duration::from_millis(200);

/// Each chunk a `nack` names is sent this many times, back to back: a repair costs a round
/// trip, and a resent chunk lost again costs another, which on a 40 ms path is what pushes a
/// frame past its latency budget (at 3 % loss, 2 copies make that 0.09 % of repaired chunks
/// instead of 3 %). Repairs are the lost share of the stream, so this adds that share again.
/// A session its rate limits ([`super::rate`]) gets one copy: its losses are its queue's ...
pub(super) const REPAIR_COPIES: usize = 2;

/// ... one copy more when the `nack` names at least 1 in [`HEAVY_LOSS_ONE_IN`] of the
/// frame's chunks: at 10 % loss a 1080p frame lacks about 5 of its 50, and with 2 copies one
/// frame in 20 would still need a second round ...
pub(super) const HEAVY_LOSS_COPIES: usize = 3;
pub(super) const HEAVY_LOSS_ONE_IN: usize = 20;

/// ... and two more when it names at least 1 in [`HEAVIEST_LOSS_ONE_IN`]: with 3 copies at
/// 10 % loss, a 1080p frame's 5 or more repaired chunks still need a second round about once
/// in 200 frames, which is the p99 of a 40 ms path's latency (measured: 108–115 ms against the
/// goal's 107); with 4, about once in 2,000.
pub(super) const HEAVIEST_LOSS_COPIES: usize = 4;
pub(super) const HEAVIEST_LOSS_ONE_IN: usize = 10;

/// A frame sent to a chunked viewer, kept for repairs.
pub(crate) struct SentFrame {
    pub frame: SharedFrame,
    pub at: Instant,
    pub repairs: u8,
    /// The parity chunks it was coded with: its repairs' headers say the same.
    pub parity: u8,
}

/// The senders a path that sends one viewer its frame keeps: whole datagrams, and chunks.
#[derive(Default)]
pub(crate) struct Senders {
    pub whole: BatchSender,
    pub chunks: ChunkSender,
}

/// A UDP socket that sessions share, with the sessions it serves by viewer address.
pub(crate) struct SharedSocket {
    pub(super) udp: Arc<UdpSocket>,
    local_ip: IpAddr,
    pub(super) links: DashMap<SocketAddr, Arc<Link>>,
    /// Where acks are read into; held by whoever reads them ([`super::acks`]).
    pub(super) inbox: Mutex<BatchReceiver>,
    /// Chunked sessions on it: while there are any, its ack task waits for each ack.
    pub(super) chunked: AtomicUsize,
    /// Told when a session joins or turns out chunked: the ack task changes how it reads.
    pub(super) changed: Notify,
    /// Cancelled when this socket is closed: its ack task ends, and the descriptor closes with
    /// the last reference.
    pub(super) closed: CancellationToken,
    /// The list it is in, to leave it when closed.
    owner: std::sync::Weak<Mutex<Vec<Arc<SharedSocket>>>>,
    /// The newest frame of the camera its sessions watch.
    frames: FrameRx,
}

/// Why a viewer could not be put on the data path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    #[error("{0} viewers already watch from this IP (--max-viewers-per-ip)")]
    PerIp(usize),
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[from] io::Error),
}

/// Every shared socket of one camera's viewers.
#[derive(Default)]
pub struct DataPath {
    sockets: Arc<Mutex<Vec<Arc<SharedSocket>>>>,
    /// Told when a session joins: the fan-out, asleep while nobody is on the data path, wakes.
    joined: tokio::sync::Notify,
}

/// What became of one datagram (or one viewer's chunks of a frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Sent,
    /// The socket buffer stayed full: skipped, like a frame that came while the window was full.
    Skipped,
    Failed,
}

impl DataPath {
    fn sockets(&self) -> Vec<Arc<SharedSocket>> {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Viewers on the data path now, over every shared socket: once sessions have ended, this
    /// is the number of live sessions (a larger number means a session left without detaching).
    /// Cheap enough for the fan-out's every frame: the list is read in place, not copied.
    pub fn attached(&self) -> usize {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.iter().map(|s| s.links.len()).sum()
    }

    /// Chunked sessions on the data path now: while a socket has any, its acks are waited for
    /// (a `nack` is answered at once); otherwise the fan-out reads them before each frame.
    pub fn chunked_sessions(&self) -> usize {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.iter().map(|s| s.chunked.load(Relaxed)).sum()
    }

    /// Shared UDP sockets open (one per local address, more only while an address is registered
    /// twice at once).
    pub fn socket_count(&self) -> usize {
        self.sockets().len()
    }

    /// Joins a session to `camera`'s data path: frames to `viewer` will leave from `local_ip`.
    /// `key`: the session key its acks must carry; with one, no frame goes out before the
    /// viewer's `hello`. Refused when `max_viewers_per_ip` viewers of the viewer's IP are
    /// attached already, over every camera (this camera's counted under the same lock as the
    /// attaching; the others' just before, so that two attaches never hold each other's lock:
    /// registrations racing from one IP to several cameras may pass the bound by one each).
    pub(crate) fn attach(
        server: &Arc<Server>,
        camera: &Camera,
        local_ip: IpAddr,
        viewer: SocketAddr,
        key: Option<u64>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Attached, AttachError> {
        let new_link = |socket: &Arc<SharedSocket>| {
            Arc::new(Link {
                viewer,
                socket: socket.clone(),
                state: Mutex::new(LinkState {
                    window: Window::new(server.config.max_in_flight),
                    pending: None,
                    offered: None,
                    tally: Tally::default(),
                    last_heard: Instant::now(),
                    ended: false,
                    send_errors: 0,
                    key,
                    confirmed: key.is_none(),
                    chunk_bytes: None,
                    loss_permille: None,
                    path_kbps: None,
                    paced: None,
                    sent_chunked: std::collections::VecDeque::with_capacity(REPAIR_FRAMES),
                    rate: super::rate::Rate::default(),
                }),
                wake: Notify::new(),
            })
        };
        let elsewhere: usize = server
            .cameras
            .list()
            .iter()
            .filter(|c| !std::ptr::eq(&c.data, &camera.data))
            .map(|c| c.data.viewers_from(viewer.ip()))
            .sum();
        let data = &camera.data;
        let mut sockets = data.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let max = server.config.max_viewers_per_ip;
        let from_ip = elsewhere + count_from(&sockets, viewer.ip());
        if from_ip >= max {
            return Err(AttachError::PerIp(max));
        }
        for socket in sockets.iter().filter(|s| s.local_ip == local_ip) {
            if let dashmap::Entry::Vacant(e) = socket.links.entry(viewer) {
                let link = new_link(socket);
                e.insert(link.clone());
                socket.changed.notify_one();
                data.joined.notify_one();
                return Ok(Attached(link));
            }
        }
        let socket = Arc::new(SharedSocket::bind(
            local_ip,
            Arc::downgrade(&data.sockets),
            camera.frames.clone(),
        )?);
        tracing::debug!(local = ?socket.udp.local_addr().ok(), "new shared UDP socket");
        let link = new_link(&socket);
        socket.links.insert(viewer, link.clone());
        sockets.push(socket.clone());
        tracker.spawn(ack_loop(server.clone(), socket, shutdown.clone()));
        data.joined.notify_one();
        Ok(Attached(link))
    }

    /// Viewers of `ip` on this data path now.
    fn viewers_from(&self, ip: IpAddr) -> usize {
        count_from(&self.sockets.lock().unwrap_or_else(|p| p.into_inner()), ip)
    }

    /// Takes a session off the data path: its viewer's datagrams become foreign. Idempotent
    /// (dropping its [`Attached`] does it again, harmlessly). An extra socket (one opened for a
    /// viewer address registered twice) is closed when its last session leaves.
    pub(crate) fn detach(link: &Arc<Link>) {
        let socket = &link.socket;
        let removed = socket
            .links
            .remove_if(&link.viewer, |_, l| Arc::ptr_eq(l, link));
        if removed.is_some() && link.state().chunk_bytes.is_some() {
            socket.chunked.fetch_sub(1, Relaxed);
        }
        if !socket.links.is_empty() {
            return;
        }
        let Some(owner) = socket.owner.upgrade() else {
            return;
        };
        // Under the lock that attaching takes: no session joins it meanwhile.
        let mut sockets = owner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(at) = sockets.iter().position(|s| Arc::ptr_eq(s, socket)) else {
            return;
        };
        let first_of_its_ip = !sockets[..at].iter().any(|s| s.local_ip == socket.local_ip);
        if socket.links.is_empty() && !first_of_its_ip {
            sockets.remove(at);
            socket.closed.cancel();
            tracing::debug!(local = ?socket.udp.local_addr().ok(), "extra shared UDP socket closed");
        }
    }
}

/// Viewers of `ip` on `sockets`.
fn count_from(sockets: &[Arc<SharedSocket>], ip: IpAddr) -> usize {
    sockets
        .iter()
        .map(|s| s.links.iter().filter(|l| l.key().ip() == ip).count())
        .sum()
}

impl SharedSocket {
    fn bind(
        local_ip: IpAddr,
        owner: std::sync::Weak<Mutex<Vec<Arc<SharedSocket>>>>,
        frames: FrameRx,
    ) -> io::Result<SharedSocket> {
        let std = std::net::UdpSocket::bind((local_ip, 0))?;
        std.set_nonblocking(true)?;
        let fd = std.as_raw_fd();
        // Best effort: smaller buffers only mean more skipped frames under a burst.
        let _ = sys::set_buffer(fd, libc::SO_SNDBUF, SEND_BUFFER_BYTES);
        let _ = sys::set_buffer(fd, libc::SO_RCVBUF, RECV_BUFFER_BYTES);
        if local_ip.is_loopback() && local_ip.is_ipv4() {
            // Loopback's MTU (64 KiB) takes any datagram whole: with "don't fragment" set the
            // kernel skips drawing a random IP ID for each one (about a tenth of the server's
            // CPU at 2000 viewers). Other interfaces keep fragmenting large frames.
            let _ = sys::set_dont_fragment(fd);
        }
        Ok(SharedSocket {
            udp: Arc::new(std),
            local_ip,
            links: DashMap::new(),
            inbox: Mutex::default(),
            chunked: AtomicUsize::new(0),
            changed: Notify::new(),
            closed: CancellationToken::new(),
            owner,
            frames,
        })
    }

    /// Sends `payload` to each of `dests` and says what became of each, in order.
    fn send_all(
        &self,
        fanout: &mut BatchSender,
        payload: &[u8],
        dests: &[SocketAddr],
        out: &mut Vec<Outcome>,
    ) {
        out.clear();
        let fd = self.udp.as_raw_fd();
        let mut waits = 0;
        while out.len() < dests.len() {
            let rest = &dests[out.len()..];
            let blocked = match fanout.send(fd, payload, rest) {
                Ok(n) if n > 0 => {
                    out.extend(std::iter::repeat_n(Outcome::Sent, n));
                    false
                }
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => {
                    // This destination failed (the kernel stops a batch at the first error);
                    // the others still get the frame.
                    tracing::trace!(viewer = %rest[0], error = %e, "sending a frame failed");
                    out.push(Outcome::Failed);
                    false
                }
            };
            if blocked {
                if waits == SEND_WAITS {
                    out.extend(std::iter::repeat_n(Outcome::Skipped, rest.len()));
                } else {
                    waits += 1;
                    sys::wait_writable(fd, SEND_WAIT);
                }
            }
        }
    }
}

/// Books one datagram's outcome in the session's state and the server's counters.
fn record(
    server: &Server,
    link: &Link,
    st: &mut LinkState,
    frame: &SharedFrame,
    (outcome, parity): (Outcome, u8),
    now: Instant,
) {
    match outcome {
        Outcome::Sent => {
            let bytes = frame.payload_bytes() as u64;
            st.window.on_send(frame.seq, now);
            st.tally.frames_sent += 1;
            st.tally.bytes_sent += bytes;
            st.send_errors = 0;
            if st.paced_for(frame.seq).is_some() {
                server.stats.frames_paced.fetch_add(1, Relaxed);
            }
            if st.chunk_bytes.is_some() {
                st.rate.on_sent(frame.seq, bytes, now);
                if st.sent_chunked.len() == REPAIR_FRAMES {
                    st.sent_chunked.pop_front();
                }
                st.sent_chunked.push_back(SentFrame {
                    frame: frame.clone(),
                    at: now,
                    repairs: 0,
                    parity,
                });
            }
            tracing::trace!(viewer = %link.viewer, seq = frame.seq, bytes, "sent");
        }
        Outcome::Skipped | Outcome::Failed if st.paced_for(frame.seq).is_some() => {
            // Its first chunks did not go: the frame is not paced out either.
            st.paced = None;
            if outcome == Outcome::Failed {
                send_failed(server, link, st);
            }
        }
        Outcome::Skipped => {}
        Outcome::Failed => send_failed(server, link, st),
    }
}

/// Books a failed send to a session; the session task hears of the first and of the last
/// before it gives up.
fn send_failed(server: &Server, link: &Link, st: &mut LinkState) {
    server.stats.send_errors.fetch_add(1, Relaxed);
    st.send_errors += 1;
    if st.send_errors == 1 || st.send_errors >= MAX_SEND_ERRORS {
        link.wake.notify_one();
    }
}

/// Sends one frame to one session now (the rare path: a join, an ack or a timer opened its
/// window). The caller has taken the frame out of `pending` and checked the window.
pub(crate) fn send_one(server: &Server, link: &Link, frame: &SharedFrame, senders: &mut Senders) {
    let Some(datagram) = frame.jpeg() else {
        return;
    };
    let job = first_job(link, &link.state(), datagram.len());
    let jobs = job.as_ref().map(std::slice::from_ref);
    let outcome = match jobs {
        Some(jobs) => send_chunks(senders, link, frame.seq, datagram, jobs),
        None => {
            let mut outcome = Vec::with_capacity(1);
            link.socket
                .send_all(&mut senders.whole, datagram, &[link.viewer], &mut outcome);
            outcome.first().copied().unwrap_or(Outcome::Skipped)
        }
    };
    book(server, &[link], &[outcome], jobs, frame, datagram.len());
}

/// What a chunked session is sent of a frame: `chunks`, the frame coded with `parity` parity
/// chunks; `None` for a whole-datagram session.
fn chunk_job(link: &Link, st: &LinkState, chunks: Chunks, parity: u8) -> Option<ChunkJob> {
    Some(ChunkJob {
        dest: link.viewer,
        key: st.key.unwrap_or_default(),
        chunk_bytes: st.chunk_bytes?,
        chunks,
        parity,
    })
}

/// A chunked session's first sending of a frame of `frame_bytes`, with the parity its reported
/// loss calls for; `None` for a whole-datagram session.
fn first_job(link: &Link, st: &LinkState, frame_bytes: usize) -> Option<ChunkJob> {
    let k = surv_proto::chunk::data_chunks(frame_bytes, st.chunk_bytes?).unwrap_or(0);
    let parity = parity_chunks(k, st.loss_permille, st.rate.limit().is_some());
    chunk_job(link, st, Chunks::All, parity)
}

/// Sends one viewer its chunks of frame `seq` now, once per job (the rare path): `Sent` if any
/// of them went, else what became of the first.
fn send_chunks(
    senders: &mut Senders,
    link: &Link,
    seq: u64,
    datagram: &[u8],
    jobs: &[ChunkJob],
) -> Outcome {
    let mut outcome = Vec::with_capacity(jobs.len());
    senders.chunks.send(
        link.socket.udp.as_raw_fd(),
        seq,
        datagram,
        jobs,
        &mut outcome,
        SEND_WAITS,
        SEND_WAIT,
    );
    if outcome.contains(&Outcome::Sent) {
        Outcome::Sent
    } else {
        outcome.first().copied().unwrap_or(Outcome::Skipped)
    }
}

/// Sends a chunked viewer the chunks of `frame` that its `nack` named (`missing`), flagged as
/// resent, under the frame's `parity` count: the rare path, from the ack task. The caller
/// checked the frame and the bitmap.
pub(crate) fn repair(
    server: &Server,
    link: &Link,
    frame: &SharedFrame,
    (missing, parity): (u128, u8),
    senders: &mut Senders,
) {
    let Some(datagram) = frame.jpeg() else {
        return;
    };
    let (job, limited, path_kbps) = {
        let st = link.state();
        (
            chunk_job(link, &st, Chunks::Missing(missing), parity),
            st.rate.limit().is_some(),
            st.path_kbps,
        )
    };
    let Some(job) = job else {
        return;
    };
    let Some(chunks) = surv_proto::chunk::data_chunks(datagram.len(), job.chunk_bytes) else {
        return;
    };
    let named = missing.count_ones() as usize;
    let copies = if limited || pacing::paces(pacing::shape(&job, chunks), path_kbps) {
        // A congested path lost them to its queue, a paced one cuts bursts: copies would only
        // fill them more.
        1
    } else if named * HEAVIEST_LOSS_ONE_IN >= chunks {
        HEAVIEST_LOSS_COPIES
    } else if named * HEAVY_LOSS_ONE_IN >= chunks {
        HEAVY_LOSS_COPIES
    } else {
        REPAIR_COPIES
    };
    let jobs: [ChunkJob; HEAVIEST_LOSS_COPIES] = std::array::from_fn(|_| job.clone());
    if send_chunks(senders, link, frame.seq, datagram, &jobs[..copies]) == Outcome::Sent {
        server
            .stats
            .chunks_resent
            .fetch_add(u64::from(missing.count_ones()), Relaxed);
        tracing::trace!(viewer = %link.viewer, seq = frame.seq, chunks = missing.count_ones(), "repaired");
    }
}

/// Offers `frame` to a session: taken now if its window is open (returned for sending),
/// otherwise kept as the frame waiting there (replacing an older one, which is skipped). A frame
/// without a JPEG is not offered: UDP viewers are sent JPEG datagrams only.
fn offer(link: &Link, st: &mut LinkState, frame: &SharedFrame, now: Instant) -> bool {
    if frame.jpeg().is_none() {
        return false;
    }
    if !st.confirmed || st.offered.is_some_and(|seq| frame.seq <= seq) {
        // Before its `hello`, a viewer is sent nothing and misses nothing: its stream begins
        // with the frame current at the `hello`.
        return false;
    }
    st.offered = Some(frame.seq);
    st.tally.seen(frame.seq);
    if st.chunk_bytes.is_some() && !st.rate.admit(frame.payload_bytes() as u64, now) {
        // Its path carries less than the stream: this frame is skipped for it, as a frame the
        // window skips is (a whole one later beats every one cut down in a router's queue).
        return false;
    }
    if st.window.can_send(now) {
        st.pending = None;
        true
    } else {
        if st.pending.replace(frame.clone()).is_none() {
            // The session task keeps the window's schedule (probes, expiry) while a frame waits.
            link.wake.notify_one();
        }
        false
    }
}

/// The viewer said `hello` with its key: frames may go, starting with the current one,
/// returned for sending (or left waiting on the window). `chunk_bytes`: it asked for chunks
/// (and this server sends them), of this size. The first hello fixes the session's form.
pub(super) fn confirm(
    link: &Link,
    st: &mut LinkState,
    chunk_bytes: Option<usize>,
) -> Option<SharedFrame> {
    if st.confirmed {
        return None;
    }
    st.confirmed = true;
    st.chunk_bytes = chunk_bytes;
    if chunk_bytes.is_some() {
        // Its nacks want answers at once: the socket's ack task waits for acks from now on.
        link.socket.chunked.fetch_add(1, Relaxed);
        link.socket.changed.notify_one();
    }
    let frame = link.socket.frames.borrow().clone()?;
    offer(link, st, &frame, Instant::now()).then_some(frame)
}

/// Sends the frame current at join, or leaves it waiting.
pub(crate) fn on_join(server: &Server, link: &Link) {
    let Some(frame) = link.socket.frames.borrow().clone() else {
        return;
    };
    let take = offer(link, &mut link.state(), &frame, Instant::now());
    if take {
        send_one(server, link, &frame, &mut Senders::default());
    }
}

/// Sends every new frame of `camera` to every session of it with room, until `shutdown`.
pub(crate) async fn fan_out_loop(
    server: Arc<Server>,
    camera: Arc<Camera>,
    shutdown: CancellationToken,
) {
    let mut frames = camera.frames.clone();
    let mut sender = Senders::default();
    let mut batch = Batch::default();
    // While a frame leaves paced to some session: when its next chunks are due.
    let mut next_tick: Option<Instant> = None;
    let (mut last_frame, mut last_interval): (Option<Instant>, Option<Duration>) = (None, None);
    loop {
        if camera.data.attached() == 0 {
            // Nobody on the data path: sleep until a session joins rather than wake this thread
            // for every frame (a wake-up costs more than a passed-through frame's whole ingest).
            // A join between the check and the wait leaves a permit, so it is not missed; the
            // frame current at a join is sent by the join itself (and not again from here).
            for link in batch.paced.drain(..) {
                link.state().paced = None;
            }
            next_tick = None;
            (last_frame, last_interval) = (None, None);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = camera.data.joined.notified() => continue,
            }
        }
        let tick = async {
            match next_tick {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tick => pace(&server, &mut batch, &mut sender, Some(Instant::now())),
            res = frames.changed() => {
                if res.is_err() {
                    return;
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(frame) = frame {
                    // What is left of the last frame still leaving paced goes first, at once.
                    pace(&server, &mut batch, &mut sender, None);
                    let now = Instant::now();
                    let interval = last_frame.map(|t| now - t);
                    let budget = pacing::budget(last_interval, interval);
                    (last_frame, last_interval) = (Some(now), interval);
                    fan_out(&server, &camera.data, &frame, (&mut sender, &mut batch), budget);
                }
            }
        }
        let now = Instant::now();
        next_tick = match next_tick {
            _ if batch.paced.is_empty() => None,
            Some(at) if at > now => Some(at),
            _ => Some(now + PACE_TICK),
        };
    }
}

/// Runs [`fan_out_loop`] on a thread of its own, so that a frame's `sendmmsg` calls to every
/// viewer never hold up the runtime's workers (registrations, acks, sessions).
pub(crate) fn spawn_fanout_thread(
    server: Arc<Server>,
    camera: Arc<Camera>,
    shutdown: CancellationToken,
) -> io::Result<std::thread::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("fanout-{}", camera.name))
        .spawn(move || handle.block_on(fan_out_loop(server, camera, shutdown)))
}

/// Scratch space for one frame's fan-out, reused.
#[derive(Default)]
struct Batch {
    links: Vec<Arc<Link>>,
    dests: Vec<SocketAddr>,
    outcomes: Vec<Outcome>,
    /// The viewers that get chunks, and theirs.
    chunked: Vec<Arc<Link>>,
    jobs: Vec<ChunkJob>,
    /// The sessions with a frame leaving paced, kept from tick to tick until it is out ...
    paced: Vec<Arc<Link>>,
    /// ... and those with chunks due this tick: their frame and what they are sent of it.
    due: Vec<(Arc<Link>, SharedFrame, ChunkJob)>,
}

/// Sends `frame` to every session whose window is open, one `sendmmsg` per batch of viewers;
/// to a chunked session whose path is slow enough, its first chunks, the rest paced over at
/// most `budget` ([`pace`]).
fn fan_out(
    server: &Server,
    data: &DataPath,
    frame: &SharedFrame,
    (senders, batch): (&mut Senders, &mut Batch),
    budget: Duration,
) {
    let Some(datagram) = frame.jpeg() else {
        return;
    };
    for socket in data.sockets() {
        if socket.chunked.load(Relaxed) == 0 {
            // The acks that came since the last frame (see `acks`): windows opened, ends seen.
            drain(
                server,
                &socket,
                Reader::Fanout,
                senders,
                ACK_BATCHES_PER_FRAME,
            );
        }
        let now = Instant::now();
        batch.links.clear();
        batch.dests.clear();
        batch.chunked.clear();
        batch.jobs.clear();
        for entry in socket.links.iter() {
            let link = entry.value();
            let mut st = link.state();
            if offer(link, &mut st, frame, now) {
                match first_job(link, &st, datagram.len()) {
                    Some(mut job) => {
                        if let Some(first) = start_pacing(&mut st, frame, &job, budget, now) {
                            // The last frame's were all sent before this one: no session is
                            // on the list twice.
                            job.chunks = Chunks::Part(first);
                            batch.paced.push(link.clone());
                        }
                        batch.jobs.push(job);
                        batch.chunked.push(link.clone());
                    }
                    None => {
                        batch.links.push(link.clone());
                        batch.dests.push(link.viewer);
                    }
                }
            }
        }
        if !batch.jobs.is_empty() {
            senders.chunks.send(
                socket.udp.as_raw_fd(),
                frame.seq,
                datagram,
                &batch.jobs,
                &mut batch.outcomes,
                SEND_WAITS,
                SEND_WAIT,
            );
            book(
                server,
                &batch.chunked,
                &batch.outcomes,
                Some(&batch.jobs),
                frame,
                datagram.len(),
            );
        }
        if batch.dests.is_empty() {
            continue;
        }
        socket.send_all(
            &mut senders.whole,
            datagram,
            &batch.dests,
            &mut batch.outcomes,
        );
        book(
            server,
            &batch.links,
            &batch.outcomes,
            None,
            frame,
            datagram.len(),
        );
    }
}

/// Starts pacing `frame` to a chunked session whose path its viewer reported slow enough:
/// the chunks to send at once. `None`: the frame goes in one burst.
fn start_pacing(
    st: &mut LinkState,
    frame: &SharedFrame,
    job: &ChunkJob,
    budget: Duration,
    now: Instant,
) -> Option<u128> {
    let k = surv_proto::chunk::data_chunks(frame.jpeg()?.len(), job.chunk_bytes)?;
    let shape = pacing::shape(job, k);
    let mut paced = Paced::new(frame.clone(), job.clone(), shape, st.path_kbps, budget, now)?;
    let first = paced.take_due(Some(now));
    st.paced = Some(paced);
    Some(first)
}

/// Sends each paced session the chunks of its frame that came due by `now` (`None`: all that
/// are left), one `sendmmsg` per socket for all of them, and forgets the sessions whose frame
/// is out, abandoned (a send failed: its viewer asks for the rest) or that left the data path.
fn pace(server: &Server, batch: &mut Batch, senders: &mut Senders, now: Option<Instant>) {
    let Batch {
        paced,
        due,
        jobs,
        outcomes,
        ..
    } = batch;
    due.clear();
    jobs.clear();
    paced.retain(|link| {
        let attached = link
            .socket
            .links
            .get(&link.viewer)
            .is_some_and(|l| Arc::ptr_eq(l.value(), link));
        let mut st = link.state();
        let live = attached && !st.ended;
        let Some(p) = st.paced.as_mut().filter(|_| live) else {
            st.paced = None;
            return false;
        };
        let bits = p.take_due(now);
        if bits != 0 {
            due.push((link.clone(), p.frame.clone(), p.part(bits)));
        }
        true
    });
    // Every paced session has the frame last sent (the rest of an older one went before it):
    // in practice one group per socket.
    due.sort_by_key(|(link, frame, _)| (Arc::as_ptr(&link.socket) as usize, frame.seq));
    jobs.extend(due.iter().map(|(_, _, job)| job.clone()));
    let mut at = 0;
    while at < due.len() {
        let (link, frame, _) = &due[at];
        let end = at
            + due[at..]
                .iter()
                .take_while(|(l, f, _)| Arc::ptr_eq(&l.socket, &link.socket) && f.seq == frame.seq)
                .count();
        let Some(datagram) = frame.jpeg() else {
            at = end;
            continue;
        };
        senders.chunks.send(
            link.socket.udp.as_raw_fd(),
            frame.seq,
            datagram,
            &jobs[at..end],
            outcomes,
            SEND_WAITS,
            SEND_WAIT,
        );
        for ((link, frame, _), &outcome) in due[at..end].iter().zip(outcomes.iter()) {
            let mut st = link.state();
            if outcome == Outcome::Failed {
                send_failed(server, link, &mut st);
            }
            if st
                .paced_for(frame.seq)
                .is_some_and(|p| outcome != Outcome::Sent || p.done())
            {
                st.paced = None;
            }
        }
        at = end;
    }
    due.clear();
    paced.retain(|link| link.state().paced.is_some());
}

/// Records each viewer's outcome of one frame's send, and the server's totals.
fn book<L: std::ops::Deref<Target = Link>>(
    server: &Server,
    links: &[L],
    outcomes: &[Outcome],
    jobs: Option<&[ChunkJob]>,
    frame: &SharedFrame,
    bytes: usize,
) {
    let now = Instant::now();
    let (mut sent, mut parity_sent) = (0u64, 0u64);
    for (i, (link, &outcome)) in links.iter().zip(outcomes).enumerate() {
        sent += u64::from(outcome == Outcome::Sent);
        let parity = jobs.and_then(|j| j.get(i)).map_or(0, |j| j.parity);
        parity_sent += u64::from(parity) * u64::from(outcome == Outcome::Sent);
        record(
            server,
            link,
            &mut link.state(),
            frame,
            (outcome, parity),
            now,
        );
    }
    server.stats.frames_sent.fetch_add(sent, Relaxed);
    server
        .stats
        .parity_chunks_sent
        .fetch_add(parity_sent, Relaxed);
    server
        .stats
        .bytes_sent
        .fetch_add(sent * bytes as u64, Relaxed);
    tracing::trace!(seq = frame.seq, viewers = sent, "frame sent");
}
