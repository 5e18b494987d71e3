//! The durable delivery queue: an accepted event is stored with one delivery per (route,
//! destination) before Buildkite gets its answer; per-destination workers then render and
//! send each delivery, retrying as the destination asks, until it is sent or dead. Replicas
//! sharing a store split the destinations between them by lease ([`cluster`]): each is sent by
//! one replica at a time.

mod attempt;
pub mod cluster;
mod compose;
mod handoff;
mod housekeeping;
mod pacer;
mod plan;
mod policy;
mod recorder;
mod worker;

pub use plan::{MutedMessage, Plan, plan};
pub use policy::RetryPolicy;

use crate::destination::{self, DestinationConfig};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::routing::Router;
use crate::store::{Accepted, NewEvent, Planner, Store, StoreError};
use crate::transition;
use arc_swap::ArcSwap;
use bytes::Bytes;
use cluster::Cluster;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker::Worker;

/// Queue-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Identical bodies within this window are stored once; `None` turns it off.
    pub dedupe_window: Option<Duration>,
    /// Sent deliveries older than this are pruned.
    pub retention: Duration,
    /// The action buttons each route's messages show.
    pub buttons: Arc<crate::actions::Buttons>,
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
    /// Attempt records, batched for all the workers.
    recorder: recorder::Recorder,
    /// Parsed events, from intake to the workers.
    handoff: Arc<handoff::Handoff>,
    metrics: Arc<Metrics>,
    renderer: Arc<ArcSwap<Renderer>>,
    /// Shared with the workers, which read the buttons from it at each attempt.
    settings: Arc<ArcSwap<Settings>>,
    /// Wakes each enabled destination's worker; swapped whole on reload.
    bells: ArcSwap<HashMap<String, Arc<Notify>>>,
    workers: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Which destinations this replica sends.
    cluster: Arc<Cluster>,
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
        let (cluster, drained) = Cluster::new(store.clone(), metrics.clone());
        let queue = Self {
            inner: Arc::new(Inner {
                recorder: recorder::Recorder::start(&store),
                handoff: Arc::new(handoff::Handoff::new(
                    handoff::DEFAULT_BUDGET,
                    metrics.event_reads.clone(),
                )),
                store,
                client: destination::client(),
                metrics,
                renderer: Arc::new(ArcSwap::from_pointee(renderer)),
                settings: Arc::new(ArcSwap::from_pointee(settings)),
                bells: ArcSwap::from_pointee(HashMap::new()),
                workers: tokio::sync::Mutex::new(HashMap::new()),
                cluster,
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        };
        queue.apply(destinations, false).await;
        let inner = &queue.inner;
        inner
            .tracker
            .spawn(inner.cluster.clone().run(drained, inner.cancel.clone()));
        // Other replicas say when they stored something for a destination this one sends.
        let ring: crate::store::Ring = {
            let queue = queue.clone();
            Arc::new(move |destination: &str| {
                if let Some(bell) = queue.inner.bells.load().get(destination) {
                    bell.notify_one();
                }
            })
        };
        let (store, cancel) = (inner.store.clone(), inner.cancel.clone());
        inner
            .tracker
            .spawn(async move { store.listen(ring, cancel).await });
        let housekeeping = queue.clone();
        inner
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
                inner.cluster.leave(&name);
                tracing::info!(destination = %name, "worker stopped for the new config");
            }
        }
        let settings = inner.settings.load_full();
        for (name, config) in wanted {
            if workers.contains_key(name) {
                continue;
            }
            if !config.enabled() {
                continue;
            }
            let bell = Arc::new(Notify::new());
            let cancel = inner.cancel.child_token();
            let (role, drained) = inner.cluster.join(name);
            let worker = Worker {
                config: config.clone(),
                client: inner.client.clone(),
                store: inner.store.clone(),
                recorder: inner.recorder.clone(),
                handoff: inner.handoff.clone(),
                renderer: inner.renderer.clone(),
                settings: inner.settings.clone(),
                policy: settings.policy.clone(),
                notify: bell.clone(),
                cancel: cancel.clone(),
                metrics: inner.metrics.clone(),
                role,
                drained,
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
        mut event: Event,
        body: Bytes,
        router: Arc<Router>,
    ) -> Result<Intake, StoreError> {
        let received_at = event.received_at().timestamp_millis();
        // To the millisecond, as stored: routing, mute windows and templates then see the
        // same time whether the event is rendered from memory or read back.
        if let Some(at) = chrono::DateTime::from_timestamp_millis(received_at) {
            event.set_received_at(at);
        }
        let bytes = body.len();
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
        // The plan, and the event with its transition, come back out of the store's
        // transaction through here (the store may plan again if it takes the event again).
        let planned: Arc<Mutex<(Plan, Option<Event>)>> =
            Arc::new(Mutex::new((Plan::default(), Some(event))));
        let planner: Planner = {
            let (planned, bells) = (planned.clone(), bells.clone());
            Box::new(move |transition| {
                let mut slot = planned.lock().expect("the plan lock is never poisoned");
                let (kept, event) = &mut *slot;
                let event = event
                    .as_mut()
                    .expect("the event stays until the store answers");
                event.set_transition(transition.cloned());
                let routes = router.route(event);
                *kept = plan(&routes, event, |d| bells.contains_key(d));
                kept.deliveries.clone()
            })
        };
        let accepted = self.inner.store.accept(new, planner, dedupe_since).await?;
        let (mut plan, event) =
            std::mem::take(&mut *planned.lock().expect("the plan lock is never poisoned"));
        if matches!(accepted, Accepted::Duplicate { .. }) {
            // Planned in a transaction that failed, then found a duplicate when taken again.
            plan = Plan::default();
        }
        if let (Accepted::New { event_id, .. }, Some(mut event)) = (&accepted, event) {
            // Handed to this replica's workers before they are rung, for the messages they
            // will send now; a digest or a held message reads its events back later.
            let uses = plan
                .deliveries
                .iter()
                .filter(|d| d.group.is_none() && d.not_before.is_none_or(|t| t <= received_at))
                .filter(|d| bells.contains_key(&d.destination))
                .count();
            event.set_id(*event_id);
            self.inner.handoff.put(Arc::new(event), uses, bytes);
        }
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
}
