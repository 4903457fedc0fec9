//! `tcp-listen://HOST:PORT`: the camera connects to surv (seed 004's `sendvid.py`, OAK PoE
//! `tcp_streaming_client`) and may reconnect at any time.
//!
//! The listener is bound once per run and kept across the camera's reconnects: when the camera
//! that feeds the source disconnects (or stalls, or sends a bad stream) the source reports it
//! lost ([`FrameSink::lost`]) and goes on accepting; the next camera frame brings it back.
//!
//! One pusher at a time. Each accepted connection (inside `--source-allow`) is read by a task
//! of its own; it **takes over the source with its first whole JPEG**, and the connection that
//! fed the source until then is closed (logged with both addresses, counted as
//! [`Cause::Replaced`]). So a rebooted camera whose old connection still lingers half-open is
//! back at its first frame, while a connection that never completes a frame (a port scan, a
//! slowloris peer, a stream in neither framing) never disturbs the camera that is streaming:
//! it is dropped at its deadline or first bad byte, and counted. At most
//! [`MAX_WAITING_CONNECTIONS`] connections may wait for their first frame at once; a new one
//! beyond that closes the oldest of them (the rule of the HTTP and registration ports,
//! `crate::places`), so idle connections reopened as they close cannot keep a camera out:
//! the camera's connection sends a frame within milliseconds and takes over.
//!
//! Only a JPEG picture ([`crate::jpeg::check`]) takes the source over: `FF D8 FF D9` does not.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, ConnEnd, Deadlines};
use super::is_whole_jpeg;
use super::peers::{Cause, PeerStats};
use crate::capture::{FrameSink, StreamShape};
use crate::frame::JpegFrame;
use crate::places::{Entry, Place, Places};
use crate::sources::{unix_micros_now, OnStall, Source, SourceError, SourceOptions, SourceRun};

/// Connections that have not sent a whole frame yet, at most, besides the camera streaming.
pub const MAX_WAITING_CONNECTIONS: usize = 4;

/// After a failed accept (out of file descriptors…), wait this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A source fed by cameras that connect to it.
pub struct TcpListenSource {
    host: String,
    port: u16,
    opts: SourceOptions,
    deadlines: Deadlines,
    stats: Arc<PeerStats>,
}

impl TcpListenSource {
    pub fn new(host: &str, port: u16, opts: &SourceOptions) -> TcpListenSource {
        TcpListenSource {
            host: host.to_string(),
            port,
            opts: opts.clone(),
            deadlines: Deadlines::default(),
            stats: Arc::default(),
        }
    }

    /// Other idle and frame deadlines (tests shorten them).
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> TcpListenSource {
        self.deadlines = deadlines;
        self
    }

    /// The per-cause counters of this source.
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }
}

/// What a connection's task reports.
enum Event {
    Frame(JpegFrame),
    Ended(ConnEnd),
}

/// A connection being read, and how to close it.
struct Pusher {
    id: u64,
    peer: SocketAddr,
    close: CancellationToken,
    /// While it waits for its first frame: its place among the waiting (given back when it
    /// takes over or ends).
    place: Option<Place>,
}

impl Source for TcpListenSource {
    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("tcp-listen://[{}]:{}", self.host, self.port)
        } else {
            format!("tcp-listen://{}:{}", self.host, self.port)
        }
    }

    /// Cameras push to it: a stall is reported, the socket stays open for the camera.
    fn on_stall(&self) -> OnStall {
        OnStall::Report
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            let describe = self.describe();
            let listener = TcpListener::bind((self.host.as_str(), self.port))
                .await
                .map_err(|e| SourceError::Open {
                    device: describe.clone(),
                    reason: format!("cannot listen: {e}"),
                })?;
            sink.opened(&describe, StreamShape::default());
            // Every connection task ends with this run, however it ends.
            let conns = stop.child_token();
            let _close_all = conns.clone().drop_guard();
            let (tx, mut rx) = mpsc::channel::<(u64, Event)>(4);
            let mut current: Option<Pusher> = None;
            let mut waiting: Vec<Pusher> = Vec::new();
            let places = Arc::new(Places::default());
            let mut next_id = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    accepted = listener.accept() => {
                        let (stream, peer) = match accepted {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(source = %describe, error = %e, "accept failed");
                                tokio::time::sleep(ACCEPT_RETRY).await;
                                continue;
                            }
                        };
                        if !self.opts.allows(peer.ip()) {
                            self.stats.note(sink, Cause::NotAllowed, peer, "connection closed");
                            continue;
                        }
                        let place = match Places::enter(&places, MAX_WAITING_CONNECTIONS) {
                            Entry::Free(p) | Entry::Evicted(p) => p,
                            // Never marked requested: there is always one to evict.
                            Entry::Full => continue,
                        };
                        waiting.retain(|w| {
                            let evicted = w.place.as_ref().is_some_and(|p| p.evicted.is_cancelled());
                            if evicted {
                                w.close.cancel();
                                let detail = format!("connection closed for {peer}");
                                self.stats.note(sink, Cause::TooManyWaiting, w.peer, &detail);
                            }
                            !evicted
                        });
                        self.stats.connections.fetch_add(1, Relaxed);
                        tracing::info!(source = %describe, %peer, "camera connected");
                        next_id += 1;
                        let close = conns.child_token();
                        let conn = Conn::new(stream, peer, self.opts.max_frame_bytes, self.deadlines);
                        tokio::spawn(read_connection(next_id, conn, close.clone(), tx.clone()));
                        waiting.push(Pusher { id: next_id, peer, close, place: Some(place) });
                    }
                    Some((id, event)) = rx.recv() => match event {
                        Event::Frame(frame) => {
                            if current.as_ref().is_some_and(|c| c.id == id) {
                                self.frame_from_current(sink, &current, frame).await;
                            } else if let Some(i) = waiting.iter().position(|w| w.id == id) {
                                let mut newcomer = waiting.swap_remove(i);
                                newcomer.place = None;
                                if !is_whole_jpeg(&frame.jpeg) {
                                    self.stats.note(sink, Cause::NotJpeg, newcomer.peer, "first frame; connection closed");
                                    newcomer.close.cancel();
                                    continue;
                                }
                                if let Some(old) = current.take() {
                                    old.close.cancel();
                                    let detail = format!("{} replaced by {}", old.peer, newcomer.peer);
                                    self.stats.note(sink, Cause::Replaced, old.peer, &detail);
                                }
                                tracing::info!(source = %describe, peer = %newcomer.peer, "camera streaming");
                                current = Some(newcomer);
                                self.frame_from_current(sink, &current, frame).await;
                            }
                        }
                        Event::Ended(end) => {
                            if current.as_ref().is_some_and(|c| c.id == id) {
                                let Some(gone) = current.take() else { continue };
                                if let Some(cause) = end.cause() {
                                    self.stats.note(sink, cause, gone.peer, &end.to_string());
                                }
                                sink.lost(&format!("camera {} {end}", gone.peer));
                            } else if let Some(i) = waiting.iter().position(|w| w.id == id) {
                                let gone = waiting.swap_remove(i);
                                match end.cause() {
                                    Some(cause) => self.stats.note(sink, cause, gone.peer, &end.to_string()),
                                    None => tracing::info!(source = %describe, peer = %gone.peer, "connection closed before a frame"),
                                }
                            }
                        }
                    },
                }
            }
        })
    }
}

impl TcpListenSource {
    /// A payload from the camera feeding the source: published, or rejected if not a JPEG.
    async fn frame_from_current(
        &self,
        sink: &FrameSink,
        current: &Option<Pusher>,
        frame: JpegFrame,
    ) {
        if is_whole_jpeg(&frame.jpeg) {
            sink.publish(frame).await;
        } else if let Some(c) = current {
            self.stats.note(
                sink,
                Cause::NotJpeg,
                c.peer,
                "payload skipped; stream goes on",
            );
        }
    }
}

/// Reads one connection until it ends or is closed, reporting each payload.
async fn read_connection(
    id: u64,
    mut conn: Conn<TcpStream>,
    close: CancellationToken,
    tx: mpsc::Sender<(u64, Event)>,
) {
    loop {
        let event = tokio::select! {
            () = close.cancelled() => return,
            read = conn.next_frame() => match read {
                Ok(frame) => Event::Frame(JpegFrame {
                    objects: frame.objects,
                    jpeg: frame.payload,
                    capture_unix_us: unix_micros_now(),
                }),
                Err(end) => Event::Ended(end),
            },
        };
        let ended = matches!(event, Event::Ended(_));
        tokio::select! {
            () = close.cancelled() => return,
            sent = tx.send((id, event)) => if sent.is_err() { return },
        }
        if ended {
            return;
        }
    }
}
