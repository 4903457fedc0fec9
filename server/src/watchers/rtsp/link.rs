//! An RTSP connection's write side, and each camera's one writer for its H.264 sessions.
//!
//! ```text
//!  camera's H.264 feed ──broadcast──▶ camera's writer (one task) ──try writev / sendmsg──▶ link 1 … link N
//!                                     a unit's packets stamped and offered to each link in turn
//!  connection's task ──replies, sender reports, the cached GOP, what a send left──▶ its link
//! ```
//!
//! Every byte a connection sends goes through its [`Link`]: a write is tried without waiting,
//! and what the socket does not take is kept (`pending`) and goes before anything written
//! after it; the connection's task is woken to finish it. So a reply or a sender report never
//! lands inside an interleaved packet, whoever wrote the packet. An H.264 session over UDP
//! goes the same way through the server's shared RTP socket: the datagrams that socket has no
//! room for wait in the link (`datagrams`), in order, for the connection's task or the next
//! frame's offer, whichever finds room first.
//!
//! An H.264 session starts on its connection's task (the cached GOP, at the player's pace)
//! and passes to its camera's writer at the first unit the writer finds right after the last
//! one sent (`last_seq + 1`): both compare and send under the link's lock, so each unit goes
//! out once and in order, by whichever comes first; from the writer's first, the task stops
//! reading the feed. A hundred players of a camera then cost one task's wake-up a frame, not a
//! hundred. A player behind (more than half a second of frames, or a megabyte, waiting in the
//! link) skips to the next keyframe, counted, as on its own task; the others do not wait for
//! it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, Notify};
use tokio::time::{timeout_at, Instant};

use super::{count_sent, Shared};
use crate::cameras::Camera;
use crate::capture::h264::{H264Feed, H264Unit};
use crate::journal::LeaveReason;
use crate::rtp::{RtpFrame, Stamp};
use crate::watchers::rtp_out::{drain_udp, Drained, RtpOut, TryWriteVectored};
use crate::watchers::{LiveTally, Tally};

/// At most this many iovecs go to one `writev` (Linux's `IOV_MAX`); the rest of a larger
/// frame waits in `pending`.
const IOV_MAX: usize = 1024;
/// A session with this much waiting (besides the kernel's send buffer) is behind, whatever
/// the frame count: what one slow player can hold.
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Datagrams sent from a link's queue under one hold of its lock: the camera's writer waits
/// for that lock.
const DRAIN_AT_ONCE: usize = 64;

/// A connection's write side.
pub(super) struct Link {
    write: OwnedWriteHalf,
    state: Mutex<LinkState>,
    /// Notified when `pending` or `datagrams` gets something to finish, or the link breaks:
    /// the connection's task finishes the write ([`Link::flush`]) or ends.
    pub wake: Notify,
}

#[derive(Default)]
struct LinkState {
    /// Bytes the socket has not taken yet: they go before anything else.
    pending: BytesMut,
    /// An H.264 session over UDP: datagrams the shared socket had no room for yet.
    datagrams: Datagrams,
    /// Frames (whole or in part) added to the H.264 session's queue (`pending` over TCP,
    /// `datagrams` over UDP) since it was last empty.
    pending_frames: usize,
    /// A write failed: nothing more is written, the connection ends.
    broken: bool,
    /// The H.264 session's sending, from its PLAY on.
    h264: Option<H264Send>,
}

/// What an H.264 session sends, and has sent.
pub(super) struct H264Send {
    pub stamp: Stamp,
    route: Route,
    out: RtpOut,
    pub sent: Sent,
    /// The newest unit sent (or skipped after the writer took the session).
    last_seq: Option<u64>,
    /// The camera's writer sends this session's units.
    by_writer: bool,
    /// PAUSEd: neither sends.
    paused: bool,
    /// Behind: units are skipped until a keyframe.
    wait_key: bool,
    lag_limit: usize,
    feed: Arc<H264Feed>,
}

/// An H.264 session's datagrams that the shared UDP socket had no room for, in order.
#[derive(Default)]
struct Datagrams {
    queue: VecDeque<Bytes>,
    /// Their bytes.
    bytes: usize,
    /// Sends that lost a datagram to a socket error, not yet counted in the server's
    /// `send_errors` ([`Link::take_send_errors`]).
    send_errors: u64,
}

impl Datagrams {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Frames with a packet still waiting: each frame's last packet carries RTP's marker bit
    /// and datagrams leave in order, so a frame waits (whole or in part) while its last does.
    fn frames(&self) -> usize {
        self.queue
            .iter()
            .filter(|d| d.get(1).is_some_and(|b| b & 0x80 != 0))
            .count()
    }

    /// Sends `frame` under the session's headers, behind what waits ([`RtpOut::try_send_udp`]);
    /// its bytes of RTP.
    fn send(
        &mut self,
        out: &mut RtpOut,
        (socket, dest): (&UdpSocket, SocketAddr),
        stamp: &mut Stamp,
        frame: &RtpFrame,
    ) -> usize {
        let before = self.queue.len();
        let sent = out.try_send_udp(socket, dest, stamp, frame, &mut self.queue);
        self.bytes += self.queue.range(before..).map(Bytes::len).sum::<usize>();
        if sent.failed > 0 {
            self.send_errors += 1;
        }
        sent.bytes
    }

    /// Sends what waits, as far as the socket takes it now, [`DRAIN_AT_ONCE`] at most.
    fn drain(&mut self, (socket, dest): (&UdpSocket, SocketAddr)) -> Drained {
        let drained = drain_udp(socket, dest, &mut self.queue, DRAIN_AT_ONCE);
        self.bytes -= drained.bytes;
        if drained.failed > 0 {
            self.send_errors += 1;
        }
        drained
    }

    /// The session ended: nothing to send them to.
    fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// The bytes waiting in an H.264 session's own queue (`datagrams` over UDP, `pending` over
/// TCP), `None` when it is empty: what its lag limit counts.
fn media_waiting(udp: bool, pending: &BytesMut, datagrams: &Datagrams) -> Option<usize> {
    match udp {
        true if !datagrams.is_empty() => Some(datagrams.bytes),
        false if !pending.is_empty() => Some(pending.len()),
        _ => None,
    }
}

/// Where an H.264 session's packets go.
pub(super) enum Route {
    /// Interleaved on the connection, on this channel.
    Tcp(u8),
    /// Datagrams from the shared RTP socket to the player's port.
    Udp {
        socket: Arc<UdpSocket>,
        dest: SocketAddr,
    },
}

impl Route {
    /// The shared socket and the player's address, over UDP.
    fn udp(&self) -> Option<(&Arc<UdpSocket>, SocketAddr)> {
        match self {
            Route::Udp { socket, dest } => Some((socket, *dest)),
            Route::Tcp(_) => None,
        }
    }
}

/// What a session has sent: its sender reports, its LEAVE, `/status`.
#[derive(Default)]
pub(super) struct Sent {
    pub tally: Tally,
    pub live: Arc<LiveTally>,
    pub packets: u32,
    pub octets: u32,
    /// The newest frame's RTP timestamp (the session's) and capture time.
    pub last: Option<(u32, u64)>,
}

impl Sent {
    /// `frame` (`bytes` of RTP) went out under `stamp`, captured at `capture_unix_us`.
    pub fn frame(&mut self, stamp: &Stamp, frame: &RtpFrame, bytes: usize, capture_unix_us: u64) {
        self.last = Some((stamp.timestamp(frame.rtp_ts), capture_unix_us));
        self.packets = self.packets.wrapping_add(frame.packets.len() as u32);
        self.octets = self.octets.wrapping_add(bytes as u32);
        self.tally.sent(bytes);
        self.live.set(&self.tally);
    }

    /// `frames` (`packets`, `bytes` of RTP) counted by [`Sent::frame`] were dropped before
    /// they left: the sender reports and the tally no longer count them.
    fn withdraw(&mut self, frames: usize, packets: usize, bytes: usize) {
        self.packets = self.packets.wrapping_sub(packets as u32);
        self.octets = self.octets.wrapping_sub(bytes as u32);
        self.tally.withdraw(frames as u64, bytes);
        self.live.set(&self.tally);
    }
}

/// Who offers a unit to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum By {
    /// The connection's own task (the GOP, until the writer takes over).
    Session,
    Writer,
}

/// What an offer did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offered {
    /// Written, or queued behind what was: its bytes of RTP and packets.
    Sent { bytes: usize, packets: usize },
    /// Not sent: the session is behind, or waits for a keyframe (counted in its tally).
    Skipped,
    /// Not this one's to send: the writer has the session (to its task), or the session's task
    /// has not caught up yet (to the writer), or it is paused or not H.264.
    NotMine,
    /// Sent already.
    Already,
    /// The connection failed.
    Broken,
}

impl Link {
    pub fn new(write: OwnedWriteHalf) -> Link {
        Link {
            write,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the H.264 session's sending (its first PLAY).
    pub fn start_h264(
        &self,
        stamp: Stamp,
        route: Route,
        live: Arc<LiveTally>,
        feed: Arc<H264Feed>,
        fps: u32,
    ) {
        self.state().h264 = Some(H264Send {
            stamp,
            route,
            out: RtpOut::default(),
            sent: Sent {
                live,
                ..Sent::default()
            },
            last_seq: None,
            by_writer: false,
            paused: false,
            wait_key: false,
            lag_limit: crate::capture::h264::lag_limit(fps),
            feed,
        });
    }

    /// PAUSE or TEARDOWN (`true`: the writer lets go; the session's task takes it back at PLAY)
    /// or PLAY. Pausing drops the datagrams still waiting for room on the shared socket: they
    /// would reach the player after the reply (PLAY starts again at a keyframe). Bytes waiting
    /// on TCP stay: the reply goes behind them on the same stream.
    pub fn pause_h264(&self, paused: bool) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(h) = state.h264.as_mut() else {
            return;
        };
        h.paused = paused;
        h.by_writer = false;
        if paused && h.route.udp().is_some() {
            // A frame partly sent counts as not sent: the player can't show it.
            let datagrams = &mut state.datagrams;
            h.sent
                .withdraw(datagrams.frames(), datagrams.queue.len(), datagrams.bytes);
            datagrams.clear();
            state.pending_frames = 0;
        }
    }

    /// Reads the H.264 session's sending state.
    pub fn with_h264<R>(&self, f: impl FnOnce(&H264Send) -> R) -> Option<R> {
        self.state().h264.as_ref().map(f)
    }

    /// Ends the H.264 session's sending: what it sent.
    pub fn end_h264(&self) -> Option<Tally> {
        self.state().h264.take().map(|h| h.sent.tally)
    }

    /// Offers the H.264 session `unit` (its packets `frame`): sent when it is `by`'s to send
    /// (see the module's doc), without waiting; what the socket does not take waits in
    /// `pending` (TCP) or `datagrams` (UDP, which each offer first tries to send on) and the
    /// connection's task is woken to finish it.
    pub fn offer(&self, unit: &H264Unit, frame: &RtpFrame, by: By) -> Offered {
        let mut state = self.state();
        let LinkState {
            pending,
            datagrams,
            pending_frames,
            broken,
            h264,
        } = &mut *state;
        if *broken {
            return Offered::Broken;
        }
        let Some(h) = h264.as_mut().filter(|h| !h.paused) else {
            return Offered::NotMine;
        };
        match by {
            By::Session if h.by_writer => return Offered::NotMine,
            By::Session => {}
            By::Writer if !h.by_writer => {
                if h.last_seq.map(|s| s + 1) != Some(unit.seq) {
                    return Offered::NotMine;
                }
                h.by_writer = true;
            }
            By::Writer => {}
        }
        if h.last_seq.is_some_and(|s| unit.seq <= s) {
            return Offered::Already;
        }
        h.last_seq = Some(unit.seq);
        h.sent.tally.seen(unit.seq);
        if h.wait_key {
            if !frame.keyframe {
                return Offered::Skipped;
            }
            h.wait_key = false;
        }
        let udp = h.route.udp();
        if let Some((socket, dest)) = udp.filter(|_| !datagrams.is_empty()) {
            // What waits goes first, as far as the socket takes it now (also while the
            // connection's task waits on its TCP side).
            datagrams.drain((socket, dest));
            if datagrams.is_empty() {
                *pending_frames = 0;
            }
        }
        let waiting = media_waiting(udp.is_some(), pending, datagrams);
        let was_empty = waiting.is_none();
        if waiting.is_some_and(|bytes| *pending_frames >= h.lag_limit || bytes >= MAX_PENDING_BYTES)
        {
            // Behind: what waits goes out, then the next keyframe.
            h.wait_key = true;
            h.feed.want_keyframe();
            return Offered::Skipped;
        }
        let bytes = match &h.route {
            Route::Tcp(channel) => {
                let (iovs, bytes) = h.out.interleaved(*channel, &mut h.stamp, frame);
                if put(&self.write, pending, &iovs).is_err() {
                    *broken = true;
                    self.wake.notify_one();
                    return Offered::Broken;
                }
                bytes
            }
            Route::Udp { socket, dest } => {
                datagrams.send(&mut h.out, (socket, *dest), &mut h.stamp, frame)
            }
        };
        if media_waiting(udp.is_some(), pending, datagrams).is_some() {
            *pending_frames += 1;
            if was_empty {
                self.wake.notify_one();
            }
        }
        h.sent.frame(&h.stamp, frame, bytes, unit.capture_unix_us);
        Offered::Sent {
            bytes,
            packets: frame.packets.len(),
        }
    }

    /// Writes another session's frame (RTP/JPEG over TCP) under `stamp` on `channel`, and
    /// waits until the socket took it; its bytes of RTP.
    pub async fn write_frame(
        &self,
        out: &mut RtpOut,
        channel: u8,
        stamp: &mut Stamp,
        frame: &RtpFrame,
    ) -> Result<usize, LeaveReason> {
        let (iovs, bytes) = out.interleaved(channel, stamp, frame);
        self.queue(&iovs)?;
        self.flush().await?;
        Ok(bytes)
    }

    /// Writes `bytes` (a reply, a sender report) after whatever waits, and waits until the
    /// socket took them.
    pub async fn write_all(&self, bytes: &[u8]) -> Result<(), LeaveReason> {
        self.queue(&[IoSlice::new(bytes)])?;
        self.flush().await
    }

    /// Writes `iovs` without waiting behind whatever waits ([`put`]); `Closed` when the
    /// connection failed.
    fn queue(&self, iovs: &[IoSlice<'_>]) -> Result<(), LeaveReason> {
        let mut state = self.state();
        if state.broken || put(&self.write, &mut state.pending, iovs).is_err() {
            state.broken = true;
            return Err(LeaveReason::Closed);
        }
        Ok(())
    }

    /// Writes what waits in `pending` and sends what waits in `datagrams`; `Timeout` when
    /// neither socket takes any of it for [`super::conn::WRITE_DEADLINE`], `Closed` when the
    /// connection fails.
    pub async fn flush(&self) -> Result<(), LeaveReason> {
        let mut deadline = Instant::now() + super::conn::WRITE_DEADLINE;
        loop {
            let (tcp_waits, udp_waits, more) = {
                let mut guard = self.state();
                let state = &mut *guard;
                if state.broken {
                    return Err(LeaveReason::Closed);
                }
                if !state.pending.is_empty() {
                    match self.write.try_write(&state.pending) {
                        Ok(0) => state.broken = true,
                        Ok(n) => {
                            state.pending.advance(n);
                            deadline = Instant::now() + super::conn::WRITE_DEADLINE;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => state.broken = true,
                    }
                    if state.broken {
                        return Err(LeaveReason::Closed);
                    }
                }
                let mut udp_waits = None;
                let mut more = false;
                let udp = state.h264.as_ref().and_then(|h| h.route.udp());
                match udp {
                    Some((socket, dest)) if !state.datagrams.is_empty() => {
                        let drained = state.datagrams.drain((socket, dest));
                        if drained.bytes > 0 {
                            deadline = Instant::now() + super::conn::WRITE_DEADLINE;
                        }
                        if drained.blocked {
                            udp_waits = Some(socket.clone());
                        } else {
                            more = !state.datagrams.is_empty();
                        }
                    }
                    Some(_) => {}
                    // The session ended: nothing to send them to.
                    None => state.datagrams.clear(),
                }
                let tcp_waits = !state.pending.is_empty();
                if media_waiting(udp.is_some(), &state.pending, &state.datagrams).is_none() {
                    state.pending_frames = 0;
                }
                if !tcp_waits && udp_waits.is_none() && !more {
                    return Ok(());
                }
                (tcp_waits, udp_waits, more)
            };
            if more {
                // Another batch, after letting the camera's writer have the lock.
                tokio::task::yield_now().await;
                continue;
            }
            let room = async {
                match (tcp_waits, &udp_waits) {
                    (true, None) => self.write.writable().await,
                    (false, Some(udp)) => udp.writable().await,
                    (_, Some(udp)) => tokio::select! {
                        r = self.write.writable() => r,
                        r = udp.writable() => r,
                    },
                    (false, None) => Ok(()),
                }
            };
            match timeout_at(deadline, room).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LeaveReason::Closed),
                Err(_) => return Err(LeaveReason::Timeout),
            }
        }
    }

    /// Frames of which a datagram was lost to a socket error since the last call: for the
    /// server's `send_errors`.
    pub fn take_send_errors(&self) -> u64 {
        std::mem::take(&mut self.state().datagrams.send_errors)
    }

    /// The writer fell behind the feed: the session resumes at the next keyframe.
    fn lost_units(&self) {
        if let Some(h) = self.state().h264.as_mut().filter(|h| h.by_writer) {
            h.wait_key = true;
            h.feed.want_keyframe();
        }
    }
}

/// Writes `iovs` without waiting when nothing waits before them, and appends what the writer
/// did not take (all of it when something waits) to `pending`.
fn put<W: TryWriteVectored>(
    write: &W,
    pending: &mut BytesMut,
    iovs: &[IoSlice<'_>],
) -> io::Result<()> {
    let mut written = 0;
    if pending.is_empty() && !iovs.is_empty() {
        match write.try_write_vectored(&iovs[..iovs.len().min(IOV_MAX)]) {
            Ok(n) => written = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    for iov in iovs {
        if written >= iov.len() {
            written -= iov.len();
            continue;
        }
        pending.extend_from_slice(&iov[written..]);
        written = 0;
    }
    Ok(())
}

/// A camera's writer for its H.264 sessions (in [`Camera`]): the links it serves, and
/// whether its task runs (it starts with the first link and ends at the first unit it finds
/// no link for, or with the camera).
#[derive(Default)]
pub struct H264Writer {
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    links: Vec<Arc<Link>>,
    running: bool,
}

impl H264Writer {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `link`'s H.264 session may be taken by `camera`'s writer from now on.
    pub(super) fn join(shared: &Arc<Shared>, camera: &Arc<Camera>, link: Arc<Link>) {
        let mut members = camera.rtsp_writer.members();
        members.links.push(link);
        if !members.running {
            members.running = true;
            let rx = camera.capture.h264.subscribe();
            tokio::spawn(run(shared.clone(), camera.clone(), rx));
        }
    }

    /// `link` leaves `camera`'s writer (PAUSE, or the connection ends).
    pub(super) fn leave(camera: &Camera, link: &Arc<Link>) {
        camera
            .rtsp_writer
            .members()
            .links
            .retain(|l| !Arc::ptr_eq(l, link));
    }
}

/// A camera's writer: each unit stamped and offered to every link, in turn, without waiting.
async fn run(shared: Arc<Shared>, camera: Arc<Camera>, mut rx: broadcast::Receiver<Arc<H264Unit>>) {
    let writer = &camera.rtsp_writer;
    let stats = &shared.server.stats;
    loop {
        let got = tokio::select! {
            () = camera.stop.cancelled() => break,
            got = rx.recv() => got,
        };
        let unit = match got {
            Ok(unit) => unit,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for link in writer.members().links.iter() {
                    link.lost_units();
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let frame = camera.rtp.h264(&unit);
        let (mut frames, mut bytes, mut packets) = (0u64, 0u64, 0u64);
        {
            // Under the lock: no write waits, and joining or leaving waits for one frame's
            // writes at most.
            let mut members = writer.members();
            if members.links.is_empty() {
                members.running = false;
                return;
            }
            for link in &members.links {
                match link.offer(&unit, &frame, By::Writer) {
                    Offered::Sent {
                        bytes: b,
                        packets: p,
                    } => {
                        frames += 1;
                        bytes += b as u64;
                        packets += p as u64;
                    }
                    Offered::Skipped | Offered::NotMine | Offered::Already | Offered::Broken => {}
                }
            }
        }
        if frames > 0 {
            count_sent(stats, frames, packets, bytes);
            stats.rtsp.writer_frames.fetch_add(frames, Relaxed);
        }
    }
    writer.members().running = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{H264AccessUnit, ParameterSets};
    use crate::rtp::RtpHeader;
    use bytes::Bytes;
    use std::cell::{Cell, RefCell};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Unit `seq` (a keyframe or not) of `bytes` bytes at 30 frames a second, and its shared
    /// packets: one packet, timestamp `seq × 3000`.
    fn unit(seq: u64, keyframe: bool, bytes: usize) -> (H264Unit, RtpFrame) {
        let unit = H264Unit {
            seq,
            au: H264AccessUnit {
                layer: 0,
                data: Bytes::from(vec![0; bytes]),
                parameter_sets: keyframe.then(|| ParameterSets {
                    sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E]),
                    pps: Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]),
                }),
            },
            media_time_90k: seq * 3000,
            capture_unix_us: seq,
        };
        let mut packet = BytesMut::new();
        RtpHeader {
            payload_type: 96,
            marker: true,
            seq: 0,
            timestamp: (seq * 3000) as u32,
            ssrc: 0,
        }
        .write(&mut packet);
        packet.resize(12 + bytes, seq as u8);
        let frame = RtpFrame {
            first_seq: 0,
            rtp_ts: (seq * 3000) as u32,
            keyframe,
            packets: vec![packet.freeze()],
        };
        (unit, frame)
    }

    /// A link over a loopback connection, its H.264 session started (SSRC 7, timestamps from
    /// 0, sequence numbers from 100, channel 0), and the player's end.
    async fn link(send_buffer: Option<usize>) -> (Arc<Link>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let player = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        if let Some(bytes) = send_buffer {
            use std::os::fd::AsRawFd as _;
            crate::sys::set_buffer(server.as_raw_fd(), libc::SO_SNDBUF, bytes).unwrap();
        }
        let (_, write) = server.into_split();
        let link = Arc::new(Link::new(write));
        link.start_h264(
            Stamp::new(7, 0, 100),
            Route::Tcp(0),
            Arc::default(),
            Arc::new(H264Feed::new()),
            30,
        );
        (link, player)
    }

    /// The player's interleaved packets: (sequence number, timestamp) each, until `n`.
    async fn received(player: &mut TcpStream, n: usize) -> Vec<(u16, u32)> {
        let mut got = Vec::new();
        while got.len() < n {
            let mut prefix = [0u8; 4];
            player.read_exact(&mut prefix).await.unwrap();
            assert_eq!((prefix[0], prefix[1]), (b'$', 0));
            let mut packet = vec![0u8; usize::from(u16::from_be_bytes([prefix[2], prefix[3]]))];
            player.read_exact(&mut packet).await.unwrap();
            let (h, _) = RtpHeader::parse(&packet).unwrap();
            assert_eq!(h.ssrc, 7);
            got.push((h.seq, h.timestamp));
        }
        got
    }

    /// Each unit goes out once, in order, by whichever of the session's task and the writer
    /// offers it first; the writer takes the session only at the unit right after the last
    /// sent, and from then on the task sends nothing; PAUSE stops both.
    #[tokio::test]
    async fn the_writer_takes_the_session_at_the_next_unit_and_only_then() {
        let (link, mut player) = link(None).await;
        let u: Vec<_> = (0..7).map(|seq| unit(seq, seq % 6 == 0, 100)).collect();
        let offer = |i: usize, by| link.offer(&u[i].0, &u[i].1, by);
        let sent = Offered::Sent {
            bytes: 112,
            packets: 1,
        };
        assert_eq!(offer(0, By::Session), sent);
        assert_eq!(
            offer(2, By::Writer),
            Offered::NotMine,
            "ahead of the session"
        );
        assert_eq!(offer(1, By::Session), sent);
        assert_eq!(offer(0, By::Session), Offered::Already);
        assert_eq!(
            offer(1, By::Writer),
            Offered::NotMine,
            "sent already: not the next"
        );
        assert_eq!(offer(2, By::Writer), sent, "the next one: the writer's now");
        assert_eq!(offer(3, By::Session), Offered::NotMine);
        assert_eq!(offer(3, By::Writer), sent);
        link.pause_h264(true);
        assert_eq!(offer(4, By::Writer), Offered::NotMine);
        assert_eq!(offer(4, By::Session), Offered::NotMine);
        link.pause_h264(false);
        assert_eq!(offer(5, By::Writer), Offered::NotMine, "4 was not sent");
        assert_eq!(
            offer(6, By::Session),
            sent,
            "the task resumes at a keyframe"
        );
        let got = received(&mut player, 5).await;
        let expected: Vec<(u16, u32)> = [0u32, 1, 2, 3, 6]
            .iter()
            .zip(100u16..)
            .map(|(&i, seq)| (seq, i * 3000))
            .collect();
        assert_eq!(got, expected);
        let tally = link.end_h264().unwrap();
        assert_eq!(tally.frames_sent, 5);
    }

    /// Large frames to a player that does not read: what waits stays under a megabyte and a
    /// frame.
    #[tokio::test]
    async fn what_waits_for_one_player_is_bounded_in_bytes() {
        let (link, _player) = link(Some(4096)).await;
        let first = unit(0, true, 1000);
        link.offer(&first.0, &first.1, By::Session);
        for seq in 1..40 {
            let (u, f) = unit(seq, seq % 10 == 0, 100_000);
            link.offer(&u, &f, By::Writer);
        }
        let waiting = link.state().pending.len();
        assert!(
            waiting < MAX_PENDING_BYTES + 100_100,
            "{waiting} bytes wait for one player"
        );
        assert!(waiting >= MAX_PENDING_BYTES - 4096 * 4, "{waiting}");
    }

    /// A player that does not read: frames wait in `pending` (the task is woken to finish
    /// them) up to the lag limit, then are skipped, counted, until a keyframe after the
    /// player caught up; no frame is cut, and the sequence numbers run on.
    #[tokio::test]
    async fn a_player_behind_skips_to_a_keyframe_after_the_lag_limit() {
        let (link, mut player) = link(Some(4096)).await;
        let limit = crate::capture::h264::lag_limit(30);
        let first = unit(0, true, 1000);
        assert!(matches!(
            link.offer(&first.0, &first.1, By::Session),
            Offered::Sent { .. }
        ));
        let mut outcomes = Vec::new();
        for seq in 1..=(limit as u64 + 40) {
            let (u, f) = unit(seq, false, 20_000);
            outcomes.push(link.offer(&u, &f, By::Writer));
        }
        let sent = outcomes
            .iter()
            .filter(|o| matches!(o, Offered::Sent { .. }))
            .count();
        assert!(
            sent <= limit + 5,
            "{sent} frames queued for a player that reads nothing"
        );
        assert_eq!(outcomes.last(), Some(&Offered::Skipped));
        tokio::time::timeout(Duration::from_secs(1), link.wake.notified())
            .await
            .expect("the task is woken to finish the write");
        // A keyframe while the backlog is still there: skipped too.
        let key = unit(limit as u64 + 41, true, 1000);
        assert_eq!(link.offer(&key.0, &key.1, By::Writer), Offered::Skipped);
        // The player reads; the task finishes the backlog; the next keyframe goes out.
        let flushing = {
            let link = link.clone();
            tokio::spawn(async move { link.flush().await })
        };
        let backlog = received(&mut player, 1 + sent).await;
        flushing.await.unwrap().unwrap();
        let key = unit(limit as u64 + 42, true, 1000);
        assert!(matches!(
            link.offer(&key.0, &key.1, By::Writer),
            Offered::Sent { .. }
        ));
        let after = received(&mut player, 1).await;
        let seqs: Vec<u16> = backlog.iter().chain(&after).map(|p| p.0).collect();
        assert_eq!(seqs, (100..100 + seqs.len() as u16).collect::<Vec<_>>());
        assert_eq!(after[0].1, (limit as u32 + 42) * 3000);
        let tally = link.end_h264().unwrap();
        assert_eq!(tally.frames_sent, 2 + sent as u64);
        assert_eq!(tally.skipped(), limit as u64 + 42 - (1 + sent as u64));
    }

    /// Makes `link`'s H.264 session one over UDP (SSRC 7, sequence from 100) from a fresh
    /// socket, which the runtime has not seen writable yet: every try finds no room, as with a
    /// full buffer, until something waits for room. The player's socket.
    async fn udp_session(link: &Link) -> UdpSocket {
        link.end_h264();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let route = Route::Udp {
            socket,
            dest: rx.local_addr().unwrap(),
        };
        let feed = Arc::new(H264Feed::new());
        link.start_h264(Stamp::new(7, 0, 100), route, Arc::default(), feed, 30);
        rx
    }

    /// An H.264 session over UDP whose socket has no room: its frames wait in order, one
    /// datagram a packet under the session's header, up to the lag limit, then are skipped to
    /// a keyframe; the connection's flush sends what waits once the socket has room, and the
    /// sequence numbers run on.
    #[tokio::test]
    async fn a_udp_session_s_frames_wait_in_order_while_the_socket_has_no_room() {
        let (link, _player) = link(None).await;
        let rx = udp_session(&link).await;
        let next = || async {
            let mut buf = vec![0u8; 2048];
            let n = tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .unwrap();
            buf.truncate(n);
            buf
        };
        let sent = Offered::Sent {
            bytes: 112,
            packets: 1,
        };
        let limit = crate::capture::h264::lag_limit(30);
        let outcomes: Vec<Offered> = (0..=limit as u64 + 5)
            .map(|seq| {
                let (u, f) = unit(seq, seq == 0, 100);
                let by = if seq == 0 { By::Session } else { By::Writer };
                link.offer(&u, &f, by)
            })
            .collect();
        let queued = outcomes.iter().filter(|o| **o == sent).count();
        assert_eq!(queued, limit, "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&Offered::Skipped));
        assert_eq!(link.state().datagrams.queue.len(), limit);
        assert_eq!(link.state().datagrams.bytes, limit * 112);
        let key = unit(limit as u64 + 6, true, 100);
        assert_eq!(link.offer(&key.0, &key.1, By::Writer), Offered::Skipped);
        link.flush().await.unwrap();
        for i in 0..limit {
            let got = next().await;
            let (h, payload) = RtpHeader::parse(&got).unwrap();
            assert_eq!(h.ssrc, 7);
            assert_eq!(payload.len(), 100);
            assert_eq!((h.seq, h.timestamp), (100 + i as u16, i as u32 * 3000));
        }
        assert_eq!(link.state().datagrams.bytes, 0);
        // Caught up, and the socket known to have room: the next keyframe goes at once.
        let key = unit(limit as u64 + 7, true, 100);
        assert_eq!(link.offer(&key.0, &key.1, By::Writer), sent);
        let got = next().await;
        let (h, _) = RtpHeader::parse(&got).unwrap();
        assert_eq!(h.seq, 100 + limit as u16);
        assert_eq!(h.timestamp, (limit as u32 + 7) * 3000);
        let tally = link.end_h264().unwrap();
        assert_eq!(tally.frames_sent, 1 + limit as u64);
        assert_eq!(link.take_send_errors(), 0);
    }

    /// PAUSE (and TEARDOWN) over UDP: what waits for room on the shared socket is dropped, not
    /// sent after the reply, and nothing more is offered to the session.
    #[tokio::test]
    async fn a_paused_udp_session_sends_nothing_that_waited() {
        let (link, _player) = link(None).await;
        let rx = udp_session(&link).await;
        for seq in 0..3 {
            let (u, f) = unit(seq, seq == 0, 100);
            let by = if seq == 0 { By::Session } else { By::Writer };
            assert!(matches!(link.offer(&u, &f, by), Offered::Sent { .. }));
        }
        assert_eq!(link.state().datagrams.queue.len(), 3);
        let counted = |link: &Link| link.with_h264(|h| (h.sent.tally.frames_sent, h.sent.packets));
        assert_eq!(counted(&link), Some((3, 3)));
        link.pause_h264(true);
        assert!(link.state().datagrams.is_empty());
        assert_eq!(link.state().datagrams.bytes, 0);
        // Dropped, so not sent: the LEAVE and the sender reports don't count them.
        assert_eq!(counted(&link), Some((0, 0)));
        assert_eq!(link.with_h264(|h| h.sent.octets), Some(0));
        let (u, f) = unit(3, false, 100);
        assert_eq!(link.offer(&u, &f, By::Writer), Offered::NotMine);
        link.flush().await.unwrap();
        let mut buf = [0u8; 2048];
        let got = tokio::time::timeout(Duration::from_millis(300), rx.recv(&mut buf)).await;
        assert!(got.is_err(), "a datagram after PAUSE: {got:?}");
    }

    /// Frames waiting are counted by their last packets (RTP's marker bit), whatever number of
    /// each frame's packets already left.
    #[test]
    fn the_datagrams_waiting_tell_their_frames_by_the_marker_bit() {
        let packet = |marker: bool| Bytes::from(vec![0x80, 96 | (u8::from(marker) << 7), 0, 0]);
        let mut d = Datagrams::default();
        assert_eq!(d.frames(), 0);
        // The rest of a frame (its first packet left), a one-packet frame, a frame of three.
        for marker in [false, true, true, false, false, true] {
            d.queue.push_back(packet(marker));
        }
        assert_eq!(d.frames(), 3);
        d.queue.drain(..2);
        assert_eq!(d.frames(), 2);
        d.queue.drain(..2);
        assert_eq!(d.frames(), 1);
        d.queue.push_back(Bytes::new());
        assert_eq!(d.frames(), 1);
    }

    /// A writer that takes `room` bytes, then has no room.
    struct Wire {
        bytes: RefCell<Vec<u8>>,
        room: Cell<usize>,
    }

    impl TryWriteVectored for Wire {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room.get() == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(self.room.get());
                self.bytes.borrow_mut().extend_from_slice(&buf[..n]);
                self.room.set(self.room.get() - n);
                taken += n;
            }
            Ok(taken)
        }
    }

    /// What is written and what waits are, in order, the bytes given, wherever the socket's
    /// room ends (none, inside an iovec, at an iovec's end, all); with something waiting,
    /// nothing is written ahead of it.
    #[test]
    fn what_the_socket_does_not_take_waits_in_order() {
        let parts: [&[u8]; 3] = [b"$\x00\x00\x05", b"hello", b"$\x01\x00\x02hi"];
        let all: Vec<u8> = parts.concat();
        let iovs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        for room in [0, 2, 4, 9, 12, all.len(), 1 << 20] {
            let wire = Wire {
                bytes: RefCell::default(),
                room: Cell::new(room),
            };
            let mut pending = BytesMut::new();
            put(&wire, &mut pending, &iovs).unwrap();
            let mut got = wire.bytes.borrow().clone();
            assert_eq!(got.len(), room.min(all.len()), "room {room}");
            got.extend_from_slice(&pending);
            assert_eq!(got, all, "room {room}");
            // A second write goes behind what waits, even with room now.
            wire.room.set(1 << 20);
            let before = wire.bytes.borrow().len();
            put(&wire, &mut pending, &[IoSlice::new(b"next")]).unwrap();
            if room < all.len() {
                assert_eq!(wire.bytes.borrow().len(), before, "room {room}");
                assert!(pending.ends_with(b"next"));
            } else {
                assert!(pending.is_empty());
            }
        }
    }

    /// A writer that fails: the error, nothing kept.
    #[test]
    fn a_failed_write_is_an_error() {
        struct Broken;
        impl TryWriteVectored for Broken {
            fn try_write_vectored(&self, _: &[IoSlice<'_>]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut pending = BytesMut::new();
        assert!(put(&Broken, &mut pending, &[IoSlice::new(b"x")]).is_err());
    }
}
