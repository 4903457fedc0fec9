//! The HTTP/1 client of the http:// source: the camera's URL, one connection, a GET and its
//! body under deadlines, and status codes turned into reasons a user can act on.
//!
//! hyper's low-level `client::conn::http1` over a tokio `TcpStream`: no pool, no redirects, no
//! TLS; every await here is bounded by one of the [`Deadlines`].

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::sources::spec::redact;

/// hyper's read buffer, and so the longest response head and the largest body chunk.
const MAX_READ_BUF_BYTES: usize = 64 * 1024;

/// How long each step with the camera may take before the source fails (and is run again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Name lookup and TCP connect.
    pub connect: Duration,
    /// From sending the request to the end of the response head.
    pub response: Duration,
    /// The longest silence inside a body before the camera counts as stalled.
    pub body_stall: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(5),
            body_stall: Duration::from_secs(5),
        }
    }
}

/// Where the camera is and what to ask it for, from `http://[user:pass@]host[:port]/path`.
#[derive(Clone)]
pub struct Target {
    /// Host to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The Host header: as the URL wrote it.
    host_header: HeaderValue,
    /// Path and query, percent-encoding kept exactly.
    path: Uri,
    /// `Basic …` from the URL's user and password (percent-decoded).
    authorization: Option<HeaderValue>,
    /// The URL with its password hidden, for logs and the journal.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parses an `http://` URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Target, String> {
        let shown = redact(url);
        let rest = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
            .ok_or_else(|| format!("{shown}: not an http:// URL"))?;
        let rest = rest.split('#').next().unwrap_or("");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port)
            .ok_or_else(|| format!("{shown}: expected HOST or HOST:PORT after http://"))?;
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let path: Uri = path
            .parse()
            .map_err(|e| format!("{shown}: the path is not a valid request target ({e})"))?;
        let host_header = HeaderValue::from_str(host_port)
            .map_err(|_| format!("{shown}: the host is not valid in a Host header"))?;
        let authorization = match userinfo {
            None => None,
            Some(info) => Some(
                basic_auth(info)
                    .ok_or_else(|| format!("{shown}: the user and password do not fit a header"))?,
            ),
        };
        Ok(Target {
            host: host.to_string(),
            port,
            host_header,
            path,
            authorization,
            shown,
        })
    }

    /// Whether the URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }
}

/// `Basic base64(user:pass)` from the URL's `user:pass` (percent-decoded; no `:` = no password).
fn basic_auth(userinfo: &str) -> Option<HeaderValue> {
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut secret: Vec<u8> = percent_decode_str(user).collect();
    secret.push(b':');
    secret.extend(percent_decode_str(pass));
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; port 80 when none is given.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
    };
    (!host.is_empty() && !host.contains(['/', '@', ' '])).then_some((host, port))
}

/// One HTTP/1 connection to the camera; its driver task ends when this is dropped.
pub struct Connection {
    sender: http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Connects to the camera, within `deadlines.connect`.
    pub async fn open(target: &Target, deadlines: &Deadlines) -> Result<Connection, String> {
        let addr = (target.host.as_str(), target.port);
        let stream = timeout(deadlines.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection within {:?}", deadlines.connect))?
            .map_err(|e| format!("connecting: {e}"))?;
        // Parts are small writes from the camera; what we send is one request.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_READ_BUF_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("starting HTTP: {e}"))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http source connection ended");
            }
        });
        Ok(Connection { sender, driver })
    }

    /// Whether the camera (or hyper) has closed this connection: a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `GET path` and waits for the response head, within `deadlines.response`.
    pub async fn get(
        &mut self,
        target: &Target,
        deadlines: &Deadlines,
    ) -> Result<Response<Incoming>, String> {
        let mut request = Request::get(target.path.clone())
            .header(header::HOST, target.host_header.clone())
            .header(header::USER_AGENT, "surv")
            .header(
                header::ACCEPT,
                "multipart/x-mixed-replace, image/jpeg, */*;q=0.1",
            );
        if let Some(auth) = &target.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not usable: {e}"))?;
            self.sender
                .send_request(request)
                .await
                .map_err(|e| format!("no response: {e}"))
        };
        timeout(deadlines.response, exchange)
            .await
            .map_err(|_| format!("no response within {:?}", deadlines.response))?
    }
}

/// The next bytes of a body: `Ok(None)` at its end; an error when the camera was silent for
/// `stall` or the connection broke.
pub async fn next_chunk(body: &mut Incoming, stall: Duration) -> Result<Option<Bytes>, String> {
    loop {
        let frame = timeout(stall, body.frame())
            .await
            .map_err(|_| format!("the camera sent nothing for {stall:?}"))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("reading the response: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Why a response with this status is not something to read frames from; `None` for 2xx.
pub fn status_problem<B>(response: &Response<B>, target: &Target) -> Option<String> {
    let status = response.status();
    if status.is_success() {
        return None;
    }
    let code = status.as_u16();
    let header_text = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(120).collect::<String>())
    };
    Some(match status {
        StatusCode::UNAUTHORIZED => {
            let asks = header_text(header::WWW_AUTHENTICATE)
                .map(|a| format!(" (the camera asks for: {a})"))
                .unwrap_or_default();
            if target.has_credentials() {
                format!("HTTP 401: wrong credentials: the camera refused the user and password in the URL{asks}")
            } else {
                format!(
                    "HTTP 401: missing credentials: give them in the URL, http://USER:PASS@HOST/PATH{asks}"
                )
            }
        }
        StatusCode::FORBIDDEN => "HTTP 403: forbidden: the camera refuses this user or path".into(),
        StatusCode::NOT_FOUND => format!(
            "HTTP 404: the camera has no {}; check the path of the stream or snapshot URL",
            target.path
        ),
        s if s.is_redirection() => format!(
            "HTTP {code}: the camera redirects to {}; give that URL instead",
            header_text(header::LOCATION).unwrap_or_else(|| "(no Location)".into())
        ),
        s if s.is_server_error() => format!(
            "HTTP {code} {}: the camera failed to serve the request",
            s.canonical_reason().unwrap_or("server error")
        ),
        s => format!(
            "HTTP {code} {}: not a stream or an image",
            s.canonical_reason().unwrap_or("")
        ),
    })
}
