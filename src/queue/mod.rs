//! The durable delivery queue: an accepted event is stored with one delivery per (route,
//! destination) before Buildkite gets its answer; per-destination workers then render and
//! send each delivery, retrying as the destination asks, until it is sent or dead. Replicas
//! sharing a store split the destinations between them by lease ([`cluster`]): each is sent by
//! one replica at a time.

mod attempt;
pub mod cluster;
mod compose;
mod housekeeping;
pub mod inbox;
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
use crate::store::{
    Accepted, Delivery, DeliveryState, NewDelivery, NewEvent, Planner, Store, StoreError,
};
use crate::transition;
use arc_swap::ArcSwap;
use bytes::Bytes;
use cluster::Cluster;
use inbox::{Inbox, Tickets};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    inbox: Arc<Inbox>,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

struct Inner {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    /// Attempt records, batched for all the workers.
    recorder: recorder::Recorder,
    metrics: Arc<Metrics>,
    renderer: Arc<ArcSwap<Renderer>>,
    /// Shared with the workers, which read the buttons from it at each attempt.
    settings: Arc<ArcSwap<Settings>>,
    /// Each enabled destination's worker's new messages (and its bell); swapped whole on
    /// reload.
    inboxes: ArcSwap<HashMap<String, Arc<Inbox>>>,
    /// Intakes in progress, so no message reaches a worker both from its inbox and the store.
    tickets: Arc<Tickets>,
    workers: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Which destinations this replica sends.
    cluster: Arc<Cluster>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("destinations", &self.inboxes.load().len())
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
                store,
                client: destination::client(),
                metrics,
                renderer: Arc::new(ArcSwap::from_pointee(renderer)),
                settings: Arc::new(ArcSwap::from_pointee(settings)),
                inboxes: ArcSwap::from_pointee(HashMap::new()),
                tickets: Arc::new(Tickets::default()),
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
                if let Some(inbox) = queue.inner.inboxes.load().get(destination) {
                    inbox.ring();
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
            let inbox = Arc::new(Inbox::new(inner.tickets.clone()));
            let cancel = inner.cancel.child_token();
            let (role, drained) = inner.cluster.join(name);
            let worker = Worker {
                config: config.clone(),
                client: inner.client.clone(),
                store: inner.store.clone(),
                recorder: inner.recorder.clone(),
                renderer: inner.renderer.clone(),
                settings: inner.settings.clone(),
                policy: settings.policy.clone(),
                inbox: inbox.clone(),
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
                    inbox,
                    cancel,
                    done,
                },
            );
        }
        let inboxes = workers
            .iter()
            .map(|(n, w)| (n.clone(), w.inbox.clone()))
            .collect();
        inner.inboxes.store(Arc::new(inboxes));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether a destination has a worker (is configured and enabled).
    pub fn has_destination(&self, name: &str) -> bool {
        self.inner.inboxes.load().contains_key(name)
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
        let new_name = event.name().to_string();
        let dedupe_since = self
            .inner
            .settings
            .load()
            .dedupe_window
            .map(|w| received_at - w.as_millis() as i64);
        let new = NewEvent {
            name: new_name.clone(),
            body,
            received_at,
            build: transition::outcome(&event),
        };
        let inboxes = self.inner.inboxes.load_full();
        // The plan, and the event with its transition, come back out of the store's
        // transaction through here (the store may plan again if it takes the event again).
        let planned: Arc<Mutex<(Plan, Option<Event>)>> =
            Arc::new(Mutex::new((Plan::default(), Some(event))));
        let planner: Planner = {
            let (planned, inboxes) = (planned.clone(), inboxes.clone());
            Box::new(move |transition| {
                let mut slot = planned.lock().expect("the plan lock is never poisoned");
                let (kept, event) = &mut *slot;
                let event = event
                    .as_mut()
                    .expect("the event stays until the store answers");
                event.set_transition(transition.cloned());
                let routes = router.route(event);
                *kept = plan(&routes, event, |d| inboxes.contains_key(d));
                kept.deliveries.clone()
            })
        };
        // Taken before anything is stored, given back once the messages are handed over.
        let ticket = self.inner.tickets.begin();
        let accepted = self.inner.store.accept(new, planner, dedupe_since).await?;
        let (mut plan, event) =
            std::mem::take(&mut *planned.lock().expect("the plan lock is never poisoned"));
        if matches!(accepted, Accepted::Duplicate { .. }) {
            // Planned in a transaction that failed, then found a duplicate when taken again.
            plan = Plan::default();
        }
        let Accepted::New {
            event_id,
            delivery_ids,
            ..
        } = &accepted
        else {
            return Ok(Intake { accepted, plan });
        };
        // Sent now, by this replica's workers: a digest or a held message is found in the
        // store when it comes due.
        let now =
            |d: &NewDelivery| d.group.is_none() && d.not_before.is_none_or(|t| t <= received_at);
        let event = event.map(|mut event| {
            event.set_id(*event_id);
            Arc::new(event)
        });
        // Each worker is offered its message with the event; one it does not keep, it finds
        // by looking at the store (and parses the stored body).
        for (d, id) in plan.deliveries.iter().zip(delivery_ids) {
            let Some(inbox) = inboxes.get(&d.destination) else {
                continue;
            };
            match &event {
                Some(event) if now(d) => {
                    let row = due_now(d, *id, *event_id, &new_name, received_at);
                    inbox.offer(&ticket, row, event);
                }
                _ => inbox.ring(),
            }
        }
        drop(ticket);
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

/// A message intake just stored, as the store wrote it: one that is due at once counts its
/// age from its arrival, and its version is its arrival time.
fn due_now(
    d: &NewDelivery,
    id: i64,
    event_id: i64,
    event_name: &str,
    received_at: i64,
) -> Delivery {
    Delivery {
        id,
        event_id,
        event_name: event_name.to_string(),
        route: d.route.clone(),
        destination: d.destination.clone(),
        template: d.template.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at: received_at,
        age_from: received_at,
        next_attempt_at: received_at,
        updated_at: received_at,
        last_status: None,
        last_error: None,
        body: None,
        grouped: false,
        thread_key: d.thread_key.clone(),
        event: None,
    }
}
