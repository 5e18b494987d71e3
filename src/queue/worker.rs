//! One destination's delivery worker: takes due messages in the order they came due, paces
//! them, keeps at most `concurrency` in flight, and records each attempt's verdict.
//!
//! Destinations never share a worker, so a slow or throttled one delays no other. A message is
//! only picked again once its last attempt is recorded, so a store that refuses writes delays
//! messages but never sends one twice in a row.

use super::pacer::Pacer;
use super::policy::{RetryPolicy, Verdict};
use crate::deliver::{Context, Destination, DestinationKind, Outcome};
use crate::event::{Event, VerifiedBody};
use crate::metrics::Metrics;
use crate::render::{Body, Renderer, TemplateData, TemplateKind};
use crate::store::{Attempt, Delivery, Resolution, Store, StoreError, now_ms};
use arc_swap::ArcSwap;
use chrono::{TimeZone, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often an idle worker looks for work it was not told about (a `deliveries retry` from
/// the command line, for instance).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How long a worker waits before trying a store that failed again.
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// Pace and parallelism of one destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Messages per second on average; `None` for no limit.
    pub rate: Option<f64>,
    /// Messages allowed back to back.
    pub burst: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
}

/// What a worker needs.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Where messages go.
    pub destination: Arc<dyn Destination>,
    /// Pace and parallelism.
    pub limits: Limits,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Templates, swapped whole on reload.
    pub renderer: Arc<ArcSwap<Renderer>>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Rung when new messages for this destination are stored.
    pub notify: Arc<Notify>,
    /// Cancelled at shutdown: take no new messages.
    pub cancel: CancellationToken,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
}

/// An attempt's result that the store has not taken yet.
#[derive(Debug, Clone)]
struct Record {
    started_at: i64,
    attempt: Attempt,
    body: Option<String>,
    resolution: Resolution,
}

/// A message ready to send: its body, the text to keep of it when it was rendered now, and the
/// event it was rendered from (when one was parsed for it).
type Rendered = (Body, Option<String>, Option<Event>);

/// How one attempt ended, for the worker loop.
enum Done {
    /// Attempted and recorded.
    Recorded(Verdict),
    /// Attempted, but the store refused the record: keep it and try the store again.
    Unrecorded(Verdict, Record),
    /// Not attempted: the store could not be read. The delivery is untouched.
    StoreTrouble(StoreError),
}

fn at(ms: i64) -> Instant {
    let delta = ms - now_ms();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(delta as u64)
    }
}

/// The loop's own state.
struct State {
    pacer: Pacer,
    in_flight: JoinSet<Done>,
    /// Task id → delivery id, to find the delivery of a task that panicked.
    tasks: HashMap<tokio::task::Id, i64>,
    /// Deliveries being attempted, or attempted and not yet recorded.
    busy: HashSet<i64>,
    unrecorded: HashMap<i64, Record>,
    paused_until: Instant,
    failures: u32,
}

impl Worker {
    /// Runs until cancelled, then waits for the attempts in flight.
    pub async fn run(self) {
        let me = Arc::new(self);
        let mut st = State {
            pacer: Pacer::new(me.limits.rate, me.limits.burst, Instant::now()),
            in_flight: JoinSet::new(),
            tasks: HashMap::new(),
            busy: HashSet::new(),
            unrecorded: HashMap::new(),
            paused_until: Instant::now(),
            failures: 0,
        };
        while !me.cancel.is_cancelled() {
            let wake = me.turn(&mut st).await;
            tokio::select! {
                Some(done) = st.in_flight.join_next_with_id(), if !st.in_flight.is_empty() => {
                    me.settle(&mut st, done);
                    // Everything else that finished meanwhile, so one look at the queue
                    // serves them all.
                    while let Some(done) = st.in_flight.try_join_next_with_id() {
                        me.settle(&mut st, done);
                    }
                }
                () = me.notify.notified() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
                () = me.cancel.cancelled() => {}
            }
        }
        while let Some(done) = st.in_flight.join_next_with_id().await {
            me.settle(&mut st, done);
        }
        me.flush_records(&mut st).await;
    }

    /// Starts what can start now; returns when to look again.
    async fn turn(self: &Arc<Self>, st: &mut State) -> Instant {
        let name = self.destination.name();
        let now = Instant::now();
        if !self.flush_records(st).await {
            return now + STORE_PAUSE;
        }
        if st.paused_until > now {
            return st.paused_until;
        }
        let free = self.limits.concurrency.saturating_sub(st.in_flight.len());
        if free == 0 {
            return now + IDLE_POLL;
        }
        // Messages being attempted are left out by the query itself: reading them (bodies and
        // all) only to drop them here made each look at the queue cost as much as a full one.
        let busy: Vec<i64> = st.busy.iter().copied().collect();
        let rows = match self.store.due(name, now_ms(), free, busy).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(destination = name, error = %e, "cannot read the queue");
                return now + STORE_PAUSE;
            }
        };
        if rows.is_empty() {
            // Nothing due: sleep until a retry comes due, or a new message rings.
            return match self.store.next_due_after(name, now_ms()).await {
                Ok(Some(next)) => at(next).min(now + IDLE_POLL),
                _ => now + IDLE_POLL,
            };
        }
        for row in rows {
            if let Err(wait) = st.pacer.take(Instant::now()) {
                return Instant::now() + wait;
            }
            st.busy.insert(row.id);
            let (me, failures, id) = (self.clone(), st.failures, row.id);
            let handle = st
                .in_flight
                .spawn(async move { me.attempt(row, failures).await });
            st.tasks.insert(handle.id(), id);
        }
        Instant::now() + IDLE_POLL
    }

    /// Takes in the end of one attempt.
    fn settle(
        &self,
        st: &mut State,
        done: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
    ) {
        let name = self.destination.name();
        let (task, done) = match done {
            Ok((task, done)) => (task, done),
            Err(e) => {
                // A bug, not a verdict: leave the delivery pending for a later attempt.
                let id = st.tasks.remove(&e.id());
                tracing::error!(destination = name, delivery = ?id, error = %e, "an attempt panicked");
                if let Some(id) = id {
                    st.busy.remove(&id);
                }
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
                st.paused_until = Instant::now() + STORE_PAUSE;
                None
            }
        };
        match verdict {
            Some(Verdict::Sent) => st.failures = 0,
            Some(Verdict::Retry { pause_until, .. }) => {
                st.failures += 1;
                st.paused_until = st.paused_until.max(at(pause_until));
            }
            _ => {}
        }
    }

    /// Hands the store the results it refused before; true when none is left.
    async fn flush_records(&self, st: &mut State) -> bool {
        let ids: Vec<i64> = st.unrecorded.keys().copied().collect();
        for id in ids {
            let record = st.unrecorded[&id].clone();
            let stored = self
                .store
                .finish_attempt(
                    id,
                    record.started_at,
                    record.attempt,
                    record.body,
                    record.resolution,
                )
                .await;
            match stored {
                Ok(()) => {
                    st.unrecorded.remove(&id);
                    st.busy.remove(&id);
                }
                Err(e) => {
                    tracing::error!(destination = self.destination.name(), delivery = id, error = %e, "still cannot record an attempt");
                    return false;
                }
            }
        }
        true
    }

    /// The body to send: the stored rendering, or a fresh one (of all a digest's events).
    async fn body(&self, row: &Delivery) -> Result<Result<Rendered, String>, StoreError> {
        let kind = self.destination.kind().template_kind();
        if let Some(text) = &row.body {
            return Ok(match kind {
                TemplateKind::Console => Ok((Body::Text(text.clone()), None, None)),
                _ => serde_json::from_str(text)
                    .map(|v| (Body::Json(v), None, None))
                    .map_err(|e| format!("stored body is not JSON: {e}")),
            });
        }
        let stored = if row.grouped {
            // Closed first, through the writer, so no event joins after its events are read.
            self.store.close_group(row.id, now_ms()).await?;
            self.store.group_events(row.id).await?
        } else {
            match &row.event {
                Some(event) => vec![event.clone()],
                None => vec![self.store.event(row.event_id).await?],
            }
        };
        let events: Result<Vec<Event>, String> = stored.into_iter().map(to_event).collect();
        Ok(events.and_then(|mut events| {
            let now = Utc::now();
            let renderer = self.renderer.load();
            let (_, body) = if row.grouped {
                renderer.render_group(kind, row.template.as_deref(), &events, now)
            } else {
                let data = TemplateData::new(&events[0], now);
                renderer.render_event(kind, row.template.as_deref(), &events[0], &data)
            }
            .map_err(|e| e.to_string())?;
            let text = match &body {
                Body::Text(t) => t.clone(),
                Body::Json(v) => v.to_string(),
            };
            let single = (!row.grouped).then(|| events.remove(0));
            Ok((body, Some(text), single))
        }))
    }

    /// For a job event to a Slack app: the build's message, rendered from the job's copy of the
    /// build as the build event its state stands for, in case the build has no message yet.
    /// `parsed` is the job event when rendering its body already parsed it.
    async fn parent(
        &self,
        row: &Delivery,
        parsed: Option<Event>,
    ) -> Result<Option<(String, Body)>, StoreError> {
        let wanted = self.destination.kind() == DestinationKind::SlackApp
            && row.event_name.starts_with("job.")
            && row.thread_key.is_some()
            && !row.grouped;
        if !wanted {
            return Ok(None);
        }
        let job = match parsed {
            Some(job) => job,
            None => {
                let stored = match &row.event {
                    Some(event) => event.clone(),
                    None => self.store.event(row.event_id).await?,
                };
                let Ok(job) = to_event(stored) else {
                    return Ok(None);
                };
                job
            }
        };
        let name =
            crate::deliver::build_event_for(job.lookup("build.state").and_then(|v| v.as_str()));
        let build = Event::from_value(name, job.payload().clone(), job.received_at());
        let data = TemplateData::new(&build, Utc::now());
        Ok(self
            .renderer
            .load()
            .render_event(TemplateKind::Slack, None, &build, &data)
            .ok()
            .map(|(_, body)| (name.to_string(), body)))
    }

    async fn attempt(&self, row: Delivery, failures_before: u32) -> Done {
        let started_at = now_ms();
        let started = Instant::now();
        let dest = self.destination.name();
        let (outcome, rendered) = match self.body(&row).await {
            Err(e) => return Done::StoreTrouble(e),
            Ok(Ok((body, rendered, parsed))) => {
                let parent = match self.parent(&row, parsed).await {
                    Ok(parent) => parent,
                    Err(e) => return Done::StoreTrouble(e),
                };
                let context = Context {
                    event_id: row.event_id,
                    event_name: row.event_name.clone(),
                    thread_key: row.thread_key.clone(),
                    parent,
                };
                (self.destination.send(&body, &context).await, rendered)
            }
            Ok(Err(reason)) => {
                // A template that fails fails again: keep the message, never send it broken.
                let reason = format!("cannot render: {reason}");
                tracing::error!(delivery = row.id, destination = dest, route = %row.route, reason = %reason, "dead letter");
                self.metrics
                    .deliveries
                    .with_label_values(&[dest, "dead"])
                    .inc();
                let attempt = Attempt {
                    at: now_ms(),
                    status: None,
                    outcome: "render".into(),
                    reason: Some(reason.clone()),
                    latency_ms: started.elapsed().as_millis() as u64,
                };
                let record = Record {
                    started_at,
                    attempt,
                    body: None,
                    resolution: Resolution::Dead,
                };
                return self.record(row.id, record, Verdict::Dead { reason }).await;
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        let attempts = row.attempts + 1;
        let failures = failures_before + u32::from(matches!(outcome, Outcome::Retry { .. }));
        let jitter = 0.5 + fastrand::f64() / 2.0;
        let verdict = self
            .policy
            .decide(&outcome, attempts, row.age_from, now, failures, jitter);
        let (resolution, reason) = match &verdict {
            Verdict::Sent => (Resolution::Sent, None),
            Verdict::Retry { at, .. } => (Resolution::RetryAt(*at), failure_reason(&outcome)),
            Verdict::Dead { reason } => (Resolution::Dead, Some(reason.clone())),
        };
        let status = outcome.status();
        let status_code = status.map(i64::from).unwrap_or(-1);
        self.count(&outcome, &verdict, latency_ms, now - row.created_at);
        match &verdict {
            Verdict::Sent => tracing::info!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status_code, latency_ms, attempts, age_ms = now - row.created_at, "delivered"
            ),
            Verdict::Retry { at, .. } => tracing::warn!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status_code, latency_ms, attempts, retry_in_ms = at - now,
                reason = reason.as_deref().unwrap_or(""), "delivery failed, will retry"
            ),
            Verdict::Dead { reason } => tracing::error!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status_code, latency_ms, attempts, reason = %reason, "dead letter"
            ),
        }
        let attempt = Attempt {
            at: now,
            status,
            outcome: outcome.label().into(),
            reason,
            latency_ms,
        };
        let record = Record {
            started_at,
            attempt,
            // Kept for retries and for `deliveries show`, which shows what was sent.
            body: rendered,
            resolution,
        };
        self.record(row.id, record, verdict).await
    }

    fn count(&self, outcome: &Outcome, verdict: &Verdict, latency_ms: u64, age_ms: i64) {
        let dest = self.destination.name();
        let m = &self.metrics;
        let label = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::Retry {
                status: Some(429), ..
            } => "rate_limited",
            Outcome::Retry { .. } => "retried",
            Outcome::Permanent { .. } => "permanent",
        };
        m.deliveries.with_label_values(&[dest, label]).inc();
        if matches!(verdict, Verdict::Dead { .. }) {
            m.deliveries.with_label_values(&[dest, "dead"]).inc();
        }
        m.attempt_seconds
            .with_label_values(&[dest])
            .observe(latency_ms as f64 / 1000.0);
        if matches!(verdict, Verdict::Sent) {
            m.end_to_end_seconds
                .with_label_values(&[dest])
                .observe(age_ms.max(0) as f64 / 1000.0);
        }
    }

    async fn record(&self, id: i64, record: Record, verdict: Verdict) -> Done {
        let stored = self
            .store
            .finish_attempt(
                id,
                record.started_at,
                record.attempt.clone(),
                record.body.clone(),
                record.resolution.clone(),
            )
            .await;
        match stored {
            Ok(()) => Done::Recorded(verdict),
            Err(e) => {
                // Kept in memory and retried; the message is not picked again meanwhile. If the
                // process dies first, it stays pending in the store and is sent again: at least once.
                tracing::error!(delivery = id, error = %e, "cannot record an attempt");
                Done::Unrecorded(verdict, record)
            }
        }
    }
}

/// A stored event, parsed again (it was verified when it arrived), with its transition.
fn to_event(stored: crate::store::StoredEvent) -> Result<Event, String> {
    let received = Utc
        .timestamp_millis_opt(stored.received_at)
        .single()
        .unwrap_or_else(Utc::now);
    let mut event = Event::parse(
        &VerifiedBody::trusted(stored.body),
        Some(&stored.name),
        received,
    )
    .map_err(|e| e.to_string())?;
    event.set_transition(stored.transition);
    Ok(event)
}

fn failure_reason(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Sent { .. } => None,
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => Some(reason.clone()),
    }
}
