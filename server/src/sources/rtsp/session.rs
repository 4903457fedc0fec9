//! Opening an RTSP camera: credentials out of the URL, DESCRIBE, the choice of stream, SETUP and
//! PLAY through retina, each step under a deadline, and failures told the way a user reads them.

use std::time::Duration;

use retina::client::{
    Credentials, Demuxed, PlayOptions, Session, SessionOptions, SetupOptions, Transport,
};
use retina::codec::{FrameFormat, ParametersRef};
use url::Url;

use crate::capture::StreamShape;
use crate::sources::spec::{redact, RtspTransport};

/// How long each step of opening (connect + DESCRIBE, SETUP, PLAY) may take.
pub const OPEN_STEP_TIMEOUT: Duration = Duration::from_secs(8);

/// The codecs surv takes from a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// RFC 2435 RTP/JPEG: whole JPEGs, passed through.
    Mjpeg,
    /// H.264: decoded once, then JPEG-encoded once.
    H264,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Mjpeg => "MJPEG",
            Codec::H264 => "H.264",
        }
    }
}

/// A camera URL split for retina, which takes the login apart from the URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL without user and password.
    pub url: Url,
    pub creds: Option<Credentials>,
}

/// Splits `rtsp://user:pass@host/path` into the bare URL and the (percent-decoded) login.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let mut url = Url::parse(text).map_err(|e| format!("not a valid rtsp:// URL ({e})"))?;
    if url.scheme() != "rtsp" {
        return Err(format!("{:?} is not an rtsp:// URL", redact(text)));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the rtsp:// URL has no host".into());
    }
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| "the login in the URL is not valid UTF-8".to_string())
    };
    let creds = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        Some(Credentials {
            username: decode(url.username())?,
            password: decode(url.password().unwrap_or(""))?,
        })
    };
    // Url's setters only fail for URLs that cannot have a login; this one has a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(Target { url, creds })
}

/// `%40` → `@` etc.; `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// What a camera's DESCRIBE offered, as far as the choice of stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// `video`, `audio`, `image`, `application`…
    pub media: String,
    /// Lowercase, as in the SDP's rtpmap: `h264`, `jpeg`, `h265`…
    pub encoding: String,
}

/// The first video stream surv can use, or why there is none: no video at all, or only codecs
/// surv does not take (named, so the user knows what to change on the camera).
pub fn choose_stream(offered: &[Offered]) -> Result<(usize, Codec), String> {
    let is_video = |o: &Offered| o.media == "video" || (o.media == "image" && o.encoding == "jpeg");
    for (i, o) in offered.iter().enumerate().filter(|(_, o)| is_video(o)) {
        match o.encoding.as_str() {
            "jpeg" => return Ok((i, Codec::Mjpeg)),
            "h264" => return Ok((i, Codec::H264)),
            _ => {}
        }
    }
    let list = |pick: &dyn Fn(&Offered) -> bool| {
        offered
            .iter()
            .filter(|o| pick(o))
            .map(|o| format!("{}/{}", o.media, o.encoding))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let video = list(&is_video);
    if !video.is_empty() {
        return Err(format!(
            "unsupported video codec ({video}); surv takes H.264 or MJPEG: \
             set the camera's stream to one of them"
        ));
    }
    let all = list(&|_| true);
    Err(if all.is_empty() {
        "the camera offers no stream at all".into()
    } else {
        format!("no video stream (the camera offers {all})")
    })
}

/// A playing session, and what was chosen from it.
pub struct Opened {
    pub demuxed: Demuxed,
    pub stream: usize,
    pub codec: Codec,
    /// Size from the SDP's parameters (0 when it does not say), rate from its `a=framerate`
    /// (0 when it does not say: the capture path measures it).
    pub shape: StreamShape,
}

/// Connects, DESCRIBEs, chooses the stream, SETs it up and PLAYs, each step within
/// [`OPEN_STEP_TIMEOUT`].
pub async fn open(target: &Target, transport: RtspTransport) -> Result<Opened, String> {
    let options = SessionOptions::default()
        .creds(target.creds.clone())
        .user_agent(format!("surv/{}", env!("CARGO_PKG_VERSION")));
    let mut session = step("DESCRIBE", Session::describe(target.url.clone(), options)).await?;
    let offered: Vec<Offered> = session
        .streams()
        .iter()
        .map(|s| Offered {
            media: s.media().to_string(),
            encoding: s.encoding_name().to_string(),
        })
        .collect();
    let (stream, codec) = choose_stream(&offered)?;
    let transport = match transport {
        RtspTransport::Tcp => Transport::Tcp(Default::default()),
        RtspTransport::Udp => Transport::Udp(Default::default()),
    };
    let setup = SetupOptions::default()
        .transport(transport)
        .frame_format(FrameFormat::SIMPLE);
    step("SETUP", session.setup(stream, setup)).await?;
    let chosen = &session.streams()[stream];
    let fps = chosen
        .framerate()
        .filter(|f| f.is_finite() && *f >= 1.0 && *f <= 1000.0)
        .map_or(0, |f| f.round() as u32);
    let (width, height) = match chosen.parameters() {
        Some(ParametersRef::Video(v)) => v.pixel_dimensions(),
        _ => (0, 0),
    };
    let playing = step("PLAY", session.play(PlayOptions::default())).await?;
    let demuxed = playing.demuxed().map_err(|e| explain(&e))?;
    Ok(Opened {
        demuxed,
        stream,
        codec,
        shape: StreamShape { width, height, fps },
    })
}

/// One request under the deadline, its failure explained.
async fn step<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(OPEN_STEP_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(explain(&e)),
        Err(_) => Err(format!(
            "no answer to {what} within {} s",
            OPEN_STEP_TIMEOUT.as_secs()
        )),
    }
}

/// The longest reason [`explain`] gives, in bytes: one journal line, and the "no signal" frame.
pub const MAX_REASON_BYTES: usize = 300;

/// A retina error as one short line a user can act on: the error itself (retina's first line;
/// for an answer from the camera: status, request, why) and the camera's address when retina
/// gives one. What retina adds after it for debugging (a hex dump of what it had buffered, the
/// local address, times, stream and packet positions) is left out, and the whole is at most
/// [`MAX_REASON_BYTES`].
pub fn explain(e: &retina::Error) -> String {
    explain_text(e.status_code(), &e.to_string())
}

/// [`explain`] on retina's text and the answer's status code, if it was an answer.
pub(crate) fn explain_text(status: Option<u16>, text: &str) -> String {
    let first = first_line(text);
    let what = match status {
        Some(401) => format!("wrong or missing credentials ({first})"),
        Some(403) => format!("the camera refused this login access ({first})"),
        Some(404) => format!("no such stream on the camera; check the path ({first})"),
        _ => first.to_string(),
    };
    let peer = peer_address(text).map_or(String::new(), |a| format!(" (peer {a})"));
    let mut line = bounded(&what, MAX_REASON_BYTES - peer.len());
    line.push_str(&peer);
    line
}

/// retina's first line, without the lead-in to what follows it (`…; buffered:` before a hex
/// dump, or a trailing colon).
fn first_line(text: &str) -> &str {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line.strip_suffix("buffered:").unwrap_or(line).trim_end();
    line.trim_end_matches([';', ':']).trim_end()
}

/// The camera's address from retina's `conn: LOCAL(me)->PEER@TIME` line.
fn peer_address(text: &str) -> Option<std::net::SocketAddr> {
    let conn = text.lines().find_map(|l| l.trim().strip_prefix("conn: "))?;
    let (_, peer) = conn.split_once("->")?;
    peer.split('@').next()?.trim().parse().ok()
}

/// `text` cut to at most `max` bytes, at a char boundary, ending with "…" when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text[..end].trim_end())
}
