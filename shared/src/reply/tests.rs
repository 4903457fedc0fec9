//! Unit tests of the reply line: round trips, framing (Incomplete until the newline, Invalid as
//! soon as it cannot be a reply), field ranges, escaping, and no panic on any input.

use super::*;

const OK_LINE: &[u8] = b"OK SURV/1 session=12 width=640 height=480 fps=30 max_datagram=65000\n";

fn params() -> StreamParams {
    StreamParams {
        session_id: 12,
        width: 640,
        height: 480,
        fps: 30,
        max_datagram_bytes: 65_000,
        key: None,
        udp_port: None,
        mtu: None,
        fec: false,
        pace: false,
    }
}

fn ok_with(fields: &str) -> Result<(Reply, usize), ReplyError> {
    Reply::decode(format!("OK SURV/1 {fields}\n").as_bytes())
}

#[test]
fn round_trips() {
    let small = StreamParams {
        session_id: 9,
        width: 640,
        height: 480,
        fps: 30,
        max_datagram_bytes: 1400,
        key: None,
        udp_port: None,
        mtu: None,
        fec: false,
        pace: false,
    };
    for reply in [
        Reply::Accepted(small),
        Reply::Accepted(params()),
        Reply::Refused("server full (16 viewers)".into()),
        Reply::Refused(String::new()),
    ] {
        let bytes = reply.encode();
        assert_eq!(Reply::decode(&bytes), Ok((reply, bytes.len())));
    }
    assert_eq!(Reply::Accepted(params()).encode(), OK_LINE);
}

#[test]
fn every_prefix_of_a_valid_reply_is_incomplete() {
    let crlf = b"ERR SURV/1 server full (16 viewers)\r\n";
    for whole in [OK_LINE, b"ERR SURV/1 server full (16 viewers)\n", crlf] {
        for n in 0..whole.len() {
            assert_eq!(
                Reply::decode(&whole[..n]),
                Err(ReplyError::Incomplete),
                "{:?}",
                String::from_utf8_lossy(&whole[..n])
            );
        }
        assert!(Reply::decode(whole).is_ok());
    }
}

#[test]
fn only_the_line_is_consumed() {
    let mut bytes = OK_LINE.to_vec();
    bytes.extend_from_slice(b"\xff\xd8 not the reply's");
    assert_eq!(
        Reply::decode(&bytes),
        Ok((Reply::Accepted(params()), OK_LINE.len()))
    );
}

#[test]
fn refusal_reason_cannot_break_the_line() {
    let r = Reply::Refused("a\nb".repeat(400));
    let bytes = r.encode();
    assert!(bytes.len() <= MAX_REPLY_BYTES);
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(matches!(Reply::decode(&bytes), Ok((Reply::Refused(_), n)) if n == bytes.len()));
}

#[test]
fn a_line_over_the_cap_is_invalid_with_or_without_its_newline() {
    // Padded with a parameter a later server might send; the line is exactly the cap.
    let mut line = OK_LINE[..OK_LINE.len() - 1].to_vec();
    line.extend_from_slice(b" pad=");
    line.resize(MAX_REPLY_BYTES - 1, b'x');
    line.push(b'\n');
    assert_eq!(line.len(), MAX_REPLY_BYTES);
    assert_eq!(
        Reply::decode(&line),
        Ok((Reply::Accepted(params()), MAX_REPLY_BYTES))
    );

    let mut over = line[..MAX_REPLY_BYTES - 1].to_vec();
    over.push(b'x');
    assert_eq!(Reply::decode(&over), Err(ReplyError::TooLong), "no newline");
    over.push(b'\n');
    assert_eq!(Reply::decode(&over), Err(ReplyError::TooLong), "newline");
    let huge = vec![b'x'; 10 << 20];
    assert!(matches!(
        Reply::decode(&huge),
        Err(ReplyError::TooLong | ReplyError::Garbage(_))
    ));
}

#[test]
fn garbage_is_invalid_before_its_newline() {
    for bad in [
        &b"HTTP/1.1 200 OK"[..],
        b"SSH-2.0-OpenSSH",
        b"ok surv/1",
        b"OK SURV/2 session=1",
        b"OK SURV/10",
        b"ERR SURV/1x",
        b"\xff\xfe",
        b"\0",
    ] {
        assert!(
            matches!(Reply::decode(bad), Err(ReplyError::Garbage(_))),
            "{bad:?}: {:?}",
            Reply::decode(bad)
        );
    }
}

#[test]
fn non_utf8_is_invalid() {
    assert_eq!(
        Reply::decode(b"ERR SURV/1 full \xff\xfe\n"),
        Err(ReplyError::NotUtf8)
    );
    assert_eq!(
        Reply::decode(b"OK SURV/1 session=1 width=\xc3\n"),
        Err(ReplyError::NotUtf8)
    );
}

#[test]
fn bad_replies_are_errors() {
    let cases: &[(&[u8], ReplyError)] = &[
        (b"OK SURV/1 session=1\n", ReplyError::Missing("width")),
        (
            b"HTTP/1.1 200 OK\r\n",
            ReplyError::Garbage("HTTP/1.1 200 OK".into()),
        ),
        (b"OK\n", ReplyError::Garbage("OK".into())),
        (b"\n", ReplyError::Garbage(String::new())),
        (
            b"OK SURV/1 session\n",
            ReplyError::BadWord("session".into()),
        ),
        (
            b"OK SURV/1 width=x\n",
            ReplyError::OutOfRange {
                key: "width",
                value: "x".into(),
                min: 1,
                max: 16_384,
            },
        ),
        (
            b"OK SURV/1 session=-1\n",
            ReplyError::OutOfRange {
                key: "session",
                value: "-1".into(),
                min: 0,
                max: u64::MAX,
            },
        ),
        (
            b"OK SURV/1 session=1 session=2\n",
            ReplyError::Repeated("session"),
        ),
        (b"\xff\n", ReplyError::Garbage("\u{fffd}".into())),
    ];
    for (bytes, want) in cases {
        assert_eq!(&Reply::decode(bytes).unwrap_err(), want, "{bytes:?}");
    }
}

#[test]
fn every_missing_field_is_named() {
    let all = [
        "session=1",
        "width=2",
        "height=2",
        "fps=1",
        "max_datagram=600",
    ];
    for (i, name) in ["session", "width", "height", "fps", "max_datagram"]
        .into_iter()
        .enumerate()
    {
        let mut fields = all.to_vec();
        fields.remove(i);
        assert_eq!(
            ok_with(&fields.join(" ")),
            Err(ReplyError::Missing(name)),
            "{fields:?}"
        );
    }
    assert!(ok_with(&all.join(" ")).is_ok());
}

#[test]
fn ok_fields_out_of_range_are_refused() {
    for (bad, key) in [
        ("width=0 height=480 fps=30 max_datagram=65000", "width"),
        ("width=16385 height=480 fps=30 max_datagram=65000", "width"),
        ("width=640 height=0 fps=30 max_datagram=65000", "height"),
        (
            "width=640 height=99999999999 fps=30 max_datagram=65000",
            "height",
        ),
        ("width=640 height=480 fps=0 max_datagram=65000", "fps"),
        (
            "width=640 height=480 fps=4294967295 max_datagram=65000",
            "fps",
        ),
        ("width=640 height=480 fps=1001 max_datagram=65000", "fps"),
        (
            "width=640 height=480 fps=30 max_datagram=599",
            "max_datagram",
        ),
        (
            "width=640 height=480 fps=30 max_datagram=65508",
            "max_datagram",
        ),
        (
            "width=640 height=480 fps=30 max_datagram=99999999999999999999999",
            "max_datagram",
        ),
    ] {
        let got = ok_with(&format!("session=1 {bad}"));
        assert!(
            matches!(&got, Err(ReplyError::OutOfRange { key: k, .. }) if *k == key),
            "{bad}: {got:?}"
        );
        let message = got.unwrap_err().to_string();
        assert!(message.contains(key) && message.contains(".."), "{message}");
    }
}

#[test]
fn ok_fields_at_the_ends_of_their_ranges_are_accepted() {
    let (lo, hi) = (MIN_DATAGRAM_BYTES, MAX_UDP_PAYLOAD_BYTES);
    for (w, h, fps, max) in [(1, 1, 1, lo), (16_384, 16_384, 1_000, hi)] {
        let got = ok_with(&format!(
            "session=18446744073709551615 width={w} height={h} fps={fps} max_datagram={max}"
        ));
        assert_eq!(
            got.map(|r| r.0),
            Ok(Reply::Accepted(StreamParams {
                session_id: u64::MAX,
                width: w,
                height: h,
                fps,
                max_datagram_bytes: max,
                key: None,
                udp_port: None,
                mtu: None,
                fec: false,
                pace: false,
            }))
        );
    }
}

#[test]
fn unknown_parameters_are_ignored() {
    let got = ok_with("token=abc session=12 width=640 height=480 fps=30 max_datagram=65000 x=");
    assert_eq!(got.map(|r| r.0), Ok(Reply::Accepted(params())));
}

#[test]
fn control_characters_in_a_refusal_are_escaped() {
    let line = "ERR SURV/1 \u{1b}]0;owned\u{7} full\rgone\u{7f}\u{85}é\n";
    assert_eq!(
        Reply::decode(line.as_bytes()).map(|r| r.0),
        Ok(Reply::Refused(
            "\\x1b]0;owned\\x07 full\\x0dgone\\x7f\\u{85}é".into()
        ))
    );
    let err = Reply::decode(b"\x1b[2J\n").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control), "{err:?}");
}

#[test]
fn a_multi_byte_character_at_the_excerpt_cut_is_no_panic() {
    // 59 ASCII bytes, then "é" (2 bytes) straddling byte 60: the old excerpt sliced there.
    let mut line = "x".repeat(59).into_bytes();
    line.extend_from_slice("é…\n".as_bytes());
    let err = Reply::decode(&line).unwrap_err();
    assert_eq!(err, ReplyError::Garbage(format!("{}é", "x".repeat(59))));
    // The same for a bad value, at every cut.
    for pad in 0..8 {
        let value = format!("{}{}", "1".repeat(pad), "é".repeat(70));
        let got = ok_with(&format!("session={value}"));
        assert!(matches!(got, Err(ReplyError::OutOfRange { .. })), "{got:?}");
    }
}

#[test]
fn no_input_panics() {
    // Valid lines cut, spliced and mutated, and noise: every answer is a value, never a panic,
    // and a reply never claims more bytes than it was given.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let seeds: [&[u8]; 3] = [
        OK_LINE,
        b"ERR SURV/1 server full (16 viewers)\n",
        "ERR SURV/1 é…\u{1b}\n".as_bytes(),
    ];
    for i in 0..20_000u64 {
        let mut bytes = seeds[(i % 3) as usize].to_vec();
        for _ in 0..next() % 4 {
            let at = (next() % (bytes.len() as u64 + 1)) as usize;
            match next() % 3 {
                0 => bytes.insert(at, next() as u8),
                1 if at < bytes.len() => bytes[at] = next() as u8,
                _ => bytes.truncate(at),
            }
        }
        if i % 10 == 0 {
            bytes = (0..next() % 600).map(|_| next() as u8).collect();
        }
        if let Ok((_, used)) = Reply::decode(&bytes) {
            assert!(used <= bytes.len() && bytes[used - 1] == b'\n', "{bytes:?}");
        }
    }
}

#[test]
fn the_session_key_is_optional_hex_and_given_once() {
    let line =
        b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 key=00000000000000ff\n";
    let (reply, _) = Reply::decode(line).unwrap();
    assert!(matches!(reply, Reply::Accepted(p) if p.key == Some(255)));
    for bad in [
        &b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 key=ff\n"[..],
        b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 key=zz00000000000000\n",
        b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 key=\n",
    ] {
        assert!(
            matches!(Reply::decode(bad), Err(ReplyError::BadWord(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let keyed = Reply::Accepted(StreamParams {
        key: Some(0x9f86_d081_884c_7d65),
        udp_port: Some(40123),
        ..params()
    });
    let wire = keyed.encode();
    assert!(
        wire.ends_with(b" key=9f86d081884c7d65 udp=40123\n"),
        "{wire:?}"
    );
    for bad in ["udp=0", "udp=65536", "udp=x"] {
        let line = format!("OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 {bad}\n");
        assert!(
            matches!(
                Reply::decode(line.as_bytes()),
                Err(ReplyError::OutOfRange { key: "udp", .. })
            ),
            "{bad}"
        );
    }
    assert_eq!(Reply::decode(&wire), Ok((keyed, wire.len())));
    let twice = b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 key=00000000000000ff key=00000000000000ff\n";
    assert_eq!(Reply::decode(twice), Err(ReplyError::Repeated("key")));
}

#[test]
fn the_mtu_word_round_trips_and_old_lines_still_read() {
    let chunked = Reply::Accepted(StreamParams {
        key: Some(0x9f86_d081_884c_7d65),
        udp_port: Some(40123),
        mtu: Some(1200),
        ..params()
    });
    let wire = chunked.encode();
    assert!(wire.ends_with(b" udp=40123 mtu=1200\n"), "{wire:?}");
    assert_eq!(Reply::decode(&wire), Ok((chunked, wire.len())));
    // A line from a server before chunks: no mtu, whole datagrams.
    let old = b"OK SURV/1 session=12 width=640 height=480 fps=30 max_datagram=65000 key=9f86d081884c7d65 udp=40123\n";
    match Reply::decode(old) {
        Ok((Reply::Accepted(p), _)) => assert_eq!(p.mtu, None),
        other => panic!("{other:?}"),
    }
    for bad in [
        "mtu=799",
        "mtu=8973",
        "mtu=",
        "mtu=1200x",
        "mtu=99999999999999999999999",
    ] {
        let line = format!("OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 {bad}\n");
        assert!(
            matches!(
                Reply::decode(line.as_bytes()),
                Err(ReplyError::OutOfRange { key: "mtu", .. })
            ),
            "{bad}"
        );
    }
    let twice = b"OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600 mtu=1200 mtu=1200\n";
    assert_eq!(Reply::decode(twice), Err(ReplyError::Repeated("mtu")));
}

/// The chunked session's optional words (`fec=1`, `pace=1`): each round trips, means nothing
/// without an `mtu`, another value is a later form this viewer does not know, and twice is
/// refused.
#[test]
fn the_fec_and_pace_words_round_trip_and_mean_nothing_without_an_mtu() {
    let both = Reply::Accepted(StreamParams {
        key: Some(7),
        udp_port: Some(40123),
        mtu: Some(1200),
        fec: true,
        pace: true,
        ..params()
    });
    let wire = both.encode();
    assert!(wire.ends_with(b" mtu=1200 fec=1 pace=1\n"), "{wire:?}");
    assert_eq!(Reply::decode(&wire), Ok((both, wire.len())));
    let fec = |p: StreamParams| p.fec;
    let pace = |p: StreamParams| p.pace;
    for (word, get) in [
        ("fec", &fec as &dyn Fn(StreamParams) -> bool),
        ("pace", &pace),
    ] {
        let head = "OK SURV/1 session=1 width=2 height=2 fps=1 max_datagram=600";
        let read = |rest: &str| match Reply::decode(format!("{head} {rest}\n").as_bytes()) {
            Ok((Reply::Accepted(p), _)) => Ok(get(p)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(read(&format!("{word}=1")), Ok(false), "{word}: no chunks");
        assert_eq!(
            read(&format!("mtu=1200 {word}=2")),
            Ok(false),
            "{word}: a later form"
        );
        assert_eq!(read("mtu=1200"), Ok(false));
        assert_eq!(read(&format!("{word}=1 mtu=1200")), Ok(true));
        let twice = format!("mtu=1200 {word}=1 {word}=1");
        assert!(matches!(read(&twice), Err(ReplyError::Repeated(w)) if w == word));
    }
    // Without an mtu the server writes neither.
    let whole = Reply::Accepted(StreamParams {
        fec: true,
        pace: true,
        ..params()
    });
    let line = String::from_utf8(whole.encode()).unwrap();
    assert!(!line.contains("fec") && !line.contains("pace"), "{line}");
}
