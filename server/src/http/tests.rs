//! The HTTP pieces on their own: the MJPEG body asks for a part only when polled and carries
//! parts unchanged; the writer is ready only once asked; a stalled write times out; the rate
//! meter; the pages carry the player.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use tokio::io::AsyncWriteExt;

use super::io::DeadlineIo;
use super::mjpeg::{channel, MjpegBody, PartStyle, BOUNDARY};
use super::status::RateMeter;
use super::WriteStalled;
use crate::frame::{EncodedFrame, Payload};
use crate::watchers::stream::FrameWriter;

fn frame(seq: u64, bytes: &'static [u8]) -> EncodedFrame {
    EncodedFrame {
        seq,
        capture_unix_us: 0,
        width: 16,
        height: 16,
        quality: 80,
        attempts: 1,
        payload: Payload::Jpeg(Bytes::from_static(bytes)),
    }
}

/// Writes a frame of `jpeg`, as the stream driver hands it over.
async fn write(
    writer: &mut impl FrameWriter,
    seq: u64,
    jpeg: &'static [u8],
) -> std::io::Result<()> {
    let frame = frame(seq, jpeg);
    let jpeg = Bytes::from_static(jpeg);
    writer.write_frame(&frame, &jpeg).await
}

/// Polls the body once, without a runtime waker that matters.
fn poll_once(body: &mut MjpegBody) -> Poll<Option<Bytes>> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(f.into_data().unwrap_or_default())),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

/// Everything the body yields until it would wait.
fn drain(body: &mut MjpegBody) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match poll_once(body) {
            Poll::Ready(Some(b)) => out.extend_from_slice(&b),
            Poll::Ready(None) => return (out, true),
            Poll::Pending => return (out, false),
        }
    }
}

#[tokio::test]
async fn the_writer_is_ready_only_when_the_body_asks_and_parts_carry_their_length() {
    let (mut body, mut writer) = channel(PartStyle::Framed, WriteStalled::default());
    // Nobody polled the body: the writer is not ready.
    let not_yet = tokio::time::timeout(Duration::from_millis(50), writer.ready()).await;
    assert!(not_yet.is_err(), "ready before the body asked");
    assert_eq!(drain(&mut body), (Vec::new(), false));
    writer.ready().await.unwrap();
    write(&mut writer, 1, b"\xFF\xD8abc\xFF\xD9").await.unwrap();
    let (bytes, ended) = drain(&mut body);
    assert!(!ended);
    let head = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(
        bytes,
        [head.as_bytes(), b"\xFF\xD8abc\xFF\xD9\r\n"].concat()
    );
    // The writer goes: the body ends.
    drop(writer);
    assert_eq!(drain(&mut body), (Vec::new(), true));
}

#[tokio::test]
async fn advance_headers_put_the_next_parts_headers_right_after_each_jpeg() {
    let (mut body, mut writer) = channel(PartStyle::AdvanceHeaders, WriteStalled::default());
    let (head, _) = drain(&mut body);
    let part_head = format!("--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n");
    assert_eq!(head, part_head.as_bytes());
    writer.ready().await.unwrap();
    write(&mut writer, 1, b"JPEG1").await.unwrap();
    let (bytes, _) = drain(&mut body);
    assert_eq!(
        bytes,
        [b"JPEG1\r\n".as_slice(), part_head.as_bytes()].concat()
    );
}

#[tokio::test]
async fn a_body_that_is_gone_fails_the_writer() {
    let (body, mut writer) = channel(PartStyle::Framed, WriteStalled::default());
    drop(body);
    let err = writer.ready().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    let (mut body, mut writer) = channel(PartStyle::Framed, WriteStalled::default());
    let _ = drain(&mut body);
    writer.ready().await.unwrap();
    drop(body);
    assert!(write(&mut writer, 1, b"x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_write_that_makes_no_progress_fails_at_the_deadline() {
    let (a, _b) = tokio::io::duplex(64);
    let mut io = DeadlineIo::new(a, Duration::from_secs(2), WriteStalled::default());
    io.write_all(&[0; 64]).await.unwrap();
    let started = tokio::time::Instant::now();
    let err = io.write_all(&[0; 1]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_progresses_slowly_is_not_cut() {
    let (a, mut b) = tokio::io::duplex(64);
    let mut io = DeadlineIo::new(a, Duration::from_secs(2), WriteStalled::default());
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let mut total = 0;
        while total < 640 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            total += tokio::io::AsyncReadExt::read(&mut b, &mut buf)
                .await
                .unwrap();
        }
        total
    });
    io.write_all(&[0; 640]).await.unwrap();
    assert_eq!(reader.await.unwrap(), 640);
}

#[test]
fn the_rate_is_measured_over_a_window_of_at_least_a_second() {
    let t0 = Instant::now();
    let meter = RateMeter::new(100, t0);
    // Too soon: no rate yet.
    assert_eq!(meter.rate(110, t0 + Duration::from_millis(500)), 0.0);
    let r = meter.rate(160, t0 + Duration::from_secs(2));
    assert!((r - 30.0).abs() < 1e-9, "{r}");
    // Too soon again: the last rate.
    assert_eq!(meter.rate(170, t0 + Duration::from_millis(2100)), r);
    let r = meter.rate(170, t0 + Duration::from_secs(4));
    assert!((r - 5.0).abs() < 1e-9, "{r}");
}

#[test]
fn both_pages_carry_the_player_and_the_boundary_it_cuts_at() {
    for page in [super::PAGE.as_str(), super::GRID.as_str()] {
        assert!(!page.contains("/*PLAYER*/"));
        assert_eq!(page.matches("function survPlay(").count(), 1);
        assert!(page.contains("survPlay("));
    }
    // The player finds the end of an MJPEG part by the head the server writes after it.
    assert!(super::PLAYER.contains(&format!("\\r\\n--{BOUNDARY}\\r\\n")));
}
