//! `--source`: what the user asked for ([`SourceSpec`]), and building that source.
//!
//! One parser for every form, so `--help`, the README and the error a user sees for a typo all
//! come from one list ([`FORMS`]). Building ([`SourceSpec::build`]) is where each kind's module
//! is reached from; the options every kind may use travel in [`SourceOptions`].

use std::fmt;
use std::net::IpAddr;

pub use ipnet::IpNet;
use std::path::PathBuf;

use super::{
    camera, file, rtsp, tcp, udp, FrameReader, OnThread, Source, SourceError, TestPattern,
};

/// The `--source` forms, for `--help` and for errors.
pub const FORMS: &str =
    "test | cam | udp://HOST:PORT | tcp-listen://HOST:PORT | tcp://HOST:PORT | \
     http://[USER:PASS@]HOST[:PORT]/PATH | rtsp://[USER:PASS@]HOST[:PORT]/PATH | file:PATH | PATH";

/// Default cap on one frame read from a network or file source (`--max-frame-bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Where frames come from, as given to `--source` (or `--cam N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The built-in test pattern.
    Test,
    /// A V4L2 camera, `/dev/videoN`.
    Cam(u32),
    /// Seed 001's Raspberry Pi: each datagram to this address is one whole JPEG.
    Udp { host: String, port: u16 },
    /// A camera that connects to surv (seed 004's sendvid.py, OAK `tcp_streaming_client`).
    TcpListen { host: String, port: u16 },
    /// A camera surv connects to (OAK `tcp_streaming_server`).
    TcpConnect { host: String, port: u16 },
    /// An MJPEG stream or a still-image URL (the whole `http://…` URL, credentials included).
    Http { url: String },
    /// An RTSP camera (the whole `rtsp://…` URL, credentials included).
    Rtsp { url: String },
    /// A video file, a still image, or a folder of JPEGs.
    File { path: PathBuf },
}

/// How RTSP media travels from the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    /// Interleaved in the RTSP TCP connection: works through NAT and firewalls.
    #[default]
    Tcp,
    /// RTP over UDP: less latency on a good LAN, frames lost on a bad one.
    Udp,
}

/// Settings a source may honour (which ones each kind uses is in its module's docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOptions {
    /// `--size`: what a camera or the test pattern captures at, and the "no signal" frame's
    /// size before a source has said its own.
    pub width: u32,
    pub height: u32,
    /// `--fps`: capture rate of cameras and the test pattern; the rate stills and folders are
    /// shown at.
    pub fps: u32,
    /// No frame larger than this is read into memory (`--max-frame-bytes`).
    pub max_frame_bytes: usize,
    /// Push sources accept only peers inside these networks; empty = any (`--source-allow`).
    pub allow: Vec<IpNet>,
    /// Video files start again at the end (`--loop`).
    pub looped: bool,
    /// `--rtsp-transport`.
    pub rtsp_transport: RtspTransport,
}

impl Default for SourceOptions {
    fn default() -> SourceOptions {
        SourceOptions {
            width: 640,
            height: 480,
            fps: 30,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            allow: Vec::new(),
            looped: false,
            rtsp_transport: RtspTransport::Tcp,
        }
    }
}

impl SourceOptions {
    /// Whether a push source takes frames from `peer` (`--source-allow`; empty allows any).
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net_contains(net, peer))
    }
}

/// Parses a `--source-allow` network: `10.0.0.0/8`, `fd00::/8`, or a bare address (one host).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or an ADDR/BITS network"))
}

/// Whether `ip` is inside `net`; an IPv4-mapped IPv6 peer counts as its IPv4 address.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    net.contains(&ip)
}

impl SourceSpec {
    /// Parses a `--source` value (see [`FORMS`]).
    pub fn parse(text: &str) -> Result<SourceSpec, String> {
        let text = text.trim();
        match text {
            "" => return Err(format!("an empty --source; use one of: {FORMS}")),
            "test" => return Ok(SourceSpec::Test),
            "cam" => return Ok(SourceSpec::Cam(0)),
            _ => {}
        }
        if let Some(path) = text.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:clip.mp4".into());
            }
            return Ok(SourceSpec::File { path: path.into() });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(SourceSpec::File { path: text.into() });
        };
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "udp" => host_port(&scheme, rest).map(|(host, port)| SourceSpec::Udp { host, port }),
            "tcp-listen" => {
                host_port(&scheme, rest).map(|(host, port)| SourceSpec::TcpListen { host, port })
            }
            "tcp" => {
                host_port(&scheme, rest).map(|(host, port)| SourceSpec::TcpConnect { host, port })
            }
            "http" | "https" | "rtsp" => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = authority.rsplit('@').next().unwrap_or("");
                if host.is_empty() {
                    return Err(format!("{text:?} has no host"));
                }
                if scheme == "https" {
                    return Err(
                        "https:// sources are not supported (surv has no TLS client); \
                         use the camera's http:// URL on a trusted network"
                            .into(),
                    );
                }
                let url = format!("{scheme}://{rest}");
                Ok(if scheme == "rtsp" {
                    SourceSpec::Rtsp { url }
                } else {
                    SourceSpec::Http { url }
                })
            }
            other => Err(format!(
                "unknown source scheme {other:?}; use one of: {FORMS}"
            )),
        }
    }

    /// A local camera or the test pattern: these must work at start-up (a failure there is an
    /// error). Network and file sources may come later: a warning, then retries.
    pub fn must_work_at_start(&self) -> bool {
        matches!(self, SourceSpec::Test | SourceSpec::Cam(_))
    }

    /// Builds the source. Only settings are checked here; nothing is opened until it runs.
    pub fn build(&self, opts: &SourceOptions) -> Result<Box<dyn Source>, SourceError> {
        let (width, height, fps) = (opts.width, opts.height, opts.fps);
        match self {
            SourceSpec::Test => {
                // Checked here so that a bad --size or --fps is a clear error, not a lost source.
                TestPattern::new(width, height, fps)?;
                Ok(Box::new(OnThread::new(
                    format!("test pattern {width}x{height}@{fps}"),
                    move || {
                        Ok(Box::new(TestPattern::new(width, height, fps)?) as Box<dyn FrameReader>)
                    },
                )))
            }
            &SourceSpec::Cam(index) => Ok(Box::new(OnThread::new(
                format!("camera {index}"),
                move || {
                    Ok(Box::new(camera::open(index, width, height, fps)?) as Box<dyn FrameReader>)
                },
            ))),
            SourceSpec::Rtsp { url } => Ok(Box::new(rtsp::RtspSource::new(
                url,
                opts.rtsp_transport,
                opts.max_frame_bytes,
            )?)),
            SourceSpec::File { path } => Ok(Box::new(file::FileSource::new(path.clone(), opts)?)),
            SourceSpec::Http { url } => Ok(Box::new(super::http::HttpSource::new(url, opts)?)),
            SourceSpec::Udp { host, port } => Ok(Box::new(udp::UdpSource::new(host, *port, opts))),
            SourceSpec::TcpListen { host, port } => {
                Ok(Box::new(tcp::TcpListenSource::new(host, *port, opts)))
            }
            SourceSpec::TcpConnect { host, port } => {
                Ok(Box::new(tcp::TcpConnectSource::new(host, *port, opts)))
            }
        }
    }
}

/// A source as the user would write it, with any password hidden.
impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Test => f.write_str("test"),
            SourceSpec::Cam(n) => write!(f, "camera {n}"),
            SourceSpec::Udp { host, port } => write!(f, "udp://{}:{port}", bracket(host)),
            SourceSpec::TcpListen { host, port } => {
                write!(f, "tcp-listen://{}:{port}", bracket(host))
            }
            SourceSpec::TcpConnect { host, port } => write!(f, "tcp://{}:{port}", bracket(host)),
            SourceSpec::Http { url } | SourceSpec::Rtsp { url } => f.write_str(&redact(url)),
            SourceSpec::File { path } => write!(f, "file:{}", path.display()),
        }
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`, for logs and the journal.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `HOST:PORT` or `[V6]:PORT`, nothing after it.
fn host_port(scheme: &str, rest: &str) -> Result<(String, u16), String> {
    let rest = rest.trim_end_matches('/');
    let usage = || format!("{scheme}:// needs HOST:PORT, e.g. {scheme}://0.0.0.0:5000");
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6.split_once("]:").ok_or_else(usage)?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or_else(usage)?
    };
    if host.is_empty() || host.contains(['/', '@', '[', ']']) {
        return Err(usage());
    }
    let port: u16 = port.parse().map_err(|_| usage())?;
    if port == 0 {
        return Err(format!("{scheme}://{host}:0 — give the real port number"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        let ok = |s: &str| SourceSpec::parse(s).unwrap();
        assert_eq!(ok("test"), SourceSpec::Test);
        assert_eq!(ok("cam"), SourceSpec::Cam(0));
        assert_eq!(
            ok("udp://0.0.0.0:5000"),
            SourceSpec::Udp {
                host: "0.0.0.0".into(),
                port: 5000
            }
        );
        assert_eq!(
            ok("tcp-listen://[::1]:8000"),
            SourceSpec::TcpListen {
                host: "::1".into(),
                port: 8000
            }
        );
        assert_eq!(
            ok("TCP://cam.local:5000/"),
            SourceSpec::TcpConnect {
                host: "cam.local".into(),
                port: 5000
            }
        );
        assert_eq!(
            ok("http://u:p@10.0.0.9/stream"),
            SourceSpec::Http {
                url: "http://u:p@10.0.0.9/stream".into()
            }
        );
        assert_eq!(
            ok("rtsp://cam:554/h264"),
            SourceSpec::Rtsp {
                url: "rtsp://cam:554/h264".into()
            }
        );
        assert_eq!(
            ok("file:clips/a.mp4"),
            SourceSpec::File {
                path: "clips/a.mp4".into()
            }
        );
        assert_eq!(
            ok("/var/images"),
            SourceSpec::File {
                path: "/var/images".into()
            }
        );
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for bad in [
            "",
            "udp://",
            "udp://host",
            "udp://:5000",
            "udp://host:0",
            "udp://host:99999",
            "tcp://a@b:5",
            "http:///path",
            "https://cam/x",
            "gopher://x:1",
            "file:",
        ] {
            let err = SourceSpec::parse(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_reach_logs() {
        let spec = SourceSpec::parse("rtsp://admin:hunter2@cam:554/live?x=1").unwrap();
        let shown = spec.to_string();
        assert_eq!(shown, "rtsp://admin:***@cam:554/live?x=1");
        assert_eq!(redact("http://cam/x@y"), "http://cam/x@y");
    }

    #[test]
    fn networks_contain_their_hosts_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let opts = |nets: &[&str]| SourceOptions {
            allow: nets.iter().map(|n| parse_net(n).unwrap()).collect(),
            ..SourceOptions::default()
        };
        let lan = opts(&["192.168.1.0/24"]);
        assert!(lan.allows(ip("192.168.1.77")));
        assert!(!lan.allows(ip("192.168.2.1")));
        assert!(lan.allows(ip("::ffff:192.168.1.5")));
        let host = opts(&["10.1.2.3", "fd00::/8"]);
        assert!(host.allows(ip("10.1.2.3")));
        assert!(!host.allows(ip("10.1.2.4")));
        assert!(host.allows(ip("fd12::1")));
        assert!(!host.allows(ip("fe80::1")));
        assert!(SourceOptions::default().allows(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "x", "::/129", "1.2.3.4/"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
