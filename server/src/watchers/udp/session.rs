//! One viewer's session: a task that decides when the viewer's stream ends, and keeps its
//! window's schedule.
//!
//! Frames and acks do not pass through this task: the data path ([`super::data_path`]) sends each
//! frame to every session whose window is open and settles acks as they come. The task wakes
//! only for what is rare: the viewer's `end` or its TCP connection closing, its timeout, a frame
//! waiting on a full window (to probe, or to send once unanswered frames expire), failed sends,
//! and shutdown. Capture never waits for a session: a frame that finds the window full waits in
//! its place and is replaced by the next one (the viewer skips frames; they are counted).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::data_path::{self, DataPath, MAX_SEND_ERRORS};
use super::link::Attached;
use crate::journal::LeaveReason;
use crate::watchers::Tally;
use crate::Server;

/// How long after its TCP connection closes a viewer's `end` may still arrive.
const END_GRACE: Duration = Duration::from_millis(50);

/// What a session needs besides the server it belongs to.
pub(crate) struct Session {
    pub link: Attached,
    pub tcp: TcpStream,
}

impl Session {
    /// Runs until the viewer leaves, goes silent, the server shuts down or sends keep failing.
    /// Returns why, and what the viewer was sent.
    pub(crate) async fn run(
        mut self,
        server: &Server,
        shutdown: CancellationToken,
    ) -> (LeaveReason, Tally) {
        let timeout = server.config.viewer_timeout;
        let mut tcp_buf = [0u8; 256];
        let mut sender = data_path::Senders::default();
        data_path::on_join(server, &self.link);

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
                data_path::send_one(server, &self.link, &frame, &mut sender);
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
        let tally = self.link.state().tally.clone();
        (reason, tally)
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
                return LeaveReason::Closed;
            }
        }
        LeaveReason::End
    }
}

#[cfg(test)]
mod tests;
