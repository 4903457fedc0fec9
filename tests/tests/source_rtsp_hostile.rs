//! End to end: a hostile RTSP camera as surv's source (issue 23). The "camera" is written here: a
//! loopback listener that answers OPTIONS as a camera does and DESCRIBE with a message that never
//! ends: a `Content-Length` of a billion bytes and a body streamed as fast as surv reads it, or a
//! header line with no end. surv must refuse the message before buffering it: the source is lost
//! with a reason that names the size, and this process (the server runs in it) stays under
//! [`RSS_LIMIT`] resident all along.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_server::sources::rtsp::RtspSource;
use surv_server::sources::spec::RtspTransport;
use surv_tests::{heavy, start_server_with, ServerOpts, IO_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

/// What the process may hold resident, server and camera included (about 10 MiB in use).
const RSS_LIMIT: u64 = 128 << 20;
/// How long the camera streams at most.
const HOSTILE_FOR: Duration = Duration::from_secs(20);
/// The `Content-Length` the camera claims.
const CLAIMED: u64 = 1_000_000_000;
/// What the camera writes at a time.
const CHUNK: usize = 64 << 10;

/// How the camera answers DESCRIBE.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// `Content-Length: 1000000000`, then body bytes until that many are sent or surv hangs up.
    HugeBody,
    /// A header line that never ends (no CR LF, ever).
    EndlessHeader,
}

/// Resident memory of this process, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The hostile camera: serves one connection after another (surv reconnects after each loss)
/// until [`HOSTILE_FOR`] is over or `stop` is cancelled.
struct Camera {
    port: u16,
    /// Bytes of the DESCRIBE answers written so far (all connections).
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Camera {
    async fn start(answer: Answer) -> Camera {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let until = Instant::now() + HOSTILE_FOR;
        let task = tokio::spawn({
            let (sent, stop) = (sent.clone(), stop.clone());
            async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        a = timeout_at(until, listener.accept()) => a,
                    };
                    let Ok(Ok((tcp, _))) = accepted else { return };
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = timeout_at(until, serve(tcp, port, answer, &sent)) => {}
                    }
                }
            }
        });
        Camera {
            port,
            sent,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/hostile", self.port)
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        self.sent.load(Relaxed)
    }
}

/// One connection: answers OPTIONS as a camera does, then DESCRIBE the hostile way, streaming
/// until the claimed length is sent or surv hangs up (the caller bounds it in time).
async fn serve(mut tcp: TcpStream, port: u16, answer: Answer, sent: &AtomicU64) {
    let head = loop {
        let Some((method, cseq)) = read_request(&mut tcp).await else {
            return;
        };
        match method.as_str() {
            "OPTIONS" => {
                let ok = format!(
                    "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\
                     Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n"
                );
                if tcp.write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
            }
            "DESCRIBE" => {
                break match answer {
                    Answer::HugeBody => format!(
                        "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\
                         Content-Base: rtsp://127.0.0.1:{port}/hostile/\r\n\
                         Content-Type: application/sdp\r\nContent-Length: {CLAIMED}\r\n\r\n\
                         v=0\r\n"
                    ),
                    Answer::EndlessHeader => {
                        format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nX-Endless: ")
                    }
                }
            }
            _ => {
                let no = format!("RTSP/1.0 405 Method Not Allowed\r\nCSeq: {cseq}\r\n\r\n");
                let _ = tcp.write_all(no.as_bytes()).await;
                return;
            }
        }
    };
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    sent.fetch_add(head.len() as u64, Relaxed);
    let chunk = vec![b'a'; CHUNK];
    let mut body = 0u64;
    while body < CLAIMED {
        if tcp.write_all(&chunk).await.is_err() {
            return;
        }
        body += CHUNK as u64;
        sent.fetch_add(CHUNK as u64, Relaxed);
    }
}

/// Reads one request head (bounded: 8 KiB) and returns its method and `CSeq`.
async fn read_request(tcp: &mut TcpStream) -> Option<(String, u32)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8 << 10 {
            return None;
        }
        let n = tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let method = text.split(' ').next()?.to_string();
    let cseq = text
        .lines()
        .find_map(|l| l.strip_prefix("CSeq:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some((method, cseq))
}

/// Samples this process's RSS every 10 ms until `stop` and returns the highest seen. Past
/// [`RSS_LIMIT`] it stops the camera at once: the test has failed, and the machine need not
/// find out how far an unbounded buffer would grow.
fn watch_rss(stop: CancellationToken, camera: CancellationToken) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let until = Instant::now() + HOSTILE_FOR + IO_TIMEOUT;
        let mut peak = 0;
        while Instant::now() < until && !stop.is_cancelled() {
            peak = peak.max(rss_bytes());
            if peak > RSS_LIMIT {
                camera.cancel();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    })
}

/// surv against the camera answering `answer`: the source is lost with a reason naming the
/// size, never a frame is captured, and the process stays under [`RSS_LIMIT`].
async fn refused_before_buffered(answer: Answer, reason_says: &[&str]) {
    let _serial = heavy().await;
    let cam = Camera::start(answer).await;
    let before = rss_bytes();
    let watching = CancellationToken::new();
    let peak = watch_rss(watching.clone(), cam.stop.clone());
    let source = RtspSource::new(&cam.url(), RtspTransport::Tcp, 8 << 20).unwrap();
    let srv = start_server_with(ServerOpts::sized(640, 480), Box::new(source))
        .await
        .expect("server starts");
    let lost = srv.wait_journal(|l| l.contains("SOURCE-LOST")).await;
    // A second more: the capture path reconnects, and the camera answers each attempt alike
    // (the RSS is watched throughout).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let captured = srv
        .server
        .first_camera()
        .capture
        .stats
        .captured
        .load(Relaxed);
    srv.stop().await.unwrap();
    let sent = cam.stop().await;
    watching.cancel();
    let peak = peak.await.unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "{answer:?}: RSS {:.1} MiB before the server, {:.1} MiB at most; the camera sent {:.1} MiB",
        mib(before),
        mib(peak),
        mib(sent)
    );
    assert!(
        peak < RSS_LIMIT,
        "{answer:?}: the process reached {:.1} MiB resident (from {:.1} MiB) while the camera \
         sent {:.1} MiB",
        mib(peak),
        mib(before),
        mib(sent)
    );
    let lost = lost.unwrap();
    eprintln!("{answer:?}: {lost}");
    for says in reason_says {
        assert!(lost.contains(says), "{answer:?}: {says:?} not in {lost}");
    }
    assert_eq!(captured, 0, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_body_of_a_billion_bytes_is_refused_before_it_is_buffered() {
    refused_before_buffered(Answer::HugeBody, &["Content-Length 1000000000", "262144"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_describe_header_is_refused_before_it_is_buffered() {
    refused_before_buffered(Answer::EndlessHeader, &["262144"]).await;
}
