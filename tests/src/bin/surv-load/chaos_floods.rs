//! The chaos run's floods on the registration port and the UDP sockets: garbage registrations
//! with slowloris connections, random datagrams, spoofed acks, and join/leave churn with
//! SIGKILLed `surv-client` processes. Each sends what the issue names (times `--chaos-scale`),
//! then waits (bounded) until the server's counters account for it, and reports both.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use surv_proto::{Form, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chaos::{metrics, Ctx, Reading};
use crate::procfs::udp_drops;
use crate::viewers::{connect_and_send, read_reply, register_all, viewer_ip, MAX_VIEWER_INDEX};

/// One flood: its name (for `--chaos-only`) and what runs it.
#[derive(Clone, Copy)]
pub struct Flood {
    pub name: &'static str,
    pub run: fn(&Ctx, &Reading) -> anyhow::Result<FloodReport>,
}

/// What a flood sent and what the server counted, and the checks that failed.
#[derive(Default)]
pub struct FloodReport {
    pub lines: Vec<String>,
    pub failed: Vec<String>,
}

pub const ALL: &[Flood] = &[
    Flood {
        name: "registrations",
        run: registrations,
    },
    Flood {
        name: "datagrams",
        run: datagrams,
    },
    Flood {
        name: "spoofed-acks",
        run: spoofed_acks,
    },
    Flood {
        name: "churn",
        run: churn,
    },
];

/// Datagrams the datagram flood sent to the request port (checked against the server's
/// shutdown line, where the request port's counters are).
pub static REQUEST_PORT_SENT: AtomicU64 = AtomicU64::new(0);

/// Hostile TCP peers at once in the garbage flood.
const GARBAGE_CONCURRENCY: usize = 256;
/// How long the server may take to account for a flood once it is over.
const ACCOUNT_LIMIT: Duration = Duration::from_secs(15);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn sum_prefix(m: &HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Polls `/metrics` (every 250 ms, at most [`ACCOUNT_LIMIT`]) until `done` holds for it; the
/// last reading either way.
fn settle(
    ctx: &Ctx,
    done: impl Fn(&HashMap<String, f64>, u64) -> bool,
) -> (HashMap<String, f64>, u64) {
    let until = Instant::now() + ACCOUNT_LIMIT;
    loop {
        let m = metrics(ctx.http).unwrap_or_default();
        let drops = udp_drops(&ctx.pid);
        if done(&m, drops) || Instant::now() > until {
            return (m, drops);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (bounded) until the datagrams the server counted as foreign since `before`, plus those
/// the kernel dropped at its sockets (full queues), reach `sent`; the last `/metrics` reading,
/// the foreign count and the drops.
fn foreign_accounted(ctx: &Ctx, before: &Reading, sent: u64) -> (HashMap<String, f64>, f64, u64) {
    let drops0 = before.kernel_drops;
    let (m, drops) = settle(ctx, |m, drops| {
        delta(m, before, "foreign_datagrams") + drops.saturating_sub(drops0) as f64 >= sent as f64
    });
    let foreign = delta(&m, before, "foreign_datagrams");
    (m, foreign, drops.saturating_sub(drops0))
}

fn delta(after: &HashMap<String, f64>, before: &Reading, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.metric(name)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A TCP connection from `from` to the server (with a receive buffer of `rcvbuf` bytes if
/// given), bounded by 5 s.
pub async fn connect(
    from: Ipv4Addr,
    to: SocketAddrV4,
    rcvbuf: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(bytes) = rcvbuf {
        sock.set_recv_buffer_size(bytes)?;
    }
    sock.bind(SocketAddrV4::new(from, 0).into())?;
    match tokio::time::timeout(Duration::from_secs(5), sock.connect(to.into())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads until the server closes, at most `limit`.
async fn drain(tcp: &mut tokio::net::TcpStream, limit: Duration) {
    let mut buf = [0u8; 512];
    let until = tokio::time::Instant::now() + limit;
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// What a garbage registration sends, by kind (`j % 8`).
fn garbage_line(j: usize, rng: &mut Rng) -> Vec<u8> {
    match j % 8 {
        0 => (0..1 + rng.next() % 512)
            .map(|_| rng.next() as u8)
            .collect(),
        1 => {
            let mut digits = vec![b'7'; 100_000];
            digits.push(b'\n');
            digits
        }
        2 => b"0\n".to_vec(),
        3 => b"99999\n".to_vec(),
        4 => b"-1\n".to_vec(),
        5 => "ポート５０００ SURV/1 ５０００\n".as_bytes().to_vec(),
        6 => b"GET / HTTP/1.1\r\nHost: surv\r\n\r\n".to_vec(),
        // Connect and close without a byte: a port check.
        _ => Vec::new(),
    }
}

/// Flooding peer `i`'s address in 127.`net`.0.0/16: 127.`net`.(i / 250 % 250).(i % 250 + 1), so
/// that each flood comes from addresses of its own, apart from the honest viewers' 127.2.
pub fn flood_ip(net: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (i / 250 % 250) as u8, (i % 250 + 1) as u8)
}

/// A slowloris connection `i`: connects from its own address and sends nothing; when the
/// server drops it, connects again, until `done`.
async fn slowloris(i: usize, to: SocketAddrV4, done: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let from = flood_ip(4, i);
    while !done.load(Relaxed) {
        let Ok(mut tcp) = connect(from, to, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        opened.fetch_add(1, Relaxed);
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) if done.load(Relaxed) => return,
                Err(_) => {}
            }
        }
    }
}

/// An honest SURV/1 registration during the flood, on a thread of its own (as a real viewer
/// sends its line right after connecting): the time until its `OK`, or why not.
fn honest_registration(index: usize, to: SocketAddrV4) -> Result<Duration, String> {
    let t = Instant::now();
    let tcp = connect_and_send(to, index, 9, Form::V1).map_err(|e| format!("{e:#}"))?;
    match read_reply(&tcp) {
        Ok(Reply::Accepted(_)) => Ok(t.elapsed()),
        Ok(Reply::Refused(r)) => Err(format!("refused: {r}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// 100,000 garbage registrations (random bytes, a 100,000-digit port, bad ports, unicode, HTTP,
/// nothing at all) at 256 at once, while 2,000 slowloris connections are held (reopened as the
/// server drops them) and an honest SURV/1 viewer registers every 500 ms.
fn registrations(ctx: &Ctx, before: &Reading) -> anyhow::Result<FloodReport> {
    let (garbage_n, slow_n) = (ctx.scaled(100_000), ctx.scaled(2_000));
    let to = ctx.server;
    let done = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let connect_failed = Arc::new(AtomicU64::new(0));
    let honest = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut results = Vec::new();
            // Bounded: one every 500 ms while the flood lasts, at most 2,000.
            for i in 0..2_000 {
                if done.load(Relaxed) {
                    break;
                }
                results.push(honest_registration(MAX_VIEWER_INDEX - 1 - i % 500, to));
                std::thread::sleep(Duration::from_millis(500));
            }
            results
        })
    };
    let secs = runtime()?.block_on(async {
        let mut slow = tokio::task::JoinSet::new();
        for i in 0..slow_n {
            slow.spawn(slowloris(i, to, done.clone(), opened.clone()));
        }
        let t = Instant::now();
        let limit = Arc::new(tokio::sync::Semaphore::new(GARBAGE_CONCURRENCY));
        let mut garbage = tokio::task::JoinSet::new();
        for j in 0..garbage_n {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (opened, failed) = (opened.clone(), connect_failed.clone());
            garbage.spawn(async move {
                let _permit = permit;
                let from = flood_ip(3, j);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (j as u64 + 1));
                let Ok(mut tcp) = connect(from, to, None).await else {
                    failed.fetch_add(1, Relaxed);
                    return;
                };
                opened.fetch_add(1, Relaxed);
                let line = garbage_line(j, &mut rng);
                if !line.is_empty() {
                    let write = tcp.write_all(&line);
                    let _ = tokio::time::timeout(Duration::from_secs(10), write).await;
                    drain(&mut tcp, Duration::from_secs(10)).await;
                }
            });
            while garbage.try_join_next().is_some() {}
        }
        while garbage.join_next().await.is_some() {}
        let secs = t.elapsed().as_secs_f64();
        done.store(true, Relaxed);
        while slow.join_next().await.is_some() {}
        secs
    });
    let honest = honest.join().unwrap_or_default();
    let opened = opened.load(Relaxed) as f64;
    let honest_ok: Vec<Duration> = honest
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    let expected = opened + honest.len() as f64;
    // Every connection ends as a refusal (with its reason), a probe (no byte), a viewer that
    // joined (the honest ones) or one gone before its acceptance was written.
    let account = |m: &HashMap<String, f64>| {
        sum_prefix(m, "refusals{") - sum_prefix(&before.metrics, "refusals{")
            + delta(m, before, "probes")
            + delta(m, before, "joins")
            + delta(m, before, "gone_before_accepted")
    };
    let (m, _) = settle(ctx, |m, _| account(m) >= expected);
    let mut reasons: Vec<String> = m
        .iter()
        .filter(|(k, _)| k.starts_with("refusals{"))
        .map(|(k, v)| (k, v - before.metrics.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|(k, d)| format!("{}={d}", k.trim_start_matches("refusals")))
        .collect();
    reasons.sort();
    let slowest = honest_ok
        .iter()
        .max()
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let mut r = FloodReport::default();
    r.lines.push(format!(
        "sent: {garbage_n} garbage registrations in {secs:.1} s with {slow_n} slowloris held at once; {opened} TCP connections opened in all (slowloris reopened as dropped), {} connects failed",
        connect_failed.load(Relaxed)
    ));
    r.lines.push(format!(
        "counted: refusals {} + probes {} + joins {} + gone before accepted {} = {} of {expected} connections",
        reasons.join(" "),
        delta(&m, before, "probes"),
        delta(&m, before, "joins"),
        delta(&m, before, "gone_before_accepted"),
        account(&m)
    ));
    r.lines.push(format!(
        "honest registrations during the flood: {} of {} accepted, slowest {slowest:.0} ms",
        honest_ok.len(),
        honest.len()
    ));
    if account(&m) != expected {
        r.failed.push(format!(
            "the server accounted for {} of {expected} connections",
            account(&m)
        ));
    }
    if honest_ok.len() < honest.len() {
        let why: Vec<&String> = honest.iter().filter_map(|r| r.as_ref().err()).collect();
        r.failed.push(format!(
            "{} honest registrations failed, e.g. {}",
            honest.len() - honest_ok.len(),
            why[0]
        ));
    }
    Ok(r)
}

/// Sockets bound to `count` addresses of 127.`net`.0.0/16, each on a free port.
fn sockets(net: u8, count: usize) -> anyhow::Result<Vec<UdpSocket>> {
    (0..count)
        .map(|i| {
            UdpSocket::bind(SocketAddrV4::new(flood_ip(net, i), 0))
                .context("binding a flood socket")
        })
        .collect()
}

/// 1,000,000 datagrams of random bytes, 0..=65,507 bytes each, from 64 addresses and ports, at
/// the server's session sockets and its request port.
fn datagrams(ctx: &Ctx, before: &Reading) -> anyhow::Result<FloodReport> {
    let n = ctx.scaled(1_000_000);
    let mut targets: Vec<SocketAddrV4> = ctx
        .server_udp_ports()
        .into_iter()
        .map(|p| SocketAddrV4::new(*ctx.server.ip(), p))
        .collect();
    let session_targets = targets.len();
    targets.push(ctx.request);
    let socks = sockets(5, 64)?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let noise: Vec<u8> = (0..2 * 65_536).map(|_| rng.next() as u8).collect();
    let (mut to_sessions, mut to_request, mut errors, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let rate = ctx.args.chaos_datagram_rate.max(1) as f64;
    let t = Instant::now();
    for i in 0..n {
        // Paced: datagram i goes no earlier than i / rate seconds in.
        let due = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(wait);
        }
        let len = (rng.next() % 65_508) as usize;
        let at = (rng.next() % 65_536) as usize;
        let which = i % targets.len();
        match socks[i % socks.len()].send_to(&noise[at..at + len], targets[which]) {
            Ok(_) if which < session_targets => to_sessions += 1,
            Ok(_) => to_request += 1,
            Err(_) => errors += 1,
        }
        bytes += len as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    REQUEST_PORT_SENT.fetch_add(to_request, Relaxed);
    // The session sockets count what reaches them as foreign; what the kernel dropped for full
    // queues is in `dropped` (with the request port's, and any honest ack that met a full queue).
    let (_, foreign, dropped) = foreign_accounted(ctx, before, to_sessions);
    let mut r = FloodReport::default();
    r.lines.push(format!(
        "sent: {} datagrams ({:.1} GB) in {secs:.1} s ({:.0}/s): {to_sessions} to {session_targets} session sockets, {to_request} to the request port; {errors} send errors",
        to_sessions + to_request,
        bytes as f64 / 1e9,
        (to_sessions + to_request) as f64 / secs
    ));
    r.lines.push(format!(
        "counted: foreign datagrams {foreign} + dropped by the kernel (queues full) {} at the server's sockets; the request port's count is checked at the end",
        dropped
    ));
    if foreign + (dropped as f64) < to_sessions as f64 {
        r.failed.push(format!(
            "{foreign} counted + {} dropped < {to_sessions} sent to the session sockets",
            dropped
        ));
    }
    Ok(r)
}

/// Spoofed acks for every honest viewer: `end`, `continue`, `continue <seq> k=<wrong key>` and
/// `end k=<its real key>`, from another port of the viewer's own address and from 127.0.0.2.
fn spoofed_acks(ctx: &Ctx, before: &Reading) -> anyhow::Result<FloodReport> {
    let n = ctx.scaled(100_000);
    let viewers = ctx.args.viewers;
    let mut own: Vec<UdpSocket> = Vec::with_capacity(viewers);
    for v in 0..viewers {
        own.push(UdpSocket::bind(SocketAddrV4::new(viewer_ip(v), 0))?);
    }
    let other = UdpSocket::bind("127.0.0.2:0")?;
    let targets = ctx.server_udp_ports();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut sent, mut errors) = (0u64, 0u64);
    let t = Instant::now();
    for i in 0..n {
        if i % 10_000 == 0 {
            // Paced at about 20,000 a second.
            let due = Duration::from_secs_f64(i as f64 / 20_000.0);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let v = i % viewers;
        let key = ctx.shared.keys.get(v);
        let ack = match i % 4 {
            0 => "end".to_string(),
            1 => "continue".to_string(),
            2 => format!(
                "continue {} k={:016x}",
                ctx.shared.max_seq.load(Relaxed),
                rng.next()
            ),
            _ => format!("end k={:016x}", key.unwrap_or(0)),
        };
        let from = if i % 2 == 0 { &own[v] } else { &other };
        let to = SocketAddrV4::new(*ctx.server.ip(), targets[i % targets.len()]);
        match from.send_to(ack.as_bytes(), to) {
            Ok(_) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let (m, foreign, dropped) = foreign_accounted(ctx, before, sent);
    let mut r = FloodReport::default();
    r.lines.push(format!(
        "sent: {sent} spoofed acks in {secs:.1} s ({errors} send errors), half from another port of the viewer's address, half from 127.0.0.2"
    ));
    r.lines.push(format!(
        "counted: foreign datagrams {foreign}, dropped by the kernel {}; leaves {} (an honest viewer leaving would be one)",
        dropped,
        delta(&m, before, "leaves")
    ));
    if foreign + (dropped as f64) != sent as f64 {
        r.failed.push(format!(
            "{foreign} counted + {} dropped != {sent} sent",
            dropped
        ));
    }
    if delta(&m, before, "leaves") > 0.0 {
        r.failed.push("an honest viewer left".into());
    }
    Ok(r)
}

/// 10,000 join/leave cycles (batches of 200 viewers in both forms, half leaving with `end`,
/// half by closing TCP), then 300 `surv-client` processes, 30 at a time, killed with SIGKILL.
fn churn(ctx: &Ctx, before: &Reading) -> anyhow::Result<FloodReport> {
    let cycles = ctx.scaled(10_000);
    let killed = ctx.scaled(300);
    let first = 1_000;
    let t = Instant::now();
    let (mut joined, mut failed_n, mut first_failure) = (0usize, 0usize, None);
    let mut next = 0usize;
    while next < cycles {
        let batch: Vec<usize> = (next..(next + 200).min(cycles))
            .map(|c| first + c % (MAX_VIEWER_INDEX - first - 600))
            .collect();
        next += batch.len();
        let (viewers, failed) = register_all(
            ctx.server,
            &batch,
            ctx.udp,
            ctx.args.seed_percent,
            &ctx.shared.keys,
        );
        joined += viewers.len();
        failed_n += failed.len();
        if first_failure.is_none() {
            first_failure = failed.first().cloned();
        }
        std::thread::sleep(Duration::from_millis(300));
        for v in viewers.iter().step_by(2) {
            let _ = ctx.end_tx.send(v.index);
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(viewers);
    }
    let churn_secs = t.elapsed().as_secs_f64();
    let exe = std::env::current_exe()?
        .parent()
        .context("no folder for this binary")?
        .join("surv-client");
    let t = Instant::now();
    let mut spawned = 0usize;
    while spawned < killed && exe.exists() {
        let mut round = Vec::new();
        for _ in 0..30.min(killed - spawned) {
            let child = std::process::Command::new(&exe)
                .arg(ctx.server.ip().to_string())
                .arg(ctx.server.port().to_string())
                .args(["0", "--headless", "--no-record", "--seconds", "60"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            round.push(child);
            spawned += 1;
        }
        std::thread::sleep(Duration::from_millis(1500));
        for mut child in round {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let kill_secs = t.elapsed().as_secs_f64();
    let honest = ctx.args.viewers as f64;
    let (m, _) = settle(ctx, |m, _| {
        delta(m, before, "joins") == delta(m, before, "leaves")
            && sum_prefix(m, "watchers{") == honest
    });
    let mut r = FloodReport::default();
    r.lines.push(format!(
        "sent: {cycles} join/leave cycles in {churn_secs:.1} s ({joined} joined, {failed_n} failed{}); {spawned} surv-client processes SIGKILLed in {kill_secs:.1} s",
        first_failure.map(|f| format!(", e.g. {f}")).unwrap_or_default()
    ));
    r.lines.push(format!(
        "counted: joins {} leaves {}; live watchers {} (the {} honest viewers)",
        delta(&m, before, "joins"),
        delta(&m, before, "leaves"),
        sum_prefix(&m, "watchers{"),
        ctx.args.viewers
    ));
    if !exe.exists() {
        r.failed.push(format!(
            "no surv-client at {} (cargo build --release -p surv-client)",
            exe.display()
        ));
    }
    if delta(&m, before, "joins") != delta(&m, before, "leaves") {
        r.failed.push("joins and leaves differ".into());
    }
    if delta(&m, before, "joins") < (joined + spawned) as f64 {
        r.failed.push(format!(
            "{} joins counted for {} viewers that joined and clients started",
            delta(&m, before, "joins"),
            joined + spawned
        ));
    }
    if sum_prefix(&m, "watchers{") != honest {
        r.failed
            .push("live watchers not back to the honest ones".into());
    }
    Ok(r)
}

/// JOIN and LEAVE lines of a journal, and how many JOINs (by session id) have no LEAVE.
pub fn journal_pairs(journal: &str) -> (usize, usize, usize) {
    let id = |l: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("session="))
            .map(str::to_owned)
    };
    let mut open = std::collections::HashSet::new();
    let (mut joins, mut leaves) = (0, 0);
    for line in journal.lines() {
        if line.contains(" JOIN ") {
            joins += 1;
            if let Some(id) = id(line) {
                open.insert(id);
            }
        } else if line.contains(" LEAVE ") {
            leaves += 1;
            if let Some(id) = id(line) {
                open.remove(&id);
            }
        }
    }
    (joins, leaves, open.len())
}
