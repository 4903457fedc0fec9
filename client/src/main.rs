//! `surv-client`: parses flags, runs the receiver on a background runtime and the window on the
//! main thread (or headless), prints the summary.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use surv_client::display::{self, Latest};
use surv_client::recorder::{Format, RecorderConfig, Retention, Trigger, MAX_PRE_ROLL};
use surv_client::retention::ByteSize;
use surv_client::{ClientError, Config};
use tokio_util::sync::CancellationToken;

/// Watches a surv server: registers over TCP, receives its JPEG frames over UDP, shows them in
/// a window (fps, loss and latency in the title; a red border and "MOTION" in the title while
/// the server reports motion; a green box around each object its detector sees, and the labels
/// in the title), records rolling AVI or MP4 segments (all the time, or only around motion or
/// objects), optionally writes the stream to standard output (--pipe), and prints a summary at
/// exit. Esc, closing the window, Ctrl-C or a closed pipe ends it cleanly (the server is told
/// `end`).
#[derive(Debug, Parser)]
#[command(name = "surv-client", version, about, long_about)]
struct Args {
    /// The server's host name or IP.
    server: String,
    /// The server's TCP registration port (surv-server --port, default 9999).
    tcp_port: u16,
    /// The UDP port to receive frames on (0: any free port).
    udp_port: u16,
    /// No window: receive, decode, record and report only. Also chosen automatically, with a
    /// message, when there is no display.
    #[arg(long)]
    headless: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Folder for the rolling recordings.
    #[arg(long, value_name = "DIR", default_value = "recordings")]
    record_dir: PathBuf,
    /// Length of each recorded segment, in seconds (by the frames' capture times).
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    segment_secs: f64,
    /// Segment format: avi (MJPEG, the received JPEGs as they came) or mp4 (H.264, fragmented:
    /// plays in browsers; costs CPU to re-encode).
    #[arg(long, value_name = "avi|mp4", default_value_t = Format::Avi)]
    format: Format,
    /// Keep at most this much of closed segments in the folder (e.g. 500M, 20G); the oldest are
    /// deleted first.
    #[arg(long, value_name = "SIZE")]
    keep_bytes: Option<ByteSize>,
    /// Keep at most this many closed segments in the folder; the oldest are deleted first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep_segments: Option<u64>,
    /// Do not record.
    #[arg(long)]
    no_record: bool,
    /// What to record: every frame (always); only around motion the server detected (motion;
    /// the server must run with --motion on, its default); or only around objects its detector
    /// sees, by label (person, or person,car; the server must run with --detect for them).
    #[arg(long, value_name = "always|motion|LABELS", default_value = "always")]
    record_on: String,
    /// With --record-on motion or LABELS: seconds recorded before the first frame flagged as
    /// motion or showing the object (at most 60; kept in memory meanwhile).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pre_roll: f64,
    /// With --record-on motion or LABELS: seconds recorded after the last frame flagged as
    /// motion or showing the object (the server flags frames until its --motion-hold, and lists
    /// objects until its --detect-hold, has passed without them).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    post_roll: f64,
    /// Write every received JPEG to standard output, one after another (an MJPEG stream for
    /// `| ffmpeg -f mjpeg -i - …`). Logs and the summary go to standard error. The viewer ends,
    /// telling the server, when the reader closes the pipe.
    #[arg(long)]
    pipe: bool,
    /// The camera to watch, by its name on the server (its --camera-name, or a [[camera]] of
    /// its --config). Default: the server's first camera.
    #[arg(long, value_name = "NAME")]
    camera: Option<String>,
    /// The server's access token (surv-server --token), sent with the registration.
    #[arg(long, value_name = "SECRET", conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the access token from this file (white space around it is ignored), so that it
    /// does not show in the process list.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Ask for each frame in chunks of at most this many bytes (UDP payload), repaired when
    /// some are lost, instead of one large datagram that a real network cuts into IP fragments
    /// (any one lost, the frame is lost). 800 to 8972; 1200 fits almost every path, 1472 a plain
    /// Ethernet LAN. 0 = whole datagrams. A server older than chunks sends whole datagrams.
    #[arg(long, value_name = "BYTES", default_value_t = surv_proto::DEFAULT_MTU_BYTES,
          value_parser = parse_mtu)]
    mtu: u16,
    /// With chunks: report the share of chunks lost on the way with each ack, so that a
    /// server that offers it (`fec=1`) sends parity chunks for it, from which a frame that lost
    /// a few chunks is put back at once instead of a round trip later. `false`: lost chunks are
    /// only asked for again.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    fec: bool,
}

/// `--mtu`: 0 (off) or a chunk datagram size in `MIN_MTU_BYTES..=MAX_MTU_BYTES`.
fn parse_mtu(s: &str) -> Result<u16, String> {
    let (min, max) = (surv_proto::MIN_MTU_BYTES, surv_proto::MAX_MTU_BYTES);
    match s.parse::<u16>() {
        Ok(v) if v == 0 || (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected 0 (whole datagrams) or {min} to {max} bytes"
        )),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("surv-client: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let server = resolve(&args.server, args.tcp_port)?;
    let positive = |v: f64, flag: &str| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{flag} must be a positive number of seconds, not {v}"))
    };
    let seconds = |v: f64, flag: &str| {
        Duration::try_from_secs_f64(v)
            .ok()
            .with_context(|| format!("{flag} must be a number of seconds, not {v}"))
    };
    let trigger = match args.record_on.as_str() {
        "always" => Trigger::Always,
        on => {
            let pre_roll = seconds(args.pre_roll, "--pre-roll")?;
            if pre_roll > MAX_PRE_ROLL {
                anyhow::bail!(
                    "--pre-roll is at most {} s (it is kept in memory)",
                    MAX_PRE_ROLL.as_secs()
                );
            }
            let post_roll = seconds(args.post_roll, "--post-roll")?;
            match on {
                "motion" => Trigger::Motion {
                    pre_roll,
                    post_roll,
                },
                labels => Trigger::Objects {
                    labels: parse_labels(labels)?,
                    pre_roll,
                    post_roll,
                },
            }
        }
    };
    let record = if args.no_record {
        None
    } else {
        Some(RecorderConfig {
            dir: args.record_dir.clone(),
            segment: positive(args.segment_secs, "--segment-secs")?,
            format: args.format,
            keep: Retention {
                max_bytes: args.keep_bytes.map(|b| b.0),
                max_segments: args
                    .keep_segments
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            },
            trigger,
        })
    };
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file: reading {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if let Some(t) = &token {
        if !surv_proto::is_valid_token(t.as_bytes()) {
            anyhow::bail!(
                "the token must be 1-{} visible ASCII characters, without spaces",
                surv_proto::MAX_TOKEN_BYTES
            );
        }
    }
    if let Some(name) = &args.camera {
        if !surv_proto::is_valid_camera_name(name.as_bytes()) {
            anyhow::bail!(
                "--camera: a camera name is 1-{} letters, digits, '-' or '_'",
                surv_proto::MAX_CAMERA_NAME_BYTES
            );
        }
    }
    let config = Config {
        token,
        server,
        udp_port: args.udp_port,
        max_frames: args.frames,
        max_duration: args.seconds.map(|s| positive(s, "--seconds")).transpose()?,
        record,
        connect_timeout: Duration::from_secs(5),
        pipe: args.pipe,
        camera: args.camera.clone(),
        mtu: (args.mtu != 0).then_some(args.mtu),
        fec: args.fec,
    };

    let window = if args.headless {
        false
    } else if let Some(why) = display::no_display_reason() {
        eprintln!("surv-client: {why}: running headless (frames are still decoded and recorded)");
        false
    } else {
        true
    };

    let stop = CancellationToken::new();
    let latest = window.then(|| Arc::new(Latest::default()));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let receiver = {
        let (stop, latest) = (stop.clone(), latest.clone());
        runtime.spawn(async move {
            let on_signal = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_signal.cancel();
                }
            });
            let result = surv_client::run(config, latest, stop.clone()).await;
            stop.cancel(); // closes the window when the stream ends by itself
            result
        })
    };

    if let Some(latest) = &latest {
        let title = format!("surv {server}");
        if let Err(e) = display::run_window(&title, latest, &stop) {
            eprintln!("surv-client: cannot open a window ({e}); running headless");
        }
    }
    let result = runtime
        .block_on(receiver)
        .context("the receiver task failed")?;
    match result {
        Ok(summary) => {
            // Standard output is the video when piping.
            let mut report = summary.to_string();
            if let Some(first) = summary.segments.first() {
                let dir = first
                    .parent()
                    .map_or_else(|| args.record_dir.clone(), PathBuf::from);
                report += &format!(
                    "\nsurv-client: {} segment(s) in {}",
                    summary.segments.len(),
                    dir.display()
                );
            }
            if args.pipe {
                eprintln!("{report}");
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Refused(reason)) => {
            eprintln!("surv-client: the server refused this viewer: {reason}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}

fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host:?}"))?
        .next()
        .with_context(|| format!("{host:?} has no address"))
}

/// `--record-on`'s labels (`person`, `person,car`, `traffic light`) as the server writes them:
/// lower case, `_` for a space.
fn parse_labels(text: &str) -> anyhow::Result<Vec<String>> {
    let mut labels = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let label = name.to_ascii_lowercase().replace(' ', "_");
        if !surv_proto::objects::is_valid_label(&label) {
            anyhow::bail!(
                "--record-on takes always, motion, or object labels such as person or person,car; {name:?} is none of these"
            );
        }
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    if labels.is_empty() {
        anyhow::bail!("--record-on takes always, motion, or object labels such as person");
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::parse_labels;

    #[test]
    fn record_on_labels_are_written_as_the_server_writes_them() {
        assert_eq!(parse_labels("person").unwrap(), ["person"]);
        assert_eq!(
            parse_labels(" Person, traffic light ,person,").unwrap(),
            ["person", "traffic_light"]
        );
        let long = "x".repeat(33);
        for bad in ["", ",", "persön", "a/b", long.as_str()] {
            let e = parse_labels(bad).unwrap_err().to_string();
            assert!(e.contains("--record-on"), "{bad:?}: {e}");
        }
    }
}
