//! HTTP cameras for the `http://` source: the programs the seeds run, byte for byte, and
//! scripted servers that misbehave on purpose.
//!
//! [`HttpCamera`] runs the seeds' Python `http.server` code under `/usr/bin/python3` (so the
//! bytes on the wire are what Python's `BaseHTTPRequestHandler` writes, quirks included), fed
//! with the test's JPEGs at a fixed rate; it can be killed and started again on the same port.
//! [`ScriptedHttp`] is an in-process server that answers every request with exactly the bytes
//! (and pauses) a test lists: a stream that breaks the rules in a known way. [`KeepAliveStill`]
//! is a snapshot URL that keeps its connection open, counting connections and requests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::{Reaper, IO_TIMEOUT};

/// Which camera program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCameraKind {
    /// luxonis depthai-python `examples/Script/script_mjpeg_server.py` (seed 000's
    /// `script_mjpeg_server`): `GET /img`, declares `boundary=--jpgboundary` and writes
    /// `--jpgboundary` lines, HTTP/1.0, the stream ends when the connection does.
    OakMjpeg,
    /// Seed 004's `vidserver.py` (picamera's web-streaming recipe): `GET /stream.mjpg`,
    /// `boundary=FRAME`, `--FRAME` lines, Age/Cache-Control/Pragma headers.
    Seed004Mjpeg,
    /// A cheap camera: `GET /video`, parts with no Content-Length and bare LF line ends.
    LfNoLength,
    /// Seed 000's `script_http_server`: `GET /img` answers one `image/jpeg` with its
    /// Content-Length, HTTP/1.0 (a new connection per image), single-threaded `TCPServer`.
    OakStill,
    /// An ESP32-CAM-style stream (HTTP/1.1, chunked, `boundary=123456789000000000000987654321`
    /// without a space, X-Timestamp per part) at `GET /stream`, behind Basic auth: 401 with
    /// `WWW-Authenticate: Basic` unless `Authorization` carries `user:pass`.
    BasicAuthMjpeg { user: String, pass: String },
}

impl HttpCameraKind {
    fn mode(&self) -> &'static str {
        match self {
            HttpCameraKind::OakMjpeg => "oak-mjpeg",
            HttpCameraKind::Seed004Mjpeg => "seed004",
            HttpCameraKind::LfNoLength => "lf-nolength",
            HttpCameraKind::OakStill => "oak-still",
            HttpCameraKind::BasicAuthMjpeg { .. } => "esp32-auth",
        }
    }

    /// The path the camera serves its stream or image at.
    pub fn path(&self) -> &'static str {
        match self {
            HttpCameraKind::OakMjpeg | HttpCameraKind::OakStill => "/img",
            HttpCameraKind::Seed004Mjpeg => "/stream.mjpg",
            HttpCameraKind::LfNoLength => "/video",
            HttpCameraKind::BasicAuthMjpeg { .. } => "/stream",
        }
    }
}

/// One of the seeds' HTTP cameras, running; killed when dropped.
pub struct HttpCamera {
    kind: HttpCameraKind,
    fps: u32,
    dir: tempfile::TempDir,
    child: Option<Reaper>,
    /// Where it listens on 127.0.0.1 (the same across [`HttpCamera::restart`]).
    pub port: u16,
}

impl HttpCamera {
    /// Starts the camera on a free port of 127.0.0.1, serving `frames` in turn at `fps`.
    pub async fn start(kind: HttpCameraKind, frames: &[Vec<u8>], fps: u32) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("camera.py"), CAMERA_PY)?;
        for (i, jpeg) in frames.iter().enumerate() {
            std::fs::write(dir.path().join(format!("frame{i:04}.jpg")), jpeg)?;
        }
        let mut camera = HttpCamera {
            kind,
            fps,
            dir,
            child: None,
            port: 0,
        };
        camera.spawn().await?;
        Ok(camera)
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.kind.path())
    }

    /// The URL with `user:pass@` in it.
    pub fn url_with(&self, user: &str, pass: &str) -> String {
        format!(
            "http://{user}:{pass}@127.0.0.1:{}{}",
            self.port,
            self.kind.path()
        )
    }

    /// Kills the camera (SIGKILL: its connections drop mid-part).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let (user, pass) = match &self.kind {
            HttpCameraKind::BasicAuthMjpeg { user, pass } => (user.clone(), pass.clone()),
            _ => (String::new(), String::new()),
        };
        let dir: PathBuf = self.dir.path().into();
        let mut child = Command::new("/usr/bin/python3")
            .arg("-u")
            .arg(dir.join("camera.py"))
            .args([
                self.kind.mode(),
                &self.port.to_string(),
                &self.fps.to_string(),
            ])
            .arg(&dir)
            .args([user, pass])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/bin/python3 (scripts/setup.sh installs it)")?;
        let stdout = child.stdout.take().context("camera stdout")?;
        let reaper = Reaper(child);
        // The camera prints its port once it listens; if it dies first, the read ends.
        let line = tokio::time::timeout(
            IO_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        )
        .await
        .context("the Python camera did not start listening in time")???;
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .with_context(|| format!("the Python camera said {line:?}, not LISTENING <port>"))?;
        self.port = port;
        self.child = Some(reaper);
        Ok(())
    }
}

/// The seeds' HTTP servers, each as its program writes it, reading JPEGs from a folder instead
/// of a camera. Argument order: mode port fps folder [user pass].
const CAMERA_PY: &str = r#"
import base64, glob, socket, socketserver, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

MODE, PORT, FPS, DIR = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
USER, PASS = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else ("", "")
FRAMES = [open(p, "rb").read() for p in sorted(glob.glob(DIR + "/frame*.jpg"))]
# So that a test can kill the camera and start it again on the same port.
socketserver.TCPServer.allow_reuse_address = True

class Camera:
    """Stands for node.io['jpeg'].get() / the picamera output: the next frame, at FPS."""
    def __init__(self):
        self.i, self.next = 0, time.monotonic()
    def get(self):
        self.next += 1.0 / FPS
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self.next = time.monotonic()
        frame = FRAMES[self.i % len(FRAMES)]
        self.i += 1
        return frame

class ThreadingSimpleServer(ThreadingMixIn, HTTPServer):
    pass

class OakMjpeg(BaseHTTPRequestHandler):
    # luxonis depthai-python examples/Script/script_mjpeg_server.py
    def do_GET(self):
        if self.path == '/':
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<h1>[DepthAI] Hello, world!</h1><p>Click <a href="img">here</a> for an image</p>')
        elif self.path == '/img':
            camera = Camera()
            try:
                self.send_response(200)
                self.send_header('Content-type', 'multipart/x-mixed-replace; boundary=--jpgboundary')
                self.end_headers()
                while True:
                    jpegImage = camera.get()
                    self.wfile.write("--jpgboundary".encode())
                    self.wfile.write(bytes([13, 10]))
                    self.send_header('Content-type', 'image/jpeg')
                    self.send_header('Content-length', str(len(jpegImage)))
                    self.end_headers()
                    self.wfile.write(jpegImage)
                    self.end_headers()
            except Exception as ex:
                pass
    def log_message(self, *args):
        pass

class Seed004(BaseHTTPRequestHandler):
    # seed 004 vidserver.py (picamera's web-streaming recipe)
    def do_GET(self):
        if self.path == '/':
            self.send_response(301)
            self.send_header('Location', '/index.html')
            self.end_headers()
        elif self.path == '/index.html':
            content = b'<html><body><img src="stream.mjpg" width="640" height="480"></body></html>'
            self.send_response(200)
            self.send_header('Content-Type', 'text/html')
            self.send_header('Content-Length', len(content))
            self.end_headers()
            self.wfile.write(content)
        elif self.path == '/stream.mjpg':
            camera = Camera()
            self.send_response(200)
            self.send_header('Age', 0)
            self.send_header('Cache-Control', 'no-cache, private')
            self.send_header('Pragma', 'no-cache')
            self.send_header('Content-Type', 'multipart/x-mixed-replace; boundary=FRAME')
            self.end_headers()
            try:
                while True:
                    frame = camera.get()
                    self.wfile.write(b'--FRAME\r\n')
                    self.send_header('Content-Type', 'image/jpeg')
                    self.send_header('Content-Length', len(frame))
                    self.end_headers()
                    self.wfile.write(frame)
                    self.wfile.write(b'\r\n')
            except Exception as e:
                pass
        else:
            self.send_error(404)
            self.end_headers()
    def log_message(self, *args):
        pass

class StreamingServer(socketserver.ThreadingMixIn, HTTPServer):
    allow_reuse_address = True
    daemon_threads = True

class LfNoLength(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != '/video':
            self.send_error(404)
            return
        camera = Camera()
        self.wfile.write(b'HTTP/1.0 200 OK\nContent-Type: multipart/x-mixed-replace;boundary=cam\n\n')
        try:
            while True:
                frame = camera.get()
                self.wfile.write(b'--cam\nContent-Type: image/jpeg\n\n' + frame + b'\n')
        except Exception:
            pass
    def log_message(self, *args):
        pass

class OakStill(BaseHTTPRequestHandler):
    # seed 000 script_http_server: one still per GET /img
    def do_GET(self):
        if self.path == '/':
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<h1>[DepthAI] Hello, world!</h1><p>Click <a href="img">here</a> for an image</p>')
        elif self.path == '/img':
            jpegImage = FRAMES[OakStill.count % len(FRAMES)]
            OakStill.count += 1
            self.send_response(200)
            self.send_header('Content-Type', 'image/jpeg')
            self.send_header('Content-Length', str(len(jpegImage)))
            self.end_headers()
            self.wfile.write(jpegImage)
        else:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'Url not found...')
    def log_message(self, *args):
        pass
OakStill.count = 0

BOUNDARY = "123456789000000000000987654321"

class Esp32Auth(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def chunk(self, data):
        self.wfile.write(b"%X\r\n" % len(data) + data + b"\r\n")
    def do_GET(self):
        want = "Basic " + base64.b64encode((USER + ":" + PASS).encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        if self.path != '/stream':
            self.send_error(404)
            return
        camera = Camera()
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=" + BOUNDARY)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        try:
            while True:
                frame = camera.get()
                now = time.time()
                self.chunk(("\r\n--" + BOUNDARY + "\r\n").encode())
                self.chunk(("Content-Type: image/jpeg\r\nContent-Length: %u\r\nX-Timestamp: %d.%06d\r\n\r\n"
                            % (len(frame), int(now), int(now * 1e6) % 1000000)).encode())
                self.chunk(frame)
        except Exception:
            self.close_connection = True
    def log_message(self, *args):
        pass

servers = {
    "oak-mjpeg": (ThreadingSimpleServer, OakMjpeg),
    "seed004": (StreamingServer, Seed004),
    "lf-nolength": (StreamingServer, LfNoLength),
    "oak-still": (socketserver.TCPServer, OakStill),
    "esp32-auth": (StreamingServer, Esp32Auth),
}
server_class, handler = servers[MODE]
with server_class(("127.0.0.1", PORT), handler) as httpd:
    print("LISTENING %d" % httpd.server_address[1], flush=True)
    httpd.serve_forever()
"#;

/// One step of a [`ScriptedHttp`] answer.
#[derive(Debug, Clone)]
pub enum Say {
    Bytes(Vec<u8>),
    Pause(Duration),
}

/// An in-process HTTP server on 127.0.0.1 that answers every request with the same script
/// (repeated from `repeat_from` for as long as the peer reads, if set); stops when dropped.
pub struct ScriptedHttp {
    pub port: u16,
    accept: JoinHandle<()>,
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ScriptedHttp {
    /// Serves `script` to every connection; after it, the steps from `repeat_from` on are
    /// said again and again (`None`: the connection is held open, silent, until the peer goes).
    pub async fn start(script: Vec<Say>, repeat_from: Option<usize>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                let script = script.clone();
                connections.spawn(async move {
                    if read_request_head(&mut tcp).await.is_err() {
                        return;
                    }
                    let mut at = 0;
                    loop {
                        match script.get(at) {
                            Some(Say::Bytes(b)) => {
                                if tcp.write_all(b).await.is_err() {
                                    return;
                                }
                            }
                            Some(Say::Pause(d)) => tokio::time::sleep(*d).await,
                            None => match repeat_from {
                                Some(from) if from < script.len() => {
                                    at = from;
                                    continue;
                                }
                                _ => {
                                    // Held open and silent: a stalled camera.
                                    let mut sink = [0u8; 256];
                                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                                    return;
                                }
                            },
                        }
                        at += 1;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(ScriptedHttp { port, accept })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Reads up to the blank line that ends a request head (bounded in size and time).
async fn read_request_head(tcp: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(IO_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 || head.len() > 64 * 1024 {
                bail!("no request head");
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await?
}

/// One multipart part as most cameras write it: delimiter, headers, body, CRLF.
pub fn part(boundary: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("--{boundary}\r\n").into_bytes();
    for (name, value) in headers {
        out.extend(format!("{name}: {value}\r\n").bytes());
    }
    out.extend(b"\r\n");
    out.extend(body);
    out.extend(b"\r\n");
    out
}

/// A `200 OK` head for a multipart stream with `boundary`, HTTP/1.0 (the body ends at close).
pub fn multipart_head(boundary: &str) -> Vec<u8> {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={boundary}\r\n\r\n"
    )
    .into_bytes()
}

/// A snapshot URL on HTTP/1.1 with keep-alive (as most IP cameras' `/snapshot.jpg`): every
/// `GET` on a connection gets the next JPEG with its Content-Length; connections and requests
/// are counted so a test can see whether its client reused the connection.
pub struct KeepAliveStill {
    pub port: u16,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Drop for KeepAliveStill {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl KeepAliveStill {
    pub async fn start(frames: Vec<Vec<u8>>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let frames = Arc::new(frames);
        let accept = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Relaxed);
                let (reqs, frames) = (reqs.clone(), frames.clone());
                tasks.spawn(async move {
                    while read_request_head(&mut tcp).await.is_ok() {
                        let n = reqs.fetch_add(1, Relaxed);
                        let Some(jpeg) = frames.get((n as usize) % frames.len().max(1)) else {
                            return;
                        };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                            jpeg.len()
                        );
                        if tcp.write_all(head.as_bytes()).await.is_err()
                            || tcp.write_all(jpeg).await.is_err()
                        {
                            return;
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
        });
        Ok(KeepAliveStill {
            port,
            connections,
            requests,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/snapshot.jpg", self.port)
    }
}
