//! A chunked session's loss repair, viewer side and sans-IO: when to ask the server for a
//! frame's missing chunks again (`nack`) and when to give the frame up for the newest.
//!
//! A frame in assembly is asked for once its missing chunks are lost rather than late: its last
//! chunk came (chunks leave in order), a chunk of a newer frame came, or [`GAP`] passed without
//! one of its chunks. It is asked for again once the answer came and still left it short (a
//! chunk resent for it arrived, then [`GAP`] passed without another: the server resends in one
//! burst), or when the answer is overdue: a repair's round trip after the `nack` (1.5 × the
//! measured one, from a `nack` to the first chunk resent for it, plus [`RENACK_MARGIN`], at
//! least [`MIN_RENACK`]; [`RENACK_AFTER`] before any measurement); at most [`MAX_NACKS`] times
//! in all (the server answers as often). It is given up as soon as its last `nack`'s answer is
//! in or overdue in the same way, and in any case [`GIVE_UP_AFTER`] after its
//! first chunk: frames that completed after it wait for it (they leave in order), so this wait
//! is what a repair may add to their latency. The server repairs a frame within 200 ms of
//! sending it; one round costs a round trip and at most [`CHECK_EVERY`] of timer.

use std::time::{Duration, Instant};

use surv_proto::reassembly::SLOTS;
use surv_proto::{Incomplete, Nack};

/// How often the receiver checks its incomplete frames while it has any.
pub const CHECK_EVERY: Duration = Duration::from_millis(5);

/// No chunk of an incomplete frame for this long: its missing chunks are lost.
pub const GAP: Duration = Duration::from_millis(5);

/// A frame still incomplete this long after its `nack` is asked for again, before a repair's
/// round trip has been measured.
pub const RENACK_AFTER: Duration = Duration::from_millis(60);

/// Added to 1.5 × the measured repair round trip before asking again.
pub const RENACK_MARGIN: Duration = Duration::from_millis(5);

/// However short the round trip, a frame is asked for again no sooner than this.
pub const MIN_RENACK: Duration = Duration::from_millis(10);

/// `nack`s per frame at most.
pub const MAX_NACKS: u8 = 2;

/// A frame not complete this long after its first chunk is given up, whatever its repairs.
pub const GIVE_UP_AFTER: Duration = Duration::from_millis(250);

/// What to do about the frames in assembly now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send this `nack`.
    Nack(Nack),
    /// Give the frame up (then `continue` past it).
    GiveUp(u64),
}

/// The `nack`s sent for the frames in assembly.
#[derive(Debug, Default)]
pub struct NackTimer {
    /// seq, nacks sent, when the last went, whether its answer was timed. At most as many as
    /// frames in assembly ([`SLOTS`]).
    asked: Vec<(u64, u8, Instant, bool)>,
    /// `nack`s sent in all.
    pub sent: u64,
    /// The smoothed repair round trip (1/4 gain); `None` before the first resent chunk.
    rtt: Option<Duration>,
}

impl NackTimer {
    /// A chunk flagged as resent arrived for frame `seq` at `now`: the first after each `nack`
    /// times the repair's round trip.
    pub fn on_resent(&mut self, seq: u64, now: Instant) {
        if let Some(a) = self.asked.iter_mut().find(|a| a.0 == seq && !a.3) {
            a.3 = true;
            let sample = now.saturating_duration_since(a.2);
            self.rtt = Some(self.rtt.map_or(sample, |rtt| (rtt * 3 + sample) / 4));
        }
    }

    /// How long after a `nack` a frame still incomplete is asked for again.
    pub fn renack_after(&self) -> Duration {
        self.rtt.map_or(RENACK_AFTER, |rtt| {
            (rtt * 3 / 2 + RENACK_MARGIN).max(MIN_RENACK)
        })
    }

    /// The steps due at `now` for `frames` (the reassembler's incomplete frames, oldest first);
    /// `newest_seen`: the newest frame any chunk has come for.
    pub fn due(
        &mut self,
        frames: impl Iterator<Item = Incomplete>,
        newest_seen: Option<u64>,
        now: Instant,
        out: &mut Vec<Step>,
    ) {
        out.clear();
        let mut live = [None::<u64>; SLOTS];
        let renack_after = self.renack_after();
        for (i, f) in frames.enumerate() {
            if let Some(slot) = live.get_mut(i) {
                *slot = Some(f.seq);
            }
            let asked = self.asked.iter_mut().find(|a| a.0 == f.seq);
            // The last nack's answer is in (its resent chunks came, then GAP of silence) and
            // the frame still lacks chunks, or the answer is overdue: those chunks are lost.
            let answered_or_overdue = |&(_, _, at, answered): &(u64, u8, Instant, bool)| {
                now.saturating_duration_since(at) >= renack_after
                    || (answered && now.saturating_duration_since(f.last_at) >= GAP)
            };
            let spent = asked
                .as_deref()
                .is_some_and(|a| a.1 >= MAX_NACKS && answered_or_overdue(a));
            if spent || now.saturating_duration_since(f.first_at) >= GIVE_UP_AFTER {
                out.push(Step::GiveUp(f.seq));
                continue;
            }
            let ask = match asked.as_deref() {
                None => {
                    // Its last chunk came (the parity's last, when it has parity: a frame
                    // that lost data chunks may still be whole from its parity).
                    u16::from(f.highest_index) + 1
                        >= u16::from(f.data_chunks) + u16::from(f.parity_chunks)
                        || newest_seen.is_some_and(|n| n > f.seq)
                        || now.saturating_duration_since(f.last_at) >= GAP
                }
                Some(a) => a.1 < MAX_NACKS && answered_or_overdue(a),
            };
            if !ask || f.need == 0 {
                continue;
            }
            match asked {
                Some(a) => {
                    a.1 += 1;
                    a.2 = now;
                    a.3 = false;
                }
                None => self.asked.push((f.seq, 1, now, false)),
            }
            self.sent += 1;
            out.push(Step::Nack(Nack {
                seq: f.seq,
                need: f.need,
                missing: f.missing,
            }));
        }
        // Forget frames no longer in assembly (completed, given up, pushed out).
        self.asked.retain(|a| live.contains(&Some(a.0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, first_at: Instant, last_at: Instant, highest_index: u8) -> Incomplete {
        Incomplete {
            seq,
            first_at,
            last_at,
            highest_index,
            data_chunks: 10,
            parity_chunks: 0,
            need: 2,
            missing: 0b1001,
        }
    }

    fn steps(t: &mut NackTimer, frames: &[Incomplete], newest: u64, now: Instant) -> Vec<Step> {
        let mut out = Vec::new();
        t.due(frames.iter().copied(), Some(newest), now, &mut out);
        out
    }

    #[test]
    fn a_frame_is_asked_for_when_its_losses_show_then_again_then_given_up() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = NackTimer::default();
        let nack = Step::Nack(Nack {
            seq: 5,
            need: 2,
            missing: 0b1001,
        });
        // Chunks still coming (index 6 of 10, 1 ms ago): nothing yet.
        assert_eq!(steps(&mut t, &[frame(5, t0, ms(2), 6)], 5, ms(3)), []);
        // Its last chunk came: ask at once.
        assert_eq!(steps(&mut t, &[frame(5, t0, ms(4), 9)], 5, ms(4)), [nack]);
        // Not again before RENACK_AFTER …
        assert_eq!(steps(&mut t, &[frame(5, t0, ms(4), 9)], 5, ms(40)), []);
        // … then once more, and never a third time.
        assert_eq!(steps(&mut t, &[frame(5, t0, ms(4), 9)], 5, ms(64)), [nack]);
        assert_eq!(steps(&mut t, &[frame(5, t0, ms(4), 9)], 5, ms(123)), []);
        assert_eq!(t.sent, 2);
        // Given up once the second nack's answer is as overdue as a re-ask would be (64 + 60
        // ms): frames held behind it wait no longer.
        assert_eq!(
            steps(&mut t, &[frame(5, t0, ms(4), 9)], 5, ms(124)),
            [Step::GiveUp(5)]
        );
        // And any frame GIVE_UP_AFTER after its first chunk, whatever its nacks.
        let mut fresh = NackTimer::default();
        assert_eq!(
            steps(&mut fresh, &[frame(6, t0, ms(4), 3)], 6, ms(250)),
            [Step::GiveUp(6)]
        );
    }

    /// Once a repair's round trip is measured (2 ms here), a frame whose answer never came is
    /// asked for again after 1.5 × it + 5 ms, at least 10 ms, not after the 60 ms default.
    #[test]
    fn asking_again_follows_the_measured_repair_round_trip() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = NackTimer::default();
        assert_eq!(t.renack_after(), RENACK_AFTER);
        // Frame 4's repair times the round trip: 2 ms.
        let f4 = frame(4, t0, ms(1), 9);
        assert_eq!(steps(&mut t, &[f4], 4, ms(1)).len(), 1);
        t.on_resent(4, ms(3));
        t.on_resent(4, ms(4)); // later chunks of the same repair are not samples
        assert_eq!(t.renack_after(), MIN_RENACK);
        // Frame 5's nack gets no answer at all: asked again MIN_RENACK later.
        let f5 = frame(5, ms(20), ms(21), 9);
        assert_eq!(steps(&mut t, &[f5], 5, ms(21)).len(), 1);
        assert_eq!(steps(&mut t, &[f5], 5, ms(30)), []);
        assert_eq!(steps(&mut t, &[f5], 5, ms(31)).len(), 1, "asked again");
        // A slow repair (40 ms) stretches the wait: 0.75 × 2 + 0.25 × 40 = 11.5 ms smoothed.
        t.on_resent(5, ms(71));
        assert_eq!(
            t.renack_after(),
            Duration::from_micros(11_500 * 3 / 2 + 5_000)
        );
    }

    /// An answer that came and left the frame short (its resent chunks lost again) is asked
    /// for again GAP after the last chunk, not a whole repair round trip later; after the last
    /// nack allowed the same moment gives it up.
    #[test]
    fn an_answer_that_leaves_the_frame_short_is_asked_again_at_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = NackTimer::default();
        let f = frame(5, t0, ms(1), 9);
        assert_eq!(steps(&mut t, &[f], 5, ms(1)).len(), 1);
        // The answer: chunks resent at 41 and 42 ms (a 40 ms round trip), one still missing.
        t.on_resent(5, ms(41));
        let f = frame(5, t0, ms(42), 9);
        assert_eq!(t.renack_after(), Duration::from_millis(65));
        assert_eq!(steps(&mut t, &[f], 5, ms(46)), []);
        assert_eq!(
            steps(&mut t, &[f], 5, ms(47)).len(),
            1,
            "GAP after the answer"
        );
        // The second answer at 88 ms, still short: given up at 93, not at 47 + 65.
        t.on_resent(5, ms(88));
        let f = frame(5, t0, ms(88), 9);
        assert_eq!(steps(&mut t, &[f], 5, ms(92)), []);
        assert_eq!(steps(&mut t, &[f], 5, ms(93)), [Step::GiveUp(5)]);
    }

    /// A frame with parity is not asked for when its last data chunk comes, but when its last
    /// parity chunk does: the parity may still make it whole.
    #[test]
    fn a_frame_with_parity_waits_for_its_last_parity_chunk() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = NackTimer::default();
        let with_parity = |highest| Incomplete {
            parity_chunks: 3,
            need: 1,
            ..frame(5, t0, ms(1), highest)
        };
        assert_eq!(steps(&mut t, &[with_parity(9)], 5, ms(1)), []);
        assert_eq!(steps(&mut t, &[with_parity(11)], 5, ms(1)), []);
        let out = steps(&mut t, &[with_parity(12)], 5, ms(1));
        assert_eq!(
            out,
            [Step::Nack(Nack {
                seq: 5,
                need: 1,
                missing: 0b1001
            })]
        );
    }

    #[test]
    fn a_newer_frame_or_a_silence_shows_the_losses() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = NackTimer::default();
        // A chunk of frame 6 came: frame 5's missing chunks are lost.
        let out = steps(
            &mut t,
            &[frame(5, t0, ms(1), 3), frame(6, ms(1), ms(1), 0)],
            6,
            ms(1),
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Step::Nack(Nack { seq: 5, .. })));
        // Frame 6 goes quiet for GAP.
        let out = steps(
            &mut t,
            &[frame(5, t0, ms(1), 3), frame(6, ms(1), ms(1), 0)],
            6,
            ms(6),
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Step::Nack(Nack { seq: 6, .. })));
        // Frame 5 completes: forgotten; a later frame 5 would be new (never happens: late).
        steps(&mut t, &[frame(6, ms(1), ms(1), 0)], 6, ms(7));
        assert_eq!(t.asked.len(), 1);
    }
}
