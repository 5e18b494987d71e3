//! One destination's delivery worker: while this replica holds the destination, takes due
//! messages (those waiting in the store first, each in the order they came due), paces them,
//! keeps at most `concurrency` in flight, and records each attempt's verdict.
//!
//! New messages come from intake through the destination's [`Inbox`]; the worker looks at the
//! queue in the store only when something may be there that the inbox did not bring: at the
//! start of a hold, when a retry comes due, when rung for a digest, a muted message or another
//! replica's work, after an attempt that left its message pending, and once a second.
//!
//! Destinations never share a worker, so a slow or throttled one delays no other. A message is
//! only picked again once its last attempt is recorded, so a store that refuses writes delays
//! messages but never sends one twice in a row. When the hold ends (another replica has it, or
//! it is handed on), the worker finishes what it has in flight and leaves its pace and pause
//! for the next holder.

use super::Settings;
use super::attempt::{Done, Sender};
use super::cluster::{Drained, Hold, Report};
use super::inbox::Inbox;
use super::pacer::Pacer;
use super::policy::{RetryPolicy, Verdict};
use super::recorder::Recorder;
use crate::destination::{BuildEnv, DestinationConfig};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::store::{Carry, Delivery, Finished, Left, Pace, Resolution, Store, now_ms};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a worker with a free slot looks at the queue for work it was not told about (a
/// `deliveries retry` from the command line, for instance), even while intake keeps handing it
/// new messages.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Due messages an unpaced worker reads beyond its free slots, for the slots that free up next.
const READ_AHEAD: usize = 32;

/// How long a worker waits before trying a store that failed again.
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// How often a worker whose hold could not be renewed in time looks whether it was.
const HOLD_POLL: Duration = Duration::from_millis(200);

/// What a worker needs.
#[derive(Debug)]
pub struct Worker {
    /// The destination's config (its sender is built from it for each hold).
    pub config: DestinationConfig,
    /// The shared HTTP client.
    pub client: reqwest::Client,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Where attempts are recorded.
    pub recorder: Recorder,
    /// Templates, swapped whole on reload.
    pub renderer: Arc<ArcSwap<Renderer>>,
    /// Queue-wide settings (the buttons each route shows), swapped whole on reload.
    pub settings: Arc<ArcSwap<Settings>>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// New messages for this destination, and the bell rung when any are stored.
    pub inbox: Arc<Inbox>,
    /// Cancelled at shutdown: take no new messages.
    pub cancel: CancellationToken,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
    /// The hold this replica has on the destination, when it has one.
    pub role: watch::Receiver<Option<Arc<Hold>>>,
    /// Where the worker says it has stopped using a hold.
    pub drained: mpsc::UnboundedSender<Report>,
}

fn at(ms: i64) -> Instant {
    let delta = ms - now_ms();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(delta as u64)
    }
}

/// The loop's state under one hold.
struct State {
    sender: Arc<Sender>,
    pacer: Pacer,
    in_flight: JoinSet<Done>,
    /// Task id → delivery id, to find the delivery of a task that panicked.
    tasks: HashMap<tokio::task::Id, i64>,
    /// Deliveries read ahead, being attempted, or attempted and not yet recorded.
    busy: HashSet<i64>,
    /// Due deliveries read from the store ahead of a free slot, in the order they came due,
    /// then those taken from the inbox for the free slots (with their events). Dropped with
    /// the hold: they are still pending in the store for the next holder.
    ahead: VecDeque<(Delivery, Option<Arc<Event>>)>,
    unrecorded: HashMap<i64, Finished>,
    /// The queue in the store may hold due messages the inbox did not bring.
    look: bool,
    /// When the worker last saw every message due in the store.
    looked_at: Instant,
    /// When the first message the store holds for later comes due (a retry), when known.
    next_due: Option<Instant>,
    /// This replica's own trouble (its store reads failed): wait before looking again.
    paused_until: Instant,
    /// The destination's pause (a `Retry-After`, a run of failures), ms: kept with the lease.
    destination_paused_until: i64,
    /// The destination pause changed and the store has not been told yet.
    pause_unsaved: bool,
    failures: u32,
}

impl State {
    /// When to look again with nothing to start: when a retry comes due, or the next look
    /// for work no one told of.
    fn wake(&self) -> Instant {
        let poll = self.looked_at + IDLE_POLL;
        self.next_due.map_or(poll, |t| t.min(poll))
    }

    /// Notes a retry recorded for `retry_ms`, so the worker wakes for it then (or earlier, for
    /// one due first): a look since the attempt may have found the store without it.
    fn retry_due(&mut self, retry_ms: i64) {
        let retry = at(retry_ms);
        self.next_due = Some(self.next_due.map_or(retry, |t| t.min(retry)));
    }
}

impl Worker {
    /// Runs until cancelled: sends while this replica holds the destination, waits while
    /// another does.
    pub async fn run(mut self) {
        loop {
            let hold = tokio::select! {
                hold = self.role.wait_for(|h| h.as_ref().is_some_and(|h| !h.ended().is_cancelled())) => match hold {
                    Ok(h) => h.clone().expect("waited for a hold"),
                    Err(_) => return, // the cluster manager is gone: shutting down
                },
                () = self.cancel.cancelled() => return,
            };
            let epoch = hold.taken.epoch;
            let carry = self.send_while_held(hold).await;
            let _ = self.drained.send(Report::Drained(Drained {
                destination: self.config.name.clone(),
                epoch,
                carry,
            }));
            if self.cancel.is_cancelled() {
                return;
            }
        }
    }

    fn state(&self, hold: Arc<Hold>) -> Option<State> {
        let destination = self.config.build(&BuildEnv {
            client: self.client.clone(),
            store: Some(self.store.clone()),
        })?;
        let limits = self.config.limits;
        let now = Instant::now();
        let taken = &hold.taken;
        let pacer = match taken.left {
            Left::Fresh | Left::Released(None) => Pacer::new(limits.rate, limits.burst, now),
            Left::Released(Some(pace)) => Pacer::resume(
                limits.rate,
                limits.burst,
                now,
                pace.tokens,
                Duration::from_millis((now_ms() - pace.at).max(0) as u64),
            ),
            // Its holder may have spent the whole bucket just before the lease ran out.
            Left::Expired { ago_ms } => Pacer::resume(
                limits.rate,
                limits.burst,
                now,
                0.0,
                Duration::from_millis(ago_ms.max(0) as u64),
            ),
        };
        Some(State {
            pacer,
            destination_paused_until: taken.carry.paused_until,
            failures: taken.carry.failures,
            sender: Arc::new(Sender {
                destination,
                hold,
                store: self.store.clone(),
                recorder: self.recorder.clone(),
                renderer: self.renderer.clone(),
                settings: self.settings.clone(),
                policy: self.policy.clone(),
                metrics: self.metrics.clone(),
            }),
            in_flight: JoinSet::new(),
            tasks: HashMap::new(),
            busy: HashSet::new(),
            ahead: VecDeque::new(),
            unrecorded: HashMap::new(),
            look: true,
            looked_at: now,
            next_due: None,
            paused_until: now,
            pause_unsaved: false,
        })
    }

    /// Sends until the hold ends or the worker is cancelled; then waits for the attempts in
    /// flight and returns what the next holder should know.
    async fn send_while_held(&self, hold: Arc<Hold>) -> Carry {
        self.inbox.open();
        let carry = self.send_under(hold).await;
        self.inbox.close();
        carry
    }

    async fn send_under(&self, hold: Arc<Hold>) -> Carry {
        let Some(mut st) = self.state(hold.clone()) else {
            // Disabled destinations get no worker; this is only a config without its secret.
            return hold.taken.carry;
        };
        while !self.cancel.is_cancelled() && !hold.ended().is_cancelled() {
            let wake = self.turn(&mut st).await;
            tokio::select! {
                Some(done) = st.in_flight.join_next_with_id(), if !st.in_flight.is_empty() => {
                    self.settle(&mut st, done);
                    // Everything else that finished meanwhile, so one look at the queue
                    // serves them all.
                    while let Some(done) = st.in_flight.try_join_next_with_id() {
                        self.settle(&mut st, done);
                    }
                }
                () = self.inbox.rung() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
                () = self.cancel.cancelled() => {}
                () = hold.ended().cancelled() => {}
            }
        }
        while let Some(done) = st.in_flight.join_next_with_id().await {
            self.settle(&mut st, done);
        }
        self.flush_records(&mut st).await;
        Carry {
            pace: st.pacer.tokens(Instant::now()).map(|tokens| Pace {
                tokens,
                at: now_ms(),
            }),
            paused_until: st.destination_paused_until,
            failures: st.failures,
        }
    }

    /// Starts what can start now; returns when to look again.
    async fn turn(&self, st: &mut State) -> Instant {
        let name = self.config.name.as_str();
        let now = Instant::now();
        if !self.flush_records(st).await {
            return now + STORE_PAUSE;
        }
        if st.pause_unsaved {
            let hold = &st.sender.hold;
            match self
                .store
                .save_pause(
                    name,
                    hold.taken.epoch,
                    st.destination_paused_until,
                    st.failures,
                )
                .await
            {
                Ok(()) => st.pause_unsaved = false,
                Err(e) => {
                    tracing::warn!(destination = name, error = %e, "cannot keep the destination's pause for other replicas")
                }
            }
        }
        if !st.sender.hold.valid() {
            // Not renewed in time: another replica may be taking over. Send nothing until
            // the renewal comes through or the hold ends.
            return now + HOLD_POLL;
        }
        if st.paused_until > now {
            return st.paused_until;
        }
        if st.destination_paused_until > now_ms() {
            return at(st.destination_paused_until);
        }
        let free = self
            .config
            .limits
            .concurrency
            .saturating_sub(st.in_flight.len());
        if free == 0 {
            return now + IDLE_POLL;
        }
        st.look |= self.inbox.take_look()
            || now >= st.looked_at + IDLE_POLL
            || st.next_due.is_some_and(|t| t <= now);
        if st.look && st.ahead.len() < free {
            // An unpaced destination reads ahead: one look then serves the next few slots
            // that free up, instead of a look per freed slot. A paced one reads only what it
            // can send.
            let read_ahead = if st.pacer.tokens(now).is_none() {
                READ_AHEAD
            } else {
                0
            };
            let limit = free - st.ahead.len() + read_ahead;
            // Messages being attempted or read ahead are left out by the query itself:
            // reading them (bodies and all) only to drop them here made each look at the queue
            // cost as much as a full one.
            let busy: Vec<i64> = st.busy.iter().copied().collect();
            self.metrics.queue_reads.with_label_values(&[name]).inc();
            // One time for both queries, so nothing that comes due between them is missed.
            let at_ms = now_ms();
            let rows = match self.store.due(name, at_ms, limit, busy).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(destination = name, error = %e, "cannot read the queue");
                    return now + STORE_PAUSE;
                }
            };
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            self.inbox.found(&ids);
            let all = rows.len() < limit;
            for row in rows {
                st.busy.insert(row.id);
                st.ahead.push_back((row, None));
            }
            if all {
                st.look = false;
                st.looked_at = Instant::now();
                // Nothing else is due: wake when a retry comes due.
                st.next_due = match self.store.next_due_after(name, at_ms).await {
                    Ok(next) => next.map(at),
                    Err(_) => None,
                };
            }
        }
        // Only for the free slots: the inbox costs nothing to read later, and what waits in
        // it must not keep `ahead` full, or a look the worker was rung for would never run.
        if st.ahead.len() < free {
            for (row, event) in self.inbox.take(free - st.ahead.len(), &st.busy) {
                st.busy.insert(row.id);
                st.ahead.push_back((row, Some(event)));
            }
        }
        if st.ahead.is_empty() {
            return st.wake();
        }
        for _ in 0..free.min(st.ahead.len()) {
            if let Err(wait) = st.pacer.take(Instant::now()) {
                return Instant::now() + wait;
            }
            let Some((row, event)) = st.ahead.pop_front() else {
                break;
            };
            let (sender, failures, id) = (st.sender.clone(), st.failures, row.id);
            let handle = st
                .in_flight
                .spawn(async move { sender.attempt(row, event, failures).await });
            st.tasks.insert(handle.id(), id);
        }
        st.wake()
    }

    /// Takes in the end of one attempt.
    fn settle(
        &self,
        st: &mut State,
        done: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
    ) {
        let name = self.config.name.as_str();
        let (task, done) = match done {
            Ok((task, done)) => (task, done),
            Err(e) => {
                // A bug, not a verdict: leave the delivery pending for a later attempt.
                let id = st.tasks.remove(&e.id());
                tracing::error!(destination = name, delivery = ?id, error = %e, "an attempt panicked");
                if let Some(id) = id {
                    st.busy.remove(&id);
                }
                st.look = true;
                st.paused_until = Instant::now() + STORE_PAUSE;
                return;
            }
        };
        let Some(id) = st.tasks.remove(&task) else {
            return;
        };
        let verdict = match done {
            Done::Recorded(verdict) => {
                st.busy.remove(&id);
                Some(verdict)
            }
            Done::Unrecorded(verdict, record) => {
                st.unrecorded.insert(id, record);
                Some(verdict)
            }
            Done::StoreTrouble(e) => {
                tracing::error!(destination = name, delivery = id, error = %e, "cannot load a message to send");
                st.busy.remove(&id);
                st.look = true;
                st.paused_until = Instant::now() + STORE_PAUSE;
                None
            }
            // Still pending in the store, and no longer anywhere else.
            Done::NotHeld | Done::NotDue => {
                st.busy.remove(&id);
                st.look = true;
                None
            }
        };
        match verdict {
            Some(Verdict::Sent) => {
                if st.failures > 0 {
                    st.pause_unsaved = true;
                }
                st.failures = 0;
            }
            Some(Verdict::Retry {
                at: retry,
                pause_until,
            }) => {
                st.retry_due(retry);
                st.failures += 1;
                if pause_until > st.destination_paused_until {
                    st.destination_paused_until = pause_until;
                }
                st.pause_unsaved = true;
            }
            _ => {}
        }
    }

    /// Hands the store the results it refused before; true when none is left.
    async fn flush_records(&self, st: &mut State) -> bool {
        let ids: Vec<i64> = st.unrecorded.keys().copied().collect();
        for id in ids {
            match st.sender.store_record(&st.unrecorded[&id]).await {
                Ok(()) => {
                    if let Some(Finished {
                        resolution: Resolution::RetryAt(retry),
                        ..
                    }) = st.unrecorded.remove(&id)
                    {
                        st.retry_due(retry);
                    }
                    st.busy.remove(&id);
                }
                Err(e) => {
                    tracing::error!(destination = self.config.name.as_str(), delivery = id, error = %e, "still cannot record an attempt");
                    return false;
                }
            }
        }
        true
    }
}
