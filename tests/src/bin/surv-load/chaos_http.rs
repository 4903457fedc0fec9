//! The chaos run's flood on the HTTP port: 2,000 connections that never send a request line,
//! 1,000 that request `/stream.mjpg` and never read, and junk request lines and headers of
//! 1 MB, while an honest client asks for `/status` every 500 ms.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chaos::{http_get, Ctx, Reading};
use crate::chaos_floods::{connect, flood_ip, Flood, FloodReport};

pub const ALL: &[Flood] = &[Flood {
    name: "http",
    run: http,
}];

/// How long the idle and non-reading connections are held (unless the server ends them first):
/// past the server's 10 s header deadline.
const HOLD: Duration = Duration::from_secs(15);

/// Counters shared by the hostile clients.
#[derive(Default)]
struct Tally {
    opened: AtomicU64,
    connect_failed: AtomicU64,
    /// Connections the server closed before [`HOLD`] ran out.
    closed_by_server: AtomicU64,
    /// Junk requests answered with a 4xx status.
    junk_4xx: AtomicU64,
    /// Junk requests closed without an answer.
    junk_closed: AtomicU64,
}

/// Holds a connection (after sending `send`) without reading until the server closes it or
/// [`HOLD`] runs out; with `read`, it reads (and drops) what comes, which an idle one must not
/// get anyway.
async fn hold(tcp: &mut tokio::net::TcpStream, t: &Tally, reading: bool) {
    let until = tokio::time::Instant::now() + HOLD;
    if !reading {
        // Not reading, the socket's receive queue fills; the server can only end it by closing,
        // which shows as an error on a write we try now and then.
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tokio::time::Instant::now() >= until {
                return;
            }
            // Blank lines (which HTTP/1.1 allows before a request line) see the close: a write
            // fails once the server has closed and reset the connection.
            if tcp.write_all(b"\r\n").await.is_err() {
                t.closed_by_server.fetch_add(1, Relaxed);
                return;
            }
        }
    }
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
        if n == 0 {
            t.closed_by_server.fetch_add(1, Relaxed);
            return;
        }
    }
}

fn http(ctx: &Ctx, _before: &Reading) -> anyhow::Result<FloodReport> {
    let (idle_n, stalled_n, junk_n) = (ctx.scaled(2_000), ctx.scaled(1_000), ctx.scaled(150));
    let to = ctx.http;
    let t = Arc::new(Tally::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let probes = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        // Idle connections (from 127.6) send nothing and read; non-reading ones (from 127.7,
        // with a 4 KiB receive buffer) ask for the stream and never read.
        let stream = b"GET /stream.mjpg HTTP/1.1\r\nHost: chaos\r\n\r\n".as_slice();
        for (net, n, rcvbuf, request) in [
            (6, idle_n, None, None),
            (7, stalled_n, Some(4096), Some(stream)),
        ] {
            for i in 0..n {
                let t = t.clone();
                set.spawn(async move {
                    let Ok(mut tcp) = connect(flood_ip(net, i), to, rcvbuf).await else {
                        t.connect_failed.fetch_add(1, Relaxed);
                        return;
                    };
                    t.opened.fetch_add(1, Relaxed);
                    match request {
                        None => hold(&mut tcp, &t, true).await,
                        Some(req) => {
                            if tcp.write_all(req).await.is_ok() {
                                hold(&mut tcp, &t, false).await;
                            }
                        }
                    }
                });
            }
        }
        for i in 0..junk_n {
            let t = t.clone();
            set.spawn(async move {
                let Ok(mut tcp) = connect(flood_ip(8, i), to, None).await else {
                    t.connect_failed.fetch_add(1, Relaxed);
                    return;
                };
                t.opened.fetch_add(1, Relaxed);
                let mega = 1 << 20;
                let junk: Vec<u8> = match i % 3 {
                    0 => [b"GET /".as_slice(), &vec![b'a'; mega], b" HTTP/1.1\r\n\r\n"].concat(),
                    1 => [
                        b"GET /status HTTP/1.1\r\nX-Junk: ".as_slice(),
                        &vec![b'j'; mega],
                        b"\r\n\r\n",
                    ]
                    .concat(),
                    _ => (0..mega).map(|k| (k * 131 % 251) as u8).collect(),
                };
                // The server may close before taking it all: the write then fails, as it should.
                let write = tcp.write_all(&junk);
                let _ = tokio::time::timeout(Duration::from_secs(10), write).await;
                let mut answer = Vec::new();
                let read = tcp.read_to_end(&mut answer);
                let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
                let status = String::from_utf8_lossy(&answer[..answer.len().min(32)]).into_owned();
                match status.split_whitespace().nth(1) {
                    Some(c) if c.starts_with('4') => t.junk_4xx.fetch_add(1, Relaxed),
                    _ => t.junk_closed.fetch_add(1, Relaxed),
                };
            });
        }
        // The honest client: `/status` on a new connection every 500 ms while the flood lasts.
        let mut probes = Vec::new();
        let until = Instant::now() + HOLD + Duration::from_secs(2);
        while Instant::now() < until {
            let t0 = Instant::now();
            let got = tokio::task::spawn_blocking(move || {
                http_get(to, "/status", Duration::from_secs(10))
            })
            .await;
            let ok = matches!(got, Ok(Ok((200, _))));
            probes.push((ok, t0.elapsed()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        while set.join_next().await.is_some() {}
        probes
    });
    let secs = started.elapsed().as_secs_f64();
    let ok: Vec<Duration> = probes.iter().filter(|p| p.0).map(|p| p.1).collect();
    let slowest = ok.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let mut r = FloodReport::default();
    r.lines.push(format!(
        "sent: {idle_n} idle connections, {stalled_n} /stream.mjpg requests never read, {junk_n} junk requests of 1 MB (request line, a header, random bytes), in {secs:.1} s; {} opened, {} connects failed",
        t.opened.load(Relaxed),
        t.connect_failed.load(Relaxed)
    ));
    r.lines.push(format!(
        "server: closed {} idle or non-reading connections within {} s; junk answered 4xx {}, closed without answer {}",
        t.closed_by_server.load(Relaxed),
        HOLD.as_secs(),
        t.junk_4xx.load(Relaxed),
        t.junk_closed.load(Relaxed)
    ));
    r.lines.push(format!(
        "honest /status during the flood: {} of {} answered 200, slowest {slowest:.0} ms",
        ok.len(),
        probes.len()
    ));
    if ok.len() < probes.len() {
        r.failed.push(format!(
            "{} of {} honest /status requests failed",
            probes.len() - ok.len(),
            probes.len()
        ));
    }
    Ok(r)
}
