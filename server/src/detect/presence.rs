//! Presence of each label in a camera's picture, with hysteresis, sans-IO: fed the detections of
//! each analysed frame and the time of every frame, it says when a label appears (one start,
//! at the first frame that shows it), how many of it there are, and when it is gone (one end,
//! once it has not been seen for `hold`; its end time is the last frame that showed it). A
//! label that flickers out for a frame or two, as detector scores do near the threshold, stays
//! one presence.

use std::time::Duration;

use super::Detection;

/// What changed about one label.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `class` appeared at `at_us` (capture time): its best box and score in that frame.
    Start {
        class: usize,
        at_us: u64,
        score: f32,
        region: [f32; 4],
    },
    /// How many of `class` the latest analysed frame showed (also 0 at its end).
    Count { class: usize, count: usize },
    /// `class` was seen from `start_us` to `end_us`, its best score `peak`, the box of its last
    /// sighting.
    End {
        class: usize,
        start_us: u64,
        end_us: u64,
        peak: f32,
        region: [f32; 4],
    },
}

/// A label now present.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Present {
    pub class: usize,
    pub start_us: u64,
    pub last_seen_us: u64,
    pub peak: f32,
    /// Objects of this label in the latest analysed frame that showed any.
    pub count: usize,
    /// The best box and score of the latest frame that showed it.
    pub score: f32,
    pub region: [f32; 4],
}

/// Every label's presence in one camera's picture.
#[derive(Debug)]
pub struct Presence {
    hold_us: u64,
    /// In the order labels appeared.
    present: Vec<Present>,
}

impl Presence {
    pub fn new(hold: Duration) -> Presence {
        Presence {
            hold_us: u64::try_from(hold.as_micros()).unwrap_or(u64::MAX),
            present: Vec::new(),
        }
    }

    pub fn present(&self) -> &[Present] {
        &self.present
    }

    /// An analysed frame captured at `at_us` showed `found` (the reported classes only, best
    /// first). Returns what changed, starts and counts first, ends last.
    pub fn analysed(&mut self, at_us: u64, found: &[Detection]) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut classes: Vec<usize> = found.iter().map(|d| d.class).collect();
        classes.sort_unstable();
        classes.dedup();
        for class in classes {
            let count = found.iter().filter(|d| d.class == class).count();
            let Some(best) = found.iter().find(|d| d.class == class) else {
                continue;
            };
            match self.present.iter_mut().find(|p| p.class == class) {
                Some(p) => {
                    p.last_seen_us = at_us.max(p.last_seen_us);
                    p.peak = p.peak.max(best.score);
                    (p.score, p.region) = (best.score, best.region);
                    if p.count != count {
                        p.count = count;
                        changes.push(Change::Count { class, count });
                    }
                }
                None => {
                    self.present.push(Present {
                        class,
                        start_us: at_us,
                        last_seen_us: at_us,
                        peak: best.score,
                        count,
                        score: best.score,
                        region: best.region,
                    });
                    changes.push(Change::Start {
                        class,
                        at_us,
                        score: best.score,
                        region: best.region,
                    });
                    changes.push(Change::Count { class, count });
                }
            }
        }
        changes.extend(self.tick(at_us));
        changes
    }

    /// Time has come to `now_us` (a frame's capture time, analysed or not): ends what has not
    /// been seen for the hold.
    pub fn tick(&mut self, now_us: u64) -> Vec<Change> {
        let hold_us = self.hold_us;
        let (gone, kept): (Vec<Present>, Vec<Present>) = self
            .present
            .drain(..)
            .partition(|p| now_us > p.last_seen_us && now_us - p.last_seen_us >= hold_us);
        self.present = kept;
        gone.into_iter().flat_map(ended).collect()
    }

    /// Everything present ends now (the source is lost, the server stops).
    pub fn finish(&mut self) -> Vec<Change> {
        self.present.drain(..).flat_map(ended).collect()
    }
}

fn ended(p: Present) -> [Change; 2] {
    [
        Change::End {
            class: p.class,
            start_us: p.start_us,
            end_us: p.last_seen_us,
            peak: p.peak,
            region: p.region,
        },
        Change::Count {
            class: p.class,
            count: 0,
        },
    ]
}
