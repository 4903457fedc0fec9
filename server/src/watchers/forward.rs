//! `--forward rtp://HOST:PORT` (a camera's `forward` key): the camera's H.264 pushed as RTP
//! (RFC 6184, payload type 96) to a fixed address, for a media server or a player that reads
//! an SDP file (Janus, GStreamer's `sdpdemux`, `ffmpeg -i s.sdp`). Nobody asks for it: it runs
//! from the camera's start to its end, and its SDP is at `GET /cam/<name>/stream.sdp`. A camera
//! may forward to several addresses (two Janus edges): each is one `run` here, with its own
//! socket, SSRC and counters, reading the same feed and the camera's packets made once, so a
//! second destination adds sends, not an encode (`?n=N` on the SDP's URL picks the Nth).
//!
//! ```text
//!  H264Feed ──join(): GOP, then live──▶ packetize (one SSRC, one seq run) ──UDP──▶ HOST:PORT
//!                                        └─ every 5 s: RTCP SR + SDES ─────UDP──▶ HOST:PORT+1
//! ```
//!
//! The forward holds an H.264 demand for as long as it runs (an encoded camera keeps its
//! encoder going). It starts at the cached GOP, so the receiver's first picture comes at once.
//! Sending never waits for the receiver (it is UDP); if the task still falls behind the feed it
//! skips to the next keyframe, and counts the frames skipped. Packets go out from one socket,
//! whose port is the OS's pick; what comes back to it (receiver reports) is not read.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::capture::h264::{FeedReader, H264Feed, H264Unit};
use crate::frame::ParameterSets;
use crate::rtp::{rtcp, CameraPackets, RtpFrame, Stamp, RTP_HEADER_BYTES};
use crate::watchers::rtp_out::RtpOut;
use crate::watchers::rtsp::request::{self, Describe, Stream};

/// The RTP payload type of the forwarded H.264 (dynamic; the SDP maps it).
pub const PAYLOAD_TYPE: u8 = crate::rtp::h264::PAYLOAD_TYPE;
/// How often the receiver gets an RTCP sender report (at PORT+1).
pub const SENDER_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long the SDP waits for a just-started encoder's first parameter sets: without them
/// players must wait for a keyframe to learn the picture's size.
pub const PARAMETER_SETS_WITHIN: Duration = Duration::from_secs(1);
/// The URL scheme `--forward` takes.
const SCHEME: &str = "rtp://";

/// Where a camera's RTP goes, as `--forward` or the `forward` key wrote it, checked but not
/// resolved ([`ForwardUrl::resolve`] does that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardUrl {
    /// A host name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    /// The RTP port (RTCP goes to the next one).
    pub port: u16,
}

impl ForwardUrl {
    /// `rtp://HOST:PORT`, HOST a name, an IPv4 address or a bracketed IPv6 one; PORT 1 to
    /// 65534 (RTCP needs PORT+1). Nothing else: no user, path or query.
    pub fn parse(text: &str) -> Result<ForwardUrl, String> {
        let rest = text
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .map(|_| &text[SCHEME.len()..])
            .ok_or_else(|| format!("{text:?} is not rtp://HOST:PORT"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(format!(
                "{text:?}: only rtp://HOST:PORT is taken (no {c:?}: no user, path or query)"
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port: write rtp://HOST:PORT"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6
                    .strip_suffix(']')
                    .ok_or_else(|| format!("{text:?}: an IPv6 address needs its closing ]"))?;
                v6.parse::<Ipv6Addr>()
                    .map_err(|_| format!("{text:?}: {v6:?} is not an IPv6 address"))?;
                v6
            }
            None if host.contains(':') => {
                return Err(format!(
                    "{text:?}: write an IPv6 address in brackets, rtp://[ADDRESS]:PORT"
                ))
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: port {port:?} is not a number from 1 to 65534"))?;
        if port == 0 || port == u16::MAX {
            return Err(format!(
                "{text:?}: port {port} cannot be used: RTP needs a port from 1 to 65534 (RTCP goes to the next one)"
            ));
        }
        Ok(ForwardUrl {
            host: host.to_string(),
            port,
        })
    }

    /// The address packets go to: the host's first address (a name is looked up now, with
    /// the system's resolver, which blocks). Unicast or multicast; not 0.0.0.0, `::` or the
    /// broadcast address.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {:?}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{:?} has no address", self.host))?;
        check_destination(addr.ip())?;
        Ok(addr)
    }
}

impl std::fmt::Display for ForwardUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{SCHEME}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{SCHEME}{}:{}", self.host, self.port)
        }
    }
}

/// Whether packets can be sent to `ip`: a unicast or multicast address.
fn check_destination(ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!("{ip} is no destination"));
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err("the broadcast address is not served: use a unicast or multicast one".into());
    }
    Ok(())
}

/// What a forward has done (every count since the camera started).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// RTP packets handed to the socket.
    pub packets: AtomicU64,
    /// Access units sent (each as one or more packets).
    pub frames: AtomicU64,
    /// Bytes sent, RTP headers included.
    pub bytes: AtomicU64,
    /// Frames not sent because the forward fell behind the feed (it resumes at a keyframe).
    pub frames_skipped: AtomicU64,
    /// Sender reports sent.
    pub sender_reports: AtomicU64,
    /// Datagrams the socket refused (no route, buffer full…): lost.
    pub send_errors: AtomicU64,
}

/// A camera's forward as the rest of the server sees it (`Camera::forward`): where it sends,
/// its counters and its SDP.
#[derive(Debug)]
pub struct Forwarding {
    pub dest: SocketAddr,
    pub stats: ForwardStats,
}

impl Forwarding {
    pub fn new(dest: SocketAddr) -> Forwarding {
        Forwarding {
            dest,
            stats: ForwardStats::default(),
        }
    }

    /// The session description a receiver reads the stream with, waiting up to
    /// [`PARAMETER_SETS_WITHIN`] for `feed`'s parameter sets when there are none yet.
    pub async fn sdp(&self, camera: &str, feed: &H264Feed, fps: u32) -> String {
        let mut params = feed.params();
        if params.borrow().is_none() {
            let _ = timeout(PARAMETER_SETS_WITHIN, params.wait_for(Option::is_some)).await;
        }
        let sets = params.borrow().clone();
        sdp(camera, self.dest, fps, sets.as_ref())
    }
}

/// The SDP of a forward to `dest`: the RTSP server's description of the camera's H.264 (its
/// rtpmap, and an fmtp with the profile and `sprop-parameter-sets`), with the destination as
/// the connection address and port, and nothing of RTSP's (no control, no range).
pub fn sdp(camera: &str, dest: SocketAddr, fps: u32, sets: Option<&ParameterSets>) -> String {
    let origin = match dest {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let described = request::sdp(&Describe {
        camera,
        stream: Stream::H264,
        origin,
        fps,
        parameter_sets: sets,
    });
    let (family, ttl) = match dest.ip() {
        IpAddr::V4(ip) if ip.is_multicast() => ("IP4", "/1"),
        IpAddr::V4(_) => ("IP4", ""),
        IpAddr::V6(_) => ("IP6", ""),
    };
    let mut out = String::with_capacity(described.len() + 32);
    for line in described.split_terminator("\r\n") {
        if line.starts_with("m=") {
            let _ = write!(out, "m=video {} RTP/AVP {PAYLOAD_TYPE}\r\n", dest.port());
        } else if line.starts_with("c=") {
            // IPv4 multicast needs a TTL here (RFC 8866 §5.7): the socket's, 1.
            let _ = write!(out, "c=IN {family} {}{ttl}\r\n", dest.ip());
        } else if !(line.starts_with("a=control:") || line.starts_with("a=range:")) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// A socket to send a forward to `dest` from: any port of the matching family.
pub fn bind(dest: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Sends `feed`'s H.264 to `forwarding.dest` from `socket` until `stop`; logs what it did at
/// the end. `camera` names it in logs and in the SDES CNAME; `fps` sets how far behind it may
/// fall before it skips.
pub async fn run(
    camera: String,
    feed: Arc<H264Feed>,
    fps: u32,
    socket: UdpSocket,
    forwarding: Arc<Forwarding>,
    packets: Arc<CameraPackets>,
    stop: CancellationToken,
) {
    let dest = forwarding.dest;
    tracing::info!(camera = %camera, %dest, "forwarding H.264 as RTP");
    let mut forward = Forward::new(camera, feed, socket, forwarding, packets);
    tokio::select! {
        () = stop.cancelled() => {}
        () = forward.run(fps) => {}
    }
    let s = &forward.forwarding.stats;
    tracing::info!(
        camera = %forward.camera,
        %dest,
        frames = s.frames.load(Relaxed),
        packets = s.packets.load(Relaxed),
        bytes = s.bytes.load(Relaxed),
        frames_skipped = s.frames_skipped.load(Relaxed),
        send_errors = s.send_errors.load(Relaxed),
        "forward ends"
    );
}

/// One running forward.
struct Forward {
    camera: String,
    feed: Arc<H264Feed>,
    socket: UdpSocket,
    forwarding: Arc<Forwarding>,
    rtcp_dest: SocketAddr,
    /// Its SSRC, timestamp base (random: RFC 3550) and sequence numbers, over the camera's
    /// shared packets.
    stamp: Stamp,
    packets_made: Arc<CameraPackets>,
    rtp_out: RtpOut,
    /// For sender reports: what was sent (both wrap at 2^32, as the SR's fields do), and the
    /// newest frame's RTP timestamp and capture time.
    packets: u32,
    payload_octets: u32,
    last: Option<(u32, u64)>,
    last_report: Option<Instant>,
    /// The first send error is logged; the rest are counted.
    logged_send_error: bool,
}

impl Forward {
    fn new(
        camera: String,
        feed: Arc<H264Feed>,
        socket: UdpSocket,
        forwarding: Arc<Forwarding>,
        packets_made: Arc<CameraPackets>,
    ) -> Forward {
        let dest = forwarding.dest;
        Forward {
            camera,
            feed,
            socket,
            rtcp_dest: SocketAddr::new(dest.ip(), dest.port().wrapping_add(1)),
            forwarding,
            // The low half of a random word: a random first sequence number.
            stamp: Stamp::new(random_u32(), random_u32(), random_u32() as u16),
            packets_made,
            rtp_out: RtpOut::default(),
            packets: 0,
            payload_octets: 0,
            last: None,
            last_report: None,
            logged_send_error: false,
        }
    }

    /// Sends until the feed ends (it does not while the camera lives: `run`'s caller stops it).
    /// `fps`, the camera's rate, sets how far behind it may fall before it skips.
    async fn run(&mut self, fps: u32) {
        let _demand = self.feed.demand();
        let mut reader = FeedReader::join(self.feed.clone(), fps);
        while let Some(unit) = reader.next().await {
            self.send(&unit, unit.au.is_keyframe()).await;
            reader.check_lag();
            self.forwarding
                .stats
                .frames_skipped
                .store(reader.skipped(), Relaxed);
        }
    }

    /// Sends one AU (its packets as every session shares them), then a sender report when one
    /// is due.
    async fn send(&mut self, unit: &H264Unit, keyframe: bool) {
        let frame = self.packets_made.h264(unit);
        if frame.packets.is_empty() {
            return;
        }
        let ts = self.stamp.timestamp(frame.rtp_ts);
        self.last = Some((ts, unit.capture_unix_us));
        let dest = self.forwarding.dest;
        let sent = self
            .rtp_out
            .send_udp(&self.socket, dest, &mut self.stamp, &frame)
            .await;
        let stats = &self.forwarding.stats;
        if sent.failed > 0 {
            stats.send_errors.fetch_add(1, Relaxed);
            if !self.logged_send_error {
                self.logged_send_error = true;
                tracing::warn!(camera = %self.camera, %dest,
                    "forward: RTP packets could not be sent (further errors are only counted)");
            }
        }
        let wire = frame.wire_bytes();
        stats.packets.fetch_add(frame.packets.len() as u64, Relaxed);
        stats.frames.fetch_add(1, Relaxed);
        stats.bytes.fetch_add(wire as u64, Relaxed);
        // A frame has far fewer than 2^32 packets and bytes; the SR's counts wrap.
        self.packets = self.packets.wrapping_add(frame.packets.len() as u32);
        self.payload_octets = self
            .payload_octets
            .wrapping_add(payload_bytes(&frame) as u32);
        tracing::trace!(camera = %self.camera, packets = frame.packets.len(), keyframe, "forwarded");
        if self
            .last_report
            .is_none_or(|at| at.elapsed() >= SENDER_REPORT_EVERY)
        {
            self.report().await;
        }
    }

    /// An RTCP sender report (and SDES CNAME: the camera's name) to PORT+1.
    async fn report(&mut self) {
        let Some((ts, unix_us)) = self.last else {
            return;
        };
        self.last_report = Some(Instant::now());
        let report = rtcp::sender_report(
            self.stamp.ssrc,
            unix_us,
            ts,
            self.packets,
            self.payload_octets,
            &self.camera,
        );
        self.send_to(&report, self.rtcp_dest).await;
        self.forwarding.stats.sender_reports.fetch_add(1, Relaxed);
    }

    async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(datagram, to).await {
            self.forwarding.stats.send_errors.fetch_add(1, Relaxed);
            if !self.logged_send_error {
                self.logged_send_error = true;
                tracing::warn!(camera = %self.camera, %to, error = %e,
                    "forward: a datagram could not be sent (further errors are only counted)");
            }
        }
    }
}

/// The payload bytes of a frame's packets (what an SR's octet count counts).
fn payload_bytes(frame: &RtpFrame) -> usize {
    frame.wire_bytes() - frame.packets.len() * RTP_HEADER_BYTES
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // The OS's generator does not fail on Linux once booted; a fixed value would still work.
    let _ = getrandom::getrandom(&mut b);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::H264AccessUnit;
    use crate::rtp::RtpHeader;
    use bytes::Bytes;

    #[test]
    fn urls_taken_and_refused() {
        let ok = |s: &str| ForwardUrl::parse(s).unwrap();
        assert_eq!(
            ok("rtp://127.0.0.1:5004"),
            ForwardUrl {
                host: "127.0.0.1".into(),
                port: 5004
            }
        );
        assert_eq!(ok("RTP://janus.local:5004/").host, "janus.local");
        assert_eq!(ok("rtp://[::1]:5004").host, "::1");
        assert_eq!(ok("rtp://[::1]:5004").to_string(), "rtp://[::1]:5004");
        assert_eq!(ok("rtp://239.1.2.3:5005").port, 5005);
        for (bad, says) in [
            ("http://x", "not rtp://HOST:PORT"),
            ("rtp://x", "no port"),
            ("rtp://:5004", "no host"),
            ("rtp://x:0", "port 0"),
            ("rtp://x:65535", "port 65535"),
            ("rtp://x:70000", "not a number"),
            ("rtp://x:p", "not a number"),
            ("rtp://u@x:5004", "no user"),
            ("rtp://x:5004/path", "no user, path or query"),
            ("rtp://::1:5004", "brackets"),
            ("rtp://[::1:5004", "closing ]"),
            ("rtp://[nope]:5004", "not an IPv6 address"),
            ("rt", "not rtp://"),
            ("", "not rtp://"),
        ] {
            let e = ForwardUrl::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn destinations_resolved_and_refused() {
        let resolve = |s: &str| ForwardUrl::parse(s).unwrap().resolve();
        assert_eq!(
            resolve("rtp://127.0.0.1:5004"),
            Ok("127.0.0.1:5004".parse().unwrap())
        );
        assert_eq!(
            resolve("rtp://239.1.2.3:5004"),
            Ok("239.1.2.3:5004".parse().unwrap())
        );
        assert_eq!(
            resolve("rtp://[::1]:5004"),
            Ok("[::1]:5004".parse().unwrap())
        );
        assert!(resolve("rtp://localhost:5004").is_ok());
        assert!(resolve("rtp://0.0.0.0:5004")
            .unwrap_err()
            .contains("no destination"));
        assert!(resolve("rtp://255.255.255.255:5004")
            .unwrap_err()
            .contains("broadcast"));
        // .invalid never resolves (RFC 6761).
        let e = resolve("rtp://no-such-host.invalid:5004").unwrap_err();
        assert!(e.contains("cannot resolve \"no-such-host.invalid\""), "{e}");
    }

    fn sets() -> ParameterSets {
        ParameterSets {
            sps: Bytes::from_static(&[
                0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x68, 0x05, 0x00, 0x5b, 0xa0, 0x1e, 0x11, 0x08, 0xd4,
            ]),
            pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
        }
    }

    #[test]
    fn the_sdp_names_the_destination_and_the_parameter_sets() {
        let ps = sets();
        let text = sdp("main", "127.0.0.1:5004".parse().unwrap(), 30, Some(&ps));
        assert_eq!(
            text,
            "v=0\r\no=- 0 1 IN IP4 127.0.0.1\r\ns=surv main\r\nt=0 0\r\n\
             m=video 5004 RTP/AVP 96\r\nc=IN IP4 127.0.0.1\r\n\
             a=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAH4xoBQBboB4RCNQ=,aM48gA==\r\n\
             a=framerate:30\r\n"
        );
        let parsed = sdp_types::Session::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.medias.len(), 1);
        assert_eq!(parsed.medias[0].port, 5004);
        assert_eq!(parsed.medias[0].fmt, "96");
        let multicast = sdp("yard", "239.1.2.3:6000".parse().unwrap(), 0, None);
        assert!(
            multicast.contains("c=IN IP4 239.1.2.3/1\r\n"),
            "{multicast}"
        );
        assert!(
            multicast.contains("a=fmtp:96 packetization-mode=1\r\n"),
            "{multicast}"
        );
        let v6 = sdp("yard", "[::1]:6000".parse().unwrap(), 0, None);
        assert!(
            v6.contains("c=IN IP6 ::1\r\n") && v6.contains("o=- 0 1 IN IP6 ::1\r\n"),
            "{v6}"
        );
        sdp_types::Session::parse(v6.as_bytes()).unwrap();
    }

    /// An AU: SPS + PPS + an IDR slice for a keyframe, else one P slice; `fill` bytes of slice.
    fn unit(keyframe: bool, t_90k: u64, fill: usize) -> H264Unit {
        let ps = sets();
        let mut data = Vec::new();
        if keyframe {
            for nal in [&ps.sps[..], &ps.pps[..]] {
                data.extend_from_slice(&[0, 0, 0, 1]);
                data.extend_from_slice(nal);
            }
        }
        data.extend_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
        data.extend(std::iter::repeat_n(0x5A, fill));
        H264Unit {
            seq: 0,
            au: H264AccessUnit {
                layer: 0,
                data: Bytes::from(data),
                parameter_sets: keyframe.then_some(ps),
            },
            media_time_90k: t_90k,
            capture_unix_us: 1_700_000_000_000_000 + t_90k * 100 / 9,
        }
    }

    /// A receiver on a free even port, and its RTCP socket on the next one.
    async fn receiver() -> (UdpSocket, UdpSocket) {
        loop {
            let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = rtp.local_addr().unwrap().port();
            if port % 2 != 0 || port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)).await {
                return (rtp, rtcp);
            }
        }
    }

    async fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// From the cached GOP on: one SSRC, sequence numbers without a gap, payload type 96, the
    /// marker on each AU's last packet, timestamps 90 kHz apart as the feed's; an SR with the
    /// same SSRC at PORT+1; it holds a demand while it runs, and ends with its token.
    #[tokio::test]
    async fn sends_the_gop_then_live_frames_with_one_ssrc_and_no_seq_gap() {
        let feed = Arc::new(H264Feed::new());
        // A P frame before any keyframe is never sent; then a GOP of two.
        feed.publish(unit(false, 0, 10));
        feed.publish(unit(true, 3000, 3000));
        feed.publish(unit(false, 6000, 10));
        let (rtp, rtcp) = receiver().await;
        let dest = rtp.local_addr().unwrap();
        let forwarding = Arc::new(Forwarding::new(dest));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            "main".into(),
            feed.clone(),
            30,
            bind(dest).unwrap(),
            forwarding.clone(),
            Arc::default(),
            stop.clone(),
        ));
        // The keyframe: SPS, PPS, then the 3000-byte IDR slice in 3 FU-As.
        let mut packets = Vec::new();
        for _ in 0..5 {
            packets.push(recv(&rtp).await);
        }
        let report = recv(&rtcp).await;
        assert!(rtcp::is_rtcp(&report) && report[1] == 200, "{report:?}");
        assert_eq!(feed.demanded(), 1);
        packets.push(recv(&rtp).await); // the P frame of the GOP
        feed.publish(unit(false, 9000, 10)); // live
        packets.push(recv(&rtp).await);
        let headers: Vec<RtpHeader> = packets
            .iter()
            .map(|p| RtpHeader::parse(p).unwrap().0)
            .collect();
        let ssrc = headers[0].ssrc;
        assert_eq!(report[4..8], ssrc.to_be_bytes());
        for (i, h) in headers.iter().enumerate() {
            assert_eq!((h.payload_type, h.ssrc), (96, ssrc), "packet {i}");
            assert_eq!(h.seq, headers[0].seq.wrapping_add(i as u16), "packet {i}");
            assert_eq!(h.marker, i >= 4, "packet {i}");
        }
        assert_eq!(RtpHeader::parse(&packets[0]).unwrap().1[0] & 0x1F, 7);
        assert_eq!(headers[4].timestamp, headers[0].timestamp);
        assert_eq!(
            headers[5].timestamp,
            headers[0].timestamp.wrapping_add(3000)
        );
        assert_eq!(
            headers[6].timestamp,
            headers[0].timestamp.wrapping_add(6000)
        );
        stop.cancel();
        timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let s = &forwarding.stats;
        assert_eq!((s.frames.load(Relaxed), s.packets.load(Relaxed)), (3, 7));
        assert_eq!(s.send_errors.load(Relaxed), 0);
        assert_eq!(feed.demanded(), 0);
    }

    /// A forward that fell behind the feed by more than the broadcast holds skips to the next
    /// keyframe (counted) and goes on with its sequence numbers unbroken.
    #[tokio::test]
    async fn a_forward_that_lags_resumes_at_a_keyframe() {
        let feed = Arc::new(H264Feed::new());
        let (rtp, _rtcp) = receiver().await;
        let dest = rtp.local_addr().unwrap();
        let forwarding = Arc::new(Forwarding::new(dest));
        let socket = bind(dest).unwrap();
        let mut forward = Forward::new(
            "main".into(),
            feed.clone(),
            socket,
            forwarding.clone(),
            Arc::default(),
        );
        feed.publish(unit(true, 0, 10));
        let sending = async {
            forward.run(30).await;
        };
        tokio::pin!(sending);
        // The keyframe goes out (SPS, PPS, slice); then, with the forward not polled, the feed
        // runs far ahead: more than the broadcast holds, then a keyframe and a P frame.
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(tokio::select! {
                () = &mut sending => unreachable!(),
                p = recv(&rtp) => p,
            });
        }
        let behind = crate::capture::h264::BROADCAST_CAPACITY as u64 + 10;
        for i in 1..=behind {
            feed.publish(unit(false, i * 3000, 10));
        }
        feed.publish(unit(true, (behind + 1) * 3000, 10));
        feed.publish(unit(false, (behind + 2) * 3000, 10));
        let mut next = Vec::new();
        for _ in 0..4 {
            next.push(tokio::select! {
                () = &mut sending => unreachable!(),
                p = recv(&rtp) => p,
            });
        }
        let last_first = RtpHeader::parse(&first[2]).unwrap().0;
        let h: Vec<RtpHeader> = next
            .iter()
            .map(|p| RtpHeader::parse(p).unwrap().0)
            .collect();
        assert_eq!(h[0].seq, last_first.seq.wrapping_add(1));
        // SPS first: the keyframe, not a P frame from the middle.
        assert_eq!(RtpHeader::parse(&next[0]).unwrap().1[0] & 0x1F, 7);
        assert_eq!(
            h[3].timestamp.wrapping_sub(last_first.timestamp),
            ((behind + 2) * 3000) as u32
        );
        assert!(forwarding.stats.frames_skipped.load(Relaxed) >= 10);
    }
}
