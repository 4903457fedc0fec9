//! Cameras that misbehave as cheap cameras and attackers do, against the real sources and
//! capture path: a broken JPEG in a push stream costs that frame only; `FF D8 FF D9` and other
//! non-pictures are rejected and counted; an HTTP camera that stalls mid-part is lost within
//! the watchdog's bound and back when it resumes; idle connections do not keep a push camera
//! out; a still URL that turns into a stream is followed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use surv_server::capture::{Capture, CaptureConfig, CaptureShared, SourceState};
use surv_server::journal::{read_all, Journal};
use surv_server::sources::http::{Deadlines as HttpDeadlines, HttpSource};
use surv_server::sources::tcp::{Cause, TcpListenSource};
use surv_server::sources::udp::UdpSource;
use surv_server::sources::{Source, SourceOptions};
use surv_tests::fixtures::{broken_jpegs, Subsamp};
use surv_tests::standins::http::{multipart_head, part, Say, ScriptedHttp};
use surv_tests::{free_tcp_port, free_udp_port, heavy, test_jpeg, Picture, IO_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn picture(seed: u64) -> Vec<u8> {
    test_jpeg(320, 240, Picture::Gradient(seed), 80, Subsamp::Sub2x2)
}

/// A capture path on `source` with a journal in a temporary folder, as the server runs it.
struct Rig {
    capture: Capture,
    log_dir: tempfile::TempDir,
    _shutdown: CancellationToken,
}

impl Rig {
    fn start(source: Box<dyn Source>) -> Rig {
        let log_dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
        let shutdown = CancellationToken::new();
        let capture = Capture::start(source, CaptureConfig::default(), journal, &shutdown).unwrap();
        Rig {
            capture,
            log_dir,
            _shutdown: shutdown,
        }
    }

    fn shared(&self) -> &CaptureShared {
        &self.capture.shared
    }

    fn passed(&self) -> u64 {
        self.shared().stats.passed_through.load(Relaxed)
    }

    fn rejected(&self) -> u64 {
        self.shared().stats.rejected.load(Relaxed)
    }

    fn journal(&self) -> Vec<String> {
        read_all(self.log_dir.path()).unwrap_or_default()
    }

    /// Waits (bounded by `within`) for a journal line; returns it and when it was seen.
    async fn wait_journal(&self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        loop {
            if let Some(l) = self.journal().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < until,
                "no such journal line: {:#?}",
                self.journal()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `passed` reaches `n`, or until it stops growing for a second.
    async fn passed_reaches(&self, n: u64) -> u64 {
        let mut last = (self.passed(), Instant::now());
        let until = Instant::now() + IO_TIMEOUT;
        while Instant::now() < until {
            let now = self.passed();
            if now >= n {
                return now;
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) {
                return now;
            }
            sleep(Duration::from_millis(10)).await;
        }
        self.passed()
    }
}

/// How a push camera sends one JPEG.
enum Pusher {
    Udp(UdpSocket, SocketAddr),
    /// Seed 004's length-prefixed stream.
    Tcp(TcpStream),
}

impl Pusher {
    async fn connect(udp: bool, port: u16) -> Pusher {
        let to = SocketAddr::new(LOCALHOST, port);
        if udp {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            return Pusher::Udp(socket, to);
        }
        let until = Instant::now() + IO_TIMEOUT;
        let mut tcp = loop {
            match TcpStream::connect(to).await {
                Ok(t) => break t,
                Err(e) if Instant::now() > until => panic!("connecting to {to}: {e}"),
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        };
        tcp.write_all(&0u32.to_be_bytes()).await.unwrap();
        Pusher::Tcp(tcp)
    }

    async fn send(&mut self, jpeg: &[u8]) {
        match self {
            Pusher::Udp(s, to) => {
                s.send_to(jpeg, *to).await.unwrap();
            }
            Pusher::Tcp(t) => {
                let mut msg = (jpeg.len() as u32).to_be_bytes().to_vec();
                msg.extend_from_slice(jpeg);
                t.write_all(&msg).await.unwrap();
            }
        }
    }

    /// `n` good frames, 5 ms apart.
    async fn good(&mut self, n: usize, frames: &[Vec<u8>]) {
        for i in 0..n {
            self.send(&frames[i % frames.len()]).await;
            sleep(Duration::from_millis(5)).await;
        }
    }
}

/// 30 good frames, then for each broken form: the broken frame, then 150 good ones. Every
/// broken frame is rejected and counted, and at least 140 of each 150 good frames after it
/// are published (before the fix, one broken header made every later frame "unreadable").
async fn one_broken_jpeg_costs_one_frame(udp: bool) {
    let _serial = heavy().await;
    let frames: Vec<Vec<u8>> = (0..4).map(picture).collect();
    let opts = SourceOptions {
        max_frame_bytes: 200_000,
        ..SourceOptions::default()
    };
    let source: Box<dyn Source> = if udp {
        let port = free_udp_port();
        Box::new(UdpSource::new("127.0.0.1", port, &opts))
    } else {
        let port = free_tcp_port();
        Box::new(TcpListenSource::new("127.0.0.1", port, &opts))
    };
    let port: u16 = source
        .describe()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let rig = Rig::start(source);
    sleep(Duration::from_millis(200)).await;
    let mut cam = Pusher::connect(udp, port).await;
    cam.good(30, &frames).await;
    assert!(rig.passed_reaches(30).await >= 28, "{}", rig.passed());
    for (i, (what, bad)) in broken_jpegs(&frames[0]).into_iter().enumerate() {
        let (passed, rejected) = (rig.passed(), rig.rejected());
        cam.send(&bad).await;
        cam.good(150, &frames).await;
        let after = rig.passed_reaches(passed + 150).await - passed;
        assert!(after >= 140, "after {what}: {after} of 150 good frames");
        assert_eq!(rig.rejected(), rejected + 1, "{what} rejected and counted");
        assert_eq!(rig.shared().state(), SourceState::Live, "after {what}");
        assert_eq!(rig.shared().stats.rejected.load(Relaxed), i as u64 + 1);
    }
    assert!(!rig.journal().iter().any(|l| l.contains("SOURCE-LOST")));
    // What a viewer gets now is the camera's picture, not a 4-byte "frame".
    let newest = rig.capture.frames.borrow().clone().unwrap();
    assert_eq!((newest.width, newest.height), (320, 240));
    rig.capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_jpeg_pushed_over_udp_costs_one_frame() {
    one_broken_jpeg_costs_one_frame(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_jpeg_pushed_over_tcp_costs_one_frame() {
    one_broken_jpeg_costs_one_frame(false).await;
}

/// An MJPEG server whose parts are `FF D8 FF D9` (and other non-pictures) as fast as it can:
/// every one rejected and counted, none published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mjpeg_stream_of_non_pictures_publishes_nothing() {
    let _serial = heavy().await;
    let good = picture(1);
    let mut round = Vec::new();
    for (_, bad) in broken_jpegs(&good) {
        round.extend(part(
            "frame",
            &[("Content-Type", "image/jpeg".into())],
            &bad,
        ));
    }
    let script = vec![
        Say::Bytes(multipart_head("frame")),
        Say::Bytes(round),
        Say::Pause(Duration::from_millis(1)),
    ];
    let cam = ScriptedHttp::start(script, Some(1)).await.unwrap();
    let rig = Rig::start(Box::new(
        HttpSource::new(&cam.url("/"), &SourceOptions::default()).unwrap(),
    ));
    let until = Instant::now() + IO_TIMEOUT;
    while rig.rejected() < 1000 {
        assert!(Instant::now() < until, "{} rejected", rig.rejected());
        sleep(Duration::from_millis(20)).await;
    }
    let stats = &rig.shared().stats;
    assert_eq!(stats.captured.load(Relaxed), 0);
    assert_eq!(stats.published.load(Relaxed), 0);
    assert_ne!(rig.shared().state(), SourceState::Live);
    rig.capture.stop().await;
}

/// An HTTP camera sends 60 good parts, then a part whose bytes come one every 0.2 s: the
/// source is lost ("no frame for 5 s") 5 s after its last frame, reconnected, and back when
/// the camera's parts flow again (each connection gets the same script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_camera_stalled_mid_part_is_lost_and_comes_back() {
    let _serial = heavy().await;
    let frames: Vec<Vec<u8>> = (0..6).map(picture).collect();
    let mut script = vec![Say::Bytes(multipart_head("frame"))];
    for i in 0..60 {
        script.push(Say::Bytes(part(
            "frame",
            &[("Content-Type", "image/jpeg".into())],
            &frames[i % frames.len()],
        )));
        script.push(Say::Pause(Duration::from_millis(33)));
    }
    let stalled = part(
        "frame",
        &[("Content-Type", "image/jpeg".into())],
        &frames[0],
    );
    for b in stalled.iter().take(300) {
        script.push(Say::Bytes(vec![*b]));
        script.push(Say::Pause(Duration::from_millis(200)));
    }
    let cam = ScriptedHttp::start(script, None).await.unwrap();
    let opts = SourceOptions {
        fps: 30,
        ..SourceOptions::default()
    };
    let rig = Rig::start(Box::new(
        HttpSource::new(&cam.url("/live"), &opts)
            .unwrap()
            .with_deadlines(HttpDeadlines::default()),
    ));
    // The 60th frame: the stall starts after it.
    let until = Instant::now() + IO_TIMEOUT;
    while rig.shared().stats.captured.load(Relaxed) < 60 {
        assert!(Instant::now() < until);
        sleep(Duration::from_millis(5)).await;
    }
    let last_frame = Instant::now();
    let lost = rig
        .wait_journal(Duration::from_secs(10), |l| l.contains("SOURCE-LOST"))
        .await;
    let after = last_frame.elapsed();
    eprintln!("SOURCE-LOST {after:?} after the 60th frame was seen");
    assert!(lost.contains("no frame for 5 s"), "{lost}");
    assert!(
        after >= Duration::from_millis(4500) && after <= Duration::from_secs(8),
        "lost {after:?} after the last frame"
    );
    assert!(matches!(
        rig.shared().state(),
        SourceState::Lost(_) | SourceState::Live
    ));
    let back = rig
        .wait_journal(Duration::from_secs(5), |l| l.contains("SOURCE-BACK"))
        .await;
    assert!(back.contains("down_s="), "{back}");
    assert!(
        rig.shared().stats.no_signal.load(Relaxed) >= 1,
        "viewers were shown why"
    );
    rig.capture.stop().await;
}

/// Four idle connections to `tcp-listen://`, each reopened 200 ms after the server closes it,
/// do not keep the camera out: the oldest idle one makes room for each newcomer, and the
/// camera's first frame takes the source over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_keep_a_push_camera_out() {
    let _serial = heavy().await;
    let port = free_tcp_port();
    let at = SocketAddr::new(LOCALHOST, port);
    let source = TcpListenSource::new("127.0.0.1", port, &SourceOptions::default());
    let stats = source.stats();
    let rig = Rig::start(Box::new(source));
    sleep(Duration::from_millis(300)).await;
    // The idle connections: each reopened as it is closed, until the test ends.
    let idle_opened = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut idlers = Vec::new();
    for _ in 0..4 {
        let (stop, opened) = (stop.clone(), idle_opened.clone());
        idlers.push(tokio::spawn(async move {
            for _ in 0..200 {
                let Ok(mut tcp) = TcpStream::connect(at).await else {
                    return;
                };
                opened.fetch_add(1, Relaxed);
                let mut buf = [0u8; 16];
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tcp.read(&mut buf) => {}
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = sleep(Duration::from_millis(200)) => {}
                }
            }
        }));
    }
    sleep(Duration::from_millis(500)).await;
    let frames: Vec<Vec<u8>> = (0..4).map(picture).collect();
    let camera_at = Instant::now();
    let mut cam = Pusher::connect(false, port).await;
    let streaming = tokio::spawn(async move {
        cam.good(600, &frames).await; // about 3 s at 5 ms apart
        cam
    });
    let until = camera_at + Duration::from_secs(5);
    while rig.passed() < 10 {
        assert!(
            Instant::now() < until,
            "the camera was kept out: {} frames, {} idle connections opened",
            rig.passed(),
            idle_opened.load(Relaxed)
        );
        sleep(Duration::from_millis(10)).await;
    }
    let _cam = streaming.await.unwrap();
    assert!(
        rig.passed() >= 500,
        "{} frames while idlers churned",
        rig.passed()
    );
    assert!(
        stats.count(Cause::TooManyWaiting) >= 1,
        "an idle connection was closed for the camera"
    );
    assert_eq!(rig.shared().state(), SourceState::Live);
    stop.cancel();
    for i in idlers {
        let _ = i.await;
    }
    rig.capture.stop().await;
}

/// A URL that answered with a still image answers with an MJPEG stream later: surv follows it
/// instead of failing with "not an MJPEG stream".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_url_that_becomes_a_stream_is_followed() {
    let _serial = heavy().await;
    let still = picture(1);
    let streamed = picture(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        // The first request: a still, then the connection closes. Later ones: a stream of 200
        // parts.
        for n in 0..20 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            if n == 0 {
                let mut answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    still.len()
                )
                .into_bytes();
                answer.extend_from_slice(&still);
                let _ = tcp.write_all(&answer).await;
                continue;
            }
            let streamed = streamed.clone();
            tokio::spawn(async move {
                if tcp.write_all(&multipart_head("frame")).await.is_err() {
                    return;
                }
                for _ in 0..200 {
                    let p = part("frame", &[("Content-Type", "image/jpeg".into())], &streamed);
                    if tcp.write_all(&p).await.is_err() {
                        return;
                    }
                    sleep(Duration::from_millis(20)).await;
                }
            });
        }
    });
    let opts = SourceOptions {
        fps: 5,
        ..SourceOptions::default()
    };
    let rig = Rig::start(Box::new(
        HttpSource::new(&format!("http://127.0.0.1:{port}/snap"), &opts).unwrap(),
    ));
    let until = Instant::now() + IO_TIMEOUT;
    while rig.passed() < 30 {
        assert!(
            Instant::now() < until,
            "{} frames; journal {:#?}",
            rig.passed(),
            rig.journal()
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !rig.journal().iter().any(|l| l.contains("SOURCE-LOST")),
        "{:#?}",
        rig.journal()
    );
    assert_eq!(rig.rejected(), 0);
    rig.capture.stop().await;
    server.abort();
}
