//! The yardstick (`--gst-baseline`): GStreamer's multiudpsink sends the same kind of stream to
//! the same viewer addresses, without acks, and its CPU per datagram is printed.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procfs::{cpu_us, rss_kib};
use crate::receiver::{receive_loop, Shared};
use crate::viewers::viewer_ip;
use crate::Args;

/// Runs `gst-launch-1.0 videotestsrc ! jpegenc ! multiudpsink` to --viewers addresses (the same
/// 127.2.x.y as the viewers, no acks), receives as for surv-server, and prints GStreamer's CPU
/// per delivered datagram.
pub fn run(args: &Args, udp: &UdpSocket, udp_port: u16) -> anyhow::Result<()> {
    let n = args.viewers;
    let clients: Vec<String> = (0..n)
        .map(|i| format!("{}:{udp_port}", viewer_ip(i)))
        .collect();
    let (w, h) = args.size;
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(["videotestsrc", "is-live=true", "!"])
        .arg(format!("video/x-raw,width={w},height={h},framerate={}/1", args.fps))
        .args(["!", "jpegenc", "!", "multiudpsink"])
        .arg(format!("clients={}", clients.join(",")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting gst-launch-1.0 (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)")?;
    let pid = child.id().to_string();
    let shared = Arc::new(Shared::default());
    let (_end_tx, end_rx) = mpsc::channel();
    let receiver = {
        let shared = shared.clone();
        let udp = udp.try_clone()?;
        std::thread::spawn(move || receive_loop(&udp, &shared, 0, &end_rx, None))
    };
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs + 1.0));
    let gen_pid = std::process::id().to_string();
    shared.count_untagged.store(true, Relaxed);
    let (c0, g0, t0) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let (c1, g1, secs) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, t0.elapsed().as_secs_f64());
    shared.count_untagged.store(false, Relaxed);
    let rss = rss_kib(&pid)?;
    shared.stop.store(true, Relaxed);
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let t = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let mut counts: Vec<u32> = t.per_viewer[..n].to_vec();
    counts.sort_unstable();
    let delivered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    println!(
        "gst multiudpsink viewers={n} size={w}x{h}@{} ({} B/frame) measured={secs:.1}s | fps worst={:.1} median={:.1} | gst cpu/datagram={:.2}us ({:.0}% of a core) gen cpu={:.0}% | rss={:.1}MiB",
        args.fps,
        shared.bytes.load(Relaxed) / delivered.max(1),
        f64::from(counts[0]) / secs,
        f64::from(counts[n / 2]) / secs,
        (c1 - c0) as f64 / delivered.max(1) as f64,
        100.0 * (c1 - c0) as f64 / 1e6 / secs,
        100.0 * (g1 - g0) as f64 / 1e6 / secs,
        rss as f64 / 1024.0,
    );
    Ok(())
}
