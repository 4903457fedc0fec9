//! The chaos run (`--chaos`): honest viewers stream while hostile floods hit the server one after
//! another (issue 11), and each flood gets its figures: the honest viewers' share of frames and
//! longest gap before, during and after it, the server's RSS and open file descriptors before,
//! at their peak and after, and whether the server's counters account for what was sent. At the
//! end: the server still up, no panic in its log, every JOIN in the journal with its LEAVE.
//!
//! The floods themselves are in `chaos_floods.rs` (registrations, datagrams, spoofed acks,
//! churn) and `chaos_http.rs` (the HTTP port); this file runs them and measures.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::bail;
use surv_tests::http;

use crate::chaos_floods::{self, Flood};
use crate::chaos_http;
use crate::http::free_port;
use crate::measure::wait_until;
use crate::procfs::{fd_count, fd_targets, rss_kib, udp_drops};
use crate::receiver::{receive_loop, Phases, Shared};
use crate::server::ServerProc;
use crate::viewers::register_all;
use crate::Args;

/// Phases: a baseline, then "during", "settle" and "after" for each flood, then the end marker.
const MAX_PHASES: usize = 2 + 3 * 16;
/// How long the baseline and each "after" phase are measured.
const CALM: Duration = Duration::from_secs(5);
/// After a flood and before its "after" phase: the server's deadlines (registration 5 s,
/// HTTP headers 10 s) run out for what the flood left, and counters settle.
const SETTLE: Duration = Duration::from_secs(3);
/// Room in the server for the churn's viewers and killed clients, beyond the honest ones.
pub const CHURN_WATCHERS: usize = 400;

/// What a flood run hands to each flood.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub server: SocketAddrV4,
    pub http: SocketAddrV4,
    pub request: SocketAddrV4,
    pub shared: &'a Shared,
    pub udp: &'a UdpSocket,
    pub end_tx: &'a mpsc::Sender<usize>,
    pub pid: String,
    /// `--chaos-scale`: 1.0 is the full figures.
    pub scale: f64,
}

impl Ctx<'_> {
    /// `full` scaled by `--chaos-scale`, at least 1.
    pub fn scaled(&self, full: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(1)
    }

    /// The server's UDP ports frames came from.
    pub fn server_udp_ports(&self) -> Vec<u16> {
        self.shared
            .server_ports
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The server's state at one moment: memory, descriptors, counters.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub rss_kib: u64,
    pub fds: usize,
    /// `/metrics` counters and gauges, by name (without the `surv_` prefix).
    pub metrics: HashMap<String, f64>,
    /// Datagrams the kernel dropped at the server's UDP sockets (their receive queues full).
    pub kernel_drops: u64,
}

impl Reading {
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(f64::NAN)
    }
}

/// A GET on loopback within `limit`, a body of at most 4 MiB: the status code and body.
pub fn http_get(to: SocketAddrV4, path: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let limits = http::Limits::new(limit, 4 << 20);
    let r = http::blocking(http::get(SocketAddr::V4(to), path, limits))?;
    Ok((r.status, r.text().into_owned()))
}

/// `/metrics` as name → value (`surv_` prefix and `_total` suffix removed; labelled samples keep
/// their labels, e.g. `refusals{reason="invalid"}`).
pub fn metrics(http: SocketAddrV4) -> anyhow::Result<HashMap<String, f64>> {
    let (code, body) = http_get(http, "/metrics", Duration::from_secs(15))?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let name = name.strip_prefix("surv_").unwrap_or(name);
            let name = match name.split_once('{') {
                Some((n, labels)) => format!("{}{{{labels}", n.trim_end_matches("_total")),
                None => name.trim_end_matches("_total").to_owned(),
            };
            Some((name, value.parse().ok()?))
        })
        .collect())
}

fn read(pid: &str, http: SocketAddrV4) -> anyhow::Result<Reading> {
    Ok(Reading {
        rss_kib: rss_kib(pid)?,
        fds: fd_count(pid),
        metrics: metrics(http)?,
        kernel_drops: udp_drops(pid),
    })
}

/// Samples the server's RSS and descriptors every 100 ms until stopped: the peak during a flood.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    fn start(pid: &str) -> PeakSampler {
        let (stop, rss, fds) = (Arc::default(), Arc::default(), Arc::default());
        let thread = {
            let (stop, rss, fds, pid): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>, String) = (
                Arc::clone(&stop),
                Arc::clone(&rss),
                Arc::clone(&fds),
                pid.to_owned(),
            );
            // Bounded: a flood run is minutes; the sampler stops with it.
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(3600);
                while !stop.load(Relaxed) && Instant::now() < until {
                    rss.fetch_max(rss_kib(&pid).unwrap_or(0), Relaxed);
                    fds.fetch_max(fd_count(&pid) as u64, Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        PeakSampler {
            stop,
            rss,
            fds,
            thread: Some(thread),
        }
    }

    /// Stops it: peak RSS (KiB) and descriptors.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.rss.load(Relaxed), self.fds.load(Relaxed))
    }
}

/// The honest viewers' figures over phase `k`: worst and median share of its frames, longest gap.
fn phase_line(phases: &Phases, k: usize, viewers: usize) -> String {
    let Some((lo, hi)) = phases.span(k) else {
        return "no frames".into();
    };
    let frames = hi.saturating_sub(lo).max(1);
    let mut shares: Vec<f64> = (0..viewers)
        .map(|v| 100.0 * phases.of(k, v).0 as f64 / frames as f64)
        .collect();
    shares.sort_by(f64::total_cmp);
    let gap_ms = (0..viewers).map(|v| phases.of(k, v).1).max().unwrap_or(0) as f64 / 1e6;
    format!(
        "{frames} frames: worst viewer {:.2}%, median {:.2}%, longest gap {gap_ms:.0} ms",
        shares[0],
        shares[viewers / 2]
    )
}

/// Runs the chaos run: see the file's head.
pub fn run(args: &Args, udp: &UdpSocket) -> anyhow::Result<()> {
    let (http_port, request_port) = (free_port()?, free_port()?);
    let extra = [
        "--http-port".to_string(),
        http_port.to_string(),
        "--request-port".to_string(),
        request_port.to_string(),
    ];
    let mut server = ServerProc::start_with(args, args.viewers + CHURN_WATCHERS, &extra)?;
    let pid = server.pid();
    let http = SocketAddrV4::new(*server.addr.ip(), http_port);
    let request = SocketAddrV4::new(*server.addr.ip(), request_port);
    let shared = Arc::new(Shared {
        phases: Phases::new(MAX_PHASES, args.viewers),
        ..Shared::default()
    });
    let (end_tx, end_rx) = mpsc::channel();
    let receiver = {
        let (shared, udp, seed_percent) = (shared.clone(), udp.try_clone()?, args.seed_percent);
        std::thread::Builder::new()
            .name("load-recv".into())
            .spawn(move || receive_loop(&udp, &shared, seed_percent, &end_rx, None))?
    };
    let honest: Vec<usize> = (0..args.viewers).collect();
    let (viewers, failed) =
        register_all(server.addr, &honest, udp, args.seed_percent, &shared.keys);
    if !failed.is_empty() {
        bail!("honest viewers not registered: {}", failed.join("; "));
    }
    wait_until("every honest viewer's first frame", || {
        shared.server_ports.lock().map_or(0, |p| p.len()) > 0
    })?;
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    let (w, h) = args.size;
    println!(
        "chaos: {} honest viewers ({}% seed form) at {w}x{h}@{}, scale {}; server pid {pid}, registration {}, http {http}, request {request}",
        args.viewers, args.seed_percent, args.fps, args.chaos_scale, server.addr
    );

    let ctx = Ctx {
        args,
        server: server.addr,
        http,
        request,
        shared: &shared,
        udp,
        end_tx: &end_tx,
        pid: pid.clone(),
        scale: args.chaos_scale,
    };
    let phases = &shared.phases;
    let mut k = 0;
    let next_phase = |k: &mut usize| {
        phases.start(*k, shared.max_seq.load(Relaxed) + 1);
        *k += 1;
    };
    next_phase(&mut k);
    std::thread::sleep(CALM);
    let baseline = read(&pid, http)?;
    let baseline_fds = fd_targets(&pid);
    next_phase(&mut k);
    println!(
        "baseline: {} | rss {:.1} MiB, {} fds",
        phase_line(phases, 0, args.viewers),
        baseline.rss_kib as f64 / 1024.0,
        baseline.fds
    );

    let mut before = baseline.clone();
    let mut failures = Vec::new();
    let floods: Vec<Flood> = chaos_floods::ALL
        .iter()
        .copied()
        .chain(chaos_http::ALL.iter().copied())
        .filter(|f| args.chaos_only.is_empty() || args.chaos_only.iter().any(|o| o == f.name))
        .collect();
    let rounds = args.chaos_rounds.max(1);
    if floods.len() * rounds * 3 + 2 > MAX_PHASES {
        bail!(
            "at most {} floods in all (--chaos-rounds × floods)",
            (MAX_PHASES - 2) / 3
        );
    }
    // Each round runs every flood again: memory that stays after the first round but does not
    // grow in the next is the allocator keeping its pages, not a leak.
    let mut rss_after_round = Vec::new();
    for flood in (0..rounds).flat_map(|_| floods.iter().copied()) {
        let during_k = k - 1;
        let sampler = PeakSampler::start(&pid);
        let t = Instant::now();
        let outcome = (flood.run)(&ctx, &before);
        let flood_secs = t.elapsed().as_secs_f64();
        next_phase(&mut k);
        std::thread::sleep(SETTLE);
        next_phase(&mut k);
        std::thread::sleep(CALM);
        let (peak_rss, peak_fds) = sampler.finish();
        let alive = server.alive();
        let after = match read(&pid, http) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: server not readable after: {e:#}", flood.name));
                before.clone()
            }
        };
        next_phase(&mut k);
        println!("== {} ({flood_secs:.1} s)", flood.name);
        match &outcome {
            Ok(report) => {
                for line in &report.lines {
                    println!("   {line}");
                }
                for check in &report.failed {
                    failures.push(format!("{}: {check}", flood.name));
                    println!("   NOT MET: {check}");
                }
            }
            Err(e) => {
                failures.push(format!("{}: {e:#}", flood.name));
                println!("   flood failed: {e:#}");
            }
        }
        println!(
            "   honest viewers: during {} | after {}",
            phase_line(phases, during_k, args.viewers),
            phase_line(phases, during_k + 2, args.viewers)
        );
        println!(
            "   server: {} | rss {:.1} → peak {:.1} → {:.1} MiB | fds {} → peak {peak_fds} → {}",
            if alive { "up" } else { "DOWN" },
            before.rss_kib as f64 / 1024.0,
            peak_rss as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            before.fds,
            after.fds
        );
        if !alive {
            failures.push(format!("{}: the server died", flood.name));
            break;
        }
        if after.fds > baseline.fds {
            let extra: Vec<String> = fd_targets(&pid)
                .into_iter()
                .filter(|t| !baseline_fds.contains(t))
                .collect();
            println!("   descriptors beyond the baseline's: {}", extra.join(", "));
            failures.push(format!(
                "{}: {} fds after, {} at baseline",
                flood.name, after.fds, baseline.fds
            ));
        }
        before = after;
        if flood.name == floods[floods.len() - 1].name {
            rss_after_round.push(before.rss_kib);
        }
    }
    if rounds > 1 {
        let mib: Vec<String> = rss_after_round
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        println!(
            "rss after each round: {} MiB (baseline {:.1} MiB)",
            mib.join(", "),
            baseline.rss_kib as f64 / 1024.0
        );
    }

    if args.chaos_trim {
        trim_report(&pid);
    }
    shared.stop.store(true, Relaxed);
    let _ = receiver.join();
    drop(viewers);
    let (log, journal) = server.stop_with_journal();
    let (joins, leaves, unmatched) = chaos_floods::journal_pairs(&journal);
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    let request_garbage = log
        .lines()
        .find(|l| l.contains("request port: final stats"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("garbage="))
        })
        .and_then(|v| v.parse::<u64>().ok());
    let request_sent = chaos_floods::REQUEST_PORT_SENT.load(Relaxed);
    if request_sent > 0 {
        println!(
            "request port: {request_sent} random datagrams sent, {} counted as garbage (the rest dropped by the kernel, counted with the flood's drops)",
            request_garbage.map_or("none".into(), |g| g.to_string())
        );
    }
    println!(
        "end: journal {joins} JOIN, {leaves} LEAVE, {unmatched} JOIN without its LEAVE; {panics} panics in the server's log"
    );
    if unmatched > 0 {
        failures.push(format!("{unmatched} JOIN without LEAVE"));
    }
    if panics > 0 {
        failures.push(format!("{panics} panics"));
    }
    match failures.is_empty() {
        true => println!("chaos: every check met"),
        false => println!("chaos: NOT MET: {}", failures.join("; ")),
    }
    Ok(())
}

/// `--chaos-trim`: asks the server's allocator (glibc) to give its free pages back, through gdb,
/// and prints RSS before and after. Memory that goes away then was the allocator's, not held by
/// the server; what stays is in use (or fragmented).
fn trim_report(pid: &str) {
    let before = rss_kib(pid).unwrap_or(0);
    let out = std::process::Command::new("gdb")
        .args(["-p", pid, "-batch", "-ex", "call (int) malloc_trim(0)"])
        .stdin(std::process::Stdio::null())
        .output();
    let after = rss_kib(pid).unwrap_or(0);
    match out {
        Ok(o) if o.status.success() => println!(
            "malloc_trim(0) in the server: rss {:.1} → {:.1} MiB",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        ),
        Ok(o) => println!(
            "malloc_trim through gdb failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("malloc_trim needs gdb: {e}"),
    }
}
