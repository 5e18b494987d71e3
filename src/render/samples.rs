//! Built-in sample events: one realistic body per Buildkite event type, used by `check` to
//! render every template and by `send-test`.

use crate::event::Event;
use chrono::Utc;

macro_rules! samples {
    ($($file:literal),* $(,)?) => {
        [$(($file, include_str!(concat!("../../tests/fixtures/buildkite/", $file, ".json")))),*]
    };
}

/// `(name, body)` of every sample; the name is the fixture's file name.
pub const SAMPLES: [(&str, &str); 25] = samples!(
    "ping",
    "build.scheduled",
    "build.running",
    "build.failing",
    "build.finished",
    "build.finished.passed",
    "build.finished.blocked",
    "build.finished.canceled",
    "build.finished.pull-request",
    "build.skipped",
    "job.scheduled",
    "job.started",
    "job.finished",
    "job.finished.real",
    "job.activated",
    "job.promised_exit_status",
    "agent.connected",
    "agent.lost",
    "agent.disconnected",
    "agent.stopping",
    "agent.stopped",
    "agent.blocked",
    "cluster_token.registration_blocked",
    "package.created",
    "workflow.alarm",
);

/// Every sample as an event, with its fixture name.
pub fn events() -> Vec<(&'static str, Event)> {
    SAMPLES
        .iter()
        .map(|(name, body)| {
            let payload: serde_json::Value =
                serde_json::from_str(body).expect("built-in samples are valid JSON");
            let event = payload["event"]
                .as_str()
                .expect("samples name their event")
                .to_string();
            (*name, Event::from_value(&event, payload, Utc::now()))
        })
        .collect()
}

/// The sample named `name`.
pub fn event(name: &str) -> Option<Event> {
    events()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| e)
}
