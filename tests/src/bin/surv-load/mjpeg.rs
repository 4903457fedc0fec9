//! Reading a multipart MJPEG byte stream as the load clients receive it: the HTTP response head
//! (status, boundary, transfer coding), chunked transfer decoding, and parts found by their
//! Content-Length. Only the first [`PREFIX_BYTES`] of each JPEG are kept (the surv tag); the
//! rest is skipped, so a client costs little more than its `read` calls.

use crate::mmsg::PREFIX_BYTES;

/// Longest response head or part head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest part accepted (the server's JPEGs are far smaller).
const MAX_PART_BYTES: usize = 16 << 20;

/// The HTTP response head of `/stream.mjpg`, once it is whole.
#[derive(Debug, PartialEq)]
pub struct ResponseHead {
    pub boundary: String,
    pub chunked: bool,
    /// Bytes of the head (the body starts after them).
    pub len: usize,
}

/// Parses the response head in `buf`: `Ok(None)` while it is not whole yet.
pub fn response_head(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err("response head too long".into());
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status {status:?}"));
    }
    let (mut boundary, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name == "content-type" {
            boundary = value
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("boundary="))
                .map(|b| b.trim_matches('"').to_string())
                .next();
        }
    }
    let boundary = boundary.ok_or("no boundary in the Content-Type")?;
    Ok(Some(ResponseHead {
        boundary,
        chunked,
        len: end + 4,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body's reader: transfer decoding, then parts.
pub struct PartReader {
    chunks: Option<Dechunk>,
    delimiter: Vec<u8>,
    /// Skip bytes until a part head (a client that joined GStreamer's stream mid-part).
    resync: bool,
    state: State,
    head: Vec<u8>,
    prefix: Vec<u8>,
}

enum State {
    Head,
    Body { len: usize, left: usize },
}

enum Dechunk {
    SizeLine(Vec<u8>),
    Data(usize),
    DataEnd(usize),
}

impl PartReader {
    pub fn new(boundary: &str, chunked: bool, resync: bool) -> PartReader {
        PartReader {
            chunks: chunked.then(|| Dechunk::SizeLine(Vec::new())),
            delimiter: format!("--{boundary}\r\n").into_bytes(),
            resync,
            state: State::Head,
            head: Vec::with_capacity(256),
            prefix: Vec::with_capacity(PREFIX_BYTES),
        }
    }

    /// Reads `data`; `part(len, prefix)` is called for each whole part.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        part: &mut impl FnMut(usize, &[u8]),
    ) -> Result<(), String> {
        if self.chunks.is_none() {
            return self.feed_body(data, part);
        }
        while !data.is_empty() {
            let Some(chunks) = self.chunks.as_mut() else {
                break;
            };
            match chunks {
                Dechunk::SizeLine(line) => {
                    let b = data[0];
                    data = &data[1..];
                    line.push(b);
                    if line.len() > 64 {
                        return Err("chunk size line too long".into());
                    }
                    if line.ends_with(b"\r\n") {
                        let text = String::from_utf8_lossy(&line[..line.len() - 2]);
                        let hex = text.split(';').next().unwrap_or_default().trim();
                        let size = usize::from_str_radix(hex, 16)
                            .map_err(|_| format!("bad chunk size {text:?}"))?;
                        if size == 0 {
                            return Err("the stream ended".into());
                        }
                        *chunks = Dechunk::Data(size);
                    }
                }
                Dechunk::Data(left) => {
                    let take = (*left).min(data.len());
                    let rest = *left - take;
                    *chunks = if rest == 0 {
                        Dechunk::DataEnd(2)
                    } else {
                        Dechunk::Data(rest)
                    };
                    self.feed_body(&data[..take], part)?;
                    data = &data[take..];
                }
                Dechunk::DataEnd(left) => {
                    data = &data[1..];
                    *left -= 1;
                    if *left == 0 {
                        *chunks = Dechunk::SizeLine(Vec::new());
                    }
                }
            }
        }
        Ok(())
    }

    fn feed_body(
        &mut self,
        mut data: &[u8],
        part: &mut impl FnMut(usize, &[u8]),
    ) -> Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                State::Head => {
                    let b = data[0];
                    data = &data[1..];
                    if self.head.is_empty() && (b == b'\r' || b == b'\n') {
                        continue;
                    }
                    self.head.push(b);
                    if self.head.ends_with(b"\r\n\r\n") {
                        self.part_head()?;
                    } else if self.head.len() > MAX_HEAD_BYTES {
                        if !self.resync {
                            return Err("part head too long".into());
                        }
                        let keep = self.head.len() - self.delimiter.len();
                        self.head.drain(..keep);
                    }
                }
                State::Body { len, left } => {
                    let take = (*left).min(data.len());
                    let want = PREFIX_BYTES.saturating_sub(self.prefix.len()).min(take);
                    self.prefix.extend_from_slice(&data[..want]);
                    *left -= take;
                    data = &data[take..];
                    if *left == 0 {
                        part(*len, &self.prefix);
                        self.prefix.clear();
                        self.state = State::Head;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole part head is in `self.head`: its Content-Length starts the body.
    fn part_head(&mut self) -> Result<(), String> {
        let start = if self.resync {
            match find(&self.head, &self.delimiter) {
                Some(at) => at,
                None => {
                    self.head.clear();
                    return Ok(());
                }
            }
        } else if self.head.starts_with(&self.delimiter) {
            0
        } else {
            return Err("a part does not start with the boundary".into());
        };
        let text = String::from_utf8_lossy(&self.head[start..]);
        let len = text
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or("a part without Content-Length")?;
        if len == 0 || len > MAX_PART_BYTES {
            return Err(format!("part of {len} bytes"));
        }
        self.head.clear();
        self.state = State::Body { len, left: len };
        Ok(())
    }
}

#[cfg(test)]
#[path = "mjpeg_tests.rs"]
mod tests;
