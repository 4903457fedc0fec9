//! A small HTTP/1.1 client for the tests and surv-load: GET and POST with headers, bodies by
//! `Content-Length`, chunked or read to the close, every read bounded by the caller's
//! [`Limits`], and keep-alive connections ([`Conn`]) for the HLS players.
//!
//! Hand-written rather than hyper's client: thousands of surv-load players each hold a
//! connection, and this costs them one buffer and, per request, only the head and the body.
//! What it does not do: TLS, redirects, `Expect: 100-continue`, HEAD, pipelining.
//!
//! ```text
//! HTTP/1.1 200 OK\r\n                 status line: "HTTP/1." digit, space, three digits
//! Content-Length: 5\r\n               headers, name ':' value (case-insensitive names)
//! \r\n                                 end of head (at most max_head_bytes in all)
//! hello                                body: Content-Length, chunked, or to the close
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The read buffer of a connection: a part of an HLS stream in a few reads.
const BUF_BYTES: usize = 64 << 10;
/// The head cap unless the caller sets another: far above any head surv or nginx sends.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 << 10;
/// A chunk-size line longer than this is refused (a size in hex and a short extension).
const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// How long a request may take and how much of the answer is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole exchange: connecting (for a new connection), sending, the head and the body.
    pub timeout: Duration,
    /// The status line, the headers and a chunked body's trailers, together.
    pub max_head_bytes: usize,
    /// The body; a longer one is an error, whatever its framing.
    pub max_body_bytes: usize,
}

impl Limits {
    /// `timeout` and `max_body_bytes`, with the default head cap.
    pub fn new(timeout: Duration, max_body_bytes: usize) -> Limits {
        Limits {
            timeout,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_body_bytes,
        }
    }
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target: a path with its query.
    pub path: &'a str,
    /// Sent as given; a `Host` here replaces the client's own.
    pub headers: &'a [(&'a str, &'a str)],
    /// Sent with its `Content-Length` when not empty.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            headers: &[],
            body: &[],
        }
    }

    pub fn post(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method: "POST",
            path,
            headers: &[],
            body,
        }
    }

    /// This request with these headers.
    pub fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request { headers, ..self }
    }
}

/// A response read whole.
pub struct Response {
    pub status: u16,
    /// The status line and the headers, CRLFs included: the headers are looked up in it, so
    /// that a response costs one allocation for its head.
    head: String,
    pub body: Vec<u8>,
    closes: bool,
}

impl Response {
    /// The first value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header as (name, value), in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim(), v.trim()))
    }

    /// `HTTP/1.1 200 OK`, say.
    pub fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// Whether the server closes the connection after this response (`Connection: close`,
    /// HTTP/1.0 without keep-alive, or a body read to the close).
    pub fn closes(&self) -> bool {
        self.closes
    }
}

/// The length, not the bytes.
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status_line", &self.status_line())
            .field("body_bytes", &self.body.len())
            .field("closes", &self.closes)
            .finish()
    }
}

/// `GET path` on a connection of its own (`Connection: close`).
pub async fn get(to: SocketAddr, path: &str, limits: Limits) -> anyhow::Result<Response> {
    request(to, &Request::get(path), limits).await
}

/// `req` on a connection of its own (`Connection: close`), connecting within the timeout.
pub async fn request(
    to: SocketAddr,
    req: &Request<'_>,
    limits: Limits,
) -> anyhow::Result<Response> {
    let mut conn = Conn::new(to, limits);
    conn.close_after = true;
    conn.send(req).await
}

/// Runs `f` to its end on this thread, on a runtime of its own: for callers on plain threads
/// (surv-load's main thread and viewer threads, a test's blocking task), never inside async code.
pub fn blocking<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for one HTTP request")?
        .block_on(f)
}

/// A keep-alive connection to one server: each request goes on the open connection, or on a
/// new one when there is none (the first request, or after the server closed or an error).
pub struct Conn {
    to: SocketAddr,
    limits: Limits,
    io: Option<BufReader<TcpStream>>,
    /// The request being written, kept for the next one.
    out: Vec<u8>,
    /// The current chunk-size line, kept for the next one.
    line: Vec<u8>,
    /// Ask the server to close after each response.
    close_after: bool,
}

impl Conn {
    /// A connection to `to`, not yet open: the first request connects.
    pub fn new(to: SocketAddr, limits: Limits) -> Conn {
        Conn {
            to,
            limits,
            io: None,
            out: Vec::new(),
            line: Vec::new(),
            close_after: false,
        }
    }

    /// A connection to `to`, connected within the timeout.
    pub async fn open(to: SocketAddr, limits: Limits) -> anyhow::Result<Conn> {
        let mut conn = Conn::new(to, limits);
        timeout(limits.timeout, conn.connect())
            .await
            .with_context(|| format!("connecting to {to} took over {:?}", limits.timeout))??;
        Ok(conn)
    }

    /// Whether a connection is open for the next request.
    pub fn is_open(&self) -> bool {
        self.io.is_some()
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.send(&Request::get(path)).await
    }

    /// Sends `req` and reads the whole response within the timeout. After an error the
    /// connection is dropped (its state is unknown); the next request opens another.
    pub async fn send(&mut self, req: &Request<'_>) -> anyhow::Result<Response> {
        let limit = self.limits.timeout;
        let result = match timeout(limit, self.exchange(req)).await {
            Ok(r) => r.with_context(|| format!("{} {}", req.method, req.path)),
            Err(_) => Err(anyhow::anyhow!(
                "{} {} took over {limit:?}",
                req.method,
                req.path
            )),
        };
        match &result {
            Ok(response) if !response.closes => {}
            _ => self.io = None,
        }
        result
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        if self.io.is_none() {
            let tcp = TcpStream::connect(self.to)
                .await
                .with_context(|| format!("connecting to {}", self.to))?;
            tcp.set_nodelay(true)?;
            self.io = Some(BufReader::with_capacity(BUF_BYTES, tcp));
        }
        Ok(())
    }

    async fn exchange(&mut self, req: &Request<'_>) -> anyhow::Result<Response> {
        self.out.clear();
        write_request(&mut self.out, self.to, req, self.close_after)?;
        let limits = self.limits;
        self.connect().await?;
        let io = self.io.as_mut().expect("connected");
        io.get_mut()
            .write_all(&self.out)
            .await
            .context("sending the request")?;
        let head = read_head(io, limits.max_head_bytes).await?;
        let mut head = String::from_utf8(head).context("a response head that is not UTF-8")?;
        let Framing {
            status,
            body,
            closes,
        } = framing(&head)?;
        let body_bytes = match body {
            Body::Empty => Vec::new(),
            Body::Length(len) => {
                ensure!(
                    len <= limits.max_body_bytes,
                    "a body of {len} bytes, over the cap of {}",
                    limits.max_body_bytes
                );
                let mut bytes = vec![0; len];
                io.read_exact(&mut bytes).await.with_context(|| {
                    format!("the connection ended inside a body of {len} bytes")
                })?;
                bytes
            }
            Body::Chunked => read_chunked(io, &mut self.line, &mut head, limits).await?,
            Body::ToClose => {
                let cap = limits.max_body_bytes;
                let mut bytes = Vec::new();
                io.take(cap as u64 + 1).read_to_end(&mut bytes).await?;
                ensure!(bytes.len() <= cap, "a body over the cap of {cap} bytes");
                bytes
            }
        };
        Ok(Response {
            status,
            head,
            body: body_bytes,
            closes: closes || self.close_after || body == Body::ToClose,
        })
    }
}

fn write_request(
    out: &mut Vec<u8>,
    to: SocketAddr,
    req: &Request<'_>,
    close: bool,
) -> anyhow::Result<()> {
    write!(out, "{} {} HTTP/1.1\r\n", req.method, req.path)?;
    if !req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        write!(out, "Host: {to}\r\n")?;
    }
    for (name, value) in req.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    if !req.body.is_empty() || req.method == "POST" {
        write!(out, "Content-Length: {}\r\n", req.body.len())?;
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
    Ok(())
}

/// Reads the status line and headers up to the empty line, at most `cap` bytes.
async fn read_head(io: &mut BufReader<TcpStream>, cap: usize) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    loop {
        let line_start = head.len();
        if !read_line(io, &mut head, cap, "response head").await? {
            bail!(if head.is_empty() {
                "the connection closed before a response"
            } else {
                "the connection ended inside the response head"
            });
        }
        // The status line is never the end, even when empty (then it is malformed).
        if line_start > 0 && matches!(&head[line_start..], b"\r\n" | b"\n") {
            return Ok(head);
        }
    }
}

/// Appends one line (with its LF) to `buf`, which must stay within `cap` bytes: `false`
/// when the connection ended first.
async fn read_line(
    io: &mut BufReader<TcpStream>,
    buf: &mut Vec<u8>,
    cap: usize,
    what: &str,
) -> anyhow::Result<bool> {
    let room = cap.saturating_sub(buf.len()) as u64;
    let n = io.take(room).read_until(b'\n', buf).await?;
    if n > 0 && buf.ends_with(b"\n") {
        return Ok(true);
    }
    ensure!((n as u64) < room, "a {what} over the cap of {cap} bytes");
    Ok(false)
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(usize),
    Chunked,
    ToClose,
}

/// What a head says of its response.
struct Framing {
    status: u16,
    body: Body,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    closes: bool,
}

/// The status and the body's framing, from a whole head.
fn framing(head: &str) -> anyhow::Result<Framing> {
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line)
        .with_context(|| format!("a malformed status line: {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    let mut closes = status_line.starts_with("HTTP/1.0");
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("a malformed header line: {line:?}"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .with_context(|| format!("a bad Content-Length: {value:?}"))?;
            ensure!(
                length.is_none_or(|l| l == len),
                "two different Content-Lengths"
            );
            length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is the last coding when there is any.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                closes = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                closes = false;
            }
        }
    }
    let body = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) => Body::Empty,
        (_, true, _) => Body::Chunked,
        (_, false, Some(len)) => Body::Length(len),
        (_, false, None) => Body::ToClose,
    };
    Ok(Framing {
        status,
        body,
        closes,
    })
}

/// `HTTP/1.x NNN[ reason]` → NNN.
fn parse_status(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let (minor, rest) = rest.split_at_checked(1)?;
    let rest = rest.strip_prefix(' ')?;
    let (code, reason) = rest.split_at_checked(3)?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(minor) || !digits(code) || !(reason.is_empty() || reason.starts_with(' ')) {
        return None;
    }
    code.parse().ok()
}

/// A chunked body, at most `limits.max_body_bytes`; its trailers are added to `head` (and
/// counted against the head cap), so that `Response::header` finds them.
async fn read_chunked(
    io: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    head: &mut String,
    limits: Limits,
) -> anyhow::Result<Vec<u8>> {
    let cap = limits.max_body_bytes;
    let mut body = Vec::new();
    loop {
        line.clear();
        if !read_line(io, line, MAX_CHUNK_LINE_BYTES, "chunk-size line").await? {
            bail!("the connection ended before the last chunk");
        }
        let text = std::str::from_utf8(line).unwrap_or_default();
        let hex = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16)
            .with_context(|| format!("a bad chunk size: {:?}", text.trim_end()))?;
        if size == 0 {
            break;
        }
        let end = body
            .len()
            .checked_add(size)
            .filter(|&end| end <= cap)
            .with_context(|| format!("a body over the cap of {cap} bytes"))?;
        let start = body.len();
        body.resize(end, 0);
        io.read_exact(&mut body[start..])
            .await
            .context("the connection ended inside a chunk")?;
        line.clear();
        ensure!(
            read_line(io, line, MAX_CHUNK_LINE_BYTES, "chunk end").await?
                && matches!(line.as_slice(), b"\r\n" | b"\n"),
            "no CRLF where a chunk of {size} bytes ends"
        );
    }
    // The trailers, then the empty line: they go where the head's empty line was.
    let mut trailers = Vec::new();
    let room = limits.max_head_bytes.saturating_sub(head.len());
    loop {
        let line_start = trailers.len();
        if !read_line(io, &mut trailers, room, "response head").await? {
            bail!("the connection ended inside the trailers");
        }
        if matches!(&trailers[line_start..], b"\r\n" | b"\n") {
            break;
        }
    }
    let trailers = std::str::from_utf8(&trailers).context("trailers that are not UTF-8")?;
    head.truncate(head.trim_end_matches(['\r', '\n']).len());
    head.push_str("\r\n");
    head.push_str(trailers);
    Ok(body)
}
