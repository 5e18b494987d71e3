//! The durable delivery queue: an accepted event is stored with one delivery per (route,
//! destination) before Buildkite gets its answer; per-destination workers then render and
//! send each delivery, retrying as the destination asks, until it is sent or dead.

mod pacer;
mod plan;
mod policy;
mod worker;

pub use plan::{Plan, plan};
pub use policy::RetryPolicy;
pub use worker::Limits;

use crate::config::DestinationConfig;
use crate::deliver;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::routing::Router;
use crate::store::{Accepted, NewEvent, Planner, Store, StoreError, now_ms};
use crate::transition;
use arc_swap::ArcSwap;
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
#[derive(Debug, Clone, PartialEq)]
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

/// A destination's worker, running.
struct Running {
    config: DestinationConfig,
    bell: Arc<Notify>,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

struct Inner {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    renderer: Arc<ArcSwap<Renderer>>,
    settings: ArcSwap<Settings>,
    /// Wakes each enabled destination's worker; swapped whole on reload.
    bells: ArcSwap<HashMap<String, Arc<Notify>>>,
    workers: tokio::sync::Mutex<HashMap<String, Running>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("destinations", &self.bells.load().len())
            .finish()
    }
}

/// The running queue.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    /// Starts one worker per enabled destination, and the housekeeping task.
    pub async fn start(
        store: Arc<dyn Store>,
        renderer: Renderer,
        destinations: &[DestinationConfig],
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let queue = Self {
            inner: Arc::new(Inner {
                store,
                client: deliver::client(),
                metrics,
                renderer: Arc::new(ArcSwap::from_pointee(renderer)),
                settings: ArcSwap::from_pointee(settings),
                bells: ArcSwap::from_pointee(HashMap::new()),
                workers: tokio::sync::Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        };
        queue.apply(destinations, false).await;
        let housekeeping = queue.clone();
        queue
            .inner
            .tracker
            .spawn(async move { housekeeping.housekeeping().await });
        queue
    }

    /// Takes in a reloaded config: new templates at once; a worker is replaced only when its
    /// destination (or the retry policy) changed, after its attempts in flight have finished
    /// and been recorded, so no message is sent twice or dropped; removed destinations stop,
    /// leaving their pending deliveries in the store.
    pub async fn reload(
        &self,
        renderer: Renderer,
        destinations: &[DestinationConfig],
        settings: Settings,
    ) {
        self.inner.renderer.store(Arc::new(renderer));
        // Workers hold the retry policy; dedupe and retention are read where they are used.
        let policy_changed = self.inner.settings.load().policy != settings.policy;
        self.inner.settings.store(Arc::new(settings));
        self.apply(destinations, policy_changed).await;
    }

    /// Makes the running workers match `destinations`; `restart_all` when the retry policy
    /// they hold changed.
    async fn apply(&self, destinations: &[DestinationConfig], restart_all: bool) {
        let inner = &self.inner;
        let mut workers = inner.workers.lock().await;
        let wanted: HashMap<&str, &DestinationConfig> = destinations
            .iter()
            .filter(|d| d.enabled())
            .map(|d| (d.name.as_str(), d))
            .collect();
        let stale: Vec<String> = workers
            .iter()
            .filter(|(name, w)| {
                restart_all || wanted.get(name.as_str()).is_none_or(|d| **d != w.config)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(w) = workers.remove(&name) {
                w.cancel.cancel();
                let _ = w.done.await;
                tracing::info!(destination = %name, "worker stopped for the new config");
            }
        }
        let settings = inner.settings.load_full();
        for (name, config) in wanted {
            if workers.contains_key(name) {
                continue;
            }
            let Some(destination) = deliver::build(config, &inner.client, inner.store.clone())
            else {
                continue;
            };
            let bell = Arc::new(Notify::new());
            let cancel = inner.cancel.child_token();
            let worker = Worker {
                destination,
                limits: config.limits,
                store: inner.store.clone(),
                renderer: inner.renderer.clone(),
                policy: settings.policy.clone(),
                notify: bell.clone(),
                cancel: cancel.clone(),
                metrics: inner.metrics.clone(),
            };
            let done = inner.tracker.spawn(worker.run());
            workers.insert(
                name.to_string(),
                Running {
                    config: config.clone(),
                    bell,
                    cancel,
                    done,
                },
            );
        }
        let bells = workers
            .iter()
            .map(|(n, w)| (n.clone(), w.bell.clone()))
            .collect();
        inner.bells.store(Arc::new(bells));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether a destination has a worker (is configured and enabled).
    pub fn has_destination(&self, name: &str) -> bool {
        self.inner.bells.load().contains_key(name)
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
            .inner
            .settings
            .load()
            .dedupe_window
            .map(|w| received_at - w.as_millis() as i64);
        let new = NewEvent {
            name: event.name().to_string(),
            body,
            received_at,
            build: transition::outcome(&event),
        };
        let bells = self.inner.bells.load_full();
        let planned: Arc<Mutex<Plan>> = Arc::default();
        let planner: Planner = {
            let (planned, bells) = (planned.clone(), bells.clone());
            Box::new(move |transition| {
                let mut event = event;
                event.set_transition(transition.cloned());
                let routes = router.route(&event);
                let p = plan(&routes, &event, |d| bells.contains_key(d));
                let deliveries = p.deliveries.clone();
                *planned.lock().expect("the plan lock is never poisoned") = p;
                deliveries
            })
        };
        let accepted = self.inner.store.accept(new, planner, dedupe_since).await?;
        let plan = std::mem::take(&mut *planned.lock().expect("the plan lock is never poisoned"));
        for d in &plan.deliveries {
            if let Some(bell) = bells.get(&d.destination) {
                bell.notify_one();
            }
        }
        Ok(Intake { accepted, plan })
    }

    /// Stops taking new messages and waits up to `deadline` for attempts in flight; whatever
    /// is not sent stays queued for the next start. True when everything finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(deadline, self.inner.tracker.wait())
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
                () = self.inner.cancel.cancelled() => return,
            }
            self.log_depth(false).await;
            self.prune().await;
        }
    }

    /// Deletes what retention no longer keeps, a chunk per write so webhooks are never held up.
    async fn prune(&self) {
        let before = now_ms() - self.inner.settings.load().retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match self.inner.store.prune(before, PRUNE_CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < PRUNE_CHUNK || self.inner.cancel.is_cancelled() {
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
        let stats = match self.inner.store.queue_stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read queue depth");
                return;
            }
        };
        let now = now_ms();
        for s in stats {
            let oldest_age_s = s.oldest_age_ms(now).map(|ms| ms / 1000);
            let configured = self.has_destination(&s.destination);
            if s.pending > 0 && !configured {
                tracing::warn!(destination = %s.destination, pending = s.pending, "pending deliveries for a destination that is not configured or is disabled: they wait until it is back");
            } else if s.pending > 0 || (at_start && s.dead > 0) {
                tracing::info!(destination = %s.destination, pending = s.pending, oldest_age_s, dead = s.dead, "queue depth");
            }
        }
    }
}
