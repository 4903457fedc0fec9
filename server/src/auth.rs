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
            Presented::Token(t) => {
                let throttle = match via {
                    Via::Connection => &self.connected,
                    Via::Datagram => &self.datagrams,
                };
                match throttle.attempt(Source::of(peer.ip()), now, || token.matches(t)) {
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
