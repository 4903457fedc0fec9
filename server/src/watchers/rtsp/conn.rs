//! One RTSP connection: its requests answered in order and, once it PLAYs, its session's RTP
//! (interleaved on this connection, or over UDP from the shared pair) and RTCP sender reports.
//!
//! Everything the connection sends goes through its [`Link`], so a response is never written
//! into the middle of an interleaved packet; an H.264 session (TCP or UDP) that has caught up is
//! sent by its camera's one writer ([`super::link`]). A connection carries at most one session
//! (one video stream): what every player asks of a server with one stream per URL.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rtsp_types::headers::{Transports, AUTHORIZATION, CSEQ, SESSION};
use rtsp_types::{Message, Method, ParseError, Request};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::link::{By, H264Writer, Link, Offered, Route, Sent};
use super::request::{self, mount, pick_transport, transport_reply, Delivery, Reply, Stream};
use super::{count_sent, Shared};
use crate::auth::{http_presented, DigestAnswer, Presented};
use crate::cameras::Camera;
use crate::capture::h264::{FeedReader, H264Demand, H264Unit};
use crate::capture::{FrameRx, PictureDemand, SharedFrame};
use crate::journal::LeaveReason;
use crate::rtp::{jpeg_timestamp, rtcp, RtpFrame, Stamp};
use crate::watchers::rtp_out::{interleave_prefix, RtpOut};
use crate::watchers::{Membership, RefusalCause, Refused, WatcherKind, Watchers};

/// A request longer than this (headers and body) closes the connection: no RTSP request a
/// player sends comes near it.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// A connection that has sent no request this long after it opened is closed.
const FIRST_REQUEST_WITHIN: Duration = Duration::from_secs(10);
/// A connection that is not playing and sends nothing for this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// A UDP session with no request and no RTCP for this much longer than the session timeout
/// it is told ends (`timeout`), as gortsplib does.
const UDP_SILENCE_GRACE: Duration = Duration::from_secs(5);
/// A player that takes none of what it is sent for this long is dropped (`timeout`).
pub(super) const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How often a playing session gets an RTCP sender report.
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long a DESCRIBE waits for an encoded camera's first parameter sets.
const PARAMETER_SETS_WITHIN: Duration = Duration::from_secs(1);
/// How long a PLAY waits for the first keyframe when the camera has none cached.
const KEYFRAME_WITHIN: Duration = Duration::from_secs(2);
/// The Digest realm (stable: players cache it).
const REALM: &str = "surv";
/// The kernel's send buffer for an RTSP connection: what a player that stops reading can have
/// queued (the kernel doubles it) before the session notices it is behind and skips to a
/// keyframe, instead of the default's several megabytes (seconds of delay at 720p).
const SEND_BUFFER_BYTES: usize = 256 * 1024;

/// Serves one connection until it closes, tears down, times out or the server stops; its
/// session's LEAVE says which.
pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let local_ip = stream
        .local_addr()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    let _ = stream.set_nodelay(true);
    {
        use std::os::fd::AsRawFd as _;
        if let Err(e) =
            crate::sys::set_buffer(stream.as_raw_fd(), libc::SO_SNDBUF, SEND_BUFFER_BYTES)
        {
            tracing::debug!(%peer, error = %e, "RTSP: cannot size the send buffer");
        }
    }
    let (mut read, write) = stream.into_split();
    let mut conn = Conn {
        shared,
        peer,
        local_ip,
        nonce: random_hex(16),
        authed: false,
        demand: None,
        session: None,
        link: Arc::new(Link::new(write)),
        rtp_out: RtpOut::default(),
    };
    let mut buf = BytesMut::with_capacity(4096);
    let reason = conn.run(&mut read, &mut buf, &shutdown).await;
    tracing::debug!(%peer, reason = reason.as_str(), "RTSP connection ends");
    // The write half shuts down when the last holder of the link lets go (the camera's
    // writer lets go at its next unit).
    conn.end(reason);
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Our address as the player reached it (the SDP's origin).
    local_ip: IpAddr,
    /// This connection's Digest nonce.
    nonce: String,
    /// It presented the token once: later requests need not again.
    authed: bool,
    /// Holds the camera's H.264 encoder running from DESCRIBE on.
    demand: Option<H264Demand>,
    session: Option<Session>,
    /// Everything it writes goes here.
    link: Arc<Link>,
    /// Its session's RTP headers, reused frame after frame (but an H.264 session's:
    /// they are in the link).
    rtp_out: RtpOut,
}

/// A SETUP's session, and its PLAY.
struct Session {
    id: String,
    camera: Arc<Camera>,
    stream: Stream,
    delivery: Delivery,
    /// Its SSRC, timestamp base (random: RFC 3550) and one sequence-number run across PAUSE
    /// and PLAY, over the camera's shared packets (an H.264 session: from its PLAY
    /// on, the link's copy goes on).
    stamp: Stamp,
    play: Option<Play>,
}

/// A PLAYing session: a watcher.
struct Play {
    membership: Membership,
    /// What it sent (but an H.264 session's: in the link).
    sent: Sent,
    media: Media,
    /// An `/mjpeg` session keeps the camera's pictures coming (an H.264 camera passed through
    /// is decoded only while someone needs pictures).
    _pictures: Option<PictureDemand>,
    paused: bool,
    last_report: Instant,
}

enum Media {
    /// The cached GOP, then live; behind → skip to a keyframe.
    H264(FeedReader),
    /// H.264, caught up: the camera's writer sends it.
    Handed,
    Jpeg {
        rx: FrameRx,
    },
}

/// What the media side has next.
enum Next {
    Unit(Arc<H264Unit>),
    Picture(Option<SharedFrame>),
    Ended,
}

impl Media {
    async fn next(&mut self) -> Next {
        match self {
            Media::H264(reader) => match reader.next().await {
                Some(unit) => Next::Unit(unit),
                None => Next::Ended,
            },
            Media::Jpeg { rx } => match rx.changed().await {
                Ok(()) => Next::Picture(rx.borrow_and_update().clone()),
                Err(_) => Next::Ended,
            },
            Media::Handed => std::future::pending().await,
        }
    }
}

/// What a request leaves the connection to do after its reply.
#[derive(Debug, PartialEq, Eq)]
enum After {
    Continue,
    /// TEARDOWN: the session ends (`end`), and the connection.
    Teardown,
}

impl Conn {
    async fn run(
        &mut self,
        read: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut BytesMut,
        shutdown: &CancellationToken,
    ) -> LeaveReason {
        let opened = Instant::now();
        let mut last_request: Option<Instant> = None;
        let mut tick = tokio::time::interval_at(aligned_second(opened), Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::with_capacity(64 * 1024);
        // Made once, not per turn of the loop: each `cancelled()` future locks its token to
        // register and again to leave, which per frame and session adds up.
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        // The camera's stop, once a SETUP names the camera (it does not change after).
        let mut camera_ends: Option<Pin<Box<WaitForCancellationFutureOwned>>> = None;
        // A write left bytes waiting (or failed): finish it.
        let link = self.link.clone();
        let unfinished = link.wake.notified();
        tokio::pin!(unfinished);
        loop {
            if camera_ends.is_none() {
                camera_ends = self
                    .session
                    .as_ref()
                    .map(|s| Box::pin(s.camera.stop.clone().cancelled_owned()));
            }
            let camera = async {
                match camera_ends.as_mut() {
                    Some(ends) => ends.await,
                    None => std::future::pending().await,
                }
            };
            let play = self
                .session
                .as_mut()
                .and_then(|s| s.play.as_mut())
                .filter(|p| !p.paused && !matches!(p.media, Media::Handed));
            let playing = play.is_some();
            let media = async {
                match play {
                    Some(p) => p.media.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return LeaveReason::Shutdown,
                () = camera => return LeaveReason::Shutdown,
                () = &mut unfinished => {
                    unfinished.set(link.wake.notified());
                    if let Err(reason) = link.flush().await {
                        return reason;
                    }
                }
                n = read.read_buf(buf) => {
                    match n {
                        Ok(0) => return LeaveReason::Closed,
                        Err(_) => return LeaveReason::Error,
                        Ok(_) => {}
                    }
                    loop {
                        let parsed = Message::<Vec<u8>>::parse(&buf[..]);
                        match parsed {
                            Ok((message, used)) => {
                                buf.advance(used);
                                last_request = Some(Instant::now());
                                let Message::Request(req) = message else {
                                    // RTCP from the player on its interleaved channel, or a
                                    // stray response: a sign of life, nothing to answer.
                                    continue;
                                };
                                out.clear();
                                let after = self.answer(&req, &mut out).await;
                                if let Err(reason) = link.write_all(&out).await {
                                    return reason;
                                }
                                if after == After::Teardown {
                                    return LeaveReason::End;
                                }
                            }
                            Err(ParseError::Incomplete(needed)) => {
                                let wanted = buf
                                    .len()
                                    .saturating_add(needed.map_or(1, |n| n.get()));
                                if wanted > MAX_REQUEST_BYTES {
                                    return self.bad_request("request too long").await;
                                }
                                break;
                            }
                            Err(ParseError::Error) => {
                                return self.bad_request("not an RTSP request").await;
                            }
                        }
                    }
                }
                next = media, if playing => {
                    if let Err(reason) = self.send(next).await {
                        return reason;
                    }
                }
                _ = tick.tick() => {
                    self.count_send_errors();
                    let now = Instant::now();
                    let quiet = now.duration_since(last_request.unwrap_or(opened));
                    match self.session.as_ref().and_then(|s| s.play.as_ref().map(|p| (s, p))) {
                        None if last_request.is_none() && quiet > FIRST_REQUEST_WITHIN => {
                            return LeaveReason::Timeout;
                        }
                        None if quiet > IDLE_LIMIT => return LeaveReason::Timeout,
                        None => {}
                        Some((s, _)) => {
                            if let Delivery::Udp { rtp, rtcp } = s.delivery {
                                let heard = [rtp, rtcp]
                                    .iter()
                                    .filter_map(|a| self.shared.heard.get(a).map(|t| *t))
                                    .max();
                                let silent = heard.map_or(quiet, |h| quiet.min(now.duration_since(h)));
                                if silent > self.shared.session_timeout + UDP_SILENCE_GRACE {
                                    return LeaveReason::Timeout;
                                }
                            }
                        }
                    }
                    if let Err(reason) = self.report(&mut out).await {
                        return reason;
                    }
                }
            }
        }
    }

    /// Answers a request that is no RTSP (or too long): 400, and the connection closes.
    async fn bad_request(&self, why: &str) -> LeaveReason {
        self.shared
            .server
            .stats
            .rtsp
            .bad_requests
            .fetch_add(1, Relaxed);
        tracing::info!(peer = %self.peer, why, "RTSP: closing a connection");
        let mut out = Vec::new();
        Reply::new(400).write(None, &mut out);
        let _ = self.link.write_all(&out).await;
        LeaveReason::Error
    }

    /// Answers one request into `out`.
    async fn answer(&mut self, req: &Request<Vec<u8>>, out: &mut Vec<u8>) -> After {
        let shared = self.shared.clone();
        let stats = &shared.server.stats.rtsp;
        stats.requests.fetch_add(1, Relaxed);
        let cseq = req.header(&CSEQ).map(|v| v.as_str().to_string());
        let (reply, after) = match self.handle(req).await {
            Ok(done) => done,
            Err(reply) => (reply, After::Continue),
        };
        if reply.status >= 400 {
            stats.errors.fetch_add(1, Relaxed);
        }
        reply.write(cseq.as_deref(), out);
        after
    }

    /// The reply to `req`; `Err` is an error reply.
    async fn handle(&mut self, req: &Request<Vec<u8>>) -> Result<(Reply, After), Reply> {
        let method = req.method();
        let ok = |reply: Reply| Ok((reply, After::Continue));
        match method {
            Method::Options => {
                ok(self.with_session(Reply::new(200).header("Public", request::PUBLIC)))
            }
            Method::Describe => {
                self.authorize(req, "DESCRIBE")?;
                ok(self.describe(req).await?)
            }
            Method::Setup => {
                self.authorize(req, "SETUP")?;
                ok(self.setup(req)?)
            }
            Method::Play => {
                self.authorize(req, "PLAY")?;
                self.check_session(req)?;
                ok(self.play(req).await?)
            }
            Method::Pause => {
                self.check_session(req)?;
                self.halt();
                ok(self.with_session(Reply::new(200)))
            }
            Method::Teardown => {
                self.check_session(req)?;
                self.halt();
                Ok((Reply::new(200), After::Teardown))
            }
            Method::GetParameter | Method::SetParameter => {
                self.check_session(req)?;
                ok(self.with_session(Reply::new(200)))
            }
            _ => Err(Reply::new(501).header("Public", request::PUBLIC)),
        }
    }

    /// PAUSE or TEARDOWN: nothing is sent to the session after its reply. An H.264 session
    /// leaves the camera's writer first (which could otherwise send a frame between the reply
    /// and the connection's end) and drops the datagrams still waiting for the shared socket
    /// ([`Link::pause_h264`]).
    fn halt(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if let Some(play) = session.play.as_mut() {
            play.paused = true;
            if session.stream == Stream::H264 {
                self.link.pause_h264(true);
                H264Writer::leave(&session.camera, &self.link);
            }
        }
    }

    /// `reply` with the session's header, when there is a session.
    fn with_session(&self, reply: Reply) -> Reply {
        match &self.session {
            Some(s) => reply.header(
                "Session",
                format!("{};timeout={}", s.id, self.shared.session_timeout.as_secs()),
            ),
            None => reply,
        }
    }

    /// A Session header that is not this connection's session: 454.
    fn check_session(&self, req: &Request<Vec<u8>>) -> Result<(), Reply> {
        let Some(given) = req.header(&SESSION) else {
            return Ok(());
        };
        let id = given.as_str().split(';').next().unwrap_or("").trim();
        match &self.session {
            Some(s) if s.id == id => Ok(()),
            _ => Err(Reply::new(454)),
        }
    }

    /// With `--token`: the token as the password of Basic or Digest authentication, once per
    /// connection. No credentials at all is every player's first try: answered with the two
    /// challenges, not counted; a wrong answer is counted, journalled and throttled like any.
    fn authorize(&mut self, req: &Request<Vec<u8>>, method: &str) -> Result<(), Reply> {
        let server = &self.shared.server;
        if self.authed || !server.access.requires_token() {
            return Ok(());
        }
        let challenge = || {
            Reply::new(401)
                .header(
                    "WWW-Authenticate",
                    format!(
                        "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=MD5",
                        self.nonce
                    ),
                )
                .header("WWW-Authenticate", format!("Basic realm=\"{REALM}\""))
        };
        let Some(header) = req.header(&AUTHORIZATION).map(|v| v.as_str()) else {
            return Err(challenge());
        };
        let kind = WatcherKind::Rtsp.as_str();
        let verdict = if header.trim_start().starts_with("Digest ") {
            match DigestAnswer::parse(header, method) {
                // An answer to another connection's challenge: challenge again.
                Some(a) if a.nonce != self.nonce || a.realm != REALM => return Err(challenge()),
                Some(a) => {
                    server
                        .access
                        .check(&server.stats, self.peer, kind, Presented::Digest(&a))
                }
                None => server
                    .access
                    .check(&server.stats, self.peer, kind, Presented::Nothing),
            }
        } else {
            match http_presented(Some(header.as_bytes()), None) {
                Some(token) => {
                    server
                        .access
                        .check(&server.stats, self.peer, kind, Presented::Token(&token))
                }
                None => server
                    .access
                    .check(&server.stats, self.peer, kind, Presented::Nothing),
            }
        };
        match verdict {
            Ok(()) => {
                self.authed = true;
                Ok(())
            }
            Err(denied) => {
                Refused::new(RefusalCause::Unauthorized, denied.to_string()).record(
                    server,
                    self.peer,
                    Some(WatcherKind::Rtsp),
                );
                Err(challenge())
            }
        }
    }

    /// The camera and stream `req`'s URI names, or 404 (counted and journalled as a refusal).
    fn camera(&self, req: &Request<Vec<u8>>) -> Result<(Arc<Camera>, Stream), Reply> {
        let server = &self.shared.server;
        let path = req.request_uri().map_or("", |u| u.path());
        let Some((name, stream)) = mount(path) else {
            return Err(Reply::new(404));
        };
        server
            .cameras
            .pick(name)
            .map(|camera| (camera, stream))
            .map_err(|reason| {
                Refused::new(RefusalCause::UnknownCamera, reason).record(
                    server,
                    self.peer,
                    Some(WatcherKind::Rtsp),
                );
                Reply::new(404)
            })
    }

    async fn describe(&mut self, req: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        let (camera, stream) = self.camera(req)?;
        let feed = camera.capture.h264.clone();
        let parameter_sets = match stream {
            Stream::H264 => {
                // An encoded camera starts its encoder now, so that the SDP can carry the
                // parameter sets and PLAY finds a keyframe waiting.
                self.demand = Some(feed.demand());
                let mut params = feed.params();
                if params.borrow().is_none() {
                    let _ = timeout(PARAMETER_SETS_WITHIN, params.wait_for(Option::is_some)).await;
                }
                let ps = params.borrow().clone();
                ps
            }
            Stream::Jpeg => None,
        };
        let sdp = request::sdp(&request::Describe {
            camera: &camera.name,
            stream,
            origin: self.local_ip,
            fps: camera.capture.shape().fps,
            parameter_sets: parameter_sets.as_ref(),
        });
        Ok(Reply::new(200)
            .header("Content-Base", content_base(req))
            .body("application/sdp", sdp))
    }

    fn setup(&mut self, req: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        let (camera, stream) = self.camera(req)?;
        let offered = match req.typed_header::<Transports>() {
            Ok(Some(t)) => t,
            _ => return Err(Reply::new(461)),
        };
        let delivery = pick_transport(&offered, self.peer.ip())
            .map_err(|why| Reply::new(461).header("X-Reason", why.to_string()))?;
        self.check_session(req)?;
        if let Some(s) = &self.session {
            if s.play.is_some() || !Arc::ptr_eq(&s.camera, &camera) || s.stream != stream {
                // One stream a session, set up once.
                return Err(Reply::new(459));
            }
        }
        if stream == Stream::H264 && self.demand.is_none() {
            self.demand = Some(camera.capture.h264.demand());
        }
        let ssrc = random_u32();
        let stamp = Stamp::new(ssrc, random_u32(), random_u32() as u16);
        let id = match self.session.take() {
            Some(s) => {
                self.forget_udp(&s);
                s.id
            }
            None => random_hex(16),
        };
        if let Delivery::Udp { rtp, rtcp } = delivery {
            let now = Instant::now();
            self.shared.heard.insert(rtp, now);
            self.shared.heard.insert(rtcp, now);
        }
        self.session = Some(Session {
            id,
            camera,
            stream,
            delivery,
            stamp,
            play: None,
        });
        Ok(self.with_session(Reply::new(200).header(
            "Transport",
            transport_reply(delivery, self.shared.server_ports, ssrc),
        )))
    }

    async fn play(&mut self, req: &Request<Vec<u8>>) -> Result<Reply, Reply> {
        let server = self.shared.server.clone();
        let peer = self.peer;
        let Some(session) = self.session.as_mut() else {
            return Err(Reply::new(455));
        };
        if let Some(play) = session.play.as_mut() {
            // PLAY after PAUSE: H.264 goes on from a keyframe.
            if play.paused && session.stream == Stream::H264 {
                if matches!(play.media, Media::Handed) {
                    let fps = session.camera.capture.shape().fps;
                    play.media =
                        Media::H264(FeedReader::join(session.camera.capture.h264.clone(), fps));
                }
                self.link.pause_h264(false);
                H264Writer::join(&self.shared, &session.camera, self.link.clone());
            }
            play.paused = false;
            if let Media::H264(reader) = &mut play.media {
                reader.restart_at_keyframe();
            }
        } else {
            let slot = Watchers::admit(&server).map_err(|refused| {
                refused.record(&server, peer, Some(WatcherKind::Rtsp));
                Reply::new(453).header("X-Reason", refused.reason)
            })?;
            let media = match session.stream {
                Stream::H264 => {
                    let fps = session.camera.capture.shape().fps;
                    let mut reader = FeedReader::join(session.camera.capture.h264.clone(), fps);
                    reader.wait_for_keyframe(KEYFRAME_WITHIN).await;
                    Media::H264(reader)
                }
                Stream::Jpeg => {
                    let mut rx = session.camera.frames.clone();
                    // The newest frame goes out at once.
                    rx.mark_changed();
                    Media::Jpeg { rx }
                }
            };
            let pictures =
                (session.stream == Stream::Jpeg).then(|| session.camera.capture.want_pictures());
            let sent = Sent::default();
            let membership =
                slot.join_reporting(WatcherKind::Rtsp, peer, &session.camera, sent.live.clone());
            // An H.264 session: the link sends it, with the camera's writer once caught up.
            if session.stream == Stream::H264 {
                let camera = &session.camera;
                let route = match session.delivery {
                    Delivery::Tcp { channel } => Route::Tcp(channel),
                    Delivery::Udp { rtp, .. } => Route::Udp {
                        socket: self.shared.rtp.clone(),
                        dest: rtp,
                    },
                };
                self.link.start_h264(
                    session.stamp.clone(),
                    route,
                    sent.live.clone(),
                    camera.capture.h264.clone(),
                    camera.capture.shape().fps,
                );
                H264Writer::join(&self.shared, camera, self.link.clone());
            }
            session.play = Some(Play {
                membership,
                sent,
                media,
                _pictures: pictures,
                paused: false,
                last_report: Instant::now(),
            });
        }
        let next_seq = self
            .link
            .with_h264(|h| h.stamp.next_seq())
            .unwrap_or_else(|| session.stamp.next_seq());
        let mut info = format!(
            "url={};seq={next_seq}",
            content_base(req).trim_end_matches('/')
        );
        if let Some(ts) = session
            .play
            .as_ref()
            .and_then(|p| first_ts(&session.stamp, p))
        {
            info.push_str(&format!(";rtptime={ts}"));
        }
        let id = session.id.clone();
        Ok(Reply::new(200)
            .header(
                "Session",
                format!("{id};timeout={}", self.shared.session_timeout.as_secs()),
            )
            .header("Range", "npt=now-")
            .header("RTP-Info", info))
    }

    /// Sends what the media side had next.
    async fn send(&mut self, next: Next) -> Result<(), LeaveReason> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let Some(play) = session.play.as_mut() else {
            return Ok(());
        };
        let packets = &session.camera.rtp;
        let stats = &self.shared.server.stats;
        let (frame, capture_unix_us) = match (next, &mut play.media) {
            (Next::Ended, _) => return Err(LeaveReason::Shutdown),
            (Next::Unit(unit), Media::H264(reader)) => {
                let frame = packets.h264(&unit);
                match self.link.offer(&unit, &frame, By::Session) {
                    Offered::Sent { bytes, packets } => {
                        count_sent(stats, 1, packets as u64, bytes as u64);
                        self.link.flush().await?;
                        // Behind: the queued units are skipped, and it resumes at a keyframe.
                        reader.check_lag();
                    }
                    Offered::Skipped | Offered::Already => {}
                    // The camera's writer has it now.
                    Offered::NotMine => play.media = Media::Handed,
                    Offered::Broken => return Err(LeaveReason::Closed),
                }
                return Ok(());
            }
            (Next::Picture(Some(picture)), Media::Jpeg { .. }) => {
                play.sent.tally.seen(picture.seq);
                let Some(jpeg) = picture.jpeg() else {
                    return Ok(());
                };
                match packets.jpeg(picture.seq, jpeg, picture.capture_unix_us) {
                    Ok(frame) => (frame, picture.capture_unix_us),
                    Err(unfit) => {
                        if stats.rtsp.jpeg_unfit.fetch_add(1, Relaxed) == 0 {
                            tracing::warn!(camera = %session.camera.name, reason = %unfit,
                                "RTP/JPEG: a frame cannot be sent as RTP/JPEG; skipped (counted)");
                        }
                        return Ok(());
                    }
                }
            }
            _ => return Ok(()),
        };
        let bytes = deliver(
            &self.shared,
            session.delivery,
            &mut session.stamp,
            &frame,
            &self.link,
            &mut self.rtp_out,
        )
        .await?;
        play.sent
            .frame(&session.stamp, &frame, bytes, capture_unix_us);
        // Behind: the queued frames are skipped, and H.264 resumes at a keyframe.
        if let Media::H264(reader) = &mut play.media {
            reader.check_lag();
        }
        Ok(())
    }

    /// An RTCP sender report, every [`SENDER_REPORT_EVERY`] while playing.
    async fn report(&mut self, out: &mut Vec<u8>) -> Result<(), LeaveReason> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let Some(play) = session.play.as_mut() else {
            return Ok(());
        };
        if play.paused || play.last_report.elapsed() < SENDER_REPORT_EVERY {
            return Ok(());
        }
        let from = |stamp: &Stamp, sent: &Sent| {
            sent.last.map(|(ts, unix_us)| {
                rtcp::sender_report(
                    stamp.ssrc,
                    unix_us,
                    ts,
                    sent.packets,
                    sent.octets,
                    &session.camera.name,
                )
            })
        };
        let report = if session.stream == Stream::H264 {
            self.link.with_h264(|h| from(&h.stamp, &h.sent)).flatten()
        } else {
            from(&session.stamp, &play.sent)
        };
        let Some(report) = report else {
            return Ok(());
        };
        play.last_report = Instant::now();
        match session.delivery {
            Delivery::Tcp { channel } => {
                out.clear();
                interleave(channel + 1, &report, out);
                self.link.write_all(out).await
            }
            Delivery::Udp { rtcp, .. } => {
                let _ = self.shared.rtcp.send_to(&report, rtcp).await;
                Ok(())
            }
        }
    }

    /// Moves the frames its link lost to UDP send errors into the server's count.
    fn count_send_errors(&self) {
        let lost = self.link.take_send_errors();
        if lost > 0 {
            let stats = &self.shared.server.stats;
            stats.send_errors.fetch_add(lost, Relaxed);
        }
    }

    /// Forgets a UDP session's addresses in the shared pair's table.
    fn forget_udp(&self, session: &Session) {
        if let Delivery::Udp { rtp, rtcp } = session.delivery {
            self.shared.heard.remove(&rtp);
            self.shared.heard.remove(&rtcp);
        }
    }

    /// The connection ended: its session leaves (if it played) with `reason`.
    fn end(mut self, reason: LeaveReason) {
        self.count_send_errors();
        if let Some(session) = self.session.take() {
            self.forget_udp(&session);
            if let Some(play) = session.play {
                let tally = if session.stream == Stream::H264 {
                    H264Writer::leave(&session.camera, &self.link);
                    self.link.end_h264().unwrap_or_default()
                } else {
                    play.sent.tally
                };
                play.membership.leave(reason, &tally);
            }
        }
    }
}

/// The next whole second of the runtime's clock since the first connection: every
/// connection's 1 s tick falls on the same instant, so that a hundred sessions' ticks wake the
/// runtime once a second instead of a hundred times.
fn aligned_second(now: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let since = now.saturating_duration_since(epoch);
    epoch + Duration::from_secs(since.as_secs() + 1)
}

/// The RTP timestamp PLAY's RTP-Info announces: the first frame the session will send.
fn first_ts(stamp: &Stamp, play: &Play) -> Option<u32> {
    match &play.media {
        Media::H264(reader) => reader
            .first()
            .map(|u| stamp.timestamp(u.media_time_90k as u32)),
        Media::Jpeg { rx } => rx
            .borrow()
            .as_ref()
            .map(|f| stamp.timestamp(jpeg_timestamp(f.capture_unix_us))),
        Media::Handed => None,
    }
}

/// Sends a frame's shared packets to the session under its headers; the bytes sent.
async fn deliver(
    shared: &Shared,
    delivery: Delivery,
    stamp: &mut Stamp,
    frame: &RtpFrame,
    link: &Link,
    rtp_out: &mut RtpOut,
) -> Result<usize, LeaveReason> {
    let stats = &shared.server.stats;
    let bytes = match delivery {
        Delivery::Tcp { channel } => link.write_frame(rtp_out, channel, stamp, frame).await?,
        Delivery::Udp { rtp, .. } => {
            let sent = rtp_out.send_udp(&shared.rtp, rtp, stamp, frame).await;
            if sent.failed > 0 {
                stats.send_errors.fetch_add(1, Relaxed);
            }
            sent.bytes
        }
    };
    count_sent(stats, 1, frame.packets.len() as u64, bytes as u64);
    Ok(bytes)
}

/// `$`, the channel, the length, the packet: RFC 2326 §10.12 (an RTCP report: RTP goes out
/// through [`RtpOut`]). Packets are far under the 16-bit length.
fn interleave(channel: u8, packet: &[u8], out: &mut Vec<u8>) {
    let len = packet.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&interleave_prefix(channel, len));
    out.extend_from_slice(&packet[..len]);
}

/// The request's URI with a trailing `/` and no credentials: players resolve `stream=0`
/// against it.
fn content_base(req: &Request<Vec<u8>>) -> String {
    let Some(uri) = req.request_uri() else {
        return String::new();
    };
    let mut uri = uri.clone();
    let _ = uri.set_username("");
    let _ = uri.set_password(None);
    uri.set_query(None);
    let mut base = uri.to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // The OS's generator does not fail on Linux once booted; a fixed value would still work.
    let _ = getrandom::getrandom(&mut b);
    u32::from_be_bytes(b)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = getrandom::getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
