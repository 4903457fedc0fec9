//! The stream driver under paused time: every frame to a reader that keeps up, the newest to
//! one that does not (the rest counted as skipped), a deadline for one that stops reading.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use super::*;
use crate::capture::SharedFrame;
use crate::frame::{H264AccessUnit, Payload};
use crate::watchers::TallySource;

/// Writes each frame as `[u32 BE seq][u32 BE length][bytes]`.
struct Framed(DuplexStream);

impl FrameWriter for Framed {
    fn write_frame<'a>(&'a mut self, frame: &'a EncodedFrame, jpeg: &'a Bytes) -> FrameWrite<'a> {
        Box::pin(async move {
            self.0.write_u32(frame.seq as u32).await?;
            self.0.write_u32(jpeg.len() as u32).await?;
            self.0.write_all(jpeg).await?;
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
        payload: Payload::Jpeg(Bytes::from(vec![seq as u8; bytes])),
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
    let (reason, tally) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(1),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    drop(writer);
    publisher.await.unwrap();
    assert_eq!(reason, LeaveReason::Shutdown, "the capture path ended");
    assert_eq!(reader.await.unwrap(), (0..30).collect::<Vec<_>>());
    assert_eq!((tally.frames_sent, tally.skipped()), (30, 0));
    assert_eq!(stats.frames_sent.load(Relaxed), 30);
    assert_eq!(stats.bytes_sent.load(Relaxed), 30_000);
}

/// Stream kinds send JPEG: a frame of another codec is skipped, not written and not counted
/// as sent, and the stream goes on.
#[tokio::test(start_paused = true)]
async fn a_frame_without_a_jpeg_is_skipped() {
    let (tx, rx) = watch::channel(None);
    let (w, r) = tokio::io::duplex(64 * 1024);
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let reader = tokio::spawn(read_frames(r, Duration::ZERO));
    let publisher = tokio::spawn(async move {
        for seq in 0..6 {
            let next = if seq % 2 == 0 {
                frame(seq, 1000)
            } else {
                Arc::new(EncodedFrame {
                    payload: Payload::H264(H264AccessUnit {
                        layer: 0,
                        data: Bytes::from_static(&[0, 0, 0, 1, 0x41, 0x9A]),
                        parameter_sets: None,
                    }),
                    ..Arc::into_inner(frame(seq, 0)).unwrap()
                })
            };
            tx.send_replace(Some(next));
            sleep(Duration::from_millis(33)).await;
        }
    });
    let mut writer = Framed(w);
    let (reason, tally) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(1),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    drop(writer);
    publisher.await.unwrap();
    assert_eq!(reason, LeaveReason::Shutdown);
    assert_eq!(reader.await.unwrap(), [0, 2, 4]);
    assert_eq!(tally.frames_sent, 3);
    assert_eq!(stats.bytes_sent.load(Relaxed), 3_000);
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
    let (reason, tally) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(1),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
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
    let (reason, tally) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(1),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
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
    let (reason, _) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(10),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    assert_eq!(reason, LeaveReason::Shutdown);
    assert!(started.elapsed() < Duration::from_millis(100));
    drop(tx);
}

/// A writer whose peer asks for each frame (as an HTTP body polled by hyper does): ready only
/// when the test says so.
struct Asked {
    asks: tokio::sync::mpsc::UnboundedReceiver<io::Result<()>>,
    written: Vec<u64>,
}

impl FrameWriter for Asked {
    fn ready(&mut self) -> FrameWrite<'_> {
        Box::pin(async move {
            match self.asks.recv().await {
                Some(res) => res,
                None => Err(io::ErrorKind::BrokenPipe.into()),
            }
        })
    }

    fn write_frame<'a>(&'a mut self, frame: &'a EncodedFrame, _: &'a Bytes) -> FrameWrite<'a> {
        self.written.push(frame.seq);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_writer_is_given_the_frame_newest_when_it_becomes_ready() {
    let (tx, rx) = watch::channel(None);
    let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let live = Arc::new(LiveTally::default());
    let publisher = tokio::spawn(publish(tx, 100, 10, Duration::from_millis(10)));
    let asker = tokio::spawn(async move {
        // Ready at once, then only every 250 ms: 25 frames published in between each time.
        for _ in 0..4 {
            ask.send(Ok(())).unwrap();
            sleep(Duration::from_millis(250)).await;
        }
        ask
    });
    let mut writer = Asked {
        asks,
        written: Vec::new(),
    };
    let serving = {
        let live = live.clone();
        tokio::spawn(async move {
            let out = serve(
                &stats,
                rx,
                &mut writer,
                Duration::from_secs(5),
                &shutdown,
                &live,
            )
            .await;
            (out, writer.written)
        })
    };
    let ask = asker.await.unwrap();
    sleep(Duration::from_millis(10)).await;
    // While serving: what /status would show.
    assert_eq!(live.tally().frames_sent, 4);
    drop(ask);
    publisher.await.unwrap();
    let ((reason, tally), written) = serving.await.unwrap();
    // Each frame was picked when the writer became ready: the newest at that moment, never one
    // picked earlier and held.
    assert_eq!(written, [0, 25, 50, 75], "{written:?}");
    assert_eq!(reason, LeaveReason::Closed);
    assert_eq!(tally.frames_sent, 4);
    assert_eq!(tally.skipped(), 75 - 3);
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_never_becomes_ready_times_out_and_so_does_a_timed_out_error() {
    let (tx, rx) = watch::channel(Some(frame(0, 10)));
    let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
    let stats = Stats::default();
    let shutdown = CancellationToken::new();
    let mut writer = Asked {
        asks,
        written: Vec::new(),
    };
    ask.send(Ok(())).unwrap();
    let started = Instant::now();
    let (reason, tally) = serve(
        &stats,
        rx.clone(),
        &mut writer,
        Duration::from_millis(500),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    assert_eq!((reason, tally.frames_sent), (LeaveReason::Timeout, 1));
    assert_eq!(started.elapsed(), Duration::from_millis(500));

    // The writer's own deadline (a connection cut for taking nothing) is a timeout too.
    ask.send(Err(io::ErrorKind::TimedOut.into())).unwrap();
    let (reason, _) = serve(
        &stats,
        rx,
        &mut writer,
        Duration::from_secs(5),
        &shutdown,
        &LiveTally::default(),
    )
    .await;
    assert_eq!(reason, LeaveReason::Timeout);
    drop(tx);
}
