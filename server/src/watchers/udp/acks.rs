//! The ack path: acks are taken in with `recvmmsg` and settled each in its session's window,
//! found by the sender's address; an ack that opens a full window sends the frame waiting there
//! at once, and a chunked viewer's `nack` gets the chunks it names again at once, within the
//! repair limits ([`super::data_path::REPAIR_FOR`] and others).
//!
//! Who reads a shared socket's acks depends on its sessions:
//!
//! * While a chunked session is on it, its ack task waits for each ack (the socket registered
//!   with the runtime for reading): a `nack` is answered as soon as it comes.
//! * Otherwise (whole datagrams only, the seed form's), the fan-out thread takes in what has
//!   come just before it sends each frame, and the ack task what comes between, every
//!   [`READ_EVERY`]: nothing is registered with the runtime, so an ack wakes no thread. An ack
//!   then waits a few milliseconds; whole-datagram sessions are not repaired, and a window's
//!   room is wanted only when the next frame goes. Measured: a fifth less of the server's CPU
//!   at 1,000 viewers (docs/PERFORMANCE.md). Read only before each frame, a flood of datagrams
//!   filled the socket's buffer between frames and the kernel dropped what came after, acks
//!   included; read every 5 ms, it is read as fast as before (the chaos run's flood).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_proto::Ack;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::data_path::{confirm, repair, send_one, Senders, SharedSocket, MAX_REPAIRS, REPAIR_FOR};
use super::link::{Link, LinkState};
use crate::capture::SharedFrame;
use crate::sys;
use crate::Server;

/// Batches an ack task takes per wake-up before letting other tasks run.
const ACK_BATCHES_PER_WAKE: usize = 16;

/// Batches the fan-out thread takes before a frame: 4,096 acks, more than a frame brings.
pub(super) const ACK_BATCHES_PER_FRAME: usize = 64;

/// How often the ack task reads a socket without chunked sessions (whose acks the fan-out
/// thread also takes before each frame): acks wait no longer than this, an `end` ends its
/// session when frames have stopped, and a flood is read before it fills the socket's buffer
/// (8 MiB: 25,000 datagrams a second of up to 64 KiB, the chaos run's, fill it in 10 ms).
pub(super) const READ_EVERY: Duration = Duration::from_millis(5);

/// Takes in the acks arriving on `socket` until `shutdown`, in batches.
pub(super) async fn ack_loop(
    server: Arc<Server>,
    socket: Arc<SharedSocket>,
    shutdown: CancellationToken,
) {
    let mut senders = Senders::default();
    let mut registered: Option<AsyncFd<Arc<std::net::UdpSocket>>> = None;
    let mut refused = false;
    loop {
        if socket.chunked.load(Relaxed) == 0 {
            // Deregistered: arriving acks no longer wake the runtime.
            registered = None;
        } else if registered.is_none() {
            match sys::register_shared(socket.udp.clone()) {
                Ok(fd) => registered = Some(fd),
                Err(e) if !refused => {
                    // Rare (the runtime's poller refused it): read on the timer instead.
                    refused = true;
                    tracing::warn!(error = %e, "cannot wait for acks; reading them every 5 ms");
                }
                Err(_) => {}
            }
        }
        let Some(fd) = registered.as_ref() else {
            let idle = socket.links.is_empty();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = socket.closed.cancelled() => return,
                () = socket.changed.notified() => {}
                () = tokio::time::sleep(READ_EVERY), if !idle => {}
            }
            drain(
                &server,
                &socket,
                Reader::AckTask,
                &mut senders,
                ACK_BATCHES_PER_WAKE,
            );
            continue;
        };
        let mut ready = tokio::select! {
            () = shutdown.cancelled() => return,
            () = socket.closed.cancelled() => return,
            res = fd.readable() => match res {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!(error = %e, "shared UDP socket failed; acks on it are lost");
                    return;
                }
            },
        };
        if drain(
            &server,
            &socket,
            Reader::AckTask,
            &mut senders,
            ACK_BATCHES_PER_WAKE,
        ) {
            ready.clear_ready();
        }
    }
}

/// Who reads a socket's acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    AckTask,
    Fanout,
}

/// Takes in what acks are queued on `socket` (at most `batches` batches), settles them and sends
/// what they release: whether the queue was emptied. One reader at a time keeps each viewer's
/// acks in order.
pub(super) fn drain(
    server: &Server,
    socket: &SharedSocket,
    by: Reader,
    senders: &mut Senders,
    batches: usize,
) -> bool {
    let mut inbox = match by {
        // The fan-out thread does not wait behind the ack task, which is reading them.
        Reader::Fanout => match socket.inbox.try_lock() {
            Ok(inbox) => inbox,
            Err(_) => return false,
        },
        // The ack task waits for the fan-out thread's read to end (a frame's acks and what
        // they release): leaving would leave what came meanwhile unread, as the socket's
        // readiness is cleared after.
        Reader::AckTask => socket.inbox.lock().unwrap_or_else(|p| p.into_inner()),
    };
    let fd = socket.udp.as_raw_fd();
    let mut released: Vec<Released> = Vec::new();
    for _ in 0..batches {
        let mut acks = 0u64;
        let res = inbox.recv(fd, |bytes, from, len| {
            acks += u64::from(on_datagram(server, socket, bytes, len, from, &mut released));
        });
        server.stats.acks.fetch_add(acks, Relaxed);
        for (link, frame, what) in released.drain(..) {
            match what {
                Send::Frame => send_one(server, &link, &frame, senders),
                Send::Repair(missing, parity) => {
                    repair(server, &link, &frame, (missing, parity), senders)
                }
            }
        }
        match res {
            Ok(n) if n == sys::RECV_BATCH => continue,
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive error");
                return true;
            }
        }
    }
    false
}

/// What an ack has the ack task send, after the batch: a frame, or a frame's chunks again.
enum Send {
    Frame,
    Repair(u128, u8),
}

type Released = (Arc<Link>, SharedFrame, Send);

/// One datagram from a viewer (or anyone): returns whether it was an ack. A frame waiting on a
/// window that the ack opens, or chunks a `nack` asks for, go to `released`.
fn on_datagram(
    server: &Server,
    socket: &SharedSocket,
    bytes: &[u8],
    len: usize,
    from: SocketAddr,
    released: &mut Vec<Released>,
) -> bool {
    let Some(link) = socket.links.get(&from).map(|l| l.value().clone()) else {
        server.stats.foreign_datagrams.fetch_add(1, Relaxed);
        tracing::trace!(%from, "ignored a datagram from an address that is no viewer's");
        return false;
    };
    let ack = if len > bytes.len() {
        Err(surv_proto::AckError::TooLong(len))
    } else {
        Ack::decode_keyed(bytes)
    };
    let now = Instant::now();
    let mut st = link.state();
    let ack = match ack {
        // A SURV/1 session takes only acks with its key; the seed form's have none.
        Ok((ack, key)) if key == st.key => Ok(ack),
        Ok(_) => {
            drop(st);
            server.stats.keyless_acks.fetch_add(1, Relaxed);
            tracing::trace!(viewer = %from, "ignored an ack without the session's key");
            return false;
        }
        Err(e) => Err(e),
    };
    match ack {
        Ok(hello @ (Ack::Hello | Ack::HelloChunks { .. })) => {
            st.last_heard = now;
            st.window.on_alive(now);
            // Chunks when asked for and this server sends them, at the smaller mtu of the two.
            let chunk_bytes = match (hello, server.config.mtu) {
                (Ack::HelloChunks { mtu }, Some(ours)) => {
                    Some(surv_proto::chunk_bytes_for_mtu(mtu.min(ours)))
                }
                _ => None,
            };
            if let Some(frame) = confirm(&link, &mut st, chunk_bytes) {
                drop(st);
                released.push((link, frame, Send::Frame));
            }
            true
        }
        Ok(Ack::Nack(nack)) => {
            st.last_heard = now;
            st.window.on_alive(now);
            match repairable(&mut st, &nack, now) {
                Some((frame, missing, parity)) => {
                    drop(st);
                    released.push((link, frame, Send::Repair(missing, parity)));
                }
                None => {
                    drop(st);
                    server.stats.nacks_refused.fetch_add(1, Relaxed);
                    tracing::trace!(viewer = %from, seq = nack.seq, "nack not answered");
                }
            }
            true
        }
        Ok(Ack::End) => {
            st.ended = true;
            link.wake.notify_one();
            false
        }
        Ok(ack @ (Ack::Continue(_) | Ack::Received { .. })) => {
            // A chunked session's `continue` also says how much it received: its rate
            // follows it. It settles the window as any `continue <seq>` does.
            let seq = match ack {
                Ack::Received { seq, .. } => Some(seq),
                Ack::Continue(seq) => seq,
                _ => None,
            };
            if let Ack::Received {
                seq,
                rx_bytes,
                loss,
                path_kbps,
            } = ack
            {
                // Taken only where parity was offered (`--fec`) ...
                let loss = loss.filter(|_| server.config.fec);
                if loss != st.loss_permille {
                    tracing::debug!(viewer = %from, seq, ?loss, "reported loss");
                    st.loss_permille = loss;
                }
                // ... and pacing (`--pace`).
                st.path_kbps = path_kbps.filter(|_| server.config.pace);
                let before = st.rate.limit();
                st.rate.on_ack(seq, rx_bytes, now);
                let after = st.rate.limit();
                if after != before {
                    let kbit = |l: Option<f64>| l.map_or(-1.0, |l| (l * 8.0 / 1000.0).round());
                    tracing::debug!(viewer = %from, seq, before_kbit_s = kbit(before), kbit_s = kbit(after), held_back = st.rate.limited_frames, queue_cuts = st.rate.queue_cuts, "rate limit");
                }
            }
            st.window.on_ack(seq, now);
            st.last_heard = now;
            st.send_errors = 0;
            if st.pending.is_some() && st.window.can_send(now) {
                if let Some(frame) = st.pending.take() {
                    drop(st);
                    released.push((link, frame, Send::Frame));
                }
            }
            true
        }
        Err(e) => {
            server.stats.bad_acks.fetch_add(1, Relaxed);
            tracing::trace!(viewer = %from, error = %e, bytes = len, "ignored a datagram that is not an ack");
            false
        }
    }
}

/// The frame a `nack` may be answered with, the chunks to send again and its parity count:
/// one of the frames last sent to this chunked session, sent within [`REPAIR_FOR`], repaired
/// fewer than [`MAX_REPAIRS`] times, and the bitmap naming only chunks it has; of a frame
/// still leaving paced, only the chunks that have gone (the rest are on their way). Counts
/// the repair.
fn repairable(
    st: &mut LinkState,
    nack: &surv_proto::Nack,
    now: Instant,
) -> Option<(SharedFrame, u128, u8)> {
    let chunk_bytes = st.chunk_bytes?;
    let missing = match st.paced_for(nack.seq) {
        Some(p) => nack.missing & p.sent_bits(),
        None => nack.missing,
    };
    let sent = st
        .sent_chunked
        .iter_mut()
        .find(|s| s.frame.seq == nack.seq)?;
    let k = sent.frame.jpeg()?.len().div_ceil(chunk_bytes);
    let beyond = if k >= 128 { 0 } else { u128::MAX << k };
    if missing == 0
        || nack.missing & beyond != 0
        || sent.repairs >= MAX_REPAIRS
        || now.saturating_duration_since(sent.at) > REPAIR_FOR
    {
        return None;
    }
    sent.repairs += 1;
    Some((sent.frame.clone(), missing, sent.parity))
}
