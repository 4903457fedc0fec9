//! The memory run (`--churn-secs`): viewers keep leaving and joining, and the server's RSS and
//! CPU are printed periodically, then the growth over the run.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::procfs::{cpu_us, rss_kib};
use crate::receiver::Shared;
use crate::server::ServerProc;
use crate::viewers::{register_all, Viewer, MAX_VIEWER_INDEX};
use crate::Args;

/// The memory run: `churn_per_sec` viewers leave and as many new ones join every second, for
/// `secs`; prints the server's RSS every `report_secs`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    args: &Args,
    server: &ServerProc,
    shared: &Shared,
    end_tx: &mpsc::Sender<usize>,
    viewers: &mut Vec<Viewer>,
    secs: f64,
    rss_base_kib: u64,
    udp: &std::net::UdpSocket,
) -> anyhow::Result<()> {
    let pid = server.pid();
    let start = Instant::now();
    let total = Duration::from_secs_f64(secs);
    let report = Duration::from_secs_f64(args.report_secs.max(1.0));
    let mut next_report = start;
    let mut next_index = args.viewers;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut joined, mut left, mut failed) = (0usize, 0usize, 0usize);
    let mut rss_samples = Vec::new();
    let mut cpu_last = (cpu_us(&pid)?, Instant::now());
    println!(
        "churn: {} viewers, {} replaced per second, {secs:.0} s; idle server rss {:.1} MiB",
        viewers.len(),
        args.churn_per_sec,
        rss_base_kib as f64 / 1024.0
    );
    while start.elapsed() < total {
        let tick = Instant::now();
        let mut leaving = Vec::new();
        for k in 0..args.churn_per_sec.min(viewers.len()) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = viewers.swap_remove((rng % viewers.len() as u64) as usize);
            if k % 2 == 0 {
                let _ = end_tx.send(v.index);
            }
            leaving.push(v);
        }
        left += leaving.len();
        let in_use: std::collections::HashSet<usize> = viewers.iter().map(|v| v.index).collect();
        let mut fresh = Vec::new();
        while fresh.len() < leaving.len() {
            next_index = (next_index + 1) % (MAX_VIEWER_INDEX - 1);
            if !in_use.contains(&next_index) && !leaving.iter().any(|v| v.index == next_index) {
                fresh.push(next_index);
            }
        }
        // Give the `end`s a moment to go out before the TCP connections close.
        std::thread::sleep(Duration::from_millis(50));
        drop(leaving);
        let (new, bad) = register_all(server.addr, &fresh, udp, args.seed_percent, &shared.keys);
        joined += new.len();
        failed += bad.len();
        viewers.extend(new);
        if tick >= next_report {
            next_report += report;
            let rss = rss_kib(&pid)?;
            let cpu = cpu_us(&pid)?;
            let cpu_pct =
                100.0 * (cpu - cpu_last.0) as f64 / 1e6 / cpu_last.1.elapsed().as_secs_f64();
            cpu_last = (cpu, Instant::now());
            rss_samples.push(rss);
            println!(
                "t={:>4.0}s live={} joined={joined} left={left} failed={failed} server rss={:.1}MiB cpu={cpu_pct:.0}% datagrams={}",
                start.elapsed().as_secs_f64(),
                viewers.len(),
                rss as f64 / 1024.0,
                shared.datagrams.load(Relaxed),
            );
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let first = rss_samples
        .get(1)
        .or(rss_samples.first())
        .copied()
        .unwrap_or(0);
    let last = rss_samples.last().copied().unwrap_or(0);
    let max = rss_samples.iter().copied().max().unwrap_or(0);
    println!(
        "churn done: {:.0} s, joined={joined} left={left} failed={failed}; rss after the first report {:.1} MiB, at the end {:.1} MiB, max {:.1} MiB, growth {:+.1} MiB",
        start.elapsed().as_secs_f64(),
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        max as f64 / 1024.0,
        (last as f64 - first as f64) / 1024.0
    );
    Ok(())
}
