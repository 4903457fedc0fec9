//! `--janus N --janus-api URL…`: N WebRTC viewers of a Janus streaming mountpoint, spread
//! round robin over the given Janus HTTP APIs (the edges `scripts/janus-load.sh` starts in
//! front of surv). Each viewer is a str0m peer on a thread of its own, as in `--webrtc`, that
//! speaks Janus's HTTP API as janus.js does: create a session, attach
//! `janus.plugin.streaming`, `watch` the mountpoint, take the offer from the session's long
//! poll, answer with `start`. It starts no server: the script measures surv's and Janus's CPU.
//!
//! A viewer counts the H.264 frames str0m depacketizes while the tool measures (it does not
//! decode them: aiortc's `tests/peers/janus_client.py` does, at a CPU cost that 100 viewers on
//! this 2-core machine cannot pay), against the frames the stream carried over the same
//! window, from the frames' RTP times (surv stamps frame i at i × 90000/fps).
//!
//! Janus (libnice) gathers no loopback candidate: each viewer binds to the address of the
//! edge's first host candidate in the offer (an address of this host: the edges run here).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc};
use surv_tests::http;

use crate::webrtc::{play, start_viewers, Tally};
use crate::Args;

/// Janus ends a session silent for its `session_timeout` (60 s in deploy/janus/).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Each API request, and each long poll (Janus answers one within 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
/// Long polls a viewer makes for its offer, at most.
const MAX_POLLS: usize = 4;

/// One edge's HTTP API: `http://HOST:PORT/janus`.
#[derive(Debug, Clone)]
struct Api {
    addr: SocketAddr,
    base: String,
}

impl Api {
    fn parse(url: &str) -> anyhow::Result<Api> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: not http://HOST:PORT/PATH"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, "janus"));
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url}: HOST:PORT must be an IP address and a port"))?;
        ensure!(
            addr.ip().is_loopback(),
            "{url}: this tool only reaches Janus on this host's loopback"
        );
        Ok(Api {
            addr,
            base: format!("/{}", path.trim_end_matches('/')),
        })
    }

    fn call(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(format!("{:016x}", rand::random::<u64>()));
        let text = body.to_string();
        let req = http::Request::post(path, text.as_bytes())
            .headers(&[("Content-Type", "application/json")]);
        let r = http::blocking(http::request(self.addr, &req, limits()))?;
        let reply: Value = serde_json::from_slice(&r.body).context("janus's answer")?;
        match reply["janus"].as_str() {
            Some("success" | "ack") if r.status == 200 => Ok(reply),
            _ => bail!("janus answered {} {reply} to {}", r.status, body["janus"]),
        }
    }

    /// One long poll of a session's events (an array, maybe empty).
    fn events(&self, session: u64) -> anyhow::Result<Vec<Value>> {
        let path = format!("{}/{session}?maxev=10", self.base);
        let r = http::blocking(http::get(self.addr, &path, limits()))?;
        ensure!(r.status == 200, "long poll answered {}", r.status);
        Ok(
            match serde_json::from_slice(&r.body).context("janus's events")? {
                Value::Array(events) => events,
                one => vec![one],
            },
        )
    }
}

fn limits() -> http::Limits {
    http::Limits::new(REQUEST_TIMEOUT, 1 << 20)
}

pub fn run(args: &Args, n: usize) -> anyhow::Result<()> {
    if n == 0 || n > 2000 {
        bail!("--janus takes 1..=2000 viewers");
    }
    if args.janus_api.is_empty() {
        bail!("--janus needs --janus-api http://127.0.0.1:PORT/janus (repeat for more edges)");
    }
    let apis = args
        .janus_api
        .iter()
        .map(|u| Api::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tally = Arc::new(Tally::new(n));
    let sessions: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let keeper = {
        let (tally, sessions, apis) = (tally.clone(), sessions.clone(), apis.clone());
        std::thread::spawn(move || keepalive(&apis, &tally, &sessions))
    };
    let t_conn = Instant::now();
    let mountpoint = args.janus_mountpoint;
    let started = {
        let (apis, sessions) = (apis.clone(), sessions.clone());
        start_viewers(n, "janus", &tally, move |i, tally| {
            viewer(i, &apis[i % apis.len()], mountpoint, tally, &sessions)
        })
    };
    let mut threads = match started {
        Ok(threads) => threads,
        Err(e) => {
            tally.stop.store(true, Relaxed);
            let _ = keeper.join();
            return Err(e);
        }
    };
    threads.push(keeper);
    let conn_secs = t_conn.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    eprintln!("surv-load: measuring for {} s", args.seconds);
    let t0 = Instant::now();
    tally.measuring.store(true, Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    tally.measuring.store(false, Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("surv-load: measured");
    report(args, n, apis.len(), &tally, secs, conn_secs);
    tally.stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Keeps every session alive until the tally says stop.
fn keepalive(apis: &[Api], tally: &Tally, sessions: &Mutex<Vec<(usize, u64)>>) {
    let mut last = Instant::now();
    while !tally.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < KEEPALIVE {
            continue;
        }
        last = Instant::now();
        let all = sessions.lock().unwrap().clone();
        for (i, session) in all {
            let api = &apis[i % apis.len()];
            let path = format!("{}/{session}", api.base);
            if let Err(e) = api.call(&path, json!({"janus": "keepalive"})) {
                tally.fail(i, &e.context("keepalive"));
            }
        }
    }
}

/// One viewer: session, handle, watch, offer, answer and start, then frames until told to
/// stop; the session destroyed at the end.
fn viewer(
    i: usize,
    api: &Api,
    mountpoint: u64,
    tally: &Tally,
    sessions: &Mutex<Vec<(usize, u64)>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let session = api.call(&api.base, json!({"janus": "create"}))?["data"]["id"]
        .as_u64()
        .context("no session id")?;
    sessions.lock().unwrap().push((i, session));
    let result = (|| {
        let at = format!("{}/{session}", api.base);
        let attach = json!({"janus": "attach", "plugin": "janus.plugin.streaming"});
        let handle = api.call(&at, attach)?["data"]["id"]
            .as_u64()
            .context("no handle id")?;
        let at = format!("{at}/{handle}");
        let watch = json!({"request": "watch", "id": mountpoint});
        api.call(&at, json!({"janus": "message", "body": watch}))?;
        let offer = offer(api, session)?;
        let ip = host_candidate_ip(&offer).context("no IPv4 host candidate in janus's offer")?;
        let socket = UdpSocket::bind((ip, 0))?;
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_h264(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(socket.local_addr()?, "udp")?);
        let offer = SdpOffer::from_sdp_string(&offer).context("janus's offer")?;
        let answer = rtc.sdp_api().accept_offer(offer)?.to_sdp_string();
        let start = json!({"janus": "message", "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": answer}});
        api.call(&at, start)?;
        api.call(
            &at,
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )?;
        play(i, rtc, &socket, tally, started)
    })();
    // Janus times the session out anyway if this fails.
    let _ = api.call(
        &format!("{}/{session}", api.base),
        json!({"janus": "destroy"}),
    );
    sessions.lock().unwrap().retain(|&(_, s)| s != session);
    result
}

/// Long-polls the session until Janus's event with the offer (or a refusal).
fn offer(api: &Api, session: u64) -> anyhow::Result<String> {
    for _ in 0..MAX_POLLS {
        for e in api.events(session)? {
            if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                ensure!(
                    e["jsep"]["type"] == "offer",
                    "janus sent {}",
                    e["jsep"]["type"]
                );
                return Ok(sdp.to_string());
            }
            if let Some(error) = e["plugindata"]["data"].get("error") {
                bail!("watch refused: {error}");
            }
            if matches!(e["janus"].as_str(), Some("hangup" | "detached")) {
                bail!("janus ended the viewer: {e}");
            }
        }
    }
    bail!("no offer in {MAX_POLLS} long polls")
}

/// The address of the first IPv4 UDP host candidate in an SDP.
fn host_candidate_ip(sdp: &str) -> Option<IpAddr> {
    sdp.lines().find_map(|line| {
        // a=candidate:FOUNDATION COMPONENT udp PRIORITY ADDRESS PORT typ host
        let f: Vec<&str> = line
            .strip_prefix("a=candidate:")?
            .split_whitespace()
            .collect();
        let ip: IpAddr = f.get(4)?.parse().ok()?;
        let host = f.get(6..8) == Some(&["typ", "host"][..]);
        (host && ip.is_ipv4() && f.get(2)?.eq_ignore_ascii_case("udp")).then_some(ip)
    })
}

fn report(args: &Args, n: usize, edges: usize, tally: &Tally, secs: f64, conn_secs: f64) {
    let mut ratios: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let frames = tally.frames[i].load(Relaxed);
            let spanned = tally.spanned(i, args.fps);
            (frames as f64 / spanned.max(1) as f64, i)
        })
        .collect();
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ok = ratios
        .iter()
        .filter(|&&(r, i)| r >= 0.99 && tally.frames[i].load(Relaxed) >= 10)
        .count();
    let mut bits: Vec<f64> = (0..n)
        .map(|i| 8.0 * tally.bytes[i].load(Relaxed) as f64 / secs / 1e6)
        .collect();
    bits.sort_by(f64::total_cmp);
    let mut first: Vec<u64> = (0..n)
        .map(|i| tally.first_us[i].load(Relaxed))
        .filter(|&us| us != u64::MAX)
        .collect();
    first.sort_unstable();
    let (worst, worst_i) = ratios[0];
    println!(
        "janus viewers={n} on {edges} edges ({} playing, {} failed) measured={secs:.1}s at {} fps | {ok} of {n} got >= 99% of the frames the stream carried over their window | worst {:.2}% (viewer {worst_i}: {} of {}) median {:.2}% | {} frames not contiguous with the one before",
        tally.playing.load(Relaxed),
        tally.failed.load(Relaxed),
        args.fps,
        100.0 * worst,
        tally.frames[worst_i].load(Relaxed),
        tally.spanned(worst_i, args.fps),
        100.0 * ratios[n / 2].0,
        tally.broken.load(Relaxed),
    );
    println!(
        "bit rate per viewer median={:.2} Mbit/s (min {:.2}) | first frame after create median={:.1}ms max={:.1}ms ({} of {n} got none) | connected in {conn_secs:.1}s | {}",
        bits[n / 2],
        bits[0],
        first.get(first.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
        first.last().copied().unwrap_or(0) as f64 / 1000.0,
        n - first.len(),
        tally.errors.lock().unwrap().join("; "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ipv4_udp_host_candidate_is_taken() {
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2015363327 fe80::1 40000 typ host\r\n\
            a=candidate:2 1 tcp 2015363327 10.0.0.5 40001 typ host\r\n\
            a=candidate:3 1 udp 1679819007 203.0.113.9 40002 typ srflx raddr 10.0.0.5 rport 40000\r\n\
            a=candidate:4 1 udp 2015363071 10.0.0.5 40003 typ host\r\n";
        assert_eq!(host_candidate_ip(sdp), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            host_candidate_ip("v=0\r\na=candidate:1 1 udp 1 x 1 typ host\r\n"),
            None
        );
    }

    #[test]
    fn only_a_loopback_api_is_taken() {
        let api = Api::parse("http://127.0.0.1:8088/janus").unwrap();
        assert_eq!(api.base, "/janus");
        assert!(Api::parse("http://192.0.2.1:8088/janus").is_err());
        assert!(Api::parse("https://127.0.0.1:8088/janus").is_err());
        assert!(Api::parse("http://localhost:8088/janus").is_err());
    }

    #[test]
    fn the_span_counts_both_ends_and_wraps_like_rtp() {
        let t = Tally::new(2);
        assert_eq!(t.spanned(0, 30), 0);
        t.first_rtp[0].store(3000, Relaxed);
        t.last_rtp[0].store(3000 + 299 * 3000, Relaxed);
        assert_eq!(t.spanned(0, 30), 300);
        t.first_rtp[1].store(u64::from(u32::MAX) - 2999, Relaxed);
        t.last_rtp[1].store(3000, Relaxed);
        assert_eq!(t.spanned(1, 30), 3);
    }
}
