//! The watchers of an RTSP run (`--rtsp N`), as tasks on a small tokio runtime: each DESCRIBEs,
//! SETUPs (RTP interleaved on its TCP connection, or UDP to an even/odd port pair of its own)
//! and PLAYs one mount, then counts the complete frames it receives: a frame (an H.264 access
//! unit or a JPEG) ends at the RTP marker bit, and it is complete when none of its packets is
//! missing and it started at a frame's first packet. It also counts their bytes, and takes the
//! time from sending PLAY to the end of the first complete keyframe (an H.264 access unit with
//! an IDR slice; any JPEG).
//!
//! Over UDP only the first [`PREFIX_BYTES`] of each datagram are copied out (`recvmmsg` with
//! `MSG_TRUNC`, which still reports the full length), as the UDP viewers' generator does: a
//! real player's decoding and copying happen on its own machine. The same receiving serves the
//! GStreamer yardstick, with no RTSP in front (`listen`).

use std::io;
use std::net::{SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surv_server::sys;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::WAIT_LIMIT;

/// Bytes of each UDP datagram copied out: the RTP header and the first bytes of the payload
/// (an H.264 NAL or FU header, the RTP/JPEG header) fit.
pub const PREFIX_BYTES: usize = 64;
/// Datagrams per `recvmmsg`.
const BATCH: usize = 32;
/// A watcher's UDP receive buffer (forced past `rmem_max` when root): a 720p keyframe or a
/// 640x480 JPEG arrives as one burst.
const UDP_RCVBUF_BYTES: usize = 2 << 20;
/// Bytes per TCP `read`.
const READ_BYTES: usize = 64 * 1024;
/// An RTSP response longer than this (head and body) is an error: ours are short.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Each wait for a response is bounded by this.
const RESPONSE_LIMIT: Duration = Duration::from_secs(10);
/// Each wait for media is bounded by this, so that `stop` is seen.
const READ_SLICE: Duration = Duration::from_millis(500);
/// A keep-alive (OPTIONS) this often: the server ends a UDP session that is silent for 65 s.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// The RTP/JPEG payload type (RFC 2435); anything else is taken as H.264.
const PT_JPEG: u8 = 26;

/// How the media travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Interleaved on the RTSP connection (`RTP/AVP/TCP;interleaved=0-1`).
    Tcp,
    /// To the watcher's own even/odd UDP port pair (`RTP/AVP;client_port=…`).
    Udp,
}

/// Where the watchers go.
pub struct Target {
    pub addr: SocketAddrV4,
    /// The mount, without the leading slash: `main`, `main/mjpeg`.
    pub path: String,
    pub transport: Transport,
}

/// A slow player's receive buffer: the server sees it behind soon.
const SLOW_RCVBUF_BYTES: u32 = 16 * 1024;
/// A slow player's reads.
const SLOW_READ_BYTES: usize = 4 * 1024;

/// What the watchers share with the run.
pub struct Tally {
    pub stop: AtomicBool,
    /// While set, complete frames and bytes are counted in `frames` and `bytes`.
    pub measuring: AtomicBool,
    /// Complete frames received while measuring, per watcher.
    pub frames: Vec<AtomicU32>,
    /// RTP bytes (headers included) received while measuring, per watcher.
    pub bytes: Vec<AtomicU64>,
    /// PLAY sent → first complete keyframe, µs, per watcher (`u64::MAX`: none yet).
    pub first_key_us: Vec<AtomicU64>,
    /// Frames that ended (marker bit) with a packet missing, or that began mid-frame, while
    /// measuring.
    pub incomplete: AtomicU64,
    /// Packets missing by their sequence numbers, the whole run.
    pub lost_packets: AtomicU64,
    /// Datagrams from elsewhere than the server's RTP port, or no RTP.
    pub foreign: AtomicU64,
    /// Watchers whose PLAY was answered.
    pub playing: AtomicUsize,
    pub errors: AtomicUsize,
    pub first_error: Mutex<Option<String>>,
}

impl Tally {
    pub fn new(watchers: usize) -> Tally {
        Tally {
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
            frames: (0..watchers).map(|_| AtomicU32::new(0)).collect(),
            bytes: (0..watchers).map(|_| AtomicU64::new(0)).collect(),
            first_key_us: (0..watchers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            incomplete: AtomicU64::new(0),
            lost_packets: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            playing: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn error(&self, index: usize, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("watcher {index}: {e}"));
    }

    /// "N watcher errors, first: …", or "0 watcher errors".
    pub fn error_note(&self) -> String {
        match self.first_error.lock().ok().and_then(|e| e.clone()) {
            Some(e) => format!("{} watcher errors, first: {e}", self.errors.load(Relaxed)),
            None => "0 watcher errors".into(),
        }
    }
}

/// One watcher, until `tally.stop`; an error is counted (the first one kept). `slow_bps`: it
/// reads at most this many bytes a second (TCP only).
pub async fn watcher(index: usize, target: Arc<Target>, tally: Arc<Tally>, slow_bps: Option<u64>) {
    if let Err(e) = run(index, &target, &tally, slow_bps).await {
        if !tally.stop.load(Relaxed) {
            tally.error(index, e);
        }
    }
}

/// A receiver with no RTSP in front (the GStreamer yardstick): counts what arrives on `rtp`
/// as watcher `index` does, from when it is called.
pub async fn listen(index: usize, rtp: StdUdpSocket, tally: Arc<Tally>) {
    let result = async {
        let rtp = UdpSocket::from_std(rtp).map_err(|e| e.to_string())?;
        let mut track = Track::new(index, Instant::now());
        let mut rx = sys::MmsgReceiver::new(BATCH, PREFIX_BYTES);
        while !tally.stop.load(Relaxed) {
            if let Ok(ready) = timeout(READ_SLICE, rtp.readable()).await {
                ready.map_err(|e| e.to_string())?;
                drain_udp(&rtp, &mut rx, None, &mut track, &tally)?;
            }
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = result {
        tally.error(index, e);
    }
}

async fn run(
    index: usize,
    target: &Target,
    tally: &Tally,
    slow_bps: Option<u64>,
) -> Result<(), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if slow_bps.is_some() {
        socket
            .set_recv_buffer_size(SLOW_RCVBUF_BYTES)
            .map_err(|e| format!("receive buffer: {e}"))?;
    }
    let tcp = timeout(CONNECT_LIMIT, socket.connect(target.addr.into()))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        tcp,
        buf: Vec::with_capacity(READ_BYTES),
        start: 0,
        cseq: 0,
        slow: slow_bps.map(|bps| Slow {
            bps: bps.max(1),
            since: Instant::now(),
            bytes: 0,
        }),
    };
    let url = format!("rtsp://{}/{}", target.addr, target.path);
    let describe = conn
        .request("DESCRIBE", &url, "Accept: application/sdp\r\n")
        .await?;
    let base = header(&describe, "Content-Base").unwrap_or(&url);
    let setup_url = format!("{}/stream=0", base.trim_end_matches('/'));
    let udp = match target.transport {
        Transport::Tcp => None,
        Transport::Udp => Some(bind_pair().map_err(|e| format!("binding a UDP pair: {e}"))?),
    };
    let transport = match &udp {
        None => "RTP/AVP/TCP;unicast;interleaved=0-1".to_string(),
        Some((_, _, port)) => format!("RTP/AVP;unicast;client_port={port}-{}", port + 1),
    };
    let setup = conn
        .request("SETUP", &setup_url, &format!("Transport: {transport}\r\n"))
        .await?;
    let session = header(&setup, "Session")
        .and_then(|s| s.split(';').next())
        .ok_or("no Session in the SETUP answer")?
        .to_string();
    // Where the server's RTP comes from (`server_port=RTP-RTCP`); datagrams from elsewhere
    // are not counted.
    let server_rtp_port: Option<u16> = header(&setup, "Transport")
        .and_then(|t| t.split(';').find_map(|p| p.strip_prefix("server_port=")))
        .and_then(|p| p.split('-').next())
        .and_then(|p| p.parse().ok());
    let play_sent = Instant::now();
    conn.request("PLAY", &url, &format!("Session: {session}\r\n"))
        .await?;
    tally.playing.fetch_add(1, Relaxed);
    let mut track = Track::new(index, play_sent);
    match udp {
        None => conn.media_tcp(&mut track, &url, tally).await,
        Some((rtp, _rtcp, _)) => {
            let rtp = UdpSocket::from_std(rtp).map_err(|e| e.to_string())?;
            conn.media_udp(&rtp, server_rtp_port, &mut track, &url, tally)
                .await
        }
    }
}

/// A free even/odd UDP port pair on 127.0.0.1 (the RTCP socket is held, not read), the RTP one
/// non-blocking with a large receive buffer.
fn bind_pair() -> io::Result<(StdUdpSocket, StdUdpSocket, u16)> {
    for _ in 0..64 {
        let rtp = StdUdpSocket::bind("127.0.0.1:0")?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = StdUdpSocket::bind(("127.0.0.1", port + 1)) {
            configure_rtp(&rtp)?;
            return Ok((rtp, rtcp, port));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free even/odd UDP port pair on 127.0.0.1",
    ))
}

/// Non-blocking, with a receive buffer for a frame's burst.
pub fn configure_rtp(rtp: &StdUdpSocket) -> io::Result<()> {
    rtp.set_nonblocking(true)?;
    let fd = rtp.as_raw_fd();
    if sys::set_buffer(fd, libc::SO_RCVBUFFORCE, UDP_RCVBUF_BYTES).is_err() {
        sys::set_buffer(fd, libc::SO_RCVBUF, UDP_RCVBUF_BYTES)?;
    }
    Ok(())
}

/// Receives what is queued on `rtp` (none from other than `from_port`, when known).
fn drain_udp(
    rtp: &UdpSocket,
    rx: &mut sys::MmsgReceiver,
    from_port: Option<u16>,
    track: &mut Track,
    tally: &Tally,
) -> Result<(), String> {
    loop {
        let now = Instant::now();
        let got = rtp.try_io(Interest::READABLE, || {
            rx.recv(rtp.as_raw_fd(), |d| {
                let from_server =
                    d.from.ip().is_loopback() && from_port.is_none_or(|p| d.from.port() == p);
                if from_server {
                    track.packet(d.bytes, d.len, now, tally);
                } else {
                    tally.foreign.fetch_add(1, Relaxed);
                }
            })
        });
        match got {
            Ok(n) if n < rx.capacity() => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("udp receive: {e}")),
        }
    }
}

/// A header's value in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The RTSP connection: requests, their answers, and (over TCP) the interleaved media.
struct Conn {
    tcp: TcpStream,
    /// Received bytes not yet taken are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    cseq: u32,
    /// A slow player's pace.
    slow: Option<Slow>,
}

/// A slow player reads [`SLOW_READ_BYTES`] at a time, no faster than `bps` on average.
struct Slow {
    bps: u64,
    since: Instant,
    bytes: u64,
}

/// What the front of the buffer holds.
enum Item {
    /// Need more bytes.
    Partial,
    /// An interleaved packet: its channel, and where its RTP packet is in `buf`.
    Packet(u8, std::ops::Range<usize>),
    /// A response: its head.
    Response(String),
}

impl Conn {
    /// Reads more (bounded by `limit`); `Ok(false)` when nothing came in time.
    async fn fill(&mut self, limit: Duration) -> Result<bool, String> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if let Some(slow) = &self.slow {
            let due = slow.since + Duration::from_secs_f64(slow.bytes as f64 / slow.bps as f64);
            let wait = due.saturating_duration_since(Instant::now()).min(limit);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                return Ok(false);
            }
        }
        let len = self.buf.len();
        let room = if self.slow.is_some() {
            SLOW_READ_BYTES
        } else {
            READ_BYTES
        };
        self.buf.resize(len + room, 0);
        let got = timeout(limit, self.tcp.read(&mut self.buf[len..])).await;
        let n = match got {
            Err(_) => 0,
            Ok(Ok(0)) => {
                self.buf.truncate(len);
                return Err("closed by the server".into());
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.buf.truncate(len);
                return Err(format!("read: {e}"));
            }
        };
        self.buf.truncate(len + n);
        if let Some(slow) = &mut self.slow {
            slow.bytes += n as u64;
        }
        Ok(n > 0)
    }

    /// The item at the front of the buffer, taken out of it.
    fn next_item(&mut self) -> Result<Item, String> {
        let b = &self.buf[self.start..];
        if b.first() == Some(&b'$') {
            if b.len() < 4 {
                return Ok(Item::Partial);
            }
            let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
            if b.len() < 4 + len {
                return Ok(Item::Partial);
            }
            let at = self.start + 4;
            self.start += 4 + len;
            return Ok(Item::Packet(b[1], at..at + len));
        }
        let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
            if b.len() > MAX_RESPONSE_BYTES {
                return Err("no RTSP response head within 64 KiB".into());
            }
            return Ok(Item::Partial);
        };
        let head = String::from_utf8_lossy(&b[..end]).into_owned();
        let body: usize = header(&head, "Content-Length")
            .map_or(Ok(0), str::parse)
            .map_err(|_| format!("bad Content-Length in {head:?}"))?;
        if body > MAX_RESPONSE_BYTES {
            return Err(format!("a {body}-byte response body"));
        }
        if b.len() < end + 4 + body {
            return Ok(Item::Partial);
        }
        self.start += end + 4 + body;
        Ok(Item::Response(head))
    }

    fn request_text(&mut self, method: &str, url: &str, headers: &str) -> String {
        self.cseq += 1;
        format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: surv-load\r\n{headers}\r\n",
            self.cseq
        )
    }

    /// Sends a request and waits (bounded) for its answer, which must be 200; its head.
    /// Interleaved packets before it are skipped (there are none before PLAY's answer).
    async fn request(&mut self, method: &str, url: &str, headers: &str) -> Result<String, String> {
        let text = self.request_text(method, url, headers);
        timeout(RESPONSE_LIMIT, self.tcp.write_all(text.as_bytes()))
            .await
            .map_err(|_| format!("{method}: write timed out"))?
            .map_err(|e| format!("{method}: {e}"))?;
        let until = Instant::now() + RESPONSE_LIMIT;
        loop {
            match self.next_item()? {
                Item::Response(head) if head.starts_with("RTSP/1.0 200") => return Ok(head),
                Item::Response(head) => {
                    return Err(format!(
                        "{method}: {}",
                        head.lines().next().unwrap_or_default()
                    ))
                }
                Item::Packet(..) => continue,
                Item::Partial => {}
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left).await? && Instant::now() >= until {
                return Err(format!("{method}: no answer within {RESPONSE_LIMIT:?}"));
            }
        }
    }

    /// Sends an OPTIONS keep-alive without waiting for its answer (it comes among the media).
    async fn keepalive(&mut self, url: &str) -> Result<(), String> {
        let text = self.request_text("OPTIONS", url, "");
        timeout(RESPONSE_LIMIT, self.tcp.write_all(text.as_bytes()))
            .await
            .map_err(|_| "keep-alive: write timed out".to_string())?
            .map_err(|e| format!("keep-alive: {e}"))
    }

    /// Takes what is buffered: RTP on channel 0 to `track`, RTCP skipped, responses checked.
    fn take_items(&mut self, track: &mut Track, now: Instant, tally: &Tally) -> Result<(), String> {
        loop {
            match self.next_item()? {
                Item::Partial => return Ok(()),
                Item::Packet(0, range) => {
                    let len = range.len();
                    track.packet(&self.buf[range], len, now, tally);
                }
                Item::Packet(..) => {}
                Item::Response(head) if head.starts_with("RTSP/1.0 200") => {}
                Item::Response(head) => {
                    return Err(format!(
                        "keep-alive: {}",
                        head.lines().next().unwrap_or_default()
                    ))
                }
            }
        }
    }

    /// Media interleaved on the connection, until `tally.stop`.
    async fn media_tcp(
        &mut self,
        track: &mut Track,
        url: &str,
        tally: &Tally,
    ) -> Result<(), String> {
        let mut last_data = Instant::now();
        let mut next_keepalive = Instant::now() + KEEPALIVE_EVERY;
        while !tally.stop.load(Relaxed) {
            self.take_items(track, Instant::now(), tally)?;
            if self.fill(READ_SLICE).await? {
                last_data = Instant::now();
            } else if last_data.elapsed() > WAIT_LIMIT {
                return Err("nothing received for 30 s".into());
            }
            // A slow player's answer would wait behind what the server queued for it; a
            // session over TCP needs no keep-alive.
            if self.slow.is_none() && Instant::now() >= next_keepalive {
                self.keepalive(url).await?;
                next_keepalive += KEEPALIVE_EVERY;
            }
        }
        Ok(())
    }

    /// Media on `rtp`; the connection carries only the keep-alives and their answers.
    async fn media_udp(
        &mut self,
        rtp: &UdpSocket,
        from_port: Option<u16>,
        track: &mut Track,
        url: &str,
        tally: &Tally,
    ) -> Result<(), String> {
        let mut rx = sys::MmsgReceiver::new(BATCH, PREFIX_BYTES);
        let mut next_keepalive = Instant::now() + KEEPALIVE_EVERY;
        let mut last_data = Instant::now();
        let mut chunk = vec![0u8; 4096];
        while !tally.stop.load(Relaxed) {
            tokio::select! {
                ready = timeout(READ_SLICE, rtp.readable()) => {
                    if let Ok(ready) = ready {
                        ready.map_err(|e| e.to_string())?;
                        drain_udp(rtp, &mut rx, from_port, track, tally)?;
                        last_data = Instant::now();
                    } else if last_data.elapsed() > WAIT_LIMIT {
                        return Err("nothing received for 30 s".into());
                    }
                }
                got = self.tcp.read(&mut chunk) => {
                    match got {
                        Ok(0) => return Err("closed by the server".into()),
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) => return Err(format!("read: {e}")),
                    }
                    self.take_items(track, Instant::now(), tally)?;
                }
            }
            if Instant::now() >= next_keepalive {
                self.keepalive(url).await?;
                next_keepalive += KEEPALIVE_EVERY;
            }
        }
        Ok(())
    }
}

/// One watcher's reading of its RTP stream.
struct Track {
    index: usize,
    play_sent: Instant,
    keyframe_seen: bool,
    last_seq: Option<u16>,
    /// The frame being received: its timestamp, whether it is whole so far, whether it is a
    /// keyframe. `None` right after a marker bit.
    frame: Option<Frame>,
}

struct Frame {
    ts: u32,
    whole: bool,
    key: bool,
}

impl Track {
    fn new(index: usize, play_sent: Instant) -> Track {
        Track {
            index,
            play_sent,
            keyframe_seen: false,
            last_seq: None,
            frame: None,
        }
    }

    /// One RTP packet: `head` its first bytes (all of it over TCP), `len` its full length.
    fn packet(&mut self, head: &[u8], len: usize, now: Instant, tally: &Tally) {
        let Some(rtp) = RtpHead::parse(head) else {
            tally.foreign.fetch_add(1, Relaxed);
            return;
        };
        let measuring = tally.measuring.load(Relaxed);
        let mut gap = false;
        if let Some(last) = self.last_seq {
            let step = rtp.seq.wrapping_sub(last);
            if step == 0 || step >= 0x8000 {
                return; // a duplicate, or late: already counted as missing
            }
            if step != 1 {
                gap = true;
                tally.lost_packets.fetch_add(u64::from(step - 1), Relaxed);
            }
        }
        self.last_seq = Some(rtp.seq);
        if measuring {
            tally.bytes[self.index].fetch_add(len as u64, Relaxed);
        }
        let jpeg = rtp.payload_type == PT_JPEG;
        let p = rtp.payload;
        match &mut self.frame {
            Some(f) if f.ts == rtp.ts => f.whole &= !gap,
            _ => {
                if self.frame.take().is_some() && measuring {
                    // The previous frame's last packet (its marker) never came.
                    tally.incomplete.fetch_add(1, Relaxed);
                }
                let first_packet = if jpeg {
                    // The fragment offset (bytes 1..4 of the RTP/JPEG header) is 0.
                    p.get(1..4) == Some(&[0, 0, 0][..])
                } else {
                    // Not an FU-A fragment other than a first one.
                    match p {
                        [h, fu, ..] if h & 0x1f == 28 => fu & 0x80 != 0,
                        [_, ..] => true,
                        [] => false,
                    }
                };
                self.frame = Some(Frame {
                    ts: rtp.ts,
                    whole: first_packet && !gap,
                    key: false,
                });
            }
        }
        let Some(f) = &mut self.frame else {
            return;
        };
        f.key |= jpeg
            || match p {
                [h, ..] if h & 0x1f == 5 => true,
                [h, fu, ..] if h & 0x1f == 28 => fu & 0x1f == 5,
                _ => false,
            };
        if !rtp.marker {
            return;
        }
        let Some(f) = self.frame.take() else {
            return;
        };
        if !f.whole {
            if measuring {
                tally.incomplete.fetch_add(1, Relaxed);
            }
            return;
        }
        if measuring {
            tally.frames[self.index].fetch_add(1, Relaxed);
        }
        if f.key && !self.keyframe_seen {
            self.keyframe_seen = true;
            let us = now.saturating_duration_since(self.play_sent).as_micros();
            tally.first_key_us[self.index].store(us as u64, Relaxed);
        }
    }
}

/// The fields of an RTP header the watchers read (RFC 3550).
struct RtpHead<'a> {
    marker: bool,
    payload_type: u8,
    seq: u16,
    ts: u32,
    /// What of the payload there is (over UDP, the start of it).
    payload: &'a [u8],
}

impl RtpHead<'_> {
    fn parse(p: &[u8]) -> Option<RtpHead<'_>> {
        if p.len() < 12 || p[0] >> 6 != 2 {
            return None;
        }
        let mut at = 12 + 4 * usize::from(p[0] & 0x0f);
        if p[0] & 0x10 != 0 {
            let ext = p.get(at + 2..at + 4)?;
            at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        Some(RtpHead {
            marker: p[1] & 0x80 != 0,
            payload_type: p[1] & 0x7f,
            seq: u16::from_be_bytes([p[2], p[3]]),
            ts: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            payload: p.get(at..).unwrap_or_default(),
        })
    }
}

/// `n` free even/odd UDP pairs on 127.0.0.1 for the yardstick: the RTP sockets (configured as a
/// watcher's) and the RTCP ones, held so that nothing else takes them.
pub fn bind_pairs(n: usize) -> io::Result<Vec<(StdUdpSocket, StdUdpSocket)>> {
    (0..n)
        .map(|_| bind_pair().map(|(rtp, rtcp, _)| (rtp, rtcp)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, if marker { 0x80 | 96 } else { 96 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&[1, 2, 3, 4]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn frames_count_when_whole_and_the_first_keyframe_is_timed() {
        let tally = Tally::new(1);
        tally.measuring.store(true, Relaxed);
        let mut t = Track::new(0, Instant::now());
        let feed = |t: &mut Track, p: Vec<u8>| t.packet(&p, p.len(), Instant::now(), &tally);
        // A P frame in one FU-A pair: whole, no keyframe yet.
        feed(&mut t, packet(10, 0, false, &[0x7c, 0x81, 0]));
        feed(&mut t, packet(11, 0, true, &[0x7c, 0x41, 0]));
        assert_eq!(tally.frames[0].load(Relaxed), 1);
        assert_eq!(tally.first_key_us[0].load(Relaxed), u64::MAX);
        // SPS, PPS, IDR with its middle fragment lost: not counted.
        feed(&mut t, packet(12, 3000, false, &[0x67, 0x42]));
        feed(&mut t, packet(13, 3000, false, &[0x68, 0xce]));
        feed(&mut t, packet(14, 3000, false, &[0x7c, 0x85, 0]));
        feed(&mut t, packet(16, 3000, true, &[0x7c, 0x45, 0]));
        assert_eq!(tally.frames[0].load(Relaxed), 1);
        assert_eq!(tally.incomplete.load(Relaxed), 1);
        assert_eq!(tally.lost_packets.load(Relaxed), 1);
        // A frame that starts mid-way after a gap is not whole either.
        feed(&mut t, packet(18, 6000, true, &[0x7c, 0x41, 0]));
        assert_eq!(tally.frames[0].load(Relaxed), 1);
        assert_eq!(tally.incomplete.load(Relaxed), 2);
        // A whole keyframe: counted, and timed.
        feed(&mut t, packet(19, 9000, false, &[0x67, 0x42]));
        feed(&mut t, packet(20, 9000, true, &[0x65, 0x88]));
        assert_eq!(tally.frames[0].load(Relaxed), 2);
        assert_ne!(tally.first_key_us[0].load(Relaxed), u64::MAX);
        // A frame whose marker was lost is counted incomplete when the next one begins, and
        // that one, after the gap, is not whole either.
        feed(&mut t, packet(21, 12000, false, &[0x41, 0]));
        feed(&mut t, packet(23, 15000, true, &[0x41, 0]));
        assert_eq!(tally.frames[0].load(Relaxed), 2);
        assert_eq!(tally.incomplete.load(Relaxed), 4);
    }

    #[test]
    fn a_jpeg_frame_is_whole_from_offset_zero_to_the_marker() {
        let tally = Tally::new(1);
        tally.measuring.store(true, Relaxed);
        let mut t = Track::new(0, Instant::now());
        let jpeg = |seq: u16, offset: u32, marker: bool| {
            let mut p = packet(seq, 0, marker, &[0]);
            p[1] = if marker { 0x80 | PT_JPEG } else { PT_JPEG };
            p.truncate(12);
            p.push(0);
            p.extend_from_slice(&offset.to_be_bytes()[1..]);
            p.extend_from_slice(&[1, 255, 80, 60]);
            p
        };
        // Joined mid-frame: the first frame is not whole.
        for p in [jpeg(5, 1200, false), jpeg(6, 2400, true)] {
            t.packet(&p, p.len(), Instant::now(), &tally);
        }
        assert_eq!(tally.frames[0].load(Relaxed), 0);
        let mut p = jpeg(7, 0, false);
        p[4..8].copy_from_slice(&3000u32.to_be_bytes());
        let mut q = jpeg(8, 1200, true);
        q[4..8].copy_from_slice(&3000u32.to_be_bytes());
        for p in [p, q] {
            t.packet(&p, p.len(), Instant::now(), &tally);
        }
        assert_eq!(tally.frames[0].load(Relaxed), 1);
        assert_ne!(tally.first_key_us[0].load(Relaxed), u64::MAX);
    }
}
