//! The viewers' network path delay (`--delay-ms D --jitter-ms J`): every frame a viewer receives
//! and every datagram it sends (acks, hellos, ends) is held D ± J ms, uniform and independent per
//! datagram, as over a real path with that one-way delay each way (so datagrams can overtake
//! each other, and the server sees round trips of 2D ± 2J).
//!
//! netem cannot load on the machines this runs on, and a delay inside the one receiving thread
//! needs no root, no relay process and no second copy of the frames: only the 64-byte head the
//! generator reads is held. Each direction's queue is bounded ([`HOLD_CAP`]); what would go past
//! it is dropped and counted, as a router's full queue would.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Datagrams held at most per direction. 2,000 viewers at 30 fps held up to 75 ms is 4,500;
/// this leaves room for 10 times that (each entry is under 100 bytes).
pub const HOLD_CAP: usize = 65_536;

/// The longest delay or jitter accepted, ms.
pub const MAX_DELAY_MS: u32 = 10_000;

/// One way's delay: `delay` ± `jitter`, uniform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter {
    pub delay: Duration,
    pub jitter: Duration,
}

impl Jitter {
    /// `None` for no delay at all (the receiving thread then holds nothing); an error when the
    /// jitter exceeds the delay (a datagram cannot arrive before it was sent) or either exceeds
    /// [`MAX_DELAY_MS`].
    pub fn from_ms(delay_ms: u32, jitter_ms: u32) -> Result<Option<Jitter>, String> {
        if delay_ms > MAX_DELAY_MS || jitter_ms > MAX_DELAY_MS {
            return Err(format!(
                "--delay-ms and --jitter-ms must be at most {MAX_DELAY_MS}"
            ));
        }
        if jitter_ms > delay_ms {
            return Err(format!(
                "--jitter-ms {jitter_ms} exceeds --delay-ms {delay_ms}: a datagram cannot arrive before it is sent"
            ));
        }
        Ok((delay_ms > 0).then(|| Jitter {
            delay: Duration::from_millis(delay_ms.into()),
            jitter: Duration::from_millis(jitter_ms.into()),
        }))
    }
}

/// Items held until their release time, earliest first (in arrival order among equal times).
/// Holds at most its capacity; past it, items are dropped and counted.
pub struct HoldQueue<T> {
    heap: BinaryHeap<Reverse<Held<T>>>,
    cap: usize,
    arrivals: u64,
    pub dropped: u64,
}

struct Held<T> {
    release: Instant,
    order: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.order) == (other.release, other.order)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.order).cmp(&(other.release, other.order))
    }
}

impl<T> HoldQueue<T> {
    pub fn new(cap: usize) -> HoldQueue<T> {
        HoldQueue {
            heap: BinaryHeap::new(),
            cap,
            arrivals: 0,
            dropped: 0,
        }
    }

    /// Holds `item` until `release`; drops it (and counts it) when the queue is full.
    pub fn hold(&mut self, item: T, release: Instant) {
        if self.heap.len() >= self.cap {
            self.dropped += 1;
            return;
        }
        self.arrivals += 1;
        self.heap.push(Reverse(Held {
            release,
            order: self.arrivals,
            item,
        }));
    }

    /// The next item whose release time is at or before `now`, with that time.
    pub fn pop_due(&mut self, now: Instant) -> Option<(T, Instant)> {
        if self.heap.peek()?.0.release > now {
            return None;
        }
        self.heap.pop().map(|Reverse(h)| (h.item, h.release))
    }

    /// When the next item is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(h)| h.release)
    }

    /// Items held so far (dropped ones excluded).
    pub fn held(&self) -> u64 {
        self.arrivals
    }
}

/// A datagram a viewer sends, held on its way: its bytes (an ack is at most 48), where it goes
/// and which viewer address it leaves from.
#[derive(Clone, Copy)]
pub struct Outgoing {
    bytes: [u8; 64],
    len: u8,
    pub to: std::net::SocketAddrV4,
    pub from_ip: std::net::Ipv4Addr,
}

impl Outgoing {
    /// `None` when `payload` is longer than an ack can be.
    pub fn new(
        payload: &[u8],
        to: std::net::SocketAddrV4,
        from_ip: std::net::Ipv4Addr,
    ) -> Option<Outgoing> {
        let mut bytes = [0u8; 64];
        bytes.get_mut(..payload.len())?.copy_from_slice(payload);
        Some(Outgoing {
            bytes,
            len: payload.len() as u8,
            to,
            from_ip,
        })
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Both directions of the viewers' path: frames on their way in, the viewers' datagrams on their
/// way out, each held its own random delay.
pub struct DelayLine<F> {
    jitter: Jitter,
    rng: StdRng,
    pub inbound: HoldQueue<F>,
    pub outbound: HoldQueue<Outgoing>,
    /// Outgoing datagrams too long to hold (none expected: acks are at most 48 bytes).
    pub oversized: u64,
}

impl<F> DelayLine<F> {
    pub fn new(jitter: Jitter) -> DelayLine<F> {
        DelayLine {
            jitter,
            rng: StdRng::from_entropy(),
            inbound: HoldQueue::new(HOLD_CAP),
            outbound: HoldQueue::new(HOLD_CAP),
            oversized: 0,
        }
    }

    /// One datagram's delay: uniform in delay ± jitter, µs resolution.
    pub fn sample(&mut self) -> Duration {
        let lo = (self.jitter.delay - self.jitter.jitter).as_micros() as u64;
        let hi = (self.jitter.delay + self.jitter.jitter).as_micros() as u64;
        Duration::from_micros(self.rng.gen_range(lo..=hi))
    }

    /// Holds a frame that arrived at `now` for its delay, made by `frame` from that delay.
    pub fn hold_inbound(&mut self, now: Instant, frame: impl FnOnce(Duration) -> F) {
        let d = self.sample();
        self.inbound.hold(frame(d), now + d);
    }

    /// Holds a datagram a viewer sends at `now` for its delay.
    pub fn hold_outbound(
        &mut self,
        payload: &[u8],
        to: std::net::SocketAddrV4,
        from_ip: std::net::Ipv4Addr,
        now: Instant,
    ) {
        match Outgoing::new(payload, to, from_ip) {
            Some(out) => {
                let d = self.sample();
                self.outbound.hold(out, now + d);
            }
            None => self.oversized += 1,
        }
    }

    /// When the next datagram either way is due.
    pub fn next_release(&self) -> Option<Instant> {
        match (self.inbound.next_release(), self.outbound.next_release()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The line printed after a run.
    pub fn summary(&self) -> String {
        format!(
            "delay={}±{}ms each way: held {} frames and {} viewer datagrams; dropped past the {HOLD_CAP}-datagram queue: {} in, {} out{}",
            self.jitter.delay.as_millis(),
            self.jitter.jitter.as_millis(),
            self.inbound.held(),
            self.outbound.held(),
            self.inbound.dropped,
            self.outbound.dropped,
            if self.oversized > 0 {
                format!("; {} too long to hold", self.oversized)
            } else {
                String::new()
            }
        )
    }
}

/// How long `poll` may wait for the next datagram: until the next release (rounded up to the
/// millisecond `poll` counts in, so that the loop sleeps rather than spins), at most `max`.
pub fn wait_for(next_release: Option<Instant>, now: Instant, max: Duration) -> Duration {
    match next_release {
        None => max,
        Some(t) => {
            let left = t.saturating_duration_since(now);
            let ms = left.as_micros().div_ceil(1000) as u64;
            Duration::from_millis(ms).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn items_leave_in_release_order_not_arrival_order() {
        let t = Instant::now();
        let mut q = HoldQueue::new(8);
        q.hold("late", t + 30 * MS);
        q.hold("early", t + 10 * MS);
        q.hold("early too", t + 10 * MS);
        assert_eq!(q.next_release(), Some(t + 10 * MS));
        assert!(q.pop_due(t + 9 * MS).is_none(), "nothing due yet");
        assert_eq!(q.pop_due(t + 10 * MS).map(|x| x.0), Some("early"));
        assert_eq!(q.pop_due(t + 10 * MS).map(|x| x.0), Some("early too"));
        assert!(q.pop_due(t + 29 * MS).is_none());
        assert_eq!(q.pop_due(t + 40 * MS), Some(("late", t + 30 * MS)));
        assert!(q.pop_due(t + 40 * MS).is_none());
        assert_eq!(q.next_release(), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let t = Instant::now();
        let mut q = HoldQueue::new(2);
        for i in 0..5 {
            q.hold(i, t);
        }
        assert_eq!((q.held(), q.dropped), (2, 3));
        assert_eq!(q.pop_due(t).map(|x| x.0), Some(0));
        assert_eq!(q.pop_due(t).map(|x| x.0), Some(1));
        assert!(q.pop_due(t).is_none());
    }

    #[test]
    fn delays_are_uniform_within_delay_plus_or_minus_jitter() {
        let j = Jitter::from_ms(50, 25).unwrap().unwrap();
        let mut line = DelayLine::<()>::new(j);
        let samples: Vec<Duration> = (0..20_000).map(|_| line.sample()).collect();
        assert!(samples.iter().all(|d| (25 * MS..=75 * MS).contains(d)));
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!((49 * MS..=51 * MS).contains(&mean), "mean {mean:?}");
        // Each fifth of the range gets about a fifth of the samples.
        for k in 0..5u32 {
            let (lo, hi) = (25 * MS + 10 * MS * k, 25 * MS + 10 * MS * (k + 1));
            let n = samples.iter().filter(|&&d| (lo..hi).contains(&d)).count();
            assert!((3_600..=4_400).contains(&n), "{lo:?}..{hi:?}: {n}");
        }
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(Jitter::from_ms(0, 0), Ok(None));
        assert!(Jitter::from_ms(10, 20).is_err(), "jitter past the delay");
        assert!(Jitter::from_ms(MAX_DELAY_MS + 1, 0).is_err());
        assert_eq!(
            Jitter::from_ms(50, 0),
            Ok(Some(Jitter {
                delay: 50 * MS,
                jitter: Duration::ZERO
            }))
        );
    }

    #[test]
    fn outgoing_datagrams_longer_than_an_ack_are_not_held() {
        let to = "127.0.0.1:9".parse().unwrap();
        let from = std::net::Ipv4Addr::new(127, 2, 0, 1);
        let ack = b"continue 18446744073709551615 k=0123456789abcdef";
        assert_eq!(Outgoing::new(ack, to, from).unwrap().payload(), ack);
        assert!(Outgoing::new(&[b'x'; 65], to, from).is_none());
        let mut line = DelayLine::<()>::new(Jitter::from_ms(5, 0).unwrap().unwrap());
        let t = Instant::now();
        line.hold_outbound(&[b'x'; 65], to, from, t);
        line.hold_outbound(ack, to, from, t);
        assert_eq!((line.oversized, line.outbound.held()), (1, 1));
        assert_eq!(line.next_release(), Some(t + 5 * MS));
    }

    #[test]
    fn the_wait_ends_at_the_next_release_rounded_up() {
        let t = Instant::now();
        let max = 20 * MS;
        assert_eq!(wait_for(None, t, max), max);
        assert_eq!(wait_for(Some(t + 100 * MS), t, max), max);
        assert_eq!(
            wait_for(Some(t + Duration::from_micros(3_200)), t, max),
            4 * MS
        );
        assert_eq!(wait_for(Some(t), t + MS, max), Duration::ZERO, "overdue");
    }
}
