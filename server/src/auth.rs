//! Access control: the server's shared secret (`--token` / `--token-file`) and who must present
//! it, checked in constant time for every kind of watcher; failures counted (`Stats::auth_failures`)
//! and logged with the peer's address, at most once every ten seconds.
//!
//! Policy, when a token is set:
//! * forms that can carry it must carry it: SURV/1 (`token=`), `Request <token>`, HTTP
//!   (`Authorization: Bearer`, Basic with the token as password, or `?token=`; see
//!   [`http_presented`]);
//! * the forms the seed programs send, which have no room for one (seed 003's bare port, seed
//!   001's bare `Request`), are refused unless `--allow-unauthenticated` is given.
//!
//! Without a token everyone is let in (a token presented anyway is ignored).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use subtle::ConstantTimeEq;
use surv_proto::{is_valid_token, MAX_TOKEN_BYTES};

use crate::Stats;

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

/// Who may watch: the token and the `--allow-unauthenticated` flag, with the failure log.
#[derive(Debug, Default)]
pub struct Access {
    token: Option<Token>,
    allow_unauthenticated: bool,
    log: Mutex<FailureLog>,
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
            log: Mutex::default(),
        }
    }

    /// Whether a token is set.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Lets a watcher of `kind` from `peer` in, or says why not; a refusal is counted in
    /// `stats.auth_failures` and logged (rate-limited) with the address.
    pub fn check(
        &self,
        stats: &Stats,
        peer: SocketAddr,
        kind: &str,
        presented: Presented<'_>,
    ) -> Result<(), Denied> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let verdict = match presented {
            Presented::Token(t) if token.matches(t) => Ok(()),
            Presented::Token(_) => Err(Denied::Wrong),
            Presented::Nothing => Err(Denied::Missing),
            Presented::SeedForm if self.allow_unauthenticated => Ok(()),
            Presented::SeedForm => Err(Denied::FormCannotCarryIt),
        };
        if let Err(why) = verdict {
            let failures = stats.auth_failures.fetch_add(1, Relaxed) + 1;
            self.log_failure(peer, kind, why, failures);
        }
        verdict
    }

    fn log_failure(&self, peer: SocketAddr, kind: &str, why: Denied, failures: u64) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY)
        {
            log.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.unlogged);
        log.last = Some(now);
        drop(log);
        tracing::warn!(
            %peer,
            form = kind,
            reason = %why,
            failures_so_far = failures,
            not_logged_since_last = unlogged,
            "access denied"
        );
    }
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
