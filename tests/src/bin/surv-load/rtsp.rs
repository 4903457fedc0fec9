//! The RTSP runs: `--rtsp N` against surv-server's RTSP server (H.264 or RTP/JPEG, over TCP
//! interleaved or UDP; see `rtsp_watchers.rs` for the watchers), and `--gst-baseline --rtsp N
//! --rtsp-transport udp`, GStreamer's `jpegenc ! rtpjpegpay ! multiudpsink` to as many UDP
//! receivers; each prints its figures.
//!
//! Shares are per watcher: complete frames received in the measured window against the frames
//! the server published in it (its `/status` counters, read at the window's edges; ±1 frame of
//! alignment). The H.264 encoder's counters come from `/status` (`cameras[0].h264`) when the
//! server has them; otherwise from its encoder thread (`h264-<camera>`)'s CPU in /proc.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use surv_tests::http;

use crate::http::{free_port, snapshot_bytes};
use crate::measure::wait_longer_until;
use crate::procfs::{cpu_us, rss_kib, threads_cpu_us};
use crate::rtsp_watchers::{bind_pairs, listen, watcher, Tally, Target, Transport};
use crate::server::ServerProc;
use crate::Args;

/// Seconds of server CPU sampled with no watcher (its idle cost, for reading the figures).
const IDLE_SECS: f64 = 2.0;

/// A camera's counters from `/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub captured: u64,
    pub published: u64,
    /// `cameras[0].h264`, when the server reports it.
    pub h264: Option<H264Counters>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct H264Counters {
    pub encodes: u64,
    /// Units decoded for pictures, and units passed through from an H.264 camera.
    pub decodes: u64,
    pub passed_through: u64,
    pub encode_us: u64,
    pub skipped: u64,
    pub keyframes_forced: u64,
}

/// `GET /status` on the server's HTTP port: the first camera's counters.
pub(crate) fn status(port: u16) -> anyhow::Result<Counters> {
    let json = status_json(port)?;
    let camera = &json["cameras"][0];
    let n = |v: &serde_json::Value| v.as_u64();
    let h264 = &camera["h264"];
    Ok(Counters {
        captured: n(&camera["captured"]).context("no cameras[0].captured in /status")?,
        published: n(&camera["published"]).context("no cameras[0].published in /status")?,
        h264: match (n(&h264["encodes"]), n(&h264["encode_us"])) {
            (Some(encodes), Some(encode_us)) => Some(H264Counters {
                encodes,
                encode_us,
                decodes: n(&h264["decodes"]).unwrap_or(0),
                passed_through: n(&h264["passed_through"]).unwrap_or(0),
                skipped: n(&h264["skipped"]).unwrap_or(0),
                keyframes_forced: n(&h264["keyframes_forced"]).unwrap_or(0),
            }),
            _ => None,
        },
    })
}

/// The clients' runtime: a few worker threads, so that the generator stays cheap.
fn runtime(args: &Args) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?)
}

fn median(sorted: &[u64]) -> u64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// Per-watcher figures over a window of `secs` in which `published` frames went out.
struct Shares {
    min_frames: u64,
    median_frames: u64,
    delivered: u64,
    median_bps: f64,
    min_bps: f64,
    max_bps: f64,
}

/// The figures of watchers `which` (at least one).
fn shares(tally: &Tally, which: std::ops::Range<usize>, secs: f64) -> Shares {
    let n = which.len();
    let mut frames: Vec<u64> = tally.frames[which.clone()]
        .iter()
        .map(|c| u64::from(c.load(Relaxed)))
        .collect();
    frames.sort_unstable();
    let mut bytes: Vec<u64> = tally.bytes[which].iter().map(|c| c.load(Relaxed)).collect();
    bytes.sort_unstable();
    let bps = |b: u64| 8.0 * b as f64 / secs;
    Shares {
        min_frames: frames[0],
        median_frames: median(&frames),
        delivered: frames.iter().sum(),
        median_bps: bps(median(&bytes)),
        min_bps: bps(bytes[0]),
        max_bps: bps(bytes[n - 1]),
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn mbit(bps: f64) -> f64 {
    bps / 1e6
}

/// `--rtsp N` against surv-server.
pub fn run_surv(args: &Args) -> anyhow::Result<()> {
    let n = args.rtsp.unwrap_or(0);
    let (http_port, rtsp_port) = (free_port()?, free_port()?);
    let extra: Vec<String> = [
        "--http-port",
        &http_port.to_string(),
        "--rtsp-port",
        &rtsp_port.to_string(),
        "--rtsp-udp-port",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let server = ServerProc::start_with(args, n, &extra)?;
    let pid = server.pid();
    let rtsp_addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, rtsp_port);
    wait_longer_until("the RTSP port", Duration::ZERO, || {
        TcpStream::connect_timeout(&rtsp_addr.into(), Duration::from_millis(200)).is_ok()
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    // The server with its test pattern and no watcher: its own cost, and its JPEG's size.
    let rss_idle = rss_kib(&pid)?;
    let (c0, t0) = (cpu_us(&pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(IDLE_SECS));
    let idle_pct =
        100.0 * cpu_us(&pid)?.saturating_sub(c0) as f64 / 1e6 / t0.elapsed().as_secs_f64();
    let jpeg_bytes = snapshot_bytes(http_port)?;

    let rt = runtime(args)?;
    let slow = if args.rtsp_transport == Transport::Tcp {
        args.rtsp_slow
    } else {
        0
    };
    let slow_bps = args.rtsp_slow_kbit * 1000 / 8;
    let tally = Arc::new(Tally::new(n + slow));
    let target = Arc::new(Target {
        addr: rtsp_addr,
        path: args.rtsp_path.trim_matches('/').to_string(),
        transport: args.rtsp_transport,
    });
    let stagger = Duration::from_millis(args.rtsp_stagger_ms);
    let t_conn = Instant::now();
    for i in 0..n + slow {
        let pace = (i >= n).then_some(slow_bps);
        rt.spawn(watcher(i, target.clone(), tally.clone(), pace));
        std::thread::sleep(stagger);
    }
    let all = n + slow;
    wait_longer_until("every watcher playing", stagger * all as u32, || {
        tally.playing.load(Relaxed) + tally.errors.load(Relaxed) >= all
    })
    .inspect_err(|_| eprintln!("surv-load: {}", tally.error_note()))?;
    let conn_secs = t_conn.elapsed().as_secs_f64();
    if tally.playing.load(Relaxed) < all {
        eprintln!(
            "surv-load: only {} of {all} watchers play; {}",
            tally.playing.load(Relaxed),
            tally.error_note()
        );
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));

    let gen_pid = std::process::id().to_string();
    let encoder_cpu = || -> u64 { threads_cpu_us(&pid, "h264-").iter().map(|t| t.1).sum() };
    let (s0, enc0) = (status(http_port)?, encoder_cpu());
    let (srv0, gen0, w0) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, Instant::now());
    tally.measuring.store(true, Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    tally.measuring.store(false, Relaxed);
    let (srv1, gen1, secs) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, w0.elapsed().as_secs_f64());
    let (s1, enc1) = (status(http_port)?, encoder_cpu());
    let encoder_threads = threads_cpu_us(&pid, "h264-").len();
    let rss_loaded = rss_kib(&pid)?;
    std::thread::sleep(Duration::from_millis(300));
    tally.stop.store(true, Relaxed);
    rt.shutdown_timeout(Duration::from_secs(5));
    let (_log, journal) = server.stop_with_journal();

    let captured = s1.captured.saturating_sub(s0.captured);
    // The frames the watchers could get: the JPEGs published (RTP/JPEG), or the H.264 units
    // made (encoded) or passed through (an H.264 camera, whose JPEGs are made only on demand).
    let published = match (target.path.ends_with("mjpeg"), s0.h264, s1.h264) {
        (false, Some(a), Some(b)) => {
            b.encodes.saturating_sub(a.encodes) + b.passed_through.saturating_sub(a.passed_through)
        }
        _ => s1.published.saturating_sub(s0.published),
    };
    let s = shares(&tally, 0..n, secs);
    let srv_cpu = srv1.saturating_sub(srv0) as f64;
    let server_us = srv_cpu / s.delivered.max(1) as f64;
    let skipped: u64 = journal
        .lines()
        .filter(|l| l.contains(" LEAVE ") && l.contains("form=rtsp"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("frames_skipped=")))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    let (w, h) = args.size;
    let fps = args.fps;
    println!(
        "rtsp watchers={n} transport={:?} path=/{} size={w}x{h}@{fps} measured={secs:.1}s, {published} frames for the watchers (captured {captured}) | frames per watcher min={} ({:.2}%) median={} ({:.2}%) | {} incomplete frames, {} packets missing | {}",
        args.rtsp_transport,
        target.path,
        s.min_frames,
        pct(s.min_frames, published),
        s.median_frames,
        pct(s.median_frames, published),
        tally.incomplete.load(Relaxed),
        tally.lost_packets.load(Relaxed),
        tally.error_note(),
    );
    println!(
        "server cpu={:.1}% of a core ({idle_pct:.1}% idle, no watcher) = {:.2}us per delivered frame | rss={:.1}MiB ({:.1}MiB idle) | gen cpu={:.0}% | frames skipped by the server (journal LEAVEs): {skipped} | {} datagrams not from the server | connected in {conn_secs:.1}s",
        100.0 * srv_cpu / 1e6 / secs,
        server_us,
        rss_loaded as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        100.0 * gen1.saturating_sub(gen0) as f64 / 1e6 / secs,
        tally.foreign.load(Relaxed),
    );
    if slow > 0 {
        let sl = shares(&tally, n..n + slow, secs);
        println!(
            "slow players={slow} reading {} kbit/s each (16 KiB receive buffer), not counted above: frames per player min={} ({:.2}%) median={} ({:.2}%), bit rate median {:.2} Mbit/s (the journal's skipped frames above include theirs)",
            args.rtsp_slow_kbit,
            sl.min_frames,
            pct(sl.min_frames, published),
            sl.median_frames,
            pct(sl.median_frames, published),
            mbit(sl.median_bps),
        );
    }
    let encoder_us = enc1.saturating_sub(enc0) as f64;
    let jpeg_mount = target.path.ends_with("mjpeg");
    match (s0.h264, s1.h264) {
        // RTP/JPEG carries the published JPEGs: no encoder runs.
        _ if jpeg_mount => {}
        (Some(a), Some(b)) => {
            let encodes = b.encodes.saturating_sub(a.encodes);
            let decodes = b.decodes.saturating_sub(a.decodes);
            let passed = b.passed_through.saturating_sub(a.passed_through);
            println!(
                "h264 passed through/captured={:.3} ({passed}) decodes/captured={:.3} ({decodes}) encodes/captured={:.3} ({encodes} of {captured}) | encode={:.0}us per frame (JPEG decode + H.264 code; encoder threads' CPU {:.0}us per frame, {encoder_threads} thread) | skipped by the encoder {} | keyframes forced {} in the window, {} in the run",
                passed as f64 / captured.max(1) as f64,
                decodes as f64 / captured.max(1) as f64,
                encodes as f64 / captured.max(1) as f64,
                b.encode_us.saturating_sub(a.encode_us) as f64 / encodes.max(1) as f64,
                encoder_us / published.max(1) as f64,
                b.skipped.saturating_sub(a.skipped),
                b.keyframes_forced.saturating_sub(a.keyframes_forced),
                b.keyframes_forced,
            );
        }
        _ => println!(
            "h264 encodes/captured=n/a (no h264 counters in this server's /status) | encoder threads (h264-*): {encoder_threads}, their CPU {:.0}us per published frame",
            encoder_us / published.max(1) as f64,
        ),
    }
    let mut first_key: Vec<u64> = tally.first_key_us[..n]
        .iter()
        .map(|c| c.load(Relaxed))
        .filter(|&us| us != u64::MAX)
        .collect();
    first_key.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "bit rate per watcher median={:.2} Mbit/s (min {:.2}, max {:.2}) | MJPEG of the same picture: {jpeg_bytes} B/frame x {fps} fps = {:.2} Mbit/s | PLAY sent -> first complete keyframe: median={:.1}ms max={:.1}ms ({} of {n} watchers got none)",
        mbit(s.median_bps),
        mbit(s.min_bps),
        mbit(s.max_bps),
        mbit(8.0 * jpeg_bytes as f64 * f64::from(fps)),
        ms(median(&first_key)),
        ms(first_key.last().copied().unwrap_or(0)),
        n - first_key.len(),
    );
    if args.send_floor {
        let frame_bytes = (s.median_bps / 8.0 / f64::from(fps.max(1))) as usize;
        let threads = args.client_threads;
        let secs = args.seconds.max(3.0);
        let (floor, how) = match args.rtsp_transport {
            Transport::Tcp => (
                crate::floor::tcp_send_floor(n, frame_bytes, fps, secs, threads)?,
                format!("interleaved RTP (one writev per frame per reader) to {n} loopback TCP readers"),
            ),
            Transport::Udp => (
                crate::floor::udp_send_floor(n, frame_bytes, fps, secs, threads)?,
                format!("RTP datagrams (one segmented sendmsg per frame per reader) to {n} loopback UDP readers"),
            ),
        };
        println!(
            "send floor: one bare writer thread, {frame_bytes} B a frame as {} on {threads} threads: {:.1}% of a core = {:.2}us per delivered frame | the server {server_us:.2}us ({:.2}x the floor)",
            how,
            floor.pct,
            floor.us_per_frame,
            server_us / floor.us_per_frame,
        );
    }
    Ok(())
}

/// `--gst-baseline --rtsp N --rtsp-transport udp`: GStreamer's `jpegenc ! rtpjpegpay mtu=1200 !
/// multiudpsink` at the same size and rate to N receivers' RTP ports, received and counted as
/// the watchers count; its CPU per delivered frame.
pub fn run_gst(args: &Args) -> anyhow::Result<()> {
    let n = args.rtsp.unwrap_or(0);
    if args.rtsp_transport != Transport::Udp {
        bail!("--gst-baseline --rtsp goes with --rtsp-transport udp (multiudpsink)");
    }
    let pairs = bind_pairs(n).context("binding the receivers' UDP pairs")?;
    let clients: Vec<String> = pairs
        .iter()
        .map(|(rtp, _)| rtp.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?;
    let (w, h) = args.size;
    let fps = args.fps;
    let rt = runtime(args)?;
    let tally = Arc::new(Tally::new(n));
    let mut held = Vec::new();
    for (i, (rtp, rtcp)) in pairs.into_iter().enumerate() {
        let tally = tally.clone();
        rt.spawn(async move { listen(i, rtp, tally).await });
        held.push(rtcp);
    }
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(["videotestsrc", "is-live=true", "!"])
        // 4:2:0, which RTP/JPEG carries: left to itself, videotestsrc ! jpegenc settles on
        // 4:4:4, which rtpjpegpay refuses ("Invalid component").
        .arg(format!(
            "video/x-raw,format=I420,width={w},height={h},framerate={fps}/1"
        ))
        .args(["!", "jpegenc", "!", "rtpjpegpay", "mtu=1200", "!", "multiudpsink"])
        .arg(format!("clients={}", clients.join(",")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting gst-launch-1.0 (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)")?;
    let pid = child.id().to_string();
    let result = (|| {
        std::thread::sleep(Duration::from_secs_f64(args.warmup_secs + 1.0));
        let gen_pid = std::process::id().to_string();
        let (c0, g0, t0) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, Instant::now());
        tally.measuring.store(true, Relaxed);
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        tally.measuring.store(false, Relaxed);
        let (c1, g1, secs) = (cpu_us(&pid)?, cpu_us(&gen_pid)?, t0.elapsed().as_secs_f64());
        let rss = rss_kib(&pid)?;
        let s = shares(&tally, 0..n, secs);
        let sent = (f64::from(fps) * secs).round() as u64;
        let cpu = c1.saturating_sub(c0) as f64;
        println!(
            "gst rtpjpegpay mtu=1200 multiudpsink receivers={n} size={w}x{h}@{fps} measured={secs:.1}s | frames per receiver min={} ({:.2}% of fps x seconds) median={} ({:.2}%) | {} incomplete frames, {} packets missing | gst cpu={:.1}% of a core = {:.2}us per delivered frame | rss={:.1}MiB | gen cpu={:.0}% | bit rate per receiver median={:.2} Mbit/s ({:.0} B/frame) | {}",
            s.min_frames,
            pct(s.min_frames, sent),
            s.median_frames,
            pct(s.median_frames, sent),
            tally.incomplete.load(Relaxed),
            tally.lost_packets.load(Relaxed),
            100.0 * cpu / 1e6 / secs,
            cpu / s.delivered.max(1) as f64,
            rss as f64 / 1024.0,
            100.0 * g1.saturating_sub(g0) as f64 / 1e6 / secs,
            mbit(s.median_bps),
            s.median_bps / 8.0 / f64::from(fps),
            tally.error_note(),
        );
        Ok(())
    })();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    tally.stop.store(true, Relaxed);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(held);
    result
}

/// The server's `/status`, parsed.
pub(crate) fn status_json(port: u16) -> anyhow::Result<serde_json::Value> {
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let limits = http::Limits::new(Duration::from_secs(5), 16 << 20);
    let r = http::blocking(http::get(to, "/status", limits)).context("no /status response")?;
    let json: serde_json::Value = serde_json::from_slice(&r.body)
        .with_context(|| format!("/status is no JSON: {:?}", r.status_line()))?;
    Ok(json)
}
