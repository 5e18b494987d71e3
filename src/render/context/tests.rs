use super::facts::safe_url;
use super::*;
use crate::event::time::parse_timestamp;
use serde_json::json;

fn fixture(name: &str) -> Event {
    crate::render::samples::event(name).unwrap()
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

/// `kb.fields` as `name=value`, in order.
fn listed(kb: &Derived) -> Vec<String> {
    kb.fields
        .iter()
        .map(|f| format!("{}={}", f.name, f.value))
        .collect()
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
    assert_eq!(listed(&kb), ["widget.name=w1", "widget.size=3", "count=2"]);
}

#[test]
fn an_unknown_event_reads_the_object_it_is_named_for_first() {
    // `agent` sorts before `widget` and has a name too; the event is about the widget.
    let e = Event::from_value(
        "widget.exploded",
        json!({"agent": {"name": "a1", "version": "3"}, "count": 2,
               "widget": {"size": 3, "name": "w1"}}),
        now(),
    );
    let kb = derive(&e, now());
    assert_eq!(kb.subject.name.as_deref(), Some("w1"));
    assert_eq!(
        listed(&kb),
        [
            "widget.name=w1",
            "widget.size=3",
            "agent.name=a1",
            "agent.version=3",
            "count=2"
        ]
    );
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

#[test]
fn the_data_from_an_event_given_up_is_the_data_from_a_borrowed_one() {
    let samples = crate::render::samples::events();
    assert!(samples.len() > 10);
    for (name, event) in samples {
        let borrowed = template_data(&event, now());
        assert!(borrowed.get("kb").is_some(), "{name}");
        assert_eq!(template_data_from(event, now()), borrowed, "{name}");
    }
}
