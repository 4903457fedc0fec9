//! The stream driver under paused time: every frame to a reader that keeps up, the newest to
//! one that does not (the rest counted as skipped), a deadline for one that stops reading.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use super::*;
use crate::capture::SharedFrame;

/// Writes each frame as `[u32 BE seq][u32 BE length][bytes]`.
struct Framed(DuplexStream);

impl FrameWriter for Framed {
    fn write_frame<'a>(&'a mut self, frame: &'a EncodedFrame) -> FrameWrite<'a> {
        Box::pin(async move {
            self.0.write_u32(frame.seq as u32).await?;
            self.0.write_u32(frame.datagram.len() as u32).await?;
            self.0.write_all(&frame.datagram).await?;
            self.0.flush().await
        })
    }
}

fn frame(seq: u64, bytes: usize) -> SharedFrame {
    Arc::new(EncodedFrame {
        seq,
        capture_unix_us: 0,
        width: 16,
        height: 16,
        quality: 80,
        attempts: 1,
        datagram: Bytes::from(vec![seq as u8; bytes]),
    })
}

/// Reads frames until EOF, pausing `pause` after each; returns their sequence numbers.
async fn read_frames(mut r: DuplexStream, pause: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let Ok(seq) = r.read_u32().await else {
            return seqs;
        };
        let len = r.read_u32().await.unwrap() as usize;
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == seq as u8), "frame {seq} corrupted");
        seqs.push(u64::from(seq));
        sleep(pause).await;
    }
}

/// Publishes `count` frames of `bytes`, one every `interval`, then ends the stream.
async fn publish(
    tx: watch::Sender<Option<SharedFrame>>,
    count: u64,
    bytes: usize,
    interval: Duration,
) {
    for seq in 0..count {
        tx.send_replace(Some(frame(seq, bytes)));
        sleep(interval).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_keeps_up_gets_every_frame() {
    let (tx, rx) = watch::channel(None);
    let (w, r) = tokio::io::duplex(64 * 1024);
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let reader = tokio::spawn(read_frames(r, Duration::ZERO));
    let publisher = tokio::spawn(publish(tx, 30, 1000, Duration::from_millis(33)));
    let mut writer = Framed(w);
    let (reason, tally) = serve(&stats, rx, &mut writer, Duration::from_secs(1), &shutdown, &LiveTally::default()).await;
    drop(writer);
    publisher.await.unwrap();
    assert_eq!(reason, LeaveReason::Shutdown, "the capture path ended");
    assert_eq!(reader.await.unwrap(), (0..30).collect::<Vec<_>>());
    assert_eq!((tally.frames_sent, tally.skipped()), (30, 0));
    assert_eq!(stats.frames_sent.load(Relaxed), 30);
    assert_eq!(stats.bytes_sent.load(Relaxed), 30_000);
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_gets_the_newest_frames_and_the_rest_are_counted() {
    let (tx, rx) = watch::channel(None);
    // A small pipe: about one frame fits, as with a full socket buffer.
    let (w, r) = tokio::io::duplex(1200);
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    // Reads a frame every 100 ms while frames come every 10 ms.
    let reader = tokio::spawn(read_frames(r, Duration::from_millis(100)));
    let publisher = tokio::spawn(publish(tx, 200, 1000, Duration::from_millis(10)));
    let mut writer = Framed(w);
    let started = Instant::now();
    let (reason, tally) = serve(&stats, rx, &mut writer, Duration::from_secs(1), &shutdown, &LiveTally::default()).await;
    drop(writer);
    publisher.await.unwrap();
    let got = reader.await.unwrap();
    assert_eq!(reason, LeaveReason::Shutdown);
    // Publishing ended at 2 s; the watcher ended a few of the reader's reads after that: it
    // never held a queue of old frames (all 200 at the reader's pace would take 20 s).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert!(
        (15..=30).contains(&got.len()),
        "{} frames: {got:?}",
        got.len()
    );
    // The writer never queues: what reached the reader is what was sent, and nothing older
    // than a frame or two behind the newest was ever written.
    assert_eq!(tally.frames_sent, got.len() as u64);
    assert_eq!(tally.skipped(), 200 - tally.frames_sent);
    assert!(
        *got.last().unwrap() >= 197,
        "the last frames sent are the newest: {got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_stops_reading_is_dropped_at_the_write_deadline() {
    let (tx, rx) = watch::channel(None);
    let (w, _r) = tokio::io::duplex(1200);
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let _publisher = tokio::spawn(publish(tx, 1000, 1000, Duration::from_millis(10)));
    let mut writer = Framed(w);
    let started = Instant::now();
    let (reason, tally) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_millis(500),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    assert_eq!(reason, LeaveReason::Timeout);
    // The first frame fits the pipe; the second blocks and times out 500 ms later.
    assert_eq!(tally.frames_sent, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(600),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_goes_away_ends_the_watcher_as_closed() {
    let (tx, rx) = watch::channel(None);
    let (w, r) = tokio::io::duplex(64 * 1024);
    drop(r);
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let _publisher = tokio::spawn(publish(tx, 10, 100, Duration::from_millis(10)));
    let mut writer = Framed(w);
    let (reason, tally) = serve(&stats, rx, &mut writer, Duration::from_secs(1), &shutdown, &LiveTally::default()).await;
    assert_eq!((reason, tally.frames_sent), (LeaveReason::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_watcher_mid_write() {
    let (tx, rx) = watch::channel(None);
    let (w, _r) = tokio::io::duplex(100);
    tx.send_replace(Some(frame(0, 1000)));
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        sleep(Duration::from_millis(50)).await;
        stop.cancel();
    });
    let mut writer = Framed(w);
    let started = Instant::now();
    let (reason, _) = serve(&stats, rx, &mut writer, Duration::from_secs(10), &shutdown, &LiveTally::default()).await;
    assert_eq!(reason, LeaveReason::Shutdown);
    assert!(started.elapsed() < Duration::from_millis(100));
    drop(tx);
}
