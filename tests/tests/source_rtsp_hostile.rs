//! End to end: a hostile RTSP camera as surv's source (issue 23). The "camera" is written here: a
//! loopback listener that answers OPTIONS as a camera does and DESCRIBE with a message that never
//! ends: a `Content-Length` of a billion bytes and a body streamed as fast as surv reads it, or a
//! header line with no end. Or it plays an H.264 stream whose one access unit never ends: FU-A
//! fragments of one picture, all with the same timestamp, none with the marker bit. surv must
//! refuse the message (or access unit) before buffering it: the source is lost with a reason that
//! names the size, and this process (the server runs in it) stays under [`RSS_LIMIT`] resident
//! all along.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_server::sources::rtsp::RtspSource;
use surv_server::sources::spec::RtspTransport;
use surv_tests::{heavy, start_server_with, ServerOpts, IO_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

/// What the process may hold resident, server and camera included (about 10 MiB in use; 24 to
/// 31 MiB seen against the endless access unit: a connection's read buffer grows to 16 MiB before
/// its access unit is refused; then retina sends the TEARDOWN without waiting for an answer
/// behind the flood and closes it, and glibc gives the buffer back at once, as main sets it up).
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
    /// A proper DESCRIBE (one H.264 track), SETUP (interleaved over the RTSP connection) and
    /// PLAY, then RTP: FU-A fragments of one IDR picture, 1,400 bytes each as cameras send them,
    /// all with timestamp 0, none with the marker bit, and no end fragment, ever.
    EndlessAccessUnit,
}

/// The H.264 track's SPS and PPS (High profile, level 3; from retina's own tests).
const SPROP_PARAMETER_SETS: &str = "Z2QAHqwsaoLA9puCgIKgAAADACAAAAMD0IAA,aO4xshsA";
/// Payload bytes in each FU-A fragment.
const FRAGMENT: usize = 1400;
/// Fragments per write (about 64 KiB).
const PER_WRITE: usize = 46;

/// Resident memory of this process, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The hostile camera: serves each connection (surv reconnects after each loss) until
/// [`HOSTILE_FOR`] is over or `stop` is cancelled.
struct Camera {
    port: u16,
    /// Bytes of the hostile answers (DESCRIBE, or RTP) written so far (all connections).
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
                // Each connection on its own: a session surv gave up on may stay open a while
                // (retina tries a TEARDOWN on it) while surv reconnects.
                let mut connections = JoinSet::new();
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => break,
                        a = timeout_at(until, listener.accept()) => a,
                    };
                    let Ok(Ok((tcp, _))) = accepted else { break };
                    let (sent, stop) = (sent.clone(), stop.clone());
                    connections.spawn(async move {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            _ = timeout_at(until, serve(tcp, port, answer, &sent)) => {}
                        }
                    });
                }
                connections.shutdown().await;
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

/// One connection: answers OPTIONS as a camera does, then DESCRIBE (and for
/// [`Answer::EndlessAccessUnit`] SETUP and PLAY) the hostile way, streaming until the claimed
/// length is sent or surv hangs up (the caller bounds it in time).
async fn serve(mut tcp: TcpStream, port: u16, answer: Answer, sent: &AtomicU64) {
    loop {
        let Some((method, cseq)) = read_request(&mut tcp).await else {
            return;
        };
        let ok = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n");
        let reply = match (method.as_str(), answer) {
            ("OPTIONS", _) => {
                format!("{ok}Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n")
            }
            ("DESCRIBE", Answer::HugeBody) => {
                let head = format!(
                    "{ok}Content-Base: rtsp://127.0.0.1:{port}/hostile/\r\n\
                     Content-Type: application/sdp\r\nContent-Length: {CLAIMED}\r\n\r\n\
                     v=0\r\n"
                );
                return stream_body(&mut tcp, &head, sent).await;
            }
            ("DESCRIBE", Answer::EndlessHeader) => {
                return stream_body(&mut tcp, &format!("{ok}X-Endless: "), sent).await;
            }
            ("DESCRIBE", Answer::EndlessAccessUnit) => {
                let sdp = format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=hostile\r\nc=IN IP4 0.0.0.0\r\n\
                     t=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                     a=fmtp:96 packetization-mode=1;profile-level-id=64001E;\
                     sprop-parameter-sets={SPROP_PARAMETER_SETS}\r\na=control:trackID=0\r\n"
                );
                format!(
                    "{ok}Content-Base: rtsp://127.0.0.1:{port}/hostile/\r\n\
                     Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                    sdp.len()
                )
            }
            ("SETUP", Answer::EndlessAccessUnit) => format!(
                "{ok}Session: 5e55104;timeout=60\r\n\
                 Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
            ),
            ("PLAY", Answer::EndlessAccessUnit) => {
                let play = format!("{ok}Session: 5e55104\r\nRange: npt=0.000-\r\n\r\n");
                if tcp.write_all(play.as_bytes()).await.is_err() {
                    return;
                }
                return stream_endless_access_unit(&mut tcp, sent).await;
            }
            _ => {
                let no = format!("RTSP/1.0 405 Method Not Allowed\r\nCSeq: {cseq}\r\n\r\n");
                let _ = tcp.write_all(no.as_bytes()).await;
                return;
            }
        };
        if tcp.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Writes `head`, then body bytes until the claimed length is sent or surv hangs up.
async fn stream_body(tcp: &mut TcpStream, head: &str, sent: &AtomicU64) {
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

/// Interleaved RTP on channel 0 until surv hangs up: FU-A fragments of one IDR picture (NAL
/// type 5), in sequence, all with timestamp 0, the first with the start bit, none with the end
/// bit or the marker bit.
async fn stream_endless_access_unit(tcp: &mut TcpStream, sent: &AtomicU64) {
    const RTP_LEN: usize = 12 + 2 + FRAGMENT;
    let mut seq = 0u16;
    let mut first = true;
    let mut batch = Vec::with_capacity(PER_WRITE * (4 + RTP_LEN));
    loop {
        batch.clear();
        for _ in 0..PER_WRITE {
            batch.extend_from_slice(&[b'$', 0]);
            batch.extend_from_slice(&(RTP_LEN as u16).to_be_bytes());
            // RTP: version 2, no marker, payload type 96, sequence, timestamp 0, SSRC.
            batch.extend_from_slice(&[0x80, 96]);
            batch.extend_from_slice(&seq.to_be_bytes());
            batch.extend_from_slice(&0u32.to_be_bytes());
            batch.extend_from_slice(&0x5e55_1045u32.to_be_bytes());
            // FU indicator (NRI 3, type 28), FU header (start bit on the first, type 5).
            batch.extend_from_slice(&[0x7c, if first { 0x85 } else { 0x05 }]);
            batch.resize(batch.len() + FRAGMENT, 0xab);
            seq = seq.wrapping_add(1);
            first = false;
        }
        if tcp.write_all(&batch).await.is_err() {
            return;
        }
        sent.fetch_add(batch.len() as u64, Relaxed);
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

/// surv against the camera answering `answer`: the source is lost with a short reason naming the
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
    // One short line: retina's error and the camera's address, without the hex dump of what it
    // had buffered or the rest of its connection details.
    assert!(
        !lost.contains("0000:") && !lost.contains("(me)") && lost.len() < 500,
        "{answer:?}: {} bytes: {lost}",
        lost.len()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_h264_access_unit_is_refused_before_it_is_buffered() {
    refused_before_buffered(Answer::EndlessAccessUnit, &["H.264 access unit", "8388608"]).await;
}
