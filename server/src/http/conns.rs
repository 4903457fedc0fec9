//! The HTTP port's connection places: at most `max` connections at once. When all are taken, a
//! new connection takes the place of the oldest one that has not yet sent a request (a
//! slowloris holding places open costs the attacker its own places, not honest clients'); when
//! every place has a request behind it, the new connection is answered 503 and closed.
//!
//! A connection that has sent a request keeps its place until it closes; idle keep-alive ones
//! are bounded by the header deadline ([`super::HEADER_READ_TIMEOUT`]), streams by the write
//! deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Every connection's place, by arrival.
#[derive(Default)]
pub(crate) struct Conns {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Connections that have not sent a request yet: evictable, oldest first.
    fresh: BTreeMap<u64, CancellationToken>,
    /// Connections that have.
    busy: usize,
}

/// A connection's place; given back when dropped.
pub(crate) struct Place {
    conns: Arc<Conns>,
    id: u64,
    /// Cancelled when a newer connection takes this place (only before its first request).
    pub evicted: CancellationToken,
    requested: AtomicBool,
}

/// What taking a place did.
pub(crate) enum Entry {
    /// A place was free.
    Free(Place),
    /// The oldest connection without a request was pushed out for this one.
    Evicted(Place),
    /// Every place has a request behind it: no room.
    Full,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection, out of `max`.
    pub(crate) fn enter(conns: &Arc<Conns>, max: usize) -> Entry {
        let mut inner = conns.lock();
        let mut evicted = false;
        if inner.fresh.len() + inner.busy >= max.max(1) {
            match inner.fresh.pop_first() {
                Some((_, oldest)) => {
                    oldest.cancel();
                    evicted = true;
                }
                None => return Entry::Full,
            }
        }
        let id = inner.next;
        inner.next += 1;
        let token = CancellationToken::new();
        inner.fresh.insert(id, token.clone());
        let place = Place {
            conns: conns.clone(),
            id,
            evicted: token,
            requested: AtomicBool::new(false),
        };
        match evicted {
            true => Entry::Evicted(place),
            false => Entry::Free(place),
        }
    }

    /// Places taken: (without a request yet, with one).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.fresh.len(), inner.busy)
    }
}

impl Place {
    /// A request came on this connection: from now on it is not evicted. Cheap after the first.
    pub(crate) fn requested(&self) {
        if self.requested.swap(true, Relaxed) {
            return;
        }
        let mut inner = self.conns.lock();
        // Gone from `fresh` already: it was evicted just now, and its place given away.
        if inner.fresh.remove(&self.id).is_some() {
            inner.busy += 1;
        } else {
            self.requested.store(false, Relaxed);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut inner = self.conns.lock();
        if inner.fresh.remove(&self.id).is_none() && self.requested.load(Relaxed) {
            inner.busy -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(e: Entry) -> Place {
        match e {
            Entry::Free(p) | Entry::Evicted(p) => p,
            Entry::Full => panic!("no place"),
        }
    }

    #[test]
    fn the_oldest_connection_without_a_request_gives_its_place_to_a_new_one() {
        let conns = Arc::new(Conns::default());
        let a = place(Conns::enter(&conns, 3));
        let b = place(Conns::enter(&conns, 3));
        let c = place(Conns::enter(&conns, 3));
        a.requested();
        // Full: b is the oldest without a request (a has made one).
        let d = match Conns::enter(&conns, 3) {
            Entry::Evicted(p) => p,
            _ => panic!("no eviction"),
        };
        assert!(!a.evicted.is_cancelled());
        assert!(b.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        // The evicted one's late request does not make it busy: its place is gone.
        b.requested();
        drop(b);
        assert_eq!(conns.counts(), (2, 1));
        drop((a, c, d));
        assert_eq!(conns.counts(), (0, 0));
    }

    #[test]
    fn when_every_place_has_a_request_a_new_connection_finds_it_full() {
        let conns = Arc::new(Conns::default());
        let a = place(Conns::enter(&conns, 2));
        let b = place(Conns::enter(&conns, 2));
        a.requested();
        b.requested();
        b.requested();
        assert!(matches!(Conns::enter(&conns, 2), Entry::Full));
        drop(a);
        let c = place(Conns::enter(&conns, 2));
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop((b, c));
        assert_eq!(conns.counts(), (0, 0));
    }
}
