//! The `multipart/x-mixed-replace` reader of MJPEG-over-HTTP streams, without I/O: body bytes
//! in, JPEG parts out.
//!
//! ```text
//!  [preamble]                             ignored
//!  --BOUNDARY\r\n                         delimiter line: `--` optional, CRLF or bare LF,
//!  Content-Type: image/jpeg\r\n           trailing blanks allowed, `--BOUNDARY--` ends
//!  Content-Length: 5120\r\n               optional: without it, the part ends at the next
//!  \r\n                                   delimiter line (its CRLF/LF is not part of the body)
//!  <5120 bytes of JPEG>
//!  \r\n                                   anything up to the next delimiter line is skipped
//!  --BOUNDARY\r\n
//!  …
//! ```
//!
//! Cameras bend this in every direction, and the reader takes them as they are:
//! * the boundary declared with or without a leading `--` (the OAK `script_mjpeg_server` says
//!   `boundary=--jpgboundary` and writes `--jpgboundary` lines; RFC 2046 would have it write
//!   `----jpgboundary`), and delimiter lines with or without the `--`: a line is a delimiter
//!   when it is the boundary with its leading dashes removed, after any number of dashes;
//! * no boundary declared at all: the first line starting with `--` is taken as the delimiter;
//! * parts with or without `Content-Length` (then read exactly), CRLF or bare LF, a JPEG right
//!   after the delimiter line with no header block at all.
//!
//! Bounded whatever the peer sends: a part is never held beyond `max_part_bytes` (a declared
//! length over the cap is skipped without being stored), a header block beyond
//! [`MAX_HEADER_BYTES`] is dropped, and a stream with no delimiter in `max(2 × cap, 1 MiB)`
//! bytes is [`MultipartError::NoDelimiter`]. A part that cannot be used is an
//! [`Event::Skipped`] (the stream goes on); only a stream that has lost its framing is an error.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

/// The longest header block of one part; beyond it the part is dropped (an endless header).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The least amount of junk (bytes outside any part) tolerated before the stream is declared
/// unframed; the limit is twice the part cap when that is more.
const MIN_JUNK_LIMIT_BYTES: usize = 1024 * 1024;

/// Room on a delimiter line beyond the boundary itself: dashes, `--`, transport padding.
const DELIMITER_SLACK_BYTES: usize = 64;

/// A learned boundary is at most this long (RFC 2046 allows 70 characters).
const MAX_LEARNED_BOUNDARY_BYTES: usize = 200;

const SOI: [u8; 2] = [0xFF, 0xD8];

/// What the reader found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole part that says it is `image/jpeg` (or says nothing): its bytes, untouched.
    Jpeg(Bytes),
    /// A part that was not used, and why; the stream goes on with the next part.
    Skipped(Skip),
    /// The closing delimiter (`--BOUNDARY--`): the server ended the stream.
    End,
}

/// Why a part was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The part is larger than the cap (declared, or seen so far when undeclared).
    TooLarge { bytes: u64, max_bytes: usize },
    /// The part declared another content type.
    NotJpeg { content_type: String },
    /// The part's header block did not end within [`MAX_HEADER_BYTES`].
    HeaderTooLong,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::TooLarge { bytes, max_bytes } => write!(
                f,
                "multipart part of {bytes} bytes is over --max-frame-bytes {max_bytes}"
            ),
            Skip::NotJpeg { content_type } => {
                write!(f, "multipart part is {content_type:?}, not image/jpeg")
            }
            Skip::HeaderTooLong => write!(
                f,
                "multipart part header is longer than {MAX_HEADER_BYTES} bytes"
            ),
        }
    }
}

/// The stream is not the multipart it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error(
        "no multipart delimiter line ({boundary}) in {bytes} bytes: \
         the stream does not use the boundary it declared"
    )]
    NoDelimiter { boundary: String, bytes: usize },
}

/// The reader: [`push`](Self::push) body bytes as they arrive, then take
/// [`next_event`](Self::next_event) until it says `None` (read more).
pub struct MultipartReader {
    /// The boundary without its leading dashes; `None` until learned from the stream.
    core: Option<Vec<u8>>,
    max_part_bytes: usize,
    max_junk_bytes: usize,
    buf: BytesMut,
    state: State,
    /// Bytes discarded outside any part since the last delimiter line.
    junk_bytes: usize,
}

#[derive(Debug)]
enum State {
    /// Looking for a delimiter line. `mid_line`: what precedes the buffer ended mid-line.
    Seek {
        mid_line: bool,
    },
    /// Reading a part's header block; `used` bytes of it consumed so far.
    Headers {
        used: usize,
        head: PartHead,
    },
    /// A part with a Content-Length within the cap: exactly `len` bytes.
    Body {
        len: usize,
    },
    /// A part whose declared length is skipped without storing it.
    Discard {
        remaining: u64,
    },
    /// A part without Content-Length, up to the next delimiter line. `pos`: the next line
    /// start to examine (`mid_line`: `pos` is not a line start); `keep`: a JPEG to deliver.
    Scan {
        pos: usize,
        mid_line: bool,
        keep: bool,
    },
    /// The closing delimiter was read; [`Event::End`] not yet given.
    Closing,
    Done,
}

#[derive(Debug, Default)]
struct PartHead {
    lines: usize,
    content_type: Option<String>,
    content_length: Option<u64>,
}

/// A delimiter line: another part follows, or the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiter {
    Open,
    Close,
}

impl MultipartReader {
    /// A reader for a stream whose Content-Type declared `boundary` (`None`: learn it from the
    /// first `--` line); no part larger than `max_part_bytes` is ever held.
    pub fn new(boundary: Option<&str>, max_part_bytes: usize) -> MultipartReader {
        let core = boundary
            .map(|b| b.trim().trim_start_matches('-').as_bytes().to_vec())
            .filter(|c| !c.is_empty());
        MultipartReader {
            core,
            max_part_bytes,
            max_junk_bytes: max_part_bytes.saturating_mul(2).max(MIN_JUNK_LIMIT_BYTES),
            buf: BytesMut::new(),
            state: State::Seek { mid_line: false },
            junk_bytes: 0,
        }
    }

    /// Bytes held, waiting for the rest of a part.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends body bytes. Call [`next_event`](Self::next_event) until `None` after each push:
    /// what stays buffered is then bounded by the caps, plus at most one pushed chunk.
    pub fn push(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Done) {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next thing found, `Ok(None)` when more bytes are needed (Incomplete), or the error
    /// that the stream has no framing left (Invalid).
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        loop {
            let event = match std::mem::replace(&mut self.state, State::Done) {
                State::Seek { mid_line } => self.seek(mid_line)?,
                State::Headers { used, head } => self.headers(used, head),
                State::Body { len } => self.body(len),
                State::Discard { remaining } => self.discard_part(remaining),
                State::Scan {
                    pos,
                    mid_line,
                    keep,
                } => self.scan(pos, mid_line, keep),
                State::Closing => {
                    self.buf.clear();
                    return Ok(Some(Event::End));
                }
                State::Done => {
                    self.buf.clear();
                    return Ok(None);
                }
            };
            match event {
                Step::Event(e) => return Ok(Some(e)),
                Step::Incomplete => return Ok(None),
                Step::Again => {}
            }
        }
    }

    fn seek(&mut self, mid_line: bool) -> Result<Step, MultipartError> {
        let Some(nl) = memchr(b'\n', &self.buf) else {
            if self.buf.len() > self.max_delimiter_line() {
                // Too long to be a delimiter line: drop it, and its rest when it comes.
                self.junk(self.buf.len())?;
                self.state = State::Seek { mid_line: true };
            } else {
                self.state = State::Seek { mid_line };
            }
            return Ok(Step::Incomplete);
        };
        let found = if mid_line { None } else { self.delimiter(nl) };
        match found {
            Some(kind) => {
                self.buf.advance(nl + 1);
                self.junk_bytes = 0;
                self.state = match kind {
                    Delimiter::Open => State::Headers {
                        used: 0,
                        head: PartHead::default(),
                    },
                    Delimiter::Close => State::Closing,
                };
            }
            None => {
                self.junk(nl + 1)?;
                self.state = State::Seek { mid_line: false };
            }
        }
        Ok(Step::Again)
    }

    fn headers(&mut self, used: usize, mut head: PartHead) -> Step {
        if head.lines == 0 && self.buf.len() < SOI.len() {
            self.state = State::Headers { used, head };
            return Step::Incomplete;
        }
        if head.lines == 0 && self.buf.starts_with(&SOI) {
            // No header block at all: the JPEG follows the delimiter line directly.
            self.state = self.scan_state(true);
            return Step::Again;
        }
        let Some(nl) = memchr(b'\n', &self.buf) else {
            if used + self.buf.len() > MAX_HEADER_BYTES {
                self.buf.clear();
                self.state = State::Seek { mid_line: true };
                return Step::Event(Event::Skipped(Skip::HeaderTooLong));
            }
            self.state = State::Headers { used, head };
            return Step::Incomplete;
        };
        let used = used + nl + 1;
        if used > MAX_HEADER_BYTES {
            self.buf.advance(nl + 1);
            self.state = State::Seek { mid_line: false };
            return Step::Event(Event::Skipped(Skip::HeaderTooLong));
        }
        let line = trim_end(&self.buf[..nl]);
        if line.is_empty() {
            self.buf.advance(nl + 1);
            return self.start_body(head);
        }
        if let Some((name, value)) = split_header(line) {
            if name.eq_ignore_ascii_case(b"content-type") {
                head.content_type = Some(printable(value));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                // A length that is not a number is ignored: the part is then scanned for.
                head.content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
            }
        }
        head.lines += 1;
        self.buf.advance(nl + 1);
        self.state = State::Headers { used, head };
        Step::Again
    }

    fn start_body(&mut self, head: PartHead) -> Step {
        let skip = match head.content_type {
            Some(ct) if !is_jpeg_type(&ct) => Some(Skip::NotJpeg { content_type: ct }),
            _ => None,
        };
        let cap = u64::try_from(self.max_part_bytes).unwrap_or(u64::MAX);
        match (head.content_length, skip) {
            (Some(len), None) if len <= cap => {
                // `len <= cap`, and the cap is a usize.
                self.state = State::Body {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                };
                Step::Again
            }
            (Some(len), skip) => {
                self.state = State::Discard { remaining: len };
                Step::Event(Event::Skipped(skip.unwrap_or(Skip::TooLarge {
                    bytes: len,
                    max_bytes: self.max_part_bytes,
                })))
            }
            (None, None) => {
                self.state = self.scan_state(true);
                Step::Again
            }
            (None, Some(skip)) => {
                self.state = self.scan_state(false);
                Step::Event(Event::Skipped(skip))
            }
        }
    }

    fn scan_state(&self, keep: bool) -> State {
        State::Scan {
            pos: 0,
            mid_line: false,
            keep,
        }
    }

    fn body(&mut self, len: usize) -> Step {
        if self.buf.len() < len {
            self.state = State::Body { len };
            return Step::Incomplete;
        }
        let part = self.buf.split_to(len).freeze();
        self.state = State::Seek { mid_line: false };
        Step::Event(Event::Jpeg(part))
    }

    fn discard_part(&mut self, remaining: u64) -> Step {
        let n = usize::try_from(remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
        self.buf.advance(n);
        let remaining = remaining - n as u64;
        if remaining == 0 {
            self.state = State::Seek { mid_line: false };
            Step::Again
        } else {
            self.state = State::Discard { remaining };
            Step::Incomplete
        }
    }

    fn scan(&mut self, mut pos: usize, mut mid_line: bool, keep: bool) -> Step {
        while let Some(off) = memchr(b'\n', &self.buf[pos..]) {
            let end = pos + off;
            if !mid_line {
                if let Some(kind) = self.delimiter_at(pos, end) {
                    return self.end_scanned_part(pos, end, kind, keep);
                }
            }
            mid_line = false;
            pos = end + 1;
        }
        if !mid_line && self.buf.len() - pos > self.max_delimiter_line() {
            mid_line = true;
            pos = self.buf.len();
        }
        // Whatever the unfinished line turns out to be, everything before it is body.
        let body_at_least = if mid_line { self.buf.len() } else { pos };
        if body_at_least > self.max_part_bytes.saturating_add(2) {
            let seen = self.buf.len() as u64;
            self.buf.advance(pos);
            self.state = State::Seek { mid_line };
            if keep {
                return Step::Event(Event::Skipped(Skip::TooLarge {
                    bytes: seen,
                    max_bytes: self.max_part_bytes,
                }));
            }
            return Step::Again;
        }
        self.state = State::Scan {
            pos,
            mid_line,
            keep,
        };
        Step::Incomplete
    }

    /// The part ends where the delimiter line at `line..line_end` begins (less the line break
    /// before it, which belongs to the delimiter).
    fn end_scanned_part(
        &mut self,
        line: usize,
        line_end: usize,
        kind: Delimiter,
        keep: bool,
    ) -> Step {
        let mut body_end = line;
        if body_end > 0 {
            body_end -= 1; // the '\n' that made `line` a line start
            if body_end > 0 && self.buf[body_end - 1] == b'\r' {
                body_end -= 1;
            }
        }
        let part = self.buf.split_to(body_end).freeze();
        self.buf.advance(line_end + 1 - body_end);
        self.junk_bytes = 0;
        self.state = match kind {
            Delimiter::Open => State::Headers {
                used: 0,
                head: PartHead::default(),
            },
            Delimiter::Close => State::Closing,
        };
        match (keep, part.len() > self.max_part_bytes) {
            (false, _) => Step::Again,
            // Found whole in one chunk, before the running check could see it grow.
            (true, true) => Step::Event(Event::Skipped(Skip::TooLarge {
                bytes: part.len() as u64,
                max_bytes: self.max_part_bytes,
            })),
            (true, false) => Step::Event(Event::Jpeg(part)),
        }
    }

    /// Whether the buffer's first line (ending at `nl`) is a delimiter line.
    fn delimiter(&mut self, nl: usize) -> Option<Delimiter> {
        if self.core.is_none() {
            let line = trim_end(&self.buf[..nl]);
            let core = line.strip_prefix(b"--")?.trim_ascii_start_dashes();
            if core.is_empty()
                || core.len() > MAX_LEARNED_BOUNDARY_BYTES
                || core
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return None;
            }
            self.core = Some(core.to_vec());
            return Some(Delimiter::Open);
        }
        self.delimiter_at(0, nl)
    }

    fn delimiter_at(&self, start: usize, end: usize) -> Option<Delimiter> {
        let core = self.core.as_deref()?;
        let line = trim_end(&self.buf[start..end]).trim_ascii_start_dashes();
        let rest = line.strip_prefix(core)?;
        match rest {
            b"" => Some(Delimiter::Open),
            b"--" => Some(Delimiter::Close),
            _ => None,
        }
    }

    fn max_delimiter_line(&self) -> usize {
        self.core
            .as_ref()
            .map_or(MAX_LEARNED_BOUNDARY_BYTES, Vec::len)
            .saturating_add(DELIMITER_SLACK_BYTES)
    }

    /// Drops `n` bytes that belong to no part; too many of them and the stream has no framing.
    fn junk(&mut self, n: usize) -> Result<(), MultipartError> {
        self.buf.advance(n);
        self.junk_bytes = self.junk_bytes.saturating_add(n);
        if self.junk_bytes > self.max_junk_bytes {
            let boundary = self.core.as_ref().map_or_else(
                || "none declared, none seen".to_string(),
                |c| format!("{:?}", String::from_utf8_lossy(c)),
            );
            return Err(MultipartError::NoDelimiter {
                boundary,
                bytes: self.junk_bytes,
            });
        }
        Ok(())
    }
}

/// What one state step produced.
enum Step {
    Event(Event),
    Incomplete,
    Again,
}

trait TrimDashes {
    fn trim_ascii_start_dashes(&self) -> &Self;
}

impl TrimDashes for [u8] {
    fn trim_ascii_start_dashes(&self) -> &[u8] {
        let n = self.iter().take_while(|&&b| b == b'-').count();
        &self[n..]
    }
}

/// A line without its trailing CR and blanks (RFC 2046 transport padding).
fn trim_end(line: &[u8]) -> &[u8] {
    let n = line
        .iter()
        .rev()
        .take_while(|&&b| matches!(b, b'\r' | b' ' | b'\t'))
        .count();
    &line[..line.len() - n]
}

fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = memchr(b':', line)?;
    Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
}

/// A header value fit for a log line: at most 100 characters, control bytes replaced.
fn printable(value: &[u8]) -> String {
    String::from_utf8_lossy(&value[..value.len().min(100)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `image/jpeg` and the spellings cameras use for it, parameters ignored.
pub fn is_jpeg_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    ["image/jpeg", "image/jpg", "image/pjpeg"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
}

/// Whether a response Content-Type is a multipart stream (`multipart/x-mixed-replace`, or any
/// other `multipart/…` a camera may say).
pub fn is_multipart(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.len() > 10 && essence[..10].eq_ignore_ascii_case("multipart/")
}

/// The `boundary` parameter of a Content-Type, unquoted; `None` when it has none.
pub fn boundary_param(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

#[cfg(test)]
#[path = "multipart_tests.rs"]
mod tests;
