//! `--ingest-floor`: what the same pushed stream costs a bare reader on this machine, measured
//! in the same run as the server's ingest figure, so the two can be compared as a ratio.
//!
//! The reader is the least a server built on tokio does per pushed frame: a runtime like the
//! server's (multi-threaded, two workers), one task reading `[4-byte length][JPEG]` from the
//! camera's connection and copying each JPEG once (as surv copies it behind its tag). No
//! checks, no timers, no channels. Its threads' CPU (schedstat) per frame the camera sent is
//! the floor: the wake-ups, the TCP receive and the copy that any such server pays.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
        let pid = std::process::id().to_string();
        let names = crate::procfs::thread_names(&pid);
        crate::procfs::threads_cpu_ns(&pid)
            .into_iter()
            .filter(|(tid, _)| names.get(tid).is_some_and(|n| n == THREAD_NAME))
            .map(|(_, ns)| ns)
            .sum()
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
