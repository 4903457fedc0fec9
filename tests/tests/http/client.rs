//! The HTTP side of the tests: a test server with its HTTP server, a GET as small as the tests
//! need, a `/stream.mjpg` reader that checks every part, and a strict reader of the
//! OpenMetrics text.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use surv_proto::FrameTag;
use surv_server::capture::SourceState;
use surv_tests::{output_within, start_server, ServerOpts, TestServer, IO_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// A test server with its HTTP server.
pub struct Web {
    pub srv: TestServer,
    pub http: SocketAddr,
    task: JoinHandle<()>,
}

/// Starts a test server and its HTTP server; returns once the source counts as live (the
/// sink marks it live just after publishing the first frame, which `start_server` waits for).
pub async fn start_web(opts: ServerOpts) -> Web {
    let srv = start_server(opts).await.unwrap();
    let until = Instant::now() + IO_TIMEOUT;
    while srv.server.first_camera().capture.state() != SourceState::Live {
        assert!(Instant::now() < until, "the source never went live");
        sleep(Duration::from_millis(5)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let task = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));
    Web { srv, http, task }
}

impl Web {
    /// Shuts down and returns the journal, once the HTTP watchers have written their LEAVE.
    pub async fn stop(self) -> Vec<String> {
        self.srv.shutdown.cancel();
        timeout(IO_TIMEOUT, self.task)
            .await
            .expect("the http server did not stop")
            .unwrap();
        self.srv.stop().await.unwrap()
    }
}

type Headers = Vec<(String, String)>;

/// A response, read whole.
pub use surv_tests::http::Response as Reply;

/// The largest body a test reads whole (a recording or an HLS segment is far smaller).
const MAX_BODY_BYTES: usize = 64 << 20;

/// Splits a response head from its body: status, headers, where the body starts.
fn parse_head(bytes: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    get_with(addr, path, &[]).await
}

/// `GET path` with these extra request headers.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let req = surv_tests::http::Request::get(path).headers(headers);
    let limits = surv_tests::http::Limits::new(IO_TIMEOUT, MAX_BODY_BYTES);
    surv_tests::http::request(addr, &req, limits).await
}

/// One frame of an MJPEG stream as a client got it.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub seq: u64,
}

/// A `/stream.mjpg` client that parses each part by its Content-Length.
pub struct MjpegReader {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl MjpegReader {
    /// Connects; a receive buffer of `rcvbuf` bytes when given (a client whose socket holds
    /// little, so that a server which queued frames would show it).
    pub async fn open(addr: SocketAddr, rcvbuf: Option<u32>) -> anyhow::Result<MjpegReader> {
        MjpegReader::open_path(addr, "/stream.mjpg", rcvbuf).await
    }

    /// [`MjpegReader::open`] on another path (a query string, say).
    pub async fn open_path(
        addr: SocketAddr,
        path: &str,
        rcvbuf: Option<u32>,
    ) -> anyhow::Result<MjpegReader> {
        let socket = TcpSocket::new_v4()?;
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n)?;
        }
        let mut tcp = timeout(IO_TIMEOUT, socket.connect(addr)).await??;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: surv\r\n\r\n").as_bytes())
            .await?;
        let mut r = MjpegReader {
            tcp,
            buf: Vec::new(),
        };
        let start = loop {
            if let Some((status, headers, start)) = parse_head(&r.buf) {
                if status != 200 {
                    bail!("status {status}");
                }
                let ctype = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let expected = format!(
                    "multipart/x-mixed-replace; boundary={}",
                    surv_server::http::BOUNDARY
                );
                if ctype != expected {
                    bail!("content type {ctype:?}");
                }
                break start;
            }
            r.fill().await?;
        };
        r.buf.drain(..start);
        Ok(r)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = timeout(IO_TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .context("nothing from the server within the timeout")??;
        if n == 0 {
            bail!("the server closed the stream");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// A whole part's JPEG from what has been read, if it is all there; checked: boundary,
    /// Content-Type, Content-Length, the JPEG, CRLF.
    fn take_part(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buf.len() > 4096 {
                bail!("no part headers in {} bytes", self.buf.len());
            }
            return Ok(None);
        };
        let headers = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let start = end + 4;
        let mut lines = headers.split("\r\n");
        let boundary = format!("--{}", surv_server::http::BOUNDARY);
        if lines.next() != Some(boundary.as_str()) {
            bail!("a part that does not start with the boundary: {headers:?}");
        }
        let (mut len, mut ctype) = (None, None);
        for l in lines {
            match l.split_once(": ") {
                Some(("Content-Length", v)) => len = v.parse::<usize>().ok(),
                Some(("Content-Type", v)) => ctype = Some(v.to_string()),
                _ => {}
            }
        }
        if ctype.as_deref() != Some("image/jpeg") {
            bail!("a part that is not image/jpeg: {headers:?}");
        }
        let len = len.context("a part without Content-Length")?;
        if self.buf.len() < start + len + 2 {
            return Ok(None);
        }
        let jpeg = self.buf[start..start + len].to_vec();
        if &self.buf[start + len..start + len + 2] != b"\r\n" {
            bail!("a part longer than its Content-Length");
        }
        self.buf.drain(..start + len + 2);
        Ok(Some(jpeg))
    }

    /// The next part's JPEG.
    async fn next_jpeg(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(jpeg) = self.take_part()? {
                return Ok(jpeg);
            }
            self.fill().await?;
        }
    }

    /// The next frame, its tag read.
    pub async fn next(&mut self) -> anyhow::Result<Got> {
        let jpeg = self.next_jpeg().await?;
        let tag = FrameTag::decode(&jpeg).context("a part without surv's tag")?;
        Ok(Got { seq: tag.seq })
    }

    /// Frames for `window`.
    pub async fn read_for(&mut self, window: Duration) -> anyhow::Result<Vec<Got>> {
        let until = Instant::now() + window;
        let mut got = Vec::new();
        while Instant::now() < until {
            got.push(self.next().await?);
        }
        Ok(got)
    }
}

/// Decodes a JPEG with turbojpeg: its size.
pub fn decode(jpeg: &[u8]) -> anyhow::Result<(usize, usize)> {
    let img = turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::RGB)?;
    Ok((img.width, img.height))
}

/// Share of the frames published between the first and last one seen that were seen.
pub fn share(seqs: &[u64]) -> f64 {
    match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => seqs.len() as f64 / (b - a + 1) as f64,
        _ => 0.0,
    }
}

/// The sequence numbers of the tagged JPEGs in a concatenation of JPEGs.
pub fn tagged_seqs(jpegs: &[u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut at = 0;
    while let Some(i) = jpegs[at..]
        .windows(4)
        .position(|w| w == [0xFF, 0xD8, 0xFF, 0xFE])
    {
        if let Ok(tag) = FrameTag::decode(&jpegs[at + i..]) {
            seqs.push(tag.seq);
        }
        at += i + 4;
    }
    seqs
}

/// ffmpeg reads the stream as a player would and copies `frames` JPEGs into an AVI.
pub fn ffmpeg_reads(url: &str, frames: u32, out: &std::path::Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-rw_timeout", "10000000"])
        .args(["-use_wallclock_as_timestamps", "1", "-i", url])
        .args([
            "-frames:v",
            &frames.to_string(),
            "-c",
            "copy",
            "-f",
            "avi",
            "-y",
        ])
        .arg(out);
    let res = output_within(&mut cmd, Duration::from_secs(60))?;
    if !res.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&res.stderr));
    }
    Ok(())
}

/// Every line of `/metrics` is OpenMetrics text: descriptors, then samples of the family just
/// described, `# EOF` last. Returns the samples by name and labels.
pub fn parse_metrics(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut samples = Vec::new();
    let mut family: Option<(String, String)> = None;
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            bail!("a line after # EOF: {line:?}");
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name), Some(value)) = (kind, name, value) else {
                bail!("a bad descriptor: {line:?}");
            };
            match kind {
                "HELP" => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram"].contains(&value) {
                        bail!("a bad type: {line:?}");
                    }
                    family = Some((name.to_string(), value.to_string()));
                }
                "UNIT" => {}
                _ => bail!("a bad descriptor: {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample without a value")?;
        let value: f64 = value.parse().with_context(|| format!("{line:?}"))?;
        let name = series.split('{').next().unwrap_or_default();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            bail!("a bad name: {line:?}");
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'))) {
                bail!("bad labels: {line:?}");
            }
            for pair in labels
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once('=').context("a label without =")?;
                if k.is_empty() || !(v.starts_with('"') && v.ends_with('"') && v.len() >= 2) {
                    bail!("a bad label: {line:?}");
                }
            }
        }
        let Some((fam, kind)) = &family else {
            bail!("a sample before any # TYPE: {line:?}");
        };
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "gauge" => &[""],
            _ => &["_sum", "_count", "_bucket"],
        };
        if !suffixes.iter().any(|s| name == format!("{fam}{s}")) {
            bail!("sample {name} is not of the family {fam} ({kind})");
        }
        samples.push((series.to_string(), value));
    }
    if !saw_eof {
        bail!("no # EOF");
    }
    Ok(samples)
}

/// Resident memory of this process (server and clients), bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Reads the stream at about a tenth of its byte rate, in bounded reads; returns the frames.
pub async fn read_slowly(mut r: MjpegReader, window: Duration, bytes_per_s: usize) -> Vec<Got> {
    let until = Instant::now() + window;
    let mut got = Vec::new();
    // Twenty reads a second of a twentieth each.
    let mut buf = vec![0u8; (bytes_per_s / 20).max(1)];
    while Instant::now() < until {
        while let Some(jpeg) = r.take_part().unwrap() {
            let tag = FrameTag::decode(&jpeg).unwrap();
            got.push(Got { seq: tag.seq });
        }
        let n = timeout(IO_TIMEOUT, r.tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed a slow client");
        r.buf.extend_from_slice(&buf[..n]);
        sleep(Duration::from_millis(50)).await;
    }
    got
}
