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
    // Many failures in a row: all counted (the log is rate-limited, the counter is not).
    for _ in 0..100 {
        let _ = check(Presented::Token(b"guess"));
    }
    assert_eq!(stats.auth_failures.load(Relaxed), 103);
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
