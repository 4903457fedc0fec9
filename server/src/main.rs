//! `surv-server`: parses flags, opens the source, binds the listener and runs until Ctrl-C/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use surv_proto::{
    DEFAULT_MAX_DATAGRAM_BYTES, DEFAULT_TCP_PORT, MAX_UDP_PAYLOAD_BYTES, MIN_DATAGRAM_BYTES,
};
use surv_server::app::{listen, App, CameraPlan, Plan};
use surv_server::auth::Token;
use surv_server::cameras::check_name;
use surv_server::capture::CaptureConfig;
use surv_server::config::{self, CameraEntry};
use surv_server::encoder::EncoderConfig;
use surv_server::mqtt::{self, BrokerUrl, MqttConfig};
use surv_server::sources::spec::{self, IpNet, RtspTransport, DEFAULT_MAX_FRAME_BYTES};
use surv_server::sources::{SourceOptions, SourceSpec};
use surv_server::watchers::forward::ForwardUrl;
use surv_server::watchers::request::{self, RequestConfig};
use surv_server::watchers::rtsp::RtspSockets;
use surv_server::watchers::webrtc::WebrtcSocket;
use surv_server::{Config, Journal, Listeners, StreamShape};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MotionH264 {
    /// Decode the camera's keyframes alone for the detector (each stands alone): cheap, and
    /// motion is seen once per keyframe interval of the camera.
    Keyframes,
    /// Decode every frame for the detector (which analyses every --motion-every'th).
    Every,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DetectWhen {
    /// Every --detect-every'th frame.
    Every,
    /// Only while the camera's motion detector sees motion (needs --motion on).
    Motion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// RTP interleaved in the RTSP TCP connection (works through NAT and firewalls).
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// Captures a camera (or a test pattern, or a network camera, or a file) once, JPEG-encodes each
/// frame once (JPEG sources pass through as they are), and sends it as one UDP datagram to every
/// registered viewer.
///
/// Viewers register over TCP by sending their UDP port: either bare ASCII digits (the seed-003
/// viewer) or "SURV/1 <port>\n" (surv-client), and answer each frame with "continue" or "end".
/// Apps behind NAT (seed 001) send "Request" to --request-port instead. With --token, every
/// form must carry the token. Joins and leaves are logged to --log-dir. Stop with Ctrl-C or
/// SIGTERM.
#[derive(Debug, Parser)]
#[command(
    name = "surv-server",
    version,
    about,
    long_about,
    args_override_self = true
)]
struct Args {
    /// Cameras and settings from a TOML file: [[camera]] tables (name, source, and size, fps,
    /// quality, motion, loop, max-frame-bytes, source-allow, rtsp-transport, request-port,
    /// tcp-stream-port, forward, detect, detect-every, detect-on, detect-threshold for that
    /// camera), and any flag of this command by its long name
    /// (http-port = 8080). A flag given on the command line overrides the file. Watchers pick a
    /// camera by name (SURV/1 "cam=NAME", surv-client --camera, /cam/NAME/ over HTTP); those
    /// that cannot get the first. See docs/CONFIG.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The camera's name without --config (in /cam/NAME/ URLs and SURV/1's cam=NAME).
    #[arg(long, value_name = "NAME", default_value = surv_server::cameras::DEFAULT_CAMERA_NAME)]
    camera_name: String,
    /// Where frames come from: test (built-in pattern), cam (camera --cam N),
    /// udp://HOST:PORT (JPEG datagrams pushed to us), tcp-listen://HOST:PORT (a camera connects
    /// and pushes length-prefixed or OAK "ABCDE" frames), tcp://HOST:PORT (we connect to such a
    /// camera), http://[USER:PASS@]HOST[:PORT]/PATH (MJPEG stream or still image),
    /// rtsp://[USER:PASS@]HOST[:PORT]/PATH (H.264 or MJPEG), file:PATH or PATH (video file, image,
    /// or folder of JPEGs).
    #[arg(long, value_name = "SOURCE", default_value = "cam", value_parser = SourceSpec::parse)]
    source: SourceSpec,
    /// Camera index N, i.e. /dev/videoN (implies --source cam).
    #[arg(long, value_name = "N", default_value_t = 0)]
    cam: u32,
    /// Frame size WIDTHxHEIGHT (even numbers) for cameras and the test pattern; the "no signal"
    /// frame's size until a network source shows its own.
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = surv_proto::parse_size)]
    size: (u32, u32),
    /// Frames per second for cameras and the test pattern; the rate still images and folders
    /// are shown at. Network sources run at their own rate.
    #[arg(long, value_name = "F", default_value_t = 30)]
    fps: u32,
    /// Largest frame read from a network or file source; larger ones are rejected unread.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Push sources (udp://, tcp-listen://) take frames only from these networks
    /// (ADDR/BITS or ADDR, comma-separated or repeated). Default: from anyone.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = spec::parse_net)]
    source_allow: Vec<IpNet>,
    /// Play a video file or folder source again from the start when it ends.
    #[arg(long = "loop")]
    looped: bool,
    /// How RTSP sources carry their media.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    rtsp_transport: Transport,
    /// JPEG quality ceiling, 1-100; lowered per frame when a frame would not fit --max-datagram-bytes.
    #[arg(long, value_name = "Q", default_value_t = 80)]
    quality: u8,
    /// No frame datagram is larger than this (UDP payload bytes, 600-65507). Lower it, e.g. to
    /// 1400, on networks where IP fragments get lost. (`--max-datagram` is its old spelling.)
    #[arg(
        long = "max-datagram-bytes",
        visible_alias = "max-datagram",
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_DATAGRAM_BYTES
    )]
    max_datagram: usize,
    /// TCP port viewers register on.
    #[arg(long, default_value_t = DEFAULT_TCP_PORT)]
    port: u16,
    /// HTTP port for browsers and players, on the same --bind: the live page (/), the MJPEG
    /// stream (/stream.mjpg), the newest frame (/snapshot.jpg), /status (JSON) and /metrics
    /// (Prometheus). 0 turns it off.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    http_port: u16,
    /// RTSP port for players and NVRs, on the same --bind: rtsp://HOST:PORT/CAMERA (H.264) and
    /// rtsp://HOST:PORT/CAMERA/mjpeg (RTP/JPEG), over TCP or UDP. 0 turns it off.
    #[arg(long, value_name = "PORT", default_value_t = surv_server::watchers::rtsp::DEFAULT_RTSP_PORT)]
    rtsp_port: u16,
    /// The UDP port RTSP sessions over UDP get their RTP from (even; RTCP comes from the next
    /// port). 0 picks a free pair.
    #[arg(long, value_name = "PORT", default_value_t = surv_server::watchers::rtsp::DEFAULT_RTSP_UDP_PORT)]
    rtsp_udp_port: u16,
    /// The RTSP session timeout players are told: they keep a session alive within it (a
    /// request, or RTCP over UDP). A UDP session heard from neither for 5 s longer ends.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    rtsp_session_timeout: u64,
    /// UDP port for WebRTC players (browsers), on the same --bind: every peer's media on this
    /// one port, their offers by WHEP over HTTP (POST /cam/CAMERA/whep). Players must reach this
    /// port: open it in the firewall. 0 turns WebRTC off.
    #[arg(long, value_name = "PORT", default_value_t = surv_server::watchers::webrtc::DEFAULT_WEBRTC_PORT)]
    webrtc_port: u16,
    /// An address WebRTC players reach this server at (its ICE host candidate; repeat for
    /// several): the public or LAN address when --bind is 0.0.0.0 behind port forwarding.
    /// Default: the --bind address, or every interface's address when bound to all.
    #[arg(long, value_name = "IP")]
    webrtc_host: Vec<IpAddr>,
    /// Each WebRTC player is sent what its link carries: bandwidth estimation (TWCC) and
    /// pacing per player, and a player whose link carries less than the stream gets half, a
    /// quarter of the frames or the keyframes alone, never a growing delay. `false`: every
    /// frame to every player whatever its link (less CPU; for a LAN whose viewers all keep up).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    webrtc_adapt: bool,
    /// WebRTC players may also connect over TCP to the same port number (ICE-TCP), for
    /// networks that block UDP: slower to recover from loss than UDP, but a picture where
    /// there would be none. Players take it only when UDP does not connect. `false`: UDP only.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    webrtc_tcp: bool,
    /// H.264 made by surv (for RTSP watchers of cameras that do not send H.264 themselves):
    /// a keyframe every this many seconds, and one at once for a joining watcher (at most one
    /// a second).
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=60))]
    gop_secs: u32,
    /// Push the camera's H.264 as RTP (RFC 6184, payload type 96) to rtp://HOST:PORT, with an
    /// RTCP sender report every 5 s to PORT+1, for Janus, GStreamer or ffmpeg; its SDP is at
    /// http://…/cam/CAMERA/stream.sdp. HOST: an IP address (unicast or multicast) or a name,
    /// resolved at start. Repeat for several destinations (two Janus edges): each gets its
    /// own RTP stream of the one H.264 encode, and its own counters; the SDP of the Nth is at
    /// …/stream.sdp?n=N. With --config, the first camera's (each camera's `forward` key).
    #[arg(long, value_name = "URL", value_parser = ForwardUrl::parse)]
    forward: Vec<ForwardUrl>,
    /// Drop an HTTP client that takes none of what it is sent for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    http_write_timeout: f64,
    /// Address to listen on (0.0.0.0 all IPv4, :: all IPv6, 127.0.0.1 this host only).
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Live viewers at most; the next registration is refused with a reason.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_viewers: usize,
    /// Live UDP viewers from one IP address at most (each registration draws frames to a port
    /// of the registering address); the next is refused with a reason.
    #[arg(long, value_name = "N", default_value_t = surv_server::DEFAULT_MAX_VIEWERS_PER_IP)]
    max_viewers_per_ip: usize,
    /// End a session after this many seconds without a reply from its viewer.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    viewer_timeout: f64,
    /// Drop a connection that has not registered within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    register_timeout: f64,
    /// Frames sent to a viewer without an ack before it skips to newer ones.
    #[arg(long, value_name = "N", default_value_t = 4)]
    max_in_flight: usize,
    /// The largest UDP datagram sent to a SURV/1 viewer that asks for each frame in chunks
    /// (surv-client does, with its own --mtu): 800 to 8972 bytes; 1200 fits almost every path,
    /// 1472 a plain Ethernet LAN (see docs/PROTOCOL.md). 0 = whole frame datagrams to everyone.
    #[arg(long, value_name = "BYTES", default_value_t = surv_proto::DEFAULT_MTU_BYTES,
          value_parser = parse_mtu)]
    mtu: u16,
    /// With --mtu: also send parity chunks (forward error correction) to a chunked viewer
    /// that reports losing some (surv-client does, with its own --fec), about twice its loss
    /// as a share of each frame's chunks, so that most frames that lost a chunk or two are put
    /// back at once instead of a round trip later. None to a viewer that loses nothing or whose
    /// link is congested. `false`: lost chunks are only sent again when asked for.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    fec: bool,
    /// With --mtu: spread each frame's chunks at a little over the rate a chunked viewer
    /// reports its path delivers (surv-client does), instead of one burst that a link with a
    /// small buffer or a policer cuts short. A path that takes a frame within 2 ms (a LAN)
    /// still gets one burst; a frame is spread over at most 4/5 of the frame interval and 50 ms.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pace: bool,
    /// Also serve OAK host programs on this TCP port: each frame as the OAK PoE
    /// tcp_streaming_server writes it (32-byte "ABCDE" header, then the JPEG). 0 = off.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    tcp_stream_port: u16,
    /// Motion detection on the server (journal MOTION-START / MOTION-END): on or off.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    motion: Switch,
    /// Analyse every Nth frame for motion.
    #[arg(long, value_name = "N", default_value_t = 2)]
    motion_every: u64,
    /// Share of the picture (%) that must change between analysed frames for motion.
    #[arg(long, value_name = "PCT", default_value_t = 0.5)]
    motion_threshold: f32,
    /// A motion event ends after this many seconds without motion.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    motion_hold: f64,
    /// For an H.264 camera passed through (rtsp://), while no JPEG watcher or snapshot wants
    /// its pictures, what is decoded for the motion detector. With a JPEG watcher, every frame
    /// is decoded anyway and the detector takes every --motion-every'th.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = MotionH264::Keyframes)]
    motion_h264: MotionH264,
    /// Object detection (journal OBJECT-START / OBJECT-END, MQTT PREFIX/CAMERA/objects): the
    /// COCO labels to report, comma-separated: person, bicycle, car, motorcycle, bus, truck,
    /// bird, cat, dog, … (80; `_` for a space: traffic_light). Off when not given. Needs the
    /// model and runtime scripts/setup.sh installs; without them the server says so and runs
    /// without detection.
    #[arg(long, value_name = "LABELS")]
    detect: Option<String>,
    /// Analyse every Nth frame for objects (frames that come while the detector is busy are
    /// skipped anyway, and counted).
    #[arg(long, value_name = "N", default_value_t = 5)]
    detect_every: u64,
    /// Which frames the object detector looks at.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = DetectWhen::Every)]
    detect_on: DetectWhen,
    /// The detector's score (0-1) from which an object counts (measured: docs/PERFORMANCE.md).
    #[arg(long, value_name = "SCORE", default_value_t = surv_server::detect::DEFAULT_THRESHOLD)]
    detect_threshold: f32,
    /// A label's presence ends after this many seconds without seeing it.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    detect_hold: f64,
    /// The detector's model (ONNX), as scripts/setup.sh makes it.
    #[arg(long, value_name = "PATH", default_value = "models/centernet.onnx")]
    detect_model: PathBuf,
    /// ONNX Runtime's shared library, loaded at run time (scripts/setup.sh puts it there).
    #[arg(long, value_name = "PATH", default_value = "models/libonnxruntime.so")]
    detect_runtime: PathBuf,
    /// Also serve seed 001's apps behind NAT on this UDP port: an app sends "Request" (or
    /// "Request TOKEN") once, and every frame is sent back to its address from this port as one
    /// JPEG datagram. 0 = off. The same port as a udp:// source shares its socket: JPEG
    /// datagrams feed the source, "Request"s register apps (seed 001's one port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    request_port: u16,
    /// An app that has sent nothing for this many seconds stops being served; any datagram
    /// from it renews it. 0 = never (risky on public networks: a forged Request then makes
    /// this server send frames to that address until it stops).
    #[arg(long, value_name = "SECS", default_value_t = request::DEFAULT_TTL.as_secs_f64())]
    request_ttl: f64,
    /// Apps served at most per source IP address; more Requests from it are refused.
    #[arg(long, value_name = "N", default_value_t = request::DEFAULT_PER_IP)]
    request_per_ip: usize,
    /// Access token: SURV/1 viewers must send it (surv-client --token), apps must send
    /// "Request TOKEN", HTTP requests must carry it (Authorization: Bearer TOKEN, Basic auth
    /// with any user name and TOKEN as password, or ?token=TOKEN); seed-form viewers, bare
    /// "Request" apps and OAK host programs, which cannot send one, are refused unless
    /// --allow-unauthenticated. After 5 wrong tokens within a minute an address is refused
    /// without its token being checked for 1 s, doubling with each wrong one after to 60 s.
    /// 1-128 visible ASCII characters.
    #[arg(long, value_name = "SECRET", conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the access token from this file (white space around it is ignored), so that it
    /// does not show in the process list.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// With a token set, still serve seed-form viewers, bare "Request" apps and OAK host
    /// programs (whose forms cannot carry a token): anyone who can reach those ports can watch.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// With a token set, still answer /metrics without it (for a Prometheus scraper).
    #[arg(long)]
    metrics_public: bool,
    /// This server's name: the last level of the default MQTT topic prefix (surv/NAME) and
    /// part of its MQTT client id. Default: the host name (or "surv").
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Publish events to an MQTT broker, mqtt://[USER:PASS@]HOST[:PORT] (port 1883; no TLS):
    /// PREFIX/available (online/offline, retained, and the Last Will), PREFIX/CAMERA/events
    /// (JSON: joins, leaves, source lost/back, motion of that camera), PREFIX/CAMERA/motion
    /// (ON/OFF, retained), PREFIX/events and PREFIX/motion (every camera's events; ON while any
    /// camera is in motion) and PREFIX/stats (JSON). The server starts and streams whether or
    /// not the broker is up; events wait for it in a bounded queue. A password in the URL shows
    /// in the process list: use --mqtt-password-file instead.
    // Parsed after clap, whose error would echo the value, password and all.
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// Read the MQTT password from this file (its text, less one line ending at its end), so
    /// that it does not show in the process list; --mqtt then names the user only
    /// (mqtt://USER@HOST).
    #[arg(long, value_name = "PATH", requires = "mqtt")]
    mqtt_password_file: Option<PathBuf>,
    /// MQTT topic prefix. Default: surv/NAME (see --name).
    #[arg(long, value_name = "PREFIX")]
    mqtt_topic: Option<String>,
    /// Publish PREFIX/stats every this many seconds. (`--mqtt-stats-secs` is its old spelling.)
    #[arg(
        long = "mqtt-stats-every",
        visible_alias = "mqtt-stats-secs",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    mqtt_stats_secs: f64,
    /// Folder for the join/leave log (surv-journal.YYYY-MM-DD.log).
    #[arg(long, value_name = "DIR", default_value = "logs")]
    log_dir: PathBuf,
}

fn secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {value}"))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surv-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line, with a `--config` file's settings before it (so that the command line
/// overrides them), and the file's cameras.
struct Parsed {
    matches: clap::ArgMatches,
    args: Args,
    /// The file's `[[camera]]` tables, each with its line.
    cameras: Vec<(CameraEntry, usize)>,
    /// The file's server-wide settings, as (flag, value) (a reload compares them).
    settings: Vec<(String, toml::Value)>,
}

/// The command line (`--help` and usage errors exit here), and the `--config` file's settings
/// under it.
fn parse_args() -> anyhow::Result<Parsed> {
    let cli: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = <Args as clap::CommandFactory>::command();
    let matches = command.clone().get_matches_from(&cli);
    let args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    with_config(cli, matches, args)
}

/// Reads `args.config` (again, for a reload) and puts its settings under the command line.
fn with_config(
    cli: Vec<std::ffi::OsString>,
    matches: clap::ArgMatches,
    args: Args,
) -> anyhow::Result<Parsed> {
    let command = <Args as clap::CommandFactory>::command();
    let Some(path) = args.config.clone() else {
        return Ok(Parsed {
            matches,
            args,
            cameras: Vec::new(),
            settings: Vec::new(),
        });
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--config: reading {}", path.display()))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let file = config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {}", at(e.line), e.reason))?;
    let mut full = vec![cli[0].clone()];
    for s in &file.settings {
        let words = setting_args(&command, s)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", at(s.line)))?;
        full.extend(words.into_iter().map(Into::into));
    }
    full.extend(cli[1..].iter().cloned());
    let matches = command
        .try_get_matches_from(&full)
        .map_err(|e| anyhow::anyhow!("{} with the command line: {}", path.display(), e.render()))?;
    let args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    Ok(Parsed {
        matches,
        args,
        cameras: file.cameras,
        settings: file
            .settings
            .into_iter()
            .map(|s| (s.flag, s.value))
            .collect(),
    })
}

/// A config file's setting as command-line words: `--flag value` (a list: the flag once per
/// value; `true` for a switch: the flag alone, `false`: nothing).
fn setting_args(command: &clap::Command, s: &config::Setting) -> Result<Vec<String>, String> {
    let Some(arg) = command.get_arguments().find(|a| {
        a.get_long() == Some(s.flag.as_str())
            || a.get_all_aliases()
                .is_some_and(|names| names.contains(&s.flag.as_str()))
    }) else {
        return Err(format!(
            "unknown setting `{}` (not a flag of surv-server)",
            s.flag
        ));
    };
    if s.flag == "config" {
        return Err("`config` cannot be set in a config file".into());
    }
    let flag = format!("--{}", s.flag);
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(t) => Ok(t.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("`{}` = {other}: not a value for {flag}", s.flag)),
    };
    let takes_value = arg.get_action().takes_values();
    Ok(match &s.value {
        toml::Value::Boolean(on) if !takes_value => {
            if *on {
                vec![flag]
            } else {
                Vec::new()
            }
        }
        toml::Value::Array(items) => {
            let mut words = Vec::new();
            for item in items {
                words.push(flag.clone());
                words.push(scalar(item)?);
            }
            words
        }
        v => {
            let value = scalar(v)?;
            vec![flag, value]
        }
    })
}

fn run() -> anyhow::Result<()> {
    let parsed = parse_args()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let plan = plan(&parsed)?;
    let args = &parsed.args;
    // Large blocks (a camera connection's buffer grown for a large frame) go back to the system
    // when freed, instead of drawing later ones into glibc's arenas.
    surv_server::sys::fix_mmap_threshold();
    // Each viewer holds one TCP connection; past the limit, accepts back off and retry.
    match surv_server::sys::raise_fd_limit() {
        Ok(limit) if limit < args.max_viewers as u64 + 64 => tracing::warn!(
            limit,
            max_viewers = args.max_viewers,
            "the open-file limit is below --max-viewers; registrations past it will wait (raise `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
    let journal =
        Arc::new(Journal::open(&args.log_dir).with_context(|| {
            format!("opening the join/leave log in {}", args.log_dir.display())
        })?);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(args.bind, args.port);
        let viewers = listen(addr).with_context(|| {
            format!("listening on TCP {addr} (is another server on that port? try --port)")
        })?;
        let http = match args.http_port {
            0 => None,
            port => {
                let addr = SocketAddr::new(args.bind, port);
                let listener = listen(addr).with_context(|| {
                    format!(
                        "listening for HTTP on {addr} (is another server on that port? try \
                         --http-port with another port, or --http-port 0 to turn HTTP off)"
                    )
                })?;
                tracing::info!(%addr, "HTTP: the live page is at http://{addr}/");
                Some(listener)
            }
        };
        let rtsp = match args.rtsp_port {
            0 => None,
            port => {
                let addr = SocketAddr::new(args.bind, port);
                let mut sockets = RtspSockets::bind(addr, args.rtsp_udp_port)
                    .await
                    .with_context(|| {
                        format!(
                            "listening for RTSP on {addr} and UDP {}-{} (is another server on \
                             those ports? try --rtsp-port and --rtsp-udp-port with others, or \
                             --rtsp-port 0 to turn RTSP off)",
                            args.rtsp_udp_port,
                            args.rtsp_udp_port.saturating_add(1)
                        )
                    })?;
                sockets.session_timeout = Duration::from_secs(args.rtsp_session_timeout.max(1));
                tracing::info!(%addr, "RTSP: cameras are at rtsp://{addr}/CAMERA");
                Some(sockets)
            }
        };
        let webrtc = match (args.webrtc_port, args.http_port) {
            (0, _) => None,
            (_, 0) => {
                tracing::warn!("WebRTC needs HTTP for its offers: off with --http-port 0");
                None
            }
            (port, _) => {
                let addr = SocketAddr::new(args.bind, port);
                let socket = WebrtcSocket::bind(addr).with_context(|| {
                    format!(
                        "binding UDP {addr} for WebRTC (is another server on that port? try \
                         --webrtc-port with another port, or --webrtc-port 0 to turn WebRTC off)"
                    )
                })?;
                let socket = socket
                    .with_hosts(args.webrtc_host.clone())
                    .with_adapt(args.webrtc_adapt);
                let socket = if args.webrtc_tcp {
                    socket.with_tcp().with_context(|| {
                        format!(
                            "listening on TCP {addr} for WebRTC over TCP (is another server on \
                             that port? --webrtc-tcp false turns it off)"
                        )
                    })?
                } else {
                    socket
                };
                Some(socket)
            }
        };
        let shutdown = CancellationToken::new();
        let cameras = plan.cameras.len();
        let app = App::start(plan, journal, shutdown.clone()).await?;
        tracing::info!(
            %addr,
            cameras,
            max_datagram = args.max_datagram,
            log_dir = %args.log_dir.display(),
            "surv-server ready"
        );
        tokio::spawn(stop_on_signal(shutdown.clone()));
        // Without a config file, SIGHUP keeps its default (the server ends), as before.
        if args.config.is_some() {
            tokio::spawn(reload_on_hangup(app.clone(), parsed.settings.clone()));
        }
        app.serve(Listeners {
            viewers,
            http,
            rtsp,
            webrtc,
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The server `parsed` describes: its limits, services and cameras, every value checked.
fn plan(parsed: &Parsed) -> anyhow::Result<Plan> {
    let args = &parsed.args;
    if !(MIN_DATAGRAM_BYTES..=MAX_UDP_PAYLOAD_BYTES).contains(&args.max_datagram) {
        bail!(
            "--max-datagram-bytes must be {MIN_DATAGRAM_BYTES}..={MAX_UDP_PAYLOAD_BYTES} bytes, not {}",
            args.max_datagram
        );
    }
    if args.max_viewers == 0 || args.max_in_flight == 0 || args.max_viewers_per_ip == 0 {
        bail!("--max-viewers, --max-viewers-per-ip and --max-in-flight must be at least 1");
    }
    let token = match (&args.token, &args.token_file) {
        (Some(secret), _) => Some(Token::new(secret).context("--token")?),
        (None, Some(path)) => Some(Token::from_file(path).context("--token-file")?),
        (None, None) => None,
    };
    if token.is_none() && !args.bind.is_loopback() {
        tracing::warn!(
            bind = %args.bind,
            "no --token: anyone who can reach this address can watch (set --token or --token-file, or --bind 127.0.0.1)"
        );
    }
    if token.is_none() && args.allow_unauthenticated {
        tracing::warn!("--allow-unauthenticated has no effect without --token");
    }
    if args.request_per_ip == 0 {
        bail!("--request-per-ip must be at least 1");
    }
    let request = RequestConfig {
        ttl: if args.request_ttl == 0.0 {
            None
        } else {
            Some(secs(args.request_ttl, "--request-ttl")?)
        },
        per_ip: args.request_per_ip,
    };
    let config = Config {
        token,
        allow_unauthenticated: args.allow_unauthenticated,
        max_viewers: args.max_viewers,
        max_viewers_per_ip: args.max_viewers_per_ip,
        viewer_timeout: secs(args.viewer_timeout, "--viewer-timeout")?,
        register_timeout: secs(args.register_timeout, "--register-timeout")?,
        max_in_flight: args.max_in_flight,
        mtu: (args.mtu != 0).then_some(args.mtu),
        fec: args.fec,
        pace: args.pace,
        http_write_deadline: secs(args.http_write_timeout, "--http-write-timeout")?,
        metrics_public: args.metrics_public,
        ..Config::default()
    };
    if args.motion_every == 0 || !(0.0..=100.0).contains(&args.motion_threshold) {
        bail!("--motion-every must be at least 1 and --motion-threshold 0 to 100");
    }
    let motion = surv_server::motion::MotionConfig {
        threshold_pct: args.motion_threshold,
        hold: secs(args.motion_hold, "--motion-hold")?,
        h264_keyframes_only: args.motion_h264 == MotionH264::Keyframes,
        ..Default::default()
    };
    let name = args.name.clone().unwrap_or_else(mqtt::default_name);
    mqtt::check_topic(&name, true).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let mqtt = match &args.mqtt {
        Some(url) => {
            let mut broker = BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("--mqtt {e}"))?;
            if let Some(path) = &args.mqtt_password_file {
                broker = broker
                    .with_password_file(path)
                    .map_err(|e| anyhow::anyhow!("--mqtt-password-file: {e}"))?;
            }
            let mut c = MqttConfig::new(broker, &name);
            if let Some(prefix) = &args.mqtt_topic {
                mqtt::check_topic(prefix, false)
                    .map_err(|e| anyhow::anyhow!("--mqtt-topic: {e}"))?;
                c.prefix = prefix.clone();
            }
            c.stats_every = secs(args.mqtt_stats_secs, "--mqtt-stats-every")?;
            Some(c)
        }
        None => None,
    };
    Ok(Plan {
        config,
        max_datagram_bytes: args.max_datagram,
        bind: args.bind,
        cameras: camera_plans(parsed)?,
        motion_every: args.motion_every,
        motion,
        detect_model: surv_server::detect::ModelPaths {
            runtime: args.detect_runtime.clone(),
            model: args.detect_model.clone(),
        },
        request,
        mqtt,
        release_memory_every: Some(RELEASE_MEMORY_EVERY),
    })
}

/// On each `SIGHUP`, reads the `--config` file again and gives the server its cameras: added
/// ones start, removed ones end, changed ones restart, the others are not touched. A file that
/// no longer parses changes nothing (the reason is logged). Server-wide settings take effect at
/// the next start (a changed one is named in a warning).
async fn reload_on_hangup(app: Arc<App>, mut settings: Vec<(String, toml::Value)>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot watch SIGHUP: no config reload"),
        };
        while hangups.recv().await.is_some() {
            let parsed = std::env::args_os().collect::<Vec<_>>();
            let reread = <Args as clap::CommandFactory>::command()
                .try_get_matches_from(&parsed)
                .map_err(anyhow::Error::from)
                .and_then(|m| {
                    let args = <Args as clap::FromArgMatches>::from_arg_matches(&m)?;
                    with_config(parsed, m, args)
                })
                .and_then(|p| camera_plans(&p).map(|cameras| (p, cameras)));
            match reread {
                Ok((p, cameras)) => {
                    let changed: Vec<&str> = p
                        .settings
                        .iter()
                        .filter(|s| !settings.contains(s))
                        .chain(settings.iter().filter(|s| !p.settings.contains(s)))
                        .map(|(flag, _)| flag.as_str())
                        .collect();
                    if !changed.is_empty() {
                        tracing::warn!(settings = ?changed, "SIGHUP: changed server-wide settings take effect at the next start; the cameras are reloaded now");
                    }
                    settings = p.settings;
                    app.reload(cameras).await;
                }
                Err(e) => tracing::error!(
                    "SIGHUP: the config is refused, the cameras stay as they are: {e:#}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (app, &mut settings);
}

/// The cameras to start: the config file's `[[camera]]` tables, each over the server-wide
/// values, or else the one camera the flags describe.
fn camera_plans(parsed: &Parsed) -> anyhow::Result<Vec<CameraPlan>> {
    let Parsed {
        matches,
        args,
        cameras: entries,
        ..
    } = parsed;
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    // `--cam N` is `--source cam` on camera N.
    let mut source = args.source.clone();
    if given("cam") {
        if given("source") && !matches!(args.source, SourceSpec::Cam(_)) {
            bail!(
                "--cam and --source {} contradict each other: pick one",
                args.source
            );
        }
        source = SourceSpec::Cam(args.cam);
    } else if let SourceSpec::Cam(_) = args.source {
        source = SourceSpec::Cam(args.cam);
    }
    let base = |size: (u32, u32), fps: u32, quality: u8| {
        let options = SourceOptions {
            width: size.0,
            height: size.1,
            fps,
            max_frame_bytes: args.max_frame_bytes,
            allow: args.source_allow.clone(),
            looped: args.looped,
            rtsp_transport: match args.rtsp_transport {
                Transport::Tcp => RtspTransport::Tcp,
                Transport::Udp => RtspTransport::Udp,
            },
        };
        let capture = CaptureConfig {
            encoder: EncoderConfig {
                max_datagram_bytes: args.max_datagram,
                quality,
            },
            idle: StreamShape {
                width: size.0,
                height: size.1,
                fps,
            },
            gop_secs: args.gop_secs,
        };
        (options, capture)
    };
    let motion = args.motion == Switch::On;
    if entries.is_empty() {
        let detect = detect_config(args, args.detect.as_deref(), None, motion)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        check_name(&args.camera_name).map_err(|e| anyhow::anyhow!("--camera-name: {e}"))?;
        let (options, capture) = base(args.size, args.fps, args.quality);
        let forward = resolve_forwards(&args.forward, "--forward", &[])?;
        return Ok(vec![CameraPlan {
            name: args.camera_name.clone(),
            source,
            given: None,
            options,
            capture,
            motion,
            detect,
            request_port: args.request_port,
            tcp_stream_port: args.tcp_stream_port,
            forward,
        }]);
    }
    if given("source") || given("cam") {
        bail!(
            "--source or --cam, and [[camera]] tables in the config: name the cameras in one place"
        );
    }
    let config = args
        .config
        .as_deref()
        .unwrap_or(std::path::Path::new("config"));
    let mut plans: Vec<CameraPlan> = Vec::new();
    for (i, (entry, line)) in entries.iter().enumerate() {
        let at = format!("{}:{line}: camera {}", config.display(), entry.name);
        let size = match &entry.size {
            Some(s) => surv_proto::parse_size(s).map_err(|e| anyhow::anyhow!("{at}: size: {e}"))?,
            None => args.size,
        };
        let fps = entry.fps.unwrap_or(args.fps);
        let quality = entry.quality.unwrap_or(args.quality);
        if !(1..=100).contains(&quality) {
            bail!("{at}: quality must be 1 to 100, not {quality}");
        }
        let (mut options, capture) = base(size, fps, quality);
        if let Some(looped) = entry.looped {
            options.looped = looped;
        }
        if let Some(bytes) = entry.max_frame_bytes {
            if bytes < 1024 {
                bail!("{at}: max-frame-bytes must be at least 1024, not {bytes}");
            }
            options.max_frame_bytes = bytes;
        }
        if let Some(nets) = &entry.source_allow {
            options.allow = nets
                .iter()
                .map(|n| spec::parse_net(n).map_err(|e| anyhow::anyhow!("{at}: source-allow: {e}")))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(t) = &entry.rtsp_transport {
            options.rtsp_transport = match t.as_str() {
                "tcp" => RtspTransport::Tcp,
                "udp" => RtspTransport::Udp,
                other => bail!("{at}: rtsp-transport is tcp or udp, not {other:?}"),
            };
        }
        let source =
            SourceSpec::parse(&entry.source).map_err(|e| anyhow::anyhow!("{at}: source: {e}"))?;
        let detect = detect_config(
            args,
            entry.detect.as_deref().or(args.detect.as_deref()),
            Some(entry),
            entry.motion.unwrap_or(motion),
        )
        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        // The server-wide --request-port and --tcp-stream-port are the first camera's.
        let (request_port, tcp_stream_port) = if i == 0 {
            (
                entry.request_port.unwrap_or(args.request_port),
                entry.tcp_stream_port.unwrap_or(args.tcp_stream_port),
            )
        } else {
            (
                entry.request_port.unwrap_or(0),
                entry.tcp_stream_port.unwrap_or(0),
            )
        };
        for (port, key) in [
            (request_port, "request-port"),
            (tcp_stream_port, "tcp-stream-port"),
        ] {
            if port != 0
                && plans
                    .iter()
                    .any(|p| p.request_port == port || p.tcp_stream_port == port)
            {
                bail!("{at}: {key} {port} is another camera's already");
            }
        }
        // The server-wide --forward is the first camera's too. The file's URLs were checked
        // when it was parsed.
        let forward = match (&entry.forward, i) {
            (Some(list), _) => {
                let urls = list
                    .urls()
                    .iter()
                    .map(|text| ForwardUrl::parse(text))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("{at}: forward: {e}"))?;
                resolve_forwards(&urls, &format!("{at}: forward"), &plans)?
            }
            (None, 0) => resolve_forwards(&args.forward, "--forward", &plans)?,
            (None, _) => Vec::new(),
        };
        plans.push(CameraPlan {
            name: entry.name.clone(),
            source,
            given: None,
            options,
            capture,
            motion: entry.motion.unwrap_or(motion),
            detect,
            request_port,
            tcp_stream_port,
            forward,
        });
    }
    Ok(plans)
}

/// A camera's object detection: `labels` (its `detect`, else `--detect`; empty: off) with the
/// server-wide `--detect-*` values under its own `detect-*` keys.
fn detect_config(
    args: &Args,
    labels: Option<&str>,
    entry: Option<&CameraEntry>,
    motion: bool,
) -> Result<Option<surv_server::detect::DetectConfig>, String> {
    let Some(labels) = labels.filter(|l| !l.trim().is_empty() && l.trim() != "off") else {
        return Ok(None);
    };
    let classes = surv_server::detect::parse_labels(labels).map_err(|e| format!("detect: {e}"))?;
    let mut config = surv_server::detect::DetectConfig::new(classes);
    config.every = entry
        .and_then(|e| e.detect_every)
        .unwrap_or(args.detect_every);
    config.threshold = entry
        .and_then(|e| e.detect_threshold)
        .unwrap_or(args.detect_threshold);
    config.on = match entry.and_then(|e| e.detect_on.as_deref()) {
        Some("every") => surv_server::detect::DetectOn::Every,
        Some("motion") => surv_server::detect::DetectOn::Motion,
        Some(other) => return Err(format!("detect-on is every or motion, not {other:?}")),
        None => match args.detect_on {
            DetectWhen::Every => surv_server::detect::DetectOn::Every,
            DetectWhen::Motion => surv_server::detect::DetectOn::Motion,
        },
    };
    config.hold = Duration::try_from_secs_f64(args.detect_hold)
        .map_err(|_| format!("--detect-hold {} is not a duration", args.detect_hold))?;
    if config.every == 0 {
        return Err("detect-every must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&config.threshold) {
        return Err(format!(
            "detect-threshold is a score from 0 to 1, not {}",
            config.threshold
        ));
    }
    if config.on == surv_server::detect::DetectOn::Motion && !motion {
        return Err("detect-on motion needs motion detection on (--motion on)".into());
    }
    Ok(Some(config))
}

/// Resolves a camera's forward destinations (`what` names them in errors). None may be given
/// twice, nor be another camera's (in `plans`): two streams sent to one port mix.
fn resolve_forwards(
    urls: &[ForwardUrl],
    what: &str,
    plans: &[CameraPlan],
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(urls.len());
    for url in urls {
        let dest = url
            .resolve()
            .map_err(|e| anyhow::anyhow!("{what} {url}: {e}"))?;
        if dests.contains(&dest) {
            bail!("{what} {url}: {dest} is given twice (two streams to one port mix)");
        }
        if let Some(other) = plans.iter().find(|p| p.forward.contains(&dest)) {
            bail!(
                "{what} {url}: {dest} is camera {}'s already (two streams to one port mix)",
                other.name
            );
        }
        dests.push(dest);
    }
    Ok(dests)
}

/// How often free memory goes back to the system (see [`release_memory_every`]).
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(5);

/// Cancels `shutdown` on the first Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still works");
                    let _ = ctrl_c.await;
                    return shutdown.cancel();
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: ending every session");
    shutdown.cancel();
}

/// `--mtu`: 0 (off) or a chunk datagram size in `MIN_MTU_BYTES..=MAX_MTU_BYTES`.
fn parse_mtu(s: &str) -> Result<u16, String> {
    let (min, max) = (surv_proto::MIN_MTU_BYTES, surv_proto::MAX_MTU_BYTES);
    match s.parse::<u16>() {
        Ok(v) if v == 0 || (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("expected 0 (off) or {min} to {max} bytes")),
    }
}
