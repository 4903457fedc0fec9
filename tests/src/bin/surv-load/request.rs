//! The `--request N` run: N of seed 001's apps behind NAT. Each app is its own loopback address
//! (127.2.x.y, as viewers are) at the generator's one UDP port: it sends the datagram `Request`
//! once to the server's `--request-port` (from its own address, `IP_PKTINFO`), never acks, and
//! counts the tagged JPEG datagrams it gets back; the line of figures is as for viewers.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use surv_proto::FrameTag;
use surv_server::sys;

use crate::measure::measure_window;
use crate::mmsg::{RecvBatch, SendBatch};
use crate::procfs::rss_kib;
use crate::server::ServerProc;
use crate::viewers::{viewer_index, viewer_ip, MAX_VIEWER_INDEX};
use crate::Args;

/// Requests sent per `sendmmsg`, with a pause between batches (the server's socket buffer).
const SEND_BATCH: usize = 100;
const RECV_BATCH: usize = 256;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    max_seq: AtomicU64,
    lo: AtomicU64,
    hi: AtomicU64,
    bytes: AtomicU64,
}

/// Counts tagged datagrams per app (frames `lo..=hi`), no acks, until `stop`.
fn receive(sock: &UdpSocket, shared: &Shared) -> (Vec<u32>, u64) {
    let mut per_app = vec![0u32; MAX_VIEWER_INDEX];
    let mut untagged = 0u64;
    let mut rb = RecvBatch::new(RECV_BATCH);
    while !shared.stop.load(Relaxed) {
        sys::wait_readable(sock.as_raw_fd(), Duration::from_millis(20));
        for _ in 0..64 {
            let (lo, hi) = (shared.lo.load(Relaxed), shared.hi.load(Relaxed));
            let got = rb.recv(sock, |d| {
                let Some(index) = viewer_index(d.to) else {
                    return;
                };
                let Ok(tag) = FrameTag::decode(d.prefix) else {
                    untagged += 1;
                    return;
                };
                shared.max_seq.fetch_max(tag.seq, Relaxed);
                if hi != 0 && (lo..=hi).contains(&tag.seq) {
                    per_app[index] += 1;
                    shared.bytes.fetch_add(d.len as u64, Relaxed);
                }
            });
            if !matches!(got, Ok(n) if n == RECV_BATCH) {
                break;
            }
        }
    }
    (per_app, untagged)
}

pub fn run(args: &Args, udp: &UdpSocket) -> anyhow::Result<()> {
    let n = args.request.unwrap_or(0);
    let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let extra = ["--request-port".to_string(), port.to_string()];
    let server = ServerProc::start_with(args, n, &extra)?;
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(1000));
    let rss_idle = rss_kib(&pid)?;
    let shared = Arc::new(Shared::default());
    let receiver = {
        let (shared, udp) = (shared.clone(), udp.try_clone()?);
        std::thread::Builder::new()
            .name("load-request".into())
            .spawn(move || receive(&udp, &shared))?
    };
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut send_errors = 0;
    for batch in (0..n).collect::<Vec<_>>().chunks(SEND_BATCH) {
        let mut sb = SendBatch::default();
        for &i in batch {
            sb.push(b"Request", to, viewer_ip(i));
        }
        if sb.flush(udp).is_err() {
            send_errors += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));

    let window = measure_window(args, &pid, &shared.max_seq, &shared.lo, &shared.hi)?;
    let (frames, secs, rss_loaded) = (window.frames, window.secs, window.rss_kib);
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    let (per_app, untagged) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let joins = server
        .journal()
        .lines()
        .filter(|l| l.contains(" JOIN ") && l.contains("form=request"))
        .count();
    server.stop();

    let mut counts: Vec<u32> = per_app[..n].to_vec();
    counts.sort_unstable();
    let delivered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let measured_secs = frames as f64 / f64::from(args.fps);
    let srv_cpu = window.server_cpu_us as f64;
    let (w, h) = args.size;
    println!(
        "request apps={n} size={w}x{h}@{} ({} B/frame) measured={measured_secs:.1}s | fps worst={:.1} median={:.1} | frames to worst app={:.2}% median={:.2}% | server cpu/frame={:.2}us ({:.0}% of a core) gen cpu={:.0}% | rss={:.1}MiB ({:.1}MiB idle) | {joins} JOINs form=request, {untagged} untagged, {send_errors} send errors",
        args.fps,
        shared.bytes.load(Relaxed) / delivered.max(1),
        f64::from(counts[0]) / measured_secs,
        f64::from(counts[n / 2]) / measured_secs,
        100.0 * f64::from(counts[0]) / frames as f64,
        100.0 * f64::from(counts[n / 2]) / frames as f64,
        srv_cpu / delivered.max(1) as f64,
        100.0 * srv_cpu / 1e6 / secs,
        100.0 * window.gen_cpu_us as f64 / 1e6 / secs,
        rss_loaded as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
    );
    Ok(())
}
