//! The viewer's answer to a frame datagram, sent over UDP to the address the frame came from.
//!
//! ```text
//! seed 003 form:  "continue"            one per frame received
//!                 "end"                 the viewer leaves
//! SURV/1 form:    "continue <seq> k=<key>"   <seq>: decimal u64, the tag sequence number of
//!                                            the newest frame received (acks are cumulative)
//!                 "end k=<key>"
//!                 "hello k=<key>"            sent from the announced port right after the OK
//!                                            line, until the first frame arrives: no frame
//!                                            goes to a SURV/1 viewer before it
//! ```
//!
//! `<key>` is the session key the server's `OK` line handed out (`key=`, 16 lowercase hex
//! digits). A SURV/1 session's datagram without its key is not the viewer's and is ignored
//! (counted as spoofed): a third party who can send from the viewer's address but never saw the
//! TCP reply cannot end or steer the session, and a port that never asked gets no frames. The
//! seed form carries no key and cannot (seed 003 sends exactly `continue` and `end`). A SURV/1
//! viewer of a server that hands out no key sends the forms without ` k=…`.
//!
//! A trailing `\r`, `\n` or NUL is tolerated (some viewers send C strings). Anything else is
//! [`AckError`]: the server counts it and ignores it.

use thiserror::Error;

/// No ack is longer than this; a longer datagram is rejected unread.
pub const MAX_ACK_BYTES: usize = 64;

/// One decoded ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Keep streaming. `Some(seq)`: every frame up to `seq` is accounted for (SURV/1 viewers);
    /// `None`: one frame was received (seed 003 viewers, which cannot say which).
    Continue(Option<u64>),
    /// Stop streaming to this viewer now.
    End,
    /// A SURV/1 viewer's first word from its announced port: frames may start.
    Hello,
}

/// Why a datagram is not an ack.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckError {
    #[error("ack of {0} bytes is over the {MAX_ACK_BYTES}-byte cap")]
    TooLong(usize),
    #[error("not an ack (expected \"continue\", \"continue <seq>\", \"end\" or \"hello\", the last three with \" k=<key>\" for SURV/1)")]
    Unknown,
}

impl Ack {
    /// Parses one datagram, with or without a session key (see [`Ack::decode_keyed`] for the
    /// key).
    pub fn decode(datagram: &[u8]) -> Result<Ack, AckError> {
        Ack::decode_keyed(datagram).map(|(ack, _)| ack)
    }

    /// Parses one datagram: the ack, and the session key it carries, if any. `hello` needs a key.
    pub fn decode_keyed(datagram: &[u8]) -> Result<(Ack, Option<u64>), AckError> {
        if datagram.len() > MAX_ACK_BYTES {
            return Err(AckError::TooLong(datagram.len()));
        }
        let end = datagram
            .iter()
            .rposition(|b| !matches!(b, b'\r' | b'\n' | 0))
            .map_or(0, |i| i + 1);
        let mut text = &datagram[..end];
        let mut key = None;
        if let Some(at) = text.windows(3).rposition(|w| w == b" k=") {
            key = Some(parse_key(&text[at + 3..]).ok_or(AckError::Unknown)?);
            text = &text[..at];
        }
        let ack = match text {
            b"continue" => Ack::Continue(None),
            b"end" => Ack::End,
            b"hello" if key.is_some() => Ack::Hello,
            _ => {
                let seq = text.strip_prefix(b"continue ").ok_or(AckError::Unknown)?;
                parse_u64(seq)
                    .map(|s| Ack::Continue(Some(s)))
                    .ok_or(AckError::Unknown)?
            }
        };
        Ok((ack, key))
    }

    /// Writes the ack as it goes on the wire, without a key (the seed form, or a server that
    /// hands out none). [`Ack::Hello`] has no keyless form: it writes `hello`, which no server
    /// takes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_keyed(None)
    }

    /// Writes the ack with the session key, when there is one.
    pub fn encode_keyed(&self, key: Option<u64>) -> Vec<u8> {
        let mut out = match self {
            Ack::Continue(None) => b"continue".to_vec(),
            Ack::Continue(Some(seq)) => format!("continue {seq}").into_bytes(),
            Ack::End => b"end".to_vec(),
            Ack::Hello => b"hello".to_vec(),
        };
        if let Some(key) = key {
            out.extend_from_slice(format!(" k={}", format_key(key)).as_bytes());
        }
        out
    }
}

/// A session key as it is written: 16 lowercase hex digits.
pub fn format_key(key: u64) -> String {
    format!("{key:016x}")
}

/// Exactly 16 hex digits (either case).
pub(crate) fn parse_key(text: &[u8]) -> Option<u64> {
    if text.len() != 16 || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

/// Decimal digits only (no sign, no spaces), at most 20 of them, no overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ack in [
            Ack::Continue(None),
            Ack::Continue(Some(0)),
            Ack::Continue(Some(u64::MAX)),
            Ack::End,
        ] {
            assert_eq!(Ack::decode(&ack.encode()), Ok(ack));
        }
        for ack in [
            Ack::Continue(None),
            Ack::Continue(Some(u64::MAX)),
            Ack::End,
            Ack::Hello,
        ] {
            for key in [0, 1, 0xdead_beef_0123_4567, u64::MAX] {
                let wire = ack.encode_keyed(Some(key));
                assert!(wire.len() <= MAX_ACK_BYTES, "{wire:?}");
                assert_eq!(Ack::decode_keyed(&wire), Ok((ack, Some(key))));
            }
        }
        assert_eq!(
            Ack::decode_keyed(b"continue 7 k=00000000000000ff\n"),
            Ok((Ack::Continue(Some(7)), Some(255)))
        );
        assert_eq!(Ack::decode_keyed(b"end"), Ok((Ack::End, None)));
    }

    #[test]
    fn bad_keys_and_a_keyless_hello_are_rejected() {
        for bad in [
            &b"hello"[..],
            b"hello k=",
            b"hello k=123",
            b"end k=0123456789abcdef0",
            b"end k=0123456789abcdeg",
            b"end k=+123456789abcdef",
            b"continue 1 k=0123456789abcdef k=0123456789abcdef",
            b"k=0123456789abcdef",
            b"continue1 k=0123456789abcdef",
        ] {
            assert_eq!(Ack::decode_keyed(bad), Err(AckError::Unknown), "{bad:?}");
        }
    }

    #[test]
    fn seed_viewer_bytes_decode() {
        // Exactly what seed 003 sends: 'continue'.encode('utf-8') and 'end'.encode('utf-8').
        assert_eq!(Ack::decode(b"continue"), Ok(Ack::Continue(None)));
        assert_eq!(Ack::decode(b"end"), Ok(Ack::End));
        assert_eq!(Ack::decode(b"end\r\n"), Ok(Ack::End));
        assert_eq!(Ack::decode(b"continue 42\0"), Ok(Ack::Continue(Some(42))));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b""[..],
            b"continu",
            b"END",
            b"continue ",
            b"continue -1",
            b"continue 99999999999999999999999",
            b"continue 1 2",
            b"end please",
            b"\xff\xd8\xff",
        ] {
            assert_eq!(Ack::decode(bad), Err(AckError::Unknown), "{bad:?}");
        }
        assert_eq!(Ack::decode(&[b'a'; 65]), Err(AckError::TooLong(65)));
    }
}
