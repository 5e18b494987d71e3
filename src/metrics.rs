//! Prometheus metrics, served at `GET /metrics` in the Prometheus text format.
//!
//! One registry per service (no global state), so several services in one process (tests)
//! count separately. Label values are bounded: event names outside Buildkite's known set are
//! counted as `other`, so a stream of invented names cannot grow the metrics without end.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets from 1 ms to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The service's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by event and verdict (accepted, duplicate, unauthorised, malformed,
    /// forbidden, too_large, timeout, not_found, unavailable, overloaded).
    pub events: IntCounterVec,
    /// Routes matched, by route.
    pub routes: IntCounterVec,
    /// Delivery attempts by destination and outcome (sent, retried, rate_limited, permanent),
    /// and messages given up on (dead).
    pub deliveries: IntCounterVec,
    /// How long one attempt took, by destination.
    pub attempt_seconds: HistogramVec,
    /// From the event's arrival to the chat service accepting the message, by destination.
    pub end_to_end_seconds: HistogramVec,
    /// Pending deliveries, by destination (refreshed at each scrape).
    pub queue_depth: IntGaugeVec,
    /// How long the longest-waiting deliverable message has waited, by destination (refreshed
    /// at each scrape).
    pub oldest_pending_seconds: GaugeVec,
    /// Dead letters kept, by destination (refreshed at each scrape).
    pub dead_letters: IntGaugeVec,
    /// Config reloads by result (applied, rejected).
    pub reloads: IntCounterVec,
    /// 1 for each destination this replica sends now, 0 for those another replica sends.
    pub destination_held: IntGaugeVec,
    /// Replicas sharing the store, as last seen (1 for a store of its own).
    pub replicas: IntGauge,
    /// Where the delivery workers found each single message's event: `memory` (handed over
    /// by intake) or `store` (its stored body parsed again).
    pub event_reads: IntCounterVec,
    /// Looks at the queue in the store by the delivery workers, by destination: a worker that
    /// keeps up takes new messages from intake instead.
    pub queue_reads: IntCounterVec,
    /// Button presses by action and outcome (done, denied, duplicate, expired, forged,
    /// failed, unavailable, bad_signature).
    pub actions: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric, and `kitebridge_build_info` set.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &["destination"]).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let metrics = Self {
            events: counter(
                "kitebridge_events_received_total",
                "Webhook requests received, by event and verdict.",
                &["event", "verdict"],
            ),
            actions: counter(
                "kitebridge_actions_total",
                "Button presses, by action and outcome.",
                &["action", "outcome"],
            ),
            event_reads: counter(
                "kitebridge_event_reads_total",
                "Events read to render a message, by source: memory (handed over by intake) or store (the stored body parsed again).",
                &["source"],
            ),
            queue_reads: counter(
                "kitebridge_queue_reads_total",
                "Looks at the stored queue by the delivery workers, by destination (new messages come from intake in memory).",
                &["destination"],
            ),
            routes: counter(
                "kitebridge_routes_matched_total",
                "Routes matched, by route.",
                &["route"],
            ),
            deliveries: counter(
                "kitebridge_deliveries_total",
                "Delivery attempts by outcome (sent, retried, rate_limited, permanent), and messages given up on (dead).",
                &["destination", "outcome"],
            ),
            attempt_seconds: histogram(
                "kitebridge_delivery_duration_seconds",
                "How long one delivery attempt took.",
            ),
            end_to_end_seconds: histogram(
                "kitebridge_end_to_end_seconds",
                "From an event's arrival to the chat service accepting its message.",
            ),
            queue_depth: int_gauge(
                "kitebridge_queue_depth",
                "Pending deliveries.",
                &["destination"],
            ),
            oldest_pending_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "kitebridge_queue_oldest_pending_age_seconds",
                        "How long the longest-waiting deliverable message has waited (messages held by a mute window or an open digest do not count).",
                    ),
                    &["destination"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            dead_letters: int_gauge(
                "kitebridge_dead_letters",
                "Dead letters kept in the store.",
                &["destination"],
            ),
            reloads: counter(
                "kitebridge_config_reloads_total",
                "Config reloads, by result (applied, rejected).",
                &["result"],
            ),
            destination_held: int_gauge(
                "kitebridge_destination_held",
                "1 while this replica holds the destination's lease and sends its messages; 0 while another replica does.",
                &["destination"],
            ),
            replicas: {
                let g = IntGauge::new(
                    "kitebridge_replicas",
                    "Replicas sharing the store, as last seen by this one.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            registry: registry.clone(),
        };
        int_gauge(
            "kitebridge_build_info",
            "Build information; always 1.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        metrics
    }

    /// The label for an event name.
    pub fn event_label(name: &str) -> &'static str {
        crate::event::NAMES
            .iter()
            .copied()
            .find(|known| *known == name)
            .unwrap_or("other")
    }

    /// Counts one refused request, under the event its unauthenticated `X-Buildkite-Event`
    /// header claimed (only ever one of Buildkite's names, or `other`), or `unknown`.
    pub fn refused(&self, claimed: Option<&str>, verdict: &str) {
        let label = claimed.map_or("unknown", Self::event_label);
        self.events.with_label_values(&[label, verdict]).inc();
    }

    /// Counts one webhook request.
    pub fn event(&self, name: &str, verdict: &str) {
        self.events
            .with_label_values(&[Self::event_label(name), verdict])
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_bounded_labels() {
        let m = Metrics::new();
        m.event("build.finished", "accepted");
        m.event("made.up.by.someone", "accepted");
        m.deliveries.with_label_values(&["ci-slack", "sent"]).inc();
        let text = m.encode();
        assert!(text.contains(
            "kitebridge_events_received_total{event=\"build.finished\",verdict=\"accepted\"} 1"
        ));
        assert!(
            text.contains(
                "kitebridge_events_received_total{event=\"other\",verdict=\"accepted\"} 1"
            )
        );
        assert!(
            text.contains(
                "kitebridge_deliveries_total{destination=\"ci-slack\",outcome=\"sent\"} 1"
            )
        );
        assert!(text.contains(&format!(
            "kitebridge_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
