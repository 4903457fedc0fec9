//! A chunked session's rate, sans-IO: what its acks say the path delivers, and which frames go
//! to it. A viewer behind a link slower than the stream (a 4 Mbit/s uplink for a 14 Mbit/s
//! 1080p picture) is sent fewer whole frames, not every frame to be cut down in a router's queue
//! (where most frames would lose a chunk, and the queue would add its length to every frame's
//! latency).
//!
//! ```text
//!  frame sent ─▶ on_sent(seq, bytes, now): bytes of the frames sent so far, and when, by seq
//!  "continue <seq> r=<rx>" ─▶ on_ack: every SAMPLE, delivered = Δrx ÷ Δ(bytes of frames up to seq)
//!      delivered < 90 %  ─▶ congested: limit = 0.85 × the rate the acks show over the last
//!                           second (drain the queue), at least half the limit before
//!      delivered ≥ 97 %  ─▶ limited and frames held back: limit × 1.08, for 5 s after an
//!                           overflow no higher than 0.95 × the rate it overflowed at, then
//!                           probing past it (× 1.03 up to 1.25 × that rate, × 1.3 once past
//!                           twice it)
//!                           limited but nothing held back: no limit (the stream fits)
//!      limited, past the hold, and the quickest ack of the sample 25 ms or more slower than
//!      the quickest of the last 10 s ─▶ a queue is filling: limit = 0.85 × the rate the acks
//!                       show, as for an overflow but before it, and a hold of 2 s
//!  next frame ─▶ admit(bytes): a token bucket at the limit; a frame goes while it is not in debt
//! ```
//!
//! The delay signal catches the probe: a limit past what the path carries fills the
//! bottleneck's queue (every frame's ack a little later) before the queue overflows and costs
//! frames. Only the quickest ack of each sample counts, so a frame that waited for a repair
//! (a round trip more) does not look like a queue.
//!
//! Random loss that the `nack`s repair does not look like congestion: the frames' bytes still
//! arrive (resent chunks count in `r=`, resends do not count as sent), so a 10 % loss link keeps
//! the whole stream. A bottleneck loses what its queue cannot hold, resends included: the share
//! delivered falls, and the limit follows the rate the acks report. Only chunked sessions have
//! this; whole datagrams keep the ack window alone.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Acks are compared no more often than this.
pub const SAMPLE: Duration = Duration::from_millis(300);

/// Below this share of the frames' bytes delivered, the path is congested (what random loss
/// takes, the repairs bring back, so this is a queue overflowing).
pub const CONGESTED_BELOW: f64 = 0.9;

/// At or above this share delivered, a limited session may have more.
pub const CLEAR_ABOVE: f64 = 0.97;

/// A congested session's limit: this share of the rate its acks show (the queue drains).
pub const DRAIN_GAIN: f64 = 0.85;

/// A limited session congested again is cut to no less than this share of its limit.
pub const MAX_CUT: f64 = 0.5;

/// A limited session that held frames back and lost nothing: its limit grows this much a
/// sample (doubling in about 2.7 s).
pub const PROBE_GAIN: f64 = 1.08;

/// For this long after the path overflowed, the limit grows to no more than
/// [`CEILING_SHARE`] of the rate the acks showed then; then it probes past it.
pub const HOLD: Duration = Duration::from_secs(5);
/// After a cut by the queue's delay (before an overflow: no frame lost), the hold is this long.
pub const QUEUE_HOLD: Duration = Duration::from_secs(2);
pub const CEILING_SHARE: f64 = 0.95;

/// Past this multiple of the rate at which the path last overflowed, the limit grows by
/// [`FAST_PROBE_GAIN`] a sample instead: a path that carries more now is found within seconds.
pub const FAST_PROBE_PAST: f64 = 2.0;
pub const FAST_PROBE_GAIN: f64 = 1.3;

/// From [`CEILING_SHARE`] of the rate at which the path last overflowed to this multiple of it,
/// the limit grows by [`NEAR_PROBE_GAIN`] a sample: past the path's rate, a gentle probe fills
/// the queue slowly enough for its delay to show before it overflows.
pub const NEAR_PROBE_UNDER: f64 = 1.25;
pub const NEAR_PROBE_GAIN: f64 = 1.03;

/// The token bucket holds at most this much of the limit: the burst a limited session may send.
pub const BURST: Duration = Duration::from_millis(100);

/// No limit is set below this (bytes per second): a frame a second or so still goes.
pub const MIN_LIMIT: f64 = 16_000.0;

/// A limited session whose quickest ack in a sample is this much slower than the quickest of
/// the last [`BASE_WINDOW`] has a queue filling on its path (see the module doc).
pub const QUEUE_DELAY: Duration = Duration::from_millis(25);

/// How far back the quickest ack (the path with an empty queue) is looked for.
pub const BASE_WINDOW: Duration = Duration::from_secs(10);

/// The rate the acks show is measured over at least this long (a sample can hold as little
/// as two frames of a slow path: too few to say its rate).
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Frames remembered for matching acks to bytes sent: 4 s at 30 fps.
const SENT_FRAMES: usize = 128;

/// Samples remembered for [`BASE_WINDOW`] (at one per [`SAMPLE`], and a few more).
const BASE_SAMPLES: usize = 40;

/// One frame on the books.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    /// Bytes of every frame sent up to and including it.
    cum: u64,
    at: Instant,
}

/// One sample's starting point.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    rx: u64,
    sent: u64,
}

/// One chunked session's rate: see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Rate {
    sent: VecDeque<Sent>,
    sent_total: u64,
    /// The viewer's `r=` (mod 2^32) made continuous.
    rx_total: u64,
    last_rx: Option<u32>,
    /// Sample starting points, oldest first: the newest starts the sample running now; the
    /// oldest is the newest at least [`RATE_WINDOW`] old, for the rate the acks show.
    marks: VecDeque<Mark>,
    /// Bytes per second; `None`: unlimited.
    limit: Option<f64>,
    tokens: f64,
    refilled: Option<Instant>,
    /// The rate the acks showed when the path last overflowed, bytes per second, and until
    /// when the limit stays under it.
    congested_at: Option<f64>,
    hold_until: Option<Instant>,
    /// A frame was held back since the last sample.
    held_back: bool,
    /// The quickest ack (sent → acked) since the last sample.
    quickest: Option<Duration>,
    /// Each sample's quickest ack, for [`BASE_WINDOW`].
    quickest_before: VecDeque<(Instant, Duration)>,
    /// Frames held back by the limit, in all.
    pub limited_frames: u64,
    /// Times the limit was cut because a queue was filling (before it overflowed).
    pub queue_cuts: u64,
}

impl Rate {
    /// The limit now, bytes per second (`None`: unlimited).
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// Frame `seq` of `bytes` went to the viewer at `now` (its first sending, not a repair).
    pub fn on_sent(&mut self, seq: u64, bytes: u64, now: Instant) {
        self.sent_total += bytes;
        if self.sent.len() == SENT_FRAMES {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            seq,
            cum: self.sent_total,
            at: now,
        });
    }

    /// The viewer's `continue <seq> r=<rx>` came at `now`.
    pub fn on_ack(&mut self, seq: u64, rx: u32, now: Instant) {
        match self.last_rx.replace(rx) {
            Some(last) => self.rx_total += u64::from(rx.wrapping_sub(last)),
            None => self.rx_total = u64::from(rx),
        }
        // An ack can overtake the fan-out's record of the frame it acks (on loopback it comes
        // back before the send returns): no sample until the frame is on the books.
        if self.sent.back().is_none_or(|f| f.seq < seq) {
            return;
        }
        // The bytes of every frame up to the one acked.
        let Some(&acked) = self.sent.iter().rev().find(|f| f.seq <= seq) else {
            return;
        };
        if acked.seq == seq {
            let took = now.saturating_duration_since(acked.at);
            self.quickest = Some(self.quickest.map_or(took, |q| q.min(took)));
        }
        let here = Mark {
            at: now,
            rx: self.rx_total,
            sent: acked.cum,
        };
        let Some(&mark) = self.marks.back() else {
            self.marks.push_back(here);
            return;
        };
        let dt = now.saturating_duration_since(mark.at);
        if dt < SAMPLE {
            return;
        }
        self.marks.push_back(here);
        // The rate the acks show: since the newest mark at least RATE_WINDOW old (or the
        // oldest kept), this sample's included.
        while self.marks.len() > 2 && now.saturating_duration_since(self.marks[1].at) >= RATE_WINDOW
        {
            self.marks.pop_front();
        }
        let shown = self.marks.front().map_or(0.0, |m| {
            let secs = now.saturating_duration_since(m.at).as_secs_f64();
            here.rx.saturating_sub(m.rx) as f64 / secs.max(1e-3)
        });
        let (d_rx, d_sent) = (
            here.rx.saturating_sub(mark.rx) as f64,
            here.sent.saturating_sub(mark.sent) as f64,
        );
        let held_back = std::mem::take(&mut self.held_back);
        let queue_filling = self.queue_filling(now);
        if d_sent <= 0.0 {
            return;
        }
        let share = d_rx / d_sent;
        // A queue filling under a limit that grew since its last cut: it was probing past the
        // path's rate (while a hold lasts, the queue is draining from a cut already made).
        let probed_too_far =
            queue_filling && self.limit.is_some() && self.hold_until.is_none_or(|t| now >= t);
        if share < CONGESTED_BELOW || probed_too_far {
            let hold = if share >= CONGESTED_BELOW {
                self.queue_cuts += 1;
                QUEUE_HOLD
            } else {
                HOLD
            };
            // Under a limit, what arrived is partly what the limit let out: a cut below half
            // of it would feed on itself (less sent, less delivered, a lower limit).
            let drained = shown * DRAIN_GAIN;
            let floor = self.limit.map_or(0.0, |l| l * MAX_CUT);
            self.limit = Some(drained.max(floor).max(MIN_LIMIT));
            self.congested_at = Some(shown);
            self.hold_until = Some(now + hold);
            self.tokens = self.tokens.min(0.0);
        } else if share >= CLEAR_ABOVE {
            if let Some(limit) = self.limit {
                // Up to where it last overflowed, gently around it (a queue filling shows in
                // the acks before it overflows), fast well past it: the path has changed.
                let at = self.congested_at.unwrap_or(0.0);
                let gain = if limit > at * FAST_PROBE_PAST {
                    FAST_PROBE_GAIN
                } else if limit >= at * CEILING_SHARE && limit < at * NEAR_PROBE_UNDER {
                    NEAR_PROBE_GAIN
                } else {
                    PROBE_GAIN
                };
                let mut next = limit * gain;
                // For HOLD after an overflow, stay just under the rate it overflowed at: a
                // limit that keeps probing into the queue keeps losing frames to it.
                if let (Some(at), Some(until)) = (self.congested_at, self.hold_until) {
                    if now < until {
                        next = next.min(at * CEILING_SHARE).max(limit);
                    }
                }
                self.limit = held_back.then_some(next);
            }
        }
    }

    /// Ends a sample's delay reading: whether its quickest ack was [`QUEUE_DELAY`] slower than
    /// the quickest of the samples of the last [`BASE_WINDOW`] (this one included).
    fn queue_filling(&mut self, now: Instant) -> bool {
        let Some(quickest) = self.quickest.take() else {
            return false;
        };
        while self
            .quickest_before
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > BASE_WINDOW)
            || self.quickest_before.len() >= BASE_SAMPLES
        {
            self.quickest_before.pop_front();
        }
        self.quickest_before.push_back((now, quickest));
        let base = self.quickest_before.iter().map(|&(_, d)| d).min();
        base.is_some_and(|base| quickest >= base + QUEUE_DELAY)
    }

    /// Whether a frame of `bytes` may go now; a frame held back is counted.
    pub fn admit(&mut self, bytes: u64, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            self.refilled = None;
            return true;
        };
        let since = self
            .refilled
            .replace(now)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.tokens = (self.tokens + limit * since.as_secs_f64()).min(limit * BURST.as_secs_f64());
        if self.tokens >= 0.0 {
            self.tokens -= bytes as f64;
            true
        } else {
            self.held_back = true;
            self.limited_frames += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`run`] saw.
    struct Ran {
        /// Frames sent.
        sent: u64,
        /// Bytes delivered in the last second.
        rx_last_second: f64,
        /// Frames cut short at the queue (it overflowed).
        cut: u64,
    }

    /// A path that carries `carry` bytes a second behind a queue of 200 ms (tail drop), and
    /// its viewer, who acks the newest frame whose bytes got through (or were cut at the queue:
    /// given up) each interval, its `r=` counting the bytes of the frames up to it, as
    /// surv-client does.
    struct Path {
        carry: f64,
        /// (seq, bytes of it still queued), in order.
        queue: VecDeque<(u64, f64)>,
        /// Bytes delivered, in all.
        rx: u64,
        /// The next frame's seq.
        seq: u64,
    }

    impl Path {
        fn new(carry: f64) -> Self {
            Path {
                carry,
                queue: VecDeque::new(),
                rx: 0,
                seq: 0,
            }
        }

        /// Frames of `frame` bytes offered at 30 fps for `secs` from `t0`.
        fn run(&mut self, rate: &mut Rate, frame: u64, secs: u64, t0: Instant) -> Ran {
            let interval = Duration::from_micros(33_333);
            let (mut sent, mut rx_last_second, mut cut) = (0, 0u64, 0);
            let n = secs * 30;
            for i in 0..n {
                let now = t0 + interval * i as u32;
                if rate.admit(frame, now) {
                    rate.on_sent(self.seq, frame, now);
                    sent += 1;
                    let queued: f64 = self.queue.iter().map(|q| q.1).sum();
                    let room = (self.carry * 0.2 - queued).max(0.0);
                    if room < frame as f64 {
                        cut += 1;
                    }
                    self.queue.push_back((self.seq, (frame as f64).min(room)));
                    self.seq += 1;
                }
                let mut budget = self.carry / 30.0;
                let mut done = None;
                while let Some(head) = self.queue.front_mut() {
                    let out = head.1.min(budget);
                    head.1 -= out;
                    budget -= out;
                    self.rx += out as u64;
                    if i >= n - 30 {
                        rx_last_second += out as u64;
                    }
                    if head.1 > 0.0 {
                        break;
                    }
                    done = Some((head.0, self.rx));
                    self.queue.pop_front();
                }
                if let Some((seq, rx)) = done {
                    rate.on_ack(seq, rx as u32, now);
                }
            }
            Ran {
                sent,
                rx_last_second: rx_last_second as f64,
                cut,
            }
        }
    }

    #[test]
    fn a_stream_that_fits_is_never_limited() {
        let mut r = Rate::default();
        let ran = Path::new(10e6).run(&mut r, 20_000, 10, Instant::now());
        assert_eq!(ran.sent, 300);
        assert_eq!(ran.cut, 0);
        assert_eq!(r.limit(), None);
        assert_eq!(r.limited_frames, 0);
    }

    /// 60 KB frames (14.4 Mbit/s) into a 4 Mbit/s path: the limit settles near the path's
    /// rate, and most of what is sent arrives.
    #[test]
    fn a_slow_path_gets_fewer_frames_at_about_its_rate() {
        let mut r = Rate::default();
        let carry = 500_000.0; // 4 Mbit/s
        let ran = Path::new(carry).run(&mut r, 60_000, 20, Instant::now());
        let limit = r.limit().expect("limited");
        assert!((0.5 * carry..2.0 * carry).contains(&limit), "{limit}");
        // Roughly the 8 frames a second that fit, not 30.
        assert!(
            (60..=240).contains(&ran.sent),
            "{} frames in 20 s",
            ran.sent
        );
        assert!(
            ran.rx_last_second > 0.6 * carry,
            "{} B/s delivered",
            ran.rx_last_second
        );
    }

    /// Once limited, the limit probes for more and finds the path's rate by its queue's delay
    /// (every ack a little later), not by overflowing it: over a minute behind the 4 Mbit/s
    /// path, no frame is cut at the queue, and the path stays nearly full.
    #[test]
    fn a_limited_path_is_probed_without_overflowing_its_queue() {
        let mut r = Rate::default();
        let (carry, frame) = (500_000.0, 60_000);
        let t0 = Instant::now();
        let mut path = Path::new(carry);
        let first = path.run(&mut r, frame, 10, t0);
        assert!(first.cut > 0, "the first overflow shows the path's rate");
        assert!(r.limit().is_some());
        let cuts = r.queue_cuts;
        let then = path.run(&mut r, frame, 60, t0 + Duration::from_secs(10));
        assert_eq!(then.cut, 0, "frames cut at the queue in the minute after");
        assert!(
            r.queue_cuts > cuts,
            "no probe past the path's rate in a minute"
        );
        // 500 frames of 60 KB fit in the minute; at least 70 % of them go.
        assert!(then.sent >= 350, "{} frames in 60 s", then.sent);
    }

    /// The path recovers: the limit grows back and goes once the stream fits.
    #[test]
    fn a_limit_lifts_when_the_path_carries_the_stream_again() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let mut path = Path::new(500_000.0);
        path.run(&mut r, 60_000, 10, t0);
        assert!(r.limit().is_some());
        // Up to 5 s under the rate it last overflowed at, then probing: 1.08 a sample up to
        // twice that rate, 1.3 past it.
        let t1 = t0 + Duration::from_secs(10);
        path.carry = 10e6;
        let ran = path.run(&mut r, 60_000, 10, t1);
        assert_eq!(r.limit(), None, "lifted within 10 s");
        assert!(
            ran.sent >= 100,
            "{} of 300 frames in the first 10 s",
            ran.sent
        );
        let ran = path.run(&mut r, 60_000, 5, t1 + Duration::from_secs(10));
        assert_eq!(ran.sent, 150, "the full rate after");
    }

    /// Random loss that repairs make good (every frame's bytes arrive) never limits.
    #[test]
    fn repaired_random_loss_is_not_congestion() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let mut rx = 0u32;
        for i in 0..300u64 {
            let now = t0 + Duration::from_millis(33 * i);
            assert!(r.admit(30_000, now));
            r.on_sent(i, 30_000, now);
            // 10 % of the chunks lost, then resent: all 30,000 bytes arrive, a little late.
            rx = rx.wrapping_add(if i % 10 == 0 { 27_000 } else { 30_000 });
            if i % 10 == 1 {
                rx = rx.wrapping_add(3_000);
            }
            r.on_ack(i, rx, now);
        }
        assert_eq!(r.limit(), None);
    }

    /// `r=` counts the bytes of the frames up to the one acked (surv-client leaves out newer
    /// frames' chunks): a frame still in repair under it, a chunk short, is not congestion.
    #[test]
    fn a_frame_in_repair_under_the_ack_is_not_congestion() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let frame = 40_000u64;
        for i in 0..300u64 {
            let now = t0 + Duration::from_millis(100 * i);
            assert!(r.admit(frame, now), "frame {i} held back");
            r.on_sent(i, frame, now);
            // Every third ack covers a frame still missing a 1,172-byte chunk.
            let short = if i % 3 == 0 { 1_172 } else { 0 };
            r.on_ack(i, ((i + 1) * frame - short) as u32, now);
        }
        assert_eq!(r.limit(), None);
    }

    /// On loopback the ack of a frame can come before the fan-out has booked it as sent:
    /// that ack is no sample (it would count the frame as received but not sent, and the next
    /// sample a frame short).
    #[test]
    fn an_ack_ahead_of_the_books_is_no_sample() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        let frame = 23_000u64;
        for i in 0..300u64 {
            let now = t0 + Duration::from_millis(100 * i);
            assert!(r.admit(frame, now), "frame {i} held back");
            let rx = ((i + 1) * frame) as u32;
            // Every fifth frame's ack arrives before the frame is booked.
            if i % 5 == 0 {
                r.on_ack(i, rx, now);
                r.on_sent(i, frame, now);
            } else {
                r.on_sent(i, frame, now);
                r.on_ack(i, rx, now);
            }
        }
        assert_eq!(r.limit(), None);
    }

    #[test]
    fn the_received_count_wraps_at_2_pow_32() {
        let mut r = Rate::default();
        r.on_ack(0, u32::MAX - 10, Instant::now());
        r.on_ack(1, 5, Instant::now());
        assert_eq!(r.rx_total, u64::from(u32::MAX - 10) + 16);
    }
}
