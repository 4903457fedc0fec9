//! `--hls N`: N LL-HLS players of the first camera, straight to the origin, through `--edges K`
//! nginx edges this tool starts from `deploy/nginx-edge.conf`, or through `--via URL` caches of
//! the user's. Each player is a task that follows the live edge as a low-latency player does: a
//! blocking playlist reload for the part the last playlist hinted, then every listed part newer
//! than the last it has, on one keep-alive connection. Printed: each player's share of the parts captured in the window that
//! it got within `IN_TIME` of their capture, how long after capture the parts arrived, what the
//! origin served per part it made (its `/status` `hls` counters) and its CPU, each edge's CPU.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use surv_tests::http::{Conn, Limits};
use tokio::time::timeout;

use crate::http::free_port;
use crate::measure::percentile;
use crate::procfs::cpu_us;
use crate::server::ServerProc;
use crate::Args;

/// A part counts as got in time when it arrived at most this long after its first picture's
/// capture (the latency to live, with a 0.6 s hold-back left for the player).
const IN_TIME: Duration = Duration::from_millis(1400);
/// Every request (a blocking reload waits up to 3 s at the origin) is bounded by this.
const REQUEST_LIMIT: Duration = Duration::from_secs(8);
/// A response larger than this is refused (a part at 1080p is ~100 KB).
const MAX_BODY: usize = 16 << 20;
/// Each player's requests: bounded in time and size, on one kept-alive connection.
const LIMITS: Limits = Limits {
    timeout: REQUEST_LIMIT,
    max_head_bytes: surv_tests::http::DEFAULT_MAX_HEAD_BYTES,
    max_body_bytes: MAX_BODY,
};
/// The players start over this long, so that the first requests do not all meet at once.
const RAMP: Duration = Duration::from_secs(2);
const PLAYLIST: &str = "/cam/main/index.m3u8";

/// The players' shared switches and error count.
struct Shared {
    stop: AtomicBool,
    /// Capture times (µs since the epoch) of the measured parts: from, to.
    from_us: AtomicU64,
    to_us: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// A part a player got: its name (`msn.part`), when its first picture was captured, and how
/// long after that it arrived.
struct Got {
    name: String,
    capture_us: u64,
    after_us: u64,
}

pub fn run(args: &Args, n: usize) -> anyhow::Result<()> {
    if n == 0 || n > 20_000 {
        bail!("--hls takes 1..=20000 players");
    }
    if args.edges > 0 && !args.via.is_empty() {
        bail!("--edges (edges this tool starts) and --via (yours) do not go together");
    }
    let port = match args.http_port {
        Some(p) => p,
        None if args.via.is_empty() => free_port()?,
        None => bail!("with --via, say with --http-port which port your edges reach the origin on"),
    };
    let extra = ["--http-port".to_string(), port.to_string()];
    // Straight to the origin, every player holds one of its HTTP connections (bounded by
    // --max-viewers); through edges, the edges hold a few.
    let direct = args.edges == 0 && args.via.is_empty();
    let server = ServerProc::start_with(args, if direct { n } else { 0 }, &extra)?;
    let pid = server.pid();
    let origin = SocketAddr::from(([127, 0, 0, 1], port));
    let per_edge = n.div_ceil(args.edges.max(1));
    let edges: Vec<surv_tests::nginx::Edge> = (0..args.edges)
        .map(|_| surv_tests::nginx::Edge::start_sized(origin, 2 * per_edge + 64))
        .collect::<anyhow::Result<_>>()?;
    let targets: Vec<SocketAddr> = if !edges.is_empty() {
        edges.iter().map(|e| e.addr).collect()
    } else if !args.via.is_empty() {
        args.via
            .iter()
            .map(|u| via_addr(u))
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![origin]
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        from_us: AtomicU64::new(u64::MAX),
        to_us: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    // The muxer starts with the first request; wait for it before the crowd.
    runtime.block_on(async {
        let status = surv_tests::http::get(origin, PLAYLIST, LIMITS)
            .await?
            .status;
        ensure!(status == 200, "the origin answered {status} for {PLAYLIST}");
        anyhow::Ok(())
    })?;
    let me = std::process::id().to_string();
    let players: Vec<_> = (0..n)
        .map(|i| {
            let to = targets[i % targets.len()];
            let shared = shared.clone();
            let start = RAMP * i as u32 / n as u32;
            runtime.spawn(async move {
                tokio::time::sleep(start).await;
                player(to, &shared).await
            })
        })
        .collect();
    std::thread::sleep(RAMP + Duration::from_secs_f64(args.warmup_secs));

    let (s0, c0, e0, m0) = (
        hls_status(port)?,
        cpu_us(&pid)?,
        edges_cpu_us(&edges),
        cpu_us(&me)?,
    );
    let w0 = Instant::now();
    let from = now_us();
    shared.from_us.store(from, Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let to = now_us();
    let secs = w0.elapsed().as_secs_f64();
    let (s1, c1, e1, m1) = (
        hls_status(port)?,
        cpu_us(&pid)?,
        edges_cpu_us(&edges),
        cpu_us(&me)?,
    );
    // Parts captured up to IN_TIME before the window's end could all arrive in it.
    shared
        .to_us
        .store(to.saturating_sub(IN_TIME.as_micros() as u64), Relaxed);
    // Let the last parts of the window arrive (or not) before stopping.
    std::thread::sleep(IN_TIME);
    shared.stop.store(true, Relaxed);
    let results: Vec<Vec<Got>> = runtime.block_on(async {
        let mut all = Vec::with_capacity(n);
        for p in players {
            all.push(match timeout(REQUEST_LIMIT * 2, p).await {
                Ok(Ok(got)) => got,
                _ => Vec::new(),
            });
        }
        all
    });
    drop(edges);
    server.stop();
    report(
        args,
        n,
        &Run {
            results: &results,
            shared: &shared,
            window: (from, shared.to_us.load(Relaxed)),
            secs,
            status: (s0, s1),
            origin_cpu_us: c1.saturating_sub(c0),
            edge_cpu_us: e1.iter().zip(&e0).map(|(a, b)| a - b).collect(),
            tool_cpu_us: m1.saturating_sub(m0),
        },
    );
    Ok(())
}

/// What `report` prints from.
struct Run<'a> {
    results: &'a [Vec<Got>],
    shared: &'a Shared,
    /// Capture times of the measured parts, µs since the epoch.
    window: (u64, u64),
    secs: f64,
    status: (HlsCounters, HlsCounters),
    origin_cpu_us: u64,
    edge_cpu_us: Vec<u64>,
    tool_cpu_us: u64,
}

fn report(args: &Args, n: usize, run: &Run) {
    let (from, to) = run.window;
    let measured = |g: &&Got| g.capture_us >= from && g.capture_us < to;
    // Every part captured in the window that any player got: what each should have.
    let distinct: std::collections::BTreeSet<&str> = run
        .results
        .iter()
        .flatten()
        .filter(measured)
        .map(|g| g.name.as_str())
        .collect();
    let want = distinct.len().max(1);
    let mut shares: Vec<f64> = run
        .results
        .iter()
        .map(|got| {
            let in_time = got
                .iter()
                .filter(measured)
                .filter(|g| g.after_us <= IN_TIME.as_micros() as u64)
                .count();
            in_time as f64 / want as f64
        })
        .collect();
    shares.sort_by(f64::total_cmp);
    let mut after_ms: Vec<f64> = run
        .results
        .iter()
        .flatten()
        .filter(measured)
        .map(|g| g.after_us as f64 / 1e3)
        .collect();
    after_ms.sort_by(f64::total_cmp);
    let (s0, s1) = &run.status;
    let made = s1.parts_made.saturating_sub(s0.parts_made).max(1) as f64;
    let served = |f: fn(&HlsCounters) -> u64| f(s1).saturating_sub(f(s0));
    let (parts, playlists, segments) = (
        served(|c| c.parts_served),
        served(|c| c.playlists_served),
        served(|c| c.segments_served),
    );
    let full = shares.iter().filter(|&&s| s >= 0.99).count();
    let via = match (args.edges, args.via.len()) {
        (0, 0) => "straight to the origin".to_string(),
        (k, 0) => format!("through {k} nginx edge(s) from deploy/nginx-edge.conf"),
        (_, k) => format!("through {k} cache(s) given by --via"),
    };
    println!(
        "hls: {n} players, {via}, {}x{}@{}, {:.1} s measured",
        args.size.0, args.size.1, args.fps, run.secs
    );
    println!(
        "  parts captured in the window: {} ({} made by the origin); players with >= 99 % of them within {} ms of capture: {full} of {n}; share min {:.2} %, median {:.2} %",
        distinct.len(),
        made,
        IN_TIME.as_millis(),
        100.0 * shares.first().copied().unwrap_or(0.0),
        100.0 * percentile(&shares, 0.5),
    );
    println!(
        "  part arrival after capture, ms: p50 {:.0}, p99 {:.0}, max {:.0} ({} parts); a player holding back 0.6 s (PART-HOLD-BACK) shows them that much later",
        percentile(&after_ms, 0.5),
        percentile(&after_ms, 0.99),
        after_ms.last().copied().unwrap_or(f64::NAN),
        after_ms.len()
    );
    println!(
        "  origin served per part made: {:.2} parts, {:.2} playlists, {:.2} segments ({parts} parts, {playlists} playlists, {segments} segments for {made} parts); origin CPU {:.1} % of a core",
        parts as f64 / made,
        playlists as f64 / made,
        segments as f64 / made,
        100.0 * run.origin_cpu_us as f64 / 1e6 / run.secs,
    );
    if !run.edge_cpu_us.is_empty() {
        let edges: Vec<String> = run
            .edge_cpu_us
            .iter()
            .map(|us| format!("{:.1} %", 100.0 * *us as f64 / 1e6 / run.secs))
            .collect();
        println!("  edges' CPU (one nginx worker each): {}", edges.join(", "));
    }
    println!(
        "  players' CPU (this tool, {} threads): {:.1} % of a core; errors {} {}",
        args.client_threads,
        100.0 * run.tool_cpu_us as f64 / 1e6 / run.secs,
        run.shared.errors.load(Relaxed),
        run.shared
            .first_error
            .lock()
            .unwrap()
            .as_deref()
            .map(|e| format!("(first: {e})"))
            .unwrap_or_default(),
    );
}

/// `http://HOST:PORT[/…]` → the address to connect to.
fn via_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--via {url}: give http://HOST:PORT"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let with_port = match host_port.contains(':') {
        true => host_port.to_string(),
        false => format!("{host_port}:80"),
    };
    with_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("--via {url}: no address"))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn edges_cpu_us(edges: &[surv_tests::nginx::Edge]) -> Vec<u64> {
    edges
        .iter()
        .map(|e| cpu_us(&e.pid().to_string()).unwrap_or(0))
        .collect()
}

/// One player: follows the live edge until told to stop; the parts it got while measuring.
async fn player(to: SocketAddr, shared: &Shared) -> Vec<Got> {
    let mut at = Player::default();
    while !shared.stop.load(Relaxed) {
        if let Err(e) = at.step(to, shared).await {
            shared.errors.fetch_add(1, Relaxed);
            shared
                .first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| format!("{e:#}"));
            at.conn = None;
            at.playlist.clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    at.got
}

/// A player's state between two rounds.
#[derive(Default)]
struct Player {
    conn: Option<Conn>,
    playlist: String,
    /// The newest part it has, as (msn, part).
    last: Option<(u64, u64)>,
    got: Vec<Got>,
}

impl Player {
    /// One round, as an LL-HLS player does it: the playlist (blocking for the hinted part, or
    /// plain at the start), then every listed part newer than the last it has, in order (one
    /// at the start: the newest).
    async fn step(&mut self, to: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
        let c = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(Conn::open(to, LIMITS).await?),
        };
        let path = match hinted_part(&self.playlist) {
            Some((msn, part, _)) => format!("{PLAYLIST}?_HLS_msn={msn}&_HLS_part={part}"),
            None => PLAYLIST.to_string(),
        };
        let (status, body) = kept_alive(c.get(&path).await?)?;
        ensure!(status == 200, "{status} for {path}");
        self.playlist = String::from_utf8(body).context("a playlist that is not UTF-8")?;
        let mut parts = listed_parts(&self.playlist);
        if self.last.is_none() {
            parts.drain(..parts.len().saturating_sub(1));
        }
        for (uri, number, capture_us) in parts {
            if self.last.is_some_and(|last| number <= last) {
                continue;
            }
            let (status, body) = kept_alive(c.get(&format!("/cam/main/{uri}")).await?)?;
            ensure!(status == 200 && !body.is_empty(), "{status} for part {uri}");
            self.last = Some(number);
            if shared.from_us.load(Relaxed) <= capture_us {
                self.got.push(Got {
                    name: format!("{}.{}", number.0, number.1),
                    capture_us,
                    after_us: now_us().saturating_sub(capture_us),
                });
            }
        }
        Ok(())
    }
}

/// The status and body of a response on a player's connection, which must stay open: a
/// player that reconnects for each request is not the player this tool measures.
fn kept_alive(r: surv_tests::http::Response) -> anyhow::Result<(u16, Vec<u8>)> {
    ensure!(!r.closes(), "the server closes the connection");
    Ok((r.status, r.body))
}

/// `…/<msn>.<part>.m4s` → (msn, part).
fn part_number(uri: &str) -> Option<(u64, u64)> {
    let name = uri.rsplit('/').next()?.strip_suffix(".m4s")?;
    let (msn, part) = name.split_once('.')?;
    Some((msn.parse().ok()?, part.parse().ok()?))
}

/// The playlist's preload hint: (msn, part, uri).
fn hinted_part(playlist: &str) -> Option<(u64, u64, String)> {
    let uri = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))?
        .trim_end_matches('"');
    let (msn, part) = part_number(uri)?;
    Some((msn, part, uri.to_string()))
}

/// Every part the playlist lists, oldest first: its URI, (msn, part), and the capture time of
/// its first picture (µs since the epoch: its segment's `EXT-X-PROGRAM-DATE-TIME` plus the
/// durations of the parts before it).
fn listed_parts(playlist: &str) -> Vec<(String, (u64, u64), u64)> {
    let mut at_us = None::<u64>;
    let mut parts = Vec::new();
    for line in playlist.lines() {
        if let Some(date) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            at_us = chrono::DateTime::parse_from_rfc3339(date)
                .ok()
                .map(|t| t.timestamp_micros() as u64);
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-PART:") {
            let attr = |name: &str| {
                attrs
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            let uri = attr("URI").unwrap_or_default().trim_matches('"');
            let secs: Option<f64> = attr("DURATION").and_then(|d| d.parse().ok());
            if let (Some(t), Some(number)) = (at_us, part_number(uri)) {
                parts.push((uri.to_string(), number, t));
            }
            at_us = at_us.zip(secs).map(|(t, s)| t + (s * 1e6) as u64);
        }
    }
    parts
}

/// The origin's LL-HLS counters, from `/status`.
struct HlsCounters {
    parts_made: u64,
    parts_served: u64,
    playlists_served: u64,
    segments_served: u64,
}

fn hls_status(port: u16) -> anyhow::Result<HlsCounters> {
    let json = crate::rtsp::status_json(port)?;
    let n = |name: &str| {
        json["hls"][name]
            .as_u64()
            .with_context(|| format!("no hls.{name} in /status"))
    };
    Ok(HlsCounters {
        parts_made: n("parts_made")?,
        parts_served: n("parts_served")?,
        playlists_served: n("playlists_served")?,
        segments_served: n("segments_served")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "#EXTM3U\n#EXT-X-PROGRAM-DATE-TIME:2026-12-05T10:00:00.000Z\n\
        #EXT-X-PART:DURATION=0.200,URI=\"hls/ab/7.0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.200,URI=\"hls/ab/7.1.m4s\"\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"hls/ab/7.2.m4s\"\n";

    #[test]
    fn parts_are_listed_with_their_capture_times() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00.000Z")
            .unwrap()
            .timestamp_micros() as u64;
        assert_eq!(
            listed_parts(LIST),
            vec![
                ("hls/ab/7.0.m4s".to_string(), (7, 0), t0),
                ("hls/ab/7.1.m4s".to_string(), (7, 1), t0 + 200_000),
            ]
        );
        assert_eq!(
            hinted_part(LIST),
            Some((7, 2, "hls/ab/7.2.m4s".to_string()))
        );
        assert_eq!(hinted_part("#EXTM3U\n"), None);
        assert_eq!(part_number("hls/ab/x.1.m4s"), None);
    }

    #[test]
    fn via_takes_http_urls_only() {
        assert_eq!(
            via_addr("http://127.0.0.1:8081/").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 8081))
        );
        assert!(via_addr("https://127.0.0.1:8081").is_err());
    }
}
