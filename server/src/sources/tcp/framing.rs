//! The two ways a camera frames JPEGs on a TCP stream, decoded without I/O and told apart per
//! connection from its first bytes.
//!
//! Seed 004's `sendvid.py` (`struct.pack('>I', len) + jpeg`; its very first message is empty,
//! because it sends the previous buffer whenever a new frame starts):
//!
//! ```text
//!  0                4
//!  +----------------+-----------------------------+----
//!  | length, u32 BE | JPEG (length bytes)         | next length …
//!  +----------------+-----------------------------+----
//! ```
//!
//! OAK PoE `tcp_streaming_server` / `tcp_streaming_client` (seed 000; luxonis
//! depthai-experiments `gen2-poe-tcp-streaming`): a 32-byte ASCII header, then the JPEG. The
//! timestamp and the size are space-padded to 18 and 8 characters (`ljust` in one version,
//! `center` in another); the OAK's host program reads 32 bytes and splits on runs of spaces:
//!
//! ```text
//!  0      6                   24        32
//!  +------+-------------------+---------+-----------------------+----
//!  |ABCDE | timestamp, s      | size    | JPEG (size bytes)     | next header …
//!  +------+-------------------+---------+-----------------------+----
//!  "ABCDE " "12.345678" padded  "48213" padded
//! ```
//!
//! Every length is checked against the frame cap before a byte of the frame is buffered, and a
//! header is judged from a fixed number of bytes, so a peer cannot make the decoder hold more
//! than one frame plus a header. [`Decoder::decode`] answers [`FramingError::Incomplete`] (read
//! more) apart from [`FramingError::Invalid`] (drop the connection).

use bytes::{Buf, Bytes, BytesMut};

/// Width of the timestamp field of an ABCDE header.
const ABCDE_TIMESTAMP_BYTES: usize = 18;

/// Bytes of seed 004's length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of an OAK ABCDE header.
pub const ABCDE_HEADER_BYTES: usize = 32;
/// How an ABCDE header starts.
const ABCDE_MAGIC: &[u8] = b"ABCDE ";
/// How every JPEG starts (SOI): what tells a length prefix from garbage on a new connection.
const SOI: [u8; 2] = [0xFF, 0xD8];

/// Which framing a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `[u32 BE length][JPEG]` (seed 004).
    LengthPrefixed,
    /// `ABCDE <timestamp> <size>` in 32 bytes, then the JPEG (OAK PoE).
    Abcde,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::LengthPrefixed => "length-prefixed",
            Framing::Abcde => "ABCDE",
        }
    }
}

/// Why no frame came out of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Not enough bytes yet: read more and call again.
    #[error("incomplete frame")]
    Incomplete,
    /// The stream cannot be decoded; the connection should be dropped.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// What was wrong with the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("neither a length-prefixed JPEG nor an ABCDE header")]
    UnknownFraming,
    #[error("a frame of {len} bytes is over the {cap}-byte cap (--max-frame-bytes)")]
    TooLarge { len: u64, cap: usize },
    #[error("bad ABCDE header: {0}")]
    BadHeader(&'static str),
}

/// Turns one connection's bytes into JPEG payloads.
#[derive(Debug)]
pub struct Decoder {
    max_frame_bytes: usize,
    framing: Option<Framing>,
    /// The header of the frame being read has been consumed; this many payload bytes follow.
    payload_bytes: Option<usize>,
}

impl Decoder {
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder {
            max_frame_bytes,
            framing: None,
            payload_bytes: None,
        }
    }

    /// The framing detected on this connection, once its first header has been read.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// How many more bytes the unit being read (header or payload) needs beyond the `buffered`
    /// ones: what a reader should make room for (never more than one frame).
    pub fn wanted(&self, buffered: usize) -> usize {
        let unit = match (self.payload_bytes, self.framing) {
            (Some(len), _) => len,
            (None, Some(Framing::LengthPrefixed)) => LENGTH_PREFIX_BYTES,
            (None, Some(Framing::Abcde)) | (None, None) => ABCDE_HEADER_BYTES,
        };
        unit.saturating_sub(buffered).max(1)
    }

    /// The next payload from `buf` (consumed from it), or why there is none. A payload is
    /// whatever the framing carried (a JPEG from a sane camera); the caller judges it. Empty
    /// messages (seed 004 starts with one) are skipped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Bytes, FramingError> {
        loop {
            if let Some(len) = self.payload_bytes {
                if buf.len() < len {
                    return Err(FramingError::Incomplete);
                }
                self.payload_bytes = None;
                let payload = buf.split_to(len).freeze();
                if payload.is_empty() {
                    continue;
                }
                return Ok(payload);
            }
            let framing = match self.framing {
                Some(f) => f,
                None => self.detect(buf)?,
            };
            let len = match framing {
                Framing::LengthPrefixed => self.length_prefix(buf)?,
                Framing::Abcde => self.abcde_header(buf)?,
            };
            self.framing = Some(framing);
            self.payload_bytes = Some(len);
        }
    }

    /// Tells the framing from a new connection's first bytes, consuming nothing.
    fn detect(&self, buf: &[u8]) -> Result<Framing, FramingError> {
        let n = buf.len().min(ABCDE_MAGIC.len());
        if buf[..n] == ABCDE_MAGIC[..n] {
            return if n == ABCDE_MAGIC.len() {
                Ok(Framing::Abcde)
            } else {
                Err(FramingError::Incomplete)
            };
        }
        let Some(len) = peek_u32(buf) else {
            return Err(FramingError::Incomplete);
        };
        if len == 0 {
            return Ok(Framing::LengthPrefixed);
        }
        let Some(start) = buf.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + SOI.len()) else {
            return Err(FramingError::Incomplete);
        };
        if start == SOI {
            Ok(Framing::LengthPrefixed)
        } else {
            Err(Invalid::UnknownFraming.into())
        }
    }

    /// Consumes a length prefix and returns the payload length, checked against the cap.
    fn length_prefix(&self, buf: &mut BytesMut) -> Result<usize, FramingError> {
        let len = peek_u32(buf).ok_or(FramingError::Incomplete)?;
        let len = self.capped(u64::from(len))?;
        buf.advance(LENGTH_PREFIX_BYTES);
        Ok(len)
    }

    /// Consumes an ABCDE header and returns the payload length, checked against the cap.
    fn abcde_header(&self, buf: &mut BytesMut) -> Result<usize, FramingError> {
        let Some(header) = buf.get(..ABCDE_HEADER_BYTES) else {
            return Err(FramingError::Incomplete);
        };
        let fields = header
            .strip_prefix(ABCDE_MAGIC)
            .ok_or(Invalid::BadHeader("it does not start with \"ABCDE \""))?;
        if !fields.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
            return Err(Invalid::BadHeader("it is not printable ASCII").into());
        }
        let Some((timestamp, size)) = abcde_fields(fields) else {
            return Err(Invalid::BadHeader("it needs exactly a timestamp and a size").into());
        };
        let timestamp_ok = std::str::from_utf8(timestamp)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !timestamp_ok {
            return Err(Invalid::BadHeader("the timestamp is not a number").into());
        }
        if size.len() > 20 || !size.iter().all(u8::is_ascii_digit) {
            return Err(Invalid::BadHeader("the size is not a decimal number").into());
        }
        let size = size.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let len = self.capped(size.unwrap_or(u64::MAX))?;
        buf.advance(ABCDE_HEADER_BYTES);
        Ok(len)
    }

    fn capped(&self, len: u64) -> Result<usize, FramingError> {
        match usize::try_from(len) {
            Ok(n) if n <= self.max_frame_bytes => Ok(n),
            _ => Err(Invalid::TooLarge {
                len,
                cap: self.max_frame_bytes,
            }
            .into()),
        }
    }
}

/// The timestamp and the size of an ABCDE header's 26 field bytes: split on spaces, as the
/// OAK's host program does; or, when a timestamp fills its 18 characters and runs into the
/// size (`str(ts).ljust(18)` pads nothing then), by position.
fn abcde_fields(fields: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut words = fields.split(|&b| b == b' ').filter(|word| !word.is_empty());
    match (words.next(), words.next(), words.next()) {
        (Some(timestamp), Some(size), None) => Some((timestamp, size)),
        (Some(_), None, None) => {
            let (timestamp, size) = fields.split_at_checked(ABCDE_TIMESTAMP_BYTES)?;
            let (timestamp, size) = (timestamp.trim_ascii(), size.trim_ascii());
            let word = |w: &[u8]| !w.is_empty() && !w.contains(&b' ');
            (word(timestamp) && word(size)).then_some((timestamp, size))
        }
        _ => None,
    }
}

fn peek_u32(buf: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
