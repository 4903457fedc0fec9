//! The MJPEG clients of an HTTP run (`--http`, `--http-slow`, `--http-stalled`), as tasks on a
//! small tokio runtime: each connects from its own loopback address (127.2.x.y), asks for
//! `/stream.mjpg` (or, against GStreamer's `tcpserversink`, just reads its raw multipart
//! stream), and counts the parts it receives by the frame tag's number (or, untagged, while the
//! window is open). Slow clients read at a set byte rate through a small receive buffer;
//! stalled ones never read.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surv_proto::FrameTag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{timeout, MissedTickBehavior};

use crate::mjpeg::{response_head, PartReader};
use crate::viewers::viewer_ip;
use crate::WAIT_LIMIT;

/// Bytes per `read` of a client that keeps up.
const READ_BYTES: usize = 64 * 1024;
/// A slow client's receive buffer.
const SLOW_RCVBUF: usize = 4096;
/// A slow client reads its budget in this many slices a second.
const SLOW_TICKS_PER_SEC: u32 = 10;
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Each read is bounded by this, so that `stop` is seen.
const READ_SLICE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Normal,
    /// Reads at most this many bytes a second.
    Slow {
        bytes_per_sec: usize,
    },
    /// Connects, asks, never reads.
    Stalled,
}

/// Where the clients connect and what they ask.
pub struct Target {
    pub addr: SocketAddrV4,
    /// The HTTP request; `None`: a raw multipart stream with this boundary (GStreamer's).
    pub request: Option<String>,
    pub raw_boundary: String,
}

/// What the clients share with the run.
pub struct Tally {
    pub stop: AtomicBool,
    /// Newest frame number seen by any client.
    pub max_seq: AtomicU64,
    /// Frames `lo..=hi` are the measured ones (hi = 0: not measuring yet).
    pub lo: AtomicU64,
    pub hi: AtomicU64,
    /// Untagged streams: every part counts while this is set.
    pub count_all: AtomicBool,
    /// Measured parts, per client.
    pub parts: Vec<AtomicU32>,
    /// Bytes of the measured parts, all clients.
    pub bytes: AtomicU64,
    /// Clients that received a first part.
    pub started: AtomicUsize,
    pub untagged: AtomicU64,
    pub errors: AtomicUsize,
    pub first_error: Mutex<Option<String>>,
}

impl Tally {
    pub fn new(clients: usize) -> Tally {
        Tally {
            stop: AtomicBool::new(false),
            max_seq: AtomicU64::new(0),
            lo: AtomicU64::new(0),
            hi: AtomicU64::new(0),
            count_all: AtomicBool::new(false),
            parts: (0..clients).map(|_| AtomicU32::new(0)).collect(),
            bytes: AtomicU64::new(0),
            started: AtomicUsize::new(0),
            untagged: AtomicU64::new(0),
            errors: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn part(&self, index: usize, len: usize, prefix: &[u8]) {
        let counted = match FrameTag::decode(prefix) {
            Ok(tag) => {
                self.max_seq.fetch_max(tag.seq, Relaxed);
                let (lo, hi) = (self.lo.load(Relaxed), self.hi.load(Relaxed));
                hi != 0 && (lo..=hi).contains(&tag.seq)
            }
            Err(_) => {
                self.untagged.fetch_add(1, Relaxed);
                self.count_all.load(Relaxed)
            }
        };
        if counted {
            self.parts[index].fetch_add(1, Relaxed);
            self.bytes.fetch_add(len as u64, Relaxed);
        }
    }

    fn error(&self, index: usize, kind: Kind, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("client {index} ({kind:?}): {e}"));
    }

    /// Measured parts of clients `range`, sorted.
    pub fn sorted(&self, range: std::ops::Range<usize>) -> Vec<u32> {
        let mut v: Vec<u32> = self.parts[range].iter().map(|c| c.load(Relaxed)).collect();
        v.sort_unstable();
        v
    }
}

/// One client, until `tally.stop`; an error is counted (the first one kept).
pub async fn client(index: usize, kind: Kind, target: Arc<Target>, tally: Arc<Tally>) {
    if let Err(e) = run(index, kind, &target, &tally).await {
        if !tally.stop.load(Relaxed) {
            tally.error(index, kind, e);
        }
    }
}

async fn run(index: usize, kind: Kind, target: &Target, tally: &Tally) -> Result<(), String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(viewer_ip(index).into(), 0))
        .map_err(|e| format!("bind: {e}"))?;
    if let Kind::Slow { .. } = kind {
        sock.set_recv_buffer_size(SLOW_RCVBUF as u32)
            .map_err(|e| e.to_string())?;
    }
    let mut tcp = timeout(CONNECT_LIMIT, sock.connect(target.addr.into()))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    if let Some(req) = &target.request {
        timeout(CONNECT_LIMIT, tcp.write_all(req.as_bytes()))
            .await
            .map_err(|_| "request write timed out".to_string())?
            .map_err(|e| format!("request: {e}"))?;
    }
    if kind == Kind::Stalled {
        while !tally.stop.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return Ok(());
    }
    let (mut buf, budget) = match kind {
        Kind::Slow { bytes_per_sec } => {
            let per_tick = (bytes_per_sec / SLOW_TICKS_PER_SEC as usize).max(1);
            (vec![0u8; per_tick.min(READ_BYTES)], per_tick)
        }
        _ => (vec![0u8; READ_BYTES], usize::MAX),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / SLOW_TICKS_PER_SEC);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reader = target
        .request
        .is_none()
        .then(|| PartReader::new(&target.raw_boundary, false, true));
    let mut head = Vec::new();
    let mut started = false;
    let mut on_part = |len: usize, prefix: &[u8]| {
        if !started {
            started = true;
            tally.started.fetch_add(1, Relaxed);
        }
        tally.part(index, len, prefix);
    };
    let mut last_data = Instant::now();
    while !tally.stop.load(Relaxed) {
        // A slow client reads at most `budget` bytes per tick.
        let mut left = budget;
        if budget != usize::MAX {
            tick.tick().await;
        }
        while left > 0 && !tally.stop.load(Relaxed) {
            let cap = left.min(buf.len());
            let n = match timeout(READ_SLICE, tcp.read(&mut buf[..cap])).await {
                Err(_) if last_data.elapsed() > WAIT_LIMIT => {
                    return Err("nothing received for 30 s".into())
                }
                Err(_) => break,
                Ok(Ok(0)) => return Err("closed by the server".into()),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(n)) => n,
            };
            last_data = Instant::now();
            left = left.saturating_sub(n);
            match reader.as_mut() {
                Some(r) => r.feed(&buf[..n], &mut on_part)?,
                None => {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(h) = response_head(&head)? {
                        let mut r = PartReader::new(&h.boundary, h.chunked, false);
                        r.feed(&head[h.len..], &mut on_part)?;
                        reader = Some(r);
                        head = Vec::new();
                    }
                }
            }
            if budget != usize::MAX {
                continue;
            }
            left = usize::MAX;
        }
    }
    Ok(())
}
