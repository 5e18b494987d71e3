//! Which destinations this replica sends: it holds each by a lease in the store, renews what it
//! holds, takes what nobody holds, and lets go of more than its share so the work spreads.
//!
//! A worker sends only while its [`Hold`] is valid: renewed recently enough that no other
//! replica can have taken it. A hold that could not be renewed in time stops sending at once;
//! one the store says is someone else's ends, and its worker finishes what it has in flight.
//! With a store only one process uses, every destination is held at once and for good.

use crate::metrics::Metrics;
use crate::store::{Carry, Store, Taken};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often a single-process store's holds are looked at (they never run out).
const LOCAL_TICK: Duration = Duration::from_secs(1);

/// A hold this replica has on one destination.
#[derive(Debug)]
pub struct Hold {
    /// What the store granted: the epoch and what the previous holder left.
    pub taken: Taken,
    /// Until when the hold is surely still ours (`None`: for good).
    valid_until: Mutex<Option<Instant>>,
    /// Cancelled when the hold ends: someone else has it, or it is to be let go.
    ended: CancellationToken,
}

impl Hold {
    fn new(taken: Taken, valid_until: Option<Instant>) -> Self {
        Self {
            taken,
            valid_until: Mutex::new(valid_until),
            ended: CancellationToken::new(),
        }
    }

    /// Whether sending is allowed now: the hold has not ended and was renewed in time.
    pub fn valid(&self) -> bool {
        !self.ended.is_cancelled() && self.valid_until().is_none_or(|t| Instant::now() < t)
    }

    /// Until when the hold is surely ours, if it can run out.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancelled when the hold ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    fn extend(&self, until: Option<Instant>) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }
}

/// What the lease manager hears about holds it granted.
#[derive(Debug)]
pub enum Report {
    /// A worker has stopped sending under a hold: nothing is in flight any more.
    Drained(Drained),
    /// A hold was granted after its worker had stopped for good (a reload removed or
    /// replaced it): no report will come, so unless the worker's came first, the manager
    /// lets it go, passing on what the previous holder left.
    Orphaned(Drained),
}

/// A hold given up, and what its holder leaves for the next.
#[derive(Debug)]
pub struct Drained {
    /// The destination.
    pub destination: String,
    /// The hold's epoch.
    pub epoch: i64,
    /// What the worker leaves for the next holder.
    pub carry: Carry,
}

/// A destination this replica wants to send, and its hold if it has one.
#[derive(Debug)]
struct Slot {
    role: watch::Sender<Option<Arc<Hold>>>,
    hold: Option<Arc<Hold>>,
    since: Instant,
}

/// The lease manager of one replica.
#[derive(Debug)]
pub struct Cluster {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Holds whose workers have not yet reported them drained, by (destination, epoch).
    outstanding: Mutex<HashMap<(String, i64), bool>>,
    reports: mpsc::UnboundedSender<Report>,
    /// Set by the first renewal failure of a spell, so the log says it once.
    failing: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// A manager for `store`, and the channel on which workers report drained holds (pass it
    /// to [`Cluster::run`]).
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Report>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            store,
            metrics,
            slots: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            reports: tx,
            failing: Default::default(),
        });
        (cluster, rx)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), bool>> {
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often holds are renewed and free destinations looked for: a quarter of the lease,
    /// so three renewals in a row can fail before a hold runs out.
    pub fn tick(&self) -> Duration {
        self.store.lease_ttl().map_or(LOCAL_TICK, |ttl| ttl / 4)
    }

    /// Starts wanting `destination`: the returned receiver gets a hold whenever this replica
    /// has one, and the sender takes the worker's report when it stops using it.
    pub fn join(
        &self,
        destination: &str,
    ) -> (
        watch::Receiver<Option<Arc<Hold>>>,
        mpsc::UnboundedSender<Report>,
    ) {
        let (tx, rx) = watch::channel(None);
        self.slots().insert(
            destination.to_string(),
            Slot {
                role: tx,
                hold: None,
                since: Instant::now(),
            },
        );
        (rx, self.reports.clone())
    }

    /// Stops wanting `destination`; call once its worker has stopped. A hold the worker was
    /// using is let go by the worker's own report; one granted after it stopped, by this.
    pub fn leave(&self, destination: &str) {
        let Some(hold) = self.slots().remove(destination).and_then(|s| s.hold) else {
            return;
        };
        hold.ended.cancel();
        self.orphaned(destination, &hold);
    }

    /// Reports `hold` as one no worker will report: through the reports, so it is looked at
    /// after any report its worker did send.
    fn orphaned(&self, destination: &str, hold: &Hold) {
        let _ = self.reports.send(Report::Orphaned(Drained {
            destination: destination.to_string(),
            epoch: hold.taken.epoch,
            carry: unused(&hold.taken),
        }));
    }

    /// Whether this replica holds `destination` now.
    pub fn holds(&self, destination: &str) -> bool {
        self.slots()
            .get(destination)
            .and_then(|s| s.hold.as_ref())
            .is_some_and(|h| h.valid())
    }

    /// Renews, takes and lets go until `cancel`; then says this replica is leaving and, while
    /// workers finish what they have in flight, keeps renewing their holds and lets each go as
    /// it reports.
    pub async fn run(
        self: Arc<Self>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        cancel: CancellationToken,
    ) {
        self.turn(true).await;
        loop {
            let pause = self.tick().mul_f64(0.9 + fastrand::f64() / 5.0);
            tokio::select! {
                () = tokio::time::sleep(pause) => self.turn(true).await,
                Some(report) = reports.recv() => self.heard(report).await,
                () = cancel.cancelled() => break,
            }
        }
        // Out of the others' count at once: this replica takes nothing more, so their shares
        // grow and they take what it lets go without waiting out a grace.
        if let Err(e) = self.store.leave().await {
            tracing::warn!(error = %e, "cannot record that this replica is stopping");
        }
        let mut renew = tokio::time::interval(self.tick());
        while !self.outstanding().is_empty() {
            tokio::select! {
                _ = renew.tick() => {
                    self.turn(false).await;
                    self.orphans();
                }
                Some(report) = reports.recv() => self.heard(report).await,
            }
        }
    }

    /// Holds whose worker is gone without a report (it stopped just as the hold was granted,
    /// at shutdown): reported as orphaned.
    fn orphans(&self) {
        for (name, slot) in self.slots().iter() {
            if let Some(hold) = &slot.hold
                && slot.role.receiver_count() == 0
            {
                self.orphaned(name, hold);
            }
        }
    }

    async fn heard(&self, report: Report) {
        match report {
            Report::Drained(d) => self.settle(d).await,
            // Unless its worker's report came first and let it go already.
            Report::Orphaned(d) => {
                if self
                    .outstanding()
                    .contains_key(&(d.destination.clone(), d.epoch))
                {
                    self.settle(d).await
                }
            }
        }
    }

    /// A hold is no longer used: let it go (unless it was lost), so another replica or a new
    /// worker can take it.
    async fn settle(&self, report: Drained) {
        let key = (report.destination.clone(), report.epoch);
        let lost = self.outstanding().remove(&key).unwrap_or(true);
        let held_still = {
            let mut slots = self.slots();
            match slots.get_mut(&report.destination) {
                Some(slot)
                    if slot
                        .hold
                        .as_ref()
                        .is_some_and(|h| h.taken.epoch == report.epoch) =>
                {
                    slot.hold = None;
                    slot.since = Instant::now();
                    slot.role.send_replace(None);
                    false
                }
                // A newer hold of the same destination (its worker was replaced meanwhile).
                Some(slot) => slot.hold.is_some(),
                None => false,
            }
        };
        if !held_still {
            self.metrics
                .destination_held
                .with_label_values(&[report.destination.as_str()])
                .set(0);
        }
        if lost {
            return;
        }
        match self
            .store
            .release(&report.destination, report.epoch, report.carry)
            .await
        {
            Ok(()) => {
                tracing::info!(destination = %report.destination, "let go of the destination")
            }
            Err(e) => {
                tracing::warn!(destination = %report.destination, error = %e, "cannot let go of the destination; its lease runs out by itself")
            }
        }
    }

    /// One look at the leases: renew what is held; when `taking`, also say this replica is
    /// alive, hand on more than its share and take free destinations.
    async fn turn(&self, taking: bool) {
        let started = Instant::now();
        let valid_until = self.store.lease_ttl().map(|ttl| started + ttl.mul_f64(0.9));
        // Renewal first: nothing else may delay or prevent it.
        let held: Vec<(String, i64)> = self
            .outstanding()
            .iter()
            .filter(|(_, lost)| !**lost)
            .map(|((d, e), _)| (d.clone(), *e))
            .collect();
        match self.store.renew(&held).await {
            Ok(still) => self.renewed(&held, &still, valid_until),
            Err(e) => {
                self.trouble(&e);
                return;
            }
        }
        if !taking {
            // Stopping: renewing is all that is left to do, and no heartbeat (see `run`).
            return;
        }
        let replicas = match self.store.heartbeat().await {
            Ok(n) => n.max(1),
            Err(e) => {
                self.trouble(&e);
                return;
            }
        };
        self.failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.metrics.replicas.set(replicas as i64);
        self.rebalance(replicas, valid_until).await;
    }

    fn trouble(&self, e: &crate::store::StoreError) {
        if !self
            .failing
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(error = %e, "cannot renew leases: destinations stop sending when their lease runs out");
        }
    }

    /// Extends the holds the store renewed; ends those it says are someone else's.
    fn renewed(&self, held: &[(String, i64)], still: &[String], valid_until: Option<Instant>) {
        let mut outstanding = self.outstanding();
        let slots = self.slots();
        for (destination, epoch) in held {
            let hold = slots
                .get(destination)
                .and_then(|s| s.hold.clone())
                .filter(|h| h.taken.epoch == *epoch);
            if still.contains(destination) {
                if let Some(hold) = hold {
                    hold.extend(valid_until);
                }
                continue;
            }
            tracing::warn!(destination = %destination, "lost the destination's lease to another replica: sending stops");
            outstanding.insert((destination.clone(), *epoch), true);
            if let Some(hold) = hold {
                hold.ended.cancel();
            }
        }
    }

    /// Hands on one destination when this replica has more than its share, and takes free
    /// ones: at once while below its share, after a while otherwise (so a replica with fewer
    /// gets them first, and nothing stays unsent for long when nobody else does).
    async fn rebalance(&self, replicas: usize, valid_until: Option<Instant>) {
        let tick = self.tick();
        let (free, mine, fair) = {
            let slots = self.slots();
            let mine = slots.values().filter(|s| s.hold.is_some()).count();
            let fair = slots.len().div_ceil(replicas);
            if mine > fair {
                // The one held longest goes; a hold younger than two turns stays put, so
                // destinations do not bounce between replicas that are still starting.
                let oldest = slots
                    .iter()
                    .filter(|(_, s)| s.since.elapsed() > tick * 2)
                    .filter_map(|(name, s)| s.hold.as_ref().map(|h| (name, s.since, h)))
                    // One lost or already being handed on is not ours to hand.
                    .filter(|(_, _, h)| !h.ended.is_cancelled())
                    .min_by_key(|(_, since, _)| *since);
                if let Some((name, _, hold)) = oldest {
                    tracing::info!(destination = %name, held = mine, share = fair, replicas, "handing the destination to a replica with fewer");
                    hold.ended.cancel();
                }
            }
            let free: Vec<String> = slots
                .iter()
                .filter(|(_, s)| s.hold.is_none())
                .map(|(name, _)| name.clone())
                .collect();
            (free, mine, fair)
        };
        if free.is_empty() {
            return;
        }
        let grace = match mine.cmp(&fair) {
            std::cmp::Ordering::Less => Duration::ZERO,
            std::cmp::Ordering::Equal => tick,
            std::cmp::Ordering::Greater => tick * 3,
        };
        let taken = match self.store.acquire(&free, grace).await {
            Ok(t) => t,
            Err(e) => {
                self.trouble(&e);
                return;
            }
        };
        let mut unwanted = Vec::new();
        {
            let mut outstanding = self.outstanding();
            let mut slots = self.slots();
            for t in taken {
                let key = (t.destination.clone(), t.epoch);
                let Some(slot) = slots.get_mut(&t.destination) else {
                    // No longer wanted: a reload removed it while it was being taken.
                    unwanted.push(t);
                    continue;
                };
                if slot.hold.is_some() {
                    // Holds are granted only here, one turn at a time: not expected.
                    continue;
                }
                tracing::info!(destination = %t.destination, epoch = t.epoch, left = ?t.left, "took the destination");
                self.metrics
                    .destination_held
                    .with_label_values(&[t.destination.as_str()])
                    .set(1);
                let hold = Arc::new(Hold::new(t, valid_until));
                slot.hold = Some(hold.clone());
                slot.since = Instant::now();
                slot.role.send_replace(Some(hold));
                outstanding.insert(key, false);
            }
        }
        for t in unwanted {
            if let Err(e) = self
                .store
                .release(&t.destination, t.epoch, unused(&t))
                .await
            {
                tracing::warn!(destination = %t.destination, error = %e, "cannot let go of the destination; its lease runs out by itself");
            }
        }
    }
}

/// What a hold that sent nothing leaves: what it was given.
fn unused(taken: &Taken) -> Carry {
    let pace = match taken.left {
        crate::store::Left::Released(pace) => pace,
        _ => None,
    };
    Carry {
        pace,
        ..taken.carry
    }
}
