//! Recording only around events (`--record-on motion`, `--record-on person`): which received
//! frames go to the segments, by whether each is an event frame (the motion flag in its tag, or
//! a wanted object in its objects segment: `RecFrame::event`) and their capture times.
//!
//! While nothing moves, the newest `pre_roll` of capture time is kept in memory (a ring, also
//! capped in frames). The first flagged frame opens a recording: the ring is written out first,
//! then every frame, until a frame comes more than `post_roll` after the last flagged one; that
//! frame closes the recording (the segment is cut, so each recording is its own files) and goes
//! back to the ring. A flag inside the post-roll keeps the same recording going.
//!
//! The server flags frames from the first analysed frame with motion until its `--motion-hold`
//! has passed without motion (and lists an object from its first sighting until its
//! `--detect-hold` has passed without one), so a recording spans
//! `[first flagged − pre_roll, last flagged + post_roll]`, the last flagged frame being the
//! event's end plus the hold.

use std::collections::VecDeque;
use std::time::Duration;

use super::RecFrame;

/// The most pre-roll a recorder keeps, so that its memory stays bounded.
pub const MAX_PRE_ROLL: Duration = Duration::from_secs(60);

/// What the recorder thread does with what the gate lets out.
#[derive(Debug)]
pub(super) enum Gated {
    /// Write this frame.
    Record(RecFrame),
    /// The recording ended: close the segment being written.
    Cut,
}

/// Frames not recorded: received while nothing moved, outside every pre- and post-roll.
#[derive(Debug)]
pub(super) struct EventGate {
    pre_us: u64,
    post_us: u64,
    /// At most this many frames in the ring, whatever their times say.
    max_ring: usize,
    ring: VecDeque<RecFrame>,
    /// While recording: the capture time of the last flagged frame.
    last_event_us: Option<u64>,
    /// Frames that left the ring unrecorded.
    pub(super) idle: u64,
}

impl EventGate {
    /// A gate for a stream of `fps` frames per second. `pre_roll` is clamped to
    /// [`MAX_PRE_ROLL`].
    pub(super) fn new(pre_roll: Duration, post_roll: Duration, fps: u32) -> EventGate {
        let pre = pre_roll.min(MAX_PRE_ROLL);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // Twice the nominal count: a server may send faster than it said.
        let nominal = pre.as_secs_f64() * f64::from(fps.max(1));
        EventGate {
            pre_us: us(pre),
            post_us: us(post_roll),
            max_ring: (nominal * 2.0) as usize + 2,
            ring: VecDeque::new(),
            last_event_us: None,
            idle: 0,
        }
    }

    /// Takes the next received frame; appends to `out` what to do now.
    pub(super) fn take(&mut self, f: RecFrame, out: &mut Vec<Gated>) {
        let t = f.capture_unix_us;
        if let Some(last) = self.last_event_us {
            if f.event {
                self.last_event_us = Some(last.max(t));
                out.push(Gated::Record(f));
                return;
            }
            if t <= last.saturating_add(self.post_us) {
                out.push(Gated::Record(f));
                return;
            }
            self.last_event_us = None;
            out.push(Gated::Cut);
        }
        if f.event {
            self.last_event_us = Some(t);
            // The pre-roll: what the ring holds within `pre_us` of this frame.
            let since = t.saturating_sub(self.pre_us);
            for old in self.ring.drain(..) {
                if old.capture_unix_us >= since && old.capture_unix_us <= t {
                    out.push(Gated::Record(old));
                } else {
                    self.idle += 1;
                }
            }
            out.push(Gated::Record(f));
            return;
        }
        self.ring.push_back(f);
        let since = t.saturating_sub(self.pre_us);
        while self.ring.len() > self.max_ring
            || self.ring.front().is_some_and(|o| o.capture_unix_us < since)
        {
            self.ring.pop_front();
            self.idle += 1;
        }
    }

    /// The stream ended: what is left in the ring was never recorded.
    pub(super) fn finish(&mut self) {
        self.idle += self.ring.len() as u64;
        self.ring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MS: u64 = 1000;

    fn frame(t_ms: u64, event: bool) -> RecFrame {
        RecFrame {
            jpeg: Bytes::from_static(b"\xff\xd8\xff\xd9"),
            capture_unix_us: 1_000_000_000 + t_ms * MS,
            event,
        }
    }

    /// Runs frames every 100 ms, flagged in `[on, off)` ms; returns the recorded times (ms)
    /// with `None` for each cut, and the idle count.
    fn run(gate: &mut EventGate, until_ms: u64, flagged: &[(u64, u64)]) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for t in (0..until_ms).step_by(100) {
            let motion = flagged.iter().any(|&(on, off)| (on..off).contains(&t));
            gate.take(frame(t, motion), &mut out);
        }
        gate.finish();
        out.into_iter()
            .map(|g| match g {
                Gated::Record(f) => Some((f.capture_unix_us - 1_000_000_000) / MS),
                Gated::Cut => None,
            })
            .collect()
    }

    #[test]
    fn one_event_is_recorded_with_its_pre_and_post_roll_then_cut() {
        let mut gate = EventGate::new(Duration::from_secs(1), Duration::from_secs(2), 10);
        let got = run(&mut gate, 10_000, &[(3000, 4000)]);
        let mut want: Vec<Option<u64>> = (2000..=5900).step_by(100).map(Some).collect();
        want.push(None);
        assert_eq!(got, want);
        // 100 frames in all; 40 recorded.
        assert_eq!(gate.idle, 60);
    }

    #[test]
    fn motion_within_the_post_roll_keeps_one_recording() {
        let mut gate = EventGate::new(Duration::from_millis(500), Duration::from_secs(1), 10);
        let got = run(&mut gate, 6000, &[(1000, 1500), (2200, 2500)]);
        let cuts = got.iter().filter(|g| g.is_none()).count();
        assert_eq!(cuts, 1, "{got:?}");
        assert_eq!(got.first(), Some(&Some(500)));
        assert_eq!(got[got.len() - 2], Some(3400));
    }

    #[test]
    fn two_events_apart_are_two_recordings() {
        let mut gate = EventGate::new(Duration::from_millis(500), Duration::from_millis(500), 10);
        let got = run(&mut gate, 8000, &[(1000, 1200), (5000, 5200)]);
        let parts: Vec<&[Option<u64>]> = got.split(Option::is_none).collect();
        // Two recordings, each closed by a cut, then nothing after the last cut.
        assert_eq!(parts.len(), 3, "{got:?}");
        assert_eq!(parts[0].first(), Some(&Some(500)));
        assert_eq!(parts[0].last(), Some(&Some(1600)));
        assert_eq!(parts[1].first(), Some(&Some(4500)));
        assert_eq!(parts[1].last(), Some(&Some(5600)));
        assert!(parts[2].is_empty());
    }

    #[test]
    fn nothing_moves_nothing_is_recorded_and_memory_stays_bounded() {
        let mut gate = EventGate::new(Duration::from_secs(5), Duration::from_secs(5), 10);
        let mut out = Vec::new();
        for t in 0..10_000 {
            gate.take(frame(t * 100, false), &mut out);
            assert!(gate.ring.len() <= 51, "{}", gate.ring.len());
        }
        assert!(out.is_empty());
        // Frames that come far faster than the stream's rate are capped by count.
        for t in 0..10_000 {
            gate.take(frame(1_000_000 + t, false), &mut out);
            assert!(gate.ring.len() <= gate.max_ring);
        }
        gate.finish();
        assert_eq!(gate.idle, 20_000);
    }

    #[test]
    fn an_event_at_the_first_frame_has_no_pre_roll_to_give() {
        let mut gate = EventGate::new(Duration::from_secs(5), Duration::ZERO, 10);
        let got = run(&mut gate, 1000, &[(0, 300)]);
        assert_eq!(got, vec![Some(0), Some(100), Some(200), None]);
    }
}
