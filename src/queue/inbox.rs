//! New messages handed from intake to their destination's worker in memory, so a worker that
//! keeps up looks at the queue in the store only about once a second: a look for each event
//! (and another to find the queue empty, and a third for when a retry comes due) was most of
//! the store's reads, and a hand-off to the blocking pool each.
//!
//! Each message comes with its parsed event, so it is not parsed again. Only a hint: the store
//! stays the record. A message the inbox does not take (its worker does not hold the
//! destination, it is full, the message is a digest or held by a mute) rings the worker to
//! look at the store instead.
//!
//! The hard part is never giving the worker one message twice, once from here and once from a
//! look at the store. Intake hands a message over only after its commit, so a look can find it
//! first. Each intake therefore takes a [`Ticket`] before it stores anything and gives it back
//! only after it has handed its messages over. A message a look found, and that the inbox has
//! not had yet, is remembered with the next ticket's number at the end of the look: every
//! intake that committed it took a lower one. When it is handed over it is dropped instead of
//! kept; once every lower ticket is back, no intake can hand it over any more and it is
//! forgotten. In the same way, a hold on the destination only takes messages whose intake
//! began under it: one stored before may have been sent by the replica that held it then.

use crate::event::Event;
use crate::store::Delivery;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Messages an inbox keeps for a worker that is not taking them (paused, or slower than
/// intake); beyond this they wait in the store, where the worker finds them by looking (and
/// reads their bodies in the same query). Each keeps its parsed event, several times its
/// body's size: 64 typical events parsed are about 1.5 MiB.
pub const CAPACITY: usize = 64;

/// What became of a message intake offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Kept, with its event, for the worker.
    Kept,
    /// A look at the store found it first: the worker took it from there (without its
    /// event).
    Found,
    /// Not kept: the worker must look at the store for it.
    Refused,
}

/// The intakes in progress, numbered in the order they began.
#[derive(Debug, Default)]
pub struct Tickets {
    state: Mutex<TicketState>,
}

#[derive(Debug, Default)]
struct TicketState {
    next: u64,
    open: BTreeSet<u64>,
}

impl Tickets {
    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        self.state
            .lock()
            .expect("the tickets lock is never poisoned")
    }

    /// A ticket for one intake, given back when dropped.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut state = self.state();
        let number = state.next;
        state.next += 1;
        state.open.insert(number);
        Ticket {
            tickets: self.clone(),
            number,
        }
    }

    /// The number the next ticket will have.
    fn next(&self) -> u64 {
        self.state().next
    }

    /// Every ticket below this one is back.
    fn all_back_below(&self) -> u64 {
        let state = self.state();
        state.open.first().copied().unwrap_or(state.next)
    }
}

/// One intake's place in line; dropped once its messages are handed over (or it failed).
#[derive(Debug)]
pub struct Ticket {
    tickets: Arc<Tickets>,
    number: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tickets.state().open.remove(&self.number);
    }
}

/// One destination's new messages, and its worker's bell.
#[derive(Debug)]
pub struct Inbox {
    bell: Notify,
    /// Rung for something the inbox did not take: the worker should look at the store.
    look: AtomicBool,
    tickets: Arc<Tickets>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The worker holds the destination and takes messages.
    open: bool,
    /// Messages from intakes with lower tickets are not taken (they began before the hold).
    floor: u64,
    rows: VecDeque<(Delivery, Arc<Event>)>,
    /// Messages a look at the store found before intake handed them over, with the ticket
    /// number below which every intake that might still hand one over lies.
    seen: HashMap<i64, u64>,
}

impl Inbox {
    /// An inbox, closed until its worker holds the destination.
    pub fn new(tickets: Arc<Tickets>) -> Self {
        Self {
            bell: Notify::new(),
            look: AtomicBool::new(false),
            tickets,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the inbox lock is never poisoned")
    }

    /// Offers the worker a message intake just committed under `ticket`, with its event, and
    /// rings it as the answer needs: to take the message, or to look at the store for it.
    pub fn offer(&self, ticket: &Ticket, row: Delivery, event: &Arc<Event>) -> Offer {
        let offer = {
            let mut state = self.state();
            if !state.open || ticket.number < state.floor {
                Offer::Refused
            } else if state.seen.remove(&row.id).is_some() {
                Offer::Found
            } else if state.rows.len() >= CAPACITY {
                Offer::Refused
            } else {
                state.rows.push_back((row, event.clone()));
                Offer::Kept
            }
        };
        match offer {
            Offer::Kept => self.wake(),
            Offer::Found => {}
            Offer::Refused => self.ring(),
        }
        offer
    }

    /// Tells the worker a message is waiting for it here.
    fn wake(&self) {
        self.bell.notify_one();
    }

    /// Tells the worker there is something in the store for it to look at.
    pub fn ring(&self) {
        self.look.store(true, Ordering::Release);
        self.bell.notify_one();
    }

    /// Rung, for any reason.
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Whether the worker was told to look at the store since it last asked.
    pub fn take_look(&self) -> bool {
        self.look.swap(false, Ordering::AcqRel)
    }

    /// The worker holds the destination from now on: it takes what intakes beginning now
    /// hand over (and looks at the store for the rest).
    pub fn open(&self) {
        let floor = self.tickets.next();
        let mut state = self.state();
        *state = State {
            open: true,
            floor,
            ..State::default()
        };
    }

    /// The hold ended: what is here stays in the store for whoever holds it next.
    pub fn close(&self) {
        *self.state() = State::default();
    }

    /// Up to `limit` messages with their events, in the order they were kept; any in `busy`
    /// (the worker has them) are dropped.
    pub fn take(&self, limit: usize, busy: &HashSet<i64>) -> Vec<(Delivery, Arc<Event>)> {
        let mut state = self.state();
        let mut taken = Vec::new();
        while taken.len() < limit {
            let Some(next) = state.rows.pop_front() else {
                break;
            };
            if !busy.contains(&next.0.id) {
                taken.push(next);
            }
        }
        taken
    }

    /// Takes note of what a look at the store just found (called after the look returned):
    /// none of it is handed over from here.
    pub fn found(&self, ids: &[i64]) {
        let below = self.tickets.next();
        let back = self.tickets.all_back_below();
        let mut state = self.state();
        // Forgotten once no intake can hand it over any more.
        state.seen.retain(|_, until| *until > back);
        if ids.is_empty() {
            return;
        }
        let found: HashSet<i64> = ids.iter().copied().collect();
        // Those here were handed over already, and no intake brings one twice: gone.
        let mut here = HashSet::new();
        state.rows.retain(|(r, _)| {
            let keep = !found.contains(&r.id);
            if !keep {
                here.insert(r.id);
            }
            keep
        });
        // The rest may still come (or, retries and the like, never will).
        for id in found.difference(&here) {
            state.seen.entry(*id).or_insert(below);
        }
    }

    /// Messages waiting, and messages remembered as found.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.state();
        (state.rows.len(), state.seen.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryState;

    fn row(id: i64) -> Delivery {
        Delivery {
            id,
            event_id: id,
            event_name: "build.finished".into(),
            route: "r".into(),
            destination: "d".into(),
            template: None,
            state: DeliveryState::Pending,
            attempts: 0,
            created_at: 0,
            age_from: 0,
            next_attempt_at: 0,
            updated_at: 0,
            last_status: None,
            last_error: None,
            body: None,
            grouped: false,
            thread_key: None,
            event: None,
        }
    }

    fn event() -> Arc<Event> {
        Arc::new(Event::from_value(
            "build.finished",
            serde_json::json!({}),
            chrono::Utc::now(),
        ))
    }

    fn inbox() -> (Arc<Tickets>, Inbox) {
        let tickets = Arc::new(Tickets::default());
        (tickets.clone(), Inbox::new(tickets))
    }

    fn ids(rows: Vec<(Delivery, Arc<Event>)>) -> Vec<i64> {
        rows.into_iter().map(|(r, _)| r.id).collect()
    }

    fn offer(inbox: &Inbox, ticket: &Ticket, id: i64) -> Offer {
        inbox.offer(ticket, row(id), &event())
    }

    #[test]
    fn only_a_held_destination_keeps_messages_and_only_from_intakes_begun_under_the_hold() {
        let (tickets, inbox) = inbox();
        let early = tickets.begin();
        assert_eq!(offer(&inbox, &early, 1), Offer::Refused, "not held");
        inbox.open();
        assert_eq!(
            offer(&inbox, &early, 2),
            Offer::Refused,
            "begun before the hold: it may have been sent already"
        );
        let late = tickets.begin();
        assert_eq!(offer(&inbox, &late, 3), Offer::Kept);
        assert_eq!(offer(&inbox, &late, 4), Offer::Kept);
        assert_eq!(ids(inbox.take(10, &HashSet::new())), [3, 4]);
        assert_eq!(offer(&inbox, &late, 5), Offer::Kept);
        inbox.close();
        assert_eq!(inbox.len(), (0, 0), "closing leaves them to the store");
        assert_eq!(offer(&inbox, &late, 6), Offer::Refused);
    }

    #[test]
    fn what_a_look_found_first_is_not_kept_again() {
        let (tickets, inbox) = inbox();
        inbox.open();
        let (slow, quick) = (tickets.begin(), tickets.begin());
        assert_eq!(offer(&inbox, &quick, 2), Offer::Kept);
        // The look finds both committed messages; the slow intake has not offered its own.
        inbox.found(&[1, 2]);
        assert_eq!(inbox.len(), (0, 1), "2 was here: gone; 1 is remembered");
        assert_eq!(offer(&inbox, &slow, 1), Offer::Found);
        assert!(inbox.take(10, &HashSet::new()).is_empty());
        drop((slow, quick));
        // A retry the look found is never offered; it is forgotten once the intakes that
        // could have offered it are done.
        let next = tickets.begin();
        inbox.found(&[7]);
        assert_eq!(inbox.len(), (0, 1));
        drop(next);
        inbox.found(&[]);
        assert_eq!(inbox.len(), (0, 0));
    }

    #[test]
    fn a_message_found_while_an_older_intake_is_out_stays_remembered() {
        let (tickets, inbox) = inbox();
        inbox.open();
        let old = tickets.begin();
        inbox.found(&[1]);
        let newer = tickets.begin();
        drop(newer);
        inbox.found(&[]);
        assert_eq!(inbox.len(), (0, 1), "the old intake may still offer it");
        assert_eq!(offer(&inbox, &old, 1), Offer::Found);
        assert!(inbox.take(10, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_full_inbox_refuses_and_takes_leave_out_busy_ones() {
        let (tickets, inbox) = inbox();
        inbox.open();
        let t = tickets.begin();
        for id in 0..CAPACITY as i64 {
            assert_eq!(offer(&inbox, &t, id), Offer::Kept);
        }
        assert_eq!(offer(&inbox, &t, CAPACITY as i64), Offer::Refused);
        let busy: HashSet<i64> = [0, 1].into();
        assert_eq!(ids(inbox.take(3, &busy)), [2, 3, 4]);
        assert_eq!(inbox.len().0, CAPACITY - 5);
    }

    #[tokio::test]
    async fn waking_and_ringing_both_wake_the_worker_and_only_a_ring_asks_for_a_look() {
        let (_, inbox) = inbox();
        let five = std::time::Duration::from_secs(5);
        inbox.wake();
        tokio::time::timeout(five, inbox.rung())
            .await
            .expect("rung");
        assert!(!inbox.take_look());
        inbox.ring();
        tokio::time::timeout(five, inbox.rung())
            .await
            .expect("rung");
        assert!(inbox.take_look());
        assert!(!inbox.take_look());
    }
}
