//! The RTSP source's frame worker: a thread of its own that publishes MJPEG frames and decodes
//! H.264 (while pictures are wanted), so that neither a decode nor a JPEG encode runs on the
//! async runtime. It is fed through a small bounded queue and always shows the newest frame:
//! when frames queue up, it publishes (or, for H.264, decodes all — later pictures need them —
//! but converts and encodes) only the newest; when the queue is full, the session drops frames
//! (H.264: until the next key frame or catch-up, which need no earlier one). Nothing dropped
//! goes uncounted: each is a [`FrameSink::reject`] with why. (H.264 units the worker never
//! sees were passed through to the camera's H.264 feed all the same.)
//!
//! A catch-up ([`Unit::Catchup`]) is the feed's GOP when pictures become wanted: decoded from
//! its keyframe, only its newest picture shown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::h264::{Decoded, H264Decoder};
use super::session::Codec;
use crate::capture::h264::H264Unit;
use crate::capture::FrameSink;
use crate::frame::{JpegFrame, RawFrame};

/// Frames that may wait for the worker. Small: a frame waiting is latency; enough to ride out a
/// key frame that takes a little longer than one interval to decode.
pub const QUEUE_FRAMES: usize = 3;

/// How long the session waits for the worker to finish its frame when the session ends.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Rejection reasons, one per cause (the sink logs each cause at most every ten seconds).
const SKIPPED_FOR_NEWER: &str = "frame skipped for a newer one (the server is behind the camera)";
const QUEUE_FULL: &str =
    "frame dropped: the decoder is behind (H.264 resumes at the next key frame)";
pub const WAITING_FOR_KEY: &str = "H.264 frame before a key frame: skipped";

/// One frame from the camera, as the session hands it over.
pub enum Unit {
    Jpeg {
        jpeg: Bytes,
        capture_unix_us: u64,
    },
    /// One unit, after those before it (the worker's decoder follows the feed).
    H264 {
        access_unit: Bytes,
        is_key: bool,
        capture_unix_us: u64,
        /// Its frame number ([`FrameSink::publish_h264`]), for its picture.
        seq: u64,
    },
    /// The feed's GOP, oldest first, when pictures become wanted: the decoder starts again at
    /// its keyframe. `seq` is its newest unit's frame number.
    Catchup {
        units: Vec<Arc<H264Unit>>,
        seq: u64,
    },
}

impl Unit {
    /// A frame that needs no earlier one to be shown.
    fn stands_alone(&self) -> bool {
        match self {
            Unit::Jpeg { .. } | Unit::Catchup { .. } => true,
            Unit::H264 { is_key, .. } => *is_key,
        }
    }
}

/// The session's end of the worker.
pub struct Worker {
    tx: SyncSender<Unit>,
    done: oneshot::Receiver<()>,
    /// Frames were dropped: skip until one that stands alone.
    resync: bool,
}

impl Worker {
    /// Starts the worker thread for one session's stream of `codec`.
    pub fn start(sink: &FrameSink, codec: Codec) -> Result<Worker, String> {
        let decoder = match codec {
            Codec::H264 => Some(H264Decoder::new()?),
            Codec::Mjpeg => None,
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
        let (done_tx, done) = oneshot::channel();
        let sink = sink.clone();
        std::thread::Builder::new()
            .name("surv-rtsp-frames".into())
            .spawn(move || {
                let _done = done_tx;
                work(&rx, &sink, decoder);
            })
            .map_err(|e| format!("cannot start the frame worker thread: {e}"))?;
        Ok(Worker {
            tx,
            done,
            resync: false,
        })
    }

    /// Hands a frame over without waiting: whether it was queued. `Err` only when the worker
    /// is gone (it panicked).
    pub fn offer(&mut self, unit: Unit, sink: &FrameSink) -> Result<bool, String> {
        if self.resync && !unit.stands_alone() {
            sink.reject(QUEUE_FULL);
            return Ok(false);
        }
        match self.tx.try_send(unit) {
            Ok(()) => {
                self.resync = false;
                Ok(true)
            }
            Err(TrySendError::Full(_)) => {
                sink.reject(QUEUE_FULL);
                self.resync = true;
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => {
                Err("the frame worker thread stopped unexpectedly".into())
            }
        }
    }

    /// Lets the worker finish the frames it has, and waits (bounded) for it to end, so that a
    /// session's frames never mix with the next session's.
    pub async fn finish(self) {
        let Worker { tx, done, .. } = self;
        drop(tx);
        if tokio::time::timeout(FINISH_TIMEOUT, done).await.is_err() {
            tracing::warn!("the RTSP frame worker did not finish within its timeout");
        }
    }
}

/// The worker thread: batches of whatever queued up, the newest of each shown.
fn work(rx: &Receiver<Unit>, sink: &FrameSink, mut decoder: Option<H264Decoder>) {
    let mut picture = RawFrame::new();
    let mut batch = Vec::with_capacity(QUEUE_FRAMES + 1);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() <= QUEUE_FRAMES {
            match rx.try_recv() {
                Ok(unit) => batch.push(unit),
                Err(_) => break,
            }
        }
        let newest = batch.len() - 1;
        for (i, unit) in batch.drain(..).enumerate() {
            let is_newest = i == newest;
            match unit {
                Unit::Jpeg {
                    jpeg,
                    capture_unix_us,
                } => {
                    if is_newest {
                        sink.publish_jpeg(&JpegFrame::new(jpeg, capture_unix_us));
                    } else {
                        sink.reject(SKIPPED_FOR_NEWER);
                    }
                }
                Unit::H264 {
                    access_unit,
                    is_key,
                    capture_unix_us,
                    seq,
                } => {
                    let Some(decoder) = decoder.as_mut() else {
                        continue;
                    };
                    let out = is_newest.then_some(&mut picture);
                    let decoded = decode(decoder, sink, &access_unit, is_key, out);
                    show(decoded, &mut picture, capture_unix_us, seq, sink);
                }
                Unit::Catchup { units, seq } => {
                    let Some(decoder) = decoder.as_mut() else {
                        continue;
                    };
                    decoder.restart();
                    let last = units.len().saturating_sub(1);
                    for (j, unit) in units.iter().enumerate() {
                        let out = (is_newest && j == last).then_some(&mut picture);
                        let au = &unit.au;
                        match decode(decoder, sink, &au.data, au.is_keyframe(), out) {
                            // Older pictures of the GOP are references only: not shown, not
                            // counted as skipped (their units were passed through long ago).
                            Ok(Decoded::NotCopied | Decoded::Nothing) => {}
                            decoded => {
                                show(decoded, &mut picture, unit.capture_unix_us, seq, sink);
                                if j != last {
                                    // An error: the decoder waits for the next keyframe.
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One access unit through the decoder, counted in `decodes` when it ran.
fn decode(
    decoder: &mut H264Decoder,
    sink: &FrameSink,
    access_unit: &[u8],
    is_key: bool,
    out: Option<&mut RawFrame>,
) -> Result<Decoded, String> {
    let decoded = decoder.decode(access_unit, is_key, out);
    if !matches!(decoded, Ok(Decoded::WaitingForKey)) {
        sink.capture().stats.decodes.fetch_add(1, Relaxed);
    }
    decoded
}

/// What a decode gave: the picture published under frame `seq`, or why there is none.
fn show(
    decoded: Result<Decoded, String>,
    picture: &mut RawFrame,
    capture_unix_us: u64,
    seq: u64,
    sink: &FrameSink,
) {
    match decoded {
        Ok(Decoded::Picture) => {
            picture.capture_unix_us = capture_unix_us;
            sink.publish_decoded(picture, seq);
        }
        Ok(Decoded::NotCopied) => sink.reject(SKIPPED_FOR_NEWER),
        Ok(Decoded::Nothing) => {}
        Ok(Decoded::WaitingForKey) => sink.reject(WAITING_FOR_KEY),
        Err(reason) => sink.reject(&reason),
    }
}
