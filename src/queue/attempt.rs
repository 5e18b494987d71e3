//! One attempt at one delivery: render it (from the stored body, the stored event, or all of a
//! digest's events), send it under the destination's hold, judge the answer and record it.

use super::cluster::Hold;
use super::policy::{RetryPolicy, Verdict};
use crate::deliver::{Context, Destination, DestinationKind, Outcome};
use crate::event::{Event, VerifiedBody};
use crate::metrics::Metrics;
use crate::render::{Body, Renderer, TemplateData, TemplateKind};
use crate::store::{Attempt, Delivery, Resolution, Store, StoreError, StoredEvent, now_ms};
use arc_swap::ArcSwap;
use chrono::{TimeZone, Utc};
use std::sync::Arc;
use std::time::Instant;

/// An attempt's result that the store has not taken yet.
#[derive(Debug, Clone)]
pub struct Record {
    /// The delivery's version (`updated_at`) when it was picked for the attempt.
    pub picked: i64,
    /// What happened.
    pub attempt: Attempt,
    /// The body rendered for it, to keep.
    pub body: Option<String>,
    /// What follows for the delivery.
    pub resolution: Resolution,
}

/// How one attempt ended, for the worker loop.
pub enum Done {
    /// Attempted and recorded.
    Recorded(Verdict),
    /// Attempted, but the store refused the record: keep it and try the store again.
    Unrecorded(Verdict, Record),
    /// Not attempted: the store could not be read. The delivery is untouched.
    StoreTrouble(StoreError),
    /// Not attempted: the destination's hold ran out first. The delivery is untouched, for
    /// whoever holds the destination next.
    NotHeld,
    /// Not attempted: a held event joined the digest since it was picked; it is due later.
    NotDue,
}

/// A message ready to send.
struct Rendered {
    body: Body,
    /// The text to keep, when it was rendered now (a stored body is kept already).
    text: Option<String>,
    /// The event it was rendered from, when one was parsed for it.
    event: Option<Event>,
}

/// Everything an attempt needs, for one hold on one destination.
#[derive(Debug)]
pub struct Sender {
    /// Where messages go (built afresh for each hold, so nothing another replica changed
    /// meanwhile is remembered).
    pub destination: Arc<dyn Destination>,
    /// The hold the messages are sent under.
    pub hold: Arc<Hold>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Templates, swapped whole on reload.
    pub renderer: Arc<ArcSwap<Renderer>>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
}

impl Sender {
    /// The body to send: the stored rendering, or a fresh one (of all a digest's events);
    /// `None` when the digest is not due after all.
    async fn body(&self, row: &Delivery) -> Result<Option<Result<Rendered, String>>, StoreError> {
        let kind = self.destination.kind().template_kind();
        if let Some(text) = &row.body {
            let body = match kind {
                TemplateKind::Console => Ok(Body::Text(text.clone())),
                _ => serde_json::from_str(text)
                    .map(Body::Json)
                    .map_err(|e| format!("stored body is not JSON: {e}")),
            };
            return Ok(Some(body.map(|body| Rendered {
                body,
                text: None,
                event: None,
            })));
        }
        let stored = if row.grouped {
            // Closed first, through the store, so no event joins after its events are read.
            if !self.store.close_group(row.id, now_ms()).await? {
                return Ok(None);
            }
            self.store.group_events(row.id).await?
        } else {
            match &row.event {
                Some(event) => vec![event.clone()],
                None => vec![self.store.event(row.event_id).await?],
            }
        };
        let events: Result<Vec<Event>, String> = stored.into_iter().map(to_event).collect();
        Ok(Some(events.and_then(|mut events| {
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
            Ok(Rendered {
                body,
                text: Some(text),
                event: (!row.grouped).then(|| events.remove(0)),
            })
        })))
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

    /// Renders, sends and records one delivery; `failures_before` is how many attempts in a
    /// row have failed at this destination.
    pub async fn attempt(&self, row: Delivery, failures_before: u32) -> Done {
        let picked = row.updated_at;
        let started = Instant::now();
        let dest = self.destination.name();
        let (outcome, rendered) = match self.body(&row).await {
            Err(e) => return Done::StoreTrouble(e),
            Ok(None) => return Done::NotDue,
            Ok(Some(Ok(rendered))) => {
                let parent = match self.parent(&row, rendered.event).await {
                    Ok(parent) => parent,
                    Err(e) => return Done::StoreTrouble(e),
                };
                let context = Context {
                    event_id: row.event_id,
                    event_name: row.event_name.clone(),
                    thread_key: row.thread_key.clone(),
                    parent,
                };
                // The last moment to find that another replica may have the destination now.
                if !self.hold.valid() {
                    return Done::NotHeld;
                }
                (
                    self.destination.send(&rendered.body, &context).await,
                    rendered.text,
                )
            }
            Ok(Some(Err(reason))) => {
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
                    picked,
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
            picked,
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
        match self.store_record(id, &record).await {
            Ok(_) => Done::Recorded(verdict),
            Err(e) => {
                // Kept in memory and retried; the message is not picked again meanwhile. If the
                // process dies first, it stays pending in the store and is sent again: at least once.
                tracing::error!(delivery = id, error = %e, "cannot record an attempt");
                Done::Unrecorded(verdict, record)
            }
        }
    }

    /// Hands one record to the store; says so when the delivery had changed meanwhile.
    pub async fn store_record(&self, id: i64, record: &Record) -> Result<(), StoreError> {
        let applied = self
            .store
            .finish_attempt(
                id,
                record.picked,
                record.attempt.clone(),
                record.body.clone(),
                record.resolution.clone(),
            )
            .await?;
        if !applied {
            tracing::info!(
                delivery = id,
                destination = self.destination.name(),
                "the delivery changed during the attempt (re-queued, or finished by the replica \
                 that holds the destination now): the attempt is in its history, its state stands"
            );
        }
        Ok(())
    }
}

/// A stored event, parsed again (it was verified when it arrived), with its transition.
fn to_event(stored: StoredEvent) -> Result<Event, String> {
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
