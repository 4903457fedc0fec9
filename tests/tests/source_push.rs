//! Push and TCP camera sources end to end: stand-ins speaking seeds 001, 004 and the OAK's
//! ABCDE framing feed a real server; real viewers (surv-client and seed-form raw viewers)
//! receive the camera's own bytes; the camera is killed and comes back; bad pushers are
//! refused while a good camera streams on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use surv_client::display::Latest;
use surv_proto::{Ack, Form, FrameTag, StreamParams, TAG_BYTES};
use surv_server::sources::spec::parse_net;
use surv_server::sources::tcp::{Cause, Deadlines, PeerStats, TcpListenSource};
use surv_server::sources::udp::UdpSource;
use surv_server::sources::{Source, SourceOptions, SourceSpec};
use surv_tests::fixtures::Subsamp;
use surv_tests::standins::push::{
    abcde_client, abcde_header, abcde_server, length_prefixed_sender, udp_sender, Camera, Feed,
};
use surv_tests::IO_TIMEOUT;
use surv_tests::{
    free_tcp_port, free_udp_port, heavy, start_server_with, test_jpeg, Picture, RawViewer,
    ServerOpts, TestServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// The cameras' picture size, unlike the server's --size (640x480).
const CAM_W: usize = 320;
const CAM_H: usize = 240;
const CAM_INTERVAL: Duration = Duration::from_millis(50);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// `n` (up to 6) distinct camera JPEGs; `salt` (1 to 6) tells one camera's pictures from
/// another's. (A gradient repeats every 32 seeds.)
fn camera_jpegs(n: u64, salt: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            test_jpeg(
                CAM_W,
                CAM_H,
                Picture::Gradient(salt * 6 + i),
                80,
                Subsamp::Sub2x2,
            )
        })
        .collect()
}

/// Each camera picture's bytes → its index (counting on through the sets), to tell which
/// picture a viewer got; the pictures must all differ.
fn known_pictures(sets: &[&[Vec<u8>]]) -> Arc<HashMap<Vec<u8>, usize>> {
    let all: Vec<&Vec<u8>> = sets.iter().flat_map(|set| set.iter()).collect();
    let known: HashMap<Vec<u8>, usize> = all
        .iter()
        .enumerate()
        .map(|(i, j)| ((*j).clone(), i))
        .collect();
    assert_eq!(known.len(), all.len(), "pictures all differ");
    Arc::new(known)
}

fn feed(frames: &[Vec<u8>]) -> Feed {
    Feed {
        frames: frames.to_vec(),
        interval: CAM_INTERVAL,
    }
}

/// A datagram as the camera sent it: surv's tag (a COM segment after SOI) taken out.
fn untagged(datagram: &[u8]) -> Option<Vec<u8>> {
    FrameTag::decode(datagram).ok()?;
    let mut jpeg = datagram[..2].to_vec();
    jpeg.extend_from_slice(datagram.get(2 + TAG_BYTES..)?);
    Some(jpeg)
}

/// What a raw viewer saw.
#[derive(Default)]
struct Seen {
    datagrams: u64,
    decoded: u64,
    /// (when, which camera picture) for each datagram byte-identical to a camera's JPEG.
    camera: Vec<(Instant, usize)>,
    /// Datagrams that are none of the cameras' pictures (the "no signal" frame).
    other: u64,
    largest: usize,
}

/// A raw viewer receiving and acking until stopped, matching frames to the cameras' JPEGs.
struct Viewer {
    params: Option<StreamParams>,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<RawViewer>>,
}

impl Viewer {
    async fn start(srv: &TestServer, form: Form, known: &Arc<HashMap<Vec<u8>, usize>>) -> Viewer {
        let v = RawViewer::register(srv.addr, form).await.unwrap();
        let params = v.params.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(receive(v, form, known.clone(), seen.clone(), stop.clone()));
        Viewer {
            params,
            seen,
            stop,
            task,
        }
    }

    /// Camera frames (of pictures `which`) seen since `t`.
    fn camera_since(&self, t: Instant, which: impl Fn(usize) -> bool) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.camera
            .iter()
            .filter(|(at, i)| *at >= t && which(*i))
            .count()
    }

    async fn wait_camera(&self, t: Instant, n: usize, which: impl Fn(usize) -> bool) {
        let which = &which;
        until(&format!("{n} camera frames at a viewer"), || {
            self.camera_since(t, which) >= n
        })
        .await;
    }

    async fn stop(self) -> Seen {
        self.stop.cancel();
        let _ = timeout(IO_TIMEOUT, self.task).await.expect("viewer stops");
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("viewer task ended")
            .into_inner()
            .unwrap()
    }
}

async fn receive(
    v: RawViewer,
    form: Form,
    known: Arc<HashMap<Vec<u8>, usize>>,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) -> anyhow::Result<RawViewer> {
    let mut buf = vec![0u8; 65_536];
    let mut d = turbojpeg::Decompressor::new()?;
    loop {
        let (n, from) = tokio::select! {
            () = stop.cancelled() => return Ok(v),
            r = v.udp.recv_from(&mut buf) => r?,
        };
        let datagram = &buf[..n];
        let decoded = d.read_header(datagram).ok().is_some_and(|h| {
            let mut px = vec![0u8; h.width * h.height * 3];
            let image = turbojpeg::Image {
                pixels: &mut px[..],
                width: h.width,
                pitch: h.width * 3,
                height: h.height,
                format: turbojpeg::PixelFormat::RGB,
            };
            d.decompress(datagram, image).is_ok()
        });
        {
            let mut s = seen.lock().unwrap();
            s.datagrams += 1;
            s.decoded += u64::from(decoded);
            s.largest = s.largest.max(n);
            match untagged(datagram).and_then(|j| known.get(&j).copied()) {
                Some(i) => s.camera.push((Instant::now(), i)),
                None => s.other += 1,
            }
        }
        let seq = FrameTag::decode(datagram).ok().map(|t| t.seq);
        let ack = match form {
            Form::Seed => Ack::Continue(None),
            Form::V1 => Ack::Continue(seq),
        };
        v.udp.send_to(&v.ack_bytes(ack), from).await?;
    }
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// The four wire forms the push and TCP sources take.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    /// Seed 001: JPEG datagrams to `udp://`.
    Udp,
    /// Seed 004: length-prefixed JPEGs to `tcp-listen://`.
    LengthPrefixed,
    /// OAK `tcp_streaming_client`: ABCDE to `tcp-listen://`.
    AbcdeClient,
    /// OAK `tcp_streaming_server`: surv connects with `tcp://`.
    AbcdeServer,
}

impl Wire {
    fn spec(self, port: u16) -> SourceSpec {
        let url = match self {
            Wire::Udp => format!("udp://127.0.0.1:{port}"),
            Wire::LengthPrefixed | Wire::AbcdeClient => format!("tcp-listen://127.0.0.1:{port}"),
            Wire::AbcdeServer => format!("tcp://127.0.0.1:{port}"),
        };
        SourceSpec::parse(&url).unwrap()
    }

    async fn camera(self, port: u16, frames: &[Vec<u8>]) -> Camera {
        let at = SocketAddr::new(LOCALHOST, port);
        let cam = match self {
            Wire::Udp => udp_sender(LOCALHOST, at, feed(frames))
                .await
                .map(|(c, _)| c),
            Wire::LengthPrefixed => length_prefixed_sender(at, feed(frames)).await,
            Wire::AbcdeClient => abcde_client(at, feed(frames)).await,
            Wire::AbcdeServer => abcde_server(at, feed(frames)).await,
        };
        cam.unwrap()
    }
}

/// Starts a server on `source` and, alongside, the camera: a listening camera first, a
/// pushing one just after the server (so that it finds the port open).
async fn server_and_camera(
    wire: Wire,
    port: u16,
    source: Box<dyn Source>,
    frames: &[Vec<u8>],
) -> (TestServer, Camera) {
    let opts = ServerOpts::sized(640, 480);
    if wire == Wire::AbcdeServer {
        let cam = wire.camera(port, frames).await;
        return (start_server_with(opts, source).await.unwrap(), cam);
    }
    let (srv, cam) = tokio::join!(start_server_with(opts, source), async {
        sleep(Duration::from_millis(200)).await;
        wire.camera(port, frames).await
    });
    (srv.unwrap(), cam)
}

fn stat(srv: &TestServer) -> std::sync::Arc<surv_server::CaptureShared> {
    srv.server.first_camera().capture.clone()
}

/// One wire form end to end: both kinds of viewers get the camera's bytes at the camera's size,
/// passed through; the camera dies and comes back; the viewers stay and see it again.
async fn camera_end_to_end(wire: Wire) {
    let _serial = heavy().await;
    let port = if wire == Wire::Udp {
        free_udp_port()
    } else {
        free_tcp_port()
    };
    let (first, second) = (camera_jpegs(6, 1), camera_jpegs(6, 2));
    let known = known_pictures(&[&first, &second]);
    let source = wire.spec(port).build(&SourceOptions::default()).unwrap();
    let (srv, cam) = server_and_camera(wire, port, source, &first).await;
    until("camera frames passed through", || {
        stat(&srv).stats.passed_through.load(Relaxed) >= 3
    })
    .await;
    let (sent0, passed0) = (cam.sent(), stat(&srv).stats.passed_through.load(Relaxed));
    let attempts0 = stat(&srv).stats.encode_attempts.load(Relaxed);

    // Viewers: a SURV/1 one told the camera's size, a seed-form one, and surv-client.
    let t0 = Instant::now();
    let v1 = Viewer::start(&srv, Form::V1, &known).await;
    let params = v1.params.clone().unwrap();
    assert_eq!(
        (params.width, params.height),
        (CAM_W as u32, CAM_H as u32),
        "{wire:?}"
    );
    let seed = Viewer::start(&srv, Form::Seed, &known).await;
    let latest = Arc::new(Latest::default());
    let client = surv_client::run(
        surv_tests::client_config(srv.addr, 1.5),
        Some(latest.clone()),
        CancellationToken::new(),
    );
    let summary = timeout(IO_TIMEOUT, client).await.unwrap().unwrap();
    assert!(summary.decoded >= 15, "{wire:?}: {summary}");
    assert_eq!(summary.decode_failed, 0, "{wire:?}: {summary}");
    let image = latest.take().expect("surv-client decoded a frame");
    assert_eq!((image.width, image.height), (CAM_W, CAM_H), "{wire:?}");
    v1.wait_camera(t0, 15, |i| i < 6).await;
    seed.wait_camera(t0, 15, |i| i < 6).await;

    // Kill the camera: the source is lost, the viewers stay and are told "no signal".
    let other = v1.seen.lock().unwrap().other;
    let attempts = stat(&srv).stats.encode_attempts.load(Relaxed);
    let sent = cam.sent();
    cam.kill().await;
    srv.wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    let passed = stat(&srv).stats.passed_through.load(Relaxed) - passed0;
    let sent = sent - sent0;
    assert!(
        passed + 2 >= sent && passed <= sent + 2,
        "{wire:?}: {passed} passed through of {sent} sent"
    );
    assert_eq!(
        attempts, attempts0,
        "{wire:?}: camera frames were passed through, never encoded"
    );
    assert_eq!(
        stat(&srv).stats.rejected.load(Relaxed),
        0,
        "{wire:?}: the camera's every frame taken"
    );
    // surv-client has left (its `end`); both raw viewers are still registered.
    srv.wait_sessions(2).await.unwrap();
    until("a no-signal frame during the outage", || {
        v1.seen.lock().unwrap().other > other
    })
    .await;

    // Bring it back (with other pictures): SOURCE-BACK, and the viewers see them.
    let back_at = Instant::now();
    let cam = wire.camera(port, &second).await;
    srv.wait_journal(|l| l.contains("SOURCE-BACK"))
        .await
        .unwrap();
    v1.wait_camera(back_at, 10, |i| i >= 6).await;
    seed.wait_camera(back_at, 10, |i| i >= 6).await;
    assert_eq!(srv.server.watchers.len(), 2, "{wire:?}");
    let journal = srv.journal();
    let lost = journal.iter().position(|l| l.contains("SOURCE-LOST"));
    let back = journal.iter().position(|l| l.contains("SOURCE-BACK"));
    assert!(lost < back, "{wire:?}: {journal:#?}");
    drop(cam);
    for v in [v1, seed] {
        let seen = v.stop().await;
        assert_eq!(
            seen.decoded, seen.datagrams,
            "{wire:?}: every datagram decodes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_camera_end_to_end() {
    camera_end_to_end(Wire::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefixed_camera_end_to_end() {
    camera_end_to_end(Wire::LengthPrefixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oak_abcde_client_end_to_end() {
    camera_end_to_end(Wire::AbcdeClient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oak_abcde_server_end_to_end() {
    camera_end_to_end(Wire::AbcdeServer).await;
}

fn allow_localhost_only() -> SourceOptions {
    SourceOptions {
        allow: vec![parse_net("127.0.0.1/32").unwrap()],
        max_frame_bytes: 200_000,
        ..SourceOptions::default()
    }
}

/// Connects to `to` from `from`, writes `bytes` (ignoring a refusal), and returns whether the
/// server then closed the connection within the timeout.
async fn push_bytes(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut tcp = timeout(IO_TIMEOUT, socket.connect(to)).await??;
    let _ = tcp.write_all(bytes).await;
    Ok(tcp)
}

/// Waits (bounded) until the server closes `tcp`.
async fn closed_by_server(mut tcp: TcpStream) -> anyhow::Result<()> {
    let mut buf = [0u8; 64];
    let until = Instant::now() + IO_TIMEOUT;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => bail!("the server kept the connection open"),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits (bounded) until `stats` counted `cause`.
async fn counted(stats: &PeerStats, cause: Cause) {
    until(cause.as_str(), || stats.count(cause) >= 1).await;
}

/// A camera streams to tcp-listen (with a non-JPEG payload in its feed); meanwhile pushers
/// that are not allowed, over the cap, in neither framing, with a bad ABCDE header, or
/// trickling are each refused and counted, and the camera streams on unaffected. Then a
/// second good camera connects and takes over (newest wins), and the first is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listen_refuses_bad_pushers_while_the_camera_streams() {
    let _serial = heavy().await;
    let port = free_tcp_port();
    let at = SocketAddr::new(LOCALHOST, port);
    let (first, second) = (camera_jpegs(4, 3), camera_jpegs(4, 4));
    let known = known_pictures(&[&first, &second]);
    let source = TcpListenSource::new("127.0.0.1", port, &allow_localhost_only()).with_deadlines(
        Deadlines {
            idle: Duration::from_millis(1000),
            frame: Duration::from_millis(1500),
        },
    );
    let stats = source.stats();
    let mut with_junk = first.clone();
    with_junk.insert(2, b"this is not a jpeg".to_vec());
    let (srv, cam) =
        server_and_camera(Wire::LengthPrefixed, port, Box::new(source), &with_junk).await;
    let viewer = Viewer::start(&srv, Form::Seed, &known).await;
    let t0 = Instant::now();
    viewer.wait_camera(t0, 5, |i| i < 4).await;
    let passed0 = stat(&srv).stats.passed_through.load(Relaxed);

    let refused = push_bytes(OTHER_HOST, at, &first[0]).await.unwrap();
    let mut over_cap = 300_000u32.to_be_bytes().to_vec();
    over_cap.extend([0xFF, 0xD8, 0xFF, 0xE0]);
    let over_cap = push_bytes(LOCALHOST, at, &over_cap).await.unwrap();
    let http = push_bytes(LOCALHOST, at, b"GET / HTTP/1.1\r\nHost: cam\r\n\r\n")
        .await
        .unwrap();
    let mut bad_header = format!("{:<32}", "ABCDE twelve 100").into_bytes();
    bad_header.extend(&first[0]);
    let bad_header = push_bytes(LOCALHOST, at, &bad_header).await.unwrap();
    let slow = tokio::spawn(async move {
        let mut message = u32::try_from(first[1].len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        message.extend(&first[1]);
        let mut tcp = push_bytes(LOCALHOST, at, &message[..4]).await?;
        for b in &message[4..60] {
            if tcp.write_all(&[*b]).await.is_err() {
                return Ok(());
            }
            sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    });
    for tcp in [refused, over_cap, http, bad_header] {
        closed_by_server(tcp).await.unwrap();
    }
    for cause in [
        Cause::NotAllowed,
        Cause::TooLarge,
        Cause::UnknownFraming,
        Cause::BadHeader,
    ] {
        counted(&stats, cause).await;
    }
    counted(&stats, Cause::Slow).await;
    timeout(IO_TIMEOUT, slow).await.unwrap().unwrap().unwrap();
    counted(&stats, Cause::NotJpeg).await;
    assert_eq!(
        stats.count(Cause::Idle),
        0,
        "the trickler was slow, never idle"
    );

    // The camera streamed on: its frames kept passing through, no outage, nobody replaced.
    let bad = Instant::now();
    viewer.wait_camera(bad, 5, |i| i < 4).await;
    assert!(stat(&srv).stats.passed_through.load(Relaxed) > passed0 + 10);
    assert!(
        !srv.journal().iter().any(|l| l.contains("SOURCE-LOST")),
        "{:#?}",
        srv.journal()
    );
    assert_eq!(stats.count(Cause::Replaced), 0);
    assert!(!cam.is_finished());
    let rejected = stat(&srv).stats.rejected.load(Relaxed);
    assert!(rejected >= 6, "rejected {rejected}");

    // A second camera: the newest connection with a whole JPEG takes over.
    let newer_at = Instant::now();
    let newer = abcde_client(at, feed(&second)).await.unwrap();
    viewer.wait_camera(newer_at, 10, |i| i >= 4).await;
    assert_eq!(stats.count(Cause::Replaced), 1);
    until("the replaced camera's connection to close", || {
        cam.is_finished()
    })
    .await;
    assert!(!srv.journal().iter().any(|l| l.contains("SOURCE-LOST")));
    drop(newer);
    srv.wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    viewer.stop().await;
}

/// A 65,507-byte JPEG: a camera picture padded with a COM segment to the UDP maximum.
fn largest_datagram_jpeg() -> Vec<u8> {
    let jpeg = test_jpeg(CAM_W, CAM_H, Picture::Gradient(7), 90, Subsamp::None);
    let pad = surv_proto::MAX_UDP_PAYLOAD_BYTES - jpeg.len();
    assert!(
        (4..=65_535).contains(&pad),
        "picture of {} bytes",
        jpeg.len()
    );
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xFE]);
    out.extend(u16::try_from(pad - 2).unwrap().to_be_bytes());
    out.extend(std::iter::repeat_n(b'.', pad - 4));
    out.extend(&jpeg[2..]);
    assert_eq!(out.len(), surv_proto::MAX_UDP_PAYLOAD_BYTES);
    out
}

/// A camera streams to udp://; a datagram from a host outside --source-allow, a non-JPEG, a
/// seed-001 app's `Request` and a second concurrent sender are each refused and counted; a
/// 65,507-byte JPEG from the camera is used (re-encoded under the datagram cap); the camera
/// streams on unaffected throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_refuses_bad_datagrams_while_the_camera_streams() {
    let _serial = heavy().await;
    let port = free_udp_port();
    let at = SocketAddr::new(LOCALHOST, port);
    let first = camera_jpegs(4, 5);
    let known = known_pictures(&[&first]);
    let source = UdpSource::new("127.0.0.1", port, &allow_localhost_only());
    let stats = source.stats();
    let (srv, cam_socket) = {
        let opts = ServerOpts::sized(640, 480);
        let (srv, cam) = tokio::join!(start_server_with(opts, Box::new(source)), async {
            sleep(Duration::from_millis(200)).await;
            udp_sender(LOCALHOST, at, feed(&first)).await.unwrap()
        });
        (srv.unwrap(), cam)
    };
    let (cam, cam_socket) = cam_socket;
    let viewer = Viewer::start(&srv, Form::V1, &known).await;
    viewer.wait_camera(Instant::now(), 5, |_| true).await;
    let c = &stat(&srv).stats;
    let (passed0, attempts0, errors0) = (
        c.passed_through.load(Relaxed),
        c.encode_attempts.load(Relaxed),
        c.errors.load(Relaxed),
    );

    let stranger = UdpSocket::bind(SocketAddr::new(OTHER_HOST, 0))
        .await
        .unwrap();
    stranger.send_to(&first[0], at).await.unwrap();
    counted(&stats, Cause::NotAllowed).await;
    cam_socket.send_to(b"not a jpeg", at).await.unwrap();
    counted(&stats, Cause::NotJpeg).await;
    let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    app.send_to(b"Request", at).await.unwrap();
    counted(&stats, Cause::WatcherRequest).await;
    let second = udp_sender(LOCALHOST, at, feed(&camera_jpegs(2, 6)))
        .await
        .unwrap();
    counted(&stats, Cause::Busy).await;
    sleep(Duration::from_millis(300)).await;
    assert!(second.0.sent() >= 3);
    drop(second);

    let published_before = c.published.load(Relaxed);
    let big = largest_datagram_jpeg();
    cam_socket.send_to(&big, at).await.unwrap();
    until("the 65,507-byte JPEG re-encoded", || {
        c.encode_attempts.load(Relaxed) > attempts0
    })
    .await;
    assert_eq!(c.errors.load(Relaxed), errors0, "the big JPEG went out");
    assert!(c.published.load(Relaxed) > published_before);

    let later = Instant::now();
    viewer.wait_camera(later, 10, |_| true).await;
    assert!(c.passed_through.load(Relaxed) > passed0 + 10);
    assert!(
        !srv.journal().iter().any(|l| l.contains("SOURCE-LOST")),
        "{:#?}",
        srv.journal()
    );
    assert!(!cam.is_finished());
    let seen = viewer.stop().await;
    assert!(
        seen.largest <= surv_proto::DEFAULT_MAX_DATAGRAM_BYTES,
        "{}",
        seen.largest
    );
    assert_eq!(seen.decoded, seen.datagrams);
    let refused = [
        Cause::NotAllowed,
        Cause::NotJpeg,
        Cause::WatcherRequest,
        Cause::Busy,
    ];
    let counted_here: u64 = refused.iter().map(|&c| stats.count(c)).sum();
    assert_eq!(
        c.rejected.load(Relaxed),
        counted_here,
        "every refusal reached the sink's count"
    );
}

/// The OAK's header as the stand-ins write it matches what the OAK script produces.
#[test]
fn abcde_header_is_the_oaks() {
    assert_eq!(
        abcde_header(12.5, 48213),
        b"ABCDE 12.5              48213   ".to_vec()
    );
    assert_eq!(
        abcde_header(3.0, 7),
        b"ABCDE 3.0               7       ".to_vec()
    );
}
