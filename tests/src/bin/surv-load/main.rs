//! `surv-load`: how many viewers one surv-server serves, measured.
//!
//! Starts the release `surv-server` as its own process on the test pattern, registers N viewers
//! on loopback (seed form and SURV/1 form, each viewer its own address 127.2.x.y), acks every
//! frame as those viewers do, and prints one line of figures: frame rate and share of frames at
//! the worst and median viewer, server CPU per delivered frame (from /proc, acks included),
//! server RSS, capture → receipt latency, encodes per captured frame, and the generator's own CPU.
//!
//! With `--churn-secs`, viewers keep joining and leaving for that long and the server's RSS is
//! printed periodically instead (the memory-growth run).
//!
//! The generator is one receiving thread on one UDP socket: `recvmmsg`/`sendmmsg` in batches,
//! only the 64-byte head of each frame copied out (see `mmsg.rs`), so that it leaves as much of
//! the machine as it can to the server it measures.

mod mmsg;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use surv_proto::{Form, FrameTag, Registration, Reply, ReplyError};

/// Viewer addresses are 127.2.(i / 250).(i % 250 + 1): this many fit.
const MAX_VIEWER_INDEX: usize = 250 * 256;
/// Registrations in flight at once: under the server's 256 pending registrations.
const REGISTER_BATCH: usize = 200;
/// Every wait in the tool is bounded by this.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Datagrams per recvmmsg call.
const RECV_BATCH: usize = 256;

/// Measures surv-server under N viewers on loopback.
#[derive(Debug, Parser)]
#[command(name = "surv-load", about, long_about)]
struct Args {
    /// Viewers to register.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Frame size WIDTHxHEIGHT of the test pattern.
    #[arg(long, default_value = "160x90", value_parser = surv_proto::parse_size)]
    size: (u32, u32),
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Percent of viewers that register in the seed form (bare digits, plain `continue`); the
    /// rest use SURV/1 (`continue <seq>`).
    #[arg(long, default_value_t = 50)]
    seed_percent: usize,
    /// Seconds of streaming after every viewer is registered, before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The surv-server binary (default: next to this one; build both with
    /// `cargo build --release -p surv-server -p surv-tests`).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Extra arguments for the server, e.g. `--server-arg=--max-in-flight=8`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Instead of surv-server, measure GStreamer's multiudpsink sending the same stream (JPEG,
    /// no acks) to --viewers addresses: the CPU-per-datagram yardstick.
    #[arg(long)]
    gst_baseline: bool,
    /// Memory run: viewers join and leave for this many seconds; RSS is printed periodically.
    #[arg(long)]
    churn_secs: Option<f64>,
    /// In the memory run, viewers replaced per second (half leave with `end`, half by closing TCP).
    #[arg(long, default_value_t = 20)]
    churn_per_sec: usize,
    /// In the memory run, seconds between RSS lines.
    #[arg(long, default_value_t = 30.0)]
    report_secs: f64,
}

fn viewer_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, (index / 250) as u8, (index % 250 + 1) as u8)
}

fn viewer_index(ip: Ipv4Addr) -> Option<usize> {
    let [a, b, c, d] = ip.octets();
    (a == 127 && b == 2 && (1..=250).contains(&d))
        .then(|| usize::from(c) * 250 + usize::from(d) - 1)
}

fn form_of(index: usize, seed_percent: usize) -> Form {
    // Spread evenly: with 50 %, every other viewer.
    if (index + 1) * seed_percent / 100 > index * seed_percent / 100 {
        Form::Seed
    } else {
        Form::V1
    }
}

/// CPU time (user + system) of a process, µs, from /proc/<pid>/stat.
fn cpu_us(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file; after the ")" they are the 12th and 13th.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000 / hz)
}

/// Resident set size of a process, KiB, from /proc/<pid>/status.
fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("odd VmRSS")?
        .parse()?)
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The server process; stopped (SIGTERM, then SIGKILL) when dropped.
struct ServerProc {
    child: Child,
    addr: SocketAddrV4,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    fn start(args: &Args) -> anyhow::Result<ServerProc> {
        let exe = match &args.server {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no folder for this binary")?
                .join("surv-server"),
        };
        if !exe.exists() {
            bail!(
                "no server binary at {}: build it with `cargo build --release -p surv-server -p surv-tests`, or pass --server",
                exe.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let (w, h) = args.size;
        let child = Command::new(&exe)
            .args(["--source", "test", "--bind", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args([
                "--size",
                &format!("{w}x{h}"),
                "--fps",
                &args.fps.to_string(),
            ])
            .args(["--max-viewers", &(args.viewers + 64).to_string()])
            .arg("--log-dir")
            .arg(dir.path())
            .args(&args.server_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let srv = ServerProc {
            child,
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            log,
            _dir: dir,
        };
        let until = Instant::now() + WAIT_LIMIT;
        while TcpStream::connect_timeout(&srv.addr.into(), Duration::from_secs(1)).is_err() {
            if Instant::now() > until {
                bail!(
                    "the server did not listen on {}: {}",
                    srv.addr,
                    srv.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(srv)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) and returns the server's log.
    fn stop(mut self) -> String {
        self.terminate();
        self.log_text()
    }

    fn terminate(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A `key=value` number from the server's final stats line.
fn log_field(log: &str, key: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("final stats"))?;
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let v: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    v.parse().ok()
}

/// What the receiving thread shares with the rest.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Newest frame number seen.
    max_seq: AtomicU64,
    /// Frames `lo..=hi` are the measured ones (hi = 0: not measuring yet).
    lo: AtomicU64,
    hi: AtomicU64,
    datagrams: AtomicU64,
    /// Bytes of the measured frames, all viewers.
    bytes: AtomicU64,
    /// Baseline mode: untagged datagrams (GStreamer's) are counted while this is set.
    count_untagged: AtomicBool,
}

/// What the receiving thread found.
struct Tallies {
    /// Measured frames received, per viewer index.
    per_viewer: Vec<u32>,
    /// Capture → kernel receipt, µs, measured frames only.
    latency_us: Histogram<u64>,
    /// Capture → the generator reading it, µs.
    app_latency_us: Histogram<u64>,
    untagged: u64,
    ack_errors: u64,
}

fn receive_loop(
    sock: &UdpSocket,
    shared: &Shared,
    seed_percent: usize,
    ends: &mpsc::Receiver<usize>,
) -> Tallies {
    let mut t = Tallies {
        per_viewer: vec![0; MAX_VIEWER_INDEX],
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        app_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        untagged: 0,
        ack_errors: 0,
    };
    let mut senders: HashMap<usize, SocketAddrV4> = HashMap::new();
    let mut rb = mmsg::RecvBatch::new(RECV_BATCH);
    let mut sb = mmsg::SendBatch::default();
    let mut ack_text = String::with_capacity(32);
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(sock),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stop.load(Relaxed) {
        while let Ok(index) = ends.try_recv() {
            if let Some(to) = senders.remove(&index) {
                sb.push(b"end", to, viewer_ip(index));
            }
        }
        // SAFETY: one pollfd, alive for the call; 20 ms bound so that `stop` is seen.
        unsafe { libc::poll(&mut pfd, 1, 20) };
        // Drain what is queued, a bounded number of batches before looking at `stop` again.
        for _ in 0..64 {
            let (lo, hi) = (shared.lo.load(Relaxed), shared.hi.load(Relaxed));
            let now_ns = unix_ns();
            let got = rb.recv(sock, |d| {
                let Some(index) = viewer_index(d.to) else {
                    return;
                };
                let Ok(tag) = FrameTag::decode(d.prefix) else {
                    t.untagged += 1;
                    if shared.count_untagged.load(Relaxed) {
                        t.per_viewer[index] += 1;
                        shared.bytes.fetch_add(d.len as u64, Relaxed);
                    }
                    return;
                };
                senders.insert(index, d.from);
                shared.datagrams.fetch_add(1, Relaxed);
                if tag.seq > shared.max_seq.load(Relaxed) {
                    shared.max_seq.store(tag.seq, Relaxed);
                }
                if hi != 0 && (lo..=hi).contains(&tag.seq) {
                    t.per_viewer[index] += 1;
                    shared.bytes.fetch_add(d.len as u64, Relaxed);
                    let cap_ns = tag.capture_unix_us * 1000;
                    if let Some(rx) = d.rx_unix_ns {
                        let _ = t.latency_us.record(rx.saturating_sub(cap_ns) / 1000 + 1);
                    }
                    let _ = t
                        .app_latency_us
                        .record(now_ns.saturating_sub(cap_ns) / 1000 + 1);
                }
                ack_text.clear();
                match form_of(index, seed_percent) {
                    Form::Seed => ack_text.push_str("continue"),
                    Form::V1 => {
                        use std::fmt::Write as _;
                        let _ = write!(ack_text, "continue {}", tag.seq);
                    }
                }
                sb.push(ack_text.as_bytes(), d.from, d.to);
            });
            if sb.len() > 0 && sb.flush(sock).is_err() {
                t.ack_errors += 1;
            }
            match got {
                Ok(n) if n == RECV_BATCH => continue,
                _ => break,
            }
        }
        if sb.len() > 0 && sb.flush(sock).is_err() {
            t.ack_errors += 1;
        }
    }
    t
}

/// A registered viewer's TCP connection.
struct Viewer {
    index: usize,
    _tcp: TcpStream,
}

/// Registers viewers `indices` (in batches under the server's pending-registration limit).
/// Returns the connections and the number refused or failed.
fn register_all(
    server: SocketAddrV4,
    indices: &[usize],
    udp_port: u16,
    seed_percent: usize,
) -> (Vec<Viewer>, Vec<String>) {
    let mut ok = Vec::with_capacity(indices.len());
    let mut failed = Vec::new();
    for batch in indices.chunks(REGISTER_BATCH) {
        let mut pending = Vec::with_capacity(batch.len());
        for &index in batch {
            let form = form_of(index, seed_percent);
            match connect_and_send(server, index, udp_port, form) {
                Ok(tcp) => pending.push((index, form, tcp)),
                Err(e) => failed.push(format!("viewer {index}: {e:#}")),
            }
        }
        for (index, form, tcp) in pending {
            match form {
                Form::Seed => ok.push(Viewer { index, _tcp: tcp }),
                Form::V1 => match read_reply(&tcp) {
                    Ok(Reply::Accepted(_)) => ok.push(Viewer { index, _tcp: tcp }),
                    Ok(Reply::Refused(r)) => failed.push(format!("viewer {index}: refused: {r}")),
                    Err(e) => failed.push(format!("viewer {index}: {e:#}")),
                },
            }
        }
        // Seed registrations end with a 50 ms pause: let this batch's settle before the next.
        std::thread::sleep(Duration::from_millis(80));
    }
    (ok, failed)
}

fn connect_and_send(
    server: SocketAddrV4,
    index: usize,
    udp_port: u16,
    form: Form,
) -> anyhow::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from(SocketAddrV4::new(viewer_ip(index), 0)).into())
        .context("binding the viewer's TCP socket")?;
    sock.connect_timeout(&SocketAddr::from(server).into(), Duration::from_secs(5))
        .context("connecting")?;
    let mut tcp: TcpStream = sock.into();
    tcp.write_all(&Registration { form, udp_port }.encode())?;
    Ok(tcp)
}

/// Reads the server's reply byte-wise, as surv-client does: surv-proto frames it. The whole
/// line is due within 10 s, however slowly it trickles in.
fn read_reply(mut tcp: &TcpStream) -> anyhow::Result<Reply> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no whole reply within 10 s");
        }
        tcp.set_read_timeout(Some(left))?;
        if tcp.read(&mut byte)? == 0 {
            bail!("closed without a reply");
        }
        line.push(byte[0]);
        match Reply::decode(&line) {
            Err(ReplyError::Incomplete) => {}
            Ok((reply, _)) => return Ok(reply),
            Err(e) => return Err(e.into()),
        }
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + WAIT_LIMIT;
    while !cond() {
        if Instant::now() > until {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.viewers == 0 || args.viewers > MAX_VIEWER_INDEX / 2 {
        bail!("--viewers must be 1..={}", MAX_VIEWER_INDEX / 2);
    }
    // Every viewer holds a TCP connection: the same limit as the server's, raised the same way.
    let fd_limit = surv_server::udp_batch::raise_fd_limit().unwrap_or(0);
    if (fd_limit as usize) < args.viewers + 64 {
        eprintln!(
            "surv-load: warning: open-file limit {fd_limit} is below {} viewers",
            args.viewers
        );
    }
    let udp = UdpSocket::bind("0.0.0.0:0").context("binding the generator's UDP socket")?;
    if let Err(e) = mmsg::bind_to_loopback(&udp) {
        eprintln!(
            "surv-load: warning: cannot keep the UDP socket to lo ({e}); it is bound to 0.0.0.0"
        );
    }
    mmsg::configure(&udp, 256 << 20).context("configuring the generator's UDP socket")?;
    let udp_port = udp.local_addr()?.port();

    if args.gst_baseline {
        return gst_baseline(&args, &udp, udp_port);
    }
    let server = ServerProc::start(&args)?;
    let pid = server.pid();
    // The server with its frames but no viewer: what each viewer adds is measured from here.
    std::thread::sleep(Duration::from_millis(1000));
    let rss_base_kib = rss_kib(&pid)?;

    let shared = Arc::new(Shared::default());
    let (end_tx, end_rx) = mpsc::channel();
    let receiver = {
        let shared = shared.clone();
        let udp = udp.try_clone()?;
        let seed_percent = args.seed_percent;
        std::thread::Builder::new()
            .name("load-recv".into())
            .spawn(move || receive_loop(&udp, &shared, seed_percent, &end_rx))?
    };
    let gen_pid = std::process::id().to_string();

    let t_reg = Instant::now();
    let indices: Vec<usize> = (0..args.viewers).collect();
    let (mut viewers, failed) = register_all(server.addr, &indices, udp_port, args.seed_percent);
    let reg_secs = t_reg.elapsed().as_secs_f64();
    if !failed.is_empty() {
        eprintln!(
            "surv-load: {} registrations failed, e.g. {}",
            failed.len(),
            failed[0]
        );
    }

    if let Some(churn_secs) = args.churn_secs {
        let result = churn(
            &args,
            &server,
            &shared,
            &end_tx,
            &mut viewers,
            churn_secs,
            rss_base_kib,
            udp_port,
        );
        shared.stop.store(true, Relaxed);
        let _ = receiver.join();
        server.stop();
        return result;
    }

    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    let frames = (f64::from(args.fps) * args.seconds).round().max(1.0) as u64;
    let lo = shared.max_seq.load(Relaxed) + 2;
    shared.lo.store(lo, Relaxed);
    shared.hi.store(lo + frames - 1, Relaxed);
    wait_until("the first measured frame", || {
        shared.max_seq.load(Relaxed) >= lo
    })?;
    let (srv0, gen0, t0) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, Instant::now());
    wait_until("the last measured frame", || {
        shared.max_seq.load(Relaxed) > lo + frames - 1
    })?;
    let (srv1, gen1, secs) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, t0.elapsed().as_secs_f64());
    let rss_kib_loaded = rss_kib(&pid)?;
    // Late datagrams of the last measured frames still count.
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    let tallies = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    drop(viewers);
    let log = server.stop();
    let bytes = shared.bytes.load(Relaxed);

    let n = args.viewers;
    let mut counts: Vec<u32> = (0..n).map(|i| tallies.per_viewer[i]).collect();
    counts.sort_unstable();
    let worst = counts[0];
    let median = counts[n / 2];
    let delivered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let measured_secs = frames as f64 / f64::from(args.fps);
    let srv_cpu = srv1.saturating_sub(srv0);
    let gen_cpu = gen1.saturating_sub(gen0);
    let captured = log_field(&log, "captured").unwrap_or(0.0);
    let encoded = log_field(&log, "encoded").unwrap_or(0.0);
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
    if tallies.untagged + tallies.ack_errors > 0 {
        eprintln!(
            "surv-load: {} untagged datagrams, {} ack send errors",
            tallies.untagged, tallies.ack_errors
        );
    }
    Ok(())
}

/// The memory run: `churn_per_sec` viewers leave and as many new ones join every second, for
/// `secs`; prints the server's RSS every `report_secs`.
#[allow(clippy::too_many_arguments)]
fn churn(
    args: &Args,
    server: &ServerProc,
    shared: &Shared,
    end_tx: &mpsc::Sender<usize>,
    viewers: &mut Vec<Viewer>,
    secs: f64,
    rss_base_kib: u64,
    udp_port: u16,
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
        let (new, bad) = register_all(server.addr, &fresh, udp_port, args.seed_percent);
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

/// Runs `gst-launch-1.0 videotestsrc ! jpegenc ! multiudpsink` to --viewers addresses (the same
/// 127.2.x.y as the viewers, no acks), receives as for surv-server, and prints GStreamer's CPU
/// per delivered datagram.
fn gst_baseline(args: &Args, udp: &UdpSocket, udp_port: u16) -> anyhow::Result<()> {
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
        std::thread::spawn(move || receive_loop(&udp, &shared, 0, &end_rx))
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
