//! Registration parsing: every form, every prefix, every refusal.

use super::*;

fn seed(port: u16) -> Registration {
    Registration {
        form: Form::Seed,
        udp_port: port,
    }
}
fn v1(port: u16) -> Registration {
    Registration {
        form: Form::V1,
        udp_port: port,
    }
}

#[test]
fn seed_form_needs_a_pause_or_newline() {
    assert_eq!(
        Registration::decode(b"5000", false),
        Err(RegError::Incomplete)
    );
    assert_eq!(Registration::decode(b"5000", true), Ok(seed(5000)));
    assert_eq!(Registration::decode(b"5000\n", false), Ok(seed(5000)));
    assert_eq!(Registration::decode(b"5000\r\n", false), Ok(seed(5000)));
    assert_eq!(Registration::decode(b"65535", true), Ok(seed(65535)));
}

#[test]
fn v1_form() {
    assert_eq!(Registration::decode(b"SURV/1 5000\n", false), Ok(v1(5000)));
    assert_eq!(
        Registration::decode(b"SURV/1 5000\r\n", false),
        Ok(v1(5000))
    );
    assert_eq!(
        Registration::decode(b"SURV/1 5000", false),
        Err(RegError::Incomplete)
    );
    assert_eq!(
        Registration::decode(b"SURV/1 5000", true),
        Err(RegError::Garbage)
    );
    assert_eq!(
        Registration::decode(b"SURV/2 5000\n", false),
        Err(RegError::Version("2".into()))
    );
}

#[test]
fn round_trips() {
    for r in [seed(1), seed(65535), v1(1), v1(40000)] {
        assert_eq!(Registration::decode(&r.encode(), true), Ok(r));
    }
}

#[test]
fn every_prefix_of_a_valid_registration_is_incomplete() {
    for whole in [&b"SURV/1 5000\n"[..], b"5000\n"] {
        for n in 0..whole.len() {
            assert_eq!(
                Registration::decode(&whole[..n], false),
                Err(RegError::Incomplete),
                "{n}"
            );
        }
    }
}

#[test]
fn bad_registrations_are_refused_with_a_reason() {
    let cases: &[(&[u8], RegError)] = &[
        (b"", RegError::Empty),
        (b"0", RegError::BadPort("0".into())),
        (b"65536", RegError::BadPort("65536".into())),
        (
            b"99999999999999999999999",
            RegError::BadPort("99999999999999999999999".into()),
        ),
        (b"SURV/1 0\n", RegError::BadPort("0".into())),
        (b"SURV/1 -5\n", RegError::BadPort("-5".into())),
        (b"SURV/1 5000 extra\n", RegError::Garbage),
        (b"hello\n", RegError::Garbage),
        (b"GET / HTTP/1.1\r\n", RegError::Garbage),
        (b"5000\n5001\n", RegError::Garbage),
        (b"\xff\xfe\x00", RegError::Garbage),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            &Registration::decode(bytes, true).unwrap_err(),
            want,
            "{bytes:?}"
        );
    }
    assert_eq!(
        Registration::decode(&[b'7'; 65], false),
        Err(RegError::TooLong(64))
    );
}

fn line(s: &[u8]) -> Result<RegistrationLine, RegError> {
    RegistrationLine::decode(s, false)
}

#[test]
fn v1_form_carries_a_token() {
    let l = line(b"SURV/1 5000 token=s3cr3t!\n").unwrap();
    assert_eq!(l.registration, v1(5000));
    assert_eq!(l.token.as_deref(), Some("s3cr3t!"));
    // The plain forms carry none.
    assert_eq!(line(b"SURV/1 5000\n").unwrap().token, None);
    assert_eq!(RegistrationLine::decode(b"5000", true).unwrap().token, None);
    // Registration::decode still takes the line, without its token.
    assert_eq!(
        Registration::decode(b"SURV/1 5000 token=x\n", false),
        Ok(v1(5000))
    );
    // Never printed.
    assert!(!format!("{l:?}").contains("s3cr3t"));
}

#[test]
fn tokens_round_trip_and_every_prefix_is_incomplete() {
    let long = "t".repeat(MAX_TOKEN_BYTES);
    for t in ["a", "s3cr3t/+=~", long.as_str()] {
        let l = v1(65535).with_token(Some(t));
        let bytes = l.encode();
        assert_eq!(RegistrationLine::decode(&bytes, false), Ok(l.clone()));
        for n in 0..bytes.len() {
            assert_eq!(line(&bytes[..n]), Err(RegError::Incomplete), "{t} {n}");
        }
    }
    // The seed form has no room for a token: it is left out, not sent where a port belongs.
    assert_eq!(seed(5000).with_token(Some("x")).encode(), b"5000");
}

#[test]
fn bad_tokens_are_refused() {
    let too_long = format!("SURV/1 5000 token={}\n", "t".repeat(MAX_TOKEN_BYTES + 1));
    let endless = [b"SURV/1 5000 token=".as_slice(), &[b'x'; 300]].concat();
    let cases: &[(&[u8], RegError)] = &[
        (b"SURV/1 5000 token=\n", RegError::BadToken),
        (b"SURV/1 5000 token=a\x01b\n", RegError::BadToken),
        (b"SURV/1 5000 token=\xff\n", RegError::BadToken),
        (b"SURV/1 5000 secret=abc\n", RegError::Garbage),
        (b"SURV/1 5000 token=a token=b\n", RegError::Garbage),
        (b"SURV/1 5000  token=a\n", RegError::Garbage),
        (too_long.as_bytes(), RegError::BadToken),
        (&endless, RegError::TooLong(MAX_REGISTRATION_LINE_BYTES)),
        (b"SURV/1 0 token=abc\n", RegError::BadPort("0".into())),
    ];
    for (bytes, want) in cases {
        assert_eq!(&line(bytes).unwrap_err(), want, "{bytes:?}");
    }
    // A port still gets no more room than before.
    assert_eq!(
        RegistrationLine::decode(&[b'7'; 100], true),
        Err(RegError::TooLong(MAX_REGISTRATION_BYTES))
    );
}

#[test]
fn requests_as_seed_001_sends_them_and_with_a_token() {
    assert_eq!(
        AppRequest::decode(b"Request"),
        Ok(AppRequest { token: None })
    );
    assert_eq!(
        AppRequest::decode(b"Request\r\n"),
        Ok(AppRequest { token: None })
    );
    let signed = AppRequest::decode(b"Request s3cr3t\n").unwrap();
    assert_eq!(signed.token.as_deref(), Some("s3cr3t"));
    assert!(!format!("{signed:?}").contains("s3cr3t"));
    for r in [AppRequest { token: None }, signed] {
        assert_eq!(AppRequest::decode(&r.encode()), Ok(r));
    }
    let huge = vec![b'R'; MAX_REQUEST_BYTES + 1];
    let cases: &[(&[u8], RequestError)] = &[
        (b"", RequestError::NotARequest),
        (b"request", RequestError::NotARequest),
        (b"Requests", RequestError::NotARequest),
        (b"\xff\xd8\xff\xe0", RequestError::NotARequest),
        (b"Request ", RequestError::BadToken),
        (b"Request a b", RequestError::BadToken),
        (b"Request \x00", RequestError::BadToken),
        (&huge, RequestError::TooLong(MAX_REQUEST_BYTES + 1)),
    ];
    for (bytes, want) in cases {
        assert_eq!(&AppRequest::decode(bytes).unwrap_err(), want, "{bytes:?}");
    }
}

#[test]
fn valid_tokens_are_visible_ascii() {
    assert!(is_valid_token(b"abc-DEF_123.~!"));
    assert!(!is_valid_token(b""));
    assert!(!is_valid_token(b"two words"));
    assert!(!is_valid_token("é".as_bytes()));
    assert!(!is_valid_token(&[b'a'; MAX_TOKEN_BYTES + 1]));
}

#[test]
fn v1_form_names_a_camera_after_its_token() {
    let l = line(b"SURV/1 5000 cam=front-door\n").unwrap();
    assert_eq!(l.camera.as_deref(), Some("front-door"));
    assert_eq!(l.token, None);
    let l = line(b"SURV/1 5000 token=s3cr3t cam=cam_2\n").unwrap();
    assert_eq!(
        (l.token.as_deref(), l.camera.as_deref()),
        (Some("s3cr3t"), Some("cam_2"))
    );
    // Round trip, and every prefix of the longest line is incomplete, never refused.
    let longest = v1(5000)
        .with_token(Some(&"t".repeat(MAX_TOKEN_BYTES)))
        .with_camera(Some(&"c".repeat(MAX_CAMERA_NAME_BYTES)));
    let bytes = longest.encode();
    assert!(
        bytes.len() <= MAX_REGISTRATION_LINE_BYTES,
        "{}",
        bytes.len()
    );
    assert_eq!(line(&bytes).unwrap(), longest);
    for end in 1..bytes.len() {
        assert_eq!(
            RegistrationLine::decode(&bytes[..end], false),
            Err(RegError::Incomplete),
            "prefix {end}"
        );
    }
}

#[test]
fn bad_camera_names_are_refused() {
    let too_long = format!(
        "SURV/1 5000 cam={}\n",
        "c".repeat(MAX_CAMERA_NAME_BYTES + 1)
    );
    for (bad, why) in [
        (b"SURV/1 5000 cam=\n".as_slice(), RegError::BadCamera),
        (b"SURV/1 5000 cam=a.b\n", RegError::BadCamera),
        (b"SURV/1 5000 cam=a/b\n", RegError::BadCamera),
        (too_long.as_bytes(), RegError::BadCamera),
        (b"SURV/1 5000 cam=a cam=b\n", RegError::Garbage),
        (b"SURV/1 5000 cam=a token=b\n", RegError::Garbage),
        (b"SURV/1 5000 camera=a\n", RegError::Garbage),
    ] {
        assert_eq!(line(bad), Err(why), "{}", String::from_utf8_lossy(bad));
    }
}
