//! The RTSP server's words, sans-IO: which camera and stream a request URI names, which
//! transport a SETUP asks for, the SDP a DESCRIBE gets, and the response writer.
//!
//! Requests are parsed by `rtsp-types`; responses are written here, because that crate joins
//! repeated headers into one line (two `WWW-Authenticate` challenges must be two lines) and we
//! want `CSeq` first, as every player's log shows it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use rtsp_types::headers::{RtpLowerTransport, Transport, Transports};

use crate::frame::ParameterSets;
use crate::rtp::h264::{profile_level_id, sprop_parameter_sets};

/// What a mount serves: the camera's H.264, or its JPEGs as RTP/JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `rtsp://HOST:PORT/<camera>`: H.264 (RFC 6184), payload type 96.
    H264,
    /// `rtsp://HOST:PORT/<camera>/mjpeg`: the camera's JPEGs (RFC 2435), payload type 26.
    Jpeg,
}

impl Stream {
    pub fn payload_type(self) -> u8 {
        match self {
            Stream::H264 => crate::rtp::h264::PAYLOAD_TYPE,
            Stream::Jpeg => crate::rtp::jpeg::PAYLOAD_TYPE,
        }
    }
}

/// The camera (`None`: the first, for `rtsp://HOST:PORT/`) and stream a request URI's path
/// names. It tolerates what players add: a trailing `/`, a `stream=0` or `trackID=0` control
/// (from our SDP, or the habit of other servers), a query. `None`: no such mount.
pub fn mount(path: &str) -> Option<(Option<&str>, Stream)> {
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .last()
        .is_some_and(|p| p.starts_with("stream=") || p.starts_with("trackID="))
    {
        parts.pop();
    }
    match parts.as_slice() {
        [] => Some((None, Stream::H264)),
        [camera] => Some((Some(camera), Stream::H264)),
        [camera, "mjpeg"] => Some((Some(camera), Stream::Jpeg)),
        _ => None,
    }
}

/// Where a session's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Interleaved on the RTSP connection: RTP on `channel`, RTCP on `channel + 1`.
    Tcp { channel: u8 },
    /// UDP to the RTSP peer's own address (never one named in the request: RTSP's reflection
    /// problem), at its `client_port` pair.
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
}

/// Why a SETUP's transports cannot be served (461 Unsupported Transport).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoTransport(pub &'static str);

/// The first of `offered` that surv can serve to `peer`: RTP/AVP over TCP (interleaved; the
/// player's channels, or 0-1) or unicast UDP to two adjacent `client_port`s ≥ 1024 of `peer`'s
/// address. Multicast and `destination=` are refused.
pub fn pick_transport(offered: &Transports, peer: IpAddr) -> Result<Delivery, NoTransport> {
    let mut why = NoTransport("no RTP/AVP transport offered");
    for t in offered.iter() {
        let Transport::Rtp(rtp) = t else { continue };
        let p = &rtp.params;
        if p.multicast {
            why = NoTransport("multicast is not served");
            continue;
        }
        match rtp.lower_transport {
            Some(RtpLowerTransport::Tcp) => {
                let channel = p.interleaved.map_or(0, |(first, _)| first);
                if channel == u8::MAX {
                    why = NoTransport("interleaved channel 255 leaves no room for RTCP");
                    continue;
                }
                return Ok(Delivery::Tcp { channel });
            }
            Some(RtpLowerTransport::Udp) | None => {
                if p.destination.is_some() {
                    why = NoTransport("destination= is not served: media go to the RTSP peer");
                    continue;
                }
                let Some((rtp_port, rtcp_port)) = p.client_port else {
                    why = NoTransport("UDP without client_port");
                    continue;
                };
                let rtcp_port = rtcp_port.unwrap_or(rtp_port.wrapping_add(1));
                if rtp_port < 1024 || rtcp_port < 1024 {
                    why = NoTransport("client_port below 1024");
                    continue;
                }
                return Ok(Delivery::Udp {
                    rtp: SocketAddr::new(peer, rtp_port),
                    rtcp: SocketAddr::new(peer, rtcp_port),
                });
            }
            Some(_) => why = NoTransport("unknown lower transport"),
        }
    }
    Err(why)
}

/// The Transport header of a SETUP's answer for `delivery`.
pub fn transport_reply(delivery: Delivery, server_ports: (u16, u16), ssrc: u32) -> String {
    match delivery {
        Delivery::Tcp { channel } => format!(
            "RTP/AVP/TCP;unicast;interleaved={}-{};ssrc={ssrc:08X};mode=\"PLAY\"",
            channel,
            channel + 1
        ),
        Delivery::Udp { rtp, rtcp } => format!(
            "RTP/AVP;unicast;client_port={}-{};server_port={}-{};ssrc={ssrc:08X};mode=\"PLAY\"",
            rtp.port(),
            rtcp.port(),
            server_ports.0,
            server_ports.1
        ),
    }
}

/// What the SDP says about a camera's stream.
#[derive(Debug, Clone)]
pub struct Describe<'a> {
    pub camera: &'a str,
    pub stream: Stream,
    /// The address the player reached us on (the SDP's origin).
    pub origin: IpAddr,
    pub fps: u32,
    /// The H.264 stream's parameter sets, when known: without them players must wait for a
    /// keyframe to learn the size.
    pub parameter_sets: Option<&'a ParameterSets>,
}

/// The session description for a DESCRIBE (RFC 8866), one video stream with control
/// `stream=0` under the Content-Base.
pub fn sdp(d: &Describe<'_>) -> String {
    let family = if d.origin.is_ipv6() { "IP6" } else { "IP4" };
    let any = if d.origin.is_ipv6() { "::" } else { "0.0.0.0" };
    let mut s = String::with_capacity(400);
    let _ = write!(
        s,
        "v=0\r\no=- 0 1 IN {family} {}\r\ns=surv {}\r\nt=0 0\r\na=control:*\r\na=range:npt=now-\r\n",
        d.origin, d.camera
    );
    let pt = d.stream.payload_type();
    let _ = write!(s, "m=video 0 RTP/AVP {pt}\r\nc=IN {family} {any}\r\n");
    match d.stream {
        Stream::H264 => {
            let _ = write!(
                s,
                "a=rtpmap:{pt} H264/90000\r\na=fmtp:{pt} packetization-mode=1"
            );
            if let Some(ps) = d.parameter_sets {
                if let Some(id) = profile_level_id(&ps.sps) {
                    let _ = write!(s, ";profile-level-id={id}");
                }
                let _ = write!(s, ";sprop-parameter-sets={}", sprop_parameter_sets(ps));
            }
            s.push_str("\r\n");
        }
        Stream::Jpeg => {
            let _ = write!(s, "a=rtpmap:{pt} JPEG/90000\r\n");
        }
    }
    if d.fps > 0 {
        let _ = write!(s, "a=framerate:{}\r\n", d.fps);
    }
    s.push_str("a=control:stream=0\r\n");
    s
}

/// An RTSP response, written by [`Reply::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self.header("Content-Type", content_type)
    }

    /// The status line, `CSeq` (echoed, when the request had one), the headers one per line,
    /// `Content-Length` when there is a body, and the body.
    pub fn write(&self, cseq: Option<&str>, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(256);
        let _ = write!(head, "RTSP/1.0 {} {}\r\n", self.status, reason(self.status));
        if let Some(cseq) = cseq {
            let _ = write!(head, "CSeq: {cseq}\r\n");
        }
        head.push_str("Server: surv\r\n");
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !self.body.is_empty() {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// The reason phrase of a status code (RFC 2326 §7.1.1).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => "Error",
    }
}

/// The methods surv answers (OPTIONS' `Public`): players send GET_PARAMETER as a keep-alive
/// only when it is listed here.
pub const PUBLIC: &str =
    "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// Takes apart what a player sent as the server does, ignoring the outcome: every message in
/// `bytes` parsed, and of each request its mount, Transport offers and Digest answer read.
/// For the fuzz target `rtsp_request` and its corpus replay; no input may panic.
pub fn examine(mut bytes: &[u8]) {
    use rtsp_types::headers::AUTHORIZATION;
    use rtsp_types::Message;
    // At most as many messages as a connection's buffer could hold.
    for _ in 0..64 {
        let Ok((message, used)) = Message::<Vec<u8>>::parse(bytes) else {
            return;
        };
        if let Message::Request(req) = &message {
            let _ = mount(req.request_uri().map_or("", |u| u.path()));
            if let Ok(Some(offered)) = req.typed_header::<Transports>() {
                let _ = pick_transport(&offered, IpAddr::from([127, 0, 0, 1]));
            }
            if let Some(auth) = req.header(&AUTHORIZATION) {
                let _ = crate::auth::DigestAnswer::parse(auth.as_str(), "DESCRIBE");
                let _ = crate::auth::http_presented(Some(auth.as_str().as_bytes()), None);
            }
        }
        if used == 0 || used > bytes.len() {
            return;
        }
        bytes = &bytes[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtsp_types::{Message, Request};

    fn request(text: &str) -> Request<Vec<u8>> {
        match Message::<Vec<u8>>::parse(text.as_bytes()).unwrap().0 {
            Message::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn transports(header: &str) -> Transports {
        let r = request(&format!(
            "SETUP rtsp://h/main/stream=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: {header}\r\n\r\n"
        ));
        r.typed_header::<Transports>().unwrap().unwrap()
    }

    #[test]
    fn uris_name_a_camera_and_a_stream() {
        assert_eq!(mount("/main"), Some((Some("main"), Stream::H264)));
        assert_eq!(mount("/main/"), Some((Some("main"), Stream::H264)));
        assert_eq!(mount("/main/stream=0"), Some((Some("main"), Stream::H264)));
        assert_eq!(mount("/door/trackID=0"), Some((Some("door"), Stream::H264)));
        assert_eq!(mount("/door/mjpeg/"), Some((Some("door"), Stream::Jpeg)));
        assert_eq!(
            mount("/door/mjpeg/stream=0"),
            Some((Some("door"), Stream::Jpeg))
        );
        assert_eq!(mount("/"), Some((None, Stream::H264)));
        assert_eq!(mount(""), Some((None, Stream::H264)));
        assert_eq!(mount("/door/h265"), None);
        assert_eq!(mount("/a/b/c"), None);
    }

    #[test]
    fn transports_the_players_offer() {
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        // ffmpeg over TCP, GStreamer over TCP without channels.
        assert_eq!(
            pick_transport(&transports("RTP/AVP/TCP;unicast;interleaved=0-1"), peer),
            Ok(Delivery::Tcp { channel: 0 })
        );
        assert_eq!(
            pick_transport(&transports("RTP/AVP/TCP;unicast;interleaved=4-5"), peer),
            Ok(Delivery::Tcp { channel: 4 })
        );
        // GStreamer's UDP: no lower transport means UDP.
        assert_eq!(
            pick_transport(&transports("RTP/AVP;unicast;client_port=43002-43003"), peer),
            Ok(Delivery::Udp {
                rtp: "192.0.2.9:43002".parse().unwrap(),
                rtcp: "192.0.2.9:43003".parse().unwrap()
            })
        );
        // A destination elsewhere is refused, the next offer taken.
        assert_eq!(
            pick_transport(
                &transports(
                    "RTP/AVP/UDP;unicast;client_port=5000-5001;destination=198.51.100.1,RTP/AVP/TCP;unicast;interleaved=0-1"
                ),
                peer
            ),
            Ok(Delivery::Tcp { channel: 0 })
        );
        assert!(pick_transport(&transports("RTP/AVP;multicast"), peer).is_err());
        assert!(pick_transport(&transports("RTP/AVP;unicast;client_port=53-54"), peer).is_err());
        assert!(pick_transport(&transports("RTP/AVP;unicast"), peer).is_err());
        assert!(pick_transport(&transports("RTP/AVP/TCP;unicast;interleaved=255"), peer).is_err());
    }

    #[test]
    fn the_reply_keeps_two_challenges_on_two_lines() {
        let mut out = Vec::new();
        Reply::new(401)
            .header("WWW-Authenticate", "Digest realm=\"surv\", nonce=\"n\"")
            .header("WWW-Authenticate", "Basic realm=\"surv\"")
            .write(Some("2"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nServer: surv\r\n\
             WWW-Authenticate: Digest realm=\"surv\", nonce=\"n\"\r\n\
             WWW-Authenticate: Basic realm=\"surv\"\r\n\r\n"
        );
        let mut out = Vec::new();
        Reply::new(200)
            .body("application/sdp", "v=0\r\n")
            .write(None, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"));
    }

    #[test]
    fn the_sdp_carries_the_parameter_sets_and_parses() {
        let ps = ParameterSets {
            sps: bytes::Bytes::from_static(&[
                0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x68, 0x05, 0x00, 0x5b, 0xa0, 0x1e, 0x11, 0x08, 0xd4,
            ]),
            pps: bytes::Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
        };
        let text = sdp(&Describe {
            camera: "main",
            stream: Stream::H264,
            origin: "127.0.0.1".parse().unwrap(),
            fps: 30,
            parameter_sets: Some(&ps),
        });
        assert!(text.contains(
            "a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAH4xoBQBboB4RCNQ=,aM48gA==\r\n"
        ), "{text}");
        let parsed = sdp_types::Session::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.medias.len(), 1);
        assert_eq!(parsed.medias[0].fmt, "96");
        let jpeg = sdp(&Describe {
            camera: "door",
            stream: Stream::Jpeg,
            origin: "::1".parse().unwrap(),
            fps: 0,
            parameter_sets: None,
        });
        let parsed = sdp_types::Session::parse(jpeg.as_bytes()).unwrap();
        assert_eq!(parsed.medias[0].fmt, "26");
        assert!(jpeg.contains("c=IN IP6 ::\r\n"), "{jpeg}");
    }

    /// The fuzz corpus (fuzz/corpus/rtsp_request), replayed: what libFuzzer found stays fixed.
    #[test]
    fn the_fuzz_corpus_replays() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rtsp_request");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            examine(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= 6, "the corpus went missing: {n} files");
        // And the seeds parse as what they are.
        let seed = std::fs::read(dir.join("gst-setup-udp")).unwrap();
        let req = match Message::<Vec<u8>>::parse(&seed).unwrap().0 {
            Message::Request(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            mount(req.request_uri().unwrap().path()),
            Some((Some("main"), Stream::Jpeg))
        );
    }
}
