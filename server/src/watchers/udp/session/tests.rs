//! Sessions end as they should, timed under paused time: a real server on loopback with a
//! scripted source (a frame every 33 ms of virtual time), viewers played by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use surv_proto::{Ack, Registration, Reply, StreamParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::capture::CaptureConfig;
use crate::capture::{FrameSink, StreamShape};
use crate::journal::read_all;
use crate::sources::{PixelFormat, RawFrame, Source, SourceRun};
use crate::{Capture, Config, Journal, Server};

/// A frame every 33 ms of (virtual) time, forever.
struct Ticker;

impl Source for Ticker {
    fn describe(&self) -> String {
        "ticker".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            sink.opened(
                "ticker",
                StreamShape {
                    width: 32,
                    height: 32,
                    fps: 30,
                },
            );
            let mut frame = RawFrame::new();
            (frame.width, frame.height, frame.format) = (32, 32, PixelFormat::I420);
            frame.data = vec![90; 32 * 32 * 3 / 2];
            while !stop.is_cancelled() {
                sink.publish_raw(&frame);
                tokio::time::sleep(Duration::from_millis(33)).await;
            }
            Ok(())
        })
    }
}

struct Rig {
    server: Arc<Server>,
    addr: SocketAddr,
    log_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    _capture: Capture,
}

async fn start(config: Config) -> Rig {
    let log_dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(log_dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let capture = Capture::start(
        Box::new(Ticker),
        CaptureConfig::default(),
        journal.clone(),
        &shutdown,
    )
    .unwrap();
    capture.first_outcome().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = Server::new(config, &capture, 65_000, journal);
    server.fanout_on_runtime = true;
    let server = Arc::new(server);
    tokio::spawn(crate::run(server.clone(), listener, shutdown.clone()));
    Rig {
        server,
        addr,
        log_dir,
        shutdown,
        _capture: capture,
    }
}

impl Rig {
    fn journal(&self) -> Vec<String> {
        read_all(self.log_dir.path()).unwrap()
    }

    /// Waits (bounded in virtual time) for a LEAVE line and returns it with when it came.
    async fn leave(&self) -> (String, Instant) {
        for _ in 0..10_000 {
            if let Some(l) = self.journal().into_iter().find(|l| l.contains(" LEAVE ")) {
                return (l, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no LEAVE: {:#?}", self.journal());
    }
}

/// Registers a SURV/1 viewer for `udp` and says `hello`; returns the TCP connection (its reply
/// read) and the session key.
async fn register(addr: SocketAddr, udp: &UdpSocket) -> (TcpStream, Option<u64>) {
    let (tcp, params) = register_quiet(addr, udp).await;
    let to = SocketAddr::new(addr.ip(), params.udp_port.expect("udp= in the OK line"));
    udp.send_to(&Ack::Hello.encode_keyed(params.key), to)
        .await
        .unwrap();
    (tcp, params.key)
}

/// Registers without the `hello`.
async fn register_quiet(addr: SocketAddr, udp: &UdpSocket) -> (TcpStream, StreamParams) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let reg = Registration {
        form: surv_proto::Form::V1,
        udp_port: udp.local_addr().unwrap().port(),
    };
    tcp.write_all(&reg.encode()).await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "closed before the reply"
        );
        line.push(byte[0]);
    }
    let Ok((Reply::Accepted(params), _)) = Reply::decode(&line) else {
        panic!("not accepted: {}", String::from_utf8_lossy(&line));
    };
    (tcp, params)
}

fn config(viewer_timeout: Duration) -> Config {
    Config {
        viewer_timeout,
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_viewer_that_never_acks_gets_a_second_of_frames_and_a_few_probes_then_times_out() {
    let rig = start(config(Duration::from_secs(10))).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let joined = Instant::now();
    let _session = register(rig.addr, &udp).await;
    let mut arrivals = Vec::new();
    let mut buf = vec![0u8; 70_000];
    // Every datagram for 12 s of virtual time, never answering.
    while let Ok(Ok(_)) = timeout(
        Duration::from_secs(12).saturating_sub(joined.elapsed()),
        udp.recv_from(&mut buf),
    )
    .await
    {
        arrivals.push(joined.elapsed());
    }
    let (leave, _) = rig.leave().await;
    assert!(leave.contains("reason=timeout"), "{leave}");
    // Its hello makes it alive for a second: four frames per ack wait (250 ms), each written
    // off unacked; then, nothing having come back, probes 250 ms, 500 ms, 1 s, then every 2 s
    // after the last send, until the 10 s timeout: 16 + 6.
    assert_eq!(arrivals.len(), 22, "{arrivals:?}");
    assert!(arrivals[15] < Duration::from_secs(1), "{arrivals:?}");
    let gaps: Vec<u128> = arrivals[15..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    for (gap, want) in gaps.iter().zip([250, 500, 1000, 2000, 2000, 2000]) {
        assert!(gap.abs_diff(want) <= 40, "probe gaps {gaps:?}");
    }
    assert!(
        arrivals.last().unwrap() < &Duration::from_secs(10),
        "nothing after the LEAVE"
    );
    assert_eq!(rig.server.watchers.len(), 0);
    assert_eq!(rig.server.first_camera().data.attached(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_session_times_out_exactly_after_the_viewers_last_ack() {
    let rig = start(config(Duration::from_secs(3))).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tcp, key) = register(rig.addr, &udp).await;
    let mut buf = vec![0u8; 70_000];
    // Ack every frame for 5 s, then go silent.
    let acking = Instant::now();
    let mut acked = 0;
    while acking.elapsed() < Duration::from_secs(5) {
        let (n, from) = timeout(Duration::from_secs(1), udp.recv_from(&mut buf))
            .await
            .expect("frames keep coming while acked")
            .unwrap();
        let seq = surv_proto::FrameTag::decode(&buf[..n]).unwrap().seq;
        udp.send_to(&Ack::Continue(Some(seq)).encode_keyed(key), from)
            .await
            .unwrap();
        acked += 1;
    }
    let last_ack = Instant::now();
    assert!(acked >= 140, "{acked} frames in 5 s at 30 fps");
    let (leave, at) = rig.leave().await;
    assert!(leave.contains("reason=timeout"), "{leave}");
    let silent = at - last_ack;
    assert!(
        silent >= Duration::from_secs(3) && silent < Duration::from_millis(3100),
        "LEAVE {silent:?} after the last ack"
    );
}

#[tokio::test(start_paused = true)]
async fn end_sent_just_after_closing_tcp_is_end_and_a_bare_close_is_closed_after_the_grace() {
    let rig = start(config(Duration::from_secs(10))).await;
    // Viewer A closes its TCP connection and sends `end` 20 ms later, within END_GRACE.
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tcp, key) = register(rig.addr, &a).await;
    let mut buf = vec![0u8; 70_000];
    let (_, from) = a.recv_from(&mut buf).await.unwrap();
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.send_to(&Ack::End.encode_keyed(key), from).await.unwrap();
    let (leave, _) = rig.leave().await;
    assert!(leave.contains("reason=end"), "{leave}");

    // Viewer B only closes: `closed`, once END_GRACE has passed.
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tcp, _) = register(rig.addr, &b).await;
    b.recv_from(&mut buf).await.unwrap();
    let closed_at = Instant::now();
    drop(tcp);
    let mut leave_b = None;
    for _ in 0..1000 {
        leave_b = rig
            .journal()
            .into_iter()
            .filter(|l| l.contains(" LEAVE "))
            .nth(1);
        if leave_b.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waited = closed_at.elapsed();
    let leave_b = leave_b.expect("B left");
    assert!(leave_b.contains("reason=closed"), "{leave_b}");
    assert!(
        waited >= super::END_GRACE && waited < super::END_GRACE + Duration::from_millis(20),
        "{waited:?}"
    );
    rig.shutdown.cancel();
}

/// Receives for `secs` of virtual time, acking every frame when `ack`; returns how many came.
async fn watch(udp: UdpSocket, key: Option<u64>, secs: u64, ack: bool) -> u64 {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 70_000];
    let mut got = 0;
    while let Ok(Ok((n, from))) = tokio::time::timeout_at(until, udp.recv_from(&mut buf)).await {
        got += 1;
        if ack {
            let seq = surv_proto::FrameTag::decode(&buf[..n]).unwrap().seq;
            udp.send_to(&Ack::Continue(Some(seq)).encode_keyed(key), from)
                .await
                .unwrap();
        }
    }
    got
}

#[tokio::test(start_paused = true)]
async fn the_fan_out_sends_every_frame_to_viewers_that_ack_whatever_a_silent_one_does() {
    let rig = start(config(Duration::from_secs(10))).await;
    let mut tcps = Vec::new();
    let mut viewers = Vec::new();
    for ack in [true, true, false] {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (tcp, key) = register(rig.addr, &udp).await;
        tcps.push(tcp);
        viewers.push(tokio::spawn(watch(udp, key, 3, ack)));
    }
    let mut got = Vec::new();
    for v in viewers {
        got.push(v.await.unwrap());
    }
    // 3 s at 30 fps: 91 frames published (one every 33 ms from 0).
    assert!(got[0] >= 89 && got[1] >= 89, "acking viewers got {got:?}");
    // The silent one: a second of frames after its hello (4 per 250 ms) and the probes of the
    // other 2 s (at 0.25, 0.75, 1.75 s after).
    assert!((16..=20).contains(&got[2]), "silent viewer got {got:?}");
    let stats = &rig.server.stats;
    assert_eq!(
        stats.frames_sent.load(std::sync::atomic::Ordering::Relaxed),
        got.iter().sum::<u64>(),
        "every datagram sent was received on loopback"
    );
    rig.shutdown.cancel();
}

/// Defect 8: a port that never says `hello` gets nothing (a registration cannot aim frames at
/// a port that did not ask), and the session times out.
#[tokio::test(start_paused = true)]
async fn no_frame_goes_to_a_surv1_viewer_before_its_hello() {
    let rig = start(config(Duration::from_secs(3))).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tcp, params) = register_quiet(rig.addr, &udp).await;
    let mut buf = vec![0u8; 70_000];
    // A hello without the key, or with another, opens nothing.
    let to = SocketAddr::new(rig.addr.ip(), params.udp_port.unwrap());
    let wrong = params.key.map(|k| k ^ 1);
    for hello in [b"hello".to_vec(), Ack::Hello.encode_keyed(wrong)] {
        udp.send_to(&hello, to).await.unwrap();
    }
    let got = timeout(Duration::from_secs(5), udp.recv_from(&mut buf)).await;
    assert!(got.is_err(), "a frame came before the hello");
    let (leave, _) = rig.leave().await;
    assert!(
        leave.contains("reason=timeout") && leave.contains("frames_sent=0"),
        "{leave}"
    );
    assert_eq!(rig.server.first_camera().data.attached(), 0);
    assert_eq!(
        rig.server
            .stats
            .keyless_acks
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the wrong key counted (bare `hello` is not an ack at all)"
    );
}

/// Defect 9: `end` forged from the viewer's own address, without the session key, does not end
/// the session; the viewer's own keyed `end` does.
#[tokio::test(start_paused = true)]
async fn a_forged_end_from_the_viewers_own_address_is_ignored() {
    let rig = start(config(Duration::from_secs(10))).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tcp, key) = register(rig.addr, &udp).await;
    let mut buf = vec![0u8; 70_000];
    let (n, from) = udp.recv_from(&mut buf).await.unwrap();
    let mut seq = surv_proto::FrameTag::decode(&buf[..n]).unwrap().seq;
    // The forger shares the viewer's address (the same socket here): no key, or a wrong one.
    let forged = [
        b"end".to_vec(),
        Ack::End.encode_keyed(key.map(|k| k.wrapping_add(1))),
    ];
    for f in &forged {
        udp.send_to(f, from).await.unwrap();
    }
    // Frames keep coming while the viewer acks.
    for _ in 0..30 {
        udp.send_to(&Ack::Continue(Some(seq)).encode_keyed(key), from)
            .await
            .unwrap();
        let (n, _) = timeout(Duration::from_secs(1), udp.recv_from(&mut buf))
            .await
            .expect("the stream goes on after a forged end")
            .unwrap();
        seq = surv_proto::FrameTag::decode(&buf[..n]).unwrap().seq;
    }
    assert!(rig.journal().iter().all(|l| !l.contains(" LEAVE ")));
    assert_eq!(
        rig.server
            .stats
            .keyless_acks
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    udp.send_to(&Ack::End.encode_keyed(key), from)
        .await
        .unwrap();
    let (leave, _) = rig.leave().await;
    assert!(leave.contains("reason=end"), "{leave}");
    rig.shutdown.cancel();
}

/// The fan-out sleeps while nobody is on the data path and must wake for the next viewer: each
/// of three viewers, joining after the one before has left and the server has been alone for a
/// second, gets the stream at the full rate.
#[tokio::test(start_paused = true)]
async fn a_viewer_joining_after_everyone_left_gets_the_full_stream() {
    let rig = start(config(Duration::from_secs(10))).await;
    let mut buf = vec![0u8; 70_000];
    for round in 0..3 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_tcp, key) = register(rig.addr, &udp).await;
        let started = Instant::now();
        let (mut got, mut server_udp) = (0, None);
        while started.elapsed() < Duration::from_secs(1) {
            let (n, from) = timeout(Duration::from_millis(500), udp.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("round {round}: no frame for 500 ms"))
                .unwrap();
            let seq = surv_proto::FrameTag::decode(&buf[..n]).unwrap().seq;
            udp.send_to(&Ack::Continue(Some(seq)).encode_keyed(key), from)
                .await
                .unwrap();
            (got, server_udp) = (got + 1, Some(from));
        }
        assert!(got >= 28, "round {round}: {got} frames in 1 s at 30 fps");
        udp.send_to(&Ack::End.encode_keyed(key), server_udp.unwrap())
            .await
            .unwrap();
        for _ in 0..1000 {
            if rig.server.first_camera().data.attached() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            rig.server.first_camera().data.attached(),
            0,
            "round {round}: still attached"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
