//! The data a template sees: the payload as Buildkite sent it (minus secrets), plus `kb`, the
//! derived fields every message needs (title, state look, short commit, durations, links).
//!
//! Computed once per event and shared by every destination it goes to.

use super::look::{Look, look_of};
use crate::event::time::{between, format_duration, parse_timestamp};
use crate::event::{Event, lookup};
use chrono::{DateTime, Utc};
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

/// The payload with secrets removed and `kb` added: what templates render.
pub fn template_data(event: &Event, now: DateTime<Utc>) -> Value {
    let mut data = event.payload().clone();
    redact(&mut data);
    let derived = derive(event, now);
    if let Value::Object(map) = &mut data {
        map.insert(
            "kb".into(),
            serde_json::to_value(derived).expect("derived data serialises"),
        );
    }
    data
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

fn text(v: &Value, path: &str) -> Option<String> {
    match lookup(v, path)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn time(v: &Value, path: &str) -> Option<DateTime<Utc>> {
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

fn url(v: &Value, path: &str) -> Option<String> {
    lookup(v, path)?.as_str().and_then(safe_url)
}

/// The first non-blank line, trimmed.
pub fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

fn elapsed(
    v: &Value,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
) -> (Option<String>, Option<String>) {
    let start = time(v, from);
    match (start, time(v, to)) {
        (Some(s), Some(f)) => (between(s, f).map(format_duration), None),
        (Some(s), None) => (None, between(s, now).map(format_duration)),
        _ => (None, None),
    }
}

fn build_facts(p: &Value, now: DateTime<Utc>) -> BuildFacts {
    let commit = text(p, "build.commit");
    let (duration, running_for) = elapsed(p, "build.started_at", "build.finished_at", now);
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

fn job_facts(p: &Value, now: DateTime<Utc>) -> JobFacts {
    let (duration, _) = elapsed(p, "job.started_at", "job.finished_at", now);
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

fn agent_facts(p: &Value) -> AgentFacts {
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

fn cluster_token_facts(p: &Value) -> ClusterTokenFacts {
    ClusterTokenFacts {
        blocked_ip: text(p, "blocked_ip"),
        allowed: text(p, "cluster_token.allowed_ip_addresses"),
        description: text(p, "cluster_token.description"),
    }
}

fn test_facts(p: &Value) -> TestFacts {
    TestFacts {
        name: text(p, "subject.test_full_name").unwrap_or_else(|| "unknown test".into()),
        location: text(p, "subject.test_location"),
        alarm: text(p, "workflow_event.type").map(|t| t.replace('_', " ")),
        url: url(p, "subject.test_url"),
        workflow_url: url(p, "workflow_url"),
    }
}

/// The first top-level object (other than `sender`) with a name or a page.
fn subject(p: &Value) -> Subject {
    let Some(map) = p.as_object() else {
        return Subject::default();
    };
    map.iter()
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

/// Scalar fields up to two levels deep, skipping ids, URLs and anything secret-looking.
fn fields(p: &Value) -> Vec<Field> {
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
    fn walk(prefix: &str, v: &Value, depth: usize, out: &mut Vec<Field>) {
        let Some(map) = v.as_object() else { return };
        for (key, child) in map {
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
                Value::Object(_) if depth < 2 => walk(&name, child, depth + 1, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", p, 0, &mut out);
    out
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

fn job_verb(event: &Event, job: &JobFacts) -> (String, String) {
    let state = job.state.clone().unwrap_or_default();
    let exit = |s: Option<i64>| s.map(|s| format!(" with exit {s}")).unwrap_or_default();
    match event.name() {
        "job.activated" => {
            let by = job
                .unblocked_by
                .as_deref()
                .map(|n| format!(" by {n}"))
                .unwrap_or_default();
            ("unblocked".into(), format!("was unblocked{by}"))
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
            (key.into(), format!("will exit{status}"))
        }
        _ if job.soft_failed => (
            "soft_failed".into(),
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
            (state, verb)
        }
    }
}

fn agent_verb(action: &str) -> (&'static str, String) {
    match action {
        "connected" => ("connected", "connected".into()),
        "disconnected" => ("disconnected", "disconnected".into()),
        "lost" => ("lost", "was lost".into()),
        "stopping" => ("stopping", "is stopping".into()),
        "stopped" => ("stopped", "stopped".into()),
        "blocked" => ("never_connected", "was blocked".into()),
        other => ("", other.replace('_', " ")),
    }
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
    let mut subject = subject(p);
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

    let (look_key, verb, title_subject, url, url_label): (
        String,
        String,
        String,
        Option<String>,
        &'static str,
    ) = match (family.as_str(), &build, &job, &agent, &test) {
        ("build", Some(b), _, _, _) => (
            state.clone(),
            build_verb(&state),
            build_ref(),
            b.url.clone(),
            "View build",
        ),
        ("job", Some(_), Some(j), _, _) => {
            let (key, verb) = job_verb(event, j);
            let subject = format!("{}: {}", build_ref(), j.label);
            // Block steps have no page of their own; their link falls back to the build.
            let label = if url(p, "job.web_url").is_some() {
                "View job"
            } else {
                "View build"
            };
            (key, verb, subject, j.url.clone(), label)
        }
        ("agent", _, _, Some(a), _) => {
            let (key, mut verb) = agent_verb(&action);
            if let Some(ip) = a.blocked_ip.as_deref().filter(|_| action == "blocked") {
                verb = format!("{verb} from {ip}");
            }
            (
                key.into(),
                verb,
                format!("Agent {}", a.name),
                a.url.clone(),
                "View agent",
            )
        }
        (_, _, _, _, Some(t)) => (
            "alarm".into(),
            String::new(),
            format!("Test Engine alarm: {}", t.name),
            t.url.clone(),
            "View test",
        ),
        ("ping", ..) => {
            let org = text(p, "organization.name").unwrap_or_else(|| "unknown".into());
            (
                "ping".into(),
                String::new(),
                format!("kitebridge connected to Buildkite org {org}"),
                url(p, "organization.web_url"),
                "Open Buildkite",
            )
        }
        ("cluster_token", ..) => {
            let ip = text(p, "blocked_ip").unwrap_or_else(|| "an unknown address".into());
            (
                "registration_blocked".into(),
                String::new(),
                format!("Agent registration blocked from {ip}"),
                None,
                "View cluster",
            )
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
            (
                key,
                String::new(),
                format!("{}{name}", event.name()),
                subject.url.clone(),
                "Open in Buildkite",
            )
        }
    };
    let Look {
        emoji,
        color,
        teams_color,
        teams_style,
    } = look_of(&look_key);
    let title = if verb.is_empty() {
        format!("{emoji} {title_subject}")
    } else {
        format!("{emoji} {title_subject} {verb}")
    };
    if subject.url.is_none() {
        subject.url = url.clone();
    }
    Derived {
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
        build,
        job,
        agent,
        test,
        cluster_token,
        subject,
        fields: fields(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Event {
        let path = format!(
            "{}/tests/fixtures/buildkite/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let payload: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let event = payload["event"].as_str().unwrap().to_string();
        Event::from_value(&event, payload, Utc::now())
    }

    fn now() -> DateTime<Utc> {
        parse_timestamp("2026-11-30T04:10:00.000Z").unwrap()
    }

    #[test]
    fn titles_follow_the_style_guide() {
        let cases = [
            ("build.finished", "❌ Web App #1842 failed"),
            ("build.finished.passed", "✅ Web App #1842 passed"),
            ("build.finished.blocked", "⏸️ infusion #302 is blocked"),
            ("build.finished.canceled", "⛔ Web App #1842 was canceled"),
            ("build.failing", "🟠 Web App #1842 is failing"),
            ("build.running", "🔄 Web App #1842 is running"),
            ("build.skipped", "⏭️ Web App #1842 was skipped"),
            (
                "job.finished",
                "❌ Web App #1842: :rspec: Checkout specs failed with exit 1",
            ),
            (
                "job.activated",
                "▶️ Web App #1842: :rocket: Deploy to production was unblocked by Maria López",
            ),
            (
                "job.promised_exit_status",
                "🟠 Web App #1842: :rspec: Checkout specs will exit 1",
            ),
            ("agent.lost", "🔴 Agent ci-agent-7f3a-1 was lost"),
            (
                "agent.blocked",
                "🚫 Agent ci-agent-7f3a-1 was blocked from 202.188.43.20",
            ),
            (
                "cluster_token.registration_blocked",
                "🚫 Agent registration blocked from 202.188.43.20",
            ),
            ("ping", "🔌 kitebridge connected to Buildkite org ACME Inc"),
            (
                "workflow.alarm",
                "🚨 Test Engine alarm: Checkout applies discount codes",
            ),
            ("package.created", "📦 package.created: web-app"),
        ];
        for (file, want) in cases {
            assert_eq!(derive(&fixture(file), now()).title, want, "{file}");
        }
    }

    #[test]
    fn build_facts_cover_commit_author_duration_and_pull_requests() {
        let kb = derive(&fixture("build.finished.pull-request"), now());
        let b = kb.build.unwrap();
        assert_eq!(b.commit_short.as_deref(), Some("9f3c1e7"));
        assert_eq!(
            b.message_title,
            "Retry payment mock before asserting totals"
        );
        assert_eq!(b.author, "Maria López");
        assert_eq!(b.duration.as_deref(), Some("8m 42s"));
        assert_eq!(b.pull_request.as_deref(), Some("PR #4211 → main"));
        assert_eq!(kb.color, "#a30200");

        let blocked = derive(&fixture("build.finished.blocked"), now())
            .build
            .unwrap();
        assert_eq!(blocked.author, "[redacted]", "falls back to the creator");
        assert_eq!(blocked.blocked_on.as_deref(), Some("Run this CI job"));
        assert_eq!(blocked.duration, None, "never started");

        let running = derive(&fixture("build.running"), now()).build.unwrap();
        assert_eq!(running.running_for.as_deref(), Some("11m 51s"));
    }

    #[test]
    fn author_falls_back_to_unknown() {
        let e = Event::from_value("build.finished", json!({"build": {"author": null}}), now());
        let b = derive(&e, now()).build.unwrap();
        assert_eq!(b.author, "unknown");
        assert_eq!(b.message_title, "(no commit message)");
    }

    #[test]
    fn webhook_url_never_reaches_templates() {
        let data = template_data(&fixture("build.finished"), now());
        assert!(!data.to_string().contains("webhook.buildkite.com/deliver"));
        assert_eq!(data["pipeline"]["slug"], "web-app", "the rest stays");
        assert_eq!(data["kb"]["event"], "build.finished");
    }

    #[test]
    fn unknown_events_get_a_subject_and_fields() {
        let e = Event::from_value(
            "widget.exploded",
            json!({"widget": {"name": "w1", "web_url": "https://buildkite.com/w/1", "size": 3,
                              "secret_token": "nope"}, "count": 2}),
            now(),
        );
        let kb = derive(&e, now());
        assert_eq!(kb.title, "ℹ️ widget.exploded: w1");
        assert_eq!(kb.url.as_deref(), Some("https://buildkite.com/w/1"));
        let listed: Vec<String> = kb
            .fields
            .iter()
            .map(|f| format!("{}={}", f.name, f.value))
            .collect();
        assert_eq!(listed, ["widget.name=w1", "widget.size=3", "count=2"]);
    }

    #[test]
    fn urls_are_http_only_and_markup_safe() {
        assert_eq!(safe_url("javascript:alert(1)"), None);
        assert_eq!(
            safe_url("https://x/a|b<c>"),
            Some("https://x/a%7Cb%3Cc%3E".into())
        );
        assert_eq!(safe_url("HTTPS://x"), Some("HTTPS://x".into()));
    }
}
