//! Stand-ins for the cameras that push JPEGs to surv or serve them over TCP, byte for byte as
//! the seed programs write them:
//!
//! * [`udp_sender`]: seed 001's Raspberry Pi, `sendto(jpeg)` per frame, never reads.
//! * [`length_prefixed_sender`]: seed 004's `sendvid.py`, `sendall(struct.pack('>I', len) +
//!   jpeg)` per frame, starting with an empty message (it sends the previous buffer whenever a
//!   new frame starts, and the first time that buffer is empty).
//! * [`abcde_client`]: OAK PoE `tcp_streaming_client`, which connects and sends
//!   `"ABCDE " + str(ts).ljust(18) + str(len).ljust(8)` then the JPEG, in two sends.
//! * [`abcde_server`]: OAK PoE `tcp_streaming_server`, which listens and streams the same to
//!   each client it accepts, one at a time.
//!
//! Each runs as a task sending the given frames in a loop at the given interval until it is
//! killed (dropped, or [`Camera::kill`]) or its peer goes away.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::IO_TIMEOUT;

/// How a stand-in paces the frames it sends.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Sent in turn, over and over.
    pub frames: Vec<Vec<u8>>,
    pub interval: Duration,
}

/// A running stand-in camera.
pub struct Camera {
    sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
    /// Where the camera sends from (udp, tcp clients) or listens (tcp servers).
    pub local: SocketAddr,
}

impl Camera {
    /// Frames sent (written to the socket) so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Whether it stopped on its own (its peer closed the connection).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Pulls the plug: the task stops at once and its sockets close.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seed 001's sender from `from_ip` (any port) to `to`. The returned socket is the camera's
/// own, for a test to send odd datagrams from the camera's address.
pub async fn udp_sender(
    from_ip: IpAddr,
    to: SocketAddr,
    feed: Feed,
) -> anyhow::Result<(Camera, Arc<UdpSocket>)> {
    let socket = Arc::new(
        UdpSocket::bind(SocketAddr::new(from_ip, 0))
            .await
            .with_context(|| format!("binding the stand-in camera's UDP socket on {from_ip}"))?,
    );
    let local = socket.local_addr()?;
    let sent = Arc::new(AtomicU64::new(0));
    let (s, n) = (socket.clone(), sent.clone());
    let task = tokio::spawn(async move {
        every(
            feed,
            |frame| {
                let s = s.clone();
                async move { s.send_to(&frame, to).await.map(drop) }
            },
            &n,
        )
        .await;
    });
    Ok((Camera { sent, task, local }, socket))
}

/// Seed 004's `sendvid.py`: connects to `to` (retrying each second, as it does) and sends
/// `[u32 BE length][JPEG]` messages, the first one empty.
pub async fn length_prefixed_sender(to: SocketAddr, feed: Feed) -> anyhow::Result<Camera> {
    let mut tcp = connect_retrying(to).await?;
    let local = tcp.local_addr()?;
    let sent = Arc::new(AtomicU64::new(0));
    let n = sent.clone();
    let task = tokio::spawn(async move {
        if tcp.write_all(&0u32.to_be_bytes()).await.is_err() {
            return;
        }
        let tcp = Arc::new(tokio::sync::Mutex::new(tcp));
        every(
            feed,
            |frame| {
                let tcp = tcp.clone();
                async move {
                    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    let mut message = len.to_be_bytes().to_vec();
                    message.extend_from_slice(&frame);
                    tcp.lock().await.write_all(&message).await
                }
            },
            &n,
        )
        .await;
    });
    Ok(Camera { sent, task, local })
}

/// OAK `tcp_streaming_client`: connects to `to` and sends ABCDE-framed JPEGs.
pub async fn abcde_client(to: SocketAddr, feed: Feed) -> anyhow::Result<Camera> {
    let tcp = connect_retrying(to).await?;
    let local = tcp.local_addr()?;
    let sent = Arc::new(AtomicU64::new(0));
    let n = sent.clone();
    let task = tokio::spawn(async move {
        stream_abcde(tcp, feed, &n).await;
    });
    Ok(Camera { sent, task, local })
}

/// OAK `tcp_streaming_server`: listens on `at` (port 0: any) and streams ABCDE-framed JPEGs to
/// each client it accepts, one client at a time.
pub async fn abcde_server(at: SocketAddr, feed: Feed) -> anyhow::Result<Camera> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("binding the stand-in OAK server on {at}"))?;
    let local = listener.local_addr()?;
    let sent = Arc::new(AtomicU64::new(0));
    let n = sent.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            stream_abcde(tcp, feed.clone(), &n).await;
        }
    });
    Ok(Camera { sent, task, local })
}

/// The OAK's header for a frame of `size` bytes taken at `ts_s` seconds (Python's `str` of a
/// float, padded with `ljust`).
pub fn abcde_header(ts_s: f64, size: usize) -> Vec<u8> {
    let mut ts = format!("{ts_s}");
    if !ts.contains(['.', 'e', 'n', 'i']) {
        ts.push_str(".0");
    }
    format!("ABCDE {ts:<18}{size:<8}").into_bytes()
}

/// Sends the feed as the OAK's script does (`conn.send(header)`, `conn.send(data)`) until the
/// peer goes away.
async fn stream_abcde(tcp: TcpStream, feed: Feed, sent: &AtomicU64) {
    let tcp = Arc::new(tokio::sync::Mutex::new(tcp));
    let t0 = Instant::now();
    every(
        feed,
        |frame| {
            let tcp = tcp.clone();
            async move {
                let mut tcp = tcp.lock().await;
                // `timedelta.total_seconds()`: whole microseconds.
                let ts = t0.elapsed().as_micros() as f64 / 1e6;
                tcp.write_all(&abcde_header(ts, frame.len())).await?;
                tcp.write_all(&frame).await
            }
        },
        sent,
    )
    .await;
}

/// Sends each frame of the feed in turn at its interval, until a send fails.
async fn every<F, Fut>(feed: Feed, mut send: F, sent: &AtomicU64)
where
    F: FnMut(Arc<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let frames: Vec<Arc<Vec<u8>>> = feed.frames.into_iter().map(Arc::new).collect();
    if frames.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(feed.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for frame in frames.iter().cycle() {
        tick.tick().await;
        if send(frame.clone()).await.is_err() {
            return;
        }
        sent.fetch_add(1, Relaxed);
    }
}

/// Connects as `sendvid.py` does: on failure, again a second later (bounded by `IO_TIMEOUT`).
async fn connect_retrying(to: SocketAddr) -> anyhow::Result<TcpStream> {
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        match timeout(IO_TIMEOUT, TcpStream::connect(to)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            _ if Instant::now() + Duration::from_secs(1) < until => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("connecting to {to}")),
            Err(_) => anyhow::bail!("no connection to {to} within {IO_TIMEOUT:?}"),
        }
    }
}
