//! One camera's TCP connection: bytes in, payloads out, each read under a deadline.
//!
//! Two deadlines guard every connection: no byte for [`Deadlines::idle`] (a camera that hung, a
//! dead link) and no whole frame for [`Deadlines::frame`] since the last one (a slowloris peer
//! trickling bytes, or one sending only empty messages). Either ends the connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

use super::framing::{Decoded, Decoder, FramingError, Invalid};
use super::peers::Cause;

/// The most read into the buffer at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How long a camera connection may go without progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// No byte at all for this long: the connection is dropped.
    pub idle: Duration,
    /// No whole frame for this long since the last one (or since connecting): dropped.
    pub frame: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            idle: Duration::from_secs(5),
            frame: Duration::from_secs(10),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnEnd {
    /// The camera closed the connection between frames.
    Closed,
    /// Closed in the middle of a frame, or a read failed.
    Broken(String),
    Idle(Duration),
    Slow(Duration),
    Invalid(Invalid),
}

impl ConnEnd {
    /// The cause to count, when the end is the peer's fault rather than a plain close.
    pub fn cause(&self) -> Option<Cause> {
        match self {
            ConnEnd::Closed => None,
            ConnEnd::Broken(_) => Some(Cause::Broken),
            ConnEnd::Idle(_) => Some(Cause::Idle),
            ConnEnd::Slow(_) => Some(Cause::Slow),
            ConnEnd::Invalid(Invalid::TooLarge { .. }) => Some(Cause::TooLarge),
            ConnEnd::Invalid(Invalid::UnknownFraming) => Some(Cause::UnknownFraming),
            ConnEnd::Invalid(Invalid::BadHeader(_)) => Some(Cause::BadHeader),
        }
    }
}

impl fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnEnd::Closed => f.write_str("closed the connection"),
            ConnEnd::Broken(why) => write!(f, "connection broken: {why}"),
            ConnEnd::Idle(d) => write!(f, "sent nothing for {:.1} s", d.as_secs_f64()),
            ConnEnd::Slow(d) => write!(f, "sent no whole frame in {:.1} s", d.as_secs_f64()),
            ConnEnd::Invalid(why) => write!(f, "sent a bad stream: {why}"),
        }
    }
}

/// A camera's connection being read.
pub struct Conn<S> {
    stream: S,
    pub peer: SocketAddr,
    decoder: Decoder,
    buf: BytesMut,
    deadlines: Deadlines,
    last_byte_at: Instant,
    last_frame_at: Instant,
    /// Entries of the camera's detection lists skipped as unusable, so far.
    skipped_objects: u64,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    pub fn new(stream: S, peer: SocketAddr, max_frame_bytes: usize, deadlines: Deadlines) -> Self {
        let now = Instant::now();
        Conn {
            stream,
            peer,
            decoder: Decoder::new(max_frame_bytes),
            buf: BytesMut::new(),
            deadlines,
            last_byte_at: now,
            last_frame_at: now,
            skipped_objects: 0,
        }
    }

    /// The framing this camera speaks, once known.
    pub fn framing(&self) -> Option<super::framing::Framing> {
        self.decoder.framing()
    }

    /// Entries of the camera's detection lists skipped so far (no label or box surv can use).
    pub fn skipped_objects(&self) -> u64 {
        self.skipped_objects
    }

    /// The next payload (a JPEG from a sane camera) with what the camera says it shows, or why
    /// the connection is over. Cancel-safe between frames only: a dropped call loses the bytes
    /// of a partial frame.
    pub async fn next_frame(&mut self) -> Result<Decoded, ConnEnd> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(decoded) => {
                    self.last_frame_at = Instant::now();
                    self.note_skipped(decoded.skipped_objects);
                    return Ok(decoded);
                }
                Err(FramingError::Invalid(why)) => return Err(ConnEnd::Invalid(why)),
                Err(FramingError::Incomplete) => {}
            }
            let idle_at = self.last_byte_at + self.deadlines.idle;
            let frame_at = self.last_frame_at + self.deadlines.frame;
            let want = self.decoder.wanted(self.buf.len()).min(READ_CHUNK_BYTES);
            self.buf.reserve(want);
            match timeout_at(idle_at.min(frame_at), self.stream.read_buf(&mut self.buf)).await {
                Err(_) if idle_at <= frame_at => return Err(ConnEnd::Idle(self.deadlines.idle)),
                Err(_) => return Err(ConnEnd::Slow(self.deadlines.frame)),
                Ok(Ok(0)) if self.buf.is_empty() => return Err(ConnEnd::Closed),
                Ok(Ok(0)) => {
                    return Err(ConnEnd::Broken(format!(
                        "closed {} bytes into a frame",
                        self.buf.len()
                    )))
                }
                Ok(Ok(_)) => self.last_byte_at = Instant::now(),
                Ok(Err(e)) => return Err(ConnEnd::Broken(io_reason(&e))),
            }
        }
    }
}

impl<S> Conn<S> {
    /// Counts detection entries skipped; the first ones are logged, once per connection (a
    /// camera whose script sends no labels, the mobilenet tracker's, sends none on every
    /// frame: not an error).
    fn note_skipped(&mut self, skipped: usize) {
        if skipped == 0 {
            return;
        }
        if self.skipped_objects == 0 {
            tracing::warn!(
                peer = %self.peer,
                skipped,
                "camera detections without a label and box surv can use are skipped"
            );
        }
        self.skipped_objects = self
            .skipped_objects
            .saturating_add(u64::try_from(skipped).unwrap_or(u64::MAX));
    }
}

fn io_reason(e: &io::Error) -> String {
    e.to_string()
}
