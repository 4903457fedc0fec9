//! One viewer's session: a task that sends it the newest frame, reads its acks and decides when it ends.
//!
//! The session owns a UDP socket of its own, so the viewer's acks come back to it alone; it still
//! checks each datagram's source, since anyone can send to the port. Capture never waits for a
//! session: the session reads the newest frame from a `watch` channel and, when its ack window is
//! full or its socket buffer is, the frame waiting to be sent is replaced by the next one (the
//! viewer skips frames; they are counted).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use surv_proto::{Ack, Form, MAX_ACK_BYTES};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::capture::{FrameRx, SharedFrame};
use crate::journal::{Leave, LeaveReason};
use crate::window::Window;
use crate::Server;

/// Consecutive socket errors after which a session gives up (reason `error`).
const MAX_SOCKET_ERRORS: u32 = 100;

/// What a session needs besides the server it belongs to.
pub(crate) struct Session {
    pub id: u64,
    pub viewer: SocketAddr,
    pub form: Form,
    pub udp: UdpSocket,
    pub tcp: TcpStream,
    pub frames: FrameRx,
}

/// Frames this session has seen published and sent, for the LEAVE line.
#[derive(Default)]
struct Tally {
    first_seq: Option<u64>,
    last_seq: u64,
    frames_sent: u64,
    bytes_sent: u64,
}

impl Tally {
    fn seen(&mut self, seq: u64) {
        self.first_seq.get_or_insert(seq);
        self.last_seq = seq;
    }

    /// Frames published while the session ran that it did not send.
    fn skipped(&self) -> u64 {
        self.first_seq.map_or(0, |first| {
            (self.last_seq - first + 1).saturating_sub(self.frames_sent)
        })
    }
}

impl Session {
    /// Streams until the viewer leaves, goes silent, the server shuts down or a socket fails.
    pub(crate) async fn run(mut self, server: &Server, shutdown: CancellationToken) -> Leave {
        let started = Instant::now();
        let stats = &server.stats;
        let timeout = server.config.viewer_timeout;
        let mut window = Window::new(server.config.max_in_flight);
        let mut tally = Tally::default();
        let mut ack_buf = [0u8; MAX_ACK_BYTES + 1];
        let mut tcp_buf = [0u8; 256];
        let mut last_heard = started;
        let mut socket_errors = 0u32;
        // The frame current at join is sent at once; after that, each new one.
        let mut pending: Option<SharedFrame> = self.frames.borrow_and_update().clone();

        let reason = loop {
            let now = Instant::now();
            if let Some(frame) = pending.take() {
                tally.seen(frame.seq);
                if window.can_send(now) {
                    match self.udp.try_send_to(&frame.datagram, self.viewer) {
                        Ok(n) => {
                            window.on_send(frame.seq, now);
                            tally.frames_sent += 1;
                            tally.bytes_sent += n as u64;
                            stats.frames_sent.fetch_add(1, Relaxed);
                            stats.bytes_sent.fetch_add(n as u64, Relaxed);
                            tracing::trace!(seq = frame.seq, bytes = n, "sent");
                            socket_errors = 0;
                        }
                        // Socket buffer full: this frame is skipped; the next one will try again.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            stats.send_errors.fetch_add(1, Relaxed);
                            if socket_errors == 0 {
                                tracing::warn!(error = %e, "sending a frame failed");
                            }
                            socket_errors += 1;
                            if socket_errors >= MAX_SOCKET_ERRORS {
                                break LeaveReason::Error;
                            }
                        }
                    }
                } else {
                    pending = Some(frame);
                }
            }
            let window_opens = if pending.is_some() {
                window.next_change()
            } else {
                None
            };

            tokio::select! {
                biased;
                () = shutdown.cancelled() => break LeaveReason::Shutdown,
                res = self.udp.recv_from(&mut ack_buf) => match res {
                    Ok((n, from)) if from == self.viewer => match Ack::decode(&ack_buf[..n]) {
                        Ok(Ack::End) => break LeaveReason::End,
                        Ok(Ack::Continue(seq)) => {
                            window.on_ack(seq, Instant::now());
                            last_heard = Instant::now();
                            stats.acks.fetch_add(1, Relaxed);
                            socket_errors = 0;
                        }
                        Err(e) => {
                            stats.bad_acks.fetch_add(1, Relaxed);
                            tracing::debug!(error = %e, bytes = n, "ignored a datagram that is not an ack");
                        }
                    },
                    Ok((_, from)) => {
                        stats.foreign_datagrams.fetch_add(1, Relaxed);
                        tracing::debug!(%from, "ignored a datagram from an address other than the viewer's");
                    }
                    Err(e) => {
                        socket_errors += 1;
                        tracing::debug!(error = %e, "udp receive error");
                        if socket_errors >= MAX_SOCKET_ERRORS {
                            break LeaveReason::Error;
                        }
                    }
                },
                res = self.tcp.read(&mut tcp_buf) => match res {
                    // Anything the viewer writes after registering is ignored; EOF or reset ends it.
                    Ok(0) | Err(_) => break LeaveReason::TcpClosed,
                    Ok(_) => {}
                },
                res = self.frames.changed() => match res {
                    Ok(()) => {
                        let newest = self.frames.borrow_and_update().clone();
                        if let Some(old) = std::mem::replace(&mut pending, newest) {
                            tracing::trace!(seq = old.seq, "skipped: window full");
                        }
                    }
                    // Capture has stopped for good: the server is going down.
                    Err(_) => break LeaveReason::Shutdown,
                },
                () = sleep_until(last_heard + timeout) => break LeaveReason::Timeout,
                () = sleep_until(window_opens.unwrap_or(started)), if window_opens.is_some() => {}
            }
        };
        if let Some(frame) = pending {
            tally.seen(frame.seq);
        }
        let skipped = tally.skipped();
        stats.frames_skipped.fetch_add(skipped, Relaxed);
        Leave {
            session_id: self.id,
            viewer: self.viewer,
            form: self.form,
            reason,
            duration: started.elapsed(),
            frames_sent: tally.frames_sent,
            bytes_sent: tally.bytes_sent,
            frames_skipped: skipped,
        }
    }
}

/// The registry's view of a live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub viewer: SocketAddr,
    pub form: Form,
    pub joined: chrono::DateTime<chrono::Local>,
}
