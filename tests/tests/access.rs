//! Access control (`--token`), end to end: every form without the token is refused (a reason
//! on the wire for SURV/1, nothing served otherwise) and counted; every form with it works;
//! `--allow-unauthenticated` lets in only the seed forms, which cannot carry a token. An address
//! that keeps presenting wrong tokens is slowed down, and no other address is.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_client::{ClientError, Config as ClientConfig};
use surv_proto::Form;
use surv_server::auth::throttle::FREE_FAILURES;
use surv_server::auth::Token;
use surv_server::{Config, RefusalCause};
use surv_tests::standins::oak_host;
use surv_tests::standins::seed001_app::SeedApp;
use surv_tests::{
    free_tcp_port, free_udp_port, start_server, try_registration, AckStyle, RawViewer, ServerOpts,
    TestServer, IO_TIMEOUT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cr3t-t0ken";

async fn server(allow_unauthenticated: bool) -> TestServer {
    server_with(allow_unauthenticated, ServerOpts::sized(160, 90)).await
}

/// With the token, and `opts`' own ports for the camera (OAK, Request apps).
async fn server_with(allow_unauthenticated: bool, opts: ServerOpts) -> TestServer {
    let config = Config {
        token: Some(Token::new(TOKEN).unwrap()),
        allow_unauthenticated,
        ..Config::default()
    };
    start_server(ServerOpts { config, ..opts }).await.unwrap()
}

fn failures(srv: &TestServer) -> u64 {
    srv.server.stats.auth_failures.load(Relaxed)
}

fn throttled(srv: &TestServer) -> u64 {
    srv.server.stats.auth_throttled.load(Relaxed)
}

/// A TCP connection to `to` from the loopback address `127.0.0.<n>` (loopback takes any
/// 127/8 source): one "machine" per address.
async fn connect_from(n: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, n], 0))).unwrap();
    timeout(IO_TIMEOUT, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// An HTTP response: status, `Retry-After`, body.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// `GET path` from `127.0.0.<n>`, with `Authorization: Bearer <token>` if given.
async fn get_from(n: u8, http: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let mut tcp = connect_from(n, http).await;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: surv\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let mut all = Vec::new();
    timeout(IO_TIMEOUT, async {
        tcp.write_all(request.as_bytes()).await?;
        tcp.read_to_end(&mut all).await
    })
    .await
    .expect("no response within the timeout")
    .unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.trim().to_string());
    HttpReply {
        status,
        retry_after,
        body: body.to_string(),
    }
}

/// Sends a SURV/1 registration from `127.0.0.<n>` and reads the reply line.
async fn register_from(n: u8, srv: SocketAddr, line: &str) -> String {
    let mut tcp = connect_from(n, srv).await;
    let mut out = Vec::new();
    timeout(IO_TIMEOUT, async {
        tcp.write_all(line.as_bytes()).await?;
        tcp.read_to_end(&mut out).await
    })
    .await
    .expect("no reply within the timeout")
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
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
        // The camera's own Request port, as `--request-port` starts it.
        let request_port = free_udp_port();
        let opts = ServerOpts {
            request_port,
            ..ServerOpts::sized(160, 90)
        };
        let srv = server_with(allow_unauthenticated, opts).await;
        let port = std::net::SocketAddr::from(([127, 0, 0, 1], request_port));
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
        assert_eq!(
            srv.server.stats.refusals.get(RefusalCause::Unauthorized),
            refused
        );
        srv.stop().await.unwrap();
    }
}

/// The OAK's host program sends nothing, so it cannot carry the token: with `--token` its
/// connection is closed unserved (counted, journalled), unless `--allow-unauthenticated`.
#[tokio::test]
async fn oak_host_programs_are_refused_unless_allow_unauthenticated() {
    for allow_unauthenticated in [false, true] {
        // The camera's own OAK port, as `--tcp-stream-port` starts it.
        let tcp_stream_port = free_tcp_port();
        let opts = ServerOpts {
            tcp_stream_port,
            ..ServerOpts::sized(160, 90)
        };
        let srv = server_with(allow_unauthenticated, opts).await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tcp_stream_port));
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
        srv.stop().await.unwrap();
    }
}

/// Wrong tokens hammered over HTTP from 127.0.0.1: after five (401), the address gets 429 with
/// `Retry-After`, unchecked (its right token too), counted in `auth_throttled` (`/metrics`,
/// `/status`); meanwhile another address with the right token is served at once.
#[tokio::test]
async fn an_address_hammering_wrong_tokens_over_http_is_slowed_down_alone() {
    let srv = server(false).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let web = tokio::spawn(surv_server::http::serve(
        srv.server.clone(),
        listener,
        srv.shutdown.clone(),
    ));

    for _ in 0..FREE_FAILURES {
        let reply = get_from(1, http, "/status", Some("guess")).await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    let reply = get_from(1, http, "/status", Some("guess")).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.retry_after.as_deref(), Some("1"), "{reply:?}");
    assert!(
        reply.body.contains("too many wrong access tokens"),
        "{reply:?}"
    );
    // Within the lockout, the right token from that address is not even looked at.
    assert_eq!(get_from(1, http, "/status", Some(TOKEN)).await.status, 429);
    // Another address, at once: served.
    let other = get_from(2, http, "/status", Some(TOKEN)).await;
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(failures(&srv), u64::from(FREE_FAILURES));
    assert_eq!(throttled(&srv), 2);

    // The hammer goes on: every request is answered, as 401 (a guess counted, when a lockout
    // has just ended) or 429 (unchecked); the counters say which.
    let (mut unauthorized, mut too_many) = (0, 0);
    for _ in 0..200 {
        let reply = get_from(1, http, "/status", Some("guess")).await;
        match reply.status {
            401 => unauthorized += 1,
            429 => {
                too_many += 1;
                let secs: u64 = reply.retry_after.unwrap().parse().unwrap();
                assert!((1..=60).contains(&secs), "{secs}");
            }
            other => panic!("{other}: {reply:?}"),
        }
    }
    assert!(too_many >= 150, "{unauthorized} 401, {too_many} 429");
    assert_eq!(failures(&srv), u64::from(FREE_FAILURES) + unauthorized);
    assert_eq!(throttled(&srv), 2 + too_many);
    assert_eq!(
        srv.server.stats.refusals.get(RefusalCause::Unauthorized),
        failures(&srv) + throttled(&srv)
    );

    // What the operator sees, asked from the other address.
    let metrics = get_from(2, http, "/metrics", Some(TOKEN)).await;
    assert_eq!(metrics.status, 200);
    let sample = |name: &str| -> u64 {
        let line = metrics.body.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", metrics.body))
    };
    assert_eq!(sample("surv_auth_throttled_total "), throttled(&srv));
    assert_eq!(sample("surv_auth_failures_total "), failures(&srv));
    let status = get_from(2, http, "/status", Some(TOKEN)).await;
    assert!(
        status
            .body
            .contains(&format!("\"auth_throttled\":{}", throttled(&srv))),
        "{}",
        status.body
    );

    srv.shutdown.cancel();
    timeout(IO_TIMEOUT, web).await.unwrap().unwrap();
    srv.stop().await.unwrap();
}

/// The registration port: after five wrong tokens from 127.0.0.3, it is told `ERR SURV/1 too
/// many wrong access tokens …` (its right token too); surv-client from 127.0.0.1 still streams,
/// and the seed form from 127.0.0.3 is refused as before (it carries no token).
#[tokio::test]
async fn an_address_guessing_on_the_registration_port_is_slowed_down_alone() {
    let srv = server(false).await;
    for _ in 0..FREE_FAILURES {
        let reply = register_from(3, srv.addr, "SURV/1 5000 token=guess\n").await;
        assert_eq!(reply, "ERR SURV/1 wrong access token\n");
    }
    let right = format!("SURV/1 5000 token={TOKEN}\n");
    for line in ["SURV/1 5000 token=guess\n", right.as_str()] {
        let reply = register_from(3, srv.addr, line).await;
        assert_eq!(
            reply,
            "ERR SURV/1 too many wrong access tokens from this address: try again in 1 s\n"
        );
    }
    assert_eq!(throttled(&srv), 2);
    let summary = run_client(client(&srv, Some(TOKEN))).await.unwrap();
    assert!(summary.decoded >= 10, "{summary}");
    let seed = register_from(3, srv.addr, "5000").await;
    assert!(seed.contains("cannot carry"), "{seed:?}");
    assert_eq!(failures(&srv), u64::from(FREE_FAILURES) + 1);
    assert_eq!(throttled(&srv), 2);
    let journal = srv.stop().await.unwrap();
    let throttled_lines = journal
        .iter()
        .filter(|l| l.contains("REFUSE") && l.contains("too many wrong access tokens"))
        .count();
    assert_eq!(throttled_lines, 2, "{journal:#?}");
    assert!(journal
        .iter()
        .any(|l| l.contains(" JOIN ") && l.contains("form=surv1")));
}
