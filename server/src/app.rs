//! The whole server from a [`Plan`]: every camera (its capture path, motion detector, own ports
//! and fan-out), the watchers' listeners, MQTT and the memory releaser, started by one call,
//! given a new list of cameras by [`App::reload`] (`SIGHUP`), stopped by one token.
//!
//! `main.rs` parses flags and the config file into a plan, binds the shared listeners and calls
//! [`App::start`] then [`App::serve`]; tests do the same on `127.0.0.1:0`.
//!
//! ```text
//! let app = App::start(plan, journal, shutdown.clone()).await?;   // every camera running
//! tokio::spawn(app.clone().serve(listeners));                       // until `shutdown`
//! app.reload(new_cameras).await;                                    // added start, removed end
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::{Capture, CaptureConfig, StreamShape};
use crate::detect::model::Model;
use crate::detect::watch::Detect;
use crate::detect::{DetectConfig, ModelPaths};
use crate::motion::MotionConfig;
use crate::mqtt::MqttConfig;
use crate::sources::spec::{SourceOptions, SourceSpec};
use crate::sources::udp::{PortSharer, SharedPort, UdpSource};
use crate::sources::Source;
use crate::watchers::forward::Forwarding;
use crate::watchers::request::{RequestConfig, RequestHub};
use crate::{Camera, Cameras, Config, Journal, Listeners, Server};

/// Everything the server runs: its limits, its cameras and the server-wide services.
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: Config,
    /// The datagram cap (`--max-datagram`).
    pub max_datagram_bytes: usize,
    /// The address cameras' own ports (`request-port`, `tcp-stream-port`) listen on.
    pub bind: IpAddr,
    /// At least one; names unique. The first is the one watchers get when they name none.
    pub cameras: Vec<CameraPlan>,
    /// Motion detection: every Nth frame is analysed, with these thresholds.
    pub motion_every: u64,
    pub motion: MotionConfig,
    /// Object detection's runtime and model, loaded when a camera detects.
    pub detect_model: ModelPaths,
    /// Seed 001's apps on a camera's `request-port`.
    pub request: RequestConfig,
    /// Events to an MQTT broker; `None`: none.
    pub mqtt: Option<MqttConfig>,
    /// How often free memory goes back to the system; `None`: never.
    pub release_memory_every: Option<Duration>,
}

impl Plan {
    /// A plan with `config` and the datagram cap, no camera yet, motion detection's defaults,
    /// no MQTT, cameras' own ports on loopback: add cameras.
    pub fn new(config: Config, max_datagram_bytes: usize) -> Plan {
        Plan {
            config,
            max_datagram_bytes,
            bind: IpAddr::from([127, 0, 0, 1]),
            cameras: Vec::new(),
            motion_every: 2,
            motion: MotionConfig::default(),
            detect_model: ModelPaths::default(),
            request: RequestConfig::default(),
            mqtt: None,
            release_memory_every: None,
        }
    }
}

/// One camera: its name, source, options and own watcher ports (0: none). Two plans that are
/// equal are the same camera to a reload (left running); any difference restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraPlan {
    pub name: String,
    /// What `--source` (or the camera's `source`) says; used unless `given`.
    pub source: SourceSpec,
    /// A source built by the caller (a test's scripted camera) instead of `source`.
    pub given: Option<GivenSource>,
    pub options: SourceOptions,
    pub capture: CaptureConfig,
    /// Motion detection on this camera.
    pub motion: bool,
    /// Object detection on this camera (`--detect`); `None`: off.
    pub detect: Option<DetectConfig>,
    pub request_port: u16,
    pub tcp_stream_port: u16,
    /// Where `--forward` (its `forward` key) sends its H.264 as RTP (RTCP to the next port),
    /// each destination its own stream; empty: nowhere.
    pub forward: Vec<SocketAddr>,
}

/// A source built by the caller, taken by the first start of its camera (a reload cannot start
/// it again). Equal only to itself.
#[derive(Clone)]
pub struct GivenSource(Arc<std::sync::Mutex<Option<Box<dyn Source>>>>);

impl GivenSource {
    pub fn new(source: Box<dyn Source>) -> GivenSource {
        GivenSource(Arc::new(std::sync::Mutex::new(Some(source))))
    }

    fn take(&self) -> Option<Box<dyn Source>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl PartialEq for GivenSource {
    fn eq(&self, other: &GivenSource) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for GivenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GivenSource")
    }
}

impl CameraPlan {
    /// A camera called `name` on `source`, with `capture`'s encoder settings and idle shape,
    /// no motion detection and no ports of its own.
    pub fn given(name: &str, source: Box<dyn Source>, capture: CaptureConfig) -> CameraPlan {
        let StreamShape { width, height, fps } = capture.idle;
        CameraPlan {
            name: name.to_string(),
            source: SourceSpec::Test,
            given: Some(GivenSource::new(source)),
            options: SourceOptions {
                width,
                height,
                fps,
                ..SourceOptions::default()
            },
            capture,
            motion: false,
            detect: None,
            request_port: 0,
            tcp_stream_port: 0,
            forward: Vec::new(),
        }
    }
}

/// A running server: its shared state, and each camera's running parts.
pub struct App {
    server: Arc<Server>,
    journal: Arc<Journal>,
    plan: Plan,
    shutdown: CancellationToken,
    /// The running cameras, in the list's order. Locked across a whole reload, so that two
    /// reloads never interleave.
    running: tokio::sync::Mutex<Vec<Running>>,
    /// Fan-outs run as tasks here under paused-time tests.
    tracker: TaskTracker,
    /// The object detector's model, loaded when the first camera that detects starts: `None`
    /// until then, `Some(Err(why))` when it could not be (said once; cameras run without).
    model: std::sync::Mutex<Option<Result<Arc<Model>, String>>>,
}

/// One camera's running parts.
struct Running {
    plan: CameraPlan,
    camera: Arc<Camera>,
    /// `None` once stopped by [`App::stop_captures`].
    capture: Option<Capture>,
    /// Its motion detector, OAK listener, Request hub and forward.
    tasks: Vec<JoinHandle<()>>,
}

/// What a reload did, by camera name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// Cameras of the new list that could not start, with why (they are not running).
    pub failed: Vec<(String, String)>,
}

/// A camera opened but not yet serving: its capture and, for a `udp://` source on its own
/// `request-port`, the socket the source shares with seed 001's apps.
struct Opened {
    capture: Capture,
    camera: Arc<Camera>,
    shared: Option<SharedPort>,
}

impl App {
    /// Starts every camera of `plan`. A local camera or the test pattern must deliver its first
    /// frame (else the error, and nothing keeps running); a network camera may come up later.
    pub async fn start(
        plan: Plan,
        journal: Arc<Journal>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<App>> {
        anyhow::ensure!(!plan.cameras.is_empty(), "no camera to serve");
        let mut opened: Vec<(CameraPlan, Opened)> = Vec::new();
        for cam in &plan.cameras {
            match open(cam, &journal, &shutdown).await {
                Ok(o) => opened.push((cam.clone(), o)),
                Err(e) => {
                    for (_, o) in opened {
                        o.capture.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        let server = Arc::new(Server::with_cameras(
            plan.config.clone(),
            Cameras::of(opened.iter().map(|(_, o)| o.camera.clone()).collect()),
            plan.max_datagram_bytes,
            journal.clone(),
        ));
        let app = Arc::new(App {
            server,
            journal,
            plan,
            shutdown,
            running: tokio::sync::Mutex::default(),
            tracker: TaskTracker::new(),
            model: std::sync::Mutex::new(None),
        });
        let mut running = app.running.lock().await;
        for (plan, o) in opened {
            match app.serve_opened(plan, o).await {
                Ok(r) => running.push(r),
                Err(e) => {
                    for r in running.drain(..) {
                        app.end(r, false).await;
                    }
                    return Err(e);
                }
            }
        }
        drop(running);
        Ok(app)
    }

    /// Stops every camera's capture path (its counters stop moving, no new frame comes); the
    /// watchers stay until shutdown.
    pub async fn stop_captures(&self) {
        for r in self.running.lock().await.iter_mut() {
            if let Some(capture) = r.capture.take() {
                capture.stop().await;
            }
        }
    }

    /// The running cameras' plans, in order (a caller's reload list starts from these).
    pub async fn plans(&self) -> Vec<CameraPlan> {
        self.running
            .lock()
            .await
            .iter()
            .map(|r| r.plan.clone())
            .collect()
    }

    /// What every listener and session shares.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Serves every kind of watcher until the shutdown token, then ends every session (each
    /// logs its LEAVE), MQTT (after the LEAVEs, so that they are published) and every camera.
    pub async fn serve(self: Arc<Self>, listeners: Listeners) {
        // Stopped after the watchers have left, so that their LEAVEs are published too.
        let mqtt_stop = CancellationToken::new();
        let mqtt = self
            .plan
            .mqtt
            .clone()
            .map(|c| crate::mqtt::spawn(self.server.clone(), c, mqtt_stop.clone()));
        if let Some(every) = self.plan.release_memory_every {
            tokio::spawn(release_memory_every(every, self.shutdown.clone()));
        }
        crate::run_with(self.server.clone(), listeners, self.shutdown.clone()).await;
        let running = std::mem::take(&mut *self.running.lock().await);
        for r in running {
            self.end(r, false).await;
        }
        crate::wind_down(&self.tracker, "fan-outs").await;
        mqtt_stop.cancel();
        if let Some(mqtt) = mqtt {
            // Bounded by its own grace period (mqtt::STOP_GRACE).
            let _ = mqtt.await;
        }
    }

    /// Puts `cameras` in place of the running ones: cameras whose plan is unchanged keep
    /// running untouched (and their watchers with them); removed ones end (their watchers
    /// leave with reason `removed`); changed ones restart (the same); new ones start. A camera
    /// that cannot start is left out and said so; the others go on.
    pub async fn reload(&self, cameras: Vec<CameraPlan>) -> Reloaded {
        let mut done = Reloaded::default();
        if self.shutdown.is_cancelled() {
            return done;
        }
        let mut running = self.running.lock().await;
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        // Removed and changed cameras end first, so that a changed camera can take its own
        // ports again.
        let mut keep = Vec::new();
        for r in old.drain(..) {
            match cameras.iter().find(|p| p.name == r.plan.name) {
                Some(p) if *p == r.plan => keep.push(r),
                Some(_) => {
                    done.restarted.push(r.plan.name.clone());
                    self.end(r, true).await;
                }
                None => {
                    done.removed.push(r.plan.name.clone());
                    self.end(r, true).await;
                }
            }
        }
        for plan in &cameras {
            if let Some(i) = keep.iter().position(|r| r.plan.name == plan.name) {
                done.unchanged.push(plan.name.clone());
                running.push(keep.swap_remove(i));
                continue;
            }
            if !done.restarted.contains(&plan.name) {
                done.added.push(plan.name.clone());
            }
            match self.start_camera(plan).await {
                Ok(r) => running.push(r),
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::error!(camera = %plan.name, error = %why, "reload: the camera cannot start; it is left out");
                    done.failed.push((plan.name.clone(), why));
                }
            }
        }
        if running.is_empty() {
            // Every camera failed: the list keeps the ended ones (their watchers leave at once)
            // rather than none, which no watcher could be given.
            tracing::error!(
                "reload: no camera could start; the server serves none until the next reload"
            );
        } else {
            self.server
                .cameras
                .replace(running.iter().map(|r| r.camera.clone()).collect());
        }
        tracing::info!(
            added = ?done.added,
            removed = ?done.removed,
            restarted = ?done.restarted,
            unchanged = done.unchanged.len(),
            failed = done.failed.len(),
            "reloaded the cameras"
        );
        done
    }

    /// Opens `plan`'s camera and starts serving it.
    async fn start_camera(&self, plan: &CameraPlan) -> anyhow::Result<Running> {
        let o = open(plan, &self.journal, &self.shutdown).await?;
        self.serve_opened(plan.clone(), o).await
    }

    /// Starts serving an opened camera; if it cannot be (a port of its own will not bind), its
    /// capture is stopped and the error returned.
    async fn serve_opened(&self, plan: CameraPlan, o: Opened) -> anyhow::Result<Running> {
        match self.serve_camera(&plan, o.camera.clone(), o.shared) {
            Ok(tasks) => Ok(Running {
                plan,
                camera: o.camera,
                capture: Some(o.capture),
                tasks,
            }),
            Err(e) => {
                o.camera.stop.cancel();
                o.capture.stop().await;
                Err(e)
            }
        }
    }

    /// Starts what serves `camera` besides the shared listeners: its fan-out to UDP viewers,
    /// its motion detector, its own ports for OAK host programs and seed 001's apps, and its
    /// forward.
    fn serve_camera(
        &self,
        plan: &CameraPlan,
        camera: Arc<Camera>,
        shared: Option<SharedPort>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let server = &self.server;
        let stop = &camera.stop;
        let mut tasks = Vec::new();
        let own = || -> anyhow::Result<()> {
            if plan.tcp_stream_port != 0 {
                let addr = SocketAddr::new(self.plan.bind, plan.tcp_stream_port);
                let listener = listen(addr).with_context(|| {
                    format!(
                        "camera {}: tcp-stream-port: listening on TCP {addr} (is that port in use?)",
                        plan.name
                    )
                })?;
                tracing::info!(%addr, camera = %plan.name, "serving OAK host programs (ABCDE over TCP)");
                tasks.push(tokio::spawn(crate::watchers::oak_tcp::run(
                    server.clone(),
                    camera.clone(),
                    listener,
                    stop.clone(),
                )));
            }
            let request = &self.plan.request;
            if let Some(shared) = shared {
                let addr = shared.socket.local_addr()?;
                tracing::info!(%addr, camera = %plan.name, "serving apps that send \"Request\" (seed 001) on the camera's port");
                let hub = RequestHub::new(
                    server.clone(),
                    camera.clone(),
                    shared.socket.clone(),
                    request.clone(),
                );
                let sharer: Arc<dyn PortSharer> = hub.clone();
                let _ = shared.sharer.set(sharer);
                tasks.push(tokio::spawn(hub.serve(stop.clone())));
            } else if plan.request_port != 0 {
                let addr = SocketAddr::new(self.plan.bind, plan.request_port);
                let socket = RequestHub::bind(addr).with_context(|| {
                    format!(
                        "camera {}: request-port: binding UDP {addr} (is that port in use?)",
                        plan.name
                    )
                })?;
                tracing::info!(%addr, camera = %plan.name, "serving apps that send \"Request\" (seed 001)");
                let hub = RequestHub::new(server.clone(), camera.clone(), socket, request.clone());
                tasks.push(tokio::spawn(hub.run(stop.clone())));
            }
            // Every destination: its own socket and task reading the one feed (no second
            // encode: the feed and the packets are the camera's, shared).
            let mut forwards = Vec::with_capacity(plan.forward.len());
            for &dest in &plan.forward {
                let socket = crate::watchers::forward::bind(dest).with_context(|| {
                    format!(
                        "camera {}: forward: binding a UDP socket to send to {dest}",
                        plan.name
                    )
                })?;
                forwards.push((Arc::new(Forwarding::new(dest)), socket));
            }
            if !forwards.is_empty() {
                // A new camera each start: the cell is empty.
                let _ = camera
                    .forwards
                    .set(forwards.iter().map(|(f, _)| f.clone()).collect());
            }
            for (forwarding, socket) in forwards {
                tasks.push(tokio::spawn(crate::watchers::forward::run(
                    plan.name.clone(),
                    camera.capture.h264.clone(),
                    camera.capture.shape().fps,
                    socket,
                    forwarding,
                    camera.rtp.clone(),
                    stop.clone(),
                )));
            }
            Ok(())
        };
        if let Err(e) = own() {
            stop.cancel();
            return Err(e);
        }
        if plan.motion {
            tasks.push(tokio::spawn(crate::motion::watch::run(
                camera.frames.clone(),
                self.plan.motion_every,
                self.plan.motion,
                camera.capture.clone(),
                Arc::new(self.journal.for_camera(&plan.name)),
                camera.motion.clone(),
                stop.clone(),
            )));
        }
        if let Some(config) = &plan.detect {
            let detect = Detect {
                camera: plan.name.clone(),
                frames: camera.frames.clone(),
                config: config.clone(),
                model: self.model(),
                capture: camera.capture.clone(),
                motion: camera.motion.clone(),
                journal: Arc::new(self.journal.for_camera(&plan.name)),
                state: camera.detect.clone(),
                stop: stop.clone(),
            };
            match crate::detect::watch::spawn(detect) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tracing::error!(camera = %plan.name, error = %e, "detection: cannot start its thread; the camera runs without")
                }
            }
        }
        crate::start_fanout(server, &camera, &self.tracker);
        let shape = camera.capture.shape();
        tracing::info!(
            camera = %plan.name,
            source = %plan.source,
            width = shape.width,
            height = shape.height,
            fps = shape.fps,
            "camera"
        );
        Ok(tasks)
    }

    /// The object detector's model, loaded at the first call; `None` (and an error said once)
    /// when it cannot be: detection is then off and everything else runs as without it.
    fn model(&self) -> Option<Arc<Model>> {
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = model.get_or_insert_with(|| {
            let started = std::time::Instant::now();
            let loaded = Model::load(&self.plan.detect_model).map(Arc::new);
            match &loaded {
                Ok(m) => tracing::info!(model = ?m, took_ms = started.elapsed().as_millis() as u64, "detection: model loaded"),
                Err(e) => tracing::error!("detection is off: {e} (only a camera that detects on the device, an OAK, still reports objects)"),
            }
            loaded
        });
        loaded.as_ref().ok().cloned()
    }

    /// Ends a running camera: its watchers leave (`removed` when `retire`, else `shutdown`),
    /// its tasks and fan-out end, then its capture.
    async fn end(&self, r: Running, retire: bool) {
        if retire {
            r.camera.retire();
        } else {
            r.camera.stop.cancel();
        }
        for task in r.tasks {
            // Each ends its watchers within its own grace period.
            let _ = task.await;
        }
        crate::stop_fanout(&r.camera).await;
        if let Some(capture) = r.capture {
            capture.stop().await;
        }
        if retire {
            tracing::info!(camera = %r.plan.name, "camera ended");
        }
    }
}

/// Opens `plan`'s source and capture path (the test pattern and local cameras must give their
/// first frame).
async fn open(
    plan: &CameraPlan,
    journal: &Arc<Journal>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Opened> {
    // `udp://HOST:P` with its request port P shares one socket for the camera's frames and the
    // apps' `Request`s, as seed 001's server has it.
    let shared = match &plan.source {
        SourceSpec::Udp { host, port } if *port == plan.request_port => {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| {
                    format!(
                        "camera {}: source {}: no address for {host}",
                        plan.name, plan.source
                    )
                })?;
            let socket = RequestHub::bind(addr).with_context(|| {
                format!(
                    "camera {}: source {} with request-port: binding UDP {addr}",
                    plan.name, plan.source
                )
            })?;
            Some(SharedPort {
                socket,
                sharer: Arc::default(),
            })
        }
        _ => None,
    };
    let given = plan.given.as_ref().map(|g| {
        g.take()
            .with_context(|| format!("camera {}: its given source ran already", plan.name))
    });
    let source: Box<dyn Source> = match (&plan.source, &shared) {
        _ if given.is_some() => given.expect("checked")?,
        (SourceSpec::Udp { host, port }, Some(shared)) => {
            Box::new(UdpSource::new(host, *port, &plan.options).sharing(shared.clone()))
        }
        _ => plan
            .source
            .build(&plan.options)
            .with_context(|| format!("camera {}: source {}", plan.name, plan.source))?,
    };
    // Its SOURCE-* and MOTION-* lines and events name it.
    let journal = Arc::new(journal.for_camera(&plan.name));
    let capture = Capture::start(source, plan.capture, journal, shutdown)
        .with_context(|| format!("camera {}: starting the capture path", plan.name))?;
    // A local camera or the test pattern must work at start: its failure is an error, not an
    // outage to wait out. A network camera may boot after the server.
    // (A given source is the caller's to wait for.)
    if plan.given.is_none() && plan.source.must_work_at_start() {
        if let Err(e) = capture.first_outcome().await {
            capture.stop().await;
            return Err(match plan.source {
                SourceSpec::Cam(n) => anyhow::anyhow!(
                    "camera {}: /dev/video{n} failed: {e}\nNo camera? Try `--source test` for the built-in test pattern.",
                    plan.name
                ),
                _ => anyhow::anyhow!("camera {}: the {} source failed: {e}", plan.name, plan.source),
            });
        }
    }
    let camera = Arc::new(Camera::ending_with(
        &plan.name,
        &capture,
        shutdown.child_token(),
    ));
    Ok(Opened {
        capture,
        camera,
        shared,
    })
}

/// Every `every`, until `shutdown`, hands the allocator's free memory back to the system, so
/// that RSS falls back after a burst of viewers or a flood of connections instead of staying at
/// its peak (glibc keeps freed pages in its arenas). A call that gives back 64 MiB takes about
/// 11 ms (the `release_memory` test's heap), holding each arena's lock in turn while it trims
/// it; it runs on a blocking thread.
async fn release_memory_every(every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(crate::sys::release_free_memory)
            .await
            .unwrap_or(false);
        tracing::trace!(
            released,
            took_us = started.elapsed().as_micros(),
            "memory released"
        );
    }
}

/// The kernel's queue of connections not yet accepted, per listening port (tokio's `bind` asks
/// for 1024; Linux caps it at `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` as tokio's `TcpListener::bind` does (SO_REUSEADDR), with a deeper queue: a
/// burst of connections (a flood, or many viewers starting at once) waits there instead of
/// having SYNs dropped, which costs each client a one-second retransmit.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}
