//! The server's one-line reply to a `SURV/1` registration, and the reader that frames it.
//!
//! ```text
//! server → viewer, one line, then the connection stays open while streaming (accepted) or is
//! closed (refused):
//!     "OK SURV/1 session=12 width=640 height=480 fps=30 max_datagram=65000 key=9f86d081884c7d65 udp=40123\n"
//!     "ERR SURV/1 server full (16 viewers)\n"
//!
//!      OK SURV/1  key=value words, space-separated, any order; unknown keys are ignored
//!                 session       u64, the server's id for this session
//!                 width height  pixels, 1..=16384 (MAX_STREAM_SIDE_PX)
//!                 fps           1..=1000 (MAX_STREAM_FPS)
//!                 max_datagram  bytes, 600..=65507 (MIN_DATAGRAM_BYTES..=MAX_UDP_PAYLOAD_BYTES)
//!                 key           optional: 16 hex digits, the session key the viewer's acks carry
//!                               (see [`crate::ack`]); absent from servers before it
//!                 udp           optional, with key: the server's UDP port that frames come
//!                               from and where `hello` goes, 1..=65535
//!                 mtu           optional: the server sends frames in chunks of at most this
//!                               many bytes to a viewer whose `hello` asks for them (see
//!                               [`crate::chunk`]), 800..=8972; absent from servers before it
//!                 fec           optional, with mtu: `1`, the server also sends parity chunks to
//!                               a chunked viewer whose `continue`s report its loss (`l=`, see
//!                               [`crate::ack`]); absent from servers before it
//!                 pace          optional, with mtu: `1`, the server paces a frame's chunks to
//!                               the path rate a chunked viewer's `continue`s report (`p=`);
//!                               absent from servers before it
//!     ERR SURV/1  the rest of the line is a reason for the person running the viewer
//! ```
//!
//! The whole line, newline included, is at most [`MAX_REPLY_BYTES`]; a trailing `\r` is
//! tolerated. [`Reply::decode`] answers [`ReplyError::Incomplete`] while the bytes so far can
//! still become a reply, and another [`ReplyError`] as soon as they cannot: a viewer reads until
//! one of the two and never waits on a peer that is not a surv server.
//!
//! A refusal reason is text from the network that a viewer prints: the decoder escapes its
//! control characters (`ESC` becomes `\x1b`), so a server cannot drive the user's terminal.

use std::fmt::Write as _;

use thiserror::Error;

use crate::ack::{format_key, parse_key, parse_u64};
use crate::chunk::{MAX_MTU_BYTES, MIN_MTU_BYTES};
use crate::register::PROTOCOL_VERSION;
use crate::{MAX_UDP_PAYLOAD_BYTES, MIN_DATAGRAM_BYTES};

/// A reply line longer than this (newline included) is refused by the viewer.
pub const MAX_REPLY_BYTES: usize = 512;

/// The largest frame width or height a viewer accepts in an `OK` line.
pub const MAX_STREAM_SIDE_PX: u32 = 16_384;

/// The highest frame rate a viewer accepts in an `OK` line.
pub const MAX_STREAM_FPS: u32 = 1_000;

/// How much of a line that is not a reply is quoted in the error, in characters.
const EXCERPT_CHARS: usize = 60;

const OK_HEAD: &str = "OK SURV/1";
const ERR_HEAD: &str = "ERR SURV/1";

/// What a viewer is told about the stream it was admitted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParams {
    pub session_id: u64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub max_datagram_bytes: usize,
    /// The session key: the viewer says `hello` with it and puts it in every ack.
    pub key: Option<u64>,
    /// The server's UDP port for this session (frames come from it; `hello` goes to it), on
    /// the address the viewer registered with.
    pub udp_port: Option<u16>,
    /// The largest chunk datagram the server sends a viewer that asks for chunks; `None`: the
    /// server sends whole frames only.
    pub mtu: Option<u16>,
    /// With `mtu`: the server sends parity chunks to a chunked viewer that reports its loss
    /// (`l=` in its `continue`s, [`crate::ack`]); `fec=1` on the line.
    pub fec: bool,
    /// With `mtu`: the server paces a frame's chunks to the rate a chunked viewer reports its
    /// path delivers (`p=` in its `continue`s); `pace=1` on the line.
    pub pace: bool,
}

/// The server's answer to a `SURV/1` registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted(StreamParams),
    /// Refused, with a reason meant for the person running the viewer. Decoded reasons have
    /// their control characters escaped and are safe to print.
    Refused(String),
}

/// Why the bytes so far are not (yet) a reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// Valid so far, no newline yet: read more.
    #[error("reply incomplete")]
    Incomplete,
    #[error("reply line over {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("reply is not UTF-8")]
    NotUtf8,
    /// Not `OK SURV/1 …` or `ERR SURV/1 …`; an excerpt of what came, escaped.
    #[error("not a SURV/1 reply: \"{0}\"")]
    Garbage(String),
    #[error("bad word in the reply: \"{0}\"")]
    BadWord(String),
    #[error("the reply gives {0} twice")]
    Repeated(&'static str),
    #[error("the reply lacks {0}")]
    Missing(&'static str),
    #[error("the reply's {key}={value} is not a number in {min}..={max}")]
    OutOfRange {
        key: &'static str,
        value: String,
        min: u64,
        max: u64,
    },
}

/// The `OK` line's parameters: name, and the range a viewer accepts.
const FIELDS: [(&str, u64, u64); 5] = [
    ("session", 0, u64::MAX),
    ("width", 1, MAX_STREAM_SIDE_PX as u64),
    ("height", 1, MAX_STREAM_SIDE_PX as u64),
    ("fps", 1, MAX_STREAM_FPS as u64),
    (
        "max_datagram",
        MIN_DATAGRAM_BYTES as u64,
        MAX_UDP_PAYLOAD_BYTES as u64,
    ),
];

impl Reply {
    /// One line, newline-terminated. A reason is cut to fit [`MAX_REPLY_BYTES`] and stripped of
    /// line breaks so that it can never end the line early.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Accepted(p) => {
                let mut line = format!(
                    "OK SURV/{PROTOCOL_VERSION} session={} width={} height={} fps={} max_datagram={}",
                    p.session_id, p.width, p.height, p.fps, p.max_datagram_bytes
                );
                if let Some(key) = p.key {
                    let _ = write!(line, " key={}", format_key(key));
                }
                if let Some(port) = p.udp_port {
                    let _ = write!(line, " udp={port}");
                }
                if let Some(mtu) = p.mtu {
                    let _ = write!(line, " mtu={mtu}");
                    if p.fec {
                        line.push_str(" fec=1");
                    }
                    if p.pace {
                        line.push_str(" pace=1");
                    }
                }
                line.push('\n');
                line.into_bytes()
            }
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

    /// Reads the reply at the start of `buf`, the bytes received so far. Returns the reply and
    /// the bytes it took (its newline included; what follows is not the reply's), or
    /// [`ReplyError::Incomplete`] while there is no newline yet and the line can still be one.
    pub fn decode(buf: &[u8]) -> Result<(Reply, usize), ReplyError> {
        let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() >= MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong); // its newline would be byte 513 or later
            }
            check_head(buf)?;
            return Err(ReplyError::Incomplete);
        };
        if newline >= MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let line = &buf[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok((decode_line(line)?, newline + 1))
    }
}

/// Refuses early a line whose start already rules out a reply, so that a viewer does not wait
/// for the newline of a peer that is not a surv server.
fn check_head(start: &[u8]) -> Result<(), ReplyError> {
    for head in [OK_HEAD, ERR_HEAD] {
        let n = start.len().min(head.len());
        if start[..n] == head.as_bytes()[..n] && start.get(head.len()).is_none_or(|&b| b == b' ') {
            return Ok(());
        }
    }
    Err(ReplyError::Garbage(excerpt(&String::from_utf8_lossy(
        start,
    ))))
}

/// One line, without its newline.
fn decode_line(line: &[u8]) -> Result<Reply, ReplyError> {
    check_head(line)?;
    let text = std::str::from_utf8(line).map_err(|_| ReplyError::NotUtf8)?;
    if let Some(reason) = text.strip_prefix(ERR_HEAD) {
        return Ok(Reply::Refused(escape_controls(reason.trim())));
    }
    let params = text
        .strip_prefix(OK_HEAD)
        .ok_or_else(|| ReplyError::Garbage(excerpt(text)))?;
    let mut values = [None::<u64>; FIELDS.len()];
    let mut session_key = None;
    let mut udp_port = None;
    let mut mtu = None;
    let mut fec = None;
    let mut pace = None;
    for word in params.split_ascii_whitespace() {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| ReplyError::BadWord(excerpt(word)))?;
        if key == "key" {
            if session_key.is_some() {
                return Err(ReplyError::Repeated("key"));
            }
            session_key = Some(
                parse_key(value.as_bytes()).ok_or_else(|| ReplyError::BadWord(excerpt(word)))?,
            );
            continue;
        }
        if key == "udp" {
            if udp_port.is_some() {
                return Err(ReplyError::Repeated("udp"));
            }
            let port = parse_u64(value.as_bytes())
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p > 0)
                .ok_or_else(|| ReplyError::OutOfRange {
                    key: "udp",
                    value: excerpt(value),
                    min: 1,
                    max: u64::from(u16::MAX),
                })?;
            udp_port = Some(port);
            continue;
        }
        if key == "mtu" {
            if mtu.is_some() {
                return Err(ReplyError::Repeated("mtu"));
            }
            let (min, max) = (u64::from(MIN_MTU_BYTES), u64::from(MAX_MTU_BYTES));
            let bytes = parse_u64(value.as_bytes())
                .filter(|v| (min..=max).contains(v))
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| ReplyError::OutOfRange {
                    key: "mtu",
                    value: excerpt(value),
                    min,
                    max,
                })?;
            mtu = Some(bytes);
            continue;
        }
        if key == "fec" {
            if fec.is_some() {
                return Err(ReplyError::Repeated("fec"));
            }
            // 1: parity for a viewer that reports its loss; any other value, from a later
            // server, is a form this viewer does not know: none.
            fec = Some(value == "1");
            continue;
        }
        if key == "pace" {
            if pace.is_some() {
                return Err(ReplyError::Repeated("pace"));
            }
            // As `fec`: 1, or a later form this viewer does not know.
            pace = Some(value == "1");
            continue;
        }
        let Some(i) = FIELDS.iter().position(|f| f.0 == key) else {
            continue; // a parameter from a later server
        };
        let (name, min, max) = FIELDS[i];
        if values[i].is_some() {
            return Err(ReplyError::Repeated(name));
        }
        let v = parse_u64(value.as_bytes())
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| ReplyError::OutOfRange {
                key: name,
                value: excerpt(value),
                min,
                max,
            })?;
        values[i] = Some(v);
    }
    let field = |i: usize| values[i].ok_or(ReplyError::Missing(FIELDS[i].0));
    // The ranges above fit each type: no narrowing can fail.
    let narrow = |i: usize| field(i).map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok(Reply::Accepted(StreamParams {
        session_id: field(0)?,
        width: narrow(1)?,
        height: narrow(2)?,
        fps: narrow(3)?,
        max_datagram_bytes: usize::try_from(field(4)?).unwrap_or(usize::MAX),
        key: session_key,
        udp_port,
        fec: mtu.is_some() && fec == Some(true),
        pace: mtu.is_some() && pace == Some(true),
        mtu,
    }))
}

/// Peer text made safe to print: each control character (ESC, BEL, CR, DEL, C1 …) is written
/// as its code, `\x1b` or `\u{85}`, and the rest is kept.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_control() {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out
}

/// The first [`EXCERPT_CHARS`] characters of `text`, escaped, for an error message.
fn excerpt(text: &str) -> String {
    let end = text
        .char_indices()
        .nth(EXCERPT_CHARS)
        .map_or(text.len(), |(i, _)| i);
    escape_controls(&text[..end])
}

#[cfg(test)]
mod tests;
