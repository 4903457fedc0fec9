//! The batched data path on loopback: sessions share the server's UDP socket, and acks find
//! their session by the viewer's address, even when one address is registered twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_proto::{Ack, Form, FrameTag, Registration, Reply};
use surv_tests::{read_reply, start_server, AckStyle, RawViewer, ServerOpts, IO_TIMEOUT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

fn small() -> ServerOpts {
    ServerOpts {
        width: 160,
        height: 90,
        ..ServerOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_share_one_socket_and_each_gets_the_full_stream() {
    let srv = start_server(small()).await.unwrap();
    let mut a = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let mut b = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    let run = Duration::from_secs(2);
    let (ga, gb) = tokio::join!(
        a.receive(run, u64::MAX, AckStyle::Seq, 0),
        b.receive(run, u64::MAX, AckStyle::Seed, 0)
    );
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    assert_eq!(
        ga.from, gb.from,
        "both sessions' frames come from the one shared socket"
    );
    for got in [&ga, &gb] {
        assert!(got.datagrams >= 54, "{got:?}");
    }
    assert_eq!(srv.server.stats.foreign_datagrams.load(Relaxed), 0);
    assert!(srv.server.stats.acks.load(Relaxed) >= 108);
}

/// One viewer port registered twice from the same IP: two sessions, each acked through its own
/// server socket, and an `end` to one of them ends that one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_registered_twice_gets_two_independent_sessions() {
    let srv = start_server(small()).await.unwrap();
    let viewer = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let port = viewer.udp.local_addr().unwrap().port();
    let mut second = timeout(IO_TIMEOUT, TcpStream::connect(srv.addr))
        .await
        .unwrap()
        .unwrap();
    second
        .write_all(
            &Registration {
                form: Form::V1,
                udp_port: port,
            }
            .encode(),
        )
        .await
        .unwrap();
    let Reply::Accepted(second_params) = read_reply(&mut second).await.unwrap() else {
        panic!("the second registration was refused");
    };
    srv.wait_sessions(2).await.unwrap();
    // Each session has its own UDP port and key: the second says its hello from the same port.
    let keys: HashMap<u16, Option<u64>> = [&viewer.params.clone().unwrap(), &second_params]
        .iter()
        .map(|p| (p.udp_port.unwrap(), p.key))
        .collect();
    assert_eq!(keys.len(), 2, "two session sockets");
    let to = SocketAddr::new(srv.addr.ip(), second_params.udp_port.unwrap());
    viewer
        .udp
        .send_to(&Ack::Hello.encode_keyed(second_params.key), to)
        .await
        .unwrap();

    // Receive and ack for a while: frames arrive from two server sockets.
    let mut per_source: HashMap<SocketAddr, u64> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(res) = tokio::time::timeout_at(until, viewer.udp.recv_from(&mut buf)).await {
        let (n, from) = res.unwrap();
        *per_source.entry(from).or_default() += 1;
        let seq = FrameTag::decode(&buf[..n]).unwrap().seq;
        viewer
            .udp
            .send_to(
                &Ack::Continue(Some(seq)).encode_keyed(keys[&from.port()]),
                from,
            )
            .await
            .unwrap();
    }
    assert_eq!(per_source.len(), 2, "{per_source:?}");
    assert!(per_source.values().all(|&n| n >= 54), "{per_source:?}");

    let first = *per_source.keys().next().unwrap();
    viewer
        .udp
        .send_to(&Ack::End.encode_keyed(keys[&first.port()]), first)
        .await
        .unwrap();
    let leave = srv.wait_journal(|l| l.contains(" LEAVE ")).await.unwrap();
    assert!(leave.contains("reason=end"), "{leave}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(srv.server.watchers.len(), 1, "the other session streams on");
}

/// Registers `n` viewers, alternating forms.
async fn register_some(addr: std::net::SocketAddr, n: usize) -> Vec<RawViewer> {
    let mut viewers = Vec::with_capacity(n);
    for i in 0..n {
        let form = if i % 2 == 0 { Form::V1 } else { Form::Seed };
        viewers.push(RawViewer::register(addr, form).await.unwrap());
    }
    viewers
}

/// Waits (bounded) until no viewer is left on the data path; returns how many are.
async fn wait_detached(srv: &surv_tests::TestServer) -> usize {
    let until = Instant::now() + IO_TIMEOUT;
    while srv.server.first_camera().data.attached() != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.server.first_camera().data.attached()
}

/// Viewers joining and leaving (by `end` and by closing TCP) leave nothing behind: no session
/// entry, no viewer on the data path, no extra socket. What a churn run's memory depends on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_leave_no_state_behind() {
    let srv = start_server(small()).await.unwrap();
    for round in 0..10 {
        let viewers = register_some(srv.addr, 20).await;
        srv.wait_sessions(20).await.unwrap();
        assert_eq!(
            srv.server.first_camera().data.attached(),
            20,
            "round {round}"
        );
        for (i, v) in viewers.into_iter().enumerate() {
            if i % 2 == 0 {
                // `end` goes to the address the frames come from.
                let mut buf = [0u8; 2048];
                let (_, server_udp) = timeout(IO_TIMEOUT, v.udp.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                v.end(server_udp).await.unwrap();
            }
            // Dropping closes the TCP connection.
        }
        srv.wait_sessions(0).await.unwrap();
        assert_eq!(wait_detached(&srv).await, 0, "round {round}");
    }
    assert_eq!(srv.server.first_camera().data.socket_count(), 1);
    assert_eq!(srv.server.stats.joins.load(Relaxed), 200);
    assert_eq!(srv.server.stats.leaves.load(Relaxed), 200);
}

/// The same viewer address registered twice at once gets a second socket (each socket must
/// know whose acks it receives); once those sessions leave, the extra socket closes. It used to
/// stay open for good (found by the chaos run: one descriptor more after a churn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_socket_for_an_address_registered_twice_closes_when_its_sessions_leave() {
    let srv = start_server(small()).await.unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    for round in 0..3 {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
            let reg = Registration {
                form: Form::V1,
                udp_port: port,
            };
            tcp.write_all(&reg.encode()).await.unwrap();
            assert!(matches!(
                read_reply(&mut tcp).await.unwrap(),
                Reply::Accepted(_)
            ));
            conns.push(tcp);
        }
        srv.wait_sessions(2).await.unwrap();
        assert_eq!(
            srv.server.first_camera().data.socket_count(),
            2,
            "round {round}"
        );
        drop(conns);
        srv.wait_sessions(0).await.unwrap();
        assert_eq!(wait_detached(&srv).await, 0);
        assert_eq!(
            srv.server.first_camera().data.socket_count(),
            1,
            "round {round}"
        );
    }
}

/// A SURV/1 viewer whose connection is reset right after it registers: the server may fail to
/// write its acceptance, and that way out of admission must take the viewer off the data path
/// too (it used to stay attached for good, sent every frame, one per such viewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_gone_before_its_acceptance_is_not_left_attached() {
    let srv = start_server(small()).await.unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    for _ in 0..40 {
        let tcp = std::net::TcpStream::connect(srv.addr).unwrap();
        let sock = socket2::SockRef::from(&tcp);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        let reg = Registration {
            form: Form::V1,
            udp_port: port,
        }
        .encode();
        std::io::Write::write_all(&mut &tcp, &reg).unwrap();
        drop(tcp); // linger 0: a reset, not a FIN
    }
    // Every registration handled, one way or the other, before looking.
    let stats = &srv.server.stats;
    let handled = || {
        [&stats.joins, &stats.gone_before_accepted, &stats.probes]
            .iter()
            .map(|c| c.load(Relaxed))
            .sum::<u64>()
            + stats.refusals.total()
    };
    let until = Instant::now() + IO_TIMEOUT;
    while handled() < 40 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handled(), 40);
    srv.wait_sessions(0).await.unwrap();
    assert_eq!(
        wait_detached(&srv).await,
        0,
        "{} of 40 were gone before their acceptance",
        stats.gone_before_accepted.load(Relaxed)
    );
}

/// A socket of whole-datagram viewers has its acks read by the fan-out just before each frame;
/// when frames stop, an `end` must still end its session (the ack task reads such a socket on
/// a timer too), not wait for the viewer timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_ends_the_session_when_frames_have_stopped() {
    let mut srv = start_server(small()).await.unwrap();
    let mut viewers = Vec::new();
    for form in [Form::Seed, Form::V1] {
        let viewer = RawViewer::register(srv.addr, form).await.unwrap();
        let mut buf = [0u8; 2048];
        let (_, server_udp) = timeout(IO_TIMEOUT, viewer.udp.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        viewers.push((form, viewer, server_udp));
    }
    assert_eq!(srv.server.first_camera().data.chunked_sessions(), 0);
    srv.stop_capture().await;
    // Whatever was in flight has come; no frame comes after this.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (left, (form, viewer, server_udp)) in
        viewers.into_iter().enumerate().map(|(i, v)| (1 - i, v))
    {
        let sent = Instant::now();
        viewer.end(server_udp).await.unwrap();
        let until = sent + Duration::from_secs(3);
        while srv.server.watchers.len() != left && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            srv.server.watchers.len(),
            left,
            "{form:?}: the session outlived its end by {:?}",
            sent.elapsed()
        );
    }
}
