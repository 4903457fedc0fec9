//! The real surv-server binary for the MQTT tests that kill or signal it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::bail;
use surv_tests::{output_within, Reaper};
use tokio::time::{sleep, Instant};

use crate::broker::{free_port, WAIT};

/// The surv-server binary that `cargo test --workspace` builds (the server has integration
/// tests, so cargo builds its binary), brought up to date by the same command here.
///
/// Not `cargo build -p surv-server`: that resolves features without the workspace's
/// dev-dependencies, so it compiled a second copy of tokio, str0m, openh264 and the rest, which
/// cost a cold CI run about three minutes inside this test file. Under `cargo test --workspace`
/// the nested command finds everything fresh.
pub fn server_exe() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/mqtt-HASH → target/<profile>/surv-server
            let dir = me
                .parent()
                .and_then(|d| d.parent())
                .ok_or("no folder for this test binary")?;
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo.args(["test", "--workspace", "--no-run", "--quiet"]);
            if dir.ends_with("release") {
                cargo.arg("--release");
            }
            let out =
                output_within(&mut cargo, Duration::from_secs(900)).map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "building surv-server: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(dir.join("surv-server"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The real server with the test pattern on loopback, its stderr in a file.
pub struct ServerProc {
    pub child: Reaper,
    pub addr: SocketAddr,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    pub async fn start(extra: &[&str]) -> anyhow::Result<ServerProc> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(server_exe()?)
            .args([
                "--source",
                "test",
                "--size",
                "160x120",
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--http-port",
                "0",
                "--rtsp-port",
                "0",
                "--motion",
                "off",
            ])
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let proc = ServerProc {
            child: Reaper(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
            _dir: dir,
        };
        proc.wait_log("surv-server ready").await?;
        Ok(proc)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub async fn wait_log(&self, what: &str) -> anyhow::Result<()> {
        let until = Instant::now() + WAIT;
        while !self.log().contains(what) {
            if Instant::now() > until {
                bail!("no {what:?} from the server; its log:\n{}", self.log());
            }
            sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
