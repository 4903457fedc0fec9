//! The camera of a push-source run (`--push tcp|udp`): sends JPEGs to the server's
//! `tcp-listen://` source (seed 004's framing: 4-byte big-endian length, then the JPEG) or its
//! `udp://` source (seed 001: one JPEG per datagram) at the run's frame rate, as a Pi would.
//!
//! The frames are made once, before the run (a few different gradient pictures, so that the
//! server's passthrough handles realistic JPEGs of the run's size; each camera of a
//! many-cameras run its own, marked with its number); the pusher's pacing is
//! absolute (frame n at start + n/fps), so a late frame does not shift the ones after it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use surv_tests::fixtures::Subsamp;
use surv_tests::{test_jpeg, Picture};

use crate::WAIT_LIMIT;

/// Different pictures a camera sends, over and over.
const FRAMES: u64 = 8;

/// How the camera pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PushKind {
    /// Length-prefixed JPEGs over one TCP connection to `tcp-listen://`.
    Tcp,
    /// One JPEG per datagram to `udp://`.
    Udp,
}

impl PushKind {
    /// The server's `--source` for a camera pushing to `port` on loopback.
    pub fn source_arg(self, port: u16) -> String {
        match self {
            PushKind::Tcp => format!("tcp-listen://127.0.0.1:{port}"),
            PushKind::Udp => format!("udp://127.0.0.1:{port}"),
        }
    }
}

/// A running camera.
pub struct Pusher {
    stop: Arc<AtomicBool>,
    /// Frames sent so far.
    pub sent: Arc<AtomicU64>,
    /// Bytes of one frame, on average.
    pub frame_bytes: usize,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Pusher {
    /// Starts pushing `width × height` JPEGs at `fps` to the server's source on `to`.
    pub fn start(
        kind: PushKind,
        to: SocketAddr,
        (width, height): (u32, u32),
        fps: u32,
    ) -> anyhow::Result<Pusher> {
        Pusher::start_with(kind, to, (width, height), fps, None)
    }

    /// [`Pusher::start`] as camera `camera` of a many-cameras run: pictures of its own, each
    /// marked with its number (see `cameras.rs`).
    pub fn start_marked(
        kind: PushKind,
        to: SocketAddr,
        size: (u32, u32),
        fps: u32,
        camera: usize,
    ) -> anyhow::Result<Pusher> {
        Pusher::start_with(kind, to, size, fps, Some(camera))
    }

    fn start_with(
        kind: PushKind,
        to: SocketAddr,
        (width, height): (u32, u32),
        fps: u32,
        camera: Option<usize>,
    ) -> anyhow::Result<Pusher> {
        let frames: Vec<Vec<u8>> = (0..FRAMES)
            .map(|i| {
                let jpeg = test_jpeg(
                    width as usize,
                    height as usize,
                    Picture::Gradient(camera.unwrap_or(0) as u64 * FRAMES + i),
                    80,
                    Subsamp::Sub2x2,
                );
                match camera {
                    Some(c) => crate::cameras::marked(&jpeg, c),
                    None => jpeg,
                }
            })
            .collect();
        let frame_bytes = frames.iter().map(Vec::len).sum::<usize>() / frames.len();
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::Builder::new()
                .name("load-camera".into())
                .spawn(move || push(kind, to, &frames, fps, &stop, &sent))?
        };
        Ok(Pusher {
            stop,
            sent,
            frame_bytes,
            thread: Some(thread),
        })
    }

    /// Stops the camera; an error it met on the way is returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the camera thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Sends one JPEG the way the camera's wire wants it.
type SendFrame = dyn FnMut(&[u8]) -> std::io::Result<()>;

fn push(
    kind: PushKind,
    to: SocketAddr,
    frames: &[Vec<u8>],
    fps: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
    let mut send: Box<SendFrame> = match kind {
        PushKind::Tcp => {
            let until = Instant::now() + WAIT_LIMIT;
            let mut tcp = loop {
                match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > until => {
                        return Err(e).context(format!("the camera cannot reach {to}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            tcp.set_nodelay(true)?;
            // One write per frame, length and JPEG together, as seed 004's sendvid.py does
            // (`sendall(struct.pack('>I', len(message)) + message)`).
            let mut message = Vec::new();
            Box::new(move |jpeg| {
                let len = u32::try_from(jpeg.len()).expect("a test frame is under 4 GiB");
                message.clear();
                message.extend_from_slice(&len.to_be_bytes());
                message.extend_from_slice(jpeg);
                tcp.write_all(&message)
            })
        }
        PushKind::Udp => {
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            Box::new(move |jpeg| udp.send_to(jpeg, to).map(|_| ()))
        }
    };
    let start = Instant::now();
    let mut n: u32 = 0;
    while !stop.load(Relaxed) {
        let due = start + interval * n;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send(&frames[n as usize % frames.len()]).context("the camera's send failed")?;
        sent.fetch_add(1, Relaxed);
        n = n.wrapping_add(1);
    }
    Ok(())
}
