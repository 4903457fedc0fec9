//! An nginx HLS edge made from `deploy/nginx-edge.conf`, as the tests and `surv-load --hls` run
//! it: the file as shipped, with its origin, listening port and cache folder put in, inside a
//! minimal main configuration of its own (no daemon, no master, one worker, every path in a
//! temporary folder), killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::{free_tcp_port, Reaper};

/// Connections per edge when not said (players plus the edge's own to the origin).
pub const WORKER_CONNECTIONS: usize = 256;

/// Writes an edge's configuration into `dir`: `edge.conf` (deploy/nginx-edge.conf with
/// `origin`, `listen` and the cache folder `dir/cache` put in) and `nginx.conf` (the main
/// configuration around it, every path in `dir`, one worker of `connections` connections).
/// Start it with `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log`.
pub fn write_config(
    dir: &Path,
    origin: SocketAddr,
    listen: SocketAddr,
    connections: usize,
) -> anyhow::Result<()> {
    let deployed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx-edge.conf"),
    )
    .context("reading deploy/nginx-edge.conf")?;
    let d = dir.display();
    let mut conf = deployed;
    for (from, to) in [
        ("server 192.0.2.10:8080;", format!("server {origin};")),
        ("listen 8081;", format!("listen {listen};")),
        ("/var/cache/nginx/surv-edge", format!("{d}/cache")),
    ] {
        ensure!(
            conf.contains(from),
            "deploy/nginx-edge.conf has no `{from}`"
        );
        conf = conf.replace(from, &to);
    }
    std::fs::write(dir.join("edge.conf"), conf)?;
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             worker_rlimit_nofile {files};\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/edge.conf;\n}}\n",
            files = 2 * connections + 64,
        ),
    )?;
    Ok(())
}

/// One nginx edge process in front of `origin`.
pub struct Edge {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    nginx: Reaper,
}

impl Edge {
    pub fn start(origin: SocketAddr) -> anyhow::Result<Edge> {
        Edge::start_sized(origin, WORKER_CONNECTIONS)
    }

    /// An edge whose one worker takes up to `connections` connections (each player holds one,
    /// and each request the edge passes on one more to the origin).
    pub fn start_sized(origin: SocketAddr, connections: usize) -> anyhow::Result<Edge> {
        let dir = tempfile::tempdir()?;
        let port = free_tcp_port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        write_config(dir.path(), origin, listen, connections)?;
        let nginx = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (scripts/setup.sh installs it)")?;
        let edge = Edge {
            addr: listen,
            dir,
            nginx: Reaper(nginx),
        };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(edge.addr).is_err() {
            ensure!(
                Instant::now() < until,
                "nginx did not listen: {}",
                edge.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(edge)
    }

    /// The nginx process's id (its one worker: no master).
    pub fn pid(&self) -> u32 {
        self.nginx.0.id()
    }

    /// What nginx wrote to its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
