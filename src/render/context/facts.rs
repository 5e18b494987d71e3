//! The per-family facts derived from a payload: each a pure function of the JSON.

use crate::event::lookup;
use crate::event::time::{between, format_duration, parse_timestamp};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// Derived build facts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BuildFacts {
    /// Build number.
    pub number: Option<u64>,
    /// Branch.
    pub branch: Option<String>,
    /// Full commit.
    pub commit: Option<String>,
    /// The first 7 characters of the commit.
    pub commit_short: Option<String>,
    /// The first line of the commit message, or `(no commit message)`.
    pub message_title: String,
    /// The author's name, else the creator's, else `unknown`.
    pub author: String,
    /// The author's (else creator's) email, for mention mapping.
    pub author_email: Option<String>,
    /// How long the build took, when finished.
    pub duration: Option<String>,
    /// How long it has been running, when started and not finished.
    pub running_for: Option<String>,
    /// `PR #4211 → main` for pull-request builds.
    pub pull_request: Option<String>,
    /// For a blocked build: the block steps it waits on.
    pub blocked_on: Option<String>,
    /// The build page.
    pub url: Option<String>,
}

/// Derived job facts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JobFacts {
    /// The step label (emoji shortcodes such as `:rspec:` left as text).
    pub label: String,
    /// The job's state.
    pub state: Option<String>,
    /// Exit status, once known.
    pub exit_status: Option<i64>,
    /// True when the failure is allowed (`soft_fail`).
    pub soft_failed: bool,
    /// The agent that ran it.
    pub agent: Option<String>,
    /// How long it ran, when finished.
    pub duration: Option<String>,
    /// Who unblocked a block step (`job.activated`).
    pub unblocked_by: Option<String>,
    /// The exit status a running job has already promised (`job.promised_exit_status`).
    pub promised_exit_status: Option<i64>,
    /// Why it was promised.
    pub promised_reason: Option<String>,
    /// The job's page.
    pub url: Option<String>,
}

/// Derived agent facts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AgentFacts {
    /// Agent name.
    pub name: String,
    /// Host name.
    pub hostname: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// Tags, `key=value, key=value`.
    pub tags: Option<String>,
    /// Agent version.
    pub version: Option<String>,
    /// The agent's IP address.
    pub ip: Option<String>,
    /// The address that was refused (`agent.blocked`).
    pub blocked_ip: Option<String>,
    /// The agent's page.
    pub url: Option<String>,
}

/// Derived Test Engine facts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TestFacts {
    /// The test's full name.
    pub name: String,
    /// File and line.
    pub location: Option<String>,
    /// The alarm type, in words (`transition count`).
    pub alarm: Option<String>,
    /// The test's page.
    pub url: Option<String>,
    /// The workflow's page.
    pub workflow_url: Option<String>,
}

/// Derived cluster token facts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterTokenFacts {
    /// The address that was refused.
    pub blocked_ip: Option<String>,
    /// The addresses the token allows.
    pub allowed: Option<String>,
    /// The token's description.
    pub description: Option<String>,
}

/// The main object of an event.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Subject {
    /// Its name.
    pub name: Option<String>,
    /// Its page.
    pub url: Option<String>,
}

/// One entry of the compact field listing.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// Dot path.
    pub name: String,
    /// Value as text.
    pub value: String,
}

pub(super) fn text(v: &Value, path: &str) -> Option<String> {
    match lookup(v, path)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn time(v: &Value, path: &str) -> Option<DateTime<Utc>> {
    lookup(v, path)?.as_str().and_then(parse_timestamp)
}

/// An http(s) link that cannot break out of chat markup: characters that end a Slack link or
/// a JSON string are percent-encoded. Anything else is dropped.
pub fn safe_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || raw.len() > 2_000 {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '<' | '>' | '|' | '"' | '\\' | '`' | ' ' | '{' | '}' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

pub(super) fn url(v: &Value, path: &str) -> Option<String> {
    lookup(v, path)?.as_str().and_then(safe_url)
}

/// The first non-blank line, trimmed.
pub fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// How long something took, or has been running so far: at most one of the two is known.
#[derive(Debug, Default)]
pub(super) struct Elapsed {
    /// Start to finish, once finished.
    pub duration: Option<String>,
    /// Start to now, while still running.
    pub running_for: Option<String>,
}

pub(super) fn elapsed(v: &Value, from: &str, to: &str, now: DateTime<Utc>) -> Elapsed {
    let start = time(v, from);
    match (start, time(v, to)) {
        (Some(s), Some(f)) => Elapsed {
            duration: between(s, f).map(format_duration),
            running_for: None,
        },
        (Some(s), None) => Elapsed {
            duration: None,
            running_for: between(s, now).map(format_duration),
        },
        _ => Elapsed::default(),
    }
}

pub(super) fn build_facts(p: &Value, now: DateTime<Utc>) -> BuildFacts {
    let commit = text(p, "build.commit");
    let Elapsed {
        duration,
        running_for,
    } = elapsed(p, "build.started_at", "build.finished_at", now);
    let message = lookup(p, "build.message")
        .and_then(Value::as_str)
        .unwrap_or("");
    let pull_request =
        text(p, "build.pull_request.id").map(|id| match text(p, "build.pull_request.base") {
            Some(base) => format!("PR #{id} → {base}"),
            None => format!("PR #{id}"),
        });
    let blocked_on = (lookup(p, "build.blocked") == Some(&Value::Bool(true))).then(|| {
        let steps: Vec<String> = lookup(p, "pipeline.steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|s| {
                matches!(
                    s.get("type").and_then(Value::as_str),
                    Some("manual" | "block" | "input")
                )
            })
            .filter_map(|s| text(s, "label").or_else(|| text(s, "name")))
            .collect();
        if steps.is_empty() {
            "a block step".to_string()
        } else {
            steps.join(", ")
        }
    });
    BuildFacts {
        number: lookup(p, "build.number").and_then(Value::as_u64),
        branch: text(p, "build.branch"),
        commit_short: commit.as_ref().map(|c| c.chars().take(7).collect()),
        commit,
        message_title: match first_line(message) {
            "" => "(no commit message)".to_string(),
            line => line.to_string(),
        },
        author: text(p, "build.author.name")
            .or_else(|| text(p, "build.creator.name"))
            .or_else(|| text(p, "build.author.username"))
            .unwrap_or_else(|| "unknown".into()),
        author_email: text(p, "build.author.email").or_else(|| text(p, "build.creator.email")),
        duration,
        running_for,
        pull_request,
        blocked_on,
        url: url(p, "build.web_url"),
    }
}

pub(super) fn job_facts(p: &Value, now: DateTime<Utc>) -> JobFacts {
    let duration = elapsed(p, "job.started_at", "job.finished_at", now).duration;
    JobFacts {
        label: text(p, "job.label")
            .or_else(|| text(p, "job.name"))
            .or_else(|| text(p, "job.step_key"))
            .unwrap_or_else(|| "job".into()),
        state: text(p, "job.state"),
        exit_status: lookup(p, "job.exit_status").and_then(Value::as_i64),
        soft_failed: lookup(p, "job.soft_failed") == Some(&Value::Bool(true)),
        agent: text(p, "job.agent.name"),
        duration,
        unblocked_by: text(p, "job.unblocked_by.name"),
        promised_exit_status: lookup(p, "job.promised_exit_status").and_then(Value::as_i64),
        promised_reason: text(p, "promised_exit_status_reason"),
        url: url(p, "job.web_url").or_else(|| url(p, "build.web_url")),
    }
}

pub(super) fn agent_facts(p: &Value) -> AgentFacts {
    let tags = lookup(p, "agent.meta_data")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        });
    let queue = text(p, "agent.queue").or_else(|| {
        lookup(p, "agent.meta_data")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find_map(|t| t.strip_prefix("queue=").map(str::to_string))
    });
    AgentFacts {
        name: text(p, "agent.name").unwrap_or_else(|| "unknown".into()),
        hostname: text(p, "agent.hostname"),
        queue,
        tags: tags.filter(|t| !t.is_empty()),
        version: text(p, "agent.version"),
        ip: text(p, "agent.ip_address"),
        blocked_ip: text(p, "blocked_ip"),
        url: url(p, "agent.web_url"),
    }
}

pub(super) fn cluster_token_facts(p: &Value) -> ClusterTokenFacts {
    ClusterTokenFacts {
        blocked_ip: text(p, "blocked_ip"),
        allowed: text(p, "cluster_token.allowed_ip_addresses"),
        description: text(p, "cluster_token.description"),
    }
}

pub(super) fn test_facts(p: &Value) -> TestFacts {
    TestFacts {
        name: text(p, "subject.test_full_name").unwrap_or_else(|| "unknown test".into()),
        location: text(p, "subject.test_location"),
        alarm: text(p, "workflow_event.type").map(|t| t.replace('_', " ")),
        url: url(p, "subject.test_url"),
        workflow_url: url(p, "workflow_url"),
    }
}

/// A payload's top-level entries in the order the fallbacks below read them: the object the
/// event is named for first (`widget` for `widget.exploded`: Buildkite names each event for
/// the object it is about), then the others by key. Payloads are not kept in the order they
/// came in (a map that keeps it cost a third of every parse), so the order is one that says
/// something.
/// Nothing for a payload that is not an object.
fn main_first<'a>(p: &'a Value, family: &'a str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    let map = p.as_object();
    map.and_then(|m| m.get_key_value(family)).into_iter().chain(
        map.into_iter()
            .flatten()
            .filter(move |(k, _)| k.as_str() != family),
    )
}

/// The first top-level object (other than `sender`) with a name or a page, the one the event
/// is named for first.
pub(super) fn subject(p: &Value, family: &str) -> Subject {
    main_first(p, family)
        .filter(|(k, v)| k.as_str() != "sender" && v.is_object())
        .map(|(key, obj)| Subject {
            name: text(obj, "name").or_else(|| text(obj, "slug")).or_else(|| {
                (obj.get("web_url").is_some() || obj.get("id").is_some()).then(|| key.clone())
            }),
            url: url(obj, "web_url").or_else(|| url(obj, "url")),
        })
        .find(|s| s.name.is_some() || s.url.is_some())
        .unwrap_or_default()
}

/// Scalar fields up to two levels deep, skipping ids, URLs and anything secret-looking: those
/// of the object the event is named for first, then the rest by key.
pub(super) fn fields(p: &Value, family: &str) -> Vec<Field> {
    fn skip(key: &str) -> bool {
        key == "event"
            || key == "sender"
            || key == "id"
            || key.ends_with("_id")
            || key.ends_with("url")
            || ["token", "secret", "password"]
                .iter()
                .any(|s| key.contains(s))
    }
    fn walk<'a>(
        prefix: &str,
        entries: impl Iterator<Item = (&'a String, &'a Value)>,
        depth: usize,
        out: &mut Vec<Field>,
    ) {
        for (key, child) in entries {
            if out.len() >= 10 || skip(key) {
                continue;
            }
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match child {
                Value::String(s) if !s.is_empty() => out.push(Field {
                    name,
                    value: s.chars().take(200).collect(),
                }),
                Value::Number(_) | Value::Bool(_) => out.push(Field {
                    name,
                    value: child.to_string(),
                }),
                Value::Object(map) if depth < 2 => walk(&name, map.iter(), depth + 1, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", main_first(p, family), 0, &mut out);
    out
}
