//! A chunked session's frame, paced, sans-IO: its chunks leave spread at a little over the rate
//! its viewer reports the path delivers (`p=`, [`surv_proto::Reassembler::path_kbps`]), not in
//! one burst that a link with a small buffer, or a policer, cuts short.
//!
//! ```text
//!  unpaced: ▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇ (60 KB at once) ─▶ 30 Mbit/s, 5 ms buffer: 21 KB kept, the rest cut
//!  paced:   ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ▇ ─▶ a few KB queued at most
//!           └── PACE_GAIN × the path's rate, due chunks sent every PACE_TICK ──┘
//! ```
//!
//! The viewer measures the path by the spread its chunks arrive with, which a burst shows as
//! the slowest link's rate; a paced frame shows its pace instead, so the pace is a quarter over
//! the figure and probes upward until the path is what spreads them. A path that takes a frame
//! within [`MIN_PACE`] at that pace (a LAN, loopback) gets its frames as one burst, as before:
//! pacing costs the fan-out a send per session per tick, and spreading a frame costs its last
//! chunk that much latency. A frame is spread over no longer than [`budget`] allows, so it is
//! out before the next one; one still leaving when the next comes has its rest sent at once.

use std::time::Duration;

use tokio::time::Instant;

use super::chunks::{ChunkJob, Chunks};
use crate::capture::SharedFrame;

/// How often the fan-out sends the paced sessions the chunks that came due.
pub const PACE_TICK: Duration = Duration::from_millis(1);

/// The pace over the rate the viewer reported: enough to find a faster path within a few
/// frames (× 1.25 a frame), little enough that a path at that rate queues a fifth of a frame.
pub const PACE_GAIN: f64 = 1.25;

/// A frame that the pace sends within this long goes as one burst.
pub const MIN_PACE: Duration = Duration::from_millis(2);

/// Chunks are never scheduled further apart than this: surv-client takes 5 ms without a chunk
/// of an incomplete frame for a loss, and a tick may come a millisecond or two late (the
/// timer's resolution, a busy fan-out). (A path slower than a chunk a millisecond, 9.6 Mbit/s
/// at mtu 1,200, is paced at that.)
pub const MAX_SPACING: Duration = Duration::from_millis(1);

/// The longest a frame is spread over: four fifths of the frame interval, at most 50 ms. The
/// interval is the shorter of the last two (`last`, then `this` one's), so that one late frame
/// does not stretch the next one's; before a second frame (`this` unknown) there is none, and
/// the frame goes in one burst.
pub fn budget(last: Option<Duration>, this: Option<Duration>) -> Duration {
    let interval = match (last, this) {
        (Some(last), Some(this)) => last.min(this),
        (_, this) => this.unwrap_or_default(),
    };
    (interval * 4 / 5).min(Duration::from_millis(50))
}

/// How long `chunks` datagrams of `datagram_bytes` take at [`PACE_GAIN`] × `path_kbps`.
fn at_pace(chunks: usize, datagram_bytes: usize, path_kbps: u32) -> Duration {
    let bits = (chunks * datagram_bytes) as f64 * 8.0;
    Duration::from_secs_f64(bits / (PACE_GAIN * f64::from(path_kbps) * 1000.0))
}

/// A frame of `k` data chunks as `job` sends it: its datagrams, data and parity, and the size
/// of each.
pub fn shape(job: &ChunkJob, k: usize) -> (usize, usize) {
    (
        k + usize::from(job.parity),
        surv_proto::chunk::CHUNK_HEADER_BYTES + job.chunk_bytes,
    )
}

/// Whether a frame of `chunks` datagrams of `datagram_bytes` ([`shape`]) goes paced to a
/// viewer whose path delivers `path_kbps`: such a path cuts bursts, and a repair to it goes
/// once.
pub fn paces((chunks, datagram_bytes): (usize, usize), path_kbps: Option<u32>) -> bool {
    path_kbps.is_some_and(|kbps| chunks >= 2 && at_pace(chunks, datagram_bytes, kbps) >= MIN_PACE)
}

/// One frame leaving paced.
pub(crate) struct Paced {
    pub frame: SharedFrame,
    /// What the session is sent of it (its chunk size, key and parity).
    pub job: ChunkJob,
    /// Its chunks, data and parity, and how many of them (the first) have gone.
    chunks: usize,
    sent: usize,
    started: Instant,
    spacing: Duration,
}

impl Paced {
    /// Starts frame `frame` to a viewer whose path delivers `path_kbps`: `job`'s `chunks`
    /// datagrams of `datagram_bytes` each ([`shape`]), spread over at most `budget`. `None`: it goes in one
    /// burst (a fast path, one chunk, no figure).
    pub fn new(
        frame: SharedFrame,
        job: ChunkJob,
        (chunks, datagram_bytes): (usize, usize),
        path_kbps: Option<u32>,
        budget: Duration,
        now: Instant,
    ) -> Option<Paced> {
        if !paces((chunks, datagram_bytes), path_kbps) {
            return None;
        }
        let spread = at_pace(chunks, datagram_bytes, path_kbps?)
            .min(budget)
            .min(MAX_SPACING * (chunks - 1) as u32);
        if spread < MIN_PACE {
            return None;
        }
        Some(Paced {
            frame,
            job,
            chunks,
            sent: 0,
            started: now,
            spacing: spread / (chunks - 1) as u32,
        })
    }

    /// The chunks due by `now` (all of them with `None`) and not yet sent, as a bitmap of their
    /// indexes, marked sent. The first call sends at least the first chunk. `0`: none due.
    pub fn take_due(&mut self, now: Option<Instant>) -> u128 {
        let due = match now {
            None => self.chunks,
            Some(now) => {
                let elapsed = now.saturating_duration_since(self.started);
                let steps = elapsed.as_nanos() / self.spacing.as_nanos().max(1);
                usize::try_from(steps)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
                    .min(self.chunks)
            }
        };
        let bits = span(self.sent, due);
        self.sent = self.sent.max(due);
        bits
    }

    /// `job` for the chunks `bits`: a first sending of part of the frame.
    pub fn part(&self, bits: u128) -> ChunkJob {
        ChunkJob {
            chunks: Chunks::Part(bits),
            ..self.job.clone()
        }
    }

    /// Whether every chunk has gone.
    pub fn done(&self) -> bool {
        self.sent == self.chunks
    }

    /// The chunks that have gone, as a bitmap: a `nack` is answered only for these (the others
    /// are on their way).
    pub fn sent_bits(&self) -> u128 {
        span(0, self.sent)
    }
}

/// The bits `from..to` (at most 128).
fn span(from: usize, to: usize) -> u128 {
    let mask = |n: usize| {
        if n >= 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        }
    };
    mask(to) & !mask(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{EncodedFrame, Payload};
    use bytes::Bytes;
    use std::sync::Arc;

    fn frame() -> SharedFrame {
        Arc::new(EncodedFrame {
            seq: 7,
            capture_unix_us: 0,
            width: 16,
            height: 16,
            quality: 80,
            attempts: 1,
            payload: Payload::Jpeg(Bytes::from_static(&[0xFF; 10])),
        })
    }

    fn job() -> ChunkJob {
        ChunkJob {
            dest: "127.0.0.1:9".parse().unwrap(),
            key: 1,
            chunk_bytes: 1172,
            chunks: Chunks::All,
            parity: 2,
        }
    }

    const LONG: Duration = Duration::from_secs(1);

    #[test]
    fn chunks_leave_at_the_pace_and_all_of_them_once() {
        let t0 = Instant::now();
        // 51 datagrams of 1,200 bytes to a path of 19,584 kbit/s: at 1.25 × that, 1,200 bytes
        // every 0.4 ms, the last at 20 ms.
        assert_eq!(shape(&job(), 49), (51, 1200), "49 data chunks and 2 parity");
        assert!(paces((51, 1200), Some(19_584)));
        let mut p = Paced::new(frame(), job(), (51, 1200), Some(19_584), LONG, t0).unwrap();
        assert_eq!(p.spacing, Duration::from_micros(400));
        assert_eq!(p.take_due(Some(t0)), 1);
        assert_eq!(p.take_due(Some(t0)), 0, "nothing more is due at once");
        assert_eq!(p.sent_bits(), 1);
        // Late: what came due meanwhile goes together.
        let bits = p.take_due(Some(t0 + Duration::from_micros(1_600)));
        assert_eq!(bits, 0b11110, "chunks 1 to 4");
        assert_eq!(p.part(bits).chunks, Chunks::Part(0b11110));
        assert_eq!(p.part(bits).parity, 2);
        let mut seen = 0b11111u128;
        for ms in 2..=19 {
            let bits = p.take_due(Some(t0 + Duration::from_millis(ms)));
            assert_eq!(bits & seen, 0, "no chunk twice");
            seen |= bits;
        }
        assert!(!p.done(), "the last is due at 20 ms");
        seen |= p.take_due(Some(t0 + Duration::from_millis(20)));
        assert!(p.done());
        assert_eq!(seen, (1u128 << 51) - 1);
        assert_eq!(p.sent_bits(), seen);
        assert_eq!(p.take_due(Some(t0 + LONG)), 0);
    }

    #[test]
    fn the_rest_goes_at_once_when_asked() {
        let t0 = Instant::now();
        let mut p = Paced::new(frame(), job(), (51, 1200), Some(19_584), LONG, t0).unwrap();
        p.take_due(Some(t0));
        assert_eq!(p.take_due(None), ((1u128 << 51) - 1) & !1);
        assert!(p.done());
    }

    #[test]
    fn a_frame_is_spread_no_longer_than_its_budget_nor_its_chunks_further_apart_than_max_spacing() {
        let t0 = Instant::now();
        let ms = |n| Some(Duration::from_millis(n));
        let budget = super::budget(ms(33), ms(33));
        assert_eq!(budget, Duration::from_micros(26_400));
        // The shorter of the last two intervals: one late frame does not stretch the next.
        assert_eq!(super::budget(ms(33), ms(200)), budget);
        assert_eq!(super::budget(ms(200), ms(33)), budget);
        assert_eq!(super::budget(ms(200), ms(200)), Duration::from_millis(50));
        // After idle: the second frame's own interval; the first frame has none.
        assert_eq!(super::budget(None, ms(33)), budget);
        assert_eq!(super::budget(None, None), Duration::ZERO);
        // 1 Mbit/s would take 491 ms: 26.4 ms.
        let p = Paced::new(frame(), job(), (51, 1200), Some(1_000), budget, t0).unwrap();
        assert_eq!(p.spacing * 50, Duration::from_micros(26_400));
        // 10 chunks at 1 Mbit/s: a chunk every millisecond, not 7.7.
        let p = Paced::new(frame(), job(), (10, 1200), Some(1_000), budget, t0).unwrap();
        assert_eq!(p.spacing, MAX_SPACING);
    }

    #[test]
    fn fast_paths_short_frames_and_unknown_paths_get_one_burst() {
        let t0 = Instant::now();
        // 51 × 1,200 bytes at 1.25 × 1 Gbit/s: 0.4 ms.
        assert!(Paced::new(frame(), job(), (51, 1200), Some(1_000_000), LONG, t0).is_none());
        assert!(!paces((51, 1200), Some(1_000_000)));
        assert!(!paces((51, 1200), None));
        assert!(!paces((1, 1200), Some(1_000)));
        // The first frame (no interval yet): no budget, a burst.
        assert!(Paced::new(frame(), job(), (51, 1200), Some(1_000), Duration::ZERO, t0).is_none());
        assert!(Paced::new(frame(), job(), (1, 1200), Some(1_000), LONG, t0).is_none());
        assert!(Paced::new(frame(), job(), (51, 1200), None, LONG, t0).is_none());
        // Just over MIN_PACE: paced.
        assert!(Paced::new(frame(), job(), (51, 1200), Some(180_000), LONG, t0).is_some());
    }

    #[test]
    fn spans_cover_the_whole_bitmap() {
        assert_eq!(span(0, 0), 0);
        assert_eq!(span(3, 5), 0b11000);
        assert_eq!(span(0, 128), u128::MAX);
        assert_eq!(span(127, 128), 1 << 127);
    }
}
