//! Nobody falls behind: each peer is sent as much of its camera's one H.264 stream as its link
//! carries, by leaving out whole temporal layers (`frame::H264AccessUnit::layer`), never by
//! queueing.
//!
//! A peer's **level** says what it gets, lowest first: [`KEYFRAMES`] (the IDR pictures alone),
//! then layer 0, layers 0–1, and [`ALL`]. surv's encoder makes three layers (half the frames
//! are layer 2, a quarter layer 1), so the levels are about 1/60, 1/4, 1/2 and all of the
//! frames at a 2 s GOP; a passed-through camera has layers 0 and 2 only (its pictures no other
//! refers to), so its levels 1 and 2 are the same.
//!
//! The level follows str0m's bandwidth estimate (TWCC, delay- and loss-based), against each
//! level's bit rate measured on the camera's own units ([`LevelRates`]). Down at once, as far
//! as needed, when the estimate falls under [`FIT`] of the level's rate. Up to the highest
//! level whose rate has been within [`FIT`] of the estimate for [`UP_AFTER`] on end (a probe's
//! brief overshoot does not count), as long after the last step, and only at a picture where
//! the new level's stream can start (a layer-0 picture, or a keyframe when coming up from
//! keyframes alone, which the peer then asks the camera for), so every picture sent has its
//! references.
//!
//! A level the peer had to leave within [`FAILED_WITHIN`] of reaching it failed: it (and any
//! above it) is tried again only after twice the last wait (up to [`MAX_BACKOFF`]); a probe
//! that overshot a
//! shaper's burst would otherwise make the peer climb and fall every few seconds.
//! [`STEADY_AFTER`] at a level forgets its failures.
//!
//! The estimate cannot climb past a thinned peer's level by itself: str0m grows it to about
//! 1.5 × what is sent and no further, and probes for more only when a peer sends under 65 % of
//! its estimate (its periodic probe, every 5 s) or when the estimate has not moved for 15 s. A
//! peer held below [`ALL`] whose estimate sits well above its own level's rate but short of the
//! next level's (application-limited, or a link that carries just that) asks for a probe every
//! [`PROBE_EVERY`] ([`Thinning::wants_probe`]; the engine restarts the peer's estimator at its
//! estimate, which probes at once), unless the next level is still waiting after a failure.
//!
//! The estimate misses a queue that stays full: a peer whose receiver asks for resends of
//! more than [`LOSSY`] of its packets over a second, while its round trip stands
//! [`QUEUED_RTT`] over the lowest it had, steps down a level too ([`lossy`]). Loss with no
//! queue behind it (a Wi-Fi or a last mile that loses packets at random) is repaired by
//! resends and keeps the level.
//!
//! The estimate lags the link: until it falls, a peer's packets wait in its pacer's queue.
//! So a unit is also left out when that queue would take longer than [`QUEUE_LIMIT`] to drain
//! at the estimate ([`QUEUE_LIMIT_LAYER0`] for a layer-0 picture; never a keyframe), and
//! with it every unit after it that needs its level or more, until one that needs less (the
//! pictures after a left-out one may refer to it): the newest frames, not a growing delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::frame::TOP_LAYER;

/// The IDR pictures alone.
pub(super) const KEYFRAMES: u8 = 0;
/// Every picture.
pub(super) const ALL: u8 = TOP_LAYER + 1;
/// A peer steps up when the next level's rate is at most this share of the estimate (room for
/// resends, RTCP and the rate's wobble), and down when the estimate falls under this share of
/// its level's rate: a band between, as an estimate of a link with room to spare hovers only
/// a little above what is sent on it (measured: 1.0-1.5 Mbit/s for a 0.8 Mbit/s stream on
/// loopback), while a congested link's falls under the stream at once.
const FIT: f64 = 0.85;
/// A higher level must have fitted this long on end, and the last step be this old, for a
/// step up to it.
const UP_AFTER: Duration = Duration::from_secs(2);
/// A step down this soon after the step up to that level means the level failed.
const FAILED_WITHIN: Duration = Duration::from_secs(4);
/// The longest a failed level waits before it is tried again: with a probe every
/// [`PROBE_EVERY`], a longer wait is what kept a peer from the whole stream after its link
/// cleared (8 s: 7.0 s after the lift in two runs of five; 4 s: one of six).
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// A peer held below [`ALL`] by an application-limited estimate asks for a probe this often.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// An estimate is taken for application-limited when the peer's level's rate is at most this
/// share of it (str0m's settles at about 1.5 × what is sent: 0.67).
const APP_LIMITED: f64 = 0.8;
/// This long at a level and its failures are forgotten.
const STEADY_AFTER: Duration = Duration::from_secs(10);
/// Seconds of the camera's stream the rates are measured over (whole seconds of media time).
const WINDOW_SECS: u64 = 4;
/// The rates are known once the whole seconds span this much of the stream (90 kHz): less is
/// mostly the first keyframe.
const MIN_SPAN_90K: u64 = 90_000;
/// A peer whose receiver sent NACKs for more than this share of the packets sent to it over a
/// statistics interval (and at least [`LOSSY_NACKS`] of them) steps down a level, when its
/// round trip shows a queue ([`QUEUED_RTT`]): a link dropping at a full queue does not keep
/// its level; one losing at random does.
const LOSSY: f64 = 0.02;
const LOSSY_NACKS: u64 = 3;
/// A round trip this much over the lowest the peer had means a queue on its path. Random loss
/// leaves it alone: with 3 % of the packets lost on loopback and no queue, the rule without
/// this stepped a peer down to keyframes alone (9 frames a second shown, of 30).
const QUEUED_RTT: Duration = Duration::from_millis(30);
/// Before its first receiver report gives a round trip (its first second or so), a peer is
/// taken for losing at a queue only past this share: random loss of 3 % NACKed 2.5-4.5 % of the
/// packets in that first interval and stepped every joining Chromium down to half the frames
/// for 2-3 s; a join that overflows a slow link's queue loses far more.
const LOSSY_WITHOUT_RTT: f64 = 0.10;

/// Whether `nacks` NACKs for `packets` packets sent, at round trip `rtt` against the lowest
/// the peer had, mean a queue that drops (see [`LOSSY`]). Without a round trip yet, the NACKs
/// alone say it, past [`LOSSY_WITHOUT_RTT`].
pub(super) fn lossy(
    nacks: u64,
    packets: u64,
    rtt: Option<Duration>,
    min_rtt: Option<Duration>,
) -> bool {
    let share = match (rtt, min_rtt) {
        (Some(rtt), Some(min)) if rtt.saturating_sub(min) >= QUEUED_RTT => LOSSY,
        (Some(_), Some(_)) => return false,
        _ => LOSSY_WITHOUT_RTT,
    };
    nacks >= LOSSY_NACKS && nacks as f64 > packets as f64 * share
}

/// A unit of the top layers is left out when the peer's send queue would take longer than
/// this to drain at the estimate...
const QUEUE_LIMIT: Duration = Duration::from_millis(150);
/// ...a layer-0 picture when longer than this (the peer then waits for the next keyframe).
const QUEUE_LIMIT_LAYER0: Duration = Duration::from_millis(300);

/// The level a unit needs: 0 for a keyframe, its layer + 1 otherwise.
pub(super) fn unit_level(keyframe: bool, layer: u8) -> u8 {
    if keyframe {
        KEYFRAMES
    } else {
        layer.min(TOP_LAYER) + 1
    }
}

/// A level's name, for `/status`.
pub(super) fn level_name(level: u8) -> &'static str {
    match level {
        KEYFRAMES => "keyframes",
        1 => "quarter",
        2 => "half",
        _ => "all",
    }
}

/// A camera's bytes at each level over its last [`WINDOW_SECS`] whole seconds of media time.
#[derive(Debug, Default)]
pub(super) struct LevelRates {
    /// (second of media time, bytes per unit level), oldest first; the last may be partial.
    seconds: VecDeque<(u64, [u64; ALL as usize + 1])>,
    /// The first unit's media time: the first second is partial, from there on (the feed
    /// starts when the first peer of a camera comes, mid-second).
    start_90k: u64,
    /// Bits per second at each level over the whole seconds: worked out when a second starts
    /// (the only time it changes), read for every peer at every unit.
    bps: [Option<u64>; ALL as usize + 1],
}

impl LevelRates {
    /// A unit of `level` and `bytes` at `media_time_90k`.
    pub(super) fn add(&mut self, media_time_90k: u64, level: u8, bytes: usize) {
        let second = media_time_90k / 90_000;
        if self.seconds.is_empty() {
            self.start_90k = media_time_90k;
        }
        match self.seconds.back_mut() {
            Some((s, counts)) if *s == second => {
                counts[usize::from(level.min(ALL))] += bytes as u64;
            }
            // An older second (the clock stepped back): a new run of seconds.
            Some((s, _)) if *s > second => {
                self.seconds.clear();
                self.add(media_time_90k, level, bytes);
            }
            // A new second: the one before it is whole now (the first second: the rates stay
            // unknown).
            _ => {
                let mut counts = [0; ALL as usize + 1];
                counts[usize::from(level.min(ALL))] = bytes as u64;
                self.seconds.push_back((second, counts));
                while self
                    .seconds
                    .front()
                    .is_some_and(|(s, _)| s + WINDOW_SECS < second)
                {
                    self.seconds.pop_front();
                }
                self.bps = std::array::from_fn(|l| self.measure(l as u8));
            }
        }
    }

    /// Bits per second a peer at `level` is sent, over the whole seconds measured; `None`
    /// before they span [`MIN_SPAN_90K`] of media time.
    pub(super) fn bps(&self, level: u8) -> Option<u64> {
        self.bps[usize::from(level.min(ALL))]
    }

    fn measure(&self, level: u8) -> Option<u64> {
        let (newest, _) = self.seconds.back()?;
        let bytes: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| s < newest)
            .map(|(_, counts)| counts[..=usize::from(level.min(ALL))].iter().sum::<u64>())
            .sum();
        // From the oldest second kept, or the first unit within it; seconds without a unit (a
        // stalled camera) count as empty ones.
        let from = (self.seconds.front()?.0 * 90_000).max(self.start_90k);
        let span = (newest * 90_000).saturating_sub(from);
        (span >= MIN_SPAN_90K).then(|| bytes * 8 * 90_000 / span)
    }
}

/// One peer's level.
#[derive(Debug)]
pub(super) struct Thinning {
    level: u8,
    /// Where the estimate says it could be; above `level` until a picture lets it go up.
    wanted: u8,
    /// When the level last changed.
    last_step: Option<Instant>,
    /// Per level above the peer's: since when every estimate has fitted it.
    fits_since: [Option<Instant>; ALL as usize + 1],
    /// Per level: when it last failed, and how long it waits after that.
    failed: [Option<(Instant, Duration)>; ALL as usize + 1],
    /// After a unit was left out for the queue: units needing more than this wait for one
    /// needing this or less.
    cap: Option<u8>,
    /// When it last asked for a probe.
    last_probe: Option<Instant>,
    /// Probes asked for, for the counters.
    pub(super) probes: u64,
    /// Units left out, for the counters...
    pub(super) thinned: u64,
    /// ...of which for the queue.
    pub(super) late: u64,
}

impl Default for Thinning {
    fn default() -> Self {
        Thinning {
            level: ALL,
            wanted: ALL,
            last_step: None,
            fits_since: [None; ALL as usize + 1],
            failed: [None; ALL as usize + 1],
            cap: None,
            last_probe: None,
            probes: 0,
            thinned: 0,
            late: 0,
        }
    }
}

impl Thinning {
    pub(super) fn level(&self) -> u8 {
        self.level
    }

    /// The newest estimate of what the peer's link carries, in bits per second, at `now`:
    /// given again as time passes (a step up waits for the estimate to hold).
    pub(super) fn estimate(&mut self, bps: u64, rates: &LevelRates, now: Instant) {
        let fits = |l: u8, share: f64| rates.bps(l).map(|r| r as f64 <= bps as f64 * share);
        // The highest level the link carries; keyframes alone whatever the estimate (they are
        // what a viewer needs to see anything at all). Nothing measured yet: stay.
        let Some(fitting) = (KEYFRAMES + 1..=ALL)
            .rev()
            .find(|&l| fits(l, 1.0 / FIT) == Some(true))
            .or_else(|| rates.bps(ALL).map(|_| KEYFRAMES))
        else {
            return;
        };
        let at_level_for = self.last_step.map(|t| now.saturating_duration_since(t));
        if at_level_for.is_some_and(|d| d >= STEADY_AFTER) {
            self.failed[usize::from(self.level)] = None;
        }
        if fitting < self.level {
            self.step_down(fitting, now);
            return;
        }
        for l in KEYFRAMES..=ALL {
            let since = &mut self.fits_since[usize::from(l)];
            if l > self.level && fits(l, FIT) == Some(true) {
                since.get_or_insert(now);
            } else {
                *since = None;
            }
        }
        if self.wanted > self.level {
            if self.fits_since[usize::from(self.wanted)].is_some() {
                // Waits for its picture.
                return;
            }
            self.wanted = self.level;
        }
        let rested = self
            .last_step
            .is_none_or(|t| now.saturating_duration_since(t) >= UP_AFTER);
        if !rested {
            return;
        }
        // The highest level held long enough, not past one still waiting after a failure.
        let held = |l: u8| {
            self.fits_since[usize::from(l)]
                .is_some_and(|t| now.saturating_duration_since(t) >= UP_AFTER)
        };
        if let Some(up) = (self.level + 1..=ALL)
            .take_while(|&l| self.may_retry(l, now))
            .filter(|&l| held(l))
            .last()
        {
            self.wanted = up;
        }
    }

    /// Whether the peer's estimator should probe for more now, at estimate `bps`: the peer is
    /// held below [`ALL`] (not on its way up), the next level does not fit the estimate but its
    /// own level's rate is at most [`APP_LIMITED`] of it, the next level is not waiting after
    /// a failure, and its last step and its last probe are [`PROBE_EVERY`] old. Counted.
    pub(super) fn wants_probe(&mut self, bps: u64, rates: &LevelRates, now: Instant) -> bool {
        if self.level >= ALL || self.wanted > self.level {
            return false;
        }
        let next = self.level + 1;
        let (Some(own), Some(above)) = (rates.bps(self.level), rates.bps(next)) else {
            return false;
        };
        let bps = bps as f64;
        if above as f64 <= bps * FIT || own as f64 > bps * APP_LIMITED {
            return false;
        }
        let old =
            |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) >= PROBE_EVERY);
        if !(old(self.last_step) && old(self.last_probe) && self.may_retry(next, now)) {
            return false;
        }
        self.last_probe = Some(now);
        self.probes += 1;
        true
    }

    /// Whether `level` may be tried at `now`: it has not failed, or its wait after the last
    /// failure is over.
    fn may_retry(&self, level: u8, now: Instant) -> bool {
        self.failed[usize::from(level)]
            .is_none_or(|(t, wait)| now.saturating_duration_since(t) >= wait)
    }

    /// The peer's receiver asked for resends of more than [`LOSSY`] of what it was sent over
    /// the last statistics interval (`lossy`): its link drops packets, most likely at a full
    /// queue in front of it, which the delay-based estimate stops seeing once the queue stops
    /// growing, while resends complete its frames ever later. One level down.
    pub(super) fn losing(&mut self, now: Instant) {
        if self.level > KEYFRAMES {
            self.step_down(self.level - 1, now);
        }
    }

    fn step_down(&mut self, to: u8, now: Instant) {
        let at_level_for = self.last_step.map(|t| now.saturating_duration_since(t));
        if at_level_for.is_some_and(|d| d < FAILED_WITHIN) {
            let slot = &mut self.failed[usize::from(self.level)];
            let wait = slot.map_or(UP_AFTER, |(_, w)| (w * 2).min(MAX_BACKOFF));
            *slot = Some((now, wait));
        }
        self.level = to;
        self.wanted = to;
        self.last_step = Some(now);
        self.fits_since = [None; ALL as usize + 1];
    }

    /// Whether a step up from keyframes alone waits for the next keyframe (which the peer
    /// then asks the camera for, rather than wait a whole GOP).
    pub(super) fn waits_for_keyframe(&self) -> bool {
        self.level == KEYFRAMES && self.wanted > KEYFRAMES
    }

    /// Whether a unit needing `level` goes to the peer, whose send queue takes `queued` to
    /// drain at the estimate; a step up waiting for its picture takes effect here.
    pub(super) fn admit(&mut self, level: u8, queued: Duration, now: Instant) -> bool {
        if self.wanted > self.level {
            // From keyframes alone only at a keyframe; else at any layer-0 picture: the
            // pictures after it refer to it or to what comes after.
            let starts = level == KEYFRAMES || (self.level > KEYFRAMES && level == 1);
            if starts {
                self.level = self.wanted;
                self.last_step = Some(now);
                self.fits_since = [None; ALL as usize + 1];
            }
        }
        let mut admitted = level <= self.level;
        match self.cap {
            Some(cap) if level <= cap => self.cap = None,
            Some(_) => admitted = false,
            None => {}
        }
        let limit = if level == 1 {
            QUEUE_LIMIT_LAYER0
        } else {
            QUEUE_LIMIT
        };
        if admitted && level > KEYFRAMES && queued > limit {
            self.cap = Some(level - 1);
            self.late += 1;
            admitted = false;
        }
        if !admitted {
            self.thinned += 1;
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send queue with nothing in it.
    const EMPTY: Duration = Duration::ZERO;

    /// `secs` seconds of a 30 fps camera coded with three layers (T0 T2 T1 T2…), an IDR every
    /// 60 frames: keyframes `key` bytes, layer 0 `l0`, layer 1 `l1`, layer 2 `l2`.
    fn camera(secs: u64, key: usize, l0: usize, l1: usize, l2: usize) -> LevelRates {
        let mut rates = LevelRates::default();
        for i in 0..secs * 30 {
            let (level, bytes) = match (i % 60, i % 4) {
                (0, _) => (KEYFRAMES, key),
                (_, 0) => (1, l0),
                (_, 2) => (2, l1),
                _ => (3, l2),
            };
            rates.add(i * 3_000, level, bytes);
        }
        rates
    }

    #[test]
    fn rates_add_up_by_level_over_whole_seconds() {
        let rates = camera(6, 30_000, 8_000, 4_000, 2_000);
        // Per 2 s: 1 keyframe, 14 layer 0, 15 layer 1, 30 layer 2.
        let per_2s = |key: u64, l0: u64, l1: u64, l2: u64| {
            (30_000 * key + 8_000 * l0 + 4_000 * l1 + 2_000 * l2) * 8 / 2
        };
        assert_eq!(rates.bps(KEYFRAMES), Some(per_2s(1, 0, 0, 0)));
        assert_eq!(rates.bps(1), Some(per_2s(1, 14, 0, 0)));
        assert_eq!(rates.bps(2), Some(per_2s(1, 14, 15, 0)));
        assert_eq!(rates.bps(ALL), Some(per_2s(1, 14, 15, 30)));
        // Nothing whole yet: unknown.
        let mut young = LevelRates::default();
        young.add(0, 3, 1000);
        young.add(80_000, 3, 1000);
        assert_eq!(young.bps(ALL), None);
        young.add(90_000, 3, 1000);
        assert_eq!(young.bps(ALL), Some(16_000));
        // A clock stepped back starts again rather than counting a negative span.
        young.add(0, 3, 1000);
        assert_eq!(young.bps(ALL), None);
        // A feed that starts mid-second (0.6 s): its first second is 0.4 s of the stream, not
        // a whole one. 1,000 bytes a frame at 30 fps is 240 kbit/s from the first measure on
        // (counted as a whole second, the first 0.4 s read as 96 kbit/s, and 1.4 s as 168).
        let mut late = LevelRates::default();
        let mut measured = Vec::new();
        for i in 18..30 * 6 {
            late.add(i * 3_000, 3, 1000);
            if i % 30 == 0 {
                measured.push(late.bps(ALL));
            }
        }
        assert_eq!(
            measured,
            [
                None,
                Some(240_000),
                Some(240_000),
                Some(240_000),
                Some(240_000)
            ]
        );
    }

    #[test]
    fn down_at_once_and_up_to_the_highest_level_the_estimate_held() {
        let rates = camera(6, 30_000, 8_000, 4_000, 2_000);
        let all = rates.bps(ALL).unwrap() as f64;
        let half = rates.bps(2).unwrap() as f64;
        let quarter = rates.bps(1).unwrap() as f64;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut thin = Thinning::default();
        assert_eq!(thin.level(), ALL);
        // Room for all: stays.
        thin.estimate((all / FIT) as u64 + 1, &rates, t0);
        assert_eq!(thin.level(), ALL);
        // Room for half only (all's rate well over it): down at once, and a layer-2 picture
        // is left out.
        thin.estimate((half * FIT) as u64 + 1, &rates, t0);
        assert_eq!(thin.level(), 2);
        assert!(!thin.admit(3, EMPTY, t0));
        assert!(
            thin.admit(2, EMPTY, t0)
                && thin.admit(1, EMPTY, t0)
                && thin.admit(KEYFRAMES, EMPTY, t0)
        );
        // Less than keyframes need: keyframes alone all the same, two levels down at once.
        thin.estimate(1, &rates, t0);
        assert_eq!(thin.level(), KEYFRAMES);
        assert!(
            !thin.admit(1, EMPTY, t0)
                && !thin.admit(2, EMPTY, t0)
                && thin.admit(KEYFRAMES, EMPTY, t0)
        );
        assert_eq!(thin.thinned, 3);
        // Room for everything: once it held UP_AFTER, straight up to all, and from keyframes
        // alone only at a keyframe (which the peer asks for).
        let plenty = (all * 2.0) as u64;
        thin.estimate(plenty, &rates, at(100));
        thin.estimate(plenty, &rates, at(1_900));
        assert!(thin.admit(KEYFRAMES, EMPTY, at(1_900)));
        assert_eq!(thin.level(), KEYFRAMES, "not held long enough");
        assert!(!thin.waits_for_keyframe());
        thin.estimate(plenty, &rates, at(2_100));
        assert!(thin.waits_for_keyframe());
        assert!(!thin.admit(1, EMPTY, at(2_100)));
        assert_eq!(
            thin.level(),
            KEYFRAMES,
            "a layer-0 picture does not start it"
        );
        assert!(thin.admit(KEYFRAMES, EMPTY, at(2_200)));
        assert_eq!(thin.level(), ALL);
        assert!(!thin.waits_for_keyframe());
        // Down to a quarter (4.1 s after reaching all: not a failure).
        thin.estimate((quarter * FIT) as u64 + 1, &rates, at(6_300));
        assert_eq!(thin.level(), 1);
        // A brief overshoot (a probe) then a fall to what fits now: no step.
        thin.estimate(plenty, &rates, at(6_400));
        thin.estimate((quarter * FIT) as u64 + 1, &rates, at(6_600));
        thin.estimate(plenty, &rates, at(8_400));
        thin.estimate(plenty, &rates, at(9_400));
        assert!(thin.admit(1, EMPTY, at(9_400)));
        assert_eq!(thin.level(), 1, "the estimate fitted all only since 8.4 s");
        // Room for half, not all, held from 10 s: half at 12 s, at the next layer-0
        // picture, not at a layer-1 one, and no further.
        let half_only = (half / FIT) as u64 + 1;
        thin.estimate(half_only, &rates, at(10_000));
        thin.estimate(half_only, &rates, at(12_000));
        assert!(!thin.admit(2, EMPTY, at(12_000)));
        assert!(thin.admit(1, EMPTY, at(12_050)));
        assert_eq!(thin.level(), 2);
        assert!(thin.admit(2, EMPTY, at(12_100)) && !thin.admit(3, EMPTY, at(12_100)));
        // All held from 12.1 s: wanted at 14.1 s; the estimate falls back before a layer-0
        // picture comes: the step is off.
        thin.estimate(plenty, &rates, at(12_100));
        thin.estimate(plenty, &rates, at(14_100));
        thin.estimate(half_only, &rates, at(14_200));
        assert!(thin.admit(1, EMPTY, at(14_300)));
        assert_eq!(thin.level(), 2, "all no longer fits");
        // From a layer level, up at a layer-0 picture only: a layer-2 one's reference (a
        // layer-1 picture) may be one this peer did not get.
        thin.estimate(plenty, &rates, at(14_400));
        thin.estimate(plenty, &rates, at(16_400));
        assert!(!thin.admit(3, EMPTY, at(16_400)));
        assert!(thin.admit(2, EMPTY, at(16_433)));
        assert_eq!(thin.level(), 2);
        assert!(thin.admit(1, EMPTY, at(16_466)));
        assert_eq!(thin.level(), ALL);
        assert!(thin.admit(3, EMPTY, at(16_500)));
    }

    #[test]
    fn a_level_left_soon_after_reaching_it_waits_longer_each_time() {
        let rates = camera(6, 30_000, 8_000, 4_000, 2_000);
        let all = rates.bps(ALL).unwrap() as f64;
        let half = (rates.bps(2).unwrap() as f64 * FIT) as u64 + 1;
        let plenty = (all * 2.0) as u64;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut thin = Thinning::default();
        thin.estimate(half, &rates, t0);
        // Up to all at 2 s (held from 0 s... the step down was at 0 s).
        let climb = |thin: &mut Thinning, from: u64| {
            thin.estimate(plenty, &rates, at(from));
            thin.estimate(plenty, &rates, at(from + 2_000));
            thin.admit(1, EMPTY, at(from + 2_000));
            thin.level()
        };
        assert_eq!(climb(&mut thin, 0), ALL);
        // Falls back 1 s later: all failed, waits 2 s.
        thin.estimate(half, &rates, at(3_000));
        assert_eq!(thin.level(), 2);
        assert_eq!(climb(&mut thin, 3_100), ALL, "2 s wait, over at 5.1 s");
        // Fails again: 4 s now, from 6.1 s.
        thin.estimate(half, &rates, at(6_100));
        assert_eq!(climb(&mut thin, 6_200), 2, "at 8.2 s: 2.1 s of 4");
        thin.estimate(plenty, &rates, at(10_100));
        thin.admit(1, EMPTY, at(10_100));
        assert_eq!(thin.level(), ALL);
        // Ten seconds there: forgotten; the next failure waits 2 s again.
        thin.estimate(plenty, &rates, at(20_200));
        thin.estimate(half, &rates, at(21_000));
        assert_eq!(thin.level(), 2, "left after 10.9 s: not a failure");
        assert_eq!(climb(&mut thin, 21_000), ALL);
        assert_eq!(thin.failed[usize::from(ALL)], None);
        // Failing again and again waits no longer than MAX_BACKOFF: 2, 4, 4 s.
        thin.estimate(half, &rates, at(23_500));
        assert_eq!(climb(&mut thin, 25_500), ALL);
        thin.estimate(half, &rates, at(28_000));
        thin.estimate(plenty, &rates, at(30_000));
        thin.estimate(plenty, &rates, at(31_900));
        thin.admit(1, EMPTY, at(31_900));
        assert_eq!(thin.level(), 2, "3.9 s after 28 s");
        thin.estimate(plenty, &rates, at(32_000));
        thin.admit(1, EMPTY, at(32_000));
        assert_eq!(thin.level(), ALL, "4 s after 28 s");
        thin.estimate(half, &rates, at(33_000));
        assert_eq!(climb(&mut thin, 33_000), 2, "at 35 s: 2 s of 4");
        thin.estimate(plenty, &rates, at(37_000));
        thin.admit(1, EMPTY, at(37_000));
        assert_eq!(thin.level(), ALL, "4 s after 33 s, not 8");
    }

    #[test]
    fn a_peer_held_down_by_an_application_limited_estimate_asks_for_probes() {
        // Layer 2 heavy enough that all's rate is 1.9 × half's.
        let rates = camera(6, 30_000, 8_000, 4_000, 6_000);
        let half = rates.bps(2).unwrap() as f64;
        let all = rates.bps(ALL).unwrap() as f64;
        assert!(all > half * 1.5 / FIT);
        // What str0m's estimate settles at for a peer sent half: 1.5 × that.
        let limited = (half * 1.5) as u64;
        let plenty = (all * 2.0) as u64;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut thin = Thinning::default();
        assert!(
            !thin.wants_probe(limited, &rates, t0),
            "at all: nothing to probe for"
        );
        thin.estimate(limited, &rates, t0);
        assert_eq!(thin.level(), 2);
        assert!(
            !thin.wants_probe(limited, &rates, at(1_000)),
            "the step is 1 s old"
        );
        assert!(thin.wants_probe(limited, &rates, at(2_000)));
        assert!(
            !thin.wants_probe(limited, &rates, at(3_000)),
            "the probe is 1 s old"
        );
        assert!(thin.wants_probe(limited, &rates, at(4_000)));
        // An estimate just over half's rate: the link, not the sender, holds it there.
        let tight = (half / FIT) as u64 + 1;
        thin.estimate(tight, &rates, at(6_000));
        assert_eq!(thin.level(), 2);
        assert!(!thin.wants_probe(tight, &rates, at(6_000)));
        // All fails twice (left 1 s after reaching it): a probe waits for its retry too.
        for (from, fell) in [(6_000, 9_000), (11_000, 14_000)] {
            thin.estimate(plenty, &rates, at(from));
            thin.estimate(plenty, &rates, at(from + 2_000));
            assert!(thin.admit(1, EMPTY, at(from + 2_000)));
            assert_eq!(thin.level(), ALL);
            assert!(!thin.wants_probe(plenty, &rates, at(from + 2_000)));
            thin.estimate(limited, &rates, at(fell));
            assert_eq!(thin.level(), 2);
        }
        assert!(
            !thin.wants_probe(limited, &rates, at(16_000)),
            "all waits 4 s from 14 s"
        );
        assert!(thin.wants_probe(limited, &rates, at(18_000)));
        assert_eq!(thin.probes, 3);
    }

    #[test]
    fn a_long_queue_leaves_out_the_newest_units_and_what_refers_to_them() {
        let now = Instant::now();
        let mut thin = Thinning::default();
        let long = QUEUE_LIMIT + Duration::from_millis(1);
        let longer = QUEUE_LIMIT_LAYER0 + Duration::from_millis(1);
        // A layer-1 picture (level 2) left out: the layer-2 one after it refers to it, so it
        // is left out too with the queue empty; the next layer-0 picture goes, and what
        // follows it.
        assert!(!thin.admit(2, long, now));
        assert!(!thin.admit(3, EMPTY, now));
        assert!(thin.admit(1, EMPTY, now));
        assert!(thin.admit(3, EMPTY, now));
        // A layer-2 picture left out: the next layer-1 one goes.
        assert!(!thin.admit(3, long, now));
        assert!(thin.admit(2, EMPTY, now));
        // A layer-0 picture waits longer before it is left out; after it, everything waits
        // for a keyframe, which goes whatever the queue.
        assert!(thin.admit(1, long, now));
        assert!(!thin.admit(1, longer, now));
        for level in [3, 2, 3, 1] {
            assert!(!thin.admit(level, EMPTY, now), "level {level}");
        }
        assert!(thin.admit(KEYFRAMES, longer, now));
        assert!(thin.admit(3, EMPTY, now));
        assert_eq!((thin.late, thin.thinned), (3, 8));
        // The queue is not the estimate: the level stays.
        assert_eq!(thin.level(), ALL);
    }

    #[test]
    fn a_lossy_link_steps_down_a_level_and_counts_as_a_failure_soon_after_a_step_up() {
        // Before a round trip: 3-9 % of the packets NACKed is not lossy (random loss at a
        // join); over 10 % is; a handful of packets is not enough.
        let lossy2 = |nacks, packets| lossy(nacks, packets, None, None);
        assert!(!lossy2(1, 100) && !lossy2(30, 1_000) && !lossy2(90, 1_000));
        assert!(lossy2(101, 1_000) && lossy2(11, 100));
        assert!(!lossy2(2, 10), "fewer than three NACKs");
        // With a round trip: 3 % lost with no queue (it is at its lowest) is random loss; with
        // the round trip 30 ms or more over its lowest, a queue that drops.
        let ms = |ms: u64| Some(Duration::from_millis(ms));
        assert!(!lossy(30, 1_000, ms(41), ms(40)));
        assert!(
            !lossy(200, 1_000, ms(41), ms(40)),
            "20 % with no queue: random"
        );
        assert!(!lossy(30, 1_000, ms(69), ms(40)));
        assert!(lossy(30, 1_000, ms(70), ms(40)));
        assert!(lossy(30, 1_000, ms(240), ms(40)));
        assert!(!lossy(10, 1_000, ms(240), ms(40)), "1 % even with a queue");
        let rates = camera(6, 30_000, 8_000, 4_000, 2_000);
        let plenty = rates.bps(ALL).unwrap() * 2;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut thin = Thinning::default();
        thin.estimate(plenty, &rates, t0);
        thin.losing(t0);
        assert_eq!(thin.level(), 2, "one level, whatever the estimate");
        thin.losing(at(1_000));
        thin.losing(at(2_000));
        assert_eq!(thin.level(), KEYFRAMES);
        thin.losing(at(3_000));
        assert_eq!(thin.level(), KEYFRAMES, "keyframes alone all the same");
        // Up again as the estimate allows; losing within 4 s of reaching all is a failure:
        // the first waits 2 s (as long as the hold), the second 4 s.
        thin.estimate(plenty, &rates, at(3_100));
        thin.estimate(plenty, &rates, at(5_100));
        assert!(thin.admit(KEYFRAMES, EMPTY, at(5_100)));
        assert_eq!(thin.level(), ALL);
        thin.losing(at(6_000));
        assert_eq!(thin.level(), 2);
        thin.estimate(plenty, &rates, at(6_100));
        thin.estimate(plenty, &rates, at(8_100));
        assert!(thin.admit(1, EMPTY, at(8_100)));
        assert_eq!(thin.level(), ALL);
        thin.losing(at(9_000));
        thin.estimate(plenty, &rates, at(9_100));
        thin.estimate(plenty, &rates, at(11_100));
        assert!(thin.admit(1, EMPTY, at(11_100)));
        assert_eq!(thin.level(), 2, "all failed twice: waits until 13.0 s");
        thin.estimate(plenty, &rates, at(13_000));
        assert!(thin.admit(1, EMPTY, at(13_000)));
        assert_eq!(thin.level(), ALL);
    }

    #[test]
    fn nothing_measured_changes_nothing() {
        let mut thin = Thinning::default();
        let now = Instant::now();
        thin.estimate(1, &LevelRates::default(), now);
        assert_eq!(thin.level(), ALL);
        assert!(thin.admit(3, EMPTY, now));
    }

    #[test]
    fn unit_levels_and_names() {
        assert_eq!(unit_level(true, 0), KEYFRAMES);
        assert_eq!(unit_level(false, 0), 1);
        assert_eq!(unit_level(false, TOP_LAYER), ALL);
        assert_eq!(unit_level(false, 200), ALL);
        assert_eq!(
            (0..=ALL).map(level_name).collect::<Vec<_>>(),
            ["keyframes", "quarter", "half", "all"]
        );
    }
}
