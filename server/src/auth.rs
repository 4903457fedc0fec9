//! Access control: the server's shared secret (`--token` / `--token-file`) and who must present
//! it, checked in constant time for every kind of watcher; failures counted (`Stats::auth_failures`)
//! and logged with the peer's address, at most once every ten seconds. An address that presents
//! wrong tokens again and again is slowed down ([`throttle`]): its attempts are refused unchecked
//! for a while, counted in `Stats::auth_throttled` and logged the same way.
//!
//! Policy, when a token is set:
//! * forms that can carry it must carry it: SURV/1 (`token=`), `Request <token>`, HTTP
//!   (`Authorization: Bearer`, Basic with the token as password, or `?token=`; see
//!   [`http_presented`]);
//! * the forms the seed programs send, which have no room for one (seed 003's bare port, seed
//!   001's bare `Request`), are refused unless `--allow-unauthenticated` is given.
//!
//! Without a token everyone is let in (a token presented anyway is ignored).
//!
//! Only a token presented and wrong counts against an address (a missing one, or a seed form,
//! gives away nothing about the secret). Addresses that connected (TCP: registrations, HTTP) and
//! addresses datagrams claim to come from (`Request`, which anyone can forge) are tracked in two
//! tables: forged `Request`s with wrong tokens can slow down only `Request`s from that address,
//! never its viewers or browsers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use subtle::ConstantTimeEq;
use surv_proto::{is_valid_token, MAX_TOKEN_BYTES};

use crate::Stats;

pub mod throttle;

use throttle::{Source, Throttle, Verdict};

/// Failures are logged at most this often (the rest are counted, and the count is logged).
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The shared secret. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token given on the command line or in a file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token must be 1-{MAX_TOKEN_BYTES} visible ASCII characters (no spaces), as registrations carry it")]
    NotWireSafe,
    #[error("cannot read the token file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl Token {
    /// The token in `secret`, leading and trailing white space removed.
    pub fn new(secret: &str) -> Result<Token, TokenError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(TokenError::Empty);
        }
        if !is_valid_token(secret.as_bytes()) {
            return Err(TokenError::NotWireSafe);
        }
        Ok(Token(Arc::from(secret.as_bytes())))
    }

    /// The token in the file at `path` (trimmed: a trailing newline is no part of it).
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        // A token file is a line, not a video: refuse to read a large file whole.
        let text = std::fs::File::open(path)
            .and_then(|f| {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(f, 4 * MAX_TOKEN_BYTES as u64),
                    &mut text,
                )?;
                Ok(text)
            })
            .map_err(|source| TokenError::File {
                path: path.display().to_string(),
                source,
            })?;
        Token::new(&text)
    }

    /// Whether `presented` is the token. The time taken does not depend on where the two
    /// differ (only on their lengths, which are no secret worth keeping: at most 128).
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }

    /// Whether a Digest `answer` was made with the token as its password (any user name):
    /// `response == MD5(MD5(user:realm:token):nonce:MD5(method:uri))`, compared in constant
    /// time. The caller checks that the nonce and realm are the ones it gave.
    pub fn answers(&self, answer: &DigestAnswer<'_>) -> bool {
        let ha1 = md5_hex(&[answer.username.as_bytes(), answer.realm.as_bytes(), &self.0]);
        let ha2 = md5_hex(&[answer.method.as_bytes(), answer.uri.as_bytes()]);
        let expected = md5_hex(&[ha1.as_bytes(), answer.nonce.as_bytes(), ha2.as_bytes()]);
        let response = answer.response.to_ascii_lowercase();
        bool::from(expected.as_bytes().ct_eq(response.as_bytes()))
    }
}

/// What an RTSP player answered to a Digest challenge (RFC 2617 without `qop`, as ffmpeg,
/// GStreamer, VLC and retina send it): the fields [`Token::answers`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestAnswer<'a> {
    pub username: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
    /// The URI the player put in the header (not necessarily the request's: VLC sends the
    /// base URL for SETUP), as RFC 2617 says to hash it.
    pub uri: &'a str,
    /// 32 hex digits.
    pub response: &'a str,
    /// The request's method, as sent (`DESCRIBE`, …).
    pub method: &'a str,
}

impl DigestAnswer<'_> {
    /// The `Authorization: Digest k="v", …` header's fields for `method`; `None` if the header
    /// is not a Digest answer or lacks a field.
    pub fn parse<'a>(header: &'a str, method: &'a str) -> Option<DigestAnswer<'a>> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let (mut username, mut realm, mut nonce, mut uri, mut response) =
            (None, None, None, None, None);
        for (key, value) in digest_fields(rest) {
            match key.to_ascii_lowercase().as_str() {
                "username" => username = Some(value),
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "uri" => uri = Some(value),
                "response" => response = Some(value),
                _ => {}
            }
        }
        Some(DigestAnswer {
            username: username?,
            realm: realm?,
            nonce: nonce?,
            uri: uri?,
            response: response?,
            method,
        })
    }
}

/// `key=value` and `key="value"` pairs separated by commas (a quoted value holds no `"`: the
/// Digest fields surv reads never do, and a value that would is simply wrong).
fn digest_fields(mut rest: &str) -> impl Iterator<Item = (&str, &str)> {
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', ',', '\t']);
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        rest = next;
        Some((key, value))
    })
}

/// MD5 of `parts` joined by `:`, in lowercase hex (RFC 2617's `H(a:b:…)`).
fn md5_hex(parts: &[&[u8]]) -> String {
    use md5::{Digest as _, Md5};
    let mut h = Md5::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a watcher was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this server needs its access token")]
    Missing,
    #[error("wrong access token")]
    Wrong,
    #[error("this server needs an access token, which this form cannot carry (the server was not started with --allow-unauthenticated)")]
    FormCannotCarryIt,
    /// Too many wrong tokens from this address lately: refused without looking at the token,
    /// for this many more seconds (rounded up).
    #[error("too many wrong access tokens from this address: try again in {retry_after_s} s")]
    Throttled { retry_after_s: u64 },
}

/// How a watcher presents itself, for [`Access::check`].
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// A token (right or wrong).
    Token(&'a [u8]),
    /// An RTSP player's Digest answer (RFC 2617, no `qop`): its password must be the token.
    Digest(&'a DigestAnswer<'a>),
    /// Nothing, in a form that could have carried a token (SURV/1, HTTP, …).
    Nothing,
    /// Nothing, in a form a seed program sends, which has no room for a token (seed 003's bare
    /// port, seed 001's bare `Request`): let in only with `--allow-unauthenticated`.
    SeedForm,
}

/// Who may watch: the token and the `--allow-unauthenticated` flag, with the failure log and
/// the addresses slowed down after wrong tokens.
#[derive(Debug, Default)]
pub struct Access {
    token: Option<Token>,
    allow_unauthenticated: bool,
    log: Mutex<FailureLog>,
    throttled_log: Mutex<FailureLog>,
    /// Peers that connected (TCP): their address is proven by the handshake.
    connected: Throttle,
    /// Addresses `Request` datagrams came from: forgeable, so kept apart.
    datagrams: Throttle,
}

/// Where an attempt came from, for [`Access::check_at`]: which failure table it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A TCP connection (a registration, an HTTP request, an OAK host).
    Connection,
    /// A datagram, whose source address proves nothing (`Request`).
    Datagram,
}

#[derive(Debug, Default)]
struct FailureLog {
    last: Option<Instant>,
    /// Failures since the last line logged.
    unlogged: u64,
}

impl Access {
    pub fn new(token: Option<Token>, allow_unauthenticated: bool) -> Access {
        Access {
            token,
            allow_unauthenticated,
            ..Access::default()
        }
    }

    /// Whether a token is set.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Lets a watcher of `kind` that connected from `peer` in, or says why not; a refusal is
    /// counted in `stats.auth_failures` (or `stats.auth_throttled` when `peer` is locked out)
    /// and logged (rate-limited) with the address.
    pub fn check(
        &self,
        stats: &Stats,
        peer: SocketAddr,
        kind: &str,
        presented: Presented<'_>,
    ) -> Result<(), Denied> {
        self.check_at(
            stats,
            peer,
            Via::Connection,
            kind,
            presented,
            Instant::now(),
        )
    }

    /// [`Access::check`] for a datagram claiming to come from `peer` (a `Request`): its
    /// failures count in a table of their own.
    pub fn check_datagram(
        &self,
        stats: &Stats,
        peer: SocketAddr,
        kind: &str,
        presented: Presented<'_>,
    ) -> Result<(), Denied> {
        self.check_at(stats, peer, Via::Datagram, kind, presented, Instant::now())
    }

    /// The check at `now` (the tests' clock).
    pub(crate) fn check_at(
        &self,
        stats: &Stats,
        peer: SocketAddr,
        via: Via,
        kind: &str,
        presented: Presented<'_>,
        now: Instant,
    ) -> Result<(), Denied> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let verdict = match presented {
            Presented::Token(_) | Presented::Digest(_) => {
                let throttle = match via {
                    Via::Connection => &self.connected,
                    Via::Datagram => &self.datagrams,
                };
                let right = || match presented {
                    Presented::Token(t) => token.matches(t),
                    Presented::Digest(answer) => token.answers(answer),
                    _ => false,
                };
                match throttle.attempt(Source::of(peer.ip()), now, right) {
                    Verdict::Right => Ok(()),
                    Verdict::Wrong => Err(Denied::Wrong),
                    Verdict::Throttled(left) => Err(Denied::Throttled {
                        retry_after_s: ceil_secs(left),
                    }),
                }
            }
            Presented::Nothing => Err(Denied::Missing),
            Presented::SeedForm if self.allow_unauthenticated => Ok(()),
            Presented::SeedForm => Err(Denied::FormCannotCarryIt),
        };
        match verdict {
            Ok(()) => {}
            Err(why @ Denied::Throttled { .. }) => {
                let throttled = stats.auth_throttled.fetch_add(1, Relaxed) + 1;
                let log = LogLine::Throttled { throttled };
                self.log_refusal(&self.throttled_log, now, peer, kind, why, log);
            }
            Err(why) => {
                let failures = stats.auth_failures.fetch_add(1, Relaxed) + 1;
                let log = LogLine::Failure { failures };
                self.log_refusal(&self.log, now, peer, kind, why, log);
            }
        }
        verdict
    }

    /// Addresses slowed down or being watched for wrong tokens now (connections, datagrams).
    pub fn tracked(&self) -> (usize, usize) {
        (self.connected.tracked(), self.datagrams.tracked())
    }

    fn log_refusal(
        &self,
        log: &Mutex<FailureLog>,
        now: Instant,
        peer: SocketAddr,
        kind: &str,
        why: Denied,
        line: LogLine,
    ) {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        if log
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < FAILURE_LOG_EVERY)
        {
            log.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.unlogged);
        log.last = Some(now);
        drop(log);
        match line {
            LogLine::Failure { failures } => tracing::warn!(
                %peer,
                form = kind,
                reason = %why,
                failures_so_far = failures,
                not_logged_since_last = unlogged,
                "access denied"
            ),
            LogLine::Throttled { throttled } => tracing::warn!(
                %peer,
                form = kind,
                reason = %why,
                throttled_so_far = throttled,
                not_logged_since_last = unlogged,
                "access throttled"
            ),
        }
    }
}

/// Which count a refusal's log line carries.
#[derive(Debug, Clone, Copy)]
enum LogLine {
    Failure { failures: u64 },
    Throttled { throttled: u64 },
}

/// Whole seconds, rounded up (at least 1): what `Retry-After` and the refusal reason say.
fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The token an HTTP request presents, if any: `Authorization: Bearer <token>`,
/// `Authorization: Basic <base64(user:token)>` (any user name: so that
/// `http://user:TOKEN@host:8080/stream.mjpg` works in VLC and ffplay), or `token=<token>` in
/// the query string (percent-decoded; a `+` in a token must be written `%2B` there). The HTTP
/// server passes the result to [`Access::check`] as [`Presented::Token`], or
/// [`Presented::Nothing`] when `None`.
pub fn http_presented(authorization: Option<&[u8]>, query: Option<&str>) -> Option<Vec<u8>> {
    if let Some(value) = authorization {
        let value = value.trim_ascii();
        let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => (value, &b""[..]),
        };
        if scheme.eq_ignore_ascii_case(b"Bearer") {
            return Some(rest.to_vec());
        }
        if scheme.eq_ignore_ascii_case(b"Basic") {
            // Headers are capped by the HTTP server; the decoded value is smaller still.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            return Some(decoded[colon + 1..].to_vec());
        }
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned().into_bytes())
}

#[cfg(test)]
mod tests;
