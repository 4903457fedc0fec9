//! `tcp://HOST:PORT`: surv connects to the camera (OAK PoE `tcp_streaming_server`) and reads
//! its frames in either framing; when the connection drops, the run ends with the reason and
//! the capture path reconnects with backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Deadlines};
use super::is_whole_jpeg;
use super::peers::{Cause, PeerStats};
use crate::capture::{FrameSink, StreamShape};
use crate::frame::JpegFrame;
use crate::sources::{unix_micros_now, Source, SourceError, SourceOptions, SourceRun};

/// How long a connection attempt (name lookup included) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A source that connects to a camera serving frames over TCP.
pub struct TcpConnectSource {
    host: String,
    port: u16,
    max_frame_bytes: usize,
    deadlines: Deadlines,
    stats: Arc<PeerStats>,
}

impl TcpConnectSource {
    pub fn new(host: &str, port: u16, opts: &SourceOptions) -> TcpConnectSource {
        TcpConnectSource {
            host: host.to_string(),
            port,
            max_frame_bytes: opts.max_frame_bytes,
            deadlines: Deadlines::default(),
            stats: Arc::default(),
        }
    }

    /// Other idle and frame deadlines (tests shorten them).
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> TcpConnectSource {
        self.deadlines = deadlines;
        self
    }

    /// The per-cause counters of this source.
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }
}

impl Source for TcpConnectSource {
    fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("tcp://[{}]:{}", self.host, self.port)
        } else {
            format!("tcp://{}:{}", self.host, self.port)
        }
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            let device = self.describe();
            let connect = timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect((self.host.as_str(), self.port)),
            );
            let stream = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                connected = connect => match connected {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(SourceError::Open { device, reason: e.to_string() }),
                    Err(_) => {
                        return Err(SourceError::Open {
                            device,
                            reason: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                        })
                    }
                },
            };
            let peer = stream.peer_addr().map_err(|e| SourceError::Open {
                device: device.clone(),
                reason: e.to_string(),
            })?;
            self.stats.connections.fetch_add(1, Relaxed);
            sink.opened(&device, StreamShape::default());
            let mut conn = Conn::new(stream, peer, self.max_frame_bytes, self.deadlines);
            loop {
                let read = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    read = conn.next_frame() => read,
                };
                match read {
                    Ok(frame) if is_whole_jpeg(&frame.payload) => {
                        let capture_unix_us = unix_micros_now();
                        sink.publish(JpegFrame {
                            objects: frame.objects,
                            jpeg: frame.payload,
                            capture_unix_us,
                        })
                        .await;
                    }
                    Ok(_) => self
                        .stats
                        .note(sink, Cause::NotJpeg, peer, "payload skipped"),
                    Err(end) => {
                        if let Some(cause) = end.cause() {
                            self.stats.note(sink, cause, peer, &end.to_string());
                        }
                        return Err(SourceError::Read {
                            device,
                            reason: format!("camera {peer} {end}"),
                        });
                    }
                }
            }
        })
    }
}
