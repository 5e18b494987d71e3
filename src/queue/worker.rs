//! One destination's delivery worker: takes due messages oldest first, paces them, keeps at
//! most `concurrency` in flight, and records each attempt's verdict.
//!
//! Destinations never share a worker, so a slow or throttled one delays no other.

use super::pacer::Pacer;
use super::policy::{RetryPolicy, Verdict};
use crate::deliver::{Destination, Outcome};
use crate::event::{Event, VerifiedBody};
use crate::render::{Body, Renderer, TemplateData, TemplateKind};
use crate::store::{Attempt, Delivery, Resolution, Store, now_ms};
use chrono::{TimeZone, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often an idle worker looks for work it was not told about (a `deliveries retry` from
/// the command line, for instance).
const IDLE_POLL: Duration = Duration::from_secs(1);

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
    /// Templates.
    pub renderer: Arc<Renderer>,
    /// Retry rules.
    pub policy: RetryPolicy,
    /// Rung when new messages for this destination are stored.
    pub notify: Arc<Notify>,
    /// Cancelled at shutdown: take no new messages.
    pub cancel: CancellationToken,
}

struct Done {
    id: i64,
    verdict: Option<Verdict>,
}

fn at(ms: i64) -> Instant {
    let delta = ms - now_ms();
    if delta <= 0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(delta as u64)
    }
}

impl Worker {
    /// Runs until cancelled, then waits for the attempts in flight.
    pub async fn run(self) {
        let me = Arc::new(self);
        let name = me.destination.name().to_string();
        let mut pacer = Pacer::new(me.limits.rate, me.limits.burst, Instant::now());
        let mut in_flight: JoinSet<Done> = JoinSet::new();
        let mut flying: HashSet<i64> = HashSet::new();
        let mut paused_until = Instant::now();
        let mut failures: u32 = 0;
        loop {
            if me.cancel.is_cancelled() {
                break;
            }
            let mut wake = Instant::now() + IDLE_POLL;
            let free = me.limits.concurrency.saturating_sub(in_flight.len());
            if paused_until > Instant::now() {
                wake = paused_until;
            } else if free > 0 {
                match me.store.due(&name, now_ms(), free + flying.len()).await {
                    Ok(rows) => {
                        let rows: Vec<Delivery> = rows
                            .into_iter()
                            .filter(|r| !flying.contains(&r.id))
                            .take(free)
                            .collect();
                        if rows.is_empty() {
                            // Nothing due: sleep until a retry comes due, or a new message rings.
                            if let Ok(Some(next)) = me.store.next_due_after(&name, now_ms()).await {
                                wake = wake.min(at(next));
                            }
                        }
                        for row in rows {
                            if let Err(wait) = pacer.take(Instant::now()) {
                                wake = Instant::now() + wait;
                                break;
                            }
                            flying.insert(row.id);
                            let me = me.clone();
                            in_flight.spawn(async move { me.attempt(row, failures).await });
                        }
                    }
                    Err(e) => {
                        tracing::error!(destination = %name, error = %e, "cannot read the queue")
                    }
                }
            }
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok(done) = done {
                        flying.remove(&done.id);
                        match done.verdict {
                            Some(Verdict::Sent) => failures = 0,
                            Some(Verdict::Retry { pause_until, .. }) => {
                                failures += 1;
                                paused_until = paused_until.max(at(pause_until));
                            }
                            _ => {}
                        }
                    }
                }
                () = me.notify.notified() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
                () = me.cancel.cancelled() => break,
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    async fn body(&self, row: &Delivery) -> Result<(Body, Option<String>), String> {
        let kind = self.destination.kind().template_kind();
        if let Some(text) = &row.body {
            let body = match kind {
                TemplateKind::Console => Body::Text(text.clone()),
                _ => Body::Json(
                    serde_json::from_str(text)
                        .map_err(|e| format!("stored body is not JSON: {e}"))?,
                ),
            };
            return Ok((body, None));
        }
        let (name, bytes, received_at) = self
            .store
            .event(row.event_id)
            .await
            .map_err(|e| e.to_string())?;
        let received = Utc
            .timestamp_millis_opt(received_at)
            .single()
            .unwrap_or_else(Utc::now);
        let event = Event::parse(&VerifiedBody::trusted(bytes), Some(&name), received)
            .map_err(|e| e.to_string())?;
        let data = TemplateData::new(&event, Utc::now());
        let (_, body) = self
            .renderer
            .render_event(kind, row.template.as_deref(), &event, &data)
            .map_err(|e| e.to_string())?;
        let text = match &body {
            Body::Text(t) => t.clone(),
            Body::Json(v) => v.to_string(),
        };
        Ok((body, Some(text)))
    }

    async fn attempt(&self, row: Delivery, failures_before: u32) -> Done {
        let started = Instant::now();
        let dest = self.destination.name();
        let (outcome, rendered) = match self.body(&row).await {
            Ok((body, rendered)) => (self.destination.send(&body).await, rendered),
            Err(reason) => {
                // A template that fails fails again: keep the message, never send it broken.
                let reason = format!("cannot render: {reason}");
                tracing::error!(delivery = row.id, destination = dest, route = %row.route, reason = %reason, "dead letter");
                let attempt = Attempt {
                    at: now_ms(),
                    status: None,
                    outcome: "render".into(),
                    reason: Some(reason),
                    latency_ms: started.elapsed().as_millis() as u64,
                };
                self.record(&row, attempt, None, Resolution::Dead).await;
                return Done {
                    id: row.id,
                    verdict: None,
                };
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        let attempts = row.attempts + 1;
        let failures = if matches!(outcome, Outcome::Retry { .. }) {
            failures_before + 1
        } else {
            failures_before
        };
        let verdict = self.policy.decide(
            &outcome,
            attempts,
            row.age_from,
            now,
            failures,
            0.5 + fastrand::f64() / 2.0,
        );
        let (resolution, reason) = match &verdict {
            Verdict::Sent => (Resolution::Sent, None),
            Verdict::Retry { at, .. } => (Resolution::RetryAt(*at), failure_reason(&outcome)),
            Verdict::Dead { reason } => (Resolution::Dead, Some(reason.clone())),
        };
        let status = outcome.status();
        let age_ms = now - row.created_at;
        match &verdict {
            Verdict::Sent => tracing::info!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status.map(i64::from).unwrap_or(-1), latency_ms, attempts, age_ms, "delivered"
            ),
            Verdict::Retry { at, .. } => tracing::warn!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status.map(i64::from).unwrap_or(-1), latency_ms, attempts,
                retry_in_ms = at - now, reason = reason.as_deref().unwrap_or(""), "delivery failed, will retry"
            ),
            Verdict::Dead { reason } => tracing::error!(
                delivery = row.id, event = %row.event_name, route = %row.route, destination = dest,
                status = status.map(i64::from).unwrap_or(-1), latency_ms, attempts, reason = %reason, "dead letter"
            ),
        }
        let attempt = Attempt {
            at: now,
            status,
            outcome: outcome.label().into(),
            reason,
            latency_ms,
        };
        self.record(&row, attempt, rendered, resolution).await;
        Done {
            id: row.id,
            verdict: Some(verdict),
        }
    }

    async fn record(
        &self,
        row: &Delivery,
        attempt: Attempt,
        body: Option<String>,
        resolution: Resolution,
    ) {
        if let Err(e) = self
            .store
            .finish_attempt(row.id, attempt, body, resolution)
            .await
        {
            // The message stays pending in the store and will be tried again: at least once.
            tracing::error!(delivery = row.id, error = %e, "cannot record an attempt");
        }
    }
}

fn failure_reason(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Sent { .. } => None,
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => Some(reason.clone()),
    }
}
