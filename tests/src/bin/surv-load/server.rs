//! The surv-server under test, as its own process: started on loopback with the test pattern
//! (or, in a push run, a `tcp-listen://`/`udp://` source on a free port for the camera; with
//! `--cameras N`, a config file of N such cameras),
//! waited for until it listens, stopped with SIGTERM (then SIGKILL), and its log read back.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::push::PushKind;
use crate::{Args, WAIT_LIMIT};

/// The server process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProc {
    child: Child,
    pub addr: SocketAddrV4,
    /// Where a push run's camera sends (the server's `tcp-listen://` or `udp://` source).
    pub camera_to: Option<SocketAddrV4>,
    /// Where each camera of a many-cameras run sends, in the config's order.
    pub cameras_to: Vec<SocketAddrV4>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    pub fn start(args: &Args) -> anyhow::Result<ServerProc> {
        ServerProc::start_with(args, args.viewers, &[])
    }

    /// With `watchers` watchers of any kind expected, and `extra` arguments (an HTTP or
    /// request port).
    pub fn start_with(
        args: &Args,
        watchers: usize,
        extra: &[String],
    ) -> anyhow::Result<ServerProc> {
        let exe = match &args.server {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no folder for this binary")?
                .join("surv-server"),
        };
        if !exe.exists() {
            bail!(
                "no server binary at {}: build it with `cargo build --release -p surv-server -p surv-tests`, or pass --server",
                exe.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let (w, h) = args.size;
        // A many-cameras run: a config file with a pushed camera per port, instead of --source.
        let (cameras_to, config) = match (args.cameras, args.push) {
            (Some(n), Some(kind)) => {
                let to = free_ports(kind, n)?;
                let sources: Vec<String> = to.iter().map(|a| kind.source_arg(a.port())).collect();
                let path = dir.path().join("cameras.toml");
                std::fs::write(&path, crate::cameras::config_toml(&sources))
                    .context("writing the cameras' config file")?;
                (to, Some(path))
            }
            _ => (Vec::new(), None),
        };
        let camera_to = match (args.push, &config) {
            (Some(kind), None) => free_ports(kind, 1)?.first().copied(),
            _ => None,
        };
        // `--server-arg=--source=…` (an RTSP stand-in, a file) replaces the test pattern.
        let source_given = args.server_args.iter().any(|a| a.starts_with("--source"));
        let source = match (args.push, camera_to) {
            _ if config.is_some() => None,
            (Some(kind), Some(to)) => Some(kind.source_arg(to.port())),
            _ if source_given => None,
            _ => Some("test".to_string()),
        };
        let child = Command::new(&exe)
            .args(source.iter().flat_map(|s| ["--source", s.as_str()]))
            .args(
                config
                    .iter()
                    .flat_map(|p| [OsStr::new("--config"), p.as_os_str()]),
            )
            .args(["--bind", &args.server_bind.to_string()])
            .args(["--port", &port.to_string()])
            .args([
                "--size",
                &format!("{w}x{h}"),
                "--fps",
                &args.fps.to_string(),
            ])
            .args(["--max-viewers", &(watchers + 64).to_string()])
            // No HTTP server unless asked for (two loads at once would both want 8080).
            .args(
                (!args
                    .server_args
                    .iter()
                    .chain(extra)
                    .any(|a| a.starts_with("--http-port")))
                .then_some(["--http-port", "0"])
                .into_iter()
                .flatten(),
            )
            // Nor RTSP (8554 and UDP 8000-8001), unless asked for.
            .args(
                (!args
                    .server_args
                    .iter()
                    .chain(extra)
                    .any(|a| a.starts_with("--rtsp-port")))
                .then_some(["--rtsp-port", "0"])
                .into_iter()
                .flatten(),
            )
            // Nor WebRTC (UDP 8555), unless asked for.
            .args(
                (!args
                    .server_args
                    .iter()
                    .chain(extra)
                    .any(|a| a.starts_with("--webrtc-port")))
                .then_some(["--webrtc-port", "0"])
                .into_iter()
                .flatten(),
            )
            .arg("--log-dir")
            .arg(dir.path())
            .args(extra)
            .args(&args.server_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let srv = ServerProc {
            child,
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            camera_to,
            cameras_to,
            log,
            _dir: dir,
        };
        let until = Instant::now() + WAIT_LIMIT;
        while TcpStream::connect_timeout(&srv.addr.into(), Duration::from_secs(1)).is_err() {
            if Instant::now() > until {
                bail!(
                    "the server did not listen on {}: {}",
                    srv.addr,
                    srv.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(srv)
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The server's journal (JOIN, LEAVE, …) so far.
    pub fn journal(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self._dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("surv-journal")
            {
                text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        text
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (bounded): the server's log and its journal, shutdown LEAVEs included.
    pub fn stop_with_journal(mut self) -> (String, String) {
        self.terminate();
        (self.log_text(), self.journal())
    }

    /// SIGTERM, then waits (bounded) and returns the server's log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log_text()
    }

    fn terminate(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `n` distinct loopback ports free for a `kind` camera source: all bound at once, so that
/// none is handed out twice, then released for the server to bind.
fn free_ports(kind: PushKind, n: usize) -> anyhow::Result<Vec<SocketAddrV4>> {
    let ports = match kind {
        PushKind::Tcp => {
            let held = (0..n)
                .map(|_| TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            held.iter()
                .map(|l| Ok(l.local_addr()?.port()))
                .collect::<std::io::Result<Vec<u16>>>()?
        }
        PushKind::Udp => {
            let held = (0..n)
                .map(|_| UdpSocket::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            held.iter()
                .map(|s| Ok(s.local_addr()?.port()))
                .collect::<std::io::Result<Vec<u16>>>()?
        }
    };
    Ok(ports
        .into_iter()
        .map(|port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .collect())
}

/// A `key=value` number from the server's final stats line.
pub fn log_field(log: &str, key: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("final stats"))?;
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let v: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    v.parse().ok()
}
