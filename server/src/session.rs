//! One viewer's session: a task that decides when the viewer's stream ends, and keeps its
//! window's schedule.
//!
//! Frames and acks do not pass through this task: the data path ([`crate::fanout`]) sends each
//! frame to every session whose window is open and settles acks as they come. The task wakes
//! only for what is rare: the viewer's `end` or its TCP connection closing, its timeout, a frame
//! waiting on a full window (to probe, or to send once unanswered frames expire), failed sends,
//! and shutdown. Capture never waits for a session: a frame that finds the window full waits in
//! its place and is replaced by the next one (the viewer skips frames; they are counted).

use std::net::SocketAddr;
use std::time::Duration;

use surv_proto::Form;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::fanout::{self, Attached, DataPath, MAX_SEND_ERRORS};
use crate::journal::{Leave, LeaveReason};
use crate::udp_batch::Fanout;
use crate::Server;

/// How long after its TCP connection closes a viewer's `end` may still arrive.
const END_GRACE: Duration = Duration::from_millis(50);

/// What a session needs besides the server it belongs to.
pub(crate) struct Session {
    pub id: u64,
    pub viewer: SocketAddr,
    pub form: Form,
    pub link: Attached,
    pub tcp: TcpStream,
}

impl Session {
    /// Runs until the viewer leaves, goes silent, the server shuts down or sends keep failing.
    pub(crate) async fn run(mut self, server: &Server, shutdown: CancellationToken) -> Leave {
        let started = Instant::now();
        let timeout = server.config.viewer_timeout;
        let mut tcp_buf = [0u8; 256];
        let mut fanout = Fanout::default();
        fanout::on_join(server, &self.link);

        let reason = loop {
            let now = Instant::now();
            let (release, wake_at) = {
                let mut st = self.link.state();
                if st.ended {
                    break LeaveReason::End;
                }
                if st.send_errors >= MAX_SEND_ERRORS {
                    break LeaveReason::Error;
                }
                let silent_until = st.last_heard + timeout;
                if now >= silent_until {
                    break LeaveReason::Timeout;
                }
                // A frame waiting on a full window goes when the window's schedule allows.
                let release = if st.pending.is_some() && st.window.can_send(now) {
                    st.pending.take()
                } else {
                    None
                };
                let window_at = st.pending.as_ref().and_then(|_| st.window.next_change());
                (
                    release,
                    window_at.map_or(silent_until, |w| w.min(silent_until)),
                )
            };
            if let Some(frame) = release {
                fanout::send_one(server, &self.link, &frame, &mut fanout);
                continue;
            }

            tokio::select! {
                biased;
                () = shutdown.cancelled() => break LeaveReason::Shutdown,
                () = self.link.wake.notified() => {}
                res = self.tcp.read(&mut tcp_buf) => match res {
                    // Anything the viewer writes after registering is ignored; EOF or reset ends it.
                    Ok(0) | Err(_) => break self.closed_or_ended().await,
                    Ok(_) => {}
                },
                () = sleep_until(wake_at) => {}
            }
        };
        DataPath::detach(&self.link);
        let st = self.link.state();
        let skipped = st.tally.skipped();
        server
            .stats
            .frames_skipped
            .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        Leave {
            session_id: self.id,
            viewer: self.viewer,
            form: self.form,
            reason,
            duration: started.elapsed(),
            frames_sent: st.tally.frames_sent,
            bytes_sent: st.tally.bytes_sent,
            frames_skipped: skipped,
        }
    }

    /// The TCP connection closed. A viewer that leaves sends `end` and then closes: the `end`
    /// travels the data path, so give it a moment to arrive before calling it `tcp-closed`.
    async fn closed_or_ended(&self) -> LeaveReason {
        let until = Instant::now() + END_GRACE;
        while !self.link.state().ended {
            if tokio::time::timeout_at(until, self.link.wake.notified())
                .await
                .is_err()
            {
                return LeaveReason::TcpClosed;
            }
        }
        LeaveReason::End
    }
}

/// The registry's view of a live session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub viewer: SocketAddr,
    pub form: Form,
    pub joined: chrono::DateTime<chrono::Local>,
}
