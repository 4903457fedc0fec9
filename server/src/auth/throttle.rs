//! Slowing down a source address after wrong tokens: a small, bounded table of the addresses
//! that failed lately, consulted before the token is compared.
//!
//! After [`FREE_FAILURES`] wrong tokens within [`WINDOW`], an address is locked out for
//! [`FIRST_LOCKOUT`]; every wrong token after a lockout ends locks it out again for twice as
//! long, up to [`MAX_LOCKOUT`]. While locked out, its attempts are refused **without comparing
//! the token** (a right guess is refused too: the guessing rate is really bounded, at about one
//! guess a minute in the long run). A right token resets the address; an address without a
//! failure for [`QUIET`] is forgotten. Other addresses are unaffected.
//!
//! An address is an IPv4 address, or an IPv6 /64 (what one host or one household gets; an
//! IPv4-mapped IPv6 address is its IPv4 address). At most [`MAX_TRACKED`] are tracked: when a
//! flood from many addresses fills the table, the forgotten ones go first, then the stalest
//! eighth (an address under a lockout counts as seen until the lockout ends, so the addresses
//! being slowed down go last).
//!
//! Cost: while no address is tracked, a check is one atomic load (no lock, no allocation);
//! otherwise one short mutex around a hash lookup and the constant-time compare.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Wrong tokens an address may present within [`WINDOW`] before its first lockout: room for a
/// person mistyping it a few times, or a client retrying with an old token for a little while.
pub const FREE_FAILURES: u32 = 5;

/// The window [`FREE_FAILURES`] are counted in (from the first of them).
pub const WINDOW: Duration = Duration::from_secs(60);

/// The first lockout; each next one is twice as long.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(1);

/// The longest lockout: long enough to bound guessing to about one a minute per address, short
/// enough that someone who shares the address (a NAT) with a client stuck on a wrong token, or
/// who typed it wrong, is not kept out for long once it is fixed.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(60);

/// An address without a wrong token for this long (after its lockout ends) is forgotten: longer
/// than [`MAX_LOCKOUT`], so that waiting out lockouts does not start an attacker afresh.
pub const QUIET: Duration = Duration::from_secs(600);

/// The most addresses tracked (each about 100 bytes with the map's overhead: under 0.5 MB).
pub const MAX_TRACKED: usize = 4096;

/// When the table is full of addresses not yet forgotten, this many of the stalest go at once,
/// so that a flood of new addresses costs one pass over the table per batch, not per address.
const EVICT_BATCH: usize = MAX_TRACKED / 8;

/// Forgotten addresses are swept out at most this often (on a check that takes the lock), so
/// that the table empties and checks go back to the lock-free path.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One address as the throttle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// What the throttle says about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token was compared: right.
    Right,
    /// The token was compared: wrong (and counted against the address).
    Wrong,
    /// The address is locked out: the token was not compared. It may try again after this.
    Throttled(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Wrong tokens in the current window, before the first lockout.
    failures: u32,
    window_start: Instant,
    /// Lockouts so far: the next one lasts `FIRST_LOCKOUT << lockouts` (capped).
    lockouts: u32,
    /// Attempts before this are refused unchecked (in the past: not locked out).
    locked_until: Instant,
    last_failure: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            window_start: now,
            lockouts: 0,
            locked_until: now,
            last_failure: now,
        }
    }

    /// The last time the entry mattered: its last failure, or the end of its lockout.
    fn last_seen(&self) -> Instant {
        self.last_failure.max(self.locked_until)
    }

    fn forgotten(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen()) >= QUIET
    }

    /// Counts a wrong token at `now`; may start a lockout.
    fn fail(&mut self, now: Instant) {
        self.last_failure = now;
        if self.locked_until > now {
            return; // a concurrent attempt already locked it out: nothing to add
        }
        if self.lockouts == 0 {
            if now.saturating_duration_since(self.window_start) >= WINDOW {
                self.failures = 0;
                self.window_start = now;
            }
            self.failures += 1;
            if self.failures < FREE_FAILURES {
                return;
            }
        }
        self.locked_until = now + lockout(self.lockouts);
        self.lockouts = self.lockouts.saturating_add(1);
    }
}

/// The lockout after `lockouts` earlier ones: 1 s, 2 s, 4 s, … [`MAX_LOCKOUT`].
pub fn lockout(lockouts: u32) -> Duration {
    FIRST_LOCKOUT
        .checked_mul(1u32.checked_shl(lockouts).unwrap_or(u32::MAX))
        .map_or(MAX_LOCKOUT, |d| d.min(MAX_LOCKOUT))
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Source, Entry>,
    next_sweep: Option<Instant>,
}

/// The failure table for one kind of address (see [`crate::auth::Access`]).
#[derive(Debug, Default)]
pub struct Throttle {
    /// `table.entries.len()`, readable without the lock: 0 lets a check skip it.
    tracked: AtomicUsize,
    table: Mutex<Table>,
}

impl Throttle {
    /// Judges an attempt from `source` at `now`: `compare` (the constant-time token compare) is
    /// called unless the address is locked out. A right token resets the address, a wrong one
    /// counts against it.
    pub fn attempt(&self, source: Source, now: Instant, compare: impl FnOnce() -> bool) -> Verdict {
        if self.tracked.load(Ordering::Acquire) == 0 {
            // Nobody failed lately: no lock unless this one fails.
            if compare() {
                return Verdict::Right;
            }
            let mut table = self.lock();
            self.failed(&mut table, source, now);
            return Verdict::Wrong;
        }
        let mut table = self.lock();
        self.sweep(&mut table, now);
        if let Some(entry) = table.entries.get(&source) {
            if entry.locked_until > now {
                return Verdict::Throttled(entry.locked_until - now);
            }
        }
        if compare() {
            if table.entries.remove(&source).is_some() {
                self.tracked.store(table.entries.len(), Ordering::Release);
            }
            return Verdict::Right;
        }
        self.failed(&mut table, source, now);
        Verdict::Wrong
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, table: &mut Table, source: Source, now: Instant) {
        match table.entries.get_mut(&source) {
            Some(entry) if entry.forgotten(now) => *entry = Entry::new(now),
            Some(_) => {}
            None => {
                if table.entries.len() >= MAX_TRACKED {
                    make_room(&mut table.entries, now);
                }
                table.entries.insert(source, Entry::new(now));
            }
        }
        if let Some(entry) = table.entries.get_mut(&source) {
            entry.fail(now);
        }
        self.tracked.store(table.entries.len(), Ordering::Release);
    }

    /// Drops the forgotten addresses, at most every [`SWEEP_EVERY`].
    fn sweep(&self, table: &mut Table, now: Instant) {
        if table.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        table.next_sweep = Some(now + SWEEP_EVERY);
        table.entries.retain(|_, e| !e.forgotten(now));
        self.tracked.store(table.entries.len(), Ordering::Release);
    }
}

/// The table is full: drops the forgotten addresses, and if none was, the stalest
/// [`EVICT_BATCH`].
fn make_room(entries: &mut HashMap<Source, Entry>, now: Instant) {
    entries.retain(|_, e| !e.forgotten(now));
    if entries.len() < MAX_TRACKED {
        return;
    }
    let mut seen: Vec<Instant> = entries.values().map(Entry::last_seen).collect();
    let (_, &mut cutoff, _) = seen.select_nth_unstable(EVICT_BATCH - 1);
    // Fewer than EVICT_BATCH are older than the cutoff; then as many as needed of those at it.
    let mut quota = EVICT_BATCH;
    entries.retain(|_, e| {
        let stale = e.last_seen() < cutoff;
        quota -= usize::from(stale);
        !stale
    });
    entries.retain(|_, e| {
        let evict = quota > 0 && e.last_seen() == cutoff;
        quota -= usize::from(evict);
        !evict
    });
}
