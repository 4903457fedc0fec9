//! Splitting a byte stream of concatenated JPEGs (ffmpeg's `-f mjpeg` output, a file) into
//! whole JPEGs, each capped in size. Sans-IO: bytes go in, frames come out.
//!
//! A JPEG cannot be split by searching for `FF D9`: an EXIF thumbnail inside APP1 has its own
//! SOI … EOI, and table or comment payloads may hold any byte. So the splitter walks the
//! structure as a decoder would (ITU T.81 B.1):
//!
//! ```text
//!  FFD8 ┬ FFxx LLLL <L-2 bytes> ┬ … FFDA LLLL <header> <entropy-coded data> ┬ … FFD9
//!  SOI  │ marker, length counts │   SOS                 FF00 = data FF,      │   EOI
//!       │ itself, not 0 or 1    │                       FFD0-7 = restart,    │
//!       └ FF fill bytes allowed ┘                       FFxx = next marker ──┘
//! ```
//!
//! Bytes before an SOI are junk and skipped. A frame that grows past the cap is reported once
//! ([`SplitError::Oversize`]) and then walked to its EOI without being kept, so memory stays
//! bounded by the cap plus what one push adds. A malformed frame is reported and the splitter
//! looks for the next SOI.

use bytes::{Buf, Bytes, BytesMut};

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;

/// Why the bytes being walked are not a usable JPEG. The splitter has already moved past them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The frame grew past the cap; the rest of it is skipped unread.
    #[error("JPEG larger than {max_frame_bytes} bytes (--max-frame-bytes)")]
    Oversize { max_frame_bytes: usize },
    /// The bytes after an SOI are not JPEG structure.
    #[error("malformed JPEG: {0}")]
    Malformed(&'static str),
}

/// Where the walk is inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for SOI; nothing kept.
    Seek,
    /// After SOI or a segment: a marker (`FF`, fill `FF`s, then its code) comes next.
    Marker,
    /// Inside a segment's payload until this buffer offset; `then_scan` after an SOS header.
    Segment { end: usize, then_scan: bool },
    /// Entropy-coded data after SOS: scanning for a marker that is not stuffing or a restart.
    Scan,
}

/// Turns pushed bytes into whole JPEGs (SOI … EOI), none over `max_frame_bytes`.
#[derive(Debug)]
pub struct JpegSplitter {
    buf: BytesMut,
    max_frame_bytes: usize,
    state: State,
    /// Next byte to look at, an offset into `buf`; the current frame starts at offset 0.
    pos: usize,
    /// The current frame went over the cap: it is walked to its end but not kept.
    discarding: bool,
    /// Bytes of the current frame already dropped while discarding.
    dropped: usize,
}

impl JpegSplitter {
    pub fn new(max_frame_bytes: usize) -> JpegSplitter {
        JpegSplitter {
            buf: BytesMut::new(),
            max_frame_bytes,
            state: State::Seek,
            pos: 0,
            discarding: false,
            dropped: 0,
        }
    }

    /// Adds bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: the unfinished frame (or junk) so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a frame was started and not finished: at the end of the stream, a truncated one.
    pub fn in_frame(&self) -> bool {
        self.state != State::Seek
    }

    /// The next whole JPEG, `Ok(None)` when more bytes are needed, or why the bytes walked
    /// were not a usable JPEG (the splitter has moved past them; call again).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, SplitError> {
        loop {
            let step = self.step();
            match step {
                Step::Frame => {
                    let len = self.pos;
                    let oversize = len > self.max_frame_bytes;
                    self.state = State::Seek;
                    self.pos = 0;
                    if self.discarding || oversize {
                        self.buf.advance(len);
                        let report = !self.discarding;
                        (self.discarding, self.dropped) = (false, 0);
                        if report {
                            return Err(self.oversize());
                        }
                        continue;
                    }
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                Step::Bad { reason, restart_at } => {
                    // Without a new SOI to restart at, skip this frame's own SOI (still at the
                    // front unless it was dropped while discarding) so that the search moves on.
                    let from = restart_at.unwrap_or(if self.discarding { 0 } else { 2 });
                    self.buf.advance(from.min(self.buf.len()));
                    self.state = State::Seek;
                    self.pos = 0;
                    let report = !self.discarding;
                    (self.discarding, self.dropped) = (false, 0);
                    if report {
                        return Err(SplitError::Malformed(reason));
                    }
                }
                Step::Go | Step::More => {
                    let frame_len = self.dropped.saturating_add(self.pos);
                    let mut newly_oversize = false;
                    if self.state != State::Seek
                        && !self.discarding
                        && frame_len > self.max_frame_bytes
                    {
                        self.discarding = true;
                        newly_oversize = true;
                    }
                    if self.discarding {
                        self.drop_walked();
                    }
                    if newly_oversize {
                        return Err(self.oversize());
                    }
                    if matches!(step, Step::More) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn oversize(&self) -> SplitError {
        SplitError::Oversize {
            max_frame_bytes: self.max_frame_bytes,
        }
    }

    /// One move of the walk.
    fn step(&mut self) -> Step {
        let b = &self.buf[..];
        match self.state {
            State::Seek => {
                // Keep a trailing FF: it may be the first half of an SOI.
                let Some(at) = b.windows(2).position(|w| w == [0xFF, SOI]) else {
                    let keep = usize::from(b.last() == Some(&0xFF));
                    self.buf.advance(b.len() - keep);
                    self.pos = 0;
                    return Step::More;
                };
                self.buf.advance(at);
                self.pos = 2;
                self.state = State::Marker;
                Step::Go
            }
            State::Marker => {
                let mut at = self.pos;
                match b.get(at) {
                    None => return Step::More,
                    Some(0xFF) => {}
                    Some(_) => return bad("a segment is not followed by a marker"),
                }
                // Fill bytes: any number of FF before the marker code.
                while b.get(at + 1) == Some(&0xFF) {
                    at += 1;
                }
                let Some(&code) = b.get(at + 1) else {
                    self.pos = at;
                    return Step::More;
                };
                match code {
                    EOI => {
                        self.pos = at + 2;
                        Step::Frame
                    }
                    SOI => Step::Bad {
                        reason: "a new SOI before this JPEG's EOI",
                        restart_at: Some(at),
                    },
                    0x00 => bad("FF00 where a marker belongs"),
                    TEM | 0xD0..=0xD7 => {
                        self.pos = at + 2;
                        Step::Go
                    }
                    _ => {
                        let (Some(&hi), Some(&lo)) = (b.get(at + 2), b.get(at + 3)) else {
                            self.pos = at;
                            return Step::More;
                        };
                        let len = usize::from(u16::from_be_bytes([hi, lo]));
                        if len < 2 {
                            return bad("a segment length below 2");
                        }
                        self.state = State::Segment {
                            end: at + 2 + len,
                            then_scan: code == SOS,
                        };
                        self.pos = at + 4;
                        Step::Go
                    }
                }
            }
            State::Segment { end, then_scan } => {
                if b.len() < end {
                    self.pos = b.len();
                    return Step::More;
                }
                self.pos = end;
                self.state = if then_scan {
                    State::Scan
                } else {
                    State::Marker
                };
                Step::Go
            }
            State::Scan => {
                let mut at = self.pos;
                loop {
                    let Some(ff) = b[at..].iter().position(|&x| x == 0xFF) else {
                        self.pos = b.len();
                        return Step::More;
                    };
                    at += ff;
                    match b.get(at + 1) {
                        None => {
                            self.pos = at;
                            return Step::More;
                        }
                        // Stuffed data byte, or a restart marker: still entropy-coded data.
                        Some(0x00 | 0xD0..=0xD7) => at += 2,
                        // Fill byte: the next FF may start the marker.
                        Some(0xFF) => at += 1,
                        Some(_) => {
                            self.pos = at;
                            self.state = State::Marker;
                            return Step::Go;
                        }
                    }
                }
            }
        }
    }

    /// While discarding an oversize frame: forget what has been walked, keep the offsets right.
    fn drop_walked(&mut self) {
        let n = self.pos.min(self.buf.len());
        self.buf.advance(n);
        self.dropped = self.dropped.saturating_add(n);
        self.pos -= n;
        if let State::Segment { end, then_scan } = self.state {
            self.state = State::Segment {
                end: end - n,
                then_scan,
            };
        }
    }
}

fn bad(reason: &'static str) -> Step {
    Step::Bad {
        reason,
        restart_at: None,
    }
}

enum Step {
    /// Need more bytes.
    More,
    /// Moved on; walk again.
    Go,
    /// A whole frame: `buf[..pos]`.
    Frame,
    /// Not a JPEG after all; the search for the next SOI starts at `restart_at` (a new SOI
    /// found in the frame's place) or past the broken frame's SOI.
    Bad {
        reason: &'static str,
        restart_at: Option<usize>,
    },
}
