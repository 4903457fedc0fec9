//! A fixed-rate schedule for sources that make their own frames (the test pattern, stills and
//! folders replayed at `--fps`).

use std::time::Duration;

/// A fixed-rate schedule: tick `n` is due `n / fps` seconds after the start.
///
/// Kept apart from the clock so that its decisions are tested with made-up elapsed times.
#[derive(Debug)]
pub struct Pacer {
    fps: u32,
    next_tick: u64,
    /// Ticks skipped so far because the caller fell more than a frame behind.
    pub skipped_ticks: u64,
}

impl Pacer {
    pub fn new(fps: u32) -> Self {
        Pacer {
            fps,
            next_tick: 0,
            skipped_ticks: 0,
        }
    }

    fn due(&self, tick: u64) -> Duration {
        let nanos = u128::from(tick) * 1_000_000_000 / u128::from(self.fps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long to wait, `elapsed` after the start, before producing the frame of the next tick.
    /// More than one frame late, it skips ahead to the current tick rather than bursting frames
    /// to catch up.
    pub fn wait(&mut self, elapsed: Duration) -> Duration {
        let due = self.due(self.next_tick);
        if elapsed < due {
            return due - elapsed;
        }
        let current = elapsed.as_nanos() * u128::from(self.fps) / 1_000_000_000;
        let current = u64::try_from(current).unwrap_or(u64::MAX);
        if current > self.next_tick {
            self.skipped_ticks += current - self.next_tick;
            self.next_tick = current;
        }
        Duration::ZERO
    }

    /// The frame of the current tick was produced.
    pub fn advance(&mut self) {
        self.next_tick = self.next_tick.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_waits_for_the_next_tick() {
        let mut pacer = Pacer::new(10);
        assert_eq!(pacer.wait(Duration::ZERO), Duration::ZERO);
        pacer.advance();
        assert_eq!(
            pacer.wait(Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        // Woken a little late: no wait, no skip.
        assert_eq!(pacer.wait(Duration::from_millis(150)), Duration::ZERO);
        assert_eq!(pacer.skipped_ticks, 0);
        pacer.advance();
        assert_eq!(
            pacer.wait(Duration::from_millis(199)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn pacer_skips_ahead_instead_of_bursting() {
        let mut pacer = Pacer::new(10);
        pacer.wait(Duration::ZERO);
        pacer.advance();
        // Tick 1 was due at 100 ms; at 450 ms it is more than a frame late: go to tick 4.
        assert_eq!(pacer.wait(Duration::from_millis(450)), Duration::ZERO);
        assert_eq!(pacer.skipped_ticks, 3);
        pacer.advance();
        // Back on schedule: tick 5 at 500 ms.
        assert_eq!(
            pacer.wait(Duration::from_millis(460)),
            Duration::from_millis(40)
        );
    }
}
