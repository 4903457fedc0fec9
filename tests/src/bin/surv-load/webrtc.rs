//! `--webrtc N`: N WebRTC viewers of the camera by WHEP, each a str0m peer of its own (its own
//! UDP socket, ICE, DTLS, SRTP and H.264 depacketizer) on a thread of its own: the frames each
//! gets against the H.264 frames the server made, the server's CPU per viewer, encodes per
//! captured frame, bits per viewer and POST → first frame.
//!
//! The server allows a bounded number of peers connecting at once (503 with `Retry-After`
//! past it); a viewer answered so tries again, up to `POST_TRIES` times.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use surv_tests::http;

use crate::http::{free_port, snapshot_bytes};
use crate::measure::{percentile, wait_longer_until};
use crate::procfs::{cpu_us, rss_kib};
use crate::rtsp::{status, Counters};
use crate::server::ServerProc;
use crate::Args;

/// A viewer answered 503 (too many peers connecting) tries again this many times at most.
const POST_TRIES: u32 = 40;
/// Between two viewers' starts.
const STAGGER: Duration = Duration::from_millis(15);
/// The server alone, before any viewer.
const IDLE_SECS: f64 = 3.0;

/// What the viewers saw, shared with their threads.
pub(crate) struct Tally {
    pub(crate) frames: Vec<AtomicU64>,
    /// Frames str0m said were not contiguous with the one before (packets lost between).
    pub(crate) broken: AtomicU64,
    pub(crate) bytes: Vec<AtomicU64>,
    /// RTP time (90 kHz) of each viewer's first and last frame while measuring (u64::MAX:
    /// none yet): how many frames the stream carried over the viewer's window.
    pub(crate) first_rtp: Vec<AtomicU64>,
    pub(crate) last_rtp: Vec<AtomicU64>,
    /// POST → first frame, µs (u64::MAX: none yet).
    pub(crate) first_us: Vec<AtomicU64>,
    pub(crate) playing: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) errors: Mutex<Vec<String>>,
    pub(crate) measuring: AtomicBool,
    pub(crate) stop: AtomicBool,
    /// Per viewer, every frame while measuring (`--whep-url` runs only).
    pub(crate) samples: Option<Vec<Mutex<Vec<Sample>>>>,
    pub(crate) started: Instant,
}

/// One frame a viewer got: when (s since the tally began), capture → arrival (from the
/// server's sender reports, which map RTP time to the capture's wall clock; NaN before the
/// first), its bytes and RTP time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: f64,
    pub(crate) latency_ms: f64,
    /// Capture → arrival of the frame's first packet (str0m's `network_time`): the path's own
    /// delay, without the time the viewer's depacketizer held the frame for missing packets.
    pub(crate) first_packet_ms: f64,
    pub(crate) bytes: usize,
    pub(crate) rtp: u64,
}

impl Tally {
    pub(crate) fn new(n: usize) -> Tally {
        let counters = |v: u64| (0..n).map(|_| AtomicU64::new(v)).collect();
        Tally {
            frames: counters(0),
            broken: AtomicU64::new(0),
            bytes: counters(0),
            first_rtp: counters(u64::MAX),
            last_rtp: counters(u64::MAX),
            first_us: counters(u64::MAX),
            playing: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            samples: None,
            started: Instant::now(),
        }
    }

    fn with_samples(n: usize) -> Tally {
        Tally {
            samples: Some((0..n).map(|_| Mutex::new(Vec::new())).collect()),
            ..Tally::new(n)
        }
    }

    /// Keeps the first few viewers' errors for the report.
    pub(crate) fn fail(&self, i: usize, e: &anyhow::Error) {
        self.failed.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(format!("viewer {i}: {e:#}"));
        }
    }

    /// Frames the stream carried between viewer `i`'s first and last frame while measuring,
    /// both counted, at `fps` (RTP time 90 kHz); 0 if it got none.
    pub(crate) fn spanned(&self, i: usize, fps: u32) -> u64 {
        let (a, b) = (
            self.first_rtp[i].load(Relaxed),
            self.last_rtp[i].load(Relaxed),
        );
        if a == u64::MAX || b == u64::MAX {
            return 0;
        }
        rtp_frames_spanned(a, b, fps)
    }
}

/// Frames at `fps` from RTP time (90 kHz) `first` to `last`, both counted; modulo 2^32 like
/// the RTP field, whether or not str0m extended it.
fn rtp_frames_spanned(first: u64, last: u64, fps: u32) -> u64 {
    let ticks = last.wrapping_sub(first) & 0xffff_ffff;
    (ticks as f64 * f64::from(fps) / 90_000.0).round() as u64 + 1
}

pub fn run(args: &Args, n: usize) -> anyhow::Result<()> {
    if n == 0 || n > 2000 {
        bail!("--webrtc takes 1..=2000 viewers");
    }
    if let Some(url) = &args.whep_url {
        return run_external(args, n, url);
    }
    let http = free_port()?;
    let webrtc = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let extra = [
        "--http-port".to_string(),
        http.to_string(),
        "--webrtc-port".to_string(),
        webrtc.to_string(),
    ];
    let server = ServerProc::start_with(args, n, &extra)?;
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(1000));
    let (c0, t0) = (cpu_us(&pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(IDLE_SECS));
    let idle_pct =
        100.0 * cpu_us(&pid)?.saturating_sub(c0) as f64 / 1e6 / t0.elapsed().as_secs_f64();

    let tally = Arc::new(Tally::new(n));
    let whep = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, http));
    let t_conn = Instant::now();
    let threads = match start_viewers(n, "whep", &tally, move |i, tally| {
        viewer(i, whep, "/cam/main/whep", tally)
    }) {
        Ok(threads) => threads,
        Err(e) => {
            server.stop();
            return Err(e);
        }
    };
    let result = (|| {
        let conn_secs = t_conn.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
        let s0 = status(http)?;
        let (srv0, w0) = (cpu_us(&pid)?, Instant::now());
        tally.measuring.store(true, Relaxed);
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        tally.measuring.store(false, Relaxed);
        let (srv1, secs) = (cpu_us(&pid)?, w0.elapsed().as_secs_f64());
        let s1 = status(http)?;
        let rss = rss_kib(&pid)?;
        let jpeg_bytes = snapshot_bytes(http)?;
        let cpu_us = srv1.saturating_sub(srv0);
        report(
            args, n, &tally, &s0, &s1, secs, cpu_us, idle_pct, rss, conn_secs, jpeg_bytes,
        );
        Ok(())
    })();
    tally.stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    server.stop();
    result
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    n: usize,
    tally: &Tally,
    s0: &Counters,
    s1: &Counters,
    secs: f64,
    srv_cpu_us: u64,
    idle_pct: f64,
    rss_kib: u64,
    conn_secs: f64,
    jpeg_bytes: usize,
) {
    let (a, b) = (s0.h264.unwrap_or_default(), s1.h264.unwrap_or_default());
    let captured = s1.captured.saturating_sub(s0.captured);
    let encodes = b.encodes.saturating_sub(a.encodes);
    let made = encodes + b.passed_through.saturating_sub(a.passed_through);
    let mut frames: Vec<u64> = tally.frames.iter().map(|c| c.load(Relaxed)).collect();
    frames.sort_unstable();
    let mut bits: Vec<f64> = tally
        .bytes
        .iter()
        .map(|c| 8.0 * c.load(Relaxed) as f64 / secs)
        .collect();
    bits.sort_by(f64::total_cmp);
    let mut first: Vec<u64> = tally
        .first_us
        .iter()
        .map(|c| c.load(Relaxed))
        .filter(|&us| us != u64::MAX)
        .collect();
    first.sort_unstable();
    let share = |f: u64| 100.0 * f as f64 / made.max(1) as f64;
    let (w, h) = args.size;
    let cpu_pct = 100.0 * srv_cpu_us as f64 / 1e6 / secs;
    println!(
        "webrtc viewers={n} ({} playing, {} failed) size={w}x{h}@{} measured={secs:.1}s, {made} H.264 frames made (captured {captured}) | frames per viewer min={} ({:.2}%) median={} ({:.2}%) | {} frames not contiguous with the one before",
        tally.playing.load(Relaxed),
        tally.failed.load(Relaxed),
        args.fps,
        frames.first().copied().unwrap_or(0),
        share(frames.first().copied().unwrap_or(0)),
        frames[frames.len() / 2],
        share(frames[frames.len() / 2]),
        tally.broken.load(Relaxed),
    );
    println!(
        "server cpu={cpu_pct:.1}% of a core ({idle_pct:.1}% idle, no viewer) = {:.3}% per viewer, {:.2}us per delivered frame | encodes/captured={:.3} ({encodes} of {captured}) | rss={:.1}MiB | connected in {conn_secs:.1}s",
        (cpu_pct - idle_pct).max(0.0) / n as f64,
        srv_cpu_us as f64 / frames.iter().sum::<u64>().max(1) as f64,
        encodes as f64 / captured.max(1) as f64,
        rss_kib as f64 / 1024.0,
    );
    println!(
        "bit rate per viewer median={:.2} Mbit/s (min {:.2}, max {:.2}) | MJPEG of the same picture: {jpeg_bytes} B/frame x {} fps = {:.2} Mbit/s | POST -> first frame median={:.1}ms max={:.1}ms ({} of {n} got none) | {}",
        bits[bits.len() / 2] / 1e6,
        bits.first().copied().unwrap_or(0.0) / 1e6,
        bits.last().copied().unwrap_or(0.0) / 1e6,
        args.fps,
        8.0 * jpeg_bytes as f64 * f64::from(args.fps) / 1e6,
        first.get(first.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
        first.last().copied().unwrap_or(0) as f64 / 1000.0,
        n - first.len(),
        tally.errors.lock().unwrap().join("; "),
    );
}

/// One viewer: offer, POST, answer, then frames until told to stop.
fn viewer(i: usize, whep: SocketAddr, path: &str, tally: &Tally) -> anyhow::Result<()> {
    let socket = if whep.ip().is_loopback() {
        UdpSocket::bind("127.0.0.1:0")?
    } else {
        // The address this host reaches the server from (connecting a UDP socket sends nothing).
        let probe = UdpSocket::bind("0.0.0.0:0")?;
        probe.connect(whep)?;
        UdpSocket::bind((probe.local_addr()?.ip(), 0))?
    };
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().context("no offer")?;
    let offer = offer.to_sdp_string();
    let posted = Instant::now();
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        match post(whep, path, &offer)? {
            (201, body) => break body,
            (503, _) if tries < POST_TRIES => {
                std::thread::sleep(Duration::from_millis(250 + 10 * (i as u64 % 50)));
            }
            (status, body) => bail!("WHEP answered {status}: {}", body.trim()),
        }
    };
    let answer = SdpAnswer::from_sdp_string(&answer).context("the answer")?;
    rtc.sdp_api().accept_answer(pending, answer)?;
    play(i, rtc, &socket, tally, posted)
}

/// Runs viewer `i`'s peer on `socket` until the tally says stop: counts its frames (while
/// measuring) and its first frame's time after `started`. An error if ICE disconnects, or if
/// no frame came at all.
pub(crate) fn play(
    i: usize,
    mut rtc: Rtc,
    socket: &UdpSocket,
    tally: &Tally,
    started: Instant,
) -> anyhow::Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; 2048];
    let mut playing = false;
    while !tally.stop.load(Relaxed) {
        let deadline = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::MediaData(d)) => {
                    if !playing {
                        playing = true;
                        tally.playing.fetch_add(1, Relaxed);
                        tally.first_us[i].store(started.elapsed().as_micros() as u64, Relaxed);
                    }
                    if tally.measuring.load(Relaxed) {
                        if !d.contiguous {
                            tally.broken.fetch_add(1, Relaxed);
                        }
                        tally.frames[i].fetch_add(1, Relaxed);
                        tally.bytes[i].fetch_add(d.data.len() as u64, Relaxed);
                        let t = d.time.numer();
                        let _ = tally.first_rtp[i].compare_exchange(u64::MAX, t, Relaxed, Relaxed);
                        tally.last_rtp[i].store(t, Relaxed);
                        if let Some(samples) = &tally.samples {
                            let latency_ms = d.last_sender_info.map_or(f64::NAN, |sr| {
                                capture_latency_ms(t, sr.rtp_time.numer(), sr.ntp_time)
                            });
                            // As long ago as the first packet came in.
                            let held_ms = d.network_time.elapsed().as_secs_f64() * 1000.0;
                            samples[i].lock().unwrap().push(Sample {
                                at: tally.started.elapsed().as_secs_f64(),
                                latency_ms,
                                first_packet_ms: latency_ms - held_ms,
                                bytes: d.data.len(),
                                rtp: t,
                            });
                        }
                    }
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => bail!("ICE disconnected"),
                Output::Event(_) => {}
            }
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        socket.set_read_timeout(Some(wait))?;
        let input = match socket.recv_from(&mut buf) {
            Ok((len, source)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents: buf[..len].try_into()?,
                },
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Input::Timeout(Instant::now())
            }
            Err(e) => return Err(e.into()),
        };
        rtc.handle_input(input)?;
    }
    if !playing {
        bail!("no frame before the end");
    }
    Ok(())
}

/// POSTs the offer; the status and the body.
fn post(whep: SocketAddr, path: &str, offer: &str) -> anyhow::Result<(u16, String)> {
    let req =
        http::Request::post(path, offer.as_bytes()).headers(&[("Content-Type", "application/sdp")]);
    let limits = http::Limits::new(Duration::from_secs(10), 1 << 20);
    let r = http::blocking(http::request(whep, &req, limits))?;
    Ok((r.status, r.text().into_owned()))
}

/// Starts `n` viewer threads `STAGGER` apart, each `viewer(i, tally)` (an error counted as the
/// viewer failing), and returns them once every one plays or has failed.
pub(crate) fn start_viewers<F>(
    n: usize,
    name: &str,
    tally: &Arc<Tally>,
    viewer: F,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>>
where
    F: Fn(usize, &Tally) -> anyhow::Result<()> + Send + Sync + 'static,
{
    let viewer = Arc::new(viewer);
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (tally, viewer) = (tally.clone(), viewer.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    if let Err(e) = viewer(i, &tally) {
                        tally.fail(i, &e);
                    }
                })?,
        );
        std::thread::sleep(STAGGER);
    }
    let waited = wait_longer_until("every viewer playing", STAGGER * n as u32, || {
        tally.playing.load(Relaxed) + tally.failed.load(Relaxed) >= n
    });
    if let Err(e) = waited {
        tally.stop.store(true, Relaxed);
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    Ok(threads)
}

/// Capture → arrival, ms: the frame's RTP time `rtp` placed on the sender's wall clock by a
/// sender report (`sr_rtp` at `sr_ntp`), against this host's clock (the same clock: the server
/// runs on this host, in another network namespace at most).
fn capture_latency_ms(rtp: u64, sr_rtp: u64, sr_ntp: std::time::SystemTime) -> f64 {
    // RTP time modulo 2^32, signed: a frame may be older than the report.
    let ticks = rtp.wrapping_sub(sr_rtp) as u32 as i32;
    let capture = sr_ntp
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + f64::from(ticks) / 90_000.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    (now - capture) * 1000.0
}

/// `--webrtc N --whep-url URL`: N viewers of a server this tool did not start (in another
/// network namespace: `scripts/webrtc-tbf.sh`), from `--warmup-secs` after they play for
/// `--seconds`; per viewer and per 10 s window: the frames it got against those the stream
/// carried (RTP time), capture → arrival latency, its bit rate.
fn run_external(args: &Args, n: usize, url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("--whep-url: http://IP:PORT/PATH")?;
    let (host, path) = rest.split_once('/').context("--whep-url: no path")?;
    let whep: SocketAddr = host.parse().context("--whep-url: IP:PORT")?;
    let private = match whep.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        std::net::IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !private {
        bail!("--whep-url: only loopback or private (a test namespace's) addresses");
    }
    let path = format!("/{path}");
    let tally = Arc::new(Tally::with_samples(n));
    let threads = start_viewers(n, "whep", &tally, move |i, tally| {
        viewer(i, whep, &path, tally)
    })?;
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    let t0 = tally.started.elapsed().as_secs_f64();
    eprintln!("surv-load: measuring for {} s", args.seconds);
    tally.measuring.store(true, Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    tally.measuring.store(false, Relaxed);
    eprintln!("surv-load: measured");
    report_windows(args, n, &tally, t0);
    tally.stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Per viewer: the whole window, then each 10 s of it.
fn report_windows(args: &Args, n: usize, tally: &Tally, t0: f64) {
    const WINDOW: f64 = 10.0;
    println!(
        "webrtc viewers={n} ({} playing, {} failed) of an external server, measured {} s at {} fps | {}",
        tally.playing.load(Relaxed),
        tally.failed.load(Relaxed),
        args.seconds,
        args.fps,
        tally.errors.lock().unwrap().join("; "),
    );
    let Some(samples) = &tally.samples else {
        return;
    };
    for (i, viewer) in samples.iter().enumerate() {
        let all = viewer.lock().unwrap();
        let spanned = tally.spanned(i, args.fps);
        println!(
            "viewer {i}: {} of {spanned} frames ({:.2}%)",
            all.len(),
            100.0 * all.len() as f64 / spanned.max(1) as f64
        );
        let windows = (args.seconds / WINDOW).ceil() as usize;
        for w in 0..windows {
            let a = t0 + w as f64 * WINDOW;
            let b = (a + WINDOW).min(t0 + args.seconds);
            let got: Vec<&Sample> = all.iter().filter(|s| s.at >= a && s.at < b).collect();
            let sorted = |ms: fn(&Sample) -> f64| {
                let mut v: Vec<f64> = got
                    .iter()
                    .map(|s| ms(s))
                    .filter(|l| l.is_finite())
                    .collect();
                v.sort_by(f64::total_cmp);
                v
            };
            let (lat, first) = (sorted(|s| s.latency_ms), sorted(|s| s.first_packet_ms));
            let span = match (got.first(), got.last()) {
                (Some(f), Some(l)) => rtp_frames_spanned(f.rtp, l.rtp, args.fps.max(1)),
                _ => 0,
            };
            let bytes: usize = got.iter().map(|s| s.bytes).sum();
            println!(
                "  {:>3.0}-{:<3.0}s: {} frames ({:.1}/s; {span} spanned) | latency p50={:.0}ms p99={:.0}ms max={:.0}ms (first packet p50={:.0}ms p99={:.0}ms) | {:.0} kbit/s",
                a - t0,
                b - t0,
                got.len(),
                got.len() as f64 / (b - a),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(f64::NAN),
                percentile(&first, 0.5),
                percentile(&first, 0.99),
                8.0 * bytes as f64 / (b - a) / 1000.0,
            );
        }
    }
}
