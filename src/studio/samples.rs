//! The events the studio renders: the built-in samples, the fixtures in `--samples DIR`, and
//! the last events in the store, each with a label (`build.finished · web-app #1842 · failed`)
//! and with secrets removed as rendering removes them.

use crate::event::Event;
use crate::render::{samples, without_secrets};
use crate::store::StoredEvent;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// One sample event.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// `builtin:NAME`, `file:NAME` or `store:ID`.
    pub id: String,
    /// The event name.
    pub event: String,
    /// What the picker shows.
    pub label: String,
    /// `builtin`, `file` or `store`.
    pub origin: &'static str,
    /// The payload, secrets removed.
    #[serde(skip)]
    pub payload: Value,
    /// When it was received (now, for built-in and file samples).
    #[serde(skip)]
    pub received_at: DateTime<Utc>,
}

impl Sample {
    fn new(id: String, origin: &'static str, event: Event) -> Self {
        Self {
            id,
            label: label(&event),
            event: event.name().to_string(),
            origin,
            payload: without_secrets(event.payload()),
            received_at: event.received_at(),
        }
    }

    /// The sample as an event.
    pub fn to_event(&self) -> Event {
        Event::from_value(&self.event, self.payload.clone(), self.received_at)
    }
}

/// `event · pipeline #number · state`, or `event · agent`, whatever the event has.
pub fn label(event: &Event) -> String {
    let mut parts = vec![event.name().to_string()];
    match (event.pipeline_slug(), event.build_number()) {
        (Some(p), Some(n)) => parts.push(format!("{p} #{n}")),
        (Some(p), None) => parts.push(p.to_string()),
        _ => {}
    }
    if let Some(agent) = event.lookup("agent.name").and_then(Value::as_str) {
        parts.push(agent.to_string());
    }
    if let Some(state) = event.state().filter(|s| !s.is_empty()) {
        parts.push(state.to_string());
    }
    parts.join(" · ")
}

/// The built-in samples.
pub fn builtin() -> Vec<Sample> {
    samples::events()
        .into_iter()
        .map(|(name, event)| Sample::new(format!("builtin:{name}"), "builtin", event))
        .collect()
}

/// The `*.json` files of `dir` that hold an event; the others are named in the second list.
pub fn from_dir(dir: &Path) -> (Vec<Sample>, Vec<String>) {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    let mut paths: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(e) => return (found, vec![format!("{}: {e}", dir.display())]),
    };
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let payload: Option<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match payload.and_then(|p| Some((p["event"].as_str()?.to_string(), p))) {
            Some((event, payload)) => found.push(Sample::new(
                format!("file:{name}"),
                "file",
                Event::from_value(&event, payload, Utc::now()),
            )),
            None => skipped.push(format!(
                "{}: not a JSON webhook body with an event field",
                path.display()
            )),
        }
    }
    (found, skipped)
}

/// Stored events as samples (events whose body no longer parses are left out).
pub fn from_store(events: Vec<StoredEvent>) -> Vec<Sample> {
    events
        .into_iter()
        .filter_map(|stored| {
            let payload: Value = serde_json::from_slice(&stored.body).ok()?;
            let received = Utc
                .timestamp_millis_opt(stored.received_at)
                .single()
                .unwrap_or_else(Utc::now);
            let mut event = Event::from_value(&stored.name, payload, received);
            event.set_transition(stored.transition);
            Some(Sample::new(format!("store:{}", stored.id), "store", event))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_what_the_event_is_about() {
        let all = builtin();
        let finished = all
            .iter()
            .find(|s| s.id == "builtin:build.finished")
            .unwrap();
        assert_eq!(finished.label, "build.finished · web-app #1842 · failed");
        let agent = all.iter().find(|s| s.id == "builtin:agent.lost").unwrap();
        assert!(agent.label.starts_with("agent.lost · "), "{}", agent.label);
        assert!(
            all.iter()
                .all(|s| !s.payload.to_string().contains("webhook_url")),
            "secrets removed"
        );
    }
}
