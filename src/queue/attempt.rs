//! One attempt at one delivery: make it ready ([`super::compose`]), send it under the
//! destination's hold, judge the answer and record it.

use super::Settings;
use super::cluster::Hold;
use super::compose::{ComposeError, compose};
use super::policy::{RetryPolicy, Verdict};
use super::recorder::Recorder;
use crate::destination::{Context, Destination, Outcome, webhook_id};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::store::{Attempt, Delivery, Finished, Resolution, Store, StoreError, now_ms};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Instant;

/// How one attempt ended, for the worker loop.
pub enum Done {
    /// Attempted and recorded.
    Recorded(Verdict),
    /// Attempted, but the store refused the record: keep it and try the store again.
    Unrecorded(Verdict, Finished),
    /// Not attempted: the store could not be read. The delivery is untouched.
    StoreTrouble(StoreError),
    /// Not attempted: the destination's hold ran out first. The delivery is untouched, for
    /// whoever holds the destination next.
    NotHeld,
    /// Not attempted: a held event joined the digest since it was picked; it is due later.
    NotDue,
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
    /// Where attempts are recorded, in batches.
    pub recorder: Recorder,
    /// Templates, swapped whole on reload.
    pub renderer: Arc<ArcSwap<Renderer>>,
    /// Queue-wide settings (the buttons each route shows), swapped whole on reload.
    pub settings: Arc<ArcSwap<Settings>>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Where attempts are counted.
    pub metrics: Arc<Metrics>,
}

impl Sender {
    /// Renders, sends and records one delivery (with its event when intake gave it);
    /// `failures_before` is how many attempts in a row have failed at this destination.
    pub async fn attempt(
        &self,
        row: Delivery,
        event: Option<Arc<Event>>,
        failures_before: u32,
    ) -> Done {
        let picked = row.updated_at;
        let started = Instant::now();
        let dest = self.destination.name();
        let renderer = self.renderer.load_full();
        let settings = self.settings.load_full();
        let ready = compose(
            self.store.as_ref(),
            &renderer,
            &settings.buttons,
            self.destination.as_ref(),
            &self.metrics.event_reads,
            &row,
            event,
        )
        .await;
        let (outcome, rendered) = match ready {
            Err(ComposeError::Store(e)) => return Done::StoreTrouble(e),
            Ok(None) => return Done::NotDue,
            Ok(Some(message)) => {
                let context = Context {
                    event_id: row.event_id,
                    event_name: row.event_name.clone(),
                    message_id: webhook_id(row.id, row.created_at),
                    thread_key: row.thread_key.clone(),
                    parent: message.parent,
                };
                // The last moment to find that another replica may have the destination now.
                if !self.hold.valid() {
                    return Done::NotHeld;
                }
                (
                    self.destination.send(&message.body, &context).await,
                    message.text,
                )
            }
            Err(ComposeError::Render(reason)) => {
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
                let record = Finished {
                    delivery_id: row.id,
                    picked,
                    attempt,
                    body: None,
                    resolution: Resolution::Dead,
                };
                return self.record(record, Verdict::Dead { reason }).await;
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
        let record = Finished {
            delivery_id: row.id,
            picked,
            attempt,
            // Kept for retries and for `deliveries show`, which shows what was sent.
            body: rendered,
            resolution,
        };
        self.record(record, verdict).await
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

    async fn record(&self, record: Finished, verdict: Verdict) -> Done {
        let id = record.delivery_id;
        match self.store_record(&record).await {
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
    pub async fn store_record(&self, record: &Finished) -> Result<(), StoreError> {
        let applied = self.recorder.record(record.clone()).await?;
        if !applied {
            tracing::info!(
                delivery = record.delivery_id,
                destination = self.destination.name(),
                "the delivery changed during the attempt (re-queued, or finished by the replica \
                 that holds the destination now): the attempt is in its history, its state stands"
            );
        }
        Ok(())
    }
}

fn failure_reason(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Sent { .. } => None,
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => Some(reason.clone()),
    }
}
