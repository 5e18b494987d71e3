//! From an accepted event to sent messages: plans one delivery per (route, destination),
//! renders each with the destination's templates, and sends it in the background.
//!
//! Rendering and sending happen off the request path, so Buildkite's answer never waits on
//! Slack or Teams. In-flight sends are tracked so shutdown can wait for them.

use crate::deliver::{Destination, Outcome};
use crate::event::Event;
use crate::render::{Body, RenderError, Renderer, TemplateData};
use crate::routing::Route;
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// One message to send: an event through one route to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The route's name.
    pub route: String,
    /// The destination's name.
    pub destination: String,
    /// The route's template override.
    pub template: Option<String>,
}

/// The (route, destination) pairs for the matched routes, skipping disabled destinations.
pub fn plan(routes: &[&Route], enabled: impl Fn(&str) -> bool) -> Vec<Planned> {
    routes
        .iter()
        .flat_map(|route| {
            route.to.iter().filter(|d| enabled(d)).map(|d| Planned {
                route: route.name.clone(),
                destination: d.clone(),
                template: route.template.clone(),
            })
        })
        .collect()
}

/// Renders `planned` for `destination`.
pub fn render_for(
    renderer: &Renderer,
    destination: &dyn Destination,
    planned: &Planned,
    event: &Event,
    data: &TemplateData,
) -> Result<(String, Body), RenderError> {
    renderer.render_event(
        destination.kind().template_kind(),
        planned.template.as_deref(),
        event,
        data,
    )
}

/// Renders and sends planned deliveries in background tasks.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    renderer: Arc<Renderer>,
    destinations: Arc<HashMap<String, Arc<dyn Destination>>>,
    tracker: TaskTracker,
}

impl Dispatcher {
    /// A dispatcher over the enabled destinations.
    pub fn new(renderer: Arc<Renderer>, destinations: Vec<Arc<dyn Destination>>) -> Self {
        Self {
            renderer,
            destinations: Arc::new(
                destinations
                    .into_iter()
                    .map(|d| (d.name().to_string(), d))
                    .collect(),
            ),
            tracker: TaskTracker::new(),
        }
    }

    /// Whether a destination is enabled.
    pub fn has_destination(&self, name: &str) -> bool {
        self.destinations.contains_key(name)
    }

    /// Starts delivering `planned` for `event`; returns at once.
    pub fn dispatch(&self, event: Event, planned: Vec<Planned>) {
        if planned.is_empty() {
            return;
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let event = Arc::new(event);
            let data = Arc::new(TemplateData::new(&event, Utc::now()));
            for p in planned {
                let Some(dest) = this.destinations.get(&p.destination).cloned() else {
                    continue;
                };
                let (renderer, event, data) = (this.renderer.clone(), event.clone(), data.clone());
                this.tracker.spawn(async move {
                    deliver(&renderer, dest.as_ref(), &p, &event, &data).await;
                });
            }
        });
    }

    /// Waits up to `deadline` for in-flight deliveries; true when all finished.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

async fn deliver(
    renderer: &Renderer,
    dest: &dyn Destination,
    p: &Planned,
    event: &Event,
    data: &TemplateData,
) {
    let (template, body) = match render_for(renderer, dest, p, event, data) {
        Ok(rendered) => rendered,
        Err(e) => {
            tracing::error!(
                event = event.name(),
                route = %p.route,
                destination = %p.destination,
                reason = %e,
                "message not sent: template failed"
            );
            return;
        }
    };
    let started = Instant::now();
    let outcome = dest.send(&body).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let status = outcome.status().map(i64::from).unwrap_or(-1);
    match &outcome {
        Outcome::Sent { .. } => tracing::info!(
            event = event.name(),
            route = %p.route,
            destination = %p.destination,
            template,
            status,
            latency_ms,
            "delivered"
        ),
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => tracing::warn!(
            event = event.name(),
            route = %p.route,
            destination = %p.destination,
            template,
            status,
            latency_ms,
            outcome = outcome.label(),
            reason = %reason,
            "delivery failed"
        ),
    }
}
