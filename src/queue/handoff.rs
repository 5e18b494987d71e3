//! Parsed events handed from intake to the delivery workers in memory, so that an event is
//! parsed once, not again from its stored body when it is sent.
//!
//! Only a hint: the store stays the record, and a worker that finds no event here (after a
//! restart, under a backlog that pushed it out, for a message sent by another replica) parses
//! the stored body as before. What is kept is bounded by the bodies' bytes; the oldest event
//! leaves first, so under a backlog the handoff holds what the workers reach soonest to no
//! one's benefit and costs only its bound.

use crate::event::Event;
use prometheus::IntCounterVec;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The bodies' bytes kept by default: about eighty typical events, more than a worker that
/// keeps up has waiting or in flight, and about 2 MiB parsed. Parsed JSON takes several times
/// its text, and under a backlog nothing here is used before it leaves: 1 MiB of bodies
/// grew the service by 10 MiB with a million messages pending.
pub const DEFAULT_BUDGET: usize = 256 << 10;

struct Entry {
    event: Arc<Event>,
    /// Messages still to render from it.
    uses: usize,
    bytes: usize,
}

#[derive(Default)]
struct Kept {
    /// By event id: ids grow, so the first is the oldest.
    events: BTreeMap<i64, Entry>,
    bytes: usize,
}

/// Events waiting to be rendered, by id.
pub struct Handoff {
    kept: Mutex<Kept>,
    budget: usize,
    /// Counts each look by what it found (`memory`, or `store` when the caller must read it).
    reads: IntCounterVec,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self
            .kept
            .lock()
            .expect("the handoff lock is never poisoned");
        f.debug_struct("Handoff")
            .field("events", &kept.events.len())
            .field("bytes", &kept.bytes)
            .finish()
    }
}

impl Handoff {
    /// Keeps at most `budget` bytes of bodies; counts each look in `reads`.
    pub fn new(budget: usize, reads: IntCounterVec) -> Self {
        Self {
            kept: Mutex::default(),
            budget,
            reads,
        }
    }

    /// Keeps `event` (stored, so with its id) for `uses` messages; `bytes` is its body's
    /// size. Older events leave to make room; one bigger than the whole budget is not kept.
    pub fn put(&self, event: Arc<Event>, uses: usize, bytes: usize) {
        let Some(id) = event.id() else { return };
        if uses == 0 || bytes > self.budget {
            return;
        }
        let mut kept = self
            .kept
            .lock()
            .expect("the handoff lock is never poisoned");
        while kept.bytes + bytes > self.budget {
            let Some((_, old)) = kept.events.pop_first() else {
                break;
            };
            kept.bytes -= old.bytes;
        }
        kept.bytes += bytes;
        if let Some(old) = kept.events.insert(id, Entry { event, uses, bytes }) {
            kept.bytes -= old.bytes;
        }
    }

    /// The event with this id for one of its messages, if it is still here.
    pub fn take(&self, id: i64) -> Option<Arc<Event>> {
        let event = self.find(id);
        let source = if event.is_some() { "memory" } else { "store" };
        self.reads.with_label_values(&[source]).inc();
        event
    }

    /// Counts an event that came with its message (through the worker's inbox) as read from
    /// memory.
    pub fn count_given(&self) {
        self.reads.with_label_values(&["memory"]).inc();
    }

    fn find(&self, id: i64) -> Option<Arc<Event>> {
        let mut kept = self
            .kept
            .lock()
            .expect("the handoff lock is never poisoned");
        let entry = kept.events.get_mut(&id)?;
        entry.uses -= 1;
        let event = entry.event.clone();
        if entry.uses == 0 {
            let bytes = entry.bytes;
            kept.events.remove(&id);
            kept.bytes -= bytes;
        }
        Some(event)
    }

    /// Events kept, and their bodies' bytes.
    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        let kept = self
            .kept
            .lock()
            .expect("the handoff lock is never poisoned");
        (kept.events.len(), kept.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn handoff(budget: usize) -> Handoff {
        Handoff::new(budget, crate::metrics::Metrics::new().event_reads)
    }

    fn event(id: i64) -> Arc<Event> {
        let mut e = Event::from_value("build.finished", serde_json::json!({}), Utc::now());
        e.set_id(id);
        Arc::new(e)
    }

    #[test]
    fn an_event_serves_each_of_its_messages_then_leaves() {
        let h = handoff(100);
        h.put(event(1), 2, 10);
        assert_eq!(h.take(1).and_then(|e| e.id()), Some(1));
        assert_eq!(h.len_and_bytes(), (1, 10));
        assert!(h.take(1).is_some());
        assert_eq!(h.len_and_bytes(), (0, 0));
        assert!(
            h.take(1).is_none(),
            "a third message parses the stored body"
        );
        let reads = |source: &str| h.reads.with_label_values(&[source]).get();
        assert_eq!((reads("memory"), reads("store")), (2, 1));
    }

    #[test]
    fn the_oldest_leave_to_keep_within_the_budget() {
        let h = handoff(100);
        for id in 1..=5 {
            h.put(event(id), 1, 30);
        }
        assert_eq!(h.len_and_bytes(), (3, 90));
        assert!(h.take(1).is_none() && h.take(2).is_none());
        assert!(h.take(3).is_some() && h.take(5).is_some());
    }

    #[test]
    fn nothing_is_kept_that_no_message_needs_or_that_exceeds_the_budget() {
        let h = handoff(100);
        h.put(event(1), 0, 10);
        h.put(event(2), 1, 101);
        let mut unstored = Event::from_value("ping", serde_json::json!({}), Utc::now());
        unstored.set_transition(None);
        h.put(Arc::new(unstored), 1, 10);
        assert_eq!(h.len_and_bytes(), (0, 0));
    }
}
