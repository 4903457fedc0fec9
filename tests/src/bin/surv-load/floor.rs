//! `--ingest-floor`: what the same pushed stream costs a bare reader on this machine, measured
//! in the same run as the server's ingest figure, so the two can be compared as a ratio.
//!
//! The reader is the least a server built on tokio does per pushed frame: a runtime like the
//! server's (multi-threaded, two workers), one task reading `[4-byte length][JPEG]` from the
//! camera's connection and copying each JPEG once (as surv copies it behind its tag). No
//! checks, no timers, no channels. Its threads' CPU (schedstat) per frame the camera sent is
//! the floor: the wake-ups, the TCP receive and the copy that any such server pays.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use crate::push::{PushKind, Pusher};

/// The name of the floor runtime's threads, how their CPU is told from the rest of this process.
const THREAD_NAME: &str = "floor-rt";

/// The floor reader, running until dropped.
struct Floor {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    frames: Arc<AtomicU64>,
}

impl Floor {
    fn start() -> anyhow::Result<Floor> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let frames = Arc::new(AtomicU64::new(0));
        let counted = frames.clone();
        rt.spawn(async move {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut len = [0u8; 4];
            let mut jpeg = Vec::new();
            while tcp.read_exact(&mut len).await.is_ok() {
                jpeg.resize(u32::from_be_bytes(len) as usize, 0);
                if tcp.read_exact(&mut jpeg).await.is_err() {
                    return;
                }
                std::hint::black_box(jpeg.clone());
                counted.fetch_add(1, Relaxed);
            }
        });
        Ok(Floor { rt, addr, frames })
    }

    /// CPU time of the floor runtime's threads so far, ns.
    fn cpu_ns() -> u64 {
        crate::procfs::named_threads_cpu_ns(&std::process::id().to_string(), THREAD_NAME)
    }
}

/// Plays one camera at `size`@`fps` to the floor reader for `secs` and returns the reader's
/// CPU per frame, µs.
pub fn ingest_floor_us(size: (u32, u32), fps: u32, secs: f64) -> anyhow::Result<f64> {
    let floor = Floor::start()?;
    let camera = Pusher::start(PushKind::Tcp, floor.addr, size, fps)?;
    std::thread::sleep(Duration::from_secs(1));
    let (ns0, frames0) = (Floor::cpu_ns(), floor.frames.load(Relaxed));
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (ns1, frames1) = (Floor::cpu_ns(), floor.frames.load(Relaxed));
    camera.stop().context("the floor's camera")?;
    floor.rt.shutdown_timeout(Duration::from_secs(1));
    let frames = frames1.saturating_sub(frames0);
    anyhow::ensure!(frames > 0, "the floor reader got no frame");
    Ok(ns1.saturating_sub(ns0) as f64 / 1e3 / frames as f64)
}

/// The name of the send floor's writer thread.
const WRITER_NAME: &str = "floor-tx";
/// The send floor's packets: interleaved RTP as surv writes it (`$`, channel, length, a
/// 12-byte header, then up to this much payload).
const FLOOR_PAYLOAD_BYTES: usize = 1400;
/// The kernel's send buffer surv sets on an RTSP connection.
const FLOOR_SEND_BUFFER_BYTES: usize = 256 * 1024;

/// What the send floor measured.
pub struct SendFloor {
    /// The writer thread's CPU, % of a core.
    pub pct: f64,
    /// Its CPU per frame delivered to one reader, µs.
    pub us_per_frame: f64,
}

/// `--send-floor` over TCP: the least any server pays to send `frame_bytes` a frame at `fps`
/// to `n` loopback TCP readers: one writer thread that does nothing but one `writev` per frame
/// per reader (the frame as interleaved RTP packets, from one shared buffer), to readers like
/// the tool's players (a tokio runtime of `reader_threads` threads, a task per connection).
/// Its thread's CPU over `secs` (schedstat; the loopback receive the kernel runs in the
/// sender's context is in it, as it is in the server's).
pub fn tcp_send_floor(
    n: usize,
    frame_bytes: usize,
    fps: u32,
    secs: f64,
    reader_threads: usize,
) -> anyhow::Result<SendFloor> {
    use std::io::{IoSlice, Write};
    use std::time::Instant;

    let rt = readers_runtime(reader_threads)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..n {
        let stop = stop.clone();
        rt.spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let mut buf = vec![0u8; 64 << 10];
            while !stop.load(Relaxed) {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
    listener.set_nonblocking(true)?;
    let until = Instant::now() + crate::WAIT_LIMIT;
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        match listener.accept() {
            Ok((tcp, _)) => {
                tcp.set_nonblocking(false)?;
                tcp.set_nodelay(true)?;
                socket2::SockRef::from(&tcp).set_send_buffer_size(FLOOR_SEND_BUFFER_BYTES)?;
                conns.push(tcp);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    Instant::now() < until,
                    "the floor's readers did not connect"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let payload = vec![0x5au8; frame_bytes.max(1)];
    let prefixes: Vec<[u8; 16]> = payload
        .chunks(FLOOR_PAYLOAD_BYTES)
        .map(|p| {
            let [hi, lo] = ((12 + p.len()) as u16).to_be_bytes();
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&[b'$', 0, hi, lo]);
            h[4] = 0x80;
            h
        })
        .collect();
    let floor = paced_writer(n, fps, secs, stop, move || {
        for mut tcp in &conns {
            let mut iovs: Vec<IoSlice<'_>> = prefixes
                .iter()
                .zip(payload.chunks(FLOOR_PAYLOAD_BYTES))
                .flat_map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)])
                .collect();
            let mut rest = &mut iovs[..];
            while !rest.is_empty() {
                let n = tcp.write_vectored(rest)?;
                IoSlice::advance_slices(&mut rest, n);
            }
        }
        Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    floor
}

/// `--send-floor` over UDP: as [`tcp_send_floor`], to `n` loopback UDP readers, the frame as
/// RTP datagrams (a 12-byte header and up to 1,400 bytes of payload each) sent as surv sends
/// them: one `sendmsg` with UDP segmentation offload per frame per reader, from one socket.
pub fn udp_send_floor(
    n: usize,
    frame_bytes: usize,
    fps: u32,
    secs: f64,
    reader_threads: usize,
) -> anyhow::Result<SendFloor> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    use surv_server::sys::{send_segments, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

    let rt = readers_runtime(reader_threads)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut dests = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        dests.push(socket.local_addr()?);
        let stop = stop.clone();
        rt.spawn(async move {
            let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else {
                return;
            };
            let mut buf = vec![0u8; 64 << 10];
            while !stop.load(Relaxed) {
                if socket.recv(&mut buf).await.is_err() {
                    return;
                }
            }
        });
    }
    let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let payload = vec![0x5au8; frame_bytes.max(1)];
    let header = [0x80u8, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let segment = 12 + FLOOR_PAYLOAD_BYTES;
    let per_send = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / segment);
    paced_writer(n, fps, secs, stop, move || {
        let packets: Vec<&[u8]> = payload.chunks(FLOOR_PAYLOAD_BYTES).collect();
        for dest in &dests {
            for run in packets.chunks(per_send) {
                let iovs: Vec<IoSlice<'_>> = run
                    .iter()
                    .flat_map(|p| [IoSlice::new(&header), IoSlice::new(p)])
                    .collect();
                let segmented = (run.len() > 1).then_some(segment as u16);
                // Any send refused (a full buffer included) ends the floor: a floor that
                // dropped frames would read low.
                send_segments(tx.as_raw_fd(), dest, &iovs, segmented)?;
            }
        }
        Ok(())
    })
}

/// The floor readers' runtime.
fn readers_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("floor-rx")
        .enable_all()
        .build()?)
}

/// Runs `send_frame` (a frame to each of the `n` readers) on one thread at `fps` for `secs`
/// (after a second to settle), then sets `stop`; the thread's CPU.
fn paced_writer(
    n: usize,
    fps: u32,
    secs: f64,
    stop: Arc<AtomicBool>,
    mut send_frame: impl FnMut() -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<SendFloor> {
    use std::time::Instant;

    let frames = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, frames) = (stop.clone(), frames.clone());
        std::thread::Builder::new().name(WRITER_NAME.into()).spawn(
            move || -> std::io::Result<()> {
                let start = Instant::now();
                let mut k = 0u32;
                while !stop.load(Relaxed) {
                    send_frame()?;
                    frames.fetch_add(1, Relaxed);
                    k += 1;
                    let next = start + Duration::from_secs(1) * k / fps.max(1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(())
            },
        )?
    };
    let cpu_ns =
        || crate::procfs::named_threads_cpu_ns(&std::process::id().to_string(), WRITER_NAME);
    std::thread::sleep(Duration::from_secs(1));
    let (ns0, f0, t0) = (cpu_ns(), frames.load(Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (ns1, f1, elapsed) = (cpu_ns(), frames.load(Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Relaxed);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's writer panicked"))?;
    written.context("the floor's writer")?;
    let delivered = f1.saturating_sub(f0) * n as u64;
    anyhow::ensure!(delivered > 0, "the floor's writer sent no frame");
    let ns = ns1.saturating_sub(ns0) as f64;
    Ok(SendFloor {
        pct: 100.0 * ns / 1e9 / elapsed,
        us_per_frame: ns / 1e3 / delivered as f64,
    })
}
