//! A WHEP offer, from the request's bytes to the peer's [`Rtc`] and the SDP answer: what a
//! player sent checked (type, size, text, SDP), negotiated by str0m, and the one video it can
//! receive from us picked (H.264, packetization mode 1). No I/O: the HTTP handler calls it, the
//! fuzz target too.
//!
//! str0m parses the SDP itself; what is ours is the checks around it and the choice of the
//! payload type, and that any failure is an [`OfferError`] the player is told, never a panic
//! (a panic inside str0m's negotiation of a hostile offer is caught and answered like any bad
//! offer).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::{TcpType, Transmit};
use str0m::{Candidate, Output, Rtc, RtcConfig};

/// An offer longer than this is refused unread: a browser's is 3-10 KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// How often str0m reports a peer's statistics (round-trip time, loss, bytes).
pub const STATS_EVERY: Duration = Duration::from_secs(1);
/// Packets each peer keeps for retransmission on NACK (str0m's video send buffer): at 2 Mbit/s
/// about 3 s of the stream.
pub const RESEND_PACKETS: usize = 600;
/// A packet is resent on NACK only this long after it was first sent (str0m keeps 3 s): a
/// resend any later completes a frame too old to be worth showing, and spends a slow link's
/// room on it. Behind a 1 Mbit/s link, resends of the join's frames 2 s after their capture made
/// frames arrive 2.3 s late (`scripts/webrtc-tbf.sh`). Long enough for a resend across an
/// intercontinental round trip, and the receiver asks for a keyframe when a frame cannot be
/// completed.
pub const RESEND_WITHIN: Duration = Duration::from_millis(500);
/// str0m's default share of resent bytes past which its queued resends are dropped.
const RESEND_RATIO_CAP: Option<f32> = Some(0.15);
/// Where a peer's bandwidth estimate starts while its camera's rate is not yet measured (else
/// at that rate): str0m probes at 3 and 6 times it at once, so a fast link is found within
/// about a second, and a slow one is not flooded at the start.
pub const INITIAL_ESTIMATE: Bitrate = Bitrate::mbps(2);

/// Why an offer was not answered; `status` is the HTTP status the player gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the offer must be sent as Content-Type: application/sdp, not {0:?}")]
    ContentType(String),
    #[error("the offer is over {MAX_OFFER_BYTES} bytes")]
    TooLarge,
    #[error("the offer is empty: send an SDP offer (a=recvonly H.264 video)")]
    Empty,
    #[error("the offer is not UTF-8 text")]
    NotText,
    #[error("the offer is not SDP: {0}")]
    NotSdp(String),
    #[error("the offer cannot be answered: {0}")]
    Rejected(String),
    #[error(
        "the offer has no video we can send: offer H.264 (packetization-mode=1) video with \
         a=recvonly or a=sendrecv"
    )]
    NoH264Video,
}

impl OfferError {
    /// The HTTP status for the player.
    pub fn status(&self) -> u16 {
        match self {
            OfferError::ContentType(_) => 415,
            OfferError::TooLarge => 413,
            OfferError::NoH264Video => 406,
            _ => 400,
        }
    }
}

/// Checks what a player POSTed: `Content-Type: application/sdp` (parameters allowed), at most
/// [`MAX_OFFER_BYTES`], UTF-8, and SDP as str0m reads it.
pub fn parse(content_type: Option<&[u8]>, body: &[u8]) -> Result<SdpOffer, OfferError> {
    let given = content_type
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let essence = given.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/sdp") {
        return Err(OfferError::ContentType(given.into_owned()));
    }
    if body.len() > MAX_OFFER_BYTES {
        return Err(OfferError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| OfferError::NotText)?;
    if text.trim().is_empty() {
        return Err(OfferError::Empty);
    }
    SdpOffer::from_sdp_string(text).map_err(|e| OfferError::NotSdp(sdp_reason(&e.to_string())))
}

/// str0m's SDP error as the player may read it: its parser's lines (what it expected, where),
/// without the line naming a memory address (`Parse error at PointerOffset(0x7f…)`), which
/// says nothing to the player and would show it where our heap is.
fn sdp_reason(error: &str) -> String {
    let kept: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect();
    if kept.is_empty() {
        "unreadable".to_string()
    } else {
        kept.join("; ")
    }
}

/// What every peer's [`Rtc`] is built with: one crypto provider and one DTLS certificate for
/// the server's life (made once: making a key per peer would cost each offer milliseconds), and
/// where peers reach us.
#[derive(Clone)]
pub struct PeerConfig {
    pub crypto: Arc<CryptoProvider>,
    pub cert: DtlsCert,
    /// Our ICE host candidates: every address players may reach the UDP port at.
    pub candidates: Vec<SocketAddr>,
    /// Bandwidth estimation (and str0m's pacing) for every peer: what its level follows.
    pub adapt: bool,
    /// Also a passive TCP candidate per address (ICE-TCP, the same port).
    pub tcp: bool,
}

impl PeerConfig {
    /// str0m's pure-Rust crypto and a fresh certificate; `None` if the certificate cannot be
    /// made.
    pub fn new(candidates: Vec<SocketAddr>, adapt: bool, tcp: bool) -> Option<PeerConfig> {
        let crypto = str0m::crypto::from_feature_flags();
        let cert = crypto.dtls_provider.generate_certificate()?;
        Some(PeerConfig {
            crypto: Arc::new(crypto),
            cert,
            candidates,
            adapt,
            tcp,
        })
    }
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

/// An answered offer: the peer's engine, ready for the run loop.
pub struct Answered {
    pub rtc: Rtc,
    /// The SDP answer for the player.
    pub answer: String,
    /// The video we send on, and its payload type.
    pub mid: Mid,
    pub pt: Pt,
    /// What the engine had to send already (usually nothing before its first timeout).
    pub transmits: Vec<Transmit>,
    /// When it next wants a timeout.
    pub timeout: Instant,
}

impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answered")
            .field("mid", &self.mid)
            .field("pt", &self.pt)
            .field("answer_bytes", &self.answer.len())
            .finish_non_exhaustive()
    }
}

/// Builds a peer for `offer`: str0m negotiates (H.264 only, every profile it knows), and the
/// first video m-line we may send on with an H.264 payload type in packetization mode 1 is the
/// one the camera's stream goes to.
pub fn answer(offer: SdpOffer, config: &PeerConfig, now: Instant) -> Result<Answered, OfferError> {
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .set_crypto_provider(config.crypto.clone())
        .set_dtls_cert(config.cert.clone())
        .set_stats_interval(Some(STATS_EVERY))
        .set_send_buffer_video(RESEND_PACKETS)
        // The estimate each peer's level follows (`thin.rs`); str0m also paces the peer's
        // packets at 1.1 times it (the engine restarts it at the camera's rate when known).
        // Without it, no estimate comes and every peer gets every frame.
        .enable_bwe(config.adapt.then_some(INITIAL_ESTIMATE))
        .build(now);
    for addr in &config.candidates {
        match Candidate::host(*addr, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::debug!(%addr, error = %e, "not an ICE host candidate"),
        }
    }
    // ICE-TCP: a player connects to us (passive); its type preference is under UDP's, so a
    // player takes it only when UDP does not connect.
    for addr in config.candidates.iter().filter(|_| config.tcp) {
        match Candidate::builder()
            .tcp()
            .host(*addr)
            .tcptype(TcpType::Passive)
            .build()
        {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => tracing::debug!(%addr, error = %e, "not an ICE-TCP host candidate"),
        }
    }
    // The offer's media, in order (str0m tells of them by events only once DTLS is up).
    let mids: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
    let accepted = catch_unwind(AssertUnwindSafe(|| {
        let answer = rtc.sdp_api().accept_offer(offer)?;
        // The invariant str0m asks for: drain after a change.
        let mut transmits = Vec::new();
        let timeout = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => transmits.push(t),
                Output::Event(_) => {}
            }
        };
        Ok::<_, str0m::RtcError>((answer, transmits, timeout))
    }));
    let (answer, transmits, timeout) = match accepted {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(OfferError::Rejected(e.to_string())),
        Err(_) => {
            return Err(OfferError::Rejected(
                "the WebRTC library could not negotiate it".into(),
            ))
        }
    };
    let chosen = mids.iter().find_map(|&mid| {
        let media = rtc.media(mid)?;
        if media.kind() != MediaKind::Video || !media.direction().is_sending() {
            return None;
        }
        let pt = pick_h264(rtc.writer(mid)?.payload_params())?;
        Some((mid, pt))
    });
    let Some((mid, pt)) = chosen else {
        return Err(OfferError::NoH264Video);
    };
    match rtc.direct_api().stream_tx_by_mid(mid, None) {
        Some(tx) => tx.set_rtx_cache(RESEND_PACKETS, RESEND_WITHIN, RESEND_RATIO_CAP),
        None => tracing::debug!(?mid, "no send stream yet: str0m's resend history is kept"),
    }
    Ok(Answered {
        rtc,
        answer: answer.to_sdp_string(),
        mid,
        pt,
        transmits,
        timeout,
    })
}

/// The payload type for our Constrained Baseline stream among those negotiated: H.264 in
/// packetization mode 1 (FU-A; mode 0 cannot carry a large IDR), Constrained Baseline
/// (`42e0xx`) first, then Baseline (`4200xx`), then any other profile (every H.264 decoder
/// decodes Constrained Baseline).
pub fn pick_h264<'a>(params: impl Iterator<Item = &'a PayloadParams>) -> Option<Pt> {
    params
        .filter(|p| {
            let spec = p.spec();
            spec.codec == Codec::H264 && spec.format.packetization_mode == Some(1)
        })
        .min_by_key(
            |p| match p.spec().format.profile_level_id.map(|id| id >> 8) {
                Some(0x42e0) => 0,
                Some(0x4200) => 1,
                _ => 2,
            },
        )
        .map(|p| p.pt())
}

/// Every step a WHEP offer's bytes go through before the engine takes the peer ([`parse`],
/// then [`answer`] with a fixed certificate): for the fuzz target `whep_offer` and the replay
/// of its corpus. No input may panic.
pub fn examine(body: &[u8]) -> Result<(), OfferError> {
    static CONFIG: std::sync::OnceLock<Option<PeerConfig>> = std::sync::OnceLock::new();
    let offer = parse(Some(b"application/sdp"), body)?;
    let config = CONFIG
        .get_or_init(|| PeerConfig::new(vec![SocketAddr::from(([127, 0, 0, 1], 8555))], true, true))
        .as_ref()
        .ok_or_else(|| OfferError::Rejected("no DTLS certificate".into()))?;
    answer(offer, config, Instant::now()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_corpus_replays() {
        let mut answered = Vec::new();
        for (path, data) in surv_tests::fixtures::fuzz_corpus("whep_offer") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let got = examine(&data);
            match name.as_str() {
                "not-sdp" => assert!(matches!(got, Err(OfferError::NotSdp(_))), "{got:?}"),
                "aiortc-vp8-only" => assert_eq!(got, Err(OfferError::NoH264Video)),
                // str0m panics negotiating it ("Pt locked multiple times"): caught, refused.
                "crash-str0m-pt-claimed-twice" => {
                    assert!(matches!(got, Err(OfferError::Rejected(_))), "{got:?}")
                }
                _ => {}
            }
            if got.is_ok() {
                answered.push(name);
            }
        }
        // The seed offers of real players are answered: the replay reaches the accepting path.
        for name in ["aiortc-recvonly-h264", "aiortc-recvonly-vp8-h264-audio"] {
            assert!(answered.iter().any(|n| n == name), "{name}: {answered:?}");
        }
    }

    #[test]
    fn an_answer_names_our_candidate_and_h264() {
        let offer = surv_tests::fixtures::fuzz_corpus("whep_offer")
            .into_iter()
            .find(|(p, _)| p.ends_with("aiortc-recvonly-h264"))
            .expect("the aiortc offer in the corpus")
            .1;
        let config =
            PeerConfig::new(vec![SocketAddr::from(([127, 0, 0, 1], 8555))], true, true).unwrap();
        let offer = parse(Some(b"application/sdp"), &offer).unwrap();
        let a = answer(offer, &config, Instant::now()).unwrap();
        let candidates: Vec<&str> = a
            .answer
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        let udp = candidates.iter().find(|l| l.contains(" udp "));
        let tcp = candidates.iter().find(|l| l.contains(" tcp "));
        let (Some(udp), Some(tcp)) = (udp, tcp) else {
            panic!("a UDP and a TCP candidate: {}", a.answer);
        };
        assert!(udp.contains(" 127.0.0.1 8555 typ host"), "{udp}");
        assert!(
            tcp.contains(" 127.0.0.1 8555 typ host tcptype passive"),
            "{tcp}"
        );
        // UDP first: its priority is the higher one.
        let prio = |l: &str| l.split(' ').nth(3).and_then(|p| p.parse::<u32>().ok());
        assert!(prio(udp) > prio(tcp), "{udp} / {tcp}");
        assert!(a.answer.contains("a=sendonly"), "{}", a.answer);
        // aiortc offers 42001f as 99 and 42e01f as 101: Constrained Baseline is picked.
        assert_eq!(*a.pt, 101, "{}", a.answer);
        assert!(a.answer.contains("H264/90000"), "{}", a.answer);
    }

    #[test]
    fn the_content_type_must_be_sdp() {
        let sdp = b"v=0\r\n";
        assert!(matches!(
            parse(None, sdp),
            Err(OfferError::ContentType(t)) if t.is_empty()
        ));
        assert!(matches!(
            parse(Some(b"application/json"), sdp),
            Err(OfferError::ContentType(t)) if t == "application/json"
        ));
        assert_eq!(
            parse(Some(b"application/sdp"), b" \r\n").unwrap_err(),
            OfferError::Empty
        );
        assert_eq!(
            parse(Some(b"Application/SDP; charset=utf-8"), &[0xff, 0xfe]).unwrap_err(),
            OfferError::NotText
        );
        let big = vec![b'a'; MAX_OFFER_BYTES + 1];
        let e = parse(Some(b"application/sdp"), &big).unwrap_err();
        assert_eq!((e.clone(), e.status()), (OfferError::TooLarge, 413));
    }

    #[test]
    fn garbage_is_not_sdp() {
        let e = parse(Some(b"application/sdp"), b"hello, I am not SDP").unwrap_err();
        assert!(matches!(e, OfferError::NotSdp(_)), "{e:?}");
        assert_eq!(e.status(), 400);
        assert!(e.to_string().starts_with("the offer is not SDP"), "{e}");
        // The parser's words, not the address of our buffer.
        assert!(!e.to_string().contains("0x"), "{e}");
        assert!(e.to_string().contains("Expected `v`"), "{e}");
    }
}
