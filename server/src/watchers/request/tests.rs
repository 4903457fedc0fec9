//! The hub's bookkeeping, driven datagram by datagram through `take` against a real server
//! (scripted frames): who joins, who is renewed, refused, or expired, and what the journal says.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RequestConfig, RequestHub, Taken};
use crate::auth::Token;
use crate::capture::{CaptureConfig, FrameSink, StreamShape};
use crate::journal::read_all;
use crate::sources::{PixelFormat, RawFrame, Source, SourceRun};
use crate::{Capture, Config, Journal, Server};

/// A frame every 33 ms.
struct Ticker;

impl Source for Ticker {
    fn describe(&self) -> String {
        "ticker".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            let shape = StreamShape {
                width: 32,
                height: 32,
                fps: 30,
            };
            sink.opened("ticker", shape);
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
    hub: Arc<RequestHub>,
    server: Arc<Server>,
    log_dir: tempfile::TempDir,
    _capture: Capture,
    _shutdown: CancellationToken,
}

async fn rig(config: Config, requests: RequestConfig) -> Rig {
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
    let server = Arc::new(Server::new(config, &capture, 65_000, journal));
    let socket = RequestHub::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hub = RequestHub::new(
        server.clone(),
        server.first_camera().clone(),
        socket,
        requests,
    );
    Rig {
        hub,
        server,
        log_dir,
        _capture: capture,
        _shutdown: shutdown,
    }
}

impl Rig {
    fn journal(&self) -> Vec<String> {
        read_all(self.log_dir.path()).unwrap()
    }

    fn count(&self, what: &str) -> usize {
        self.journal().iter().filter(|l| l.contains(what)).count()
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn requests_join_anything_later_renews_strangers_are_not_ours() {
    let r = rig(Config::default(), RequestConfig::default()).await;
    let app = addr("127.0.0.1:40001");
    assert_eq!(r.hub.take(b"Request", app), Taken::Request);
    assert_eq!(r.hub.len(), 1);
    assert_eq!(
        r.server.watchers.len(),
        1,
        "it counts against --max-viewers"
    );
    assert_eq!(r.count(" JOIN ") + r.count("form=request"), 2);
    // The same app again, or anything else from it: renewals, no second JOIN.
    assert_eq!(r.hub.take(b"Request", app), Taken::Request);
    assert_eq!(r.hub.take(b"ping", app), Taken::Renewal);
    assert!(r.hub.offer(b"Request\n", app));
    assert!(!r.hub.offer(b"\xff\xd8 a frame", app), "not consumed");
    assert_eq!(r.hub.stats.renewals.load(Relaxed), 4);
    assert_eq!((r.hub.len(), r.count(" JOIN ")), (1, 1));
    // From anyone else, only a Request is the hub's.
    let stranger = addr("127.0.0.1:40002");
    assert_eq!(r.hub.take(b"\xff\xd8\xff", stranger), Taken::NotMine);
    assert_eq!(r.hub.take(b"request", stranger), Taken::NotMine);
    // A Request with an unusable token is the hub's, and refused.
    assert_eq!(r.hub.take(b"Request a b", stranger), Taken::Request);
    assert_eq!(r.hub.len(), 1);
}

#[tokio::test]
async fn each_ip_gets_at_most_per_ip_apps() {
    let requests = RequestConfig {
        per_ip: 2,
        ..RequestConfig::default()
    };
    let r = rig(Config::default(), requests).await;
    for port in 1..=5 {
        r.hub.take(b"Request", addr(&format!("127.0.0.1:{port}")));
    }
    assert_eq!(r.hub.len(), 2);
    assert_eq!(r.hub.stats.refused_per_ip.load(Relaxed), 3);
    assert_eq!(r.server.stats.refusals.total(), 3);
    // Journalled, but not three times: refusals of datagrams are rate-limited.
    assert_eq!(r.count("REFUSE"), 1, "{:#?}", r.journal());
    assert!(r
        .journal()
        .iter()
        .any(|l| l.contains("form=request") && l.contains("2 apps already watch from this IP")));
    // Another IP has its own allowance.
    r.hub.take(b"Request", addr("127.0.0.2:1"));
    assert_eq!(r.hub.len(), 3);
}

#[tokio::test]
async fn the_server_limit_holds_for_apps_too() {
    let config = Config {
        max_viewers: 1,
        ..Config::default()
    };
    let r = rig(config, RequestConfig::default()).await;
    r.hub.take(b"Request", addr("127.0.0.1:1"));
    r.hub.take(b"Request", addr("127.0.0.2:1"));
    assert_eq!(r.hub.len(), 1);
    assert_eq!(r.hub.stats.refused_full.load(Relaxed), 1);
}

#[tokio::test]
async fn silent_apps_leave_after_the_ttl_renewed_ones_stay() {
    let ttl = Duration::from_secs(60);
    let requests = RequestConfig {
        ttl: Some(ttl),
        ..RequestConfig::default()
    };
    let r = rig(Config::default(), requests).await;
    let (quiet, renewing) = (addr("127.0.0.1:1"), addr("127.0.0.1:2"));
    let t0 = Instant::now();
    r.hub.take(b"Request", quiet);
    r.hub.take(b"Request", renewing);
    r.hub.expire(t0 + ttl / 2);
    assert_eq!(r.hub.len(), 2);
    assert!(r.hub.renew(renewing, t0 + ttl / 2));
    r.hub.expire(t0 + ttl + Duration::from_secs(1));
    assert_eq!(r.hub.len(), 1);
    let leave = r.journal().into_iter().find(|l| l.contains(" LEAVE "));
    let leave = leave.expect("a LEAVE");
    assert!(
        leave.contains("viewer=127.0.0.1:1 form=request reason=timeout"),
        "{leave}"
    );
    // Its place is free again: the same IP may have as many apps as before.
    assert_eq!(r.server.watchers.len(), 1);
}

#[tokio::test]
async fn ttl_zero_keeps_apps_until_shutdown() {
    let requests = RequestConfig {
        ttl: None,
        ..RequestConfig::default()
    };
    let r = rig(Config::default(), requests).await;
    r.hub.take(b"Request", addr("127.0.0.1:1"));
    r.hub
        .expire(Instant::now() + Duration::from_secs(10 * 365 * 86_400));
    assert_eq!(r.hub.len(), 1);
    let stop = CancellationToken::new();
    stop.cancel();
    r.hub.clone().serve(stop).await;
    assert_eq!(r.hub.len(), 0);
    assert_eq!(r.count("reason=shutdown"), 1, "{:#?}", r.journal());
    // After shutdown nobody joins.
    r.hub.take(b"Request", addr("127.0.0.1:2"));
    assert_eq!(r.hub.len(), 0);
}

#[tokio::test]
async fn with_a_token_requests_must_carry_it() {
    let config = Config {
        token: Some(Token::new("s3cr3t").unwrap()),
        ..Config::default()
    };
    let r = rig(config.clone(), RequestConfig::default()).await;
    r.hub.take(b"Request", addr("127.0.0.1:1"));
    r.hub.take(b"Request guess", addr("127.0.0.1:2"));
    assert_eq!(r.hub.len(), 0);
    assert_eq!(r.hub.stats.refused_auth.load(Relaxed), 2);
    assert_eq!(r.server.stats.auth_failures.load(Relaxed), 2);
    r.hub.take(b"Request s3cr3t", addr("127.0.0.1:3"));
    assert_eq!(r.hub.len(), 1);

    // --allow-unauthenticated: the bare seed form gets in; a wrong token still does not.
    let lenient = Config {
        allow_unauthenticated: true,
        ..config
    };
    let r = rig(lenient, RequestConfig::default()).await;
    r.hub.take(b"Request", addr("127.0.0.1:1"));
    r.hub.take(b"Request guess", addr("127.0.0.1:2"));
    assert_eq!(r.hub.len(), 1);
    assert_eq!(r.server.stats.auth_failures.load(Relaxed), 1);
}

/// `Request`s with wrong tokens from one address: after five, its `Request`s are refused
/// unchecked (the right token too), the same way (nothing sent back, counted); another address
/// joins; and the address's TCP forms are not slowed down by datagrams anyone can forge.
#[tokio::test]
async fn requests_guessing_from_one_address_are_slowed_down_alone() {
    use crate::auth::throttle::FREE_FAILURES;
    use crate::auth::Presented;

    let config = Config {
        token: Some(Token::new("s3cr3t").unwrap()),
        ..Config::default()
    };
    let r = rig(config, RequestConfig::default()).await;
    for port in 1..=FREE_FAILURES {
        let from = SocketAddr::new([192, 0, 2, 7].into(), port as u16);
        assert_eq!(r.hub.take(b"Request guess", from), Taken::Request);
    }
    let stats = &r.server.stats;
    assert_eq!(stats.auth_failures.load(Relaxed), u64::from(FREE_FAILURES));
    r.hub.take(b"Request s3cr3t", addr("192.0.2.7:100"));
    assert_eq!(r.hub.len(), 0);
    assert_eq!(stats.auth_throttled.load(Relaxed), 1);
    assert_eq!(
        r.hub.stats.refused_auth.load(Relaxed),
        u64::from(FREE_FAILURES) + 1
    );
    r.hub.take(b"Request s3cr3t", addr("192.0.2.8:100"));
    assert_eq!(r.hub.len(), 1);
    let tcp = r.server.access.check(
        stats,
        addr("192.0.2.7:5000"),
        "surv1",
        Presented::Token(b"s3cr3t"),
    );
    assert_eq!(tcp, Ok(()));
}
