//! Helpers for surv's end-to-end tests and load tools: a real server on loopback with the test
//! pattern, a viewer that does exactly what seed 003's viewer does, and a raw viewer whose
//! misbehaviour (loss, silence, spoofing) a test controls. Beside them: `fixtures` (test JPEGs,
//! the child reaper), `child` (programs run under a time limit), `media` (ffmpeg and ffprobe
//! judging recorded files), `chromium` (a headless browser driven over its DevTools pipe),
//! `nginx` (an HLS edge cache from deploy/nginx-edge.conf), `nat` (a port forward on loopback), `http` (the HTTP/1.1 client of the
//! tests and surv-load).

pub mod child;
pub mod chromium;
pub mod fixtures;
pub mod http;
pub mod media;
pub mod motion_script;
pub mod nat;
pub mod nginx;
pub mod standins;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use surv_proto::{
    Ack, Form, FrameTag, Registration, Reply, ReplyError, StreamParams, MAX_UDP_PAYLOAD_BYTES,
};
use surv_server::app::{App, CameraPlan, Plan};
use surv_server::capture::CaptureConfig;
use surv_server::encoder::EncoderConfig;
use surv_server::sources::{FrameReader, OnThread, RawFrame, Source, SourceError, TestPattern};
use surv_server::{Config, Journal, Server, StreamShape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

pub use child::{output_within, output_within_reading};
pub use fixtures::{test_jpeg, Picture, Reaper};
pub use media::{ffmpeg_check, ffprobe, mjpeg_stream, packet_times, probe, Probe};

/// Every network await in a test is bounded by this, so a broken test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serialises the tests that load the CPU, so that two of them never compete on a 2-core machine.
/// (An async lock: each test has its own runtime, and the guard is held across awaits.)
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// How the tests run surv-client: any UDP port, for `seconds`, no recording, a 5 s connect
/// timeout, no token, no pipe, frames in chunks as its `--mtu` default asks. Tests change a
/// field with `..client_config(…)`.
pub fn client_config(server: SocketAddr, seconds: f64) -> surv_client::Config {
    surv_client::Config {
        server,
        udp_port: 0,
        max_frames: None,
        max_duration: Some(Duration::from_secs_f64(seconds)),
        record: None,
        connect_timeout: Duration::from_secs(5),
        token: None,
        pipe: false,
        camera: None,
        mtu: Some(surv_proto::DEFAULT_MTU_BYTES),
        fec: true,
    }
}

/// What kind of server to start.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub quality: u8,
    pub max_datagram_bytes: usize,
    pub config: Config,
    /// The first camera's port for OAK host programs (`--tcp-stream-port`); 0: none.
    pub tcp_stream_port: u16,
    /// The first camera's port for seed 001's apps (`--request-port`); 0: none.
    pub request_port: u16,
    /// Motion detection on the first camera, as `--motion on --motion-every N --motion-hold S`
    /// runs it: `(N, S)`. `None`: off.
    pub motion: Option<(u64, Duration)>,
    /// Object detection on the first camera (`--detect …`), with the model `scripts/setup.sh`
    /// installs ([`detect_model`]). `None`: off.
    pub detect: Option<surv_server::detect::DetectConfig>,
    /// Serve RTSP on a free port (and a free UDP pair): [`TestServer::rtsp_addr`].
    pub rtsp: bool,
    /// The RTSP session timeout (`--rtsp-session-timeout`); `None`: the default.
    pub rtsp_session_timeout: Option<Duration>,
    /// Where the first camera pushes its H.264 as RTP (`--forward`, each destination its own
    /// stream); empty: nowhere.
    pub forward: Vec<SocketAddr>,
    /// Serve HTTP on a free port: [`TestServer::http_addr`].
    pub http: bool,
    /// Serve WebRTC on a free UDP port of 127.0.0.1 (offers by WHEP over HTTP, which this turns
    /// on too): [`TestServer::webrtc_addr`].
    pub webrtc: bool,
    /// `--webrtc-host`: the addresses players are told (ICE host candidates) instead of the
    /// bound 127.0.0.1; empty: the bound address.
    pub webrtc_hosts: Vec<std::net::IpAddr>,
    /// `--webrtc-tcp`: players may connect over TCP to the WebRTC port number too.
    pub webrtc_tcp: bool,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            width: 640,
            height: 480,
            fps: 30,
            quality: 80,
            max_datagram_bytes: surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
            config: Config::default(),
            tcp_stream_port: 0,
            request_port: 0,
            motion: None,
            detect: None,
            rtsp: false,
            rtsp_session_timeout: None,
            forward: Vec::new(),
            http: false,
            webrtc: false,
            webrtc_hosts: Vec::new(),
            webrtc_tcp: false,
        }
    }
}

impl ServerOpts {
    /// The defaults (30 fps, default cap, default limits) at another frame size.
    pub fn sized(width: u32, height: u32) -> ServerOpts {
        ServerOpts {
            width,
            height,
            ..ServerOpts::default()
        }
    }
}

/// A server running on 127.0.0.1 with the test pattern.
pub struct TestServer {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub log_dir: tempfile::TempDir,
    /// The server as the binary runs it.
    pub app: Arc<App>,
    /// The RTSP server's address, with [`ServerOpts::rtsp`].
    pub rtsp_addr: Option<SocketAddr>,
    /// The HTTP server's address, with [`ServerOpts::http`] or [`ServerOpts::webrtc`].
    pub http_addr: Option<SocketAddr>,
    /// The WebRTC UDP port's address, with [`ServerOpts::webrtc`].
    pub webrtc_addr: Option<SocketAddr>,
    task: Option<JoinHandle<()>>,
}

/// Starts a server with the test pattern on `127.0.0.1:0` and waits until its first frame is
/// encoded.
pub async fn start_server(opts: ServerOpts) -> anyhow::Result<TestServer> {
    let pattern = test_pattern(opts.width, opts.height, opts.fps);
    start_server_with(opts, pattern).await
}

/// A camera's capture settings for a test: the default datagram cap, quality 80, `w`x`h` at
/// 30 fps while the source has not said its own.
pub fn capture_config(w: u32, h: u32) -> CaptureConfig {
    CaptureConfig {
        encoder: EncoderConfig {
            max_datagram_bytes: surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
            quality: 80,
        },
        idle: StreamShape {
            width: w,
            height: h,
            fps: 30,
        },
        ..CaptureConfig::default()
    }
}

/// The built-in test pattern at `w`x`h`, `fps`, as a source for [`start_server_cameras`].
pub fn test_pattern(w: u32, h: u32, fps: u32) -> Box<dyn Source> {
    Box::new(OnThread::new(
        format!("test pattern {w}x{h}@{fps}"),
        move || Ok(Box::new(TestPattern::new(w, h, fps)?) as Box<dyn FrameReader>),
    ))
}

/// The detection model and runtime `scripts/setup.sh` installs in the workspace's `models/`.
/// Tests that detect fail (they do not skip) where it is missing: setup installs it.
pub fn detect_model() -> surv_server::detect::ModelPaths {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    surv_server::detect::ModelPaths {
        runtime: models.join("libonnxruntime.so"),
        model: models.join("centernet.onnx"),
    }
}

/// A photograph of `tests/photos` (`astronaut.jpg`, `chelsea.jpg`, `coffee.jpg`).
pub fn photo(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("photos")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The WebRTC socket on a port of the kernel's choice. With `tcp` the same port number
/// must be free over TCP too, which the kernel's UDP choice does not see to: a port some other
/// test's TCP connection holds is given up and another tried (CI once lost that race).
fn bind_webrtc(
    hosts: &[std::net::IpAddr],
    tcp: bool,
) -> anyhow::Result<surv_server::watchers::webrtc::WebrtcSocket> {
    use surv_server::watchers::webrtc::WebrtcSocket;
    const TRIES: usize = 20;
    let mut last = None;
    for _ in 0..TRIES {
        let socket = WebrtcSocket::bind("127.0.0.1:0".parse()?)?.with_hosts(hosts.to_vec());
        if !tcp {
            return Ok(socket);
        }
        match socket.with_tcp() {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow::anyhow!(
        "no port free over both UDP and TCP in {TRIES} tries: {last:?}"
    ))
}

/// A TCP port of 127.0.0.1 free a moment ago (the OS's pick, let go at once).
pub fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
    s.local_addr().expect("its address").port()
}

/// A UDP port of 127.0.0.1 free a moment ago (the OS's pick, let go at once).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
    s.local_addr().expect("its address").port()
}

/// The test pattern stamped by an ideal clock: frame `n` is captured at `t0 + n / fps` exactly,
/// however late the machine ran it. A recording of it must then play at exactly `fps`, with a
/// gap of whole frame intervals where a frame was missed: what a test of a recorder's timing
/// can hold it to on a busy machine, where real capture times wander.
pub struct ClockedPattern {
    inner: TestPattern,
    t0_us: Option<u64>,
    n: u64,
}

impl ClockedPattern {
    pub fn source(width: u32, height: u32, fps: u32) -> Box<dyn Source> {
        Box::new(OnThread::new(
            format!("clocked test pattern {width}x{height}@{fps}"),
            move || {
                Ok(Box::new(ClockedPattern {
                    inner: TestPattern::new(width, height, fps)?,
                    t0_us: None,
                    n: 0,
                }) as Box<dyn FrameReader>)
            },
        ))
    }
}

impl FrameReader for ClockedPattern {
    fn describe(&self) -> String {
        format!("clocked {}", self.inner.describe())
    }

    fn size(&self) -> (u32, u32) {
        self.inner.size()
    }

    fn fps(&self) -> u32 {
        self.inner.fps()
    }

    fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError> {
        self.inner.next_frame(frame)?;
        let t0 = *self.t0_us.get_or_insert(frame.capture_unix_us);
        frame.capture_unix_us = t0 + self.n * 1_000_000 / u64::from(self.inner.fps().max(1));
        self.n += 1;
        Ok(())
    }
}

/// Starts a server with `source` (`opts` gives the encoder and limits; its size and rate are
/// the test pattern's only) and waits until its first frame is encoded.
pub async fn start_server_with(
    opts: ServerOpts,
    source: Box<dyn Source>,
) -> anyhow::Result<TestServer> {
    let name = surv_server::cameras::DEFAULT_CAMERA_NAME;
    start_server_cameras(opts, vec![(name, source)]).await
}

/// Starts a server with a camera for each `(name, source)`, in that order, and waits until each
/// has a first frame.
pub async fn start_server_cameras(
    opts: ServerOpts,
    sources: Vec<(&str, Box<dyn Source>)>,
) -> anyhow::Result<TestServer> {
    // As main does: a process configured as the server's is.
    surv_server::sys::fix_mmap_threshold();
    let shutdown = CancellationToken::new();
    let log_dir = tempfile::tempdir()?;
    let journal = Arc::new(Journal::open(log_dir.path())?);
    let capture = CaptureConfig {
        encoder: EncoderConfig {
            max_datagram_bytes: opts.max_datagram_bytes,
            quality: opts.quality,
        },
        idle: StreamShape {
            width: opts.width,
            height: opts.height,
            fps: opts.fps,
        },
        ..CaptureConfig::default()
    };
    let mut cameras: Vec<CameraPlan> = sources
        .into_iter()
        .map(|(name, source)| CameraPlan::given(name, source, capture))
        .collect();
    if let Some(first) = cameras.first_mut() {
        first.tcp_stream_port = opts.tcp_stream_port;
        first.request_port = opts.request_port;
        first.motion = opts.motion.is_some();
        first.detect = opts.detect.clone();
        first.forward = opts.forward.clone();
    }
    let mut plan = Plan {
        cameras,
        ..Plan::new(opts.config, opts.max_datagram_bytes)
    };
    plan.detect_model = detect_model();
    if let Some((every, hold)) = opts.motion {
        plan.motion_every = every;
        plan.motion.hold = hold;
    }
    let app = App::start(plan, journal, shutdown.clone()).await?;
    for camera in app.server().cameras.list().iter() {
        // A JPEG frame (the camera's or "no signal"), or a unit of H.264 passed through: a
        // camera passed through makes pictures only while they are wanted, and its source is
        // live from its first unit (so there is no "no signal" frame either).
        let first = async {
            while camera.frames.borrow().is_none()
                && camera.capture.stats.captured.load(Ordering::Relaxed) == 0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        timeout(IO_TIMEOUT, first)
            .await
            .with_context(|| format!("no first frame from camera {}", camera.name))?;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rtsp = if opts.rtsp {
        let mut sockets =
            surv_server::watchers::rtsp::RtspSockets::bind("127.0.0.1:0".parse()?, 0).await?;
        if let Some(timeout) = opts.rtsp_session_timeout {
            sockets.session_timeout = timeout;
        }
        Some(sockets)
    } else {
        None
    };
    let rtsp_addr = rtsp.as_ref().map(|s| s.tcp.local_addr()).transpose()?;
    let http = if opts.http || opts.webrtc {
        Some(TcpListener::bind("127.0.0.1:0").await?)
    } else {
        None
    };
    let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
    let webrtc = if opts.webrtc {
        Some(bind_webrtc(&opts.webrtc_hosts, opts.webrtc_tcp)?)
    } else {
        None
    };
    let webrtc_addr = webrtc.as_ref().map(|s| s.local_addr()).transpose()?;
    let listeners = surv_server::Listeners {
        viewers: listener,
        http,
        rtsp,
        webrtc,
    };
    let task = tokio::spawn(app.clone().serve(listeners));
    Ok(TestServer {
        server: app.server().clone(),
        app,
        rtsp_addr,
        http_addr,
        webrtc_addr,
        addr,
        shutdown,
        log_dir,
        task: Some(task),
    })
}

impl TestServer {
    /// The join/leave log so far.
    pub fn journal(&self) -> Vec<String> {
        surv_server::journal::read_all(self.log_dir.path()).unwrap_or_default()
    }

    /// Waits (bounded) until a journal line matches.
    pub async fn wait_journal(&self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let until = Instant::now() + IO_TIMEOUT;
        while Instant::now() < until {
            if let Some(l) = self.journal().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "no such journal line; journal:\n{}",
            self.journal().join("\n")
        )
    }

    /// Waits (bounded) until at least `n` journal lines match; returns them.
    pub async fn wait_journal_count(
        &self,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let until = Instant::now() + IO_TIMEOUT;
        loop {
            let lines: Vec<String> = self.journal().into_iter().filter(|l| pred(l)).collect();
            if lines.len() >= n {
                return Ok(lines);
            }
            if Instant::now() > until {
                bail!(
                    "{} of {n} matching journal lines; journal:\n{}",
                    lines.len(),
                    self.journal().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until `n` sessions are live.
    pub async fn wait_sessions(&self, n: usize) -> anyhow::Result<()> {
        let until = Instant::now() + IO_TIMEOUT;
        while self.server.watchers.len() != n {
            if Instant::now() > until {
                bail!("{} sessions live, not {n}", self.server.watchers.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the capture paths, so their counters stop moving.
    pub async fn stop_capture(&mut self) {
        self.app.stop_captures().await;
    }

    /// Shuts the server down gracefully and returns the journal.
    pub async fn stop(mut self) -> anyhow::Result<Vec<String>> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            timeout(IO_TIMEOUT, t)
                .await
                .context("server did not stop")??;
        }
        Ok(self.journal())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a raw viewer saw.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub datagrams: u64,
    pub largest: usize,
    pub decoded: u64,
    pub undecodable: u64,
    pub seqs: Vec<u64>,
    /// Where the frames came from (the session's UDP socket).
    pub from: Option<SocketAddr>,
    /// When the last datagram kept arrived.
    pub last_at: Option<Instant>,
    /// The longest wait between two datagrams kept: how long the picture froze.
    pub longest_gap: Duration,
}

/// How a raw viewer acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStyle {
    /// Plain `continue`, as seed 003.
    Seed,
    /// `continue <seq>`, as surv-client.
    Seq,
    /// Never answers.
    Silent,
}

/// A viewer built from bare sockets, doing only what the test tells it.
pub struct RawViewer {
    pub tcp: TcpStream,
    pub udp: UdpSocket,
    pub params: Option<StreamParams>,
}

impl RawViewer {
    /// Registers with `form`. For the seed form this is byte for byte what seed 003 sends: the
    /// port in ASCII, no newline, connection left open.
    pub async fn register(server: SocketAddr, form: Form) -> anyhow::Result<RawViewer> {
        RawViewer::register_for(server, form, None).await
    }

    /// [`RawViewer::register`] asking for a camera by name (SURV/1's `cam=`).
    pub async fn register_for(
        server: SocketAddr,
        form: Form,
        camera: Option<&str>,
    ) -> anyhow::Result<RawViewer> {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let port = udp.local_addr()?.port();
        let mut tcp = timeout(IO_TIMEOUT, TcpStream::connect(server)).await??;
        let registration = Registration {
            form,
            udp_port: port,
        }
        .with_token(None)
        .with_camera(camera)
        .encode();
        timeout(IO_TIMEOUT, tcp.write_all(&registration))
            .await
            .context("registration not sent within the timeout")??;
        let params = match form {
            Form::Seed => None,
            Form::V1 => match read_reply(&mut tcp).await? {
                Reply::Accepted(p) => Some(p),
                Reply::Refused(r) => bail!("refused: {r}"),
            },
        };
        let viewer = RawViewer { tcp, udp, params };
        viewer.hello().await?;
        Ok(viewer)
    }

    /// The session key from the `OK` line (SURV/1), which acks carry.
    pub fn key(&self) -> Option<u64> {
        self.params.as_ref().and_then(|p| p.key)
    }

    /// `ack` as this viewer sends it: with its session key, if it has one.
    pub fn ack_bytes(&self, ack: Ack) -> Vec<u8> {
        ack.encode_keyed(self.key())
    }

    /// SURV/1: `hello` with the key to the session's UDP port, which starts the frames. Sent
    /// twice (loopback hardly loses one; a duplicate is harmless). Nothing for the seed form.
    pub async fn hello(&self) -> anyhow::Result<()> {
        let Some(p) = &self.params else {
            return Ok(());
        };
        let (Some(_), Some(port)) = (p.key, p.udp_port) else {
            return Ok(());
        };
        let to = SocketAddr::new(self.tcp.peer_addr()?.ip(), port);
        for _ in 0..2 {
            self.udp.send_to(&self.ack_bytes(Ack::Hello), to).await?;
        }
        Ok(())
    }

    /// Receives for `duration` (or `max_frames`), decoding each datagram with turbojpeg and
    /// acking per `style`; `drop_every` of 10 datagrams are discarded unacked, as if lost.
    pub async fn receive(
        &mut self,
        duration: Duration,
        max_frames: u64,
        style: AckStyle,
        drop_in_10: u8,
    ) -> anyhow::Result<Received> {
        let mut got = Received::default();
        let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
        let mut d = turbojpeg::Decompressor::new()?;
        let until = Instant::now() + duration;
        let mut n_seen = 0u64;
        while got.datagrams < max_frames {
            let Ok(res) = tokio::time::timeout_at(until, self.udp.recv_from(&mut buf)).await else {
                break;
            };
            let (n, from) = res?;
            n_seen += 1;
            // A fixed pattern of "lost" datagrams: reproducible, spread evenly.
            if (n_seen * 7 % 10) < u64::from(drop_in_10) {
                continue;
            }
            let now = Instant::now();
            if let Some(last) = got.last_at {
                got.longest_gap = got.longest_gap.max(now - last);
            }
            got.last_at = Some(now);
            got.datagrams += 1;
            got.largest = got.largest.max(n);
            got.from = Some(from);
            let datagram = &buf[..n];
            match d.read_header(datagram).and_then(|h| {
                let mut px = vec![0u8; h.width * h.height * 3];
                d.decompress(
                    datagram,
                    turbojpeg::Image {
                        pixels: px.as_mut_slice(),
                        width: h.width,
                        pitch: h.width * 3,
                        height: h.height,
                        format: turbojpeg::PixelFormat::RGB,
                    },
                )
            }) {
                Ok(()) => got.decoded += 1,
                Err(_) => got.undecodable += 1,
            }
            let seq = FrameTag::decode(datagram).ok().map(|t| t.seq);
            if let Some(s) = seq {
                got.seqs.push(s);
            }
            let ack = match style {
                AckStyle::Silent => continue,
                AckStyle::Seed => Ack::Continue(None),
                AckStyle::Seq => Ack::Continue(seq),
            };
            self.udp.send_to(&self.ack_bytes(ack), from).await?;
        }
        Ok(got)
    }

    /// Sends `end` to where the frames came from, as seed 003 does on Esc (with the session
    /// key for SURV/1).
    pub async fn end(&self, to: SocketAddr) -> anyhow::Result<()> {
        self.udp.send_to(&self.ack_bytes(Ack::End), to).await?;
        Ok(())
    }
}

/// Reads one reply line from the server (bounded), byte-wise so that nothing after it is
/// consumed; surv-proto decides where the line ends and whether it is a reply.
pub async fn read_reply(tcp: &mut TcpStream) -> anyhow::Result<Reply> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    timeout(IO_TIMEOUT, async {
        loop {
            if tcp.read(&mut byte).await? == 0 {
                bail!(
                    "closed without a reply after {:?}",
                    String::from_utf8_lossy(&line)
                );
            }
            line.push(byte[0]);
            match Reply::decode(&line) {
                Err(ReplyError::Incomplete) => {}
                Ok((reply, _)) => return Ok(reply),
                Err(e) => return Err(e.into()),
            }
        }
    })
    .await
    .context("no reply line within the timeout")?
}

/// Sends `bytes` as a registration and returns what the server answered before closing: its
/// reply line (if any) and whether it closed the connection.
pub async fn try_registration(server: SocketAddr, bytes: &[u8]) -> anyhow::Result<(String, bool)> {
    let mut tcp = timeout(IO_TIMEOUT, TcpStream::connect(server)).await??;
    timeout(IO_TIMEOUT, tcp.write_all(bytes))
        .await
        .context("registration not sent within the timeout")??;
    let mut out = Vec::new();
    let closed = timeout(IO_TIMEOUT, tcp.read_to_end(&mut out)).await.is_ok();
    Ok((String::from_utf8_lossy(&out).into_owned(), closed))
}

/// Fraction of the frames captured during `duration` at `fps` that `received` represents.
pub fn share(received: u64, fps: u32, duration: Duration) -> f64 {
    received as f64 / (f64::from(fps) * duration.as_secs_f64())
}
