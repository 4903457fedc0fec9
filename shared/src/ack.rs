//! The viewer's answer to a frame datagram, sent over UDP to the address the frame came from.
//!
//! ```text
//! seed 003 form:  "continue"            one per frame received
//!                 "end"                 the viewer leaves
//! SURV/1 form:    "continue <seq>"      <seq>: decimal u64, the tag sequence number of the
//!                                       newest frame received (acks are cumulative)
//!                 "end"
//! ```
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
}

/// Why a datagram is not an ack.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AckError {
    #[error("ack of {0} bytes is over the {MAX_ACK_BYTES}-byte cap")]
    TooLong(usize),
    #[error("not an ack (expected \"continue\", \"continue <seq>\" or \"end\")")]
    Unknown,
}

impl Ack {
    /// Parses one datagram.
    pub fn decode(datagram: &[u8]) -> Result<Ack, AckError> {
        if datagram.len() > MAX_ACK_BYTES {
            return Err(AckError::TooLong(datagram.len()));
        }
        let end = datagram
            .iter()
            .rposition(|b| !matches!(b, b'\r' | b'\n' | 0))
            .map_or(0, |i| i + 1);
        let text = &datagram[..end];
        match text {
            b"continue" => Ok(Ack::Continue(None)),
            b"end" => Ok(Ack::End),
            _ => {
                let seq = text.strip_prefix(b"continue ").ok_or(AckError::Unknown)?;
                parse_u64(seq)
                    .map(|s| Ack::Continue(Some(s)))
                    .ok_or(AckError::Unknown)
            }
        }
    }

    /// Writes the ack as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Ack::Continue(None) => b"continue".to_vec(),
            Ack::Continue(Some(seq)) => format!("continue {seq}").into_bytes(),
            Ack::End => b"end".to_vec(),
        }
    }
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
