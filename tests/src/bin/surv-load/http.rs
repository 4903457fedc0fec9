//! The HTTP runs: `--http N` (with `--http-slow`, `--http-stalled`) against surv-server's
//! `/stream.mjpg`, and `--gst-baseline --http N` against GStreamer's `tcpserversink` serving
//! the same size and rate as raw multipart; each prints one line of figures (see `http_clients.rs`
//! for the clients).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use surv_tests::http;

use crate::http_clients::{client, Kind, Tally, Target};
use crate::measure::{measure_window, wait_until};
use crate::procfs::{cpu_us, rss_kib};
use crate::server::ServerProc;
use crate::Args;

/// GStreamer's multipart boundary in the baseline.
const GST_BOUNDARY: &str = "gstloadpart";

/// Between two connections to GStreamer.
const GST_STAGGER: Duration = Duration::from_millis(10);

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The clients' runtime: a few worker threads, so that the generator stays cheap.
fn runtime(args: &Args) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?)
}

/// Starts `normal` + `slow` + `stalled` clients (indices in that order), `stagger` apart.
fn spawn_clients(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    target: Target,
    slow_bytes_per_sec: usize,
    stagger: Duration,
) -> Arc<Tally> {
    let (n, slow, stalled) = (args.http.unwrap_or(0), args.http_slow, args.http_stalled);
    let tally = Arc::new(Tally::new(n + slow + stalled));
    let target = Arc::new(target);
    for i in 0..n + slow + stalled {
        let kind = if i < n {
            Kind::Normal
        } else if i < n + slow {
            Kind::Slow {
                bytes_per_sec: slow_bytes_per_sec,
            }
        } else {
            Kind::Stalled
        };
        rt.spawn(client(i, kind, target.clone(), tally.clone()));
        std::thread::sleep(stagger);
    }
    tally
}

/// The newest frame's size, from `/snapshot.jpg` (what a slow client's byte rate is set from).
pub(crate) fn snapshot_bytes(port: u16) -> anyhow::Result<usize> {
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let limits = http::Limits::new(Duration::from_secs(5), 16 << 20);
    let r =
        http::blocking(http::get(to, "/snapshot.jpg", limits)).context("no snapshot response")?;
    Ok(r.body.len())
}

fn error_note(tally: &Tally) -> String {
    match tally.first_error.lock().ok().and_then(|e| e.clone()) {
        Some(e) => format!("{} client errors, first: {e}", tally.errors.load(Relaxed)),
        None => "0 client errors".into(),
    }
}

fn share(count: u32, frames: f64) -> f64 {
    100.0 * f64::from(count) / frames
}

/// `--http N [--http-slow S --http-stalled M]` against surv-server.
pub fn run_surv(args: &Args) -> anyhow::Result<()> {
    let (n, slow, stalled) = (args.http.unwrap_or(0), args.http_slow, args.http_stalled);
    let port = free_port()?;
    let extra = ["--http-port".to_string(), port.to_string()];
    let server = ServerProc::start_with(args, n + slow + stalled, &extra)?;
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(1000));
    let rss_idle = rss_kib(&pid)?;
    let frame_bytes = snapshot_bytes(port)?;
    let slow_rate = frame_bytes * args.fps as usize / 10;
    let rt = runtime(args)?;
    let target = Target {
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        request: Some("GET /stream.mjpg HTTP/1.1\r\nHost: load\r\n\r\n".into()),
        raw_boundary: String::new(),
    };
    let tally = spawn_clients(&rt, args, target, slow_rate, Duration::ZERO);
    let t_conn = Instant::now();
    wait_until("every normal and slow client's first part", || {
        tally.started.load(Relaxed) >= n + slow
    })
    .inspect_err(|_| eprintln!("surv-load: {}", error_note(&tally)))?;
    let conn_secs = t_conn.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));

    let window = measure_window(args, &pid, &tally.max_seq, &tally.lo, &tally.hi)?;
    let (frames, secs, rss_loaded) = (window.frames, window.secs, window.rss_kib);
    // Late parts of the measured frames still count; a slow client's come seconds late.
    let grace_ms = if slow > 0 { 3000 } else { 300 };
    std::thread::sleep(Duration::from_millis(grace_ms));
    tally.stop.store(true, Relaxed);
    rt.shutdown_timeout(Duration::from_secs(5));
    // The connections are closed: what the server keeps afterwards.
    std::thread::sleep(Duration::from_millis(1500));
    let rss_after = rss_kib(&pid)?;
    let journal = server.journal();
    server.stop();

    let normal = tally.sorted(0..n);
    let slow_counts = tally.sorted(n..n + slow);
    let delivered: u64 = tally.parts.iter().map(|c| u64::from(c.load(Relaxed))).sum();
    let measured_secs = frames as f64 / f64::from(args.fps);
    let srv_cpu = window.server_cpu_us as f64;
    let (w, h) = args.size;
    println!(
        "http clients={n} slow={slow} stalled={stalled} size={w}x{h}@{} ({} B/frame) measured={measured_secs:.1}s | fps worst={:.1} median={:.1} | frames to worst client={:.2}% median={:.2}% | server cpu/frame={:.2}us ({:.0}% of a core) gen cpu={:.0}% | rss={:.1}MiB ({:.1}MiB idle, {:.1}MiB after the clients left) | connected in {conn_secs:.1}s, {}",
        args.fps,
        tally.bytes.load(Relaxed) / delivered.max(1),
        f64::from(normal[0]) / measured_secs,
        f64::from(normal[n / 2]) / measured_secs,
        share(normal[0], frames as f64),
        share(normal[n / 2], frames as f64),
        srv_cpu / delivered.max(1) as f64,
        100.0 * srv_cpu / 1e6 / secs,
        100.0 * window.gen_cpu_us as f64 / 1e6 / secs,
        rss_loaded as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        error_note(&tally),
    );
    if slow > 0 {
        println!(
            "http slow clients={slow} reading {slow_rate} B/s (1/10 of {frame_bytes} B x {} fps, {SLOW_RCVBUF_NOTE}) | share worst={:.2}% median={:.2}%",
            args.fps,
            share(slow_counts[0], frames as f64),
            share(slow_counts[slow / 2], frames as f64),
        );
    }
    if stalled > 0 {
        let timeouts = journal
            .lines()
            .filter(|l| {
                l.contains(" LEAVE ") && l.contains("form=http") && l.contains("reason=timeout")
            })
            .count();
        println!(
            "http stalled clients={stalled} | journal: {timeouts} http LEAVEs with reason=timeout"
        );
    }
    Ok(())
}

const SLOW_RCVBUF_NOTE: &str = "SO_RCVBUF 4096";

/// `--gst-baseline --http N`: GStreamer's tcpserversink, the same size and rate, N clients.
pub fn run_gst(args: &Args) -> anyhow::Result<()> {
    let n = args.http.unwrap_or(0);
    let port = free_port()?;
    let (w, h) = args.size;
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(["videotestsrc", "is-live=true", "!"])
        .arg(format!("video/x-raw,width={w},height={h},framerate={}/1", args.fps))
        .args(["!", "jpegenc", "!", "multipartmux"])
        .arg(format!("boundary={GST_BOUNDARY}"))
        .args(["!", "tcpserversink", "host=127.0.0.1"])
        .arg(format!("port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting gst-launch-1.0 (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)")?;
    let pid = child.id().to_string();
    let result = (|| {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until("GStreamer listening", || {
            TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
        })?;
        let rt = runtime(args)?;
        let target = Target {
            addr,
            request: None,
            raw_boundary: GST_BOUNDARY.into(),
        };
        // tcpserversink listens with a short backlog: connections made all at once beyond it
        // complete on our side only and are not served for many seconds.
        let tally = spawn_clients(&rt, args, target, 0, GST_STAGGER);
        wait_until("every client's first part", || {
            tally.started.load(Relaxed) >= n
        })
        .inspect_err(|_| {
            eprintln!(
                "surv-load: {} of {n} clients got a part; {}",
                tally.started.load(Relaxed),
                error_note(&tally)
            )
        })?;
        std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
        let gen_pid = std::process::id().to_string();
        tally.count_all.store(true, Relaxed);
        let (c0, g0, t0) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, Instant::now());
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        let (c1, g1, secs) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, t0.elapsed().as_secs_f64());
        tally.count_all.store(false, Relaxed);
        let rss = rss_kib(&pid)?;
        tally.stop.store(true, Relaxed);
        rt.shutdown_timeout(Duration::from_secs(5));
        let counts = tally.sorted(0..n);
        let delivered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let published = f64::from(args.fps) * secs;
        let cpu = c1.saturating_sub(c0) as f64;
        println!(
            "gst tcpserversink clients={n} size={w}x{h}@{} ({} B/frame) measured={secs:.1}s | fps worst={:.1} median={:.1} | parts to worst client={:.2}% median={:.2}% of fps x seconds | gst cpu/frame={:.2}us ({:.0}% of a core) gen cpu={:.0}% | rss={:.1}MiB | {}",
            args.fps,
            tally.bytes.load(Relaxed) / delivered.max(1),
            f64::from(counts[0]) / secs,
            f64::from(counts[n / 2]) / secs,
            share(counts[0], published),
            share(counts[n / 2], published),
            cpu / delivered.max(1) as f64,
            100.0 * cpu / 1e6 / secs,
            100.0 * g1.saturating_sub(g0) as f64 / 1e6 / secs,
            rss as f64 / 1024.0,
            error_note(&tally),
        );
        Ok(())
    })();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result
}
