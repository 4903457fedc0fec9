//! Registration and the receive loop: one datagram in, one ack out, the frame handed to the
//! decoder and the recorder without waiting for either. A chunked session (the server offered
//! `mtu=`, and `--mtu` is not 0) gets each frame as chunks: they are reassembled
//! ([`surv_proto::reassembly`]), missing ones asked for again ([`crate::repair`]), and the
//! whole frame goes the same way as a whole datagram.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use surv_proto::{
    chunk_bytes_for_mtu, unix_micros_now, Ack, ChunkHeader, Form, FrameTag, Push, Reassembler,
    Registration, Rejected, Reply, ReplyError, StreamParams, CHUNK_HEADER_BYTES,
    MAX_UDP_PAYLOAD_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::decoder::Decoder;
use crate::display::Latest;
use crate::pipe::Pipe;
use crate::recorder::{self, RecFrame, RecorderConfig};
use crate::repair::{NackTimer, Step, CHECK_EVERY};
use crate::stats::{ChunkCounts, StreamStats, Summary};

/// How often the window's status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// After this long without a frame, the viewer says so (once per silence).
const QUIET_WARNING: Duration = Duration::from_secs(5);

/// Until the first frame arrives, `hello` is sent again this often (a lost `hello` costs this).
const HELLO_EVERY: Duration = Duration::from_millis(100);

/// What to connect to and when to stop.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's TCP registration address.
    pub server: SocketAddr,
    /// Where to receive frames; 0 picks a free port.
    pub udp_port: u16,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Stop after this long.
    pub max_duration: Option<Duration>,
    /// Record rolling segments, or not.
    pub record: Option<RecorderConfig>,
    /// Limit for connecting and for the server's reply.
    pub connect_timeout: Duration,
    /// The server's access token (its `--token`), sent with the registration.
    pub token: Option<String>,
    /// The camera to watch, by name (`None`: the server's first).
    pub camera: Option<String>,
    /// Write every received JPEG to standard output (`--pipe`); the stream ends when the
    /// reader closes it.
    pub pipe: bool,
    /// Ask for each frame in chunks of at most this many bytes (`--mtu`), when the server
    /// offers them; `None`: whole frame datagrams.
    pub mtu: Option<u16>,
    /// With chunks, report the loss (`l=`) to a server that offers parity chunks for it
    /// (`--fec`).
    pub fec: bool,
}

/// Why the viewer could not stream at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot receive on UDP port {port}: {source} (is another viewer using it? pick another port, or 0)")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot connect to {addr}: {source} (is surv-server running there?)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from {0} within the timeout (is that a surv server?)")]
    NoReply(SocketAddr),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("the server's reply is not understood: {0}")]
    Protocol(String),
    #[error("cannot start the {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Registers with the server, streams until a limit, `stop`, or the server goes away, then
/// sends `end` and reports. Decoded frames go to `latest` for a window, if one is given.
pub async fn run(
    cfg: Config,
    latest: Option<Arc<Latest>>,
    stop: CancellationToken,
) -> Result<Summary, ClientError> {
    let any_ip = if cfg.server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let udp = UdpSocket::bind((any_ip, cfg.udp_port))
        .await
        .map_err(|source| ClientError::Bind {
            port: cfg.udp_port,
            source,
        })?;
    let udp_port = udp
        .local_addr()
        .map_err(|source| ClientError::Bind {
            port: cfg.udp_port,
            source,
        })?
        .port();

    let (mut tcp, params) = register(&cfg, udp_port).await?;
    tracing::info!(
        session = params.session_id,
        width = params.width,
        height = params.height,
        fps = params.fps,
        udp_port,
        "registered"
    );

    let mut decoder = Decoder::spawn(latest.clone()).map_err(|source| ClientError::Start {
        what: "decoder",
        source,
    })?;
    let recorder = match &cfg.record {
        Some(rc) => {
            Some(
                recorder::spawn(rc.clone(), params.fps).map_err(|e| ClientError::Start {
                    what: "recorder",
                    source: std::io::Error::other(e.to_string()),
                })?,
            )
        }
        None => None,
    };
    let pipe_closed = CancellationToken::new();
    let mut pipe = if cfg.pipe {
        Some(
            Pipe::spawn(std::io::stdout(), pipe_closed.clone()).map_err(|source| {
                ClientError::Start {
                    what: "pipe writer",
                    source,
                }
            })?,
        )
    } else {
        None
    };

    // A server with session keys sends nothing before our `hello` from this socket, to the
    // session's UDP port on the address we registered with.
    let key = params.key;
    let hello_to = params
        .udp_port
        .filter(|_| key.is_some())
        .map(|port| SocketAddr::new(cfg.server.ip(), port));
    // Chunks when the server offers them and we want them, at the smaller mtu of the two.
    let chunk_mtu = cfg
        .mtu
        .zip(params.mtu)
        .filter(|_| key.is_some())
        .map(|(ours, theirs)| ours.min(theirs));
    let hello = match chunk_mtu {
        Some(mtu) => Ack::HelloChunks { mtu },
        None => Ack::Hello,
    }
    .encode_keyed(key);
    let mut next_hello = Instant::now();
    // Parity chunks, for our loss reports, when the server offers them and we want them.
    let fec = chunk_mtu.is_some() && params.fec && cfg.fec;
    // And our path's rate, to a server that paces to it.
    let reports = Reports {
        loss: fec,
        path: chunk_mtu.is_some() && params.pace,
    };
    let mut chunks = chunk_mtu.map(|mtu| {
        tracing::info!(mtu, fec, paced = reports.path, "frames come in chunks");
        Reassembler::new(key.unwrap_or_default(), chunk_bytes_for_mtu(mtu))
    });
    let mut nacks = NackTimer::default();
    let mut steps = Vec::new();
    let mut newest_chunk_seq: Option<u64> = None;
    // Frames to hand on, oldest first: at most the reassembler's slots at once.
    let mut ready: VecDeque<Bytes> = VecDeque::with_capacity(surv_proto::reassembly::SLOTS);
    // Where the latest datagram came from (a frame's sender once its tag reads).
    let mut frames_from: Option<SocketAddr> = None;
    let mut next_check = Instant::now();

    let mut stats = StreamStats::new();
    let mut motion_frames = 0u64;
    let mut object_frames = 0u64;
    let mut in_motion = false;
    // The labels of the objects the server lists in the frames shown now, for the title.
    let mut seen_labels = String::new();
    let trigger = cfg
        .record
        .as_ref()
        .map(|r| r.trigger.clone())
        .unwrap_or_default();
    let mut server_udp: Option<SocketAddr> = None;
    // One byte more than the largest UDP payload, so an oversized datagram shows as such.
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
    let mut tcp_buf = [0u8; 64];
    let deadline = cfg.max_duration.map(|d| Instant::now() + d);
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut last_frame_at = Instant::now();
    let mut warned_quiet = false;

    let ended_by = loop {
        if cfg.max_frames.is_some_and(|n| stats.received >= n) {
            break "frame limit".to_string();
        }
        let hello_due = hello_to.filter(|_| server_udp.is_none());
        let check_due = chunks
            .as_ref()
            .is_some_and(|r| r.incomplete().next().is_some());
        tokio::select! {
            biased;
            () = stop.cancelled() => break "stopped".to_string(),
            () = sleep_until(next_hello), if hello_due.is_some() => {
                if let Some(to) = hello_due {
                    if let Err(e) = udp.send_to(&hello, to).await {
                        tracing::debug!(error = %e, "hello not sent");
                    }
                }
                next_hello = Instant::now() + HELLO_EVERY;
                continue;
            }
            () = sleep_until(next_check), if check_due => {
                next_check = Instant::now() + CHECK_EVERY;
                if let (Some(r), Some(to)) = (&mut chunks, server_udp) {
                    repair_steps(&udp, to, (key, reports), r, &mut nacks, &mut steps, newest_chunk_seq);
                    take_ready(r, &mut ready);
                }
            }
            () = pipe_closed.cancelled() => break "pipe closed".to_string(),
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break "time limit".to_string(),
            res = tcp.read(&mut tcp_buf) => match res {
                Ok(0) | Err(_) => break "server closed the connection".to_string(),
                Ok(_) => {} // nothing more is expected from the server; ignore it
            },
            res = udp.recv_from(&mut buf) => {
                let (n, from) = match res {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive error");
                        continue;
                    }
                };
                // Frames come from the server's IP, from one port: the session's (told in the OK
                // line, or the first frame's).
                let expected = hello_to.or(server_udp);
                if from.ip() != cfg.server.ip() || expected.is_some_and(|s| s != from) || n > MAX_UDP_PAYLOAD_BYTES {
                    stats.ignored += 1;
                    continue;
                }
                let datagram = &buf[..n];
                // A chunk starts "SC", a whole frame FF D8.
                match &mut chunks {
                    Some(r) if n >= CHUNK_HEADER_BYTES && datagram[0] == b'S' => {
                        let now = std::time::Instant::now();
                        // A resent chunk times the repair's round trip.
                        if let Ok((h, _)) = ChunkHeader::decode(datagram) {
                            if h.resent && h.key == key.unwrap_or_default() {
                                nacks.on_resent(h.seq, now);
                            }
                        }
                        match r.push(datagram, now) {
                            Push::Complete { frame, .. } => ready.push_back(Bytes::copy_from_slice(frame)),
                            Push::Pending { seq } | Push::Held { seq } => {
                                server_udp = Some(from);
                                newest_chunk_seq = Some(newest_chunk_seq.map_or(seq, |s| s.max(seq)));
                                repair_steps(&udp, from, (key, reports), r, &mut nacks, &mut steps, newest_chunk_seq);
                            }
                            Push::Rejected(Rejected::Late | Rejected::Duplicate) => {}
                            Push::Rejected(why) => {
                                tracing::trace!(?why, "chunk refused");
                                stats.ignored += 1;
                            }
                        }
                        // Frames held behind one just completed or given up, in order.
                        take_ready(r, &mut ready);
                    }
                    _ => ready.push_back(Bytes::copy_from_slice(datagram)),
                }
                frames_from = Some(from);
            }
        }
        // Every frame that left reassembly (or came whole), oldest first.
        while let Some(whole) = ready.pop_front() {
            let Some(from) = frames_from.or(server_udp) else {
                break;
            };
            let Ok(tag) = FrameTag::decode(&whole) else {
                stats.ignored += 1;
                continue;
            };
            server_udp = Some(from);
            let ack = match &chunks {
                Some(r) => received(r, r.newest_done().unwrap_or(tag.seq), reports),
                None => Ack::Continue(Some(tag.seq)),
            };
            if udp.try_send_to(&ack.encode_keyed(key), from).is_err() {
                tracing::debug!("ack not sent (socket busy); the next one covers it");
            }
            stats.on_frame(tag.seq, tag.capture_unix_us, unix_micros_now());
            last_frame_at = Instant::now();
            warned_quiet = false;
            motion_frames += u64::from(tag.motion);
            object_frames += u64::from(tag.objects);
            let objects = match tag.objects {
                true => surv_proto::objects::decode(&whole).unwrap_or_default(),
                false => Vec::new(),
            };
            let labels = labels_of(&objects);
            if tag.motion != in_motion || labels != seen_labels {
                in_motion = tag.motion;
                seen_labels = labels;
                if let Some(latest) = &latest {
                    latest.set_status(status_line(&stats, in_motion, &seen_labels));
                }
            }
            let frame = whole;
            if let Some(r) = &recorder {
                let event = trigger.is_event(&tag, &objects);
                r.push(RecFrame {
                    jpeg: frame.clone(),
                    capture_unix_us: tag.capture_unix_us,
                    event,
                });
            }
            if let Some(p) = &mut pipe {
                p.push(frame.clone());
            }
            decoder.push(frame);
        }
        let now = Instant::now();
        if now >= next_status {
            next_status = now + STATUS_EVERY;
            if let Some(latest) = &latest {
                latest.set_status(status_line(&stats, in_motion, &seen_labels));
            }
            if !warned_quiet && now - last_frame_at >= QUIET_WARNING {
                tracing::warn!(
                    seconds = QUIET_WARNING.as_secs(),
                    "no frames from the server"
                );
                warned_quiet = true;
            }
        }
    };

    // Tell the server at once, rather than letting it time out. A lost `end` is covered by the
    // TCP connection closing right after.
    if let Some(addr) = server_udp.or(hello_to) {
        let _ = udp.send_to(&Ack::End.encode_keyed(key), addr).await;
    }
    let _ = tcp.shutdown().await;
    drop(tcp);

    let counts = tokio::task::spawn_blocking(move || decoder.finish())
        .await
        .unwrap_or_default();
    let report = match recorder {
        Some(r) => Some(
            tokio::task::spawn_blocking(move || r.finish())
                .await
                .map_err(|e| ClientError::Start {
                    what: "recorder",
                    source: std::io::Error::other(e.to_string()),
                })?,
        ),
        None => None,
    };
    let piped = match pipe {
        Some(p) => tokio::task::spawn_blocking(move || p.finish()).await.ok(),
        None => None,
    };
    Ok(Summary {
        received: stats.received,
        decoded: counts.decoded,
        decode_failed: counts.failed,
        decode_skipped: counts.skipped,
        lost: stats.lost(),
        loss_ratio: stats.loss_ratio(),
        fps: stats.fps(),
        latency_p50_ms: stats.latency_ms(50.0),
        latency_p99_ms: stats.latency_ms(99.0),
        longest_gap_ms: stats.longest_gap().as_secs_f64() * 1000.0,
        window_p99_ms: stats.window_p99_ms(),
        ignored: stats.ignored,
        recorded: report.as_ref().map_or(0, |r| r.frames_written),
        record_dropped: report.as_ref().map_or(0, |r| r.frames_dropped),
        record_idle: report.as_ref().map_or(0, |r| r.frames_idle),
        motion_frames,
        object_frames,
        piped,
        segments: report.map(|r| r.segments).unwrap_or_default(),
        seconds: stats.elapsed().as_secs_f64(),
        ended_by,
        chunks: chunks.map(|r| {
            let c = r.stats();
            ChunkCounts {
                stored: c.chunks,
                completed: c.complete,
                given_up: c.given_up,
                duplicate: c.duplicate,
                late: c.late,
                refused: c.refused,
                nacks: nacks.sent,
                parity: c.parity_chunks,
                restored: c.restored,
                loss_permille: r.loss_permille(),
                path_kbps: r.path_kbps(),
            }
        }),
    })
}

/// Moves the frames the reassembler holds that may now leave (no older frame in assembly) to
/// `ready`, oldest first.
fn take_ready(r: &mut Reassembler, ready: &mut VecDeque<Bytes>) {
    while let Some((_, frame)) = r.pop_ready() {
        ready.push_back(Bytes::copy_from_slice(frame));
    }
}

/// What a chunked session's `continue`s report besides the bytes received.
#[derive(Debug, Clone, Copy)]
struct Reports {
    /// The loss measured (to a server that sends parity, when we take it).
    loss: bool,
    /// The path's rate (to a server that paces to it), once measured.
    path: bool,
}

/// A chunked session's `continue` for the frames up to `seq`: what it received of them, and
/// what `reports` asks for.
fn received(r: &Reassembler, seq: u64, reports: Reports) -> Ack {
    Ack::Received {
        seq,
        rx_bytes: r.bytes_through(seq) as u32,
        loss: reports.loss.then(|| r.loss_permille().unwrap_or(0)),
        path_kbps: r.path_kbps().filter(|_| reports.path),
    }
}

/// Sends the `nack`s due for the frames in assembly and gives up the frames past saving, with
/// a `continue` past them so the server's window moves on.
/// `(key, reports)`: the session's key, and what its `continue`s report.
fn repair_steps(
    udp: &UdpSocket,
    to: SocketAddr,
    (key, reports): (Option<u64>, Reports),
    r: &mut Reassembler,
    nacks: &mut NackTimer,
    steps: &mut Vec<Step>,
    newest_seen: Option<u64>,
) {
    nacks.due(
        r.incomplete(),
        newest_seen,
        std::time::Instant::now(),
        steps,
    );
    for step in steps.iter() {
        let ack = match *step {
            Step::Nack(nack) => Ack::Nack(nack),
            Step::GiveUp(seq) => {
                r.give_up(seq);
                received(r, r.newest_done().unwrap_or(seq), reports)
            }
        };
        if udp.try_send_to(&ack.encode_keyed(key), to).is_err() {
            tracing::debug!("nack not sent (socket busy)");
        }
    }
}

/// Connects, sends `SURV/1 <udp_port>` and reads the server's one-line answer.
async fn register(cfg: &Config, udp_port: u16) -> Result<(TcpStream, StreamParams), ClientError> {
    let addr = cfg.server;
    let mut tcp = match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Err(_) => return Err(ClientError::NoReply(addr)),
    };
    let _ = tcp.set_nodelay(true);
    let line = Registration {
        form: Form::V1,
        udp_port,
    }
    .with_token(cfg.token.as_deref())
    .with_camera(cfg.camera.as_deref())
    .encode();
    tcp.write_all(&line)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;

    // Byte-wise, so that nothing after the newline is consumed; surv-proto says where the line
    // ends, and refuses it as soon as it cannot be a reply (a foreign peer, an endless line).
    let read_reply = async {
        let mut line = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        loop {
            match tcp.read(&mut byte).await {
                Ok(0) => {
                    return Err(ClientError::Protocol(
                        "the server closed the connection without a reply".into(),
                    ))
                }
                Ok(_) => line.push(byte[0]),
                Err(source) => return Err(ClientError::Connect { addr, source }),
            }
            match Reply::decode(&line) {
                Err(ReplyError::Incomplete) => {}
                Ok((reply, _)) => return Ok(reply),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    };
    // The reason was escaped by the decoder: it prints safely.
    match timeout(cfg.connect_timeout, read_reply).await {
        Ok(Ok(Reply::Accepted(params))) => Ok((tcp, params)),
        Ok(Ok(Reply::Refused(reason))) => Err(ClientError::Refused(reason)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::NoReply(addr)),
    }
}

/// The labels of a frame's objects, each once, in the server's order (`person, car`); empty
/// when it lists none.
fn labels_of(objects: &[surv_proto::Object]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for o in objects {
        if !labels.contains(&o.label.as_str()) {
            labels.push(&o.label);
        }
    }
    labels.join(", ")
}

/// The window title's status: rate, loss, latency, and first `MOTION` while the frames shown are
/// inside a motion event and the labels of the objects the server sees in them.
fn status_line(s: &StreamStats, in_motion: bool, labels: &str) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    format!(
        "{}{}{:.1} fps, loss {:.1}%, latency p50 {} p99 {}",
        if in_motion { "● MOTION — " } else { "" },
        if labels.is_empty() {
            String::new()
        } else {
            format!("● {labels} — ")
        },
        s.fps(),
        s.loss_ratio() * 100.0,
        ms(s.latency_ms(50.0)),
        ms(s.latency_ms(99.0))
    )
}

#[cfg(test)]
mod tests {
    //! Registration against stand-in servers that answer what a hostile or foreign peer would.

    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads the registration line, answers `reply` and keeps the connection
    /// open until the test ends. Returns the config to register with.
    async fn answering(reply: Vec<u8>) -> Config {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut registration = [0u8; 64];
            let _ = tcp.read(&mut registration).await;
            let _ = tcp.write_all(&reply).await;
            // Held open: a viewer that waits for more would wait for its timeout.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        Config {
            server,
            udp_port: 0,
            max_frames: None,
            max_duration: None,
            record: None,
            connect_timeout: Duration::from_secs(3),
            token: None,
            pipe: false,
            camera: None,
            mtu: None,
            fec: false,
        }
    }

    #[tokio::test]
    async fn a_frame_rate_out_of_range_is_refused_naming_the_field() {
        let line = b"OK SURV/1 session=1 width=640 height=480 fps=4294967295 max_datagram=65000\n";
        let cfg = answering(line.to_vec()).await;
        let err = register(&cfg, 5000).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("fps=4294967295")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refusal_reason_is_printed_without_control_characters() {
        let cfg = answering(b"ERR SURV/1 \x1b]0;owned\x07 full\r\n".to_vec()).await;
        let err = register(&cfg, 5000).await.unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, ClientError::Refused(_)), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\x1b]0;owned\\x07 full"), "{shown}");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_a_surv_server_is_told_apart_at_once() {
        let cfg = answering(b"SSH-2.0-OpenSSH_9.2".to_vec()).await;
        let started = Instant::now();
        let err = register(&cfg, 5000).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("not a SURV/1 reply")),
            "{err}"
        );
        assert!(started.elapsed() < cfg.connect_timeout, "{err}");
    }

    #[tokio::test]
    async fn an_endless_reply_line_is_cut_at_the_cap() {
        let mut line = b"OK SURV/1 ".to_vec();
        line.resize(10 << 20, b'x');
        let cfg = answering(line).await;
        let err = register(&cfg, 5000).await.unwrap_err();
        assert!(matches!(&err, ClientError::Protocol(_)), "{err}");
    }
}
