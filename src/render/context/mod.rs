//! The data a template sees: the payload as Buildkite sent it (minus secrets), plus `kb`, the
//! derived fields every message needs (title, state look, short commit, durations, links).
//!
//! Computed each time a message is rendered (each delivery renders its own).

mod facts;

pub use facts::{
    AgentFacts, BuildFacts, ClusterTokenFacts, Field, JobFacts, Subject, TestFacts, first_line,
};

use super::look::{Look, look_of};
use crate::event::Event;
use crate::transition::{Transition, TransitionKind};
use chrono::{DateTime, Utc};
use facts::{
    agent_facts, build_facts, cluster_token_facts, fields, job_facts, subject, test_facts, text,
    url,
};
use serde::Serialize;
use serde_json::Value;

/// Everything derived from an event for templates; serialised under the `kb` key.
#[derive(Debug, Clone, Serialize)]
pub struct Derived {
    /// The event name, e.g. `build.finished`.
    pub event: String,
    /// The part before the first dot: `build`, `job`, `agent`…
    pub family: String,
    /// The part after the first dot: `finished`, `lost`… (empty for `ping`).
    pub action: String,
    /// The subject's state (`blocked` for a blocked build); empty when the event has none.
    pub state: String,
    /// Emoji for the message's look.
    pub emoji: &'static str,
    /// Slack attachment colour.
    pub color: &'static str,
    /// Adaptive Card text colour.
    pub teams_color: &'static str,
    /// Adaptive Card container style.
    pub teams_style: &'static str,
    /// What happened, as a verb phrase: `failed`, `is failing`, `was lost`…
    pub verb: String,
    /// For a finished build: `broken`, `fixed`, `still_failing` or `passing`.
    pub transition: Option<&'static str>,
    /// For a finished build: the previous finished build's state on its branch.
    pub previous_state: Option<String>,
    /// For a finished build: failed builds in a row on its branch, this one included.
    pub consecutive_failures: Option<u32>,
    /// The first line of every message: emoji, subject, verb.
    pub title: String,
    /// The main link (build, job, agent, test…), http(s) only and safe inside chat markup.
    pub url: Option<String>,
    /// The label for the main link's button: `View build`, `View job`…
    pub url_label: &'static str,
    /// The pipeline's name (or slug).
    pub pipeline: Option<String>,
    /// The organization's name, when the payload carries it.
    pub org: Option<String>,
    /// Who set up the webhook (`sender.name`; not who triggered the build).
    pub sender: Option<String>,
    /// When kitebridge received the event, `YYYY-MM-DD HH:MM:SS UTC`.
    pub received_at: String,
    /// The same in RFC 3339, with milliseconds: `2026-12-01T09:14:03.120Z`.
    pub received_rfc3339: String,
    /// The stored event's id (ids grow with arrival); null where nothing is stored (`render`).
    pub event_id: Option<i64>,
    /// Build facts, for build and job events.
    pub build: Option<BuildFacts>,
    /// Job facts, for job events.
    pub job: Option<JobFacts>,
    /// Agent facts, for agent events.
    pub agent: Option<AgentFacts>,
    /// Test facts, for Test Engine `workflow.alarm`.
    pub test: Option<TestFacts>,
    /// Cluster token facts, for `agent.blocked` and `cluster_token.*`.
    pub cluster_token: Option<ClusterTokenFacts>,
    /// The main object of any event: its name and link.
    pub subject: Subject,
    /// A compact listing of the payload's scalar fields (for unknown events).
    pub fields: Vec<Field>,
}

/// The payload with secrets removed and `kb` added: what templates render.
pub fn template_data(event: &Event, now: DateTime<Utc>) -> Value {
    with_derived(event.payload().clone(), derive(event, now))
}

/// [`template_data`] for an event no longer needed: its payload is moved, not copied.
pub fn template_data_from(event: Event, now: DateTime<Utc>) -> Value {
    let derived = derive(&event, now);
    with_derived(event.into_payload(), derived)
}

/// `payload` redacted, with `derived` added as `kb`.
fn with_derived(mut payload: Value, derived: Derived) -> Value {
    redact(&mut payload);
    if let Value::Object(map) = &mut payload {
        map.insert(
            "kb".into(),
            serde_json::to_value(derived).expect("derived data serialises"),
        );
    }
    payload
}

/// The payload as templates see it: without `webhook_url`, at any depth.
pub fn without_secrets(payload: &Value) -> Value {
    let mut copy = payload.clone();
    redact(&mut copy);
    copy
}

/// Removes every `webhook_url` (Buildkite's secret build-trigger URL) at any depth.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("webhook_url");
            map.values_mut().for_each(redact);
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn build_verb(state: &str) -> String {
    match state {
        "passed" | "failed" => state.into(),
        "failing" => "is failing".into(),
        "canceled" => "was canceled".into(),
        "canceling" => "is canceling".into(),
        "blocked" => "is blocked".into(),
        "scheduled" => "is scheduled".into(),
        "running" => "is running".into(),
        "skipped" => "was skipped".into(),
        "not_run" => "did not run".into(),
        "creating" => "is being created".into(),
        "" => "changed".into(),
        other => other.replace('_', " "),
    }
}

fn job_verb(event: &Event, job: &JobFacts) -> Happened {
    let state = job.state.clone().unwrap_or_default();
    let exit = |s: Option<i64>| s.map(|s| format!(" with exit {s}")).unwrap_or_default();
    match event.name() {
        "job.activated" => {
            let by = job
                .unblocked_by
                .as_deref()
                .map(|n| format!(" by {n}"))
                .unwrap_or_default();
            Happened::new("unblocked", format!("was unblocked{by}"))
        }
        "job.promised_exit_status" => {
            let key = if job.promised_exit_status.unwrap_or(0) == 0 {
                "running"
            } else {
                "promised_failure"
            };
            let status = job
                .promised_exit_status
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            Happened::new(key, format!("will exit{status}"))
        }
        _ if job.soft_failed => Happened::new(
            "soft_failed",
            format!("soft failed{}", exit(job.exit_status)),
        ),
        _ => {
            let verb = match state.as_str() {
                "passed" => "passed".into(),
                "failed" => format!("failed{}", exit(job.exit_status)),
                "timed_out" => "timed out".into(),
                "canceled" => "was canceled".into(),
                "expired" => "expired".into(),
                "broken" | "skipped" | "not_run" => "did not run".into(),
                "scheduled" | "waiting" | "assigned" | "accepted" => "is scheduled".into(),
                "running" => "started".into(),
                "" => event
                    .name()
                    .rsplit('.')
                    .next()
                    .unwrap_or("changed")
                    .replace('_', " "),
                other => other.replace('_', " "),
            };
            Happened::new(state, verb)
        }
    }
}

fn agent_verb(action: &str) -> Happened {
    match action {
        "connected" => Happened::new("connected", "connected"),
        "disconnected" => Happened::new("disconnected", "disconnected"),
        "lost" => Happened::new("lost", "was lost"),
        "stopping" => Happened::new("stopping", "is stopping"),
        "stopped" => Happened::new("stopped", "stopped"),
        "blocked" => Happened::new("never_connected", "was blocked"),
        other => Happened::new("", other.replace('_', " ")),
    }
}

/// What happened to an event's subject: the key of its look (emoji and colours) and the verb
/// phrase of its title.
struct Happened {
    look: String,
    verb: String,
}

impl Happened {
    fn new(look: impl Into<String>, verb: impl Into<String>) -> Self {
        Self {
            look: look.into(),
            verb: verb.into(),
        }
    }
}

/// An event's first line, before its look is applied, and its main link.
struct Headline {
    happened: Happened,
    /// What the title is about: `Web App #1842`, `Agent ci-7`…
    subject: String,
    url: Option<String>,
    url_label: &'static str,
}

/// Computes `kb` for an event.
pub fn derive(event: &Event, now: DateTime<Utc>) -> Derived {
    let p = event.payload();
    let family = event.family().to_string();
    let action = event
        .name()
        .split_once('.')
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    let pipeline = text(p, "pipeline.name").or_else(|| text(p, "pipeline.slug"));
    let state = event.state().unwrap_or_default().to_string();
    let mut subject = subject(p, &family);
    let build = matches!(family.as_str(), "build" | "job").then(|| build_facts(p, now));
    let job = (family == "job").then(|| job_facts(p, now));
    let agent = (family == "agent").then(|| agent_facts(p));
    let test = (event.name() == "workflow.alarm").then(|| test_facts(p));
    let cluster_token = (family == "cluster_token" || event.name() == "agent.blocked")
        .then(|| cluster_token_facts(p));
    let build_ref = || {
        let number = build
            .as_ref()
            .and_then(|b| b.number)
            .map(|n| format!(" #{n}"))
            .unwrap_or_default();
        format!("{}{number}", pipeline.as_deref().unwrap_or("pipeline"))
    };

    let headline = match (family.as_str(), &build, &job, &agent, &test) {
        ("build", Some(b), _, _, _) => {
            let happened = transition_verb(event.transition())
                .unwrap_or_else(|| Happened::new(state.clone(), build_verb(&state)));
            Headline {
                happened,
                subject: build_ref(),
                url: b.url.clone(),
                url_label: "View build",
            }
        }
        ("job", Some(_), Some(j), _, _) => {
            let happened = job_verb(event, j);
            let subject = format!("{}: {}", build_ref(), j.label);
            // Block steps have no page of their own; their link falls back to the build.
            let label = if url(p, "job.web_url").is_some() {
                "View job"
            } else {
                "View build"
            };
            Headline {
                happened,
                subject,
                url: j.url.clone(),
                url_label: label,
            }
        }
        ("agent", _, _, Some(a), _) => {
            let mut happened = agent_verb(&action);
            if let Some(ip) = a.blocked_ip.as_deref().filter(|_| action == "blocked") {
                happened.verb = format!("{} from {ip}", happened.verb);
            }
            Headline {
                happened,
                subject: format!("Agent {}", a.name),
                url: a.url.clone(),
                url_label: "View agent",
            }
        }
        (_, _, _, _, Some(t)) => Headline {
            happened: Happened::new("alarm", ""),
            subject: format!("Test Engine alarm: {}", t.name),
            url: t.url.clone(),
            url_label: "View test",
        },
        ("ping", ..) => {
            let org = text(p, "organization.name").unwrap_or_else(|| "unknown".into());
            Headline {
                happened: Happened::new("ping", ""),
                subject: format!("kitebridge connected to Buildkite org {org}"),
                url: url(p, "organization.web_url"),
                url_label: "Open Buildkite",
            }
        }
        ("cluster_token", ..) => {
            let ip = text(p, "blocked_ip").unwrap_or_else(|| "an unknown address".into());
            Headline {
                happened: Happened::new("registration_blocked", ""),
                subject: format!("Agent registration blocked from {ip}"),
                url: None,
                url_label: "View cluster",
            }
        }
        _ => {
            let name = subject
                .name
                .clone()
                .map(|n| format!(": {n}"))
                .unwrap_or_default();
            let key = if action == "created" {
                "created".to_string()
            } else {
                state.clone()
            };
            Headline {
                happened: Happened::new(key, ""),
                subject: format!("{}{name}", event.name()),
                url: subject.url.clone(),
                url_label: "Open in Buildkite",
            }
        }
    };
    let Headline {
        happened: Happened {
            look: look_key,
            verb,
        },
        subject: title_subject,
        url,
        url_label,
    } = headline;
    let Look {
        emoji,
        color,
        teams_color,
        teams_style,
    } = look_of(&look_key);
    let transition = event.transition();
    let title = if verb.is_empty() {
        format!("{emoji} {title_subject}")
    } else {
        format!("{emoji} {title_subject} {verb}")
    };
    if subject.url.is_none() {
        subject.url = url.clone();
    }
    let fields = fields(p, &family);
    Derived {
        transition: transition.map(|t| t.kind.as_str()),
        previous_state: transition.and_then(|t| t.previous_state.clone()),
        consecutive_failures: transition.map(|t| t.consecutive_failures),
        event: event.name().to_string(),
        family,
        action,
        state,
        emoji,
        color,
        teams_color,
        teams_style,
        verb,
        title,
        url,
        url_label,
        pipeline,
        org: text(p, "organization.name"),
        sender: text(p, "sender.name"),
        received_at: event
            .received_at()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        received_rfc3339: event
            .received_at()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event_id: event.id(),
        build,
        job,
        agent,
        test,
        cluster_token,
        subject,
        fields,
    }
}

/// The look and verb of a finished build that has a transition to tell.
fn transition_verb(t: Option<&Transition>) -> Option<Happened> {
    let t = t?;
    Some(match t.kind {
        TransitionKind::Fixed => Happened::new("fixed", "fixed"),
        TransitionKind::StillFailing if t.consecutive_failures > 1 => Happened::new(
            "failed",
            format!("is still failing ({} in a row)", t.consecutive_failures),
        ),
        TransitionKind::StillFailing => Happened::new("failed", "failed again"),
        TransitionKind::Broken => Happened::new("failed", "failed"),
        TransitionKind::Passing => Happened::new("passed", "passed"),
    })
}

/// A digest's first line: the first event's emoji (as its own message shows it), how many
/// events, which, and the build they share if they all share one.
pub fn group_title(events: &[Event], emoji: &str) -> String {
    let Some(first) = events.first() else {
        return String::new();
    };
    let name = if events.iter().all(|e| e.name() == first.name()) {
        first.name()
    } else {
        "events"
    };
    let build = |e: &Event| (e.pipeline_slug().map(str::to_string), e.build_number());
    let shared = events.iter().all(|e| build(e) == build(first));
    let pipeline = text(first.payload(), "pipeline.name")
        .or_else(|| first.pipeline_slug().map(str::to_string));
    let suffix = match (shared, pipeline, first.build_number()) {
        (true, Some(p), Some(n)) => format!(" · {p} #{n}"),
        (true, Some(p), None) => format!(" · {p}"),
        _ => String::new(),
    };
    let count = events.len();
    if name == "events" {
        format!("{emoji} {count} events{suffix}")
    } else {
        format!("{emoji} {count} × {name}{suffix}")
    }
}

#[cfg(test)]
mod tests;
