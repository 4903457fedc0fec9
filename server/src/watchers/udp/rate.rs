//! A chunked session's rate, sans-IO: what its acks say the path delivers, and which frames go
//! to it. A viewer behind a link slower than the stream (a 4 Mbit/s uplink for a 14 Mbit/s
//! 1080p picture) is sent fewer whole frames, not every frame to be cut down in a router's queue
//! (where most frames would lose a chunk, and the queue would add its length to every frame's
//! latency).
//!
//! ```text
//!  frame sent ─▶ on_sent(seq, bytes): bytes of the frames sent so far, by seq
//!  "continue <seq> r=<rx>" ─▶ on_ack: every SAMPLE, delivered = Δrx ÷ Δ(bytes of frames up to seq)
//!      delivered < 90 %  ─▶ congested: limit = 0.85 × the rate the acks show (drain the queue),
//!                           at least half the limit before
//!      delivered ≥ 97 %  ─▶ limited and frames held back: limit × 1.08, for 5 s after an
//!                           overflow no higher than 0.95 × the rate it overflowed at, then
//!                           probing past it (× 1.3 once past twice that rate)
//!                           limited but nothing held back: no limit (the stream fits)
//!  next frame ─▶ admit(bytes): a token bucket at the limit; a frame goes while it is not in debt
//! ```
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
pub const CEILING_SHARE: f64 = 0.95;

/// Past this multiple of the rate at which the path last overflowed, the limit grows by
/// [`FAST_PROBE_GAIN`] a sample instead: a path that carries more now is found within seconds.
pub const FAST_PROBE_PAST: f64 = 2.0;
pub const FAST_PROBE_GAIN: f64 = 1.3;

/// The token bucket holds at most this much of the limit: the burst a limited session may send.
pub const BURST: Duration = Duration::from_millis(100);

/// No limit is set below this (bytes per second): a frame a second or so still goes.
pub const MIN_LIMIT: f64 = 16_000.0;

/// Frames remembered for matching acks to bytes sent: 4 s at 30 fps.
const SENT_FRAMES: usize = 128;

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
    /// (seq, bytes of every frame sent up to and including it).
    sent: VecDeque<(u64, u64)>,
    sent_total: u64,
    /// The viewer's `r=` (mod 2^32) made continuous.
    rx_total: u64,
    last_rx: Option<u32>,
    mark: Option<Mark>,
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
    /// Frames held back by the limit, in all.
    pub limited_frames: u64,
}

impl Rate {
    /// The limit now, bytes per second (`None`: unlimited).
    pub fn limit(&self) -> Option<f64> {
        self.limit
    }

    /// Frame `seq` of `bytes` went to the viewer (its first sending, not a repair).
    pub fn on_sent(&mut self, seq: u64, bytes: u64) {
        self.sent_total += bytes;
        if self.sent.len() == SENT_FRAMES {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, self.sent_total));
    }

    /// The viewer's `continue <seq> r=<rx>` came at `now`.
    pub fn on_ack(&mut self, seq: u64, rx: u32, now: Instant) {
        match self.last_rx.replace(rx) {
            Some(last) => self.rx_total += u64::from(rx.wrapping_sub(last)),
            None => self.rx_total = u64::from(rx),
        }
        // An ack can overtake the fan-out's record of the frame it acks (on loopback it comes
        // back before the send returns): no sample until the frame is on the books.
        if self.sent.back().is_none_or(|&(s, _)| s < seq) {
            return;
        }
        // The bytes of every frame up to the one acked.
        let Some(sent) = self
            .sent
            .iter()
            .rev()
            .find(|&&(s, _)| s <= seq)
            .map(|&(_, cum)| cum)
        else {
            return;
        };
        let here = Mark {
            at: now,
            rx: self.rx_total,
            sent,
        };
        let Some(mark) = self.mark else {
            self.mark = Some(here);
            return;
        };
        let dt = now.saturating_duration_since(mark.at);
        if dt < SAMPLE {
            return;
        }
        self.mark = Some(here);
        let (d_rx, d_sent) = (
            here.rx.saturating_sub(mark.rx) as f64,
            here.sent.saturating_sub(mark.sent) as f64,
        );
        let held_back = std::mem::take(&mut self.held_back);
        if d_sent <= 0.0 {
            return;
        }
        let share = d_rx / d_sent;
        if share < CONGESTED_BELOW {
            // Under a limit, what arrived is partly what the limit let out: a cut below half
            // of it would feed on itself (less sent, less delivered, a lower limit).
            let drained = d_rx / dt.as_secs_f64() * DRAIN_GAIN;
            let floor = self.limit.map_or(0.0, |l| l * MAX_CUT);
            self.limit = Some(drained.max(floor).max(MIN_LIMIT));
            self.congested_at = Some(d_rx / dt.as_secs_f64());
            self.hold_until = Some(now + HOLD);
            self.tokens = self.tokens.min(0.0);
        } else if share >= CLEAR_ABOVE {
            if let Some(limit) = self.limit {
                // Gently up to where it last overflowed, fast past it: the path has changed.
                let known = self.congested_at.unwrap_or(0.0) * FAST_PROBE_PAST;
                let gain = if limit > known {
                    FAST_PROBE_GAIN
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

    /// A path that carries `carry` bytes a second behind a queue of 200 ms (tail drop), frames
    /// of `frame` bytes offered at 30 fps for `secs`; the viewer acks the newest frame whose
    /// bytes got through (or were cut at the queue: given up) with its `r=`, each interval.
    /// Returns the frames sent and the bytes delivered in the last second.
    fn run(rate: &mut Rate, carry: f64, frame: u64, secs: u64, t0: Instant) -> (u64, f64) {
        let interval = Duration::from_micros(33_333);
        // (seq, bytes of it still queued) in order; the queue holds 200 ms of the path.
        let mut queue: VecDeque<(u64, f64)> = VecDeque::new();
        let (mut rx, mut sent, mut rx_last_second) = (0u64, 0, 0u64);
        let mut done = None;
        let n = secs * 30;
        for i in 0..n {
            let now = t0 + interval * i as u32;
            if rate.admit(frame, now) {
                rate.on_sent(i, frame);
                sent += 1;
                let queued: f64 = queue.iter().map(|q| q.1).sum();
                let room = (carry * 0.2 - queued).max(0.0);
                queue.push_back((i, (frame as f64).min(room)));
            }
            let mut budget = carry / 30.0;
            while let Some(head) = queue.front_mut() {
                let out = head.1.min(budget);
                head.1 -= out;
                budget -= out;
                rx += out as u64;
                if i >= n - 30 {
                    rx_last_second += out as u64;
                }
                if head.1 > 0.0 {
                    break;
                }
                done = Some(head.0);
                queue.pop_front();
            }
            if let Some(seq) = done {
                rate.on_ack(seq, rx as u32, now);
            }
        }
        (sent, rx_last_second as f64)
    }

    #[test]
    fn a_stream_that_fits_is_never_limited() {
        let mut r = Rate::default();
        let (sent, _) = run(&mut r, 10e6, 20_000, 10, Instant::now());
        assert_eq!(sent, 300);
        assert_eq!(r.limit(), None);
        assert_eq!(r.limited_frames, 0);
    }

    /// 60 KB frames (14.4 Mbit/s) into a 4 Mbit/s path: the limit settles near the path's
    /// rate, and most of what is sent arrives.
    #[test]
    fn a_slow_path_gets_fewer_frames_at_about_its_rate() {
        let mut r = Rate::default();
        let carry = 500_000.0; // 4 Mbit/s
        let (sent, rx_last) = run(&mut r, carry, 60_000, 20, Instant::now());
        let limit = r.limit().expect("limited");
        assert!((0.5 * carry..2.0 * carry).contains(&limit), "{limit}");
        // Roughly the 8 frames a second that fit, not 30.
        assert!((60..=240).contains(&sent), "{sent} frames in 20 s");
        assert!(rx_last > 0.6 * carry, "{rx_last} B/s delivered");
    }

    /// The path recovers: the limit grows back and goes once the stream fits.
    #[test]
    fn a_limit_lifts_when_the_path_carries_the_stream_again() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        run(&mut r, 500_000.0, 60_000, 10, t0);
        assert!(r.limit().is_some());
        // Up to 5 s under the rate it last overflowed at, then probing: 1.08 a sample up to
        // twice that rate, 1.3 past it.
        let t1 = t0 + Duration::from_secs(10);
        let (sent, _) = run(&mut r, 10e6, 60_000, 10, t1);
        assert_eq!(r.limit(), None, "lifted within 10 s");
        assert!(sent >= 100, "{sent} of 300 frames in the first 10 s");
        let (sent, _) = run(&mut r, 10e6, 60_000, 5, t1 + Duration::from_secs(10));
        assert_eq!(sent, 150, "the full rate after");
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
            r.on_sent(i, 30_000);
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
            r.on_sent(i, frame);
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
                r.on_sent(i, frame);
            } else {
                r.on_sent(i, frame);
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
