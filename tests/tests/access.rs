//! Access control (`--token`), end to end: every form without the token is refused (a reason
//! on the wire for SURV/1, nothing served otherwise) and counted; every form with it works;
//! `--allow-unauthenticated` lets in only the seed forms, which cannot carry a token.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_client::{ClientError, Config as ClientConfig};
use surv_proto::Form;
use surv_server::auth::Token;
use surv_server::watchers::request::{RequestConfig, RequestHub};
use surv_server::{Config, RefusalCause};
use surv_tests::standins::oak_host;
use surv_tests::standins::seed001_app::SeedApp;
use surv_tests::{
    start_server, try_registration, AckStyle, RawViewer, ServerOpts, TestServer, IO_TIMEOUT,
};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cr3t-t0ken";

async fn server(allow_unauthenticated: bool) -> TestServer {
    let config = Config {
        token: Some(Token::new(TOKEN).unwrap()),
        allow_unauthenticated,
        ..Config::default()
    };
    start_server(ServerOpts {
        config,
        ..ServerOpts::sized(160, 90)
    })
    .await
    .unwrap()
}

fn failures(srv: &TestServer) -> u64 {
    srv.server.stats.auth_failures.load(Relaxed)
}

fn client(srv: &TestServer, token: Option<&str>) -> ClientConfig {
    ClientConfig {
        token: token.map(str::to_string),
        ..surv_tests::client_config(srv.addr, 1.0)
    }
}

async fn run_client(cfg: ClientConfig) -> Result<surv_client::Summary, ClientError> {
    timeout(
        IO_TIMEOUT,
        surv_client::run(cfg, None, CancellationToken::new()),
    )
    .await
    .expect("surv-client did not finish")
}

#[tokio::test]
async fn surv1_viewers_need_the_token() {
    let srv = server(false).await;
    // On the wire: refused with the reason, and the connection closed.
    let (reply, closed) = try_registration(srv.addr, b"SURV/1 5000\n").await.unwrap();
    assert!(reply.starts_with("ERR SURV/1 "), "{reply:?}");
    assert!(reply.contains("needs its access token"), "{reply:?}");
    assert!(closed);
    let (reply, _) = try_registration(srv.addr, b"SURV/1 5000 token=guess\n")
        .await
        .unwrap();
    assert!(reply.contains("wrong access token"), "{reply:?}");
    assert_eq!(failures(&srv), 2);

    // surv-client without the token, or with a wrong one: refused, and told why.
    for (token, why) in [
        (None, "needs its access token"),
        (Some("guess"), "wrong access token"),
    ] {
        match run_client(client(&srv, token)).await {
            Err(ClientError::Refused(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{token:?}: {other:?}"),
        }
    }
    assert_eq!(failures(&srv), 4);
    assert_eq!(srv.server.stats.joins.load(Relaxed), 0);

    // With it: streamed.
    let summary = run_client(client(&srv, Some(TOKEN))).await.unwrap();
    assert!(summary.decoded >= 10, "{summary}");
    assert_eq!(failures(&srv), 4);
    let journal = srv.stop().await.unwrap();
    let refusals = journal.iter().filter(|l| l.contains("REFUSE")).count();
    assert_eq!(refusals, 4, "{journal:#?}");
    assert!(journal
        .iter()
        .any(|l| l.contains(" JOIN ") && l.contains("form=surv1")));
}

#[tokio::test]
async fn seed_viewers_are_refused_unless_allow_unauthenticated() {
    let strict = server(false).await;
    let (reply, closed) = try_registration(strict.addr, b"5000").await.unwrap();
    assert!(reply.contains("cannot carry"), "{reply:?}");
    assert!(closed);
    assert_eq!(failures(&strict), 1);
    strict.stop().await.unwrap();

    let lenient = server(true).await;
    let mut viewer = RawViewer::register(lenient.addr, Form::Seed).await.unwrap();
    let got = viewer
        .receive(Duration::from_secs(1), 1_000, AckStyle::Seed, 0)
        .await
        .unwrap();
    assert!(got.decoded >= 10, "{got:?}");
    // A form that can carry the token still must.
    let (reply, _) = try_registration(lenient.addr, b"SURV/1 5000\n")
        .await
        .unwrap();
    assert!(reply.contains("needs its access token"), "{reply:?}");
    assert_eq!(failures(&lenient), 1);
    lenient.stop().await.unwrap();
}

#[tokio::test]
async fn apps_need_request_with_the_token() {
    for allow_unauthenticated in [false, true] {
        let srv = server(allow_unauthenticated).await;
        let socket = RequestHub::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap();
        let hub = RequestHub::new(srv.server.clone(), socket, RequestConfig::default());
        let task = tokio::spawn(hub.clone().run(srv.shutdown.clone()));
        let ip = |n| IpAddr::V4(Ipv4Addr::new(127, 0, 1, n));

        let mut signed = SeedApp::start(ip(1), port, Some(TOKEN)).await.unwrap();
        signed.recv_frame(IO_TIMEOUT).await.unwrap();
        let mut wrong = SeedApp::start(ip(2), port, Some("guess")).await.unwrap();
        let mut bare = SeedApp::start(ip(3), port, None).await.unwrap();
        let bare_served = bare.hears_anything(Duration::from_millis(500)).await;
        assert_eq!(bare_served, allow_unauthenticated);
        assert!(!wrong.hears_anything(Duration::from_millis(100)).await);
        let refused = if allow_unauthenticated { 1 } else { 2 };
        assert_eq!(failures(&srv), refused);
        assert_eq!(hub.stats.refused_auth.load(Relaxed), refused);
        srv.shutdown.cancel();
        timeout(IO_TIMEOUT, task).await.unwrap().unwrap();
        srv.stop().await.unwrap();
    }
}

/// The OAK's host program sends nothing, so it cannot carry the token: with `--token` its
/// connection is closed unserved (counted, journalled), unless `--allow-unauthenticated`.
#[tokio::test]
async fn oak_host_programs_are_refused_unless_allow_unauthenticated() {
    for allow_unauthenticated in [false, true] {
        let srv = server(allow_unauthenticated).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let oak = tokio::spawn(surv_server::watchers::oak_tcp::run(
            srv.server.clone(),
            listener,
            srv.shutdown.clone(),
        ));
        let mut host = tokio::net::TcpStream::connect(addr).await.unwrap();
        let read = oak_host::read_frame(&mut host).await;
        if allow_unauthenticated {
            let frame = read.unwrap();
            assert_eq!((frame.width, frame.height), (160, 90));
            assert_eq!(failures(&srv), 0);
        } else {
            assert!(read.is_err(), "served without the token");
            let mut rest = Vec::new();
            let n = timeout(IO_TIMEOUT, host.read_to_end(&mut rest))
                .await
                .expect("the connection is closed")
                .unwrap_or(0);
            assert_eq!(n, 0, "nothing sent");
            assert_eq!(failures(&srv), 1);
            assert_eq!(srv.server.stats.refusals.get(RefusalCause::Unauthorized), 1);
            srv.wait_journal(|l| l.contains("REFUSE") && l.contains("form=oak-tcp"))
                .await
                .unwrap();
        }
        drop(host);
        srv.shutdown.cancel();
        timeout(IO_TIMEOUT, oak).await.unwrap().unwrap();
        srv.stop().await.unwrap();
    }
}
