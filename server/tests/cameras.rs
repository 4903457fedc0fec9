//! Many cameras in one server, as a user runs it: the real `surv-server` binary with a
//! `--config` file of four cameras (two test patterns of different sizes, a camera pushing
//! JPEGs over TCP, a still image file). Each camera's snapshot has its own size; a SURV/1
//! viewer naming a camera gets that camera's frames, a seed-form viewer the first camera's;
//! unknown cameras are refused with the names there are; a bad config is refused at start
//! with its line and why; each camera detects objects as its own keys say.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use surv_proto::Form;
use surv_tests::http;
use surv_tests::standins::push::{length_prefixed_sender, Feed};
use surv_tests::{free_tcp_port, free_udp_port, test_jpeg, Picture, RawViewer, Reaper, IO_TIMEOUT};
use tokio::time::{sleep, timeout, Instant};

fn jpeg(w: usize, h: usize, seed: u64) -> Vec<u8> {
    test_jpeg(
        w,
        h,
        Picture::Gradient(seed),
        80,
        surv_tests::fixtures::Subsamp::Sub2x2,
    )
}

/// `GET path`: the status code and the body.
async fn get(port: u16, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let r = http::get(to, path, http::Limits::new(IO_TIMEOUT, 16 << 20)).await?;
    Ok((r.status, r.body))
}

/// The size of the JPEG `bytes` (after surv's tag, which turbojpeg skips as a comment).
fn size_of(bytes: &[u8]) -> (usize, usize) {
    let h = turbojpeg::read_header(bytes).expect("a JPEG");
    (h.width, h.height)
}

/// Polls `/cam/NAME/snapshot.jpg` until it is a picture of `want` (bounded).
async fn snapshot_is(http: u16, name: &str, want: (usize, usize)) {
    let until = Instant::now() + IO_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < until {
        match get(http, &format!("/cam/{name}/snapshot.jpg")).await {
            Ok((200, body)) if size_of(&body) == want => return,
            Ok((code, body)) => {
                last = format!("{code}, {} bytes", body.len());
                if code == 200 {
                    last += &format!(", {:?}", size_of(&body));
                }
            }
            Err(e) => last = e.to_string(),
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("camera {name}: no {want:?} snapshot; last: {last}");
}

/// The camera names `/status` lists, in order.
async fn camera_names(http: u16) -> Vec<String> {
    let (_, status) = get(http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    status["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Starts the binary on `config` (its stderr to `dir/server.log`) and waits for its HTTP port.
async fn start(config: &Path, dir: &Path, http: u16, extra: &[&str]) -> Reaper {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_surv-server"))
        .arg("--config")
        .arg(config)
        .args(["--rtsp-port", "0", "--webrtc-port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting surv-server");
    let child = Reaper(child);
    let until = Instant::now() + IO_TIMEOUT;
    while get(http, "/status").await.is_err() {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        assert!(Instant::now() < until, "the server did not start:\n{log}");
        sleep(Duration::from_millis(50)).await;
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cameras_from_a_config_each_serve_their_own_picture() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http, push) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let requests = free_udp_port();
    let still = dir.path().join("still.jpg");
    std::fs::write(&still, jpeg(200, 150, 9)).unwrap();
    let config = dir.path().join("surv.toml");
    std::fs::write(
        &config,
        format!(
            r#"# four cameras
port = {port}
http_port = {http}
bind = "127.0.0.1"
log-dir = "{logs}"
motion = "off"

[[camera]]
name = "big"
source = "test"
size = "320x240"

[[camera]]
name = "small"
source = "test"
size = "160x96"
fps = 15
request-port = {requests}

[[camera]]
name = "pushed"
source = "tcp-listen://127.0.0.1:{push}"

[[camera]]
name = "still"
source = "{still}"
fps = 5
"#,
            logs = dir.path().join("logs").display(),
            still = still.display(),
        ),
    )
    .unwrap();
    let _server = start(&config, dir.path(), http, &[]).await;
    let pushed = (0..3).map(|i| jpeg(240, 180, i)).collect();
    let _camera = length_prefixed_sender(
        SocketAddr::from(([127, 0, 0, 1], push)),
        Feed {
            frames: pushed,
            interval: Duration::from_millis(50),
        },
    )
    .await
    .unwrap();

    for (name, size) in [
        ("big", (320, 240)),
        ("small", (160, 96)),
        ("pushed", (240, 180)),
        ("still", (200, 150)),
    ] {
        snapshot_is(http, name, size).await;
    }
    // Today's URLs are the first camera's.
    let (code, body) = get(http, "/snapshot.jpg").await.unwrap();
    assert_eq!((code, size_of(&body)), (200, (320, 240)));
    let (code, body) = get(http, "/cam/nope/snapshot.jpg").await.unwrap();
    assert_eq!(code, 404);
    let why = String::from_utf8_lossy(&body);
    assert!(why.contains("big, small, pushed, still"), "{why}");
    let names = camera_names(http).await;
    assert_eq!(names, ["big", "small", "pushed", "still"]);
    let (_, small) = get(http, "/cam/small/status").await.unwrap();
    let small: serde_json::Value = serde_json::from_slice(&small).unwrap();
    assert_eq!(
        (small["width"].as_u64(), small["height"].as_u64()),
        (Some(160), Some(96))
    );

    // Viewers: SURV/1 names a camera; the seed form gets the first.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (name, size) in [
        ("small", (160, 96)),
        ("pushed", (240, 180)),
        ("big", (320, 240)),
    ] {
        let v = RawViewer::register_for(addr, Form::V1, Some(name))
            .await
            .unwrap();
        let p = v.params.clone().unwrap();
        assert_eq!(
            (p.width as usize, p.height as usize),
            size,
            "{name}'s OK line"
        );
        let mut buf = vec![0u8; 65536];
        let (n, _) = timeout(IO_TIMEOUT, v.udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(size_of(&buf[..n]), size, "{name}'s frames");
    }
    let seed = RawViewer::register(addr, Form::Seed).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = timeout(IO_TIMEOUT, seed.udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        size_of(&buf[..n]),
        (320, 240),
        "a seed viewer gets the first camera"
    );
    // A seed-001 app on the second camera's own request port gets that camera.
    let app = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    app.send_to(b"Request", ("127.0.0.1", requests))
        .await
        .unwrap();
    let (n, _) = timeout(IO_TIMEOUT, app.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        size_of(&buf[..n]),
        (160, 96),
        "an app on small's request port"
    );
    let refused = RawViewer::register_for(addr, Form::V1, Some("nope"))
        .await
        .err()
        .expect("an unknown camera is refused")
        .to_string();
    assert!(
        refused.contains("no camera \"nope\"") && refused.contains("big, small, pushed, still"),
        "{refused}"
    );

    // surv-client --camera: registers with that camera, and an unknown one is an error.
    let mut cfg = surv_tests::client_config(addr, 1.0);
    cfg.camera = Some("still".into());
    let s = surv_client::run(cfg, None, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(s.received >= 2, "{s}");
    let mut cfg = surv_tests::client_config(addr, 1.0);
    cfg.camera = Some("nope".into());
    let e = surv_client::run(cfg, None, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("no camera \"nope\""), "{e}");
}

/// A config that does not parse, names a camera twice, has an unknown key or a bad source is
/// refused at start with the file's line and the reason; nothing is served.
#[test]
fn a_bad_config_is_refused_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[camera]]\nname = \"a\"\nsource = \"test\"\n\n[[camera]]\nname = \"a\"\nsource = \"test\"\n",
            ":5:",
            "a second camera named \"a\"",
        ),
        (
            "[[camera]]\nname = \"a\"\nsource = \"test\"\nzoom = 2\n",
            ":4:",
            "unknown field `zoom`",
        ),
        ("http-prot = 8080\n", ":1:", "unknown setting `http-prot`"),
        (
            "[[camera]]\nname = \"a\"\nsource = \"udp://127.0.0.1:notaport\"\n",
            ":1:",
            "camera a: source",
        ),
        ("port = [\n", ":1:", ""),
        (
            "[[camera]]\nname = \"a/b\"\nsource = \"test\"\n",
            ":1:",
            "is not a letter",
        ),
    ];
    for (text, line, reason) in cases {
        let config = dir.path().join("surv.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_surv-server"))
            .arg("--config")
            .arg(&config)
            .args(["--port", "0", "--http-port", "0", "--rtsp-port", "0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted: {stderr}");
        assert!(
            stderr.contains(&format!("surv.toml{line}")) && stderr.contains(reason),
            "{text:?}: {stderr}"
        );
    }
}

/// A flag on the command line overrides the config file's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_overrides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (in_file, on_line) = (free_tcp_port(), free_tcp_port());
    let config = dir.path().join("surv.toml");
    std::fs::write(
        &config,
        format!(
            "http-port = {in_file}\nmax-datagram = 60000\nport = 0\nbind = \"127.0.0.1\"\nsource = \"test\"\nsize = \"64x48\"\nlog-dir = \"{}\"\n",
            dir.path().join("logs").display()
        ),
    )
    .unwrap();
    let _server = start(
        &config,
        dir.path(),
        on_line,
        &["--http-port", &on_line.to_string()],
    )
    .await;
    let (code, body) = get(on_line, "/snapshot.jpg").await.unwrap();
    assert_eq!((code, size_of(&body)), (200, (64, 48)));
    assert!(
        get(in_file, "/status").await.is_err(),
        "the file's port is not used"
    );
}

/// `SIGHUP` reloads the config: an added camera starts, a removed one ends (its watcher leaves
/// with reason `removed`), a changed one restarts with its new settings, and an unchanged one's
/// viewer stays; a config that no longer parses changes nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_cameras() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_tcp_port(), free_tcp_port());
    let config = dir.path().join("surv.toml");
    let logs = dir.path().join("logs");
    let write = |cameras: &str| {
        let head = format!(
            "port = {port}\nhttp-port = {http}\nbind = \"127.0.0.1\"\nmotion = \"off\"\nlog-dir = \"{}\"\n",
            logs.display()
        );
        std::fs::write(&config, head + cameras).unwrap();
    };
    let camera = |name: &str, size: &str| {
        format!("\n[[camera]]\nname = \"{name}\"\nsource = \"test\"\nsize = \"{size}\"\n")
    };
    write(&(camera("stays", "160x96") + &camera("goes", "128x96") + &camera("changes", "96x64")));
    let server = start(&config, dir.path(), http, &[]).await;
    let hangup = || {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP");
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stays = RawViewer::register_for(addr, Form::V1, Some("stays"))
        .await
        .unwrap();
    let mut goes = RawViewer::register_for(addr, Form::V1, Some("goes"))
        .await
        .unwrap();

    write(&(camera("stays", "160x96") + &camera("changes", "64x64") + &camera("new", "192x96")));
    let watch = Duration::from_secs(3);
    let (s, g, ()) = tokio::join!(
        stays.receive(watch, u64::MAX, surv_tests::AckStyle::Seq, 0),
        goes.receive(watch, u64::MAX, surv_tests::AckStyle::Seq, 0),
        async {
            sleep(Duration::from_millis(500)).await;
            hangup();
        }
    );
    let (s, g) = (s.unwrap(), g.unwrap());
    snapshot_is(http, "new", (192, 96)).await;
    snapshot_is(http, "changes", (64, 64)).await;
    assert_eq!(get(http, "/cam/goes/snapshot.jpg").await.unwrap().0, 404);
    assert!(
        s.decoded >= 30,
        "the unchanged camera's viewer: {} frames",
        s.decoded
    );
    let gaps = s.seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(
        gaps, 0,
        "the unchanged camera's viewer lost frames: {:?}",
        s.seqs
    );
    assert!(g.decoded >= 1);
    let journal = surv_server::journal::read_all(&logs).unwrap();
    assert!(
        journal
            .iter()
            .any(|l| l.contains("LEAVE") && l.contains("reason=removed") && l.contains("cam=goes")),
        "{journal:#?}"
    );
    assert!(
        !journal
            .iter()
            .any(|l| l.contains("LEAVE") && l.contains("cam=stays")),
        "{journal:#?}"
    );

    // A config that no longer parses: refused with its line, and the cameras stay.
    std::fs::write(
        &config,
        "[[camera]]\nname = \"x\"\nsource = \"test\"\nzoom = 2\n",
    )
    .unwrap();
    hangup();
    let until = Instant::now() + IO_TIMEOUT;
    let log = loop {
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
        if log.contains("the config is refused") || Instant::now() > until {
            break log;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert!(
        log.contains("the config is refused")
            && log.contains("surv.toml:4")
            && log.contains("zoom"),
        "{log}"
    );
    let names = camera_names(http).await;
    assert_eq!(names, ["stays", "changes", "new"]);
}

/// Object detection per camera from the config, through the real binary: a camera's own
/// `detect*` keys, else the server-wide ones; `detect-on = "motion"` analyses nothing while
/// nothing moves; `detect = "off"` turns it off for one camera; a bad `detect-on` is refused
/// at start with its line. Uses the model `scripts/setup.sh` installs (fails without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_camera_detects_as_its_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_tcp_port(), free_tcp_port());
    let still = dir.path().join("still.jpg");
    std::fs::write(&still, jpeg(160, 120, 3)).unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let text = |calm_on: &str| {
        format!(
            r#"port = {port}
http-port = {http}
bind = "127.0.0.1"
log-dir = "{logs}"
detect = "dog"
detect-every = 3
detect-model = "{model}"
detect-runtime = "{runtime}"

[[camera]]
name = "people"
source = "{still}"
fps = 10
detect = "person,car"
detect-every = 1

[[camera]]
name = "calm"
source = "{still}"
fps = 10
detect = "person"
detect-on = "{calm_on}"

[[camera]]
name = "inherits"
source = "{still}"
fps = 10

[[camera]]
name = "none"
source = "{still}"
fps = 10
detect = "off"
"#,
            logs = dir.path().join("logs").display(),
            model = models.join("centernet.onnx").display(),
            runtime = models.join("libonnxruntime.so").display(),
            still = still.display(),
        )
    };
    let config = dir.path().join("surv.toml");

    // A bad value: refused at start, with its line.
    std::fs::write(&config, text("sometimes")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_surv-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("running surv-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("surv.toml:17: camera calm: detect-on") && stderr.contains("sometimes"),
        "{stderr}"
    );

    std::fs::write(&config, text("motion")).unwrap();
    let _server = start(&config, dir.path(), http, &[]).await;
    let objects = |status: &serde_json::Value, name: &str| {
        status["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {status}"))["objects"]
            .clone()
    };
    // Until the cameras that analyse have analysed a few frames (bounded).
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, body) = get(http, "/status").await.unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let analysed = |name| objects(&status, name)["analysed"].as_u64().unwrap_or(0);
        if analysed("people") >= 6 && analysed("inherits") >= 2 {
            break status;
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        assert!(
            Instant::now() < until,
            "too few frames analysed: {status}\n{log}"
        );
        sleep(Duration::from_millis(200)).await;
    };
    let people = objects(&status, "people");
    assert_eq!(
        (&people["enabled"], &people["labels"]),
        (&true.into(), &"person,car".into()),
        "{people}"
    );
    let inherits = objects(&status, "inherits");
    assert_eq!(
        (&inherits["enabled"], &inherits["labels"]),
        (&true.into(), &"dog".into()),
        "{inherits}"
    );
    // Every frame against every third (the server-wide detect-every) of the same 10 fps still.
    let (p, i) = (
        people["analysed"].as_u64().unwrap() + people["skipped"].as_u64().unwrap(),
        inherits["analysed"].as_u64().unwrap(),
    );
    assert!(i <= p / 2 + 1, "people saw {p}, inherits analysed {i}");
    // A still picture never moves: the motion-gated detector has analysed nothing.
    let calm = objects(&status, "calm");
    assert_eq!(
        (&calm["enabled"], &calm["analysed"]),
        (&true.into(), &0.into()),
        "{calm}"
    );
    let none = objects(&status, "none");
    assert_eq!(none["enabled"], false, "{none}");
}
