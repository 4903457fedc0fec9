//! Connection places, for the ports where a peer must speak first: at most `max` connections at
//! once. When all are taken, a new connection takes the place of the oldest one that has not yet
//! sent a request (a slowloris holding places open costs the attacker its own places, not honest
//! peers'); when every place has a request behind it, there is no room ([`Entry::Full`]).
//!
//! - The HTTP port: a connection marks its place [`Place::requested`] at its first request and
//!   keeps it until it closes (idle keep-alive ones are bounded by the header deadline, streams
//!   by the write deadline); a new connection that finds no room is answered 503.
//! - The registration port: a place is held only while the registration line is read, and never
//!   marked, so a new connection always finds room; an honest registration sends its line within
//!   milliseconds of connecting, so connections held open without one push out each other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Every connection's place, by arrival.
#[derive(Default)]
pub(crate) struct Places {
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
    places: Arc<Places>,
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

impl Places {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection, out of `max`.
    pub(crate) fn enter(places: &Arc<Places>, max: usize) -> Entry {
        let mut inner = places.lock();
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
            places: places.clone(),
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
        let mut inner = self.places.lock();
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
        let mut inner = self.places.lock();
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
        let places = Arc::new(Places::default());
        let a = place(Places::enter(&places, 3));
        let b = place(Places::enter(&places, 3));
        let c = place(Places::enter(&places, 3));
        a.requested();
        // Full: b is the oldest without a request (a has made one).
        let d = match Places::enter(&places, 3) {
            Entry::Evicted(p) => p,
            _ => panic!("no eviction"),
        };
        assert!(!a.evicted.is_cancelled());
        assert!(b.evicted.is_cancelled());
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        // The evicted one's late request does not make it busy: its place is gone.
        b.requested();
        drop(b);
        assert_eq!(places.counts(), (2, 1));
        drop((a, c, d));
        assert_eq!(places.counts(), (0, 0));
    }

    #[test]
    fn when_every_place_has_a_request_a_new_connection_finds_it_full() {
        let places = Arc::new(Places::default());
        let a = place(Places::enter(&places, 2));
        let b = place(Places::enter(&places, 2));
        a.requested();
        b.requested();
        b.requested();
        assert!(matches!(Places::enter(&places, 2), Entry::Full));
        drop(a);
        let c = place(Places::enter(&places, 2));
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop((b, c));
        assert_eq!(places.counts(), (0, 0));
    }

    /// As the registration port uses them: no place is ever marked, so room is always made.
    #[test]
    fn places_never_marked_always_make_room_for_the_newest() {
        let places = Arc::new(Places::default());
        let a = place(Places::enter(&places, 2));
        let b = place(Places::enter(&places, 2));
        assert!(!a.evicted.is_cancelled() && !b.evicted.is_cancelled());
        let c = place(Places::enter(&places, 2));
        assert!(a.evicted.is_cancelled(), "the oldest is pushed out");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        // A place given back leaves room: nobody else is evicted.
        let d = place(Places::enter(&places, 2));
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        drop((a, c, d));
        assert_eq!(places.counts(), (0, 0));
    }
}
