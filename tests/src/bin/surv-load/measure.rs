//! The run against surv-server: start it, register the viewers, let them stream, then measure
//! a window of frames and print the one line of figures (or hand over to the churn run).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::bail;
use surv_proto::Form;

use crate::procfs::{cpu_us, rss_kib, threads_cpu_ns};
use crate::push::{PushKind, Pusher};
use crate::receiver::{receive_loop, Shared};
use crate::server::{log_field, ServerProc};
use crate::viewers::{form_of, register_all};
use crate::{churn, Args, WAIT_LIMIT};

/// Runs the server with `args.viewers` viewers whose frames arrive on `udp`.
pub fn run(args: &Args, udp: &UdpSocket) -> anyhow::Result<()> {
    let server = ServerProc::start(args)?;
    let pid = server.pid();
    let camera = match (args.push, server.camera_to) {
        (Some(kind), Some(to)) => Some(Pusher::start(kind, to.into(), args.size, args.fps)?),
        _ => None,
    };
    // The server with its frames but no viewer: what each viewer adds is measured from here.
    std::thread::sleep(Duration::from_millis(1000));
    let rss_base_kib = rss_kib(&pid)?;
    // A push run: what ingesting costs (read, check, tag, publish) with no viewer to send to.
    let ingest = match &camera {
        // As long as the measured run (the /proc ticks figure beside it counts in 10 ms steps).
        Some(cam) => Some(ingest_cpu_us_per_frame(
            &pid,
            args.seconds.max(3.0),
            || cam.sent.load(Relaxed),
        )?),
        None => None,
    };

    let shared = Arc::new(Shared {
        path_kbps: args.report_path_kbps,
        ..Shared::default()
    });
    shared.keys.mtu.store(args.mtu, Relaxed);
    let (end_tx, end_rx) = mpsc::channel();
    let receiver = {
        let shared = shared.clone();
        let udp = udp.try_clone()?;
        let seed_percent = args.seed_percent;
        let delay = crate::delay::Jitter::from_ms(args.delay_ms, args.jitter_ms)
            .ok()
            .flatten();
        std::thread::Builder::new()
            .name("load-recv".into())
            .spawn(move || receive_loop(&udp, &shared, seed_percent, &end_rx, delay))?
    };

    let t_reg = Instant::now();
    let indices: Vec<usize> = (0..args.viewers).collect();
    let (mut viewers, failed) =
        register_all(server.addr, &indices, udp, args.seed_percent, &shared.keys);
    let reg_secs = t_reg.elapsed().as_secs_f64();
    if !failed.is_empty() {
        eprintln!(
            "surv-load: {} registrations failed, e.g. {}",
            failed.len(),
            failed[0]
        );
    }

    if let Some(churn_secs) = args.churn_secs {
        let result = churn::run(
            args,
            &server,
            &shared,
            &end_tx,
            &mut viewers,
            churn_secs,
            rss_base_kib,
            udp,
        );
        shared.stop.store(true, Relaxed);
        let _ = receiver.join();
        server.stop();
        return result;
    }

    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    let window = measure_window(args, &pid, &shared.max_seq, &shared.lo, &shared.hi)?;
    let (frames, secs, rss_kib_loaded) = (window.frames, window.secs, window.rss_kib);
    // Late datagrams of the last measured frames still count.
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    let tallies = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    drop(viewers);
    let camera_sent = camera
        .as_ref()
        .map(|c| (c.sent.load(Relaxed), c.frame_bytes));
    if let Some(cam) = camera {
        cam.stop()?;
    }
    let log = server.stop();
    let bytes = shared.bytes.load(Relaxed);

    let n = args.viewers;
    let mut counts: Vec<u32> = (0..n).map(|i| tallies.per_viewer[i]).collect();
    counts.sort_unstable();
    let worst = counts[0];
    let median = counts[n / 2];
    let delivered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let measured_secs = frames as f64 / f64::from(args.fps);
    let (srv_cpu, gen_cpu) = (window.server_cpu_us, window.gen_cpu_us);
    let captured = log_field(&log, "captured").unwrap_or(0.0);
    // `encoded` before it was named `published`: old and new servers are measured alike.
    let published = log_field(&log, "published")
        .or_else(|| log_field(&log, "encoded"))
        .unwrap_or(0.0);
    let passed_through = log_field(&log, "passed_through").unwrap_or(0.0);
    // Frames published that the server encoded (not those it passed through as they came).
    let encoded = published - passed_through;
    let attempts = log_field(&log, "encode_attempts").unwrap_or(0.0);
    let encode_us = log_field(&log, "encode_us").unwrap_or(0.0);
    let (w, h) = args.size;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "viewers={n} ({} seed) size={w}x{h}@{} ({} B/frame) measured={:.1}s | fps worst={:.1} median={:.1} | frames to worst viewer={:.2}% | server cpu/frame={:.2}us ({:.0}% of a core) gen cpu={:.0}% | rss={:.1}MiB ({:.1}MiB idle) per viewer={:.1}KiB | latency p50={:.2}ms p99={:.2}ms (kernel rx; app p99={:.2}ms) encode={:.2}ms | encodes/captured={:.3} (compress calls {:.3}) | registered in {reg_secs:.1}s, {} failed",
        (0..n).filter(|&i| form_of(i, args.seed_percent) == Form::Seed).count(),
        args.fps,
        bytes / delivered.max(1),
        measured_secs,
        f64::from(worst) / measured_secs,
        f64::from(median) / measured_secs,
        100.0 * f64::from(worst) / frames as f64,
        srv_cpu as f64 / delivered.max(1) as f64,
        100.0 * srv_cpu as f64 / 1e6 / secs,
        100.0 * gen_cpu as f64 / 1e6 / secs,
        rss_kib_loaded as f64 / 1024.0,
        rss_base_kib as f64 / 1024.0,
        (rss_kib_loaded.saturating_sub(rss_base_kib)) as f64 / n as f64,
        ms(tallies.latency_us.value_at_quantile(0.5)),
        ms(tallies.latency_us.value_at_quantile(0.99)),
        ms(tallies.app_latency_us.value_at_quantile(0.99)),
        encode_us / encoded.max(1.0) / 1000.0,
        encoded / captured.max(1.0),
        attempts / captured.max(1.0),
        failed.len(),
    );
    // Per form: the worst viewer's share of the frames, and the longest wait for a frame at any
    // viewer of that form within the measured window, its edges included (what loss and the
    // ack window cost).
    for form in [Form::V1, Form::Seed] {
        let of_form: Vec<usize> = (0..n)
            .filter(|&i| form_of(i, args.seed_percent) == form)
            .collect();
        if of_form.is_empty() {
            continue;
        }
        let worst = of_form
            .iter()
            .map(|&i| tallies.per_viewer[i])
            .min()
            .unwrap_or(0);
        let gap_ms = of_form
            .iter()
            .map(|&i| tallies.longest_wait_ns(i))
            .max()
            .unwrap_or(0) as f64
            / 1e6;
        println!(
            "form={}: viewers={} worst share={:.1}% longest wait for a frame={gap_ms:.0}ms",
            form.as_str(),
            of_form.len(),
            100.0 * f64::from(worst) / frames as f64,
        );
    }
    if let (Some(ingest), Some((sent, frame_bytes))) = (ingest, camera_sent) {
        println!(
            "push={:?}: camera sent {sent} frames of {frame_bytes} B | server cpu/ingested frame with no viewer={ingest} | passed through {:.1}% of captured, rejected {}",
            args.push.unwrap_or(PushKind::Tcp),
            100.0 * passed_through / captured.max(1.0),
            log_field(&log, "rejected").unwrap_or(0.0),
        );
    }
    if tallies.untagged + tallies.ack_errors > 0 {
        eprintln!(
            "surv-load: {} untagged datagrams, {} ack send errors",
            tallies.untagged, tallies.ack_errors
        );
    }
    Ok(())
}

/// The server's CPU per frame its cameras sent, over a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ingest {
    /// From the threads' schedstat (ns), µs per frame.
    pub us: f64,
    /// From /proc/<pid>/stat (10 ms ticks), µs per frame: what this tool printed before.
    pub ticks_us: f64,
    /// Threads that ended inside the window: their CPU is missing from `us`.
    pub threads_ended: usize,
}

impl std::fmt::Display for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}us (schedstat; /proc ticks: {:.1}us",
            self.us, self.ticks_us
        )?;
        if self.threads_ended > 0 {
            write!(f, "; {} threads ended: undercounted", self.threads_ended)?;
        }
        f.write_str(")")
    }
}

/// The server's (`pid`) CPU per frame its cameras sent (`sent`: frames so far) over `secs`.
pub(crate) fn ingest_cpu_us_per_frame(
    pid: &str,
    secs: f64,
    sent: impl Fn() -> u64,
) -> anyhow::Result<Ingest> {
    let (threads0, cpu0, sent0) = (threads_cpu_ns(pid), cpu_us(pid)?, sent());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (threads1, cpu1, sent1) = (threads_cpu_ns(pid), cpu_us(pid)?, sent());
    let frames = sent1.saturating_sub(sent0).max(1) as f64;
    // Threads that started inside the window count from 0.
    let ns: u64 = threads1
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(threads0.get(tid).copied().unwrap_or(0)))
        .sum();
    Ok(Ingest {
        us: ns as f64 / 1e3 / frames,
        ticks_us: cpu1.saturating_sub(cpu0) as f64 / frames,
        threads_ended: threads0
            .keys()
            .filter(|t| !threads1.contains_key(*t))
            .count(),
    })
}

/// Waits (bounded by `WAIT_LIMIT`) until `cond` holds.
pub(crate) fn wait_until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    wait_longer_until(what, Duration::ZERO, cond)
}

/// The `p` quantile (0..=1) of `sorted` by nearest rank, rounding down: element ⌊len × p⌋,
/// the last at most; NaN for no values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// [`wait_until`], allowing `extra` time beyond [`WAIT_LIMIT`] (for a wait that spans the
/// measured window).
pub(crate) fn wait_longer_until(
    what: &str,
    extra: Duration,
    cond: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let until = Instant::now() + WAIT_LIMIT + extra;
    while !cond() {
        if Instant::now() > until {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The measured window and what the server and the generator spent in it.
pub(crate) struct Window {
    /// How many frames it spans (`--fps` × `--seconds`).
    pub frames: u64,
    /// CPU of the server and of this generator over the window, µs; its wall time, s.
    pub server_cpu_us: u64,
    pub gen_cpu_us: u64,
    pub secs: f64,
    /// The server's RSS at its end.
    pub rss_kib: u64,
}

/// Measures the next `--fps` × `--seconds` frames, from two past the newest seen (`max_seq`):
/// publishes the window to the receivers (`lo`, `hi`), waits for its first and last frame, and
/// samples the server's (`pid`) and this process's CPU between them.
pub(crate) fn measure_window(
    args: &Args,
    pid: &str,
    max_seq: &AtomicU64,
    lo_out: &AtomicU64,
    hi_out: &AtomicU64,
) -> anyhow::Result<Window> {
    let gen_pid = std::process::id().to_string();
    let frames = (f64::from(args.fps) * args.seconds).round().max(1.0) as u64;
    let lo = max_seq.load(Relaxed) + 2;
    lo_out.store(lo, Relaxed);
    hi_out.store(lo + frames - 1, Relaxed);
    wait_until("the first measured frame", || max_seq.load(Relaxed) >= lo)?;
    let (srv0, gen0, t0) = (cpu_us(pid)?, cpu_us(&gen_pid)?, Instant::now());
    let window = Duration::from_secs_f64(args.seconds);
    wait_longer_until("the last measured frame", window, || {
        max_seq.load(Relaxed) > lo + frames - 1
    })?;
    let (srv1, gen1, secs) = (cpu_us(pid)?, cpu_us(&gen_pid)?, t0.elapsed().as_secs_f64());
    Ok(Window {
        frames,
        server_cpu_us: srv1.saturating_sub(srv0),
        gen_cpu_us: gen1.saturating_sub(gen0),
        secs,
        rss_kib: rss_kib(pid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_by_nearest_rank_rounding_down() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 6.0);
        assert_eq!(percentile(&v, 0.99), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
