//! The token, the policy for each way of presenting it, and the HTTP credentials helper.

use std::sync::atomic::Ordering::Relaxed;

use super::*;

fn peer() -> SocketAddr {
    "192.0.2.7:4000".parse().unwrap()
}

fn with_token(allow_unauthenticated: bool) -> Access {
    Access::new(Some(Token::new("s3cr3t").unwrap()), allow_unauthenticated)
}

#[test]
fn tokens_are_trimmed_and_must_travel_on_the_wire() {
    let t = Token::new("  s3cr3t\n").unwrap();
    assert!(t.matches(b"s3cr3t"));
    assert!(!t.matches(b"s3cr3t\n"));
    assert!(!t.matches(b"s3cr3"));
    assert!(!t.matches(b"S3cr3t"));
    assert!(!t.matches(b""));
    assert!(matches!(Token::new(" \n"), Err(TokenError::Empty)));
    assert!(matches!(
        Token::new("two words"),
        Err(TokenError::NotWireSafe)
    ));
    assert!(matches!(
        Token::new(&"x".repeat(MAX_TOKEN_BYTES + 1)),
        Err(TokenError::NotWireSafe)
    ));
    assert_eq!(format!("{t:?}"), "Token(<redacted>)");
}

#[test]
fn token_files_are_read_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cr3t\n").unwrap();
    assert!(Token::from_file(&path).unwrap().matches(b"s3cr3t"));
    std::fs::write(&path, "\n").unwrap();
    assert!(matches!(Token::from_file(&path), Err(TokenError::Empty)));
    let missing = Token::from_file(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn without_a_token_everyone_is_let_in() {
    let stats = Stats::default();
    let open = Access::default();
    assert!(!open.requires_token());
    for p in [
        Presented::Nothing,
        Presented::SeedForm,
        Presented::Token(b"anything"),
    ] {
        assert_eq!(open.check(&stats, peer(), "surv1", p), Ok(()));
    }
    assert_eq!(stats.auth_failures.load(Relaxed), 0);
}

#[test]
fn with_a_token_every_form_must_present_it_and_failures_are_counted() {
    let stats = Stats::default();
    let access = with_token(false);
    assert!(access.requires_token());
    let check = |p| access.check(&stats, peer(), "surv1", p);
    assert_eq!(check(Presented::Token(b"s3cr3t")), Ok(()));
    assert_eq!(check(Presented::Token(b"guess")), Err(Denied::Wrong));
    assert_eq!(check(Presented::Nothing), Err(Denied::Missing));
    assert_eq!(check(Presented::SeedForm), Err(Denied::FormCannotCarryIt));
    assert_eq!(stats.auth_failures.load(Relaxed), 3);
    // Many failures in a row: all counted (the log is rate-limited, the counters are not), as
    // failures until the address is locked out (5 wrong tokens), then as throttled.
    for _ in 0..100 {
        let _ = check(Presented::Token(b"guess"));
    }
    assert_eq!(stats.auth_failures.load(Relaxed), 7);
    assert_eq!(stats.auth_throttled.load(Relaxed), 96);
}

#[test]
fn allow_unauthenticated_lets_in_the_seed_forms_only() {
    let stats = Stats::default();
    let access = with_token(true);
    let check = |p| access.check(&stats, peer(), "seed", p);
    assert_eq!(check(Presented::SeedForm), Ok(()));
    // A form that can carry the token still needs it, and a wrong one is still wrong.
    assert_eq!(check(Presented::Nothing), Err(Denied::Missing));
    assert_eq!(check(Presented::Token(b"guess")), Err(Denied::Wrong));
    assert_eq!(stats.auth_failures.load(Relaxed), 2);
}

#[test]
fn http_credentials_bearer_basic_and_query() {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let basic = format!("Basic {}", b64("viewer:s3cr3t"));
    let basic_no_user = format!("basic {}", b64(":s3cr3t"));
    /// Authorization header, query string, the token they present.
    type Case<'a> = (Option<&'a [u8]>, Option<&'a str>, Option<&'a [u8]>);
    let cases: &[Case] = &[
        (Some(b"Bearer s3cr3t"), None, Some(b"s3cr3t")),
        (Some(b"bearer  s3cr3t "), None, Some(b"s3cr3t")),
        (Some(basic.as_bytes()), None, Some(b"s3cr3t")),
        (Some(basic_no_user.as_bytes()), None, Some(b"s3cr3t")),
        (None, Some("token=s3cr3t"), Some(b"s3cr3t")),
        (None, Some("a=1&token=s%2B3"), Some(b"s+3")),
        (None, Some("a=1"), None),
        (None, None, None),
        // Not credentials: nothing presented.
        (Some(b"Basic !!notbase64"), None, None),
        (Some(b"Basic"), None, None),
        // A scheme we do not know: the query may still carry the token.
        (Some(b"Digest x"), Some("token=q"), Some(b"q")),
    ];
    for (authorization, query, want) in cases {
        assert_eq!(
            http_presented(*authorization, *query).as_deref(),
            *want,
            "{authorization:?} {query:?}"
        );
    }
    // What the HTTP server does with it.
    let stats = Stats::default();
    let access = with_token(false);
    let presented = http_presented(Some(basic.as_bytes()), None);
    let p = presented
        .as_deref()
        .map_or(Presented::Nothing, Presented::Token);
    assert_eq!(access.check(&stats, peer(), "http", p), Ok(()));
}

/// The throttle's tests: a clock of their own (`t0` + an offset), no sleeping.
mod throttling {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use super::super::throttle::{lockout, FREE_FAILURES, MAX_LOCKOUT, MAX_TRACKED, QUIET, WINDOW};
    use super::*;

    const RIGHT: Presented<'static> = Presented::Token(b"s3cr3t");
    const WRONG: Presented<'static> = Presented::Token(b"guess");

    struct Rig {
        access: Access,
        stats: Stats,
        t0: Instant,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                access: with_token(false),
                stats: Stats::default(),
                t0: Instant::now(),
            }
        }

        /// An attempt over a connection from `ip`, `after` the rig's start.
        fn at(&self, after: Duration, ip: &str, p: Presented<'_>) -> Result<(), Denied> {
            self.via(Via::Connection, after, ip, p)
        }

        fn via(&self, via: Via, after: Duration, ip: &str, p: Presented<'_>) -> Result<(), Denied> {
            let ip: IpAddr = ip.parse().unwrap();
            let peer = SocketAddr::new(ip, 4000);
            let now = self.t0 + after;
            self.access
                .check_at(&self.stats, peer, via, "surv1", p, now)
        }

        fn failures(&self) -> u64 {
            self.stats.auth_failures.load(Relaxed)
        }

        fn throttled(&self) -> u64 {
            self.stats.auth_throttled.load(Relaxed)
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const A: &str = "192.0.2.7";
    const B: &str = "198.51.100.9";

    /// Locks `A` out at 0 s: [`FREE_FAILURES`] wrong tokens, the last of them starting a 1 s
    /// lockout.
    fn lock_out_a(rig: &Rig) {
        for _ in 0..FREE_FAILURES {
            assert_eq!(rig.at(secs(0), A, WRONG), Err(Denied::Wrong));
        }
    }

    #[test]
    fn after_five_wrong_tokens_an_address_is_refused_unchecked_even_with_the_right_one() {
        let rig = Rig::new();
        lock_out_a(&rig);
        assert_eq!(rig.failures(), u64::from(FREE_FAILURES));
        assert_eq!(rig.throttled(), 0);
        let throttled = Err(Denied::Throttled { retry_after_s: 1 });
        assert_eq!(rig.at(ms(0), A, WRONG), throttled);
        // The right token is not even compared: a lucky guess gets nothing.
        assert_eq!(rig.at(ms(500), A, RIGHT), throttled);
        assert_eq!(rig.at(ms(999), A, RIGHT), throttled);
        assert_eq!(rig.failures(), u64::from(FREE_FAILURES));
        assert_eq!(rig.throttled(), 3);
        let why = rig.at(ms(10), A, WRONG).unwrap_err().to_string();
        assert_eq!(
            why,
            "too many wrong access tokens from this address: try again in 1 s"
        );
        // Once the lockout is over, the token is compared again.
        assert_eq!(rig.at(ms(1000), A, RIGHT), Ok(()));
    }

    #[test]
    fn other_addresses_are_unaffected() {
        let rig = Rig::new();
        lock_out_a(&rig);
        assert!(matches!(
            rig.at(ms(1), A, RIGHT),
            Err(Denied::Throttled { .. })
        ));
        assert_eq!(rig.at(ms(1), B, RIGHT), Ok(()));
        assert_eq!(rig.at(ms(1), B, WRONG), Err(Denied::Wrong));
        assert_eq!(rig.at(ms(1), "192.0.2.8", RIGHT), Ok(()));
        // The same IPv4 address seen on a dual-stack socket is the same address.
        assert!(matches!(
            rig.at(ms(1), "::ffff:192.0.2.7", RIGHT),
            Err(Denied::Throttled { .. })
        ));
    }

    #[test]
    fn an_ipv6_address_counts_by_its_64_prefix() {
        let rig = Rig::new();
        for i in 0..FREE_FAILURES {
            // A host hopping across its /64 is still one address.
            let ip = format!("2001:db8:1:2::{:x}", i + 1);
            assert_eq!(rig.at(secs(0), &ip, WRONG), Err(Denied::Wrong));
        }
        assert!(matches!(
            rig.at(ms(1), "2001:db8:1:2:ffff::1", RIGHT),
            Err(Denied::Throttled { .. })
        ));
        assert_eq!(rig.at(ms(1), "2001:db8:1:3::1", RIGHT), Ok(()));
    }

    #[test]
    fn lockouts_double_up_to_the_cap() {
        let rig = Rig::new();
        lock_out_a(&rig);
        let mut now = secs(0);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for n in 0..10 {
            expected.push(lockout(n).as_secs());
            let Err(Denied::Throttled { retry_after_s }) = rig.at(now, A, RIGHT) else {
                panic!("not throttled after lockout {n}");
            };
            got.push(retry_after_s);
            // Just before it ends: still refused; then one wrong token locks it out again.
            assert!(rig.at(now + secs(retry_after_s) - ms(1), A, RIGHT).is_err());
            now += secs(retry_after_s);
            assert_eq!(rig.at(now, A, WRONG), Err(Denied::Wrong));
        }
        assert_eq!(got, expected);
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(lockout(u32::MAX), MAX_LOCKOUT);
        // 5 free guesses, then one per lockout: 15 in 4 min 23 s, 1 a minute from then on.
        assert_eq!(rig.failures(), u64::from(FREE_FAILURES) + 10);
        assert_eq!(now, secs(1 + 2 + 4 + 8 + 16 + 32 + 60 * 4));
    }

    #[test]
    fn a_right_token_resets_the_address() {
        let rig = Rig::new();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(rig.at(secs(0), A, WRONG), Err(Denied::Wrong));
        }
        assert_eq!(rig.at(secs(1), A, RIGHT), Ok(()));
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(rig.at(secs(2), A, WRONG), Err(Denied::Wrong));
        }
        assert_eq!(rig.at(secs(2), A, RIGHT), Ok(()));
        assert_eq!(rig.access.tracked(), (0, 0));

        // After lockouts: the right token once they are over forgets them all.
        lock_out_a(&rig);
        assert_eq!(rig.at(secs(1), A, WRONG), Err(Denied::Wrong)); // 2 s lockout
        assert_eq!(rig.at(secs(3), A, RIGHT), Ok(()));
        assert_eq!(rig.at(secs(3), A, WRONG), Err(Denied::Wrong));
        assert_eq!(rig.at(secs(3), A, RIGHT), Ok(()), "back to 5 free");
    }

    #[test]
    fn failures_spread_wider_than_the_window_are_not_throttled() {
        let rig = Rig::new();
        let mut now = secs(0);
        for _ in 0..3 * FREE_FAILURES {
            assert_eq!(rig.at(now, A, WRONG), Err(Denied::Wrong));
            now += WINDOW / (FREE_FAILURES - 1);
        }
        assert_eq!(rig.at(now, A, RIGHT), Ok(()));
        assert_eq!(rig.throttled(), 0);
    }

    #[test]
    fn only_a_wrong_token_counts_against_an_address() {
        let rig = Rig::new();
        for _ in 0..3 * FREE_FAILURES {
            assert_eq!(rig.at(secs(0), A, Presented::Nothing), Err(Denied::Missing));
            assert_eq!(
                rig.at(secs(0), A, Presented::SeedForm),
                Err(Denied::FormCannotCarryIt)
            );
        }
        assert_eq!(rig.access.tracked(), (0, 0));
        assert_eq!(rig.at(secs(0), A, RIGHT), Ok(()));
    }

    #[test]
    fn forged_datagrams_cannot_lock_out_an_address_s_connections() {
        let rig = Rig::new();
        for _ in 0..FREE_FAILURES {
            let got = rig.via(Via::Datagram, secs(0), A, WRONG);
            assert_eq!(got, Err(Denied::Wrong));
        }
        assert!(matches!(
            rig.via(Via::Datagram, ms(1), A, RIGHT),
            Err(Denied::Throttled { .. })
        ));
        assert_eq!(rig.at(ms(1), A, RIGHT), Ok(()));
        assert_eq!(rig.access.tracked(), (0, 1));
    }

    #[test]
    fn an_address_is_forgotten_after_a_quiet_period() {
        let rig = Rig::new();
        lock_out_a(&rig);
        assert_eq!(rig.at(secs(1), A, WRONG), Err(Denied::Wrong)); // 2 s lockout, to 3 s
        assert_eq!(rig.access.tracked(), (1, 0));
        let later = secs(3) + QUIET;
        // Another address's check sweeps it out: the table is empty again (the lock-free path).
        assert_eq!(rig.at(later, B, RIGHT), Ok(()));
        assert_eq!(rig.access.tracked(), (0, 0));
        // And it starts afresh: 5 free wrong tokens.
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(rig.at(later, A, WRONG), Err(Denied::Wrong));
        }
        assert_eq!(rig.at(later, A, RIGHT), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded_under_100_000_addresses() {
        let rig = Rig::new();
        lock_out_a(&rig);
        // Push A's lockout to a minute: its entry is the last to go.
        let mut now = secs(0);
        for n in 0..7 {
            now += lockout(n);
            assert_eq!(rig.at(now, A, WRONG), Err(Denied::Wrong));
        }
        let flood_start = now;
        let mut most = 0;
        for i in 0..100_000u32 {
            // 10.0.0.0/8, one wrong token each, 100 µs apart (10 s in all).
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            let at = flood_start + Duration::from_micros(100 * u64::from(i));
            assert_eq!(rig.at(at, &ip, WRONG), Err(Denied::Wrong));
            most = most.max(rig.access.tracked().0);
        }
        assert!(most <= MAX_TRACKED, "{most}");
        assert!(most >= MAX_TRACKED - MAX_TRACKED / 8, "{most}");
        // The address being slowed down was not evicted by the flood.
        assert!(matches!(
            rig.at(flood_start + secs(10), A, RIGHT),
            Err(Denied::Throttled { .. })
        ));
        // The flood's addresses were each allowed their free failures, no more were counted.
        assert_eq!(rig.failures(), u64::from(FREE_FAILURES) + 7 + 100_000);
    }
}

/// The expected response is Python's `hashlib` on the same fields: an independent oracle.
#[test]
fn a_digest_answer_made_with_the_token_is_right_and_any_other_is_wrong() {
    let header = r#"Digest username="Mufasa", realm="surv", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c0", uri="rtsp://127.0.0.1:8554/main", response="E124B9AB5E6CE2D223C40F8B717B5344""#;
    let answer = DigestAnswer::parse(header, "DESCRIBE").unwrap();
    assert_eq!(answer.username, "Mufasa");
    assert_eq!(answer.uri, "rtsp://127.0.0.1:8554/main");
    let token = Token::new("Circle-Of-Life").unwrap();
    assert!(token.answers(&answer), "uppercase hex is accepted too");
    assert!(!Token::new("Circle-Of-Lif").unwrap().answers(&answer));
    let play = DigestAnswer::parse(header, "PLAY").unwrap();
    assert!(!token.answers(&play), "the method is part of the hash");
    // Through the access check: counted like a wrong token.
    let access = Access::new(Some(token), false);
    let stats = Stats::default();
    assert_eq!(
        access.check(&stats, peer(), "rtsp", Presented::Digest(&answer)),
        Ok(())
    );
    assert_eq!(
        access.check(&stats, peer(), "rtsp", Presented::Digest(&play)),
        Err(Denied::Wrong)
    );
    assert_eq!(stats.auth_failures.load(Relaxed), 1);
}

#[test]
fn digest_headers_that_are_not_answers_are_none() {
    for bad in [
        "",
        "Digest",
        "Basic dTpzM2NyM3Q=",
        r#"Digest username="u", realm="surv", nonce="n", uri="x""#,
        r#"Digest username="u, realm="surv", nonce="n", uri="x", response="r"#,
        "Digest ===,,,\"",
    ] {
        assert_eq!(DigestAnswer::parse(bad, "DESCRIBE"), None, "{bad}");
    }
    let unquoted = DigestAnswer::parse(
        "Digest username=u,realm=surv,nonce=n,uri=x,response=r,algorithm=MD5",
        "PLAY",
    )
    .unwrap();
    assert_eq!((unquoted.realm, unquoted.response), ("surv", "r"));
}
