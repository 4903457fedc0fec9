//! One camera's TCP connection: bytes in, payloads out, each read under a deadline.
//!
//! Two deadlines guard every connection: no byte for [`Deadlines::idle`] (a camera that hung, a
//! dead link) and no whole frame for [`Deadlines::frame`] since the last one (a slowloris peer
//! trickling bytes, or one sending only empty messages). Either ends the connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, Sleep};

use super::framing::{Decoded, Decoder, FramingError, Invalid};
use super::peers::Cause;

/// The room made in the buffer before each read: the most read at once.
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
    /// Fires at the deadline it was armed for; made at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
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
            timer: None,
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
            let deadline = idle_at.min(frame_at);
            // Room for a whole frame of the usual size, header included: one read takes all
            // the camera has sent (reading the header alone first cost a system call a frame).
            self.buf.reserve(READ_CHUNK_BYTES);
            // One timer for the connection, armed lazily: deadlines only move later, so a timer
            // that fires early is re-armed rather than one made and dropped on every read.
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.is_elapsed() || timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => read,
                () = timer.as_mut() => {
                    if Instant::now() < deadline {
                        continue;
                    }
                    return Err(if idle_at <= frame_at {
                        ConnEnd::Idle(self.deadlines.idle)
                    } else {
                        ConnEnd::Slow(self.deadlines.frame)
                    });
                }
            };
            match read {
                Ok(0) if self.buf.is_empty() => return Err(ConnEnd::Closed),
                Ok(0) => {
                    return Err(ConnEnd::Broken(format!(
                        "closed {} bytes into a frame",
                        self.buf.len()
                    )))
                }
                Ok(_) => self.last_byte_at = Instant::now(),
                Err(e) => return Err(ConnEnd::Broken(io_reason(&e))),
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
