//! Unit tests of the RTSP source's parts that need no camera: the URL and login, the choice of
//! stream, error wording (retina's errors as it words them, and from a loopback "camera"), and
//! H.264 decoding into I420 (round trip through openh264's encoder).

use openh264::encoder::{Encoder, EncoderConfig};
use openh264::formats::{YUVBuffer, YUVSlices, YUVSource};
use openh264::OpenH264API;

use super::h264::{copy_i420, Decoded, H264Decoder};
use super::session::{
    choose_stream, explain, explain_text, parse_target, Codec, Offered, MAX_REASON_BYTES,
};
use crate::frame::{PixelFormat, RawFrame};

#[test]
fn the_login_leaves_the_url_and_is_decoded() {
    let t = parse_target("rtsp://admin:p%40ss%3Aw@10.0.0.9:8554/Streaming/101?x=1").unwrap();
    assert_eq!(t.url.as_str(), "rtsp://10.0.0.9:8554/Streaming/101?x=1");
    let creds = t.creds.unwrap();
    assert_eq!(creds.username, "admin");
    assert_eq!(creds.password, "p@ss:w");
    let t = parse_target("rtsp://cam/live").unwrap();
    assert!(t.creds.is_none());
    assert_eq!(t.url.as_str(), "rtsp://cam/live");
    let t = parse_target("rtsp://viewer@cam/live").unwrap();
    assert_eq!(t.creds.unwrap().password, "");
}

#[test]
fn bad_urls_are_refused_with_the_password_hidden() {
    for bad in ["rtsp://", "http://cam/x", "rtsp://u:%ff@cam/x", "rtsp//cam"] {
        let err = parse_target(bad).expect_err(bad);
        assert!(!err.contains("%ff"), "{err}");
    }
    let err = super::RtspSource::new("http://u:hunter2@cam/x", Default::default(), 1 << 20)
        .err()
        .unwrap();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_source_form_builds_an_rtsp_source_with_the_password_hidden() {
    use crate::sources::{SourceOptions, SourceSpec};
    let spec = SourceSpec::parse("rtsp://admin:hunter2@cam.local:8554/h264").unwrap();
    let source = spec.build(&SourceOptions::default()).unwrap();
    assert_eq!(source.describe(), "rtsp://admin:***@cam.local:8554/h264");
}

fn offer(list: &[(&str, &str)]) -> Vec<Offered> {
    list.iter()
        .map(|(m, e)| Offered {
            media: (*m).into(),
            encoding: (*e).into(),
        })
        .collect()
}

#[test]
fn the_first_usable_video_stream_is_chosen() {
    let streams = offer(&[
        ("audio", "mpeg4-generic"),
        ("video", "h265"),
        ("video", "jpeg"),
        ("video", "h264"),
    ]);
    assert_eq!(choose_stream(&streams), Ok((2, Codec::Mjpeg)));
    let streams = offer(&[("application", "vnd.onvif.metadata"), ("video", "h264")]);
    assert_eq!(choose_stream(&streams), Ok((1, Codec::H264)));
    assert_eq!(
        choose_stream(&offer(&[("image", "jpeg")])),
        Ok((0, Codec::Mjpeg))
    );
}

#[test]
fn no_usable_stream_says_why() {
    let err = choose_stream(&offer(&[("video", "h265"), ("audio", "pcmu")])).unwrap_err();
    assert!(
        err.contains("unsupported video codec (video/h265)"),
        "{err}"
    );
    let err = choose_stream(&offer(&[("audio", "pcmu")])).unwrap_err();
    assert!(
        err.contains("no video stream") && err.contains("audio/pcmu"),
        "{err}"
    );
    assert!(choose_stream(&[]).unwrap_err().contains("no stream"));
}

/// retina's error for an oversized answer, as it words it: the error, a hex dump of what it had
/// buffered, then the connection and message.
const FRAMING_ERROR: &str = "RTSP framing error: Invalid RTSP message: byte 134: response > \
message-too-large: Content-Length 1000000000 (after a 134-byte head) exceeds the limit of 262144 \
bytes per message; buffered:
Length: 65536 (0x10000) bytes
0000:   52 54 53 50  2f 31 2e 30  20 32 30 30  20 4f 4b 0d   RTSP/1.0 200 OK.
0010:   0a 43 53 65  71 3a 20 31  0d 0a 43 6f  6e 74 65 6e   .CSeq: 1..Conten
...65504 (0xffe0) bytes not shown...

conn: 127.0.0.1:41640(me)->127.0.0.1:35037@2026-12-05T01:11:41.437454408Z
msg: 134@2026-12-05T01:11:41.438205495Z";

/// retina's error for an RTP packet its depacketizer refused.
const PACKET_ERROR: &str = "H.264 access unit exceeds the limit of 8388608 bytes (8388872 bytes \
of packets so far, with no marker bit or new timestamp); skipping the rest of it

conn: 127.0.0.1:44158(me)->127.0.0.1:41889@2026-12-05T01:11:43.455722616Z
stream: TCP, interleaved channel ids 0-1
ssrc: 5e551045
seq: 5915
pkt: 8388028@2026-12-05T01:11:43.503613783Z";

#[test]
fn a_reason_is_the_error_and_the_peer_without_the_dump() {
    assert_eq!(
        explain_text(None, FRAMING_ERROR),
        "RTSP framing error: Invalid RTSP message: byte 134: response > message-too-large: \
         Content-Length 1000000000 (after a 134-byte head) exceeds the limit of 262144 bytes per \
         message (peer 127.0.0.1:35037)"
    );
    assert_eq!(
        explain_text(None, PACKET_ERROR),
        "H.264 access unit exceeds the limit of 8388608 bytes (8388872 bytes of packets so far, \
         with no marker bit or new timestamp); skipping the rest of it (peer 127.0.0.1:41889)"
    );
    let unauthorized = "401 Unauthorized response to DESCRIBE CSeq=2: Unauthorized\n\n\
                        conn: [::1]:40000(me)->[::1]:554@2026-12-05T01:11:41Z\nmsg: 0@2026-12-05T01:11:41Z";
    assert_eq!(
        explain_text(Some(401), unauthorized),
        "wrong or missing credentials (401 Unauthorized response to DESCRIBE CSeq=2: \
         Unauthorized) (peer [::1]:554)"
    );
    let unassigned = "Received interleaved data on unassigned channel 4: \nLength: 3 (0x3) bytes\n\
                      0000:   01 02 03   ...\n\nconn: 10.0.0.1:1(me)->10.0.0.9:554@x\nmsg: 9@x";
    assert_eq!(
        explain_text(None, unassigned),
        "Received interleaved data on unassigned channel 4 (peer 10.0.0.9:554)"
    );
    // One line and no connection: as it is.
    let refused = "Unable to connect to RTSP server: Connection refused (os error 111)";
    assert_eq!(explain_text(None, refused), refused);
}

#[test]
fn a_long_reason_is_cut_at_a_char_boundary_and_keeps_the_peer() {
    let long = format!(
        "{}\n\nconn: 127.0.0.1:1(me)->192.0.2.7:554@x",
        "é€".repeat(400)
    );
    let reason = explain_text(None, &long);
    assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
    assert!(reason.ends_with("… (peer 192.0.2.7:554)"), "{reason}");
    assert!(reason.starts_with("é€é€"), "{reason}");
    let long = "x".repeat(1000);
    let reason = explain_text(Some(404), &long);
    assert_eq!(reason.len(), MAX_REASON_BYTES);
    assert!(
        reason.starts_with("no such stream on the camera"),
        "{reason}"
    );
    assert!(reason.ends_with("x…"), "{reason}");
}

/// A one-connection loopback "camera" that answers OPTIONS, and DESCRIBE with `answer` (given
/// the request's CSeq); retina's error describing it, and the camera's port.
async fn describe_error(answer: fn(u32) -> String) -> (retina::Error, u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let camera = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut input = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&input[..end]).into_owned();
            input.drain(..end + 4);
            let cseq: u32 = head
                .lines()
                .find_map(|l| l.strip_prefix("CSeq:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let reply = if head.starts_with("OPTIONS") {
                format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n")
            } else {
                answer(cseq)
            };
            if tcp.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let url = url::Url::parse(&format!("rtsp://127.0.0.1:{port}/cam")).unwrap();
    let described = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        retina::client::Session::describe(url, retina::client::SessionOptions::default()),
    )
    .await
    .expect("retina answers in time");
    camera.abort();
    match described {
        Ok(_) => panic!("DESCRIBE succeeded"),
        Err(e) => (e, port),
    }
}

#[tokio::test]
async fn retina_errors_are_explained_in_one_short_line() {
    let (e, port) = describe_error(|cseq| {
        format!(
            "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n\
             Content-Length: 1000000000\r\n\r\nv=0\r\n{}",
            "a".repeat(4000)
        )
    })
    .await;
    let full = e.to_string();
    let reason = explain(&e);
    eprintln!("{} bytes from retina: {reason}", full.len());
    assert!(
        full.contains("0000:"),
        "retina's text has its hex dump: {full}"
    );
    assert!(reason.contains("Content-Length 1000000000"), "{reason}");
    assert!(
        reason.ends_with(&format!(" (peer 127.0.0.1:{port})")),
        "{reason}"
    );
    assert!(
        !reason.contains("0000:") && !reason.contains('\n'),
        "{reason}"
    );
    assert!(
        !reason.contains("buffered") && !reason.contains("(me)"),
        "{reason}"
    );
    assert!(reason.len() <= MAX_REASON_BYTES, "{reason}");

    let (e, port) = describe_error(|cseq| {
        format!("RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm=\"cam\"\r\n\r\n")
    })
    .await;
    let reason = explain(&e);
    assert!(
        reason.starts_with("wrong or missing credentials (401"),
        "{reason}"
    );
    assert!(
        reason.ends_with(&format!(" (peer 127.0.0.1:{port})")),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "{reason}");
}

/// A picture whose quadrants have different Y, U and V values, so that a swapped plane, a
/// stride mistake or a transposed copy shows.
fn quadrants(w: usize, h: usize) -> Vec<u8> {
    let (cw, ch) = (w / 2, h / 2);
    let mut data = vec![0u8; w * h + 2 * cw * ch];
    let quad = |x: usize, y: usize, xs: usize, ys: usize| (x * 2 / xs) + 2 * (y * 2 / ys);
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = [40, 100, 160, 220][quad(x, y, w, h)];
        }
    }
    let (u, v) = data[w * h..].split_at_mut(cw * ch);
    for y in 0..ch {
        for x in 0..cw {
            let q = quad(x, y, cw, ch);
            u[y * cw + x] = [60, 120, 180, 128][q];
            v[y * cw + x] = [200, 90, 128, 60][q];
        }
    }
    data
}

fn encode_quadrants(w: usize, h: usize, frames: usize) -> Vec<Vec<u8>> {
    let yuv = quadrants(w, h);
    let config = EncoderConfig::new();
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config).unwrap();
    let buffer = YUVBuffer::from_vec(yuv, w, h);
    (0..frames)
        .map(|_| enc.encode(&buffer).unwrap().to_vec())
        .collect()
}

fn mean(plane: &[u8]) -> f64 {
    plane.iter().map(|&b| f64::from(b)).sum::<f64>() / plane.len() as f64
}

#[test]
fn h264_round_trip_keeps_size_planes_and_colours() {
    // 176 is not a multiple of 32: openh264 pads its rows, so the strides differ from the width.
    let (w, h) = (176, 144);
    let units = encode_quadrants(w, h, 3);
    let mut dec = H264Decoder::new().unwrap();
    let mut frame = RawFrame::new();
    for (i, unit) in units.iter().enumerate() {
        let got = dec.decode(unit, i == 0, Some(&mut frame)).unwrap();
        assert_eq!(got, Decoded::Picture, "unit {i}");
    }
    assert_eq!((frame.width, frame.height), (176, 144));
    assert_eq!(frame.format, PixelFormat::I420);
    assert_eq!(
        frame.data.len(),
        PixelFormat::I420.frame_bytes(176, 144).unwrap()
    );
    let want = quadrants(w, h);
    // Sample the middle of each quadrant of each plane: within a few levels of the original.
    let (cw, ch) = (w / 2, h / 2);
    let probes = [
        (0, w, w / 4, h / 4),
        (0, w, 3 * w / 4, 3 * h / 4),
        (w * h, cw, cw / 4, ch / 4),
        (w * h, cw, 3 * cw / 4, ch / 4),
        (w * h + cw * ch, cw, cw / 4, 3 * ch / 4),
        (w * h + cw * ch, cw, 3 * cw / 4, 3 * ch / 4),
    ];
    for (base, stride, x, y) in probes {
        let (a, b) = (
            frame.data[base + y * stride + x],
            want[base + y * stride + x],
        );
        assert!(a.abs_diff(b) <= 6, "plane at {base}, ({x},{y}): {a} vs {b}");
    }
    assert!((mean(&frame.data[..w * h]) - mean(&want[..w * h])).abs() < 3.0);
}

#[test]
fn frames_before_a_key_frame_are_skipped_and_errors_wait_for_the_next() {
    let units = encode_quadrants(64, 48, 3);
    let mut dec = H264Decoder::new().unwrap();
    let mut frame = RawFrame::new();
    // Joined mid-stream: a P frame first.
    assert_eq!(
        dec.decode(&units[1], false, Some(&mut frame)),
        Ok(Decoded::WaitingForKey)
    );
    assert_eq!(
        dec.decode(&units[0], true, Some(&mut frame)),
        Ok(Decoded::Picture)
    );
    // Garbage from the network: one error, then P frames are skipped until a key frame.
    let garbage = [
        0, 0, 0, 1, 0x65, 0xff, 0x00, 0x13, 0x37, 0x00, 0x00, 0x01, 0x41, 0x9a,
    ];
    let first = dec.decode(&garbage, false, Some(&mut frame));
    if first.is_err() {
        assert_eq!(
            dec.decode(&units[1], false, Some(&mut frame)),
            Ok(Decoded::WaitingForKey)
        );
    }
    assert_eq!(
        dec.decode(&units[0], true, Some(&mut frame)),
        Ok(Decoded::Picture)
    );
    assert_eq!((frame.width, frame.height), (64, 48));
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut dec = H264Decoder::new().unwrap();
    let mut frame = RawFrame::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for len in [0usize, 1, 4, 5, 17, 300, 5000] {
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        if len >= 5 {
            bytes[..5].copy_from_slice(&[0, 0, 0, 1, 0x67]);
        }
        let _ = dec.decode(&bytes, true, Some(&mut frame));
    }
}

/// A source whose planes are shorter than its strides claim must be refused, not read past.
struct Lying;
impl YUVSource for Lying {
    fn dimensions(&self) -> (usize, usize) {
        (64, 48)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (80, 40, 40)
    }
    fn y(&self) -> &[u8] {
        &[0; 80 * 47]
    }
    fn u(&self) -> &[u8] {
        &[0; 40 * 24]
    }
    fn v(&self) -> &[u8] {
        &[0; 40 * 24]
    }
}

#[test]
fn short_planes_are_an_error_and_strides_are_honoured() {
    let mut frame = RawFrame::new();
    assert!(copy_i420(&Lying, &mut frame).is_err());
    // 4x2 picture, Y rows padded to 6, chroma rows to 3.
    let y = [1, 2, 3, 4, 99, 99, 5, 6, 7, 8, 99, 99];
    let (u, v) = ([10, 11, 99], [20, 21, 99]);
    let src = YUVSlices::new((&y, &u, &v), (4, 2), (6, 3, 3));
    copy_i420(&src, &mut frame).unwrap();
    assert_eq!(frame.data, [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 20, 21]);
}

#[test]
fn media_time_follows_the_camera_and_continues_across_runs() {
    use super::MediaTimeline;
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let mut tl = MediaTimeline::default();
    tl.new_run();
    // The camera's RTP spacing, not arrival times: a burst arriving at once keeps its spacing.
    assert_eq!(tl.at(1_000_000, t0, 30), 0);
    assert_eq!(tl.at(1_003_000, t0, 30), 3_000);
    assert_eq!(tl.at(1_006_000, t0, 30), 6_000);
    // The camera's clock goes back: one frame on, and its spacing from there.
    assert_eq!(tl.at(500_000, t0, 30), 9_000);
    assert_eq!(tl.at(503_000, t0, 30), 12_000);
    // A reconnect 2 s later, whose timestamps start anywhere: the wall time between is kept.
    tl.new_run();
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(tl.at(-77, t1, 30), 12_000 + 180_000);
    assert_eq!(tl.at(2_923, t1, 30), 12_000 + 183_000);
    // A reconnect at once still moves on by a frame.
    tl.new_run();
    assert_eq!(tl.at(42, t1, 30), 12_000 + 186_000);
}
