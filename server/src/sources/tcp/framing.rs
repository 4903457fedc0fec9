//! The three ways a camera frames JPEGs on a TCP stream, decoded without I/O and told apart
//! per connection from its first bytes.
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
//! OAK PoE cameras that detect on the device (a DepthAI Script node running a tracker, a TCP
//! server on port 3005) send the same kind of header, 256 bytes long, with a frame counter and
//! the detections as Python writes them (`str()` of a list, see [`super::pylit`]):
//!
//! ```text
//!  0      6                   24        32                48                       256
//!  +------+-------------------+---------+-----------------+------------------------+----
//!  |ABCDE | timestamp, s      | size    | counter         | detections             | JPEG …
//!  +------+-------------------+---------+-----------------+------------------------+----
//!  "ABCDE " ljust(18)           ljust(8)  ljust(16)         ljust(208)
//!            "12.345678"         "48213"   "29" or "[0, 0, 0, 0]"
//!                                                    "[['ID 1', 320, 240, 'person', [100, …"
//! ```
//!
//! `ljust` pads but never cuts: a field longer than its width (three people overflow the 208
//! characters of the detections, line counters can overflow the counter's 16) pushes the rest
//! along, and the JPEG starts right after the last field. So surv reads the fields in turn, the
//! counter (an int or a list) and the detections (a list) as Python literals, each field
//! ending at its start plus the larger of its width and its text; the JPEG starts where the
//! last one ends (byte 256 when nothing overflowed), and the byte there must not be one more
//! space. A header may be [`MAX_ABCDE_OBJECTS_HEADER_BYTES`] long at most. The detections come
//! out of [`Decoder::decode`] with their frame ([`super::oak`] maps them). The two ABCDE
//! forms are told apart by byte 32: the JPEG's `FF` in the 32-byte form, the counter's first
//! character (a digit or `[`) in the 256-byte one.
//!
//! Every length is checked against the frame cap before a byte of the frame is buffered, and a
//! header is judged from a bounded number of bytes, so a peer cannot make the decoder hold more
//! than one frame plus a header. [`Decoder::decode`] answers [`FramingError::Incomplete`] (read
//! more) apart from [`FramingError::Invalid`] (drop the connection).

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::oak;
use super::pylit::{self, PyError, Value};
use crate::frame::Detection;

/// Width of the timestamp field of an ABCDE header.
const ABCDE_TIMESTAMP_BYTES: usize = 18;
/// Width of the size field of an ABCDE header.
const ABCDE_SIZE_BYTES: usize = 8;
/// Width of the counter field of the 256-byte ABCDE header.
const ABCDE_COUNTER_BYTES: usize = 16;
/// Width of the detections field of the 256-byte ABCDE header.
const ABCDE_OBJECTS_BYTES: usize = 208;

/// Bytes of seed 004's length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of an OAK ABCDE header.
pub const ABCDE_HEADER_BYTES: usize = 32;
/// Bytes of the ABCDE header with detections when no field overflows its width.
pub const ABCDE_OBJECTS_HEADER_BYTES: usize = 256;
/// The longest ABCDE header with detections surv reads (about 25 tracked people): a longer
/// one is refused, so a peer cannot make surv buffer an endless header.
pub const MAX_ABCDE_OBJECTS_HEADER_BYTES: usize = 4096;
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
    /// `ABCDE <timestamp> <size> <counter> <detections>` in 256 bytes or more, then the JPEG
    /// (an OAK PoE that detects on the device).
    AbcdeObjects,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::LengthPrefixed => "length-prefixed",
            Framing::Abcde => "ABCDE",
            Framing::AbcdeObjects => "ABCDE with detections",
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

/// One frame out of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Whatever the framing carried (a JPEG from a sane camera); never empty.
    pub payload: Bytes,
    /// What the camera says the frame shows (the 256-byte ABCDE form; possibly none), or
    /// `None` from a framing that says nothing.
    pub objects: Option<Arc<[Detection]>>,
    /// Entries of the camera's detection list that surv could not use ([`oak::detections`]).
    pub skipped_objects: usize,
}

/// What a header says of the frame that follows.
#[derive(Debug)]
struct Header {
    payload_bytes: usize,
    objects: Option<Arc<[Detection]>>,
    skipped_objects: usize,
}

/// Turns one connection's bytes into JPEG payloads.
#[derive(Debug)]
pub struct Decoder {
    max_frame_bytes: usize,
    framing: Option<Framing>,
    /// The header of the frame being read has been consumed; what it said follows.
    payload: Option<Header>,
}

impl Decoder {
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder {
            max_frame_bytes,
            framing: None,
            payload: None,
        }
    }

    /// The framing detected on this connection, once its first header has been read.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// The next payload from `buf` (consumed from it), or why there is none. A payload is
    /// whatever the framing carried (a JPEG from a sane camera); the caller judges it. Empty
    /// messages (seed 004 starts with one) are skipped, with what their header said.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            if let Some(header) = self.payload.take_if(|h| buf.len() >= h.payload_bytes) {
                let payload = buf.split_to(header.payload_bytes).freeze();
                if payload.is_empty() {
                    continue;
                }
                return Ok(Decoded {
                    payload,
                    objects: header.objects,
                    skipped_objects: header.skipped_objects,
                });
            }
            if self.payload.is_some() {
                return Err(FramingError::Incomplete);
            }
            let framing = match self.framing {
                Some(f) => f,
                None => self.detect(buf)?,
            };
            let header = match framing {
                Framing::LengthPrefixed => Header::plain(self.length_prefix(buf)?),
                Framing::Abcde => Header::plain(self.abcde_header(buf)?),
                Framing::AbcdeObjects => self.abcde_objects_header(buf)?,
            };
            self.framing = Some(framing);
            self.payload = Some(header);
        }
    }

    /// Tells the framing from a new connection's first bytes, consuming nothing.
    fn detect(&self, buf: &[u8]) -> Result<Framing, FramingError> {
        let n = buf.len().min(ABCDE_MAGIC.len());
        if buf[..n] == ABCDE_MAGIC[..n] {
            if n < ABCDE_MAGIC.len() {
                return Err(FramingError::Incomplete);
            }
            // Byte 32: the JPEG (or the next header) after a 32-byte header, the counter in a
            // 256-byte one.
            return match buf.get(ABCDE_HEADER_BYTES) {
                None => Err(FramingError::Incomplete),
                Some(b) if b.is_ascii_digit() || *b == b'[' => Ok(Framing::AbcdeObjects),
                Some(_) => Ok(Framing::Abcde),
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

    /// Reads a 256-byte (or longer) ABCDE header with detections; consumes it once the byte
    /// after it is buffered too (it must not be padding), and returns what it says.
    fn abcde_objects_header(&self, buf: &mut BytesMut) -> Result<Header, FramingError> {
        let bad = |why| FramingError::Invalid(Invalid::BadHeader(why));
        let head = &buf[..buf.len().min(MAX_ABCDE_OBJECTS_HEADER_BYTES)];
        // Cut short at the cap: the header goes on past it, which no camera sends.
        let cut = |e: FramingError| match e {
            FramingError::Incomplete if head.len() == MAX_ABCDE_OBJECTS_HEADER_BYTES => {
                bad("it is longer than 4096 bytes")
            }
            e => e,
        };
        if head.len() < ABCDE_MAGIC.len() {
            return Err(FramingError::Incomplete);
        }
        if !head.starts_with(ABCDE_MAGIC) {
            return Err(bad("it does not start with \"ABCDE \""));
        }
        let at = ABCDE_MAGIC.len();
        let (timestamp, at) = word_field(head, at, ABCDE_TIMESTAMP_BYTES)?;
        let (size, at) = word_field(head, at, ABCDE_SIZE_BYTES)?;
        let timestamp_ok = std::str::from_utf8(timestamp)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !timestamp_ok {
            return Err(bad("the timestamp is not a number"));
        }
        if !size.iter().all(u8::is_ascii_digit) {
            return Err(bad("the size is not a decimal number"));
        }
        let size = size.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let payload_bytes = self.capped(size.unwrap_or(u64::MAX))?;
        let (counter, at) = literal_field(head, at, ABCDE_COUNTER_BYTES).map_err(cut)?;
        if !matches!(counter, Value::Int(_) | Value::List(_)) {
            return Err(bad("the counter is neither an int nor a list"));
        }
        let (list, end) = literal_field(head, at, ABCDE_OBJECTS_BYTES).map_err(cut)?;
        let Value::List(entries) = list else {
            return Err(bad("the detections are not a list"));
        };
        if payload_bytes > 0 {
            match buf.get(end) {
                None => return Err(FramingError::Incomplete),
                Some(b' ') => return Err(bad("its padding runs on past its fields")),
                Some(_) => {}
            }
        }
        let (found, skipped_objects) = oak::detections(&entries);
        buf.advance(end);
        Ok(Header {
            payload_bytes,
            objects: Some(found.into()),
            skipped_objects,
        })
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

impl Header {
    /// The header of a framing that says nothing of the picture.
    fn plain(payload_bytes: usize) -> Header {
        Header {
            payload_bytes,
            objects: None,
            skipped_objects: 0,
        }
    }
}

/// A field of `width` characters at `at` holding one word, as `str(x).ljust(width)` writes it:
/// the word and where the next field starts. A word that fills the whole width (`ljust` pads
/// nothing then) is taken as exactly that wide: a timestamp as `timedelta.total_seconds()`
/// gives it has at most 6 decimals, and a size is capped far below 8 digits.
fn word_field(head: &[u8], at: usize, width: usize) -> Result<(&[u8], usize), FramingError> {
    let end = at + width;
    let Some(field) = head.get(at..end) else {
        return Err(FramingError::Incomplete);
    };
    let len = field.iter().position(|&b| b == b' ').unwrap_or(width);
    if len == 0 || !field[len..].iter().all(|&b| b == b' ') {
        return Err(Invalid::BadHeader("a field is not one word padded with spaces").into());
    }
    if !field[..len].iter().all(u8::is_ascii_graphic) {
        return Err(Invalid::BadHeader("it is not printable ASCII").into());
    }
    Ok((&field[..len], end))
}

/// A field of at least `width` characters at `at` holding a Python literal, as
/// `str(x).ljust(width)` writes it: the value and where the next field starts (after the
/// padding, or right after the literal when it is `width` long or longer).
fn literal_field(head: &[u8], at: usize, width: usize) -> Result<(Value, usize), FramingError> {
    let rest = head.get(at..).unwrap_or_default();
    let (value, len) = match pylit::parse(rest) {
        Ok(v) => v,
        Err(PyError::Incomplete) => return Err(FramingError::Incomplete),
        Err(PyError::Invalid(why)) => return Err(Invalid::BadHeader(why).into()),
    };
    let end = at + len.max(width);
    let Some(padding) = head.get(at + len..end) else {
        return Err(FramingError::Incomplete);
    };
    if !padding.iter().all(|&b| b == b' ') {
        return Err(Invalid::BadHeader("a field is not one literal padded with spaces").into());
    }
    Ok((value, end))
}

fn peek_u32(buf: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
