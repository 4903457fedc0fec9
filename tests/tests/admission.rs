//! Admission under a slowloris: connections held open without a byte, from many loopback
//! addresses and reopened as they are dropped, must not lock honest viewers out (issue 11,
//! defects 1 and 2).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use surv_proto::Form;
use surv_server::Config;
use surv_tests::{start_server, RawViewer, ServerOpts, IO_TIMEOUT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// An idle connection to `server` from 127.3.x.y.
async fn idle_from(server: SocketAddr, n: u32) -> std::io::Result<TcpStream> {
    let ip = Ipv4Addr::new(127, 3, (n >> 8) as u8, n as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    timeout(IO_TIMEOUT, socket.connect(server)).await?
}

#[tokio::test]
async fn honest_viewers_get_in_while_idle_connections_fill_every_pending_place() {
    const PENDING: usize = 32;
    let config = Config {
        max_pending_registrations: PENDING,
        ..Config::default()
    };
    let srv = start_server(ServerOpts {
        config,
        ..ServerOpts::sized(160, 90)
    })
    .await
    .unwrap();
    // Fill every place, then keep them filled: each round reopens what the server dropped.
    let mut idle = Vec::new();
    let mut opened = 0u32;
    for _ in 0..PENDING {
        idle.push(idle_from(srv.addr, opened).await.unwrap());
        opened += 1;
    }
    let mut admitted = 0;
    for round in 0..5 {
        let v = RawViewer::register(srv.addr, Form::V1).await;
        match v {
            Ok(v) => {
                assert!(v.params.is_some());
                admitted += 1;
            }
            Err(e) => eprintln!("round {round}: honest viewer refused: {e:#}"),
        }
        // The attacker tops the pending places up again.
        for _ in 0..4 {
            idle.push(idle_from(srv.addr, opened).await.unwrap());
            opened += 1;
        }
    }
    assert_eq!(admitted, 5, "honest SURV/1 registrations admitted of 5");

    // An idle connection pushed out for a newer one is told why, on the wire (not a bare EOF).
    let oldest = &mut idle[0];
    let mut got = Vec::new();
    timeout(IO_TIMEOUT, oldest.read_to_end(&mut got))
        .await
        .expect("the evicted connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("ERR SURV/1 ") && text.contains("too many registrations in progress"),
        "{text:?}"
    );
    let journal = srv.journal();
    let evicted = journal
        .iter()
        .filter(|l| l.contains(" REFUSE ") && l.contains("too many registrations"))
        .count();
    assert!(
        evicted >= 20,
        "evictions journalled: {evicted}\n{journal:#?}"
    );
    assert_eq!(srv.server.watchers.len(), 5);
    srv.stop().await.unwrap();
}

/// Defect 8: one IP may hold at most `max_viewers_per_ip` UDP viewers (each draws frames to a
/// port of that IP); the next is refused with the reason, journalled, and a place freed is
/// taken again.
#[tokio::test]
async fn viewers_from_one_ip_are_capped_with_a_reason() {
    let config = Config {
        max_viewers_per_ip: 2,
        ..Config::default()
    };
    let srv = start_server(ServerOpts {
        config,
        ..ServerOpts::sized(160, 90)
    })
    .await
    .unwrap();
    let first = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    let _second = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    srv.wait_sessions(2).await.unwrap();
    let err = RawViewer::register(srv.addr, Form::V1)
        .await
        .err()
        .expect("a third viewer from 127.0.0.1 is refused");
    assert!(
        err.to_string()
            .contains("2 viewers already watch from this IP"),
        "{err}"
    );
    let refuse = srv
        .wait_journal(|l| l.contains(" REFUSE ") && l.contains("from this IP"))
        .await
        .unwrap();
    assert!(refuse.contains("form=surv1"), "{refuse}");
    assert_eq!(
        srv.server
            .stats
            .refusals
            .get(surv_server::watchers::RefusalCause::PerIp),
        1
    );
    // A place freed is a place again.
    drop(first);
    srv.wait_sessions(1).await.unwrap();
    let again = RawViewer::register(srv.addr, Form::V1).await;
    assert!(again.is_ok(), "{:?}", again.err());
    srv.stop().await.unwrap();
}
