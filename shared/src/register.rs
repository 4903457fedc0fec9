//! Registration: how a viewer asks a server for the stream — over TCP (seed 003's viewer,
//! surv-client), or with one UDP datagram (seed 001's app behind NAT).
//!
//! ```text
//! seed 003 form (viewer → server, TCP), no reply:
//!     "5000"                      the viewer's UDP port, ASCII digits, no terminator
//!                                 (a trailing "\n" or "\r\n" is accepted too); the viewer keeps
//!                                 the connection open and the server never writes to it
//!
//! SURV/1 form (viewer → server, TCP), one line:
//!     "SURV/1 5000\n"             magic/version, one space, the UDP port; the server
//!                                 answers with one line, see [`crate::reply`]
//!     "SURV/1 5000 token=s3cr3t\n" the same with the server's access token (`--token`):
//!                                 1..=MAX_TOKEN_BYTES visible ASCII bytes (0x21..=0x7e)
//!     "SURV/1 5000 cam=door\n"    the camera to watch, by name (1..=MAX_CAMERA_NAME_BYTES
//!                                 letters, digits, '-', '_'); without it, the server's first
//!     "SURV/1 5000 token=s3cr3t cam=door\n"
//!                                 both, in this order
//!
//! seed 001 form (app → server, one UDP datagram to the server's --request-port), no reply:
//!     "Request"                   exactly these 7 bytes: the server learns the app's address
//!                                 (as its NAT maps it) and sends every frame there, from the
//!                                 port the datagram reached, as one whole JPEG datagram
//!     "Request s3cr3t"            the same with the server's access token
//!                                 (a trailing "\n" or "\r\n" is tolerated in both)
//! ```
//!
//! In every form the frames go to the peer's own address (the TCP peer's IP at the announced
//! UDP port, or the datagram's source address); nothing in the payload can name another host.
//! Closing the TCP connection ends a TCP-registered session; an app stays until it has been
//! silent for the server's `--request-ttl`.
//!
//! The seed form has no terminator, so the parser cannot know the digits are complete until the
//! peer pauses: [`Registration::decode`] takes `at_rest` (the peer has sent nothing for a short
//! settle time, or closed its side) and answers [`RegError::Incomplete`] until then.

use thiserror::Error;

use crate::ack::parse_u64;

/// The protocol version of the `SURV/<n>` form this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A registration without a token longer than this, without completing, is refused.
pub const MAX_REGISTRATION_BYTES: usize = 64;

/// The longest access token a registration or a `Request` may carry.
pub const MAX_TOKEN_BYTES: usize = 128;

/// The longest camera name a registration may carry.
pub const MAX_CAMERA_NAME_BYTES: usize = 32;

/// A `SURV/` line carrying a token and a camera may be this long (their room added to the cap).
pub const MAX_REGISTRATION_LINE_BYTES: usize = MAX_REGISTRATION_BYTES
    + TOKEN_KEY.len()
    + MAX_TOKEN_BYTES
    + CAMERA_KEY.len()
    + MAX_CAMERA_NAME_BYTES;

/// The longest `Request` datagram: `Request`, a space, a token, `\r\n`.
pub const MAX_REQUEST_BYTES: usize = REQUEST.len() + 1 + MAX_TOKEN_BYTES + 2;

const V1_PREFIX: &[u8] = b"SURV/";
const TOKEN_KEY: &[u8] = b" token=";
const CAMERA_KEY: &[u8] = b" cam=";
const REQUEST: &[u8] = b"Request";

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
    /// Over the cap for what it looks like (a port, or a `SURV/` line with room for a token).
    #[error("registration over {0} bytes")]
    TooLong(usize),
    #[error("registration is neither a UDP port nor \"SURV/1 <port>\"")]
    Garbage,
    #[error("unsupported protocol version {0:?} (this server speaks SURV/1)")]
    Version(String),
    #[error("UDP port {0:?} is not in 1..=65535")]
    BadPort(String),
    #[error("the token is not 1-{MAX_TOKEN_BYTES} visible ASCII characters")]
    BadToken,
    #[error("the camera name is not 1-{MAX_CAMERA_NAME_BYTES} letters, digits, '-' or '_'")]
    BadCamera,
}

impl Registration {
    /// Parses what the viewer has sent so far. `at_rest`: no more bytes are expected now.
    /// A token the line carries is checked for its form and dropped: a server reads
    /// [`RegistrationLine::decode`] instead.
    pub fn decode(buf: &[u8], at_rest: bool) -> Result<Registration, RegError> {
        RegistrationLine::decode(buf, at_rest).map(|line| line.registration)
    }

    /// Writes the registration as a viewer sends it.
    pub fn encode(&self) -> Vec<u8> {
        self.with_token(None).encode()
    }

    /// The registration with an access token, as a viewer of a server with `--token` sends it.
    pub fn with_token(self, token: Option<&str>) -> RegistrationLine {
        RegistrationLine {
            registration: self,
            token: token.map(str::to_string),
            camera: None,
        }
    }
}

/// A registration with the access token its line carried, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationLine {
    pub registration: Registration,
    /// `SURV/1 <port> token=<token>`; always `None` for the seed form, which has no room for one.
    pub token: Option<String>,
    /// `SURV/1 <port> cam=<name>`; `None`: the server's first camera (always, for the seed form).
    pub camera: Option<String>,
}

impl std::fmt::Debug for RegistrationLine {
    /// The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationLine")
            .field("registration", &self.registration)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("camera", &self.camera)
            .finish()
    }
}

impl RegistrationLine {
    /// The line asking for camera `name` (`None`: the server's first).
    pub fn with_camera(mut self, name: Option<&str>) -> RegistrationLine {
        self.camera = name.map(str::to_string);
        self
    }

    /// Parses what the viewer has sent so far. `at_rest`: no more bytes are expected now.
    pub fn decode(buf: &[u8], at_rest: bool) -> Result<RegistrationLine, RegError> {
        if buf.is_empty() {
            return Err(if at_rest {
                RegError::Empty
            } else {
                RegError::Incomplete
            });
        }
        // A `SURV/` line has room for a token; anything else is a port and needs no more.
        let cap = if buf.starts_with(V1_PREFIX) {
            MAX_REGISTRATION_LINE_BYTES
        } else {
            MAX_REGISTRATION_BYTES
        };
        let line_end = buf.iter().position(|&b| b == b'\n');
        if line_end.is_none() && buf.len() > cap {
            return Err(RegError::TooLong(cap));
        }
        let (line, complete) = match line_end {
            Some(i) if i + 1 == buf.len() => (&buf[..i], true),
            Some(_) => return Err(RegError::Garbage), // bytes after the line: not a viewer of ours
            None => (buf, at_rest),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > cap {
            return Err(RegError::TooLong(cap));
        }

        if line.iter().all(u8::is_ascii_digit) {
            if !complete {
                return Err(RegError::Incomplete);
            }
            return Ok(Registration {
                form: Form::Seed,
                udp_port: parse_port(line)?,
            }
            .with_token(None));
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
        let (Some(version), Some(port)) = (words.next(), words.next()) else {
            return Err(RegError::Garbage);
        };
        if version != b"1" {
            return Err(RegError::Version(lossy(version)));
        }
        // Then `token=…`, then `cam=…`, each at most once, in that order.
        let (mut token, mut camera) = (None, None);
        for word in words {
            if let Some(value) = word.strip_prefix(&TOKEN_KEY[1..]) {
                if token.is_some() || camera.is_some() {
                    return Err(RegError::Garbage);
                }
                token = Some(parse_token(value).ok_or(RegError::BadToken)?);
            } else if let Some(value) = word.strip_prefix(&CAMERA_KEY[1..]) {
                if camera.is_some() {
                    return Err(RegError::Garbage);
                }
                camera = Some(parse_camera(value).ok_or(RegError::BadCamera)?);
            } else {
                return Err(RegError::Garbage);
            }
        }
        Ok(RegistrationLine {
            registration: Registration {
                form: Form::V1,
                udp_port: parse_port(port)?,
            },
            token,
            camera,
        })
    }

    /// Writes the line as a viewer sends it (the seed form cannot carry a token: it is left out).
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.registration;
        if r.form == Form::Seed {
            return r.udp_port.to_string().into_bytes();
        }
        let mut line = format!("SURV/{PROTOCOL_VERSION} {}", r.udp_port);
        if let Some(t) = &self.token {
            line.push_str(&format!(" token={t}"));
        }
        if let Some(c) = &self.camera {
            line.push_str(&format!(" cam={c}"));
        }
        line.push('\n');
        line.into_bytes()
    }
}

/// Seed 001's `Request` datagram, which registers the app that sent it (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct AppRequest {
    /// `Request <token>`; `None` for the bare seed form.
    pub token: Option<String>,
}

impl std::fmt::Debug for AppRequest {
    /// The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRequest")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a datagram is not a `Request`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("datagram of {0} bytes is over the {MAX_REQUEST_BYTES}-byte cap of a request")]
    TooLong(usize),
    #[error("not a request (expected \"Request\" or \"Request <token>\")")]
    NotARequest,
    #[error("the token is not 1-{MAX_TOKEN_BYTES} visible ASCII characters")]
    BadToken,
}

impl AppRequest {
    /// Parses one datagram.
    pub fn decode(datagram: &[u8]) -> Result<AppRequest, RequestError> {
        if datagram.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLong(datagram.len()));
        }
        let text = datagram.strip_suffix(b"\n").unwrap_or(datagram);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let rest = text
            .strip_prefix(REQUEST)
            .ok_or(RequestError::NotARequest)?;
        if rest.is_empty() {
            return Ok(AppRequest { token: None });
        }
        let token = rest.strip_prefix(b" ").ok_or(RequestError::NotARequest)?;
        let token = parse_token(token).ok_or(RequestError::BadToken)?;
        Ok(AppRequest { token: Some(token) })
    }

    /// Writes the datagram as an app sends it.
    pub fn encode(&self) -> Vec<u8> {
        match &self.token {
            None => REQUEST.to_vec(),
            Some(t) => [REQUEST, b" ", t.as_bytes()].concat(),
        }
    }
}

/// Whether `token` can be carried on the wire: 1..=[`MAX_TOKEN_BYTES`] visible ASCII bytes
/// (no spaces, no control characters). A server checks its `--token` with this at start.
pub fn is_valid_token(token: &[u8]) -> bool {
    (1..=MAX_TOKEN_BYTES).contains(&token.len()) && token.iter().all(|b| b.is_ascii_graphic())
}

fn parse_token(value: &[u8]) -> Option<String> {
    is_valid_token(value).then(|| String::from_utf8_lossy(value).into_owned())
}

/// Whether `name` may name a camera: 1..=[`MAX_CAMERA_NAME_BYTES`] ASCII letters, digits,
/// `-` and `_` (it goes into URLs, MQTT topics and the journal as it is).
pub fn is_valid_camera_name(name: &[u8]) -> bool {
    (1..=MAX_CAMERA_NAME_BYTES).contains(&name.len())
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn parse_camera(value: &[u8]) -> Option<String> {
    is_valid_camera_name(value).then(|| String::from_utf8_lossy(value).into_owned())
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
mod tests;
