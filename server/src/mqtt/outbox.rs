//! The publisher's outbox: events waiting for the broker (a bounded queue, oldest dropped and
//! counted), and every message handed to rumqttc until the broker has it.
//!
//! rumqttc forgets what it was given when a connection drops: with a clean session (ours),
//! publishes in its request channel and those not yet acknowledged are moved to its `pending`
//! list at the error and cleared at the next CONNACK (`EventLoop::clean`, `poll` in rumqttc
//! 0.25 `eventloop.rs`). So the outbox keeps each event until its PUBACK, and when the
//! connection is lost puts the unacknowledged ones back at the head of the queue, in order: an
//! event reaches the broker at least once (a duplicate is possible when only its PUBACK was
//! lost). rumqttc reports each publish it writes (`Outgoing::Publish(pkid)`) in the order it was
//! handed over, which is how a packet id is matched to its message.
//!
//! One race is left: a message handed over in the instant between rumqttc's error (which
//! empties its channel) and the publisher learning of it stays in rumqttc's channel and goes
//! out after the reconnect, besides its copy put back here. That costs a duplicate and, until
//! the next disconnect, one in-flight place; the publisher checks the live link flag before
//! each hand-over to keep the window to that instant.

use std::collections::VecDeque;

/// Events queued at most while the broker is away; the next one drops the oldest.
pub const QUEUE_CAP: usize = 1000;

/// A message handed to rumqttc, until the broker acknowledges it.
#[derive(Debug)]
struct InFlight<T> {
    /// Known once rumqttc has written it.
    pkid: Option<u16>,
    /// An event, put back in the queue if the connection drops before its PUBACK; `None` for
    /// stats and retained states, which are sent afresh instead.
    event: Option<T>,
}

/// Events (`T`: what the publisher needs to send one again) in order, until acknowledged.
#[derive(Debug)]
pub struct Outbox<T = String> {
    queue: VecDeque<T>,
    cap: usize,
    in_flight: VecDeque<InFlight<T>>,
}

impl<T> Outbox<T> {
    pub fn new(cap: usize) -> Outbox<T> {
        Outbox {
            queue: VecDeque::new(),
            cap: cap.max(1),
            in_flight: VecDeque::new(),
        }
    }

    /// Queues an event; returns how many old ones were dropped to make room (0 or 1).
    pub fn push(&mut self, event: T) -> u64 {
        self.queue.push_back(event);
        self.trim()
    }

    fn trim(&mut self) -> u64 {
        let over = self.queue.len().saturating_sub(self.cap);
        self.queue.drain(..over);
        over as u64
    }

    /// The oldest queued event.
    pub fn next(&self) -> Option<&T> {
        self.queue.front()
    }

    /// The oldest queued event was handed to rumqttc.
    pub fn handed_next(&mut self) {
        if let Some(event) = self.queue.pop_front() {
            self.in_flight.push_back(InFlight {
                pkid: None,
                event: Some(event),
            });
        }
    }

    /// A message that is not an event (stats, a retained state) was handed to rumqttc.
    pub fn handed_other(&mut self) {
        self.in_flight.push_back(InFlight {
            pkid: None,
            event: None,
        });
    }

    /// rumqttc wrote the next message handed to it with `pkid` (0: QoS 0, done once written).
    /// Returns true when that finished a message.
    pub fn written(&mut self, pkid: u16) -> bool {
        let Some(i) = self.in_flight.iter().position(|m| m.pkid.is_none()) else {
            return false;
        };
        if pkid == 0 {
            self.in_flight.remove(i);
            return true;
        }
        self.in_flight[i].pkid = Some(pkid);
        false
    }

    /// The broker acknowledged `pkid`. Returns true when that finished a message.
    pub fn acked(&mut self, pkid: u16) -> bool {
        match self.in_flight.iter().position(|m| m.pkid == Some(pkid)) {
            Some(i) => {
                self.in_flight.remove(i);
                true
            }
            None => false,
        }
    }

    /// The connection dropped: unacknowledged events go back to the head of the queue, in
    /// their order; returns how many events were dropped to keep the cap.
    pub fn connection_lost(&mut self) -> u64 {
        for m in self.in_flight.drain(..).rev() {
            if let Some(event) = m.event {
                self.queue.push_front(event);
            }
        }
        // Past the cap, the oldest go, as for a push.
        self.trim()
    }

    /// Events waiting for the broker.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages handed to rumqttc and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
