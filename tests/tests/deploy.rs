//! Running surv for real (`deploy/`): two Janus edges fed by one surv's `--forward`, with an
//! independent WebRTC client decoding through each; the systemd unit as `systemd-analyze
//! verify` reads it; `/healthz` and `/livez` as a load balancer asks them.
//!
//! Janus is Debian's `janus` (1.1.2), started by the test as its own process from the files in
//! `deploy/janus/` (ports changed to free ones, in a temporary config folder): no daemon, no
//! systemd. The client is `tests/peers/janus_client.py` (aiortc) on the venv `scripts/setup.sh`
//! makes. Janus (libnice) gathers no loopback ICE candidate, so the viewers reach it at this
//! host's LAN address; the datagrams never leave the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use surv_server::auth::Token;
use surv_server::capture::FrameSink;
use surv_server::sources::{Source, SourceError, SourceRun};
use surv_server::Config;
use surv_tests::http;
use surv_tests::{
    free_tcp_port, heavy, output_within, start_server_cameras, test_pattern, Reaper, ServerOpts,
};
use tokio_util::sync::CancellationToken;

/// The stream the edges relay: small, so that two decoding viewers per edge fit a busy CI box.
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: u32 = 30;
/// Viewers per edge, and how long each decodes after its first frame.
const PEERS_PER_EDGE: u32 = 2;
const DECODE_SECS: f64 = 3.0;
/// A viewer's share of the stream's frames it must decode (the figure).
const MIN_RATIO: f64 = 0.99;
/// The whole of one client run (signalling, ICE, DTLS, decoding), with room for a loaded machine.
const CLIENT_LIMIT: Duration = Duration::from_secs(40);
/// Janus answers its HTTP API within this after it starts.
const JANUS_START: Duration = Duration::from_secs(15);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// `text` with `from` replaced by `to`, which must occur exactly once: a change to the deploy
/// files that the test no longer matches fails here rather than testing something else.
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{file}: expected {from:?} once (deploy/janus changed? update the test)"
    );
    text.replacen(from, to, 1)
}

/// An even UDP port whose next port is free too, a moment ago (RTP and RTCP).
fn free_even_udp_port() -> u16 {
    loop {
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
        let port = rtp.local_addr().expect("its address").port();
        if port.is_multiple_of(2)
            && port < u16::MAX
            && std::net::UdpSocket::bind(("0.0.0.0", port + 1)).is_ok()
        {
            return port;
        }
    }
}

/// One Janus edge, started from `deploy/janus/` with its own HTTP and RTP ports.
struct Edge {
    http_port: u16,
    rtp_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    _janus: Reaper,
}

impl Edge {
    fn start() -> anyhow::Result<Edge> {
        let dir = tempfile::tempdir()?;
        let deploy = workspace().join("deploy/janus");
        let (http_port, rtp_port) = (free_tcp_port(), free_even_udp_port());
        let read = |name: &str| {
            std::fs::read_to_string(deploy.join(name)).with_context(|| format!("reading {name}"))
        };
        let folder = dir.path().to_str().context("a UTF-8 temp folder")?;
        let files = [
            (
                "janus.jcfg",
                replace_once(
                    &read("janus.jcfg")?,
                    "configs_folder = \"/etc/surv-janus\"",
                    &format!("configs_folder = \"{folder}\""),
                    "janus.jcfg",
                ),
            ),
            (
                "janus.transport.http.jcfg",
                replace_once(
                    &read("janus.transport.http.jcfg")?,
                    "port = 8088",
                    &format!("port = {http_port}"),
                    "janus.transport.http.jcfg",
                ),
            ),
            ("janus.plugin.streaming.jcfg", {
                let file = "janus.plugin.streaming.jcfg";
                let text = replace_once(
                    &read(file)?,
                    "port = 5004",
                    &format!("port = {rtp_port}"),
                    file,
                );
                replace_once(
                    &text,
                    "rtcpport = 5005",
                    &format!("rtcpport = {}", rtp_port + 1),
                    file,
                )
            }),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)?;
        }
        let log = dir.path().join("janus.log");
        let janus = Command::new("janus")
            .args(["-F", folder, "-C"])
            .arg(dir.path().join("janus.jcfg"))
            .args(["-o", "-L"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting janus (apt-get install janus, or run scripts/setup.sh)")?;
        let edge = Edge {
            http_port,
            rtp_port,
            log,
            _dir: dir,
            _janus: Reaper(janus),
        };
        let until = Instant::now() + JANUS_START;
        loop {
            match edge.info() {
                Ok(info) if info.contains("janus.plugin.streaming") => return Ok(edge),
                Ok(info) => bail!("janus runs without its streaming plugin: {info}"),
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => bail!(
                    "janus's HTTP API did not answer within {JANUS_START:?}: {e:#}; its log:\n{}",
                    edge.log_text()
                ),
            }
        }
    }

    /// `GET /janus/info`: the server's description (its plugins and transports).
    fn info(&self) -> anyhow::Result<String> {
        let to = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let (status, body) = http::blocking(http_get(to, "/janus/info", None))?;
        if status != 200 {
            bail!("janus answered {status}: {body}");
        }
        Ok(body)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `GET path` within 5 s, a body of at most 1 MiB; `(status, body)`.
async fn http_get(
    to: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let req = http::Request::get(path).headers(&headers);
    let r = http::request(to, &req, http::Limits::new(Duration::from_secs(5), 1 << 20)).await?;
    Ok((r.status, r.text().into_owned()))
}

/// What one run of janus_client.py printed: each viewer's line, then the summary.
fn run_client(edge_http: u16, peers: u32) -> anyhow::Result<(Vec<serde_json::Value>, String)> {
    let python = workspace().join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(workspace().join("tests/peers/janus_client.py"))
        .arg(format!("http://127.0.0.1:{edge_http}/janus"))
        .args(["--peers", &peers.to_string()])
        .args(["--seconds", &DECODE_SECS.to_string()])
        .args(["--fps", &FPS.to_string()])
        .args(["--min-ratio", &MIN_RATIO.to_string()])
        .args(["--timeout", "25"]);
    let out = output_within(&mut cmd, CLIENT_LIMIT).with_context(|| {
        format!(
            "{} tests/peers/janus_client.py (run scripts/setup.sh for the venv)",
            python.display()
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok((
        lines,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    ))
}

/// One surv, its camera's `--forward` to two Janus edges; two aiortc viewers on each decode
/// the stream through Janus's streaming plugin, every one at least 99 % of the frames the
/// stream carried while it watched; surv sent each edge its own RTP stream of one encode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_janus_edges_serve_webrtc_viewers_of_one_forward() {
    let _serial = heavy().await;
    let edges = tokio::task::spawn_blocking(|| -> anyhow::Result<[Edge; 2]> {
        Ok([Edge::start()?, Edge::start()?])
    })
    .await
    .unwrap()
    .unwrap();
    let dests: Vec<SocketAddr> = edges
        .iter()
        .map(|e| SocketAddr::from(([127, 0, 0, 1], e.rtp_port)))
        .collect();
    let srv = start_server_cameras(
        ServerOpts {
            forward: dests.clone(),
            ..ServerOpts::sized(WIDTH, HEIGHT)
        },
        vec![("door", test_pattern(WIDTH, HEIGHT, FPS))],
    )
    .await
    .unwrap();

    let run = |edge: &Edge| {
        let port = edge.http_port;
        tokio::task::spawn_blocking(move || run_client(port, PEERS_PER_EDGE))
    };
    let (a, b) = tokio::join!(run(&edges[0]), run(&edges[1]));
    for (i, (result, edge)) in [a, b].into_iter().zip(&edges).enumerate() {
        let (lines, output) = result.unwrap().unwrap();
        let viewers: Vec<_> = lines.iter().filter(|v| v.get("peer").is_some()).collect();
        let why = || format!("edge {i}: {output}\njanus's log:\n{}", edge.log_text());
        assert_eq!(viewers.len(), PEERS_PER_EDGE as usize, "{}", why());
        for v in viewers {
            assert!(v["error"].is_null(), "{}", why());
            assert_eq!(
                (v["width"].as_u64(), v["height"].as_u64()),
                (Some(WIDTH.into()), Some(HEIGHT.into())),
                "{}",
                why()
            );
            let ratio = v["ratio"].as_f64().unwrap_or(0.0);
            let frames = v["frames"].as_u64().unwrap_or(0);
            assert!(ratio >= MIN_RATIO, "ratio {ratio}: {}", why());
            // About DECODE_SECS of 30 fps.
            assert!(
                frames as f64 >= DECODE_SECS * f64::from(FPS) * 0.9,
                "{}",
                why()
            );
        }
    }

    // Each edge got its own stream, of the one encode, without a send error.
    let camera = srv.server.cameras.get("door").unwrap();
    let forwards = camera.forwards.get().unwrap().clone();
    assert_eq!(forwards.iter().map(|f| f.dest).collect::<Vec<_>>(), dests);
    let frames: Vec<u64> = forwards
        .iter()
        .map(|f| f.stats.frames.load(Relaxed))
        .collect();
    let encodes = camera.capture.stats.h264_encodes.load(Relaxed);
    let most = frames.iter().copied().max().unwrap_or(0);
    assert!(
        frames.iter().all(|&n| n > 90) && encodes <= most + 10,
        "{encodes} encodes, forwards sent {frames:?}"
    );
    assert!(forwards
        .iter()
        .all(|f| f.stats.send_errors.load(Relaxed) == 0));
    srv.stop().await.unwrap();
}

/// A camera whose source fails at once, again and again (its capture path is never live).
struct Dead;

impl Source for Dead {
    fn describe(&self) -> String {
        "dead camera".into()
    }

    fn run<'a>(&'a mut self, _sink: &'a FrameSink, _stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            Err(SourceError::Open {
                device: "dead".into(),
                reason: "no such device".into(),
            })
        })
    }
}

/// `/healthz` is 200 while every camera delivers and 503 with the reason when one does not;
/// `/livez` is 200 either way; both answer without the token that `/status` needs, and say
/// nothing of the cameras' names; after shutdown `/healthz` is 503 "shutting down".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_ready_when_every_camera_delivers() {
    let _serial = heavy().await;
    let opts = || ServerOpts {
        http: true,
        config: Config {
            token: Some(Token::new("health-s3cret").unwrap()),
            ..Config::default()
        },
        ..ServerOpts::sized(160, 96)
    };
    let get = |addr: SocketAddr, path: &'static str| http_get(addr, path, None);

    let srv = start_server_cameras(opts(), vec![("front", test_pattern(160, 96, 30))])
        .await
        .unwrap();
    let http = srv.http_addr.unwrap();
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true, "{body}");
    let counts = |json: &serde_json::Value| (json["cameras"].as_u64(), json["live"].as_u64());
    assert_eq!(counts(&json), (Some(1), Some(1)), "{body}");
    assert_eq!(get(http, "/livez").await.unwrap().0, 200);
    assert_eq!(
        get(http, "/status").await.unwrap().0,
        401,
        "the token still guards /status"
    );
    let token = http_get(http, "/status", Some("health-s3cret")).await;
    assert_eq!(token.unwrap().0, 200);
    srv.stop().await.unwrap();

    let srv = start_server_cameras(
        opts(),
        vec![
            ("front", test_pattern(160, 96, 30)),
            ("back", Box::new(Dead)),
        ],
    )
    .await
    .unwrap();
    let http = srv.http_addr.unwrap();
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false, "{body}");
    assert_eq!(counts(&json), (Some(2), Some(1)), "{body}");
    assert!(
        json["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("1 of 2 cameras deliver no frames")),
        "{body}"
    );
    assert!(
        !body.contains("back"),
        "no camera names without the token: {body}"
    );
    assert_eq!(
        get(http, "/livez").await.unwrap().0,
        200,
        "alive all the same"
    );
    srv.stop().await.unwrap();
}

/// `deploy/surv-server.service` passes `systemd-analyze verify` with nothing to say (a
/// misspelt key or value is only a warning there, so any output fails the test). The unit's
/// `ExecStart` binary, `/usr/local/bin/surv-server`, is this build's, since verify checks that it
/// exists. Skipped, saying so, where systemd-analyze is not installed.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(workspace().join("deploy/surv-server.service")).unwrap();
    for must in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=surv",
        "LogsDirectory=surv",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(must), "the unit lost {must:?}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
        return;
    }
    let binary = server_binary();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("surv-server.service");
    std::fs::write(
        &copy,
        replace_once(
            &unit,
            "ExecStart=/usr/local/bin/surv-server ",
            &format!("ExecStart={} ", binary.display()),
            "surv-server.service",
        ),
    )
    .unwrap();
    let out = output_within(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        Duration::from_secs(30),
    )
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );
}

/// The surv-server binary of this build (cargo builds the workspace's binaries with its tests:
/// target/debug/surv-server next to target/debug/deps/).
fn server_binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let binary = test
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("surv-server"))
        .unwrap();
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo test --workspace --no-run`",
        binary.display()
    );
    binary
}
