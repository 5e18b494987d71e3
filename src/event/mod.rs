//! A Buildkite event that has passed verification, and the facts routing and templates need.
//!
//! An [`Event`] can only be built from a [`VerifiedBody`], which the ingress hands out after the
//! token or signature check on the raw bytes, so unverified data cannot reach the router.

pub mod time;
mod transition;

pub use transition::{Transition, TransitionKind};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use thiserror::Error;

/// Raw request bytes whose origin has been checked (or that need no check).
#[derive(Debug, Clone)]
pub struct VerifiedBody(Bytes);

impl VerifiedBody {
    /// Marks bytes as authentic. The ingress calls this after its checks; the CLI and tests call
    /// it for local files and built-in samples, which need none.
    pub fn trusted(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The bytes themselves.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// Why a verified body is still not an event (answered with 400).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON but not an object")]
    NotObject,
    /// Neither the body nor the header names the event.
    #[error(
        "no event name: the body has no \"event\" field and there is no X-Buildkite-Event header"
    )]
    NoEventName,
    /// The event name is not a short printable token.
    #[error("event name is not a short printable string")]
    BadEventName,
    /// `X-Buildkite-Event` and the body's `event` differ.
    #[error("X-Buildkite-Event header {header:?} disagrees with the body's event {body:?}")]
    HeaderMismatch {
        /// The header value.
        header: String,
        /// The body's `event` field.
        body: String,
    },
}

/// The longest event name accepted; Buildkite's are under 40 characters.
const MAX_EVENT_NAME: usize = 100;

/// A parsed, authentic webhook event.
#[derive(Debug, Clone)]
pub struct Event {
    name: String,
    payload: Value,
    received_at: DateTime<Utc>,
    transition: Option<Transition>,
    /// The stored event's id, once it is stored.
    id: Option<i64>,
}

impl Event {
    /// Parses a verified body. `header_event` is the `X-Buildkite-Event` header, if any; when
    /// both it and the body's `event` field are present they must agree.
    pub fn parse(
        body: &VerifiedBody,
        header_event: Option<&str>,
        received_at: DateTime<Utc>,
    ) -> Result<Self, EventError> {
        let payload: Value =
            serde_json::from_slice(body.bytes()).map_err(|e| EventError::NotJson(e.to_string()))?;
        if !payload.is_object() {
            return Err(EventError::NotObject);
        }
        let body_event = match payload.get("event") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(EventError::BadEventName),
        };
        let name = match (header_event, body_event) {
            (Some(h), Some(b)) if h != b => {
                return Err(EventError::HeaderMismatch {
                    header: truncate_for_message(h),
                    body: truncate_for_message(b),
                });
            }
            (_, Some(name)) | (Some(name), None) => name,
            (None, None) => return Err(EventError::NoEventName),
        };
        if !is_event_name(name) {
            return Err(EventError::BadEventName);
        }
        Ok(Self {
            name: name.to_string(),
            payload,
            received_at,
            transition: None,
            id: None,
        })
    }

    /// Builds an event from an already-parsed payload (samples, tests).
    pub fn from_value(name: &str, payload: Value, received_at: DateTime<Utc>) -> Self {
        let payload = if payload.is_object() {
            payload
        } else {
            Value::Object(Map::new())
        };
        Self {
            name: name.to_string(),
            payload,
            received_at,
            transition: None,
            id: None,
        }
    }

    /// The stored event's id (ids grow with arrival); `None` before it is stored.
    pub fn id(&self) -> Option<i64> {
        self.id
    }

    /// Attaches the id the store gave it.
    pub fn set_id(&mut self, id: i64) {
        self.id = Some(id);
    }

    /// What this finished build did to its branch, once the store has worked it out.
    pub fn transition(&self) -> Option<&Transition> {
        self.transition.as_ref()
    }

    /// Attaches the transition the store worked out.
    pub fn set_transition(&mut self, transition: Option<Transition>) {
        self.transition = transition;
    }

    /// The event name, e.g. `build.finished`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The part before the first dot: `build`, `job`, `agent`, `ping`, `workflow`…
    pub fn family(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }

    /// The payload as Buildkite sent it (always a JSON object).
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The parsed body, given up.
    pub fn into_payload(self) -> Value {
        self.payload
    }

    /// When kitebridge received it.
    pub fn received_at(&self) -> DateTime<Utc> {
        self.received_at
    }

    /// Sets when it was received (the store keeps milliseconds: an event read back from the
    /// store and one kept in memory must render the same).
    pub fn set_received_at(&mut self, at: DateTime<Utc>) {
        self.received_at = at;
    }

    /// The value at a dot path such as `build.author.email` or `pipeline.steps.0.label`.
    pub fn lookup(&self, path: &str) -> Option<&Value> {
        lookup(&self.payload, path)
    }

    fn str_at(&self, path: &str) -> Option<&str> {
        self.lookup(path).and_then(Value::as_str)
    }

    /// The pipeline slug, for events that belong to a pipeline.
    pub fn pipeline_slug(&self) -> Option<&str> {
        self.str_at("pipeline.slug")
    }

    /// The build's branch, for build and job events.
    pub fn branch(&self) -> Option<&str> {
        self.str_at("build.branch")
    }

    /// The build number, for build and job events.
    pub fn build_number(&self) -> Option<u64> {
        self.lookup("build.number").and_then(Value::as_u64)
    }

    /// True for a build that finished waiting on a block step (`blocked: true`).
    pub fn is_blocked_build(&self) -> bool {
        self.family() == "build" && self.lookup("build.blocked") == Some(&Value::Bool(true))
    }

    /// The state of the event's subject: the build's (`blocked` for a blocked build, whose
    /// Buildkite state is `passed`), the job's, or the agent's connection state.
    pub fn state(&self) -> Option<&str> {
        match self.family() {
            "build" if self.is_blocked_build() => Some("blocked"),
            "build" => self.str_at("build.state"),
            "job" => self.str_at("job.state"),
            "agent" => self.str_at("agent.connection_state"),
            _ => None,
        }
    }
}

/// Every event name Buildkite sends webhooks for.
pub const NAMES: &[&str] = &[
    "ping",
    "build.scheduled",
    "build.running",
    "build.failing",
    "build.finished",
    "build.skipped",
    "job.scheduled",
    "job.started",
    "job.finished",
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
];

/// Every state [`Event::state`] can give, over all families: Buildkite's build and job states,
/// agents' connection states, and our `blocked` for a build that finished blocked.
pub const STATES: &[&str] = &[
    // Builds.
    "creating",
    "scheduled",
    "running",
    "failing",
    "passed",
    "failed",
    "blocked",
    "canceling",
    "canceled",
    "skipped",
    "not_run",
    // Jobs (and `blocked`, `running`… above).
    "pending",
    "waiting",
    "waiting_failed",
    "blocked_failed",
    "unblocked",
    "unblocked_failed",
    "limiting",
    "limited",
    "assigned",
    "accepted",
    "timing_out",
    "timed_out",
    "broken",
    "expired",
    "platform_limiting",
    "platform_limited",
    // Agents.
    "connected",
    "disconnected",
    "lost",
    "stopping",
    "stopped",
    "never_connected",
];

/// Follows a dot path through objects (by key) and arrays (by index).
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, seg| match v {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn is_event_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_EVENT_NAME && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Keeps error messages one short line even when the input is hostile.
fn truncate_for_message(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &str, header: Option<&str>) -> Result<Event, EventError> {
        Event::parse(&VerifiedBody::trusted(body.to_string()), header, Utc::now())
    }

    #[test]
    fn parses_name_from_body_or_header() {
        assert_eq!(parse(r#"{"event":"ping"}"#, None).unwrap().name(), "ping");
        assert_eq!(
            parse("{}", Some("build.finished")).unwrap().name(),
            "build.finished"
        );
        assert_eq!(
            parse(r#"{"event":"x.y"}"#, Some("x.y")).unwrap().family(),
            "x"
        );
    }

    #[test]
    fn rejects_bodies_that_are_not_events() {
        let cases = [
            ("", None, "not valid JSON"),
            ("[1,2]", None, "not an object"),
            ("42", None, "not an object"),
            ("{}", None, "no event name"),
            (r#"{"event":7}"#, None, "short printable"),
            (r#"{"event":""}"#, None, "short printable"),
            (r#"{"event":"a b"}"#, None, "short printable"),
            (r#"{"event":"ping"}"#, Some("build.finished"), "disagrees"),
        ];
        for (body, header, want) in cases {
            let err = parse(body, header).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn subject_state_follows_the_family_and_blocked_flag() {
        let now = Utc::now();
        let build = |blocked| json!({"build": {"state": "passed", "blocked": blocked}});
        assert_eq!(
            Event::from_value("build.finished", build(false), now).state(),
            Some("passed")
        );
        assert_eq!(
            Event::from_value("build.finished", build(true), now).state(),
            Some("blocked")
        );
        let job = json!({"job": {"state": "failed"}, "build": {"state": "failing"}});
        assert_eq!(
            Event::from_value("job.finished", job, now).state(),
            Some("failed")
        );
        let agent = json!({"agent": {"connection_state": "lost"}});
        assert_eq!(
            Event::from_value("agent.lost", agent, now).state(),
            Some("lost")
        );
        assert_eq!(Event::from_value("ping", json!({}), now).state(), None);
    }

    #[test]
    fn lookup_walks_objects_and_arrays() {
        let v = json!({"a": {"b": [{"c": 1}, {"c": 2}]}});
        assert_eq!(lookup(&v, "a.b.1.c"), Some(&json!(2)));
        assert_eq!(lookup(&v, "a.b.x"), None);
        assert_eq!(lookup(&v, "a.z"), None);
    }
}
