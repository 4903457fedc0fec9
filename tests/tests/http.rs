//! The HTTP server end to end, with real clients on loopback: ffmpeg reading `/stream.mjpg`,
//! raw MJPEG readers that keep up, read slowly or stop reading, `/snapshot.jpg`, `/status`
//! and `/metrics` as a person or a scraper would read them, and the journal's JOIN/LEAVE.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use surv_proto::FrameTag;
use surv_server::{Config, RefusalCause};
use surv_tests::{
    ffmpeg_check, heavy, mjpeg_stream, output_within, probe, start_server, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// A test server with its HTTP server.
struct Web {
    srv: TestServer,
    http: SocketAddr,
    task: JoinHandle<()>,
}

async fn start_web(opts: ServerOpts) -> Web {
    let srv = start_server(opts).await.unwrap();
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
    async fn stop(self) -> Vec<String> {
        self.srv.shutdown.cancel();
        timeout(IO_TIMEOUT, self.task)
            .await
            .expect("the http server did not stop")
            .unwrap();
        self.srv.stop().await.unwrap()
    }
}

/// A response, read whole (HTTP/1.0: the server closes after it).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a response head from its body: status, headers, where the body starts.
fn parse_head(bytes: &[u8]) -> Option<(u16, Vec<(String, String)>, usize)> {
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

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    timeout(IO_TIMEOUT, async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: surv\r\n\r\n").as_bytes())
            .await?;
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).await?;
        let (status, headers, start) = parse_head(&all).context("no response head")?;
        Ok(Reply {
            status,
            headers,
            body: all[start..].to_vec(),
        })
    })
    .await
    .context("no whole response within the timeout")?
}

/// One frame of an MJPEG stream as a client got it.
#[derive(Debug, Clone, Copy)]
struct Got {
    seq: u64,
}

/// A `/stream.mjpg` client that parses each part by its Content-Length.
struct MjpegReader {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl MjpegReader {
    /// Connects; a receive buffer of `rcvbuf` bytes when given (a client whose socket holds
    /// little, so that a server which queued frames would show it).
    async fn open(addr: SocketAddr, rcvbuf: Option<u32>) -> anyhow::Result<MjpegReader> {
        let socket = TcpSocket::new_v4()?;
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n)?;
        }
        let mut tcp = timeout(IO_TIMEOUT, socket.connect(addr)).await??;
        tcp.write_all(b"GET /stream.mjpg HTTP/1.0\r\nHost: surv\r\n\r\n")
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

    /// The next part's JPEG, checked: boundary, Content-Type, Content-Length, the JPEG, CRLF.
    async fn next_jpeg(&mut self) -> anyhow::Result<Vec<u8>> {
        let (headers, start) = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                break (head, end + 4);
            }
            if self.buf.len() > 4096 {
                bail!("no part headers in {} bytes", self.buf.len());
            }
            self.fill().await?;
        };
        let mut lines = headers.split("\r\n");
        let boundary = format!("--{}", surv_server::http::BOUNDARY);
        assert_eq!(lines.next(), Some(boundary.as_str()), "{headers:?}");
        let mut len = None;
        let mut ctype = None;
        for l in lines {
            match l.split_once(": ") {
                Some(("Content-Length", v)) => len = v.parse::<usize>().ok(),
                Some(("Content-Type", v)) => ctype = Some(v.to_string()),
                _ => {}
            }
        }
        assert_eq!(ctype.as_deref(), Some("image/jpeg"), "{headers:?}");
        let len = len.context("a part without Content-Length")?;
        while self.buf.len() < start + len + 2 {
            self.fill().await?;
        }
        let jpeg = self.buf[start..start + len].to_vec();
        assert_eq!(&self.buf[start + len..start + len + 2], b"\r\n");
        self.buf.drain(..start + len + 2);
        Ok(jpeg)
    }

    /// The next frame, its tag read.
    async fn next(&mut self) -> anyhow::Result<Got> {
        let jpeg = self.next_jpeg().await?;
        let tag = FrameTag::decode(&jpeg).context("a part without surv's tag")?;
        Ok(Got { seq: tag.seq })
    }

    /// Frames for `window`.
    async fn read_for(&mut self, window: Duration) -> anyhow::Result<Vec<Got>> {
        let until = Instant::now() + window;
        let mut got = Vec::new();
        while Instant::now() < until {
            got.push(self.next().await?);
        }
        Ok(got)
    }
}

/// Decodes a JPEG with turbojpeg: its size.
fn decode(jpeg: &[u8]) -> anyhow::Result<(usize, usize)> {
    let img = turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::RGB)?;
    Ok((img.width, img.height))
}

/// Share of the frames published between the first and last one seen that were seen.
fn share(seqs: &[u64]) -> f64 {
    match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => seqs.len() as f64 / (b - a + 1) as f64,
        _ => 0.0,
    }
}

/// The sequence numbers of the tagged JPEGs in a concatenation of JPEGs.
fn tagged_seqs(jpegs: &[u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut at = 0;
    while let Some(i) = jpegs[at..].windows(4).position(|w| w == [0xFF, 0xD8, 0xFF, 0xFE]) {
        if let Ok(tag) = FrameTag::decode(&jpegs[at + i..]) {
            seqs.push(tag.seq);
        }
        at += i + 4;
    }
    seqs
}

/// ffmpeg reads the stream as a player would and copies `frames` JPEGs into an AVI.
fn ffmpeg_reads(url: &str, frames: u32, out: &std::path::Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-rw_timeout", "10000000"])
        .args(["-use_wallclock_as_timestamps", "1", "-i", url])
        .args(["-frames:v", &frames.to_string(), "-c", "copy", "-f", "avi", "-y"])
        .arg(out);
    let res = output_within(&mut cmd, Duration::from_secs(60))?;
    if !res.status.success() {
        bail!("ffmpeg: {}", String::from_utf8_lossy(&res.stderr));
    }
    Ok(())
}

/// ffmpeg, an independent MJPEG client, reads `/stream.mjpg` (both part layouts): every frame
/// decodes strictly, and it got ≥ 90 % of the frames published while it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_reads_the_stream_at_the_full_rate() {
    let _serial = heavy().await;
    let web = start_web(ServerOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for query in ["", "?advance_headers=1"] {
        let url = format!("http://{}/stream.mjpg{query}", web.http);
        let out = dir.path().join("got.avi");
        let frames = 75;
        let run = {
            let (url, out) = (url.clone(), out.clone());
            tokio::task::spawn_blocking(move || ffmpeg_reads(&url, frames, &out))
        };
        run.await.unwrap().unwrap();
        ffmpeg_check(&out).unwrap();
        let p = probe(&out).unwrap();
        assert_eq!((p.width, p.height, p.frames), (640, 480, u64::from(frames)), "{url}");
        let seqs = tagged_seqs(&mjpeg_stream(&out).unwrap());
        assert_eq!(seqs.len(), frames as usize, "{url}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{url}: {seqs:?}");
        assert!(share(&seqs) >= 0.90, "{url}: {:.1} %: {seqs:?}", share(&seqs) * 100.0);
    }
    let journal = web.stop().await;
    let leaves: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("LEAVE") && l.contains("form=http"))
        .collect();
    assert_eq!(leaves.len(), 2, "{journal:#?}");
    assert!(leaves.iter().all(|l| l.contains("reason=closed")), "{leaves:#?}");
}

/// `/snapshot.jpg` is the newest frame and decodes; `/status` says what the page shows and has
/// a row per watcher; the page is there.
#[tokio::test]
async fn snapshot_status_and_page() {
    let web = start_web(ServerOpts::sized(320, 240)).await;
    let mut a = MjpegReader::open(web.http, None).await.unwrap();
    let mut b = MjpegReader::open(web.http, None).await.unwrap();
    for _ in 0..3 {
        a.next().await.unwrap();
        b.next().await.unwrap();
    }

    let snap = get(web.http, "/snapshot.jpg").await.unwrap();
    assert_eq!((snap.status, snap.header("content-type")), (200, Some("image/jpeg")));
    assert_eq!(decode(&snap.body).unwrap(), (320, 240));
    let seq = FrameTag::decode(&snap.body).unwrap().seq;
    let newest = web.srv.server.frames.borrow().as_ref().unwrap().seq;
    assert!(newest - seq <= 3, "snapshot {seq}, newest {newest}");

    let reply = get(web.http, "/status").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let s: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(s["source"]["description"], "test pattern 320x240@30", "{s:#}");
    assert_eq!(s["source"]["state"], "live");
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(320), Some(240)));
    assert_eq!(s["fps"], 30);
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(s["encoder"]["quality"].as_u64().unwrap() > 0);
    assert_eq!(s["encoder"]["max_datagram_bytes"], surv_proto::DEFAULT_MAX_DATAGRAM_BYTES);
    for counter in ["captured", "encoded", "passed_through", "rejected", "frames_sent", "frames_skipped", "refused"] {
        assert!(s["counters"][counter].is_u64(), "{counter}: {s:#}");
    }
    assert!(s["counters"]["frames_sent"].as_u64().unwrap() >= 6);
    assert_eq!(s["watchers"]["total"], 2);
    assert_eq!(s["watchers"]["by_kind"]["http"], 2);
    assert_eq!(s["watchers"]["by_kind"]["surv1"], 0);
    let rows = s["sessions"].as_array().unwrap();
    let mut addresses: Vec<&str> = rows.iter().map(|r| r["address"].as_str().unwrap()).collect();
    addresses.sort();
    let mut ours = [a.tcp.local_addr().unwrap().to_string(), b.tcp.local_addr().unwrap().to_string()];
    ours.sort();
    assert_eq!(addresses, ours);
    for r in rows {
        assert_eq!(r["kind"], "http");
        assert!(r["frames_sent"].as_u64().unwrap() >= 3, "{r}");
        assert!(r["frames_skipped"].is_u64() && r["since"].is_string(), "{r}");
    }

    let page = get(web.http, "/").await.unwrap();
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<img id=\"stream\" src=\"stream.mjpg"), "{html}");
    assert!(html.contains("name=\"viewport\""));
    assert_eq!(get(web.http, "/nothing").await.unwrap().status, 404);
    drop((a, b));
    web.stop().await;
}

/// Every line of `/metrics` is OpenMetrics text: descriptors, then samples of the family just
/// described, `# EOF` last. Returns the samples by name and labels.
fn parse_metrics(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut samples = Vec::new();
    let mut family: Option<(String, String)> = None;
    let mut lines = text.lines().peekable();
    let mut saw_eof = false;
    while let Some(line) = lines.next() {
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
            if !labels.is_empty() && !(labels.starts_with('{') && labels.ends_with('}')) {
                bail!("bad labels: {line:?}");
            }
            for pair in labels.trim_matches(|c| c == '{' || c == '}').split(',').filter(|p| !p.is_empty()) {
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

/// `/metrics` parses strictly and its figures are the server's; a watcher past
/// `--max-viewers` is refused with 503, journalled, and counted by reason.
#[tokio::test]
async fn metrics_and_refusals() {
    let mut opts = ServerOpts::sized(320, 240);
    opts.config = Config {
        max_viewers: 1,
        ..Config::default()
    };
    let web = start_web(opts).await;
    let mut a = MjpegReader::open(web.http, None).await.unwrap();
    a.next().await.unwrap();
    let refused = get(web.http, "/stream.mjpg").await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(String::from_utf8_lossy(&refused.body), "server full (1 viewers)\n");
    web.srv
        .wait_journal(|l| l.contains("REFUSE") && l.contains("form=http") && l.contains("server full"))
        .await
        .unwrap();

    let reply = get(web.http, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(reply.body).unwrap();
    let samples = parse_metrics(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("surv_watchers{kind=\"http\"}"), 1.0);
    assert_eq!(value("surv_watchers{kind=\"seed\"}"), 0.0);
    assert_eq!(value("surv_refusals_total{reason=\"full\"}"), 1.0);
    assert_eq!(web.srv.server.stats.refusals.get(RefusalCause::Full), 1);
    assert_eq!(value("surv_source_state{state=\"live\"}"), 1.0);
    assert!(value("surv_frames_captured_total") >= value("surv_frames_encoded_total"));
    assert!(value("surv_frames_encoded_total") > 0.0);
    assert!(value("surv_frames_sent_total") >= 1.0);
    assert!(value("surv_encode_seconds_count") > 0.0);
    assert_eq!(
        value("surv_encode_seconds_bucket{le=\"+Inf\"}"),
        value("surv_encode_seconds_count")
    );
    for series in ["surv_source_lost_total", "surv_source_failures_total", "surv_acks_total", "surv_sent_bytes_total", "surv_frames_skipped_total", "surv_frames_passed_through_total"] {
        value(series);
    }
    drop(a);
    web.stop().await;
}

/// JOIN/LEAVE with form=http: a client that goes is `closed`, one that stops reading is
/// `timeout` after the write deadline, one still reading at shutdown is `shutdown`.
#[tokio::test]
async fn http_watchers_join_and_leave_with_a_reason() {
    let mut opts = ServerOpts::sized(320, 240);
    opts.config = Config {
        http_write_deadline: Duration::from_secs(1),
        ..Config::default()
    };
    let web = start_web(opts).await;
    let journal_port = |r: &MjpegReader| format!("viewer={}", r.tcp.local_addr().unwrap());

    let mut goes = MjpegReader::open(web.http, None).await.unwrap();
    goes.next().await.unwrap();
    let goes_at = journal_port(&goes);
    drop(goes);
    let line = web
        .srv
        .wait_journal(|l| l.contains("LEAVE") && l.contains(&goes_at))
        .await
        .unwrap();
    assert!(line.contains("form=http") && line.contains("reason=closed"), "{line}");

    let stops = MjpegReader::open(web.http, Some(4096)).await.unwrap();
    let stops_at = journal_port(&stops);
    let mut stays = MjpegReader::open(web.http, None).await.unwrap();
    let stays_at = journal_port(&stays);
    let started = Instant::now();
    // The one that stays reads on while the other's buffers fill and its deadline passes.
    let line = loop {
        stays.next().await.unwrap();
        let found = web
            .srv
            .journal()
            .into_iter()
            .find(|l| l.contains("LEAVE") && l.contains(&stops_at));
        if let Some(l) = found {
            break l;
        }
        assert!(started.elapsed() < IO_TIMEOUT, "no LEAVE for the stalled client");
    };
    assert!(line.contains("form=http") && line.contains("reason=timeout"), "{line}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    drop(stops);

    let journal = web.stop().await;
    let leave = journal
        .iter()
        .find(|l| l.contains("LEAVE") && l.contains(&stays_at))
        .unwrap_or_else(|| panic!("{journal:#?}"));
    assert!(leave.contains("form=http") && leave.contains("reason=shutdown"), "{leave}");
    for at in [&goes_at, &stops_at, &stays_at] {
        let joins = journal.iter().filter(|l| l.contains("JOIN") && l.contains(at.as_str())).count();
        assert_eq!(joins, 1, "{at}: {journal:#?}");
    }
    drop(stays);
}

/// Resident memory of this process (server and clients), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Reads the stream at about a tenth of its byte rate, in bounded reads; returns the frames.
async fn read_slowly(mut r: MjpegReader, window: Duration, bytes_per_s: usize) -> Vec<Got> {
    let until = Instant::now() + window;
    let mut got = Vec::new();
    let chunk = bytes_per_s / 20;
    let mut buf = vec![0u8; chunk.max(1)];
    while Instant::now() < until {
        // Parse what is buffered, then take one more bounded read.
        while let Some(end) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&r.buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .expect("a part without Content-Length");
            if r.buf.len() < end + 4 + len + 2 {
                break;
            }
            let jpeg = &r.buf[end + 4..end + 4 + len];
            let tag = FrameTag::decode(jpeg).unwrap();
            got.push(Got { seq: tag.seq });
            r.buf.drain(..end + 4 + len + 2);
        }
        let n = timeout(IO_TIMEOUT, r.tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the server closed a slow client");
        r.buf.extend_from_slice(&buf[..n]);
        sleep(Duration::from_millis(50)).await;
    }
    got
}

/// Two slow clients (a tenth of the rate) and two that stop reading do not disturb a normal
/// one (≥ 99 % of the frames in the window); the slow ones skip to newer frames instead of
/// being queued every one; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_clients_do_not_disturb_a_normal_one() {
    let _serial = heavy().await;
    let web = start_web(ServerOpts::default()).await;
    let frame_bytes = web.srv.server.frames.borrow().as_ref().unwrap().datagram.len();
    eprintln!("frame {frame_bytes} B");
    let rate_bytes = frame_bytes * 30;
    let rss_before = rss_bytes();
    let window = Duration::from_secs(4);

    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(MjpegReader::open(web.http, Some(8192)).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..2 {
        let r = MjpegReader::open(web.http, Some(16 * 1024)).await.unwrap();
        slow.push(tokio::spawn(read_slowly(r, window, rate_bytes / 10)));
    }
    let mut normal = MjpegReader::open(web.http, None).await.unwrap();
    // Settle: the first part, then the window.
    normal.next().await.unwrap();
    let got = normal.read_for(window).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    let normal_share = share(&seqs);
    assert!(
        normal_share >= 0.99,
        "the normal client got {:.1} % ({} frames): {seqs:?}",
        normal_share * 100.0,
        seqs.len()
    );
    assert!(seqs.len() as f64 >= 0.9 * 30.0 * window.as_secs_f64(), "{}", seqs.len());

    for s in slow {
        let got = s.await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
        eprintln!("a slow client got {seqs:?}");
        assert!(seqs.len() >= 3, "a slow client got {seqs:?}");
        // It was sent the newest frame each time it could take one, not a queue of every frame.
        assert!(share(&seqs) < 0.5, "a slow client got {:.0} %: {seqs:?}", share(&seqs) * 100.0);
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    eprintln!("normal: {} frames, {:.1} %; RSS grew {} KiB", seqs.len(), normal_share * 100.0, grown >> 10);
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(stalled);
    web.stop().await;
}
