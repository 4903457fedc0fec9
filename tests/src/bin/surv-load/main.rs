//! `surv-load`: how many viewers one surv-server serves, measured.
//!
//! Starts the release `surv-server` as its own process on the test pattern, registers N viewers
//! on loopback (seed form and SURV/1 form, each viewer its own address 127.2.x.y), acks every
//! frame as those viewers do, and prints one line of figures: frame rate and share of frames at
//! the worst and median viewer, server CPU per delivered frame (from /proc, acks included),
//! server RSS, capture → receipt latency, encodes per captured frame, and the generator's own CPU.
//!
//! With `--push tcp|udp`, the tool is also the camera (see `push.rs`), and the figures add the
//! server's CPU per ingested frame and the share of frames passed through untouched.
//!
//! With `--cameras N` (and `--push`), the server runs N pushed cameras from a config file and
//! the viewers are spread over them; per camera, the worst viewer's share of that camera's
//! frames, and the frames that reached a viewer of another camera (see `cameras.rs`).
//!
//! With `--rtsp N`, the watchers are N RTSP players of the server's RTSP server instead
//! (`--rtsp-path main` for H.264, `main/mjpeg` for RTP/JPEG; `--rtsp-transport tcp|udp`): frames
//! per watcher against those published, server CPU per delivered frame, H.264 encodes per
//! captured frame and their cost, bits per second, PLAY → first keyframe (see `rtsp.rs`).
//!
//! With `--glass SECS`, headless Chromium plays the camera page (WebRTC over UDP, then over TCP,
//! then MJPEG, then LL-HLS with hls.js) and reads
//! the capture time the test pattern draws into each frame: first frame after a page load and
//! glass-to-glass latency (see `glass.rs`).
//!
//! With `--webrtc N`, the watchers are N WebRTC viewers by WHEP, each a str0m peer (see
//! `webrtc.rs`).
//!
//! With `--janus N`, N str0m WebRTC viewers of Janus edges that surv forwards to (see
//! `janus.rs`; `scripts/janus-load.sh` starts surv and the edges).
//!
//! With `--hls N`, the watchers are N LL-HLS players, straight to the origin or through
//! `--edges K` nginx edges (or `--via URL` caches): parts per player in time, and what the
//! origin served per part it made (see `hls.rs`).
//!
//! With `--churn-secs`, viewers keep joining and leaving for that long and the server's RSS is
//! printed periodically instead (the memory-growth run).
//!
//! With `--http N` (and `--http-slow`, `--http-stalled`), the watchers are HTTP MJPEG clients of
//! `/stream.mjpg` instead (see `http.rs`); with `--request N`, seed 001's apps (`request.rs`).
//!
//! The generator is one receiving thread on one UDP socket: `recvmmsg`/`sendmmsg` in batches,
//! only the 64-byte head of each frame copied out (see `mmsg.rs`), so that it leaves as much of
//! the machine as it can to the server it measures.
//!
//! This file is the command line; the rest, one thing per file: `measure.rs` (the run against
//! surv-server and its line of figures), `server.rs` (the server process), `viewers.rs`
//! (addresses, forms, registration), `receiver.rs` (the receiving and acking thread), `delay.rs`
//! (its path delay and jitter), `mmsg.rs` (its batched system calls), `procfs.rs` (CPU and RSS
//! from /proc), `churn.rs` (the memory run), `gst.rs` (the GStreamer yardstick), `push.rs` (the
//! camera of a push run), `http.rs` (the HTTP runs, and their GStreamer yardstick),
//! `http_clients.rs` (their clients), `mjpeg.rs` (reading multipart MJPEG), `request.rs` (the
//! apps run), `cameras.rs` (the many-cameras run), `rtsp.rs` (the RTSP runs, and their GStreamer
//! yardstick), `rtsp_watchers.rs` (their players), `glass.rs` (the browser's latency),
//! `webrtc.rs` (the WebRTC viewers), `janus.rs` (viewers through Janus), `hls.rs` (the LL-HLS players).

mod cameras;
mod chaos;
mod chaos_floods;
mod chaos_http;
mod churn;
mod delay;
mod floor;
mod glass;
mod gst;
mod hls;
mod http;
mod http_clients;
mod janus;
mod measure;
mod mjpeg;
mod mmsg;
mod procfs;
mod push;
mod receiver;
mod request;
mod rtsp;
mod rtsp_watchers;
mod server;
mod viewers;
mod webrtc;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use viewers::MAX_VIEWER_INDEX;

/// Every wait in the tool is bounded by this.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

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
    /// Push run: instead of the test pattern, the server takes JPEGs from a camera that this tool
    /// plays (length-prefixed over TCP to `tcp-listen://`, or one per datagram to `udp://`) at
    /// --size and --fps, and passes them through; prints the server CPU per ingested frame (with
    /// no viewer) and the ingest → viewer latency.
    #[arg(long, value_enum)]
    push: Option<push::PushKind>,
    /// Many-cameras run (with --push): the server runs N pushed cameras from a config file
    /// (`[[camera]]` cam0, cam1, …, each its own port and pictures, marked with its number),
    /// and --viewers are spread over them round robin, all SURV/1 with `cam=`. Prints per
    /// camera the worst viewer's share of its frames and any frame of another camera.
    #[arg(long)]
    cameras: Option<usize>,
    /// With --cameras: after the server's ingest figure, the same camera played to a bare tokio
    /// reader in this process (read, copy, nothing else), and its CPU per frame: the floor of
    /// what any tokio server pays per pushed frame on this machine (`floor.rs`).
    #[arg(long)]
    ingest_floor: bool,
    /// Instead of surv-server, measure GStreamer's multiudpsink sending the same stream (JPEG,
    /// no acks) to --viewers addresses: the CPU-per-datagram yardstick.
    #[arg(long)]
    gst_baseline: bool,
    /// HTTP run: N MJPEG clients of the server's `/stream.mjpg` instead of UDP viewers (with
    /// --gst-baseline: of GStreamer's tcpserversink).
    #[arg(long)]
    http: Option<usize>,
    /// In an HTTP run, also this many clients that read at 1/10 of the stream's byte rate.
    #[arg(long, default_value_t = 0)]
    http_slow: usize,
    /// In an HTTP run, also this many clients that connect and never read.
    #[arg(long, default_value_t = 0)]
    http_stalled: usize,
    /// Threads of the HTTP clients' runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Apps run: N of seed 001's apps send `Request` to the server's --request-port and count
    /// what comes back (no acks), instead of UDP viewers.
    #[arg(long)]
    request: Option<usize>,
    /// RTSP run: N players of the server's RTSP server (DESCRIBE, SETUP, PLAY) instead of UDP
    /// viewers, each counting the complete frames it receives (with --gst-baseline and
    /// --rtsp-transport udp: GStreamer's `jpegenc ! rtpjpegpay ! multiudpsink` to N receivers).
    #[arg(long)]
    rtsp: Option<usize>,
    /// In an RTSP run, how the media travel: interleaved on the RTSP connection, or UDP to each
    /// player's own port pair.
    #[arg(long, value_enum, default_value_t = rtsp_watchers::Transport::Tcp)]
    rtsp_transport: rtsp_watchers::Transport,
    /// In an RTSP run, the mount: `main` (H.264) or `main/mjpeg` (RTP/JPEG).
    #[arg(long, default_value = "main")]
    rtsp_path: String,
    /// In an RTSP run, afterwards: the same bytes a frame (the median player's bit rate) sent
    /// by one bare thread to as many loopback readers over the run's transport (TCP: one
    /// `writev` per frame per reader; UDP: one segmented `sendmsg`); its CPU per delivered
    /// frame beside the server's (`floor.rs`).
    #[arg(long)]
    send_floor: bool,
    /// In an RTSP run, ms between two players' starts.
    #[arg(long, default_value_t = 10)]
    rtsp_stagger_ms: u64,
    /// In an RTSP run over TCP, this many more players that read slowly (--rtsp-slow-kbit, a
    /// 16 KiB receive buffer): the N players' figures are theirs alone, the slow ones' are
    /// printed apart.
    #[arg(long, default_value_t = 0)]
    rtsp_slow: usize,
    /// What a slow RTSP player reads, kbit/s.
    #[arg(long, default_value_t = 256)]
    rtsp_slow_kbit: u64,
    /// Memory run: viewers join and leave for this many seconds; RSS is printed periodically.
    #[arg(long)]
    churn_secs: Option<f64>,
    /// In the memory run, viewers replaced per second (half leave with `end`, half by closing TCP).
    #[arg(long, default_value_t = 20)]
    churn_per_sec: usize,
    /// In the memory run, seconds between RSS lines.
    #[arg(long, default_value_t = 30.0)]
    report_secs: f64,
    /// Chaos run (issue 11): while --viewers honest viewers stream, hostile floods hit the
    /// server one after another (garbage registrations with slowloris, random datagrams, spoofed
    /// acks, join/leave churn with SIGKILLed surv-client processes, HTTP idle/non-reading/junk
    /// connections); prints per flood the honest viewers' share of frames before, during and
    /// after, the server's RSS and descriptors, and whether its counters account for what was
    /// sent. Needs `cargo build --release -p surv-server -p surv-client -p surv-tests`.
    #[arg(long)]
    chaos: bool,
    /// In the chaos run, the floods' sizes as a share of the (1.0: 100,000 garbage
    /// registrations, 2,000 slowloris, 1,000,000 datagrams, 100,000 spoofed acks, 10,000
    /// join/leave cycles, 300 killed clients, 2,000 + 1,000 + 150 HTTP connections).
    #[arg(long, default_value_t = 1.0)]
    chaos_scale: f64,
    /// In the chaos run, only these floods (registrations, datagrams, spoofed-acks, churn, http).
    #[arg(long, value_delimiter = ',')]
    chaos_only: Vec<String>,
    /// In the chaos run, how many times to run the floods (RSS after each round tells memory
    /// the allocator keeps from a leak).
    #[arg(long, default_value_t = 1)]
    chaos_rounds: usize,
    /// At the end of the chaos run, have the server's allocator return its free pages (glibc
    /// `malloc_trim`, called through gdb) and print RSS before and after: memory kept by the
    /// allocator, told apart from memory in use.
    #[arg(long)]
    chaos_trim: bool,
    /// In the chaos run, random datagrams per second at most.
    #[arg(long, default_value_t = 50_000)]
    chaos_datagram_rate: u64,
    /// SURV/1 viewers ask for each frame in chunks of at most this many bytes (`hello mtu=`,
    /// as surv-client does), count a frame when its last chunk is in, and ack it with the bytes
    /// received (`continue <seq> r=<rx>`). They send no `nack`: a frame missing a chunk is a
    /// frame lost. 0: whole datagrams.
    #[arg(long, default_value_t = 0)]
    mtu: u16,
    /// With --mtu: the chunked viewers report a path of this many kbit/s in every `continue`
    /// (`p=`), so that a server that paces (surv-server's --pace) spreads their frames at 1.25 ×
    /// that: what pacing costs the server at scale. None: they report nothing (not paced).
    #[arg(long, value_name = "KBPS")]
    report_path_kbps: Option<u32>,
    /// One-way delay of the viewers' path, ms: each frame reaches its viewer, and each of the
    /// viewer's acks and hellos leaves, this long ± --jitter-ms after it was sent (uniform,
    /// independent per datagram, so they can overtake each other). Needs no root.
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    /// Jitter of that delay, ms (at most --delay-ms).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u32,
    /// Glass to glass in headless Chromium, for this many seconds per mode: the camera page by
    /// WebRTC over UDP, then over TCP (Chromium sending no UDP), then by MJPEG, then LL-HLS by
    /// hls.js; first frame over 10 page loads, then every frame's latency read
    /// from the capture time the test pattern draws into it (see `glass.rs`).
    #[arg(long, value_name = "SECS")]
    glass: Option<u64>,
    /// With --glass: which modes, of webrtc, webrtc-tcp, mjpeg, hls (comma-separated).
    #[arg(
        long,
        value_name = "MODES",
        value_delimiter = ',',
        default_value = "webrtc,webrtc-tcp,mjpeg,hls"
    )]
    glass_modes: Vec<String>,
    /// With --glass: the server's WebRTC port (UDP and TCP; 0: a free one), so that a script
    /// can drop a share of its packets (scripts/webrtc-tcp-loss.sh).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    glass_webrtc_port: u16,
    /// With --glass: play a server this tool does not start, at this HTTP origin
    /// (http://IP:PORT; loopback or a test namespace's private address), which must run the test
    /// pattern on the same machine's clock (`scripts/webrtc-rtt.sh` puts Chromium behind a
    /// delaying router). It starts no server, so --server and --glass-webrtc-port are refused
    /// beside it rather than ignored.
    #[arg(long, value_name = "URL", conflicts_with_all = ["server", "glass_webrtc_port"])]
    glass_origin: Option<String>,
    /// N WebRTC viewers (a str0m WHEP peer each, on a thread of its own) instead: frames per
    /// viewer, server CPU per viewer, encodes per captured frame (see `webrtc.rs`).
    #[arg(long, value_name = "N")]
    webrtc: Option<usize>,
    /// N WebRTC viewers of a Janus streaming mountpoint instead, spread over the --janus-api
    /// edges (a str0m peer each, speaking Janus's HTTP API): frames per viewer against those
    /// the stream carried. Starts no server: `scripts/janus-load.sh` runs surv and Janus.
    #[arg(long, value_name = "N")]
    janus: Option<usize>,
    /// With --janus: a Janus HTTP API on this host, http://127.0.0.1:PORT/janus; repeat for
    /// several edges.
    #[arg(long, value_name = "URL")]
    janus_api: Vec<String>,
    /// With --janus: the streaming mountpoint's id.
    #[arg(long, default_value_t = 1)]
    janus_mountpoint: u64,
    /// With --webrtc: play this WHEP endpoint of a server this tool does not start
    /// (http://IP:PORT/cam/NAME/whep; loopback or a test namespace's private address) and print
    /// per viewer, per 10 s, frames, capture → arrival latency and bit rate
    /// (`scripts/webrtc-tbf.sh`).
    #[arg(long, value_name = "URL")]
    whep_url: Option<String>,
    /// N LL-HLS players instead, each following the live edge by blocking reloads: parts per
    /// player in time, part arrival after capture, what the origin served per part it made, its
    /// CPU (see `hls.rs`). Straight to the origin unless --edges or --via.
    #[arg(long, value_name = "N")]
    hls: Option<usize>,
    /// In an HLS run, start this many nginx edges from deploy/nginx-edge.conf in front of the
    /// origin (their own processes on loopback) and spread the players over them.
    #[arg(long, default_value_t = 0)]
    edges: usize,
    /// In an HLS run, play through this HTTP cache (http://HOST:PORT) instead; repeat for
    /// several. They must reach the origin this tool starts, on --http-port.
    #[arg(long, value_name = "URL")]
    via: Vec<String>,
    /// In an HLS run, the origin's HTTP port (default: a free one; needed with --via).
    #[arg(long)]
    http_port: Option<u16>,
    /// The address the server listens on: 127.0.0.1, or 0.0.0.0 so that --via caches on other
    /// hosts reach it too (`scripts/hls-netns.sh`). The tool itself reaches it on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1")]
    server_bind: std::net::IpAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(secs) = args.glass {
        return glass::run(&args, secs);
    }
    if let Some(n) = args.webrtc {
        return webrtc::run(&args, n);
    }
    if let Some(n) = args.janus {
        return janus::run(&args, n);
    }
    if let Some(n) = args.hls {
        surv_server::sys::raise_fd_limit().ok();
        return hls::run(&args, n);
    }
    if args.viewers == 0 || args.viewers > MAX_VIEWER_INDEX / 2 {
        bail!("--viewers must be 1..={}", MAX_VIEWER_INDEX / 2);
    }
    let http_total = args.http.unwrap_or(0) + args.http_slow + args.http_stalled;
    if args.http == Some(0) || http_total > MAX_VIEWER_INDEX {
        bail!("--http must be 1.. and all HTTP clients at most {MAX_VIEWER_INDEX}");
    }
    if args.http.is_none() && http_total > 0 {
        bail!("--http-slow and --http-stalled go with --http N");
    }
    if matches!(args.request, Some(n) if n == 0 || n > MAX_VIEWER_INDEX) {
        bail!("--request must be 1..={MAX_VIEWER_INDEX}");
    }
    delay::Jitter::from_ms(args.delay_ms, args.jitter_ms).map_err(anyhow::Error::msg)?;
    // Every viewer holds a TCP connection: the same limit as the server's, raised the same way.
    let fd_limit = surv_server::sys::raise_fd_limit().unwrap_or(0);
    if (fd_limit as usize) < args.viewers.max(http_total) + 64 {
        eprintln!(
            "surv-load: warning: open-file limit {fd_limit} is below {} watchers",
            args.viewers.max(http_total)
        );
    }
    if !(args.server_bind.is_loopback() || args.server_bind.is_unspecified()) {
        bail!(
            "--server-bind takes 127.0.0.1 or 0.0.0.0: this tool reaches the server on 127.0.0.1"
        );
    }
    if let Some(n) = args.cameras {
        if n == 0 || n > cameras::MAX_CAMERAS {
            bail!("--cameras must be 1..={}", cameras::MAX_CAMERAS);
        }
        if args.push.is_none() {
            bail!("--cameras needs --push tcp or --push udp: the tool plays the cameras");
        }
        if args.http.is_some()
            || args.request.is_some()
            || args.chaos
            || args.churn_secs.is_some()
            || args.gst_baseline
            || args.delay_ms > 0
        {
            bail!("--cameras goes with UDP viewers only: not with --http, --request, --chaos, --churn-secs, --gst-baseline or --delay-ms");
        }
    }
    if let Some(n) = args.rtsp {
        if n == 0 || n > MAX_VIEWER_INDEX {
            bail!("--rtsp must be 1..={MAX_VIEWER_INDEX}");
        }
        if (fd_limit as usize) < 3 * n + 64 {
            eprintln!("surv-load: warning: open-file limit {fd_limit} is below {n} RTSP players (3 descriptors each)");
        }
        if args.send_floor && args.gst_baseline {
            bail!("--send-floor goes with an RTSP run of surv, not --gst-baseline");
        }
        return match args.gst_baseline {
            true => rtsp::run_gst(&args),
            false => rtsp::run_surv(&args),
        };
    }
    if args.http.is_some() {
        return match args.gst_baseline {
            true => http::run_gst(&args),
            false => http::run_surv(&args),
        };
    }
    let udp = UdpSocket::bind("0.0.0.0:0").context("binding the generator's UDP socket")?;
    if let Err(e) = mmsg::bind_to_loopback(&udp) {
        eprintln!(
            "surv-load: warning: cannot keep the UDP socket to lo ({e}); it is bound to 0.0.0.0"
        );
    }
    mmsg::configure(&udp, 256 << 20).context("configuring the generator's UDP socket")?;
    let udp_port = udp.local_addr()?.port();

    if args.request.is_some() {
        return request::run(&args, &udp);
    }
    if args.chaos {
        if args.viewers > 1_000 || !(0.0..=10.0).contains(&args.chaos_scale) {
            bail!("a chaos run takes at most 1,000 honest --viewers and a --chaos-scale of 0..=10");
        }
        return chaos::run(&args, &udp);
    }
    if args.gst_baseline {
        return gst::run(&args, &udp, udp_port);
    }
    if args.cameras.is_some() {
        return cameras::run(&args, &udp);
    }
    measure::run(&args, &udp)
}
