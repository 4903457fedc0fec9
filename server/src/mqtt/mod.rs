//! MQTT events: tells a broker what the journal tells (watchers joining and leaving, the source
//! lost and back, motion), the motion state, and the server's stats, on Frigate's topic model.
//!
//! | topic | payload | QoS, retained |
//! |---|---|---|
//! | `PREFIX/available` | `online` at every (re)connect; `offline` as the Last Will and at a clean stop | 1, retained |
//! | `PREFIX/CAMERA/events` | JSON per event of that camera ([`payload::EventJson`], with `camera`) | 1 |
//! | `PREFIX/CAMERA/motion` | `ON` / `OFF`: that camera's motion | 1, retained |
//! | `PREFIX/events` | every camera's events, for one subscription | 1 |
//! | `PREFIX/motion` | `ON` while any camera is in motion, else `OFF` | 1, retained |
//! | `PREFIX/stats` | `/status` JSON less its session rows, every `stats_every` | 0 |
//!
//! QoS 1 for what a user acts on (events, states): the broker acknowledges each, and an event
//! whose PUBACK did not come back before a disconnect is sent again (`outbox.rs`). QoS 0 for
//! stats: the next one replaces a lost one.
//!
//! The broker never slows the server: the journal's broadcast never waits for this task; while
//! the broker is away events wait in a bounded queue ([`outbox::QUEUE_CAP`], oldest dropped and
//! counted); rumqttc's event loop runs in a task of its own, reconnecting with backoff
//! ([`RETRY_MIN`] doubling to [`RETRY_MAX`]); messages are handed to it with `try_publish` only
//! while it is connected, so nothing waits on a dead broker. The server starts whether or not
//! the broker is there (a warning).

mod outbox;
pub mod payload;
mod publisher;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use outbox::QUEUE_CAP;

use crate::Server;

/// The broker's port when the URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// First wait after the broker could not be reached or went away.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// A TCP connect plus CONNACK, and each flush, must finish within this.
pub const CONNECT_TIMEOUT_S: u64 = 5;
/// PINGREQ interval: a broker that stops answering is noticed within about twice this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// At a clean stop, how long the last events and `offline` get to reach the broker.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// `mqtt://[USER[:PASS]@]HOST[:PORT]`. Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub login: Option<(String, String)>,
}

/// The longest password an MQTT CONNECT can carry (a 16-bit length).
const MAX_PASSWORD_BYTES: u64 = 65_535;

impl BrokerUrl {
    /// Parses `--mqtt`; the error says what is wrong with it (without the password).
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let shown = crate::sources::spec::redact(text);
        let url = url::Url::parse(text).map_err(|e| format!("{shown}: {e}"))?;
        if url.scheme() != "mqtt" {
            return Err(format!(
                "{shown}: the scheme must be mqtt:// (mqtts:// and ws:// are not supported)"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("{shown}: no host")),
        };
        if host.is_empty() {
            return Err(format!("{shown}: no host"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{shown}: only mqtt://[USER:PASS@]HOST[:PORT], no path or query"
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| format!("{shown}: the user name or password is not UTF-8"))
        };
        let login = match (url.username(), url.password()) {
            ("", None) => None,
            (user, pass) => Some((decode(user)?, decode(pass.unwrap_or(""))?)),
        };
        Ok(BrokerUrl {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            login,
        })
    }

    /// Takes the password from a file (`--mqtt-password-file`), so that it does not show in
    /// the process list: the file's text, without one line ending at its end. The URL must name
    /// the user (`mqtt://USER@HOST`) and no password. Errors name the file, never the password.
    pub fn with_password_file(mut self, path: &std::path::Path) -> Result<BrokerUrl, String> {
        let shown = path.display();
        let user = match self.login.take() {
            None => {
                return Err(format!(
                    "the URL names no user: use mqtt://USER@HOST with {shown}"
                ))
            }
            Some((_, pass)) if !pass.is_empty() => {
                return Err("the URL has a password already; leave it out of the URL".into())
            }
            Some((user, _)) => user,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, MAX_PASSWORD_BYTES + 3),
                    &mut bytes,
                )
            })
            .map_err(|e| format!("{shown}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{shown}: not UTF-8"))?;
        let pass = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if pass.is_empty() {
            return Err(format!("{shown} is empty"));
        }
        if pass.len() as u64 > MAX_PASSWORD_BYTES {
            return Err(format!(
                "{shown}: over {MAX_PASSWORD_BYTES} bytes, more than MQTT can carry"
            ));
        }
        self.login = Some((user, pass.to_string()));
        Ok(self)
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mqtt://")?;
        if let Some((user, _)) = &self.login {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// Checks a topic prefix (`--mqtt-topic`) or a server name (`--name`, which becomes one level of
/// the default prefix): no wildcards, no NUL, nothing empty.
pub fn check_topic(prefix: &str, one_level: bool) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 1000 {
        return Err("must be 1 to 1000 bytes".into());
    }
    if let Some(c) = prefix.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(format!(
            "{prefix:?} has {c:?}, which MQTT topics cannot have"
        ));
    }
    if one_level && prefix.contains('/') {
        return Err(format!("{prefix:?} has a '/'"));
    }
    if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        return Err(format!("{prefix:?} has an empty level"));
    }
    Ok(())
}

/// This machine's host name, as `--name`'s default; `surv` when it has none usable in a topic.
pub fn default_name() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if check_topic(&name, true).is_ok() {
        name
    } else {
        "surv".into()
    }
}

/// What the publisher needs.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub broker: BrokerUrl,
    /// Topics are `PREFIX/available`, `PREFIX/events`, `PREFIX/motion`, `PREFIX/stats`.
    pub prefix: String,
    /// The MQTT client id (unique per broker, or the broker disconnects the other one).
    pub client_id: String,
    pub stats_every: Duration,
    pub keep_alive: Duration,
    /// Events queued at most while the broker is away.
    pub queue_cap: usize,
}

impl MqttConfig {
    /// The defaults for server `name`: prefix `surv/NAME`, stats every 30 s.
    pub fn new(broker: BrokerUrl, name: &str) -> MqttConfig {
        MqttConfig {
            broker,
            prefix: format!("surv/{name}"),
            client_id: client_id(name, std::process::id()),
            stats_every: Duration::from_secs(30),
            keep_alive: KEEP_ALIVE,
            queue_cap: QUEUE_CAP,
        }
    }
}

/// `surv-PID-NAME`, at most 23 bytes (what every MQTT 3.1.1 broker must accept).
pub fn client_id(name: &str, pid: u32) -> String {
    let mut id = format!("surv-{pid}-{name}");
    while id.len() > 23 {
        id.pop();
    }
    id
}

/// What `/status` and `/metrics` show of the publisher.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// `--mqtt` was given.
    pub enabled: AtomicBool,
    pub connected: AtomicBool,
    /// Messages the broker took (acknowledged at QoS 1, written at QoS 0).
    pub published: AtomicU64,
    /// Events lost: the queue was full while the broker was away, or this task fell behind
    /// the journal.
    pub dropped: AtomicU64,
    /// Connections made after the first one.
    pub reconnects: AtomicU64,
    /// Events waiting for the broker.
    pub queued: AtomicU64,
    /// Why the last connection attempt failed or the connection dropped (no password in it).
    pub last_error: Mutex<Option<String>>,
}

impl MqttStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn dropped(&self, n: u64) {
        if n > 0 && self.dropped.fetch_add(n, Relaxed) == 0 {
            tracing::warn!(
                dropped = n,
                "MQTT: events dropped (the broker is away and the queue is full); counted in /status"
            );
        }
    }
}

/// Starts publishing to the broker until `stop`; the task then sends what is still queued and
/// `offline` within [`STOP_GRACE`] and disconnects. Subscribes to the journal before it returns,
/// so no event from then on is missed. Returns at once: the broker is reached in the background.
pub fn spawn(server: Arc<Server>, config: MqttConfig, stop: CancellationToken) -> JoinHandle<()> {
    let events = server.journal.subscribe();
    server.mqtt.enabled.store(true, Relaxed);
    tracing::info!(broker = %config.broker, prefix = %config.prefix, "MQTT: publishing events");
    tokio::spawn(publisher::run(server, config, events, stop))
}
