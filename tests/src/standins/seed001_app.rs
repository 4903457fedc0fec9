//! Seed 001's app behind NAT, as its code does it: one UDP socket, `sendto(b"Request",
//! server)` once, then `recvfrom` in a loop, each datagram one whole JPEG that it decodes
//! (the seed uses `cv2.imdecode`; here turbojpeg). It never acks and never sends again unless
//! told to ([`SeedApp::renew`], what a NAT-aware app does to keep its mapping and its place).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use surv_proto::FrameTag;
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

/// Room for any datagram (the seed reads with `recvfrom(800*800)`; UDP carries at most this).
const RECV_BYTES: usize = surv_proto::MAX_UDP_PAYLOAD_BYTES + 1;

/// One frame as the app sees it.
#[derive(Debug, Clone)]
pub struct AppFrame {
    /// surv's tag in the frame (the seed app ignores it; tests use it to count).
    pub seq: Option<u64>,
    pub width: usize,
    pub height: usize,
    /// Where it came from: the server's request port, or the app's NAT would drop it.
    pub from: SocketAddr,
    pub bytes: usize,
}

/// The app: a socket on `ip` (any 127.0.0.x address stands for a different host).
pub struct SeedApp {
    pub socket: UdpSocket,
    server: SocketAddr,
    buf: Vec<u8>,
}

impl SeedApp {
    /// Binds on `ip`, port chosen by the system, and sends `Request` once (or `Request
    /// <token>` for a server with `--token`).
    pub async fn start(
        ip: IpAddr,
        server: SocketAddr,
        token: Option<&str>,
    ) -> anyhow::Result<SeedApp> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("binding the app's socket on {ip}"))?;
        let app = SeedApp {
            socket,
            server,
            buf: vec![0; RECV_BYTES],
        };
        app.send_request(token).await?;
        Ok(app)
    }

    async fn send_request(&self, token: Option<&str>) -> anyhow::Result<()> {
        let request = match token {
            None => b"Request".to_vec(),
            Some(t) => format!("Request {t}").into_bytes(),
        };
        self.socket
            .send_to(&request, self.server)
            .await
            .context("sending Request")?;
        Ok(())
    }

    /// Sends `Request` again: the server renews the app.
    pub async fn renew(&self, token: Option<&str>) -> anyhow::Result<()> {
        self.send_request(token).await
    }

    /// The app's own address, as the server sees it (no NAT on loopback).
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket")
    }

    /// The next datagram, decoded as a JPEG; an error if none comes within `wait` or it is no
    /// JPEG.
    pub async fn recv_frame(&mut self, wait: Duration) -> anyhow::Result<AppFrame> {
        match self.try_recv_frame(wait).await? {
            Some(frame) => Ok(frame),
            None => bail!("no frame within {wait:?}"),
        }
    }

    /// The next datagram within `wait`, decoded as a JPEG; `None` if none came.
    pub async fn try_recv_frame(&mut self, wait: Duration) -> anyhow::Result<Option<AppFrame>> {
        let Ok(received) = timeout(wait, self.socket.recv_from(&mut self.buf)).await else {
            return Ok(None);
        };
        let (n, from) = received.context("receiving")?;
        let data = &self.buf[..n];
        let image = turbojpeg::decompress(data, turbojpeg::PixelFormat::RGB)
            .with_context(|| format!("a {n}-byte datagram from {from} does not decode as JPEG"))?;
        Ok(Some(AppFrame {
            seq: FrameTag::decode(data).ok().map(|t| t.seq),
            width: image.width,
            height: image.height,
            from,
            bytes: n,
        }))
    }

    /// Every frame that arrives within `span`.
    pub async fn frames_for(&mut self, span: Duration) -> anyhow::Result<Vec<AppFrame>> {
        let until = Instant::now() + span;
        let mut frames = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.try_recv_frame(left).await? {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        Ok(frames)
    }

    /// Whether anything arrives within `wait` (what a refused or expired app should not see).
    pub async fn hears_anything(&mut self, wait: Duration) -> bool {
        timeout(wait, self.socket.recv_from(&mut self.buf))
            .await
            .is_ok()
    }
}
