//! The ack path: one task per shared socket takes acks in with `recvmmsg` and settles each in
//! its session's window, found by the sender's address; an ack that opens a full window sends
//! the frame waiting there at once.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use surv_proto::Ack;
use tokio::io::Interest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::data_path::{confirm, send_one, SharedSocket};
use super::link::Link;
use crate::capture::SharedFrame;
use crate::sys::{self, BatchReceiver, BatchSender};
use crate::Server;

/// Batches an ack task takes per wake-up before letting other tasks run.
const ACK_BATCHES_PER_WAKE: usize = 16;

/// Takes in the acks arriving on `socket` until `shutdown`, in batches.
pub(super) async fn ack_loop(
    server: Arc<Server>,
    socket: Arc<SharedSocket>,
    shutdown: CancellationToken,
) {
    let mut inbox = BatchReceiver::default();
    let mut fanout = BatchSender::default();
    let mut released: Vec<(Arc<Link>, SharedFrame)> = Vec::new();
    let fd = socket.udp.as_raw_fd();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = socket.closed.cancelled() => return,
            res = socket.udp.readable() => if let Err(e) = res {
                tracing::warn!(error = %e, "shared UDP socket failed; acks on it are lost");
                return;
            },
        }
        for _ in 0..ACK_BATCHES_PER_WAKE {
            let mut acks = 0u64;
            let res = socket.udp.try_io(Interest::READABLE, || {
                inbox.recv(fd, |bytes, from, len| {
                    acks += u64::from(on_datagram(
                        &server,
                        &socket,
                        bytes,
                        len,
                        from,
                        &mut released,
                    ));
                })
            });
            server.stats.acks.fetch_add(acks, Relaxed);
            for (link, frame) in released.drain(..) {
                send_one(&server, &link, &frame, &mut fanout);
            }
            match res {
                Ok(n) if n == sys::RECV_BATCH => continue,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive error");
                    break;
                }
            }
        }
    }
}

/// One datagram from a viewer (or anyone): returns whether it was an ack. A frame waiting on a
/// window that the ack opens goes to `released`.
fn on_datagram(
    server: &Server,
    socket: &SharedSocket,
    bytes: &[u8],
    len: usize,
    from: SocketAddr,
    released: &mut Vec<(Arc<Link>, SharedFrame)>,
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
        Ok(Ack::Hello) => {
            st.last_heard = now;
            st.window.on_alive(now);
            if let Some(frame) = confirm(&link, &mut st) {
                drop(st);
                released.push((link, frame));
            }
            true
        }
        Ok(Ack::End) => {
            st.ended = true;
            link.wake.notify_one();
            false
        }
        Ok(Ack::Continue(seq)) => {
            st.window.on_ack(seq, now);
            st.last_heard = now;
            st.send_errors = 0;
            if st.pending.is_some() && st.window.can_send(now) {
                if let Some(frame) = st.pending.take() {
                    drop(st);
                    released.push((link, frame));
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
