//! Registration: how a viewer asks a server for the stream, over TCP.
//!
//! ```text
//! seed 003 form (viewer → server), no reply:
//!     "5000"                      the viewer's UDP port, ASCII digits, no terminator
//!                                 (a trailing "\n" or "\r\n" is accepted too); the viewer keeps
//!                                 the connection open and the server never writes to it
//!
//! SURV/1 form (viewer → server), one line:
//!     "SURV/1 5000\n"             magic/version, one space, the UDP port; the server
//!                                 answers with one line, see [`crate::reply`]
//! ```
//!
//! In both forms the frames go to the TCP peer's own IP at the announced UDP port; nothing in
//! the payload can name another host. Closing the TCP connection ends the session.
//!
//! The seed form has no terminator, so the parser cannot know the digits are complete until the
//! peer pauses: [`Registration::decode`] takes `at_rest` (the peer has sent nothing for a short
//! settle time, or closed its side) and answers [`RegError::Incomplete`] until then.

use thiserror::Error;

use crate::ack::parse_u64;

/// The protocol version of the `SURV/<n>` form this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A registration longer than this, without completing, is refused.
pub const MAX_REGISTRATION_BYTES: usize = 64;

const V1_PREFIX: &[u8] = b"SURV/";

/// Which form a viewer registered with; it decides whether the server replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Seed 003: bare ASCII port, no reply, plain `continue` acks.
    Seed,
    /// `SURV/1 <port>\n`: explicit reply, `continue <seq>` acks.
    V1,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Seed => "seed",
            Form::V1 => "surv1",
        }
    }
}

/// A complete, valid registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub form: Form,
    /// Where the viewer receives frames, on the TCP peer's IP. Never 0.
    pub udp_port: u16,
}

/// Why the bytes so far are not (yet) a registration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegError {
    /// Valid so far: read more bytes (or wait for the peer to pause).
    #[error("registration incomplete")]
    Incomplete,
    #[error("empty registration")]
    Empty,
    #[error("registration over {MAX_REGISTRATION_BYTES} bytes")]
    TooLong,
    #[error("registration is neither a UDP port nor \"SURV/1 <port>\"")]
    Garbage,
    #[error("unsupported protocol version {0:?} (this server speaks SURV/1)")]
    Version(String),
    #[error("UDP port {0:?} is not in 1..=65535")]
    BadPort(String),
}

impl Registration {
    /// Parses what the viewer has sent so far. `at_rest`: no more bytes are expected now.
    pub fn decode(buf: &[u8], at_rest: bool) -> Result<Registration, RegError> {
        if buf.is_empty() {
            return Err(if at_rest {
                RegError::Empty
            } else {
                RegError::Incomplete
            });
        }
        let line_end = buf.iter().position(|&b| b == b'\n');
        if line_end.is_none() && buf.len() > MAX_REGISTRATION_BYTES {
            return Err(RegError::TooLong);
        }
        let (line, complete) = match line_end {
            Some(i) if i + 1 == buf.len() => (&buf[..i], true),
            Some(_) => return Err(RegError::Garbage), // bytes after the line: not a viewer of ours
            None => (buf, at_rest),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_REGISTRATION_BYTES {
            return Err(RegError::TooLong);
        }

        if line.iter().all(u8::is_ascii_digit) {
            if !complete {
                return Err(RegError::Incomplete);
            }
            return Ok(Registration {
                form: Form::Seed,
                udp_port: parse_port(line)?,
            });
        }
        if V1_PREFIX.starts_with(line) {
            return Err(RegError::Incomplete); // "S", "SU", … "SURV/" so far
        }
        let Some(rest) = line.strip_prefix(V1_PREFIX) else {
            return Err(RegError::Garbage);
        };
        // The SURV form always ends with a newline: without one, wait for it, even at rest.
        if line_end.is_none() {
            return if at_rest {
                Err(RegError::Garbage)
            } else {
                Err(RegError::Incomplete)
            };
        }
        let mut words = rest.split(|&b| b == b' ');
        let (Some(version), Some(port), None) = (words.next(), words.next(), words.next()) else {
            return Err(RegError::Garbage);
        };
        if version != b"1" {
            return Err(RegError::Version(lossy(version)));
        }
        Ok(Registration {
            form: Form::V1,
            udp_port: parse_port(port)?,
        })
    }

    /// Writes the registration as a viewer sends it.
    pub fn encode(&self) -> Vec<u8> {
        match self.form {
            Form::Seed => self.udp_port.to_string().into_bytes(),
            Form::V1 => format!("SURV/{PROTOCOL_VERSION} {}\n", self.udp_port).into_bytes(),
        }
    }
}

fn parse_port(digits: &[u8]) -> Result<u16, RegError> {
    parse_u64(digits)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| RegError::BadPort(lossy(digits)))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned()
}

#[cfg(test)]
mod tests {
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
            Err(RegError::TooLong)
        );
    }
}
