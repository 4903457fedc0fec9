//! UDP viewers' admission: accepts TCP connections, reads each registration under a deadline
//! and a size cap, checks its access token ([`crate::auth`]), refuses explicitly (a reason on
//! the wire and in the journal), and runs the admitted session.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use surv_proto::{Form, RegError, RegistrationLine, Reply, StreamParams, MAX_REGISTRATION_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::data_path::{AttachError, DataPath};
use super::session::Session;
use crate::auth::{Denied, Presented};
use crate::places::{Entry, Places};
use crate::watchers::{RefusalCause, Refused, WatcherKind, Watchers};
use crate::Server;

/// Writing a reply to a viewer that does not read it must not hold a task for long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// After a refusal, how long to wait for the peer's leftover bytes, and how many to read at most.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 16 * 1024;

/// After an accept error (out of file descriptors, say), wait before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `shutdown`; each registration and session runs on `tracker`.
pub(crate) async fn accept_loop(
    server: &Arc<Server>,
    listener: &TcpListener,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    // Registrations being read: the oldest gives its place to a new connection when all are
    // taken, and is refused with a reason (see `places`).
    let pending = Arc::new(Places::default());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            res = listener.accept() => res,
        };
        let (mut tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let place = match Places::enter(&pending, server.config.max_pending_registrations) {
            Entry::Free(place) | Entry::Evicted(place) => place,
            // Registrations never mark their places, so there is always one to take; were
            // there none, the connection would only be closed.
            Entry::Full => continue,
        };
        let server = server.clone();
        let shutdown = shutdown.clone();
        let sessions = tracker.clone();
        tracker.spawn(async move {
            let registration = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                res = read_registration(&mut tcp, &server.config, &place.evicted) => res,
            };
            drop(place);
            match registration {
                Ok(reg) => admit(server, tcp, peer, reg, &sessions).await,
                // A port check (connect, close) is no registration: counted, not journalled.
                Err(Unregistered::Silent) => {
                    server.stats.probes.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "connection closed without sending anything");
                }
                Err(Unregistered::Refused(form, cause, reason)) => {
                    refuse(&server, tcp, peer, form, Refused::new(cause, reason)).await
                }
            }
        });
    }
}

/// Why a connection did not register.
enum Unregistered {
    /// It closed without sending a byte: a port check, not a viewer.
    Silent,
    /// It sent something that is not a registration, or too slowly: the form it looked like, and why.
    Refused(Option<Form>, RefusalCause, String),
}

/// Reads until the bytes form a registration, prove invalid, or the deadline passes; when
/// `evicted` (a newer connection took its place), only what has already arrived counts.
async fn read_registration(
    tcp: &mut TcpStream,
    config: &crate::Config,
    evicted: &CancellationToken,
) -> Result<RegistrationLine, Unregistered> {
    let refused = |buf: &[u8], reason: String| {
        Unregistered::Refused(guess_form(buf), RefusalCause::Invalid, reason)
    };
    let deadline = Instant::now() + config.register_timeout;
    let mut buf = Vec::with_capacity(2 * MAX_REGISTRATION_BYTES);
    let mut chunk = [0u8; MAX_REGISTRATION_BYTES + 1];
    loop {
        // The seed form has no terminator: after its digits, a short pause ends it.
        let bare_digits = !buf.is_empty() && buf.iter().all(u8::is_ascii_digit);
        let wait_until = if bare_digits {
            deadline.min(Instant::now() + config.seed_settle)
        } else {
            deadline
        };
        let read = tokio::select! {
            biased;
            () = evicted.cancelled() => return last_chance(tcp, buf, &mut chunk),
            read = timeout_at(wait_until, tcp.read(&mut chunk)) => read,
        };
        let at_rest = match read {
            Ok(Ok(0)) => true,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                false
            }
            Ok(Err(e)) => {
                return Err(refused(
                    &buf,
                    format!("connection error while registering: {e}"),
                ))
            }
            Err(_elapsed) if bare_digits => true,
            Err(_elapsed) => {
                let secs = config.register_timeout.as_secs_f64();
                return Err(Unregistered::Refused(
                    guess_form(&buf),
                    RefusalCause::Timeout,
                    format!("registration timeout ({secs:.1} s)"),
                ));
            }
        };
        match RegistrationLine::decode(&buf, at_rest) {
            Ok(reg) => return Ok(reg),
            Err(RegError::Incomplete) if !at_rest => continue,
            Err(RegError::Empty) => return Err(Unregistered::Silent),
            Err(RegError::Incomplete) => {
                return Err(refused(&buf, "connection closed before registering".into()))
            }
            Err(e) => return Err(refused(&buf, e.to_string())),
        }
    }
}

/// A registration pushed out of its place: what already waits in the socket is read without
/// waiting, and if that is a whole registration it stands. Under a flood of new connections the
/// places turn over faster than a task is scheduled, so an honest viewer whose line arrived
/// with its connection may not have been read yet; only a connection still short of a whole
/// registration is refused as the slowest.
fn last_chance(
    tcp: &TcpStream,
    mut buf: Vec<u8>,
    chunk: &mut [u8],
) -> Result<RegistrationLine, Unregistered> {
    while buf.len() <= surv_proto::MAX_REGISTRATION_LINE_BYTES {
        match crate::sys::recv_now(std::os::fd::AsRawFd::as_raw_fd(tcp), chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    RegistrationLine::decode(&buf, true).map_err(|_| {
        Unregistered::Refused(
            guess_form(&buf),
            RefusalCause::Crowded,
            "too many registrations in progress: this one was the slowest".into(),
        )
    })
}

/// Which form bytes that failed to register were trying to be, for the journal.
fn guess_form(buf: &[u8]) -> Option<Form> {
    if buf.starts_with(b"SURV/") {
        Some(Form::V1)
    } else if !buf.is_empty()
        && buf
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'\r' | b'\n'))
    {
        Some(Form::Seed)
    } else {
        None
    }
}

/// Counts, logs and answers a refused registration, then closes the connection. The answer is
/// an `ERR SURV/1 <reason>` line whatever the form: a seed viewer never reads it, a person
/// trying the port with `nc` does.
async fn refuse(
    server: &Server,
    mut tcp: TcpStream,
    peer: SocketAddr,
    form: Option<Form>,
    refused: Refused,
) {
    refused.record(server, peer, form.map(WatcherKind::from));
    let reply = Reply::Refused(refused.reason).encode();
    let _ = timeout(REPLY_TIMEOUT, async {
        tcp.write_all(&reply).await?;
        tcp.shutdown().await?;
        // Closing with unread bytes makes the kernel send a reset, which can destroy the reply
        // before the peer reads it: read what is left first (bounded in bytes and time).
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match timeout(LINGER, tcp.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Runs an admitted viewer's session from JOIN to LEAVE.
async fn admit(
    server: Arc<Server>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    line: RegistrationLine,
    tracker: &TaskTracker,
) {
    let reg = line.registration;
    let presented = match (&line.token, reg.form) {
        (Some(token), _) => Presented::Token(token.as_bytes()),
        (None, Form::V1) => Presented::Nothing,
        (None, Form::Seed) => Presented::SeedForm,
    };
    if let Err(denied) = server
        .access
        .check(&server.stats, peer, reg.form.as_str(), presented)
    {
        let reason = match denied {
            Denied::Missing => format!("{denied} (surv-client --token TOKEN)"),
            Denied::Wrong | Denied::FormCannotCarryIt | Denied::Throttled { .. } => {
                denied.to_string()
            }
        };
        let refused = Refused::new(RefusalCause::Unauthorized, reason);
        return refuse(&server, tcp, peer, Some(reg.form), refused).await;
    }
    // Seed-form viewers cannot name a camera: they get the first.
    let camera = match server.cameras.pick(line.camera.as_deref()) {
        Ok(camera) => camera,
        Err(reason) => {
            let refused = Refused::new(RefusalCause::UnknownCamera, reason);
            return refuse(&server, tcp, peer, Some(reg.form), refused).await;
        }
    };
    let slot = match Watchers::admit(&server) {
        Ok(slot) => slot,
        Err(refused) => return refuse(&server, tcp, peer, Some(reg.form), refused).await,
    };
    // Frames go to the TCP peer's own address, never to one named in the payload.
    let viewer = SocketAddr::new(peer.ip(), reg.udp_port);
    // Sent from the address the viewer reached us on, so its acks come back the same way.
    let local_ip = match tcp.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            drop(slot);
            let refused = Refused::new(RefusalCause::ServerError, format!("server error: {e}"));
            return refuse(&server, tcp, peer, Some(reg.form), refused).await;
        }
    };
    // SURV/1: a session key for its acks, and no frame before its `hello` (see surv_proto::ack).
    let key = match reg.form {
        Form::V1 => match session_key() {
            Ok(key) => Some(key),
            Err(e) => {
                drop(slot);
                let reason = format!("server error: no random session key: {e}");
                let refused = Refused::new(RefusalCause::ServerError, reason);
                return refuse(&server, tcp, peer, Some(reg.form), refused).await;
            }
        },
        Form::Seed => None,
    };
    // The session ends with the server or with its camera (a reload removing it).
    let shutdown = camera.stop.clone();
    let link = match DataPath::attach(&server, &camera, local_ip, viewer, key, tracker, &shutdown) {
        Ok(link) => link,
        Err(e) => {
            drop(slot);
            let refused = match e {
                AttachError::PerIp(_) => Refused::new(RefusalCause::PerIp, e.to_string()),
                AttachError::Socket(_) => {
                    Refused::new(RefusalCause::ServerError, format!("server error: {e}"))
                }
            };
            return refuse(&server, tcp, peer, Some(reg.form), refused).await;
        }
    };
    if reg.form == Form::V1 {
        let shape = camera.capture.shape();
        let reply = Reply::Accepted(StreamParams {
            session_id: slot.id(),
            width: shape.width,
            height: shape.height,
            fps: shape.fps,
            max_datagram_bytes: server.max_datagram_bytes,
            key,
            udp_port: link.socket.udp.local_addr().ok().map(|a| a.port()),
            // Chunks carry the session key and are asked for in the keyed hello.
            mtu: server.config.mtu.filter(|_| key.is_some()),
            fec: server.config.fec && server.config.mtu.is_some() && key.is_some(),
            pace: server.config.pace && server.config.mtu.is_some() && key.is_some(),
        });
        if !matches!(
            timeout(REPLY_TIMEOUT, tcp.write_all(&reply.encode())).await,
            Ok(Ok(()))
        ) {
            server.stats.gone_before_accepted.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "viewer left before reading its acceptance");
            return;
        }
    }
    let member = slot.join_reporting(reg.form.into(), viewer, &camera, Arc::clone(&link) as _);
    let span = tracing::info_span!("session", id = member.id, %viewer, form = reg.form.as_str());
    let session = Session { link, tcp };
    let (reason, tally) = session.run(&server, shutdown).instrument(span).await;
    member.leave(reason, &tally);
}

/// A random session key from the operating system's generator.
fn session_key() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a fresh listener whose client has sent `bytes`, as the server sees it.
    async fn sent(bytes: &'static [u8]) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(bytes).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        // Loopback delivers at once; give the bytes a moment all the same (bounded).
        for _ in 0..100 {
            let mut probe = [0u8; 64];
            let peek = timeout(Duration::from_millis(5), server_side.peek(&mut probe)).await;
            if matches!(peek, Ok(Ok(n)) if n >= bytes.len()) {
                break;
            }
        }
        (server_side, client)
    }

    #[tokio::test]
    async fn an_evicted_connection_whose_registration_has_arrived_whole_is_admitted() {
        let (mut tcp, _client) = sent(b"SURV/1 5000\n").await;
        let evicted = CancellationToken::new();
        evicted.cancel();
        let reg = read_registration(&mut tcp, &crate::Config::default(), &evicted).await;
        match reg {
            Ok(reg) => assert_eq!(reg.registration.udp_port, 5000),
            Err(_) => panic!("a whole registration was refused because its place was taken"),
        }
    }

    #[tokio::test]
    async fn an_evicted_connection_short_of_a_registration_is_refused_as_the_slowest() {
        for partial in [b"SURV/1 50".as_slice(), b""] {
            let (mut tcp, _client) = sent(partial).await;
            let evicted = CancellationToken::new();
            evicted.cancel();
            match read_registration(&mut tcp, &crate::Config::default(), &evicted).await {
                Err(Unregistered::Refused(_, RefusalCause::Crowded, reason)) => {
                    assert!(reason.contains("slowest"), "{reason}")
                }
                _ => panic!("{partial:?}: not refused as crowded"),
            }
        }
    }

    #[test]
    fn failed_registrations_are_attributed_to_a_form() {
        assert_eq!(guess_form(b"SURV/9 1\n"), Some(Form::V1));
        assert_eq!(guess_form(b"99999999\r\n"), Some(Form::Seed));
        assert_eq!(guess_form(b"GET /"), None);
        assert_eq!(guess_form(b""), None);
    }
}
