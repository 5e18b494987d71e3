//! The durable delivery queue: an accepted event is stored with one delivery per (route,
//! destination) before Buildkite gets its answer; per-destination workers then render and
//! send each delivery, retrying as the destination asks, until it is sent or dead.

mod pacer;
mod plan;
mod policy;
mod worker;

pub use pacer::Pacer;
pub use plan::{Plan, group_key, plan, thread_key};
pub use policy::{DESTINATION_PAUSE_MAX, RetryPolicy, Verdict};
pub use worker::Limits;

use crate::deliver::Destination;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::routing::Router;
use crate::store::{Accepted, NewEvent, Planner, Store, StoreError, now_ms};
use crate::transition;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::Worker;

/// How often queue depth is logged and old deliveries pruned.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per pruning write.
const PRUNE_CHUNK: usize = 2_000;

/// Queue-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Identical bodies within this window are stored once; `None` turns it off.
    pub dedupe_window: Option<Duration>,
    /// Sent deliveries older than this are pruned.
    pub retention: Duration,
}

/// What `accept` did with an event.
#[derive(Debug, Clone)]
pub struct Intake {
    /// Stored or duplicate.
    pub accepted: Accepted,
    /// The routes and messages it made (empty for a duplicate).
    pub plan: Plan,
}

/// The running queue.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Arc<dyn Store>,
    notify: Arc<HashMap<String, Arc<Notify>>>,
    settings: Settings,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Queue {
    /// Starts one worker per destination and the housekeeping task.
    pub fn start(
        store: Arc<dyn Store>,
        renderer: Arc<Renderer>,
        destinations: Vec<(Arc<dyn Destination>, Limits)>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut notify = HashMap::new();
        for (destination, limits) in destinations {
            let bell = Arc::new(Notify::new());
            notify.insert(destination.name().to_string(), bell.clone());
            let worker = Worker {
                destination,
                limits,
                store: store.clone(),
                renderer: renderer.clone(),
                policy: settings.policy.clone(),
                notify: bell,
                cancel: cancel.clone(),
                metrics: metrics.clone(),
            };
            tracker.spawn(worker.run());
        }
        let queue = Self {
            store,
            notify: Arc::new(notify),
            settings,
            cancel,
            tracker,
        };
        let housekeeping = queue.clone();
        queue
            .tracker
            .spawn(async move { housekeeping.housekeeping().await });
        queue
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether a destination has a worker (is configured and enabled).
    pub fn has_destination(&self, name: &str) -> bool {
        self.notify.contains_key(name)
    }

    /// Stores an event and its deliveries, durably, and wakes their workers. Routing happens
    /// inside the store's transaction, once the event's transition is known.
    pub async fn accept(
        &self,
        event: Event,
        body: Bytes,
        router: Arc<Router>,
    ) -> Result<Intake, StoreError> {
        let received_at = event.received_at().timestamp_millis();
        let dedupe_since = self
            .settings
            .dedupe_window
            .map(|w| received_at - w.as_millis() as i64);
        let new = NewEvent {
            name: event.name().to_string(),
            body,
            received_at,
            build: transition::outcome(&event),
        };
        let planned: Arc<Mutex<Plan>> = Arc::default();
        let planner: Planner = {
            let (planned, enabled) = (planned.clone(), self.notify.clone());
            Box::new(move |transition| {
                let mut event = event;
                event.set_transition(transition.cloned());
                let routes = router.route(&event);
                let p = plan(&routes, &event, |d| enabled.contains_key(d));
                let deliveries = p.deliveries.clone();
                *planned.lock().expect("the plan lock is never poisoned") = p;
                deliveries
            })
        };
        let accepted = self.store.accept(new, planner, dedupe_since).await?;
        let plan = std::mem::take(&mut *planned.lock().expect("the plan lock is never poisoned"));
        for d in &plan.deliveries {
            if let Some(bell) = self.notify.get(&d.destination) {
                bell.notify_one();
            }
        }
        Ok(Intake { accepted, plan })
    }

    /// Stops taking new messages and waits up to `deadline` for attempts in flight; whatever
    /// is not sent stays queued for the next start. True when everything finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    async fn housekeeping(self) {
        self.log_depth(true).await;
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.cancel.cancelled() => return,
            }
            self.log_depth(false).await;
            self.prune().await;
        }
    }

    /// Deletes what retention no longer keeps, a chunk per write so webhooks are never held up.
    async fn prune(&self) {
        let before = now_ms() - self.settings.retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match self.store.prune(before, PRUNE_CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < PRUNE_CHUNK || self.cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot prune");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                rows = total,
                "pruned sent deliveries and events past retention"
            );
        }
    }

    /// Logs each destination's queue depth and oldest pending age (at start, also dead letters
    /// and queues of destinations that are no longer configured).
    async fn log_depth(&self, at_start: bool) {
        let stats = match self.store.queue_stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read queue depth");
                return;
            }
        };
        let now = now_ms();
        for s in stats {
            let oldest_age_s = s.oldest_created_at.map(|t| (now - t).max(0) / 1000);
            let configured = self.has_destination(&s.destination);
            if s.pending > 0 && !configured {
                tracing::warn!(destination = %s.destination, pending = s.pending, "pending deliveries for a destination that is not configured or is disabled: they wait until it is back");
            } else if s.pending > 0 || (at_start && s.dead > 0) {
                tracing::info!(destination = %s.destination, pending = s.pending, oldest_age_s, dead = s.dead, "queue depth");
            }
        }
    }
}
