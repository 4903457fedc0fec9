//! Registration: how a viewer asks a server for the stream, over TCP.
//!
//! ```text
//! seed 003 form (viewer → server), no reply:
//!     "5000"                      the viewer's UDP port, ASCII digits, no terminator
//!                                 (a trailing "\n" or "\r\n" is accepted too); the viewer keeps
//!                                 the connection open and the server never writes to it
//!
//! SURV/1 form (viewer → server), one line:
//!     "SURV/1 5000\n"             magic/version, one space, the UDP port
//!
//! reply to the SURV/1 form (server → viewer), one line, then the connection stays open
//! while streaming (accepted) or is closed (refused):
//!     "OK SURV/1 session=12 width=640 height=480 fps=30 max_datagram=65000\n"
//!     "ERR SURV/1 server full (16 viewers)\n"
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

/// A reply line longer than this (newline included) is refused by the viewer.
pub const MAX_REPLY_BYTES: usize = 512;

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

/// What a viewer is told about the stream it was admitted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParams {
    pub session_id: u64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub max_datagram_bytes: usize,
}

/// The server's answer to a `SURV/1` registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted(StreamParams),
    /// Refused, with a reason meant for the person running the viewer.
    Refused(String),
}

impl Reply {
    /// One line, newline-terminated. A reason is cut to fit [`MAX_REPLY_BYTES`] and stripped of
    /// line breaks so that it can never end the line early.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Accepted(p) => format!(
                "OK SURV/{PROTOCOL_VERSION} session={} width={} height={} fps={} max_datagram={}\n",
                p.session_id, p.width, p.height, p.fps, p.max_datagram_bytes
            )
            .into_bytes(),
            Reply::Refused(reason) => {
                let head = format!("ERR SURV/{PROTOCOL_VERSION} ");
                let room = MAX_REPLY_BYTES - head.len() - 1;
                let mut clean: String = reason
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                while clean.len() > room {
                    clean.pop();
                }
                format!("{head}{clean}\n").into_bytes()
            }
        }
    }

    /// Parses a reply line (with or without its newline). Unknown `key=value` words in an OK
    /// line are ignored so that later servers can add parameters.
    pub fn decode(line: &[u8]) -> Result<Reply, String> {
        if line.len() > MAX_REPLY_BYTES {
            return Err(format!("reply over {MAX_REPLY_BYTES} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "reply is not UTF-8".to_string())?;
        let text = text.trim_end_matches(['\r', '\n']);
        let version = format!("SURV/{PROTOCOL_VERSION}");
        if let Some(reason) = text
            .strip_prefix("ERR ")
            .and_then(|r| r.strip_prefix(&version))
        {
            return Ok(Reply::Refused(reason.trim().to_string()));
        }
        let Some(params) = text
            .strip_prefix("OK ")
            .and_then(|r| r.strip_prefix(&version))
        else {
            return Err(format!(
                "not a SURV/1 reply: {:?}",
                &text[..text.len().min(60)]
            ));
        };
        let mut p = StreamParams {
            session_id: 0,
            width: 0,
            height: 0,
            fps: 0,
            max_datagram_bytes: 0,
        };
        let mut seen = 0u8;
        for word in params.split_ascii_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or(format!("bad reply word {word:?}"))?;
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("bad value in {word:?}"))
            };
            match key {
                "session" => (p.session_id, seen) = (num()?, seen | 1),
                "width" => {
                    (p.width, seen) = (u32::try_from(num()?).map_err(|e| e.to_string())?, seen | 2)
                }
                "height" => {
                    (p.height, seen) = (u32::try_from(num()?).map_err(|e| e.to_string())?, seen | 4)
                }
                "fps" => {
                    (p.fps, seen) = (u32::try_from(num()?).map_err(|e| e.to_string())?, seen | 8)
                }
                "max_datagram" => {
                    (p.max_datagram_bytes, seen) = (
                        usize::try_from(num()?).map_err(|e| e.to_string())?,
                        seen | 16,
                    )
                }
                _ => {}
            }
        }
        if seen != 31 {
            return Err("reply lacks a stream parameter".to_string());
        }
        Ok(Reply::Accepted(p))
    }
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
        let ok = Reply::Accepted(StreamParams {
            session_id: 9,
            width: 640,
            height: 480,
            fps: 30,
            max_datagram_bytes: 1400,
        });
        assert_eq!(Reply::decode(&ok.encode()), Ok(ok));
        let no = Reply::Refused("server full (16 viewers)".into());
        assert_eq!(Reply::decode(&no.encode()), Ok(no));
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

    #[test]
    fn refusal_reason_cannot_break_the_line() {
        let r = Reply::Refused("a\nb".repeat(400));
        let bytes = r.encode();
        assert!(bytes.len() <= MAX_REPLY_BYTES);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(matches!(Reply::decode(&bytes), Ok(Reply::Refused(_))));
    }

    #[test]
    fn bad_replies_are_errors() {
        for bad in [
            &b"OK SURV/1 session=1\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"OK SURV/1 width=x\n",
            b"\xff",
        ] {
            assert!(Reply::decode(bad).is_err(), "{bad:?}");
        }
    }
}
