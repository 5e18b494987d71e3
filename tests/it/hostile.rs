//! Payload text never breaks a body, creates a mention or link, or exceeds a limit.

use crate::helpers::*;
use serde_json::{Value, json};

fn hostile_build() -> Value {
    let mut payload = fixture_json("build.finished");
    // The first line (the one messages show) carries every hostile form and is 200 KB long.
    let nasty = "Fix \"quotes\" and \\backslashes\\ tab\t <!channel> <!here> <@U123> @everyone & <https://evil.example|click> [x](https://evil.example) <at>Boss</at> 🚀 é \u{0007}";
    let huge = format!("{nasty} {}\nsecond line", "y".repeat(200 * 1024));
    payload["build"]["message"] = json!(huge);
    payload["build"]["branch"] = json!("feature/<!channel>&[a](https://evil.example)");
    payload["build"]["author"]["name"] = json!("<@U999> Mallory & \"Eve\"");
    payload["pipeline"]["name"] = json!(format!("Web <!here> {}", "P".repeat(300)));
    payload
}

fn assert_inert_slack(body: &Value) {
    for s in strings(body) {
        for bad in [
            "<!channel>",
            "<!here>",
            "<@U123>",
            "<@U999>",
            "<https://evil",
            "@everyone",
            "webhook.buildkite.com",
        ] {
            assert!(!s.contains(bad), "{bad:?} survived in {s:?}");
        }
    }
    let blocks = body["blocks"].as_array().unwrap();
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    for block in body["attachments"][0]["blocks"].as_array().unwrap() {
        if let Some(t) = block["text"]["text"].as_str() {
            assert!(t.chars().count() <= 3000);
        }
        for f in block["fields"].as_array().into_iter().flatten() {
            assert!(f["text"].as_str().unwrap().chars().count() <= 2000);
        }
    }
    assert!(body["text"].as_str().unwrap().chars().count() <= 40_000);
}

#[tokio::test]
async fn hostile_payload_text_is_shown_literally_and_inert() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    let body = serde_json::to_vec(&hostile_build()).unwrap();
    assert!(body.len() > 200 * 1024);
    let (status, answer) = app.post_signed(&body).await;
    assert_eq!(status, 202, "{answer}");

    let slack = rec.wait_for("slack", 1).await[0].json();
    assert_inert_slack(&slack);
    let all = strings(&slack).join("\n");
    assert!(all.contains("&lt;!channel&gt;"), "shown, escaped: {all}");
    assert!(all.contains("&lt;@U999&gt; Mallory &amp; \"Eve\""), "{all}");
    assert!(all.contains("Fix \"quotes\" and \\backslashes\\"), "{all}");
    assert!(all.contains("🚀 é"), "{all}");
    assert!(all.contains('…'), "the long message was truncated");

    let teams_msg = &rec.wait_for("teams", 1).await[0];
    assert!(teams_msg.body.len() <= 28_000);
    let teams = teams_msg.json();
    assert!(card_errors(&card_validator(), &teams).is_empty());
    for s in strings(&teams) {
        assert!(
            !s.contains("](https://evil"),
            "markdown link survived: {s:?}"
        );
        assert!(!s.contains("<at>"), "mention tag survived: {s:?}");
        assert!(!s.contains("webhook.buildkite.com"));
    }
    let all = strings(&teams).join("\n");
    assert!(
        all.contains("<!channel>"),
        "Teams shows the text as it is: {all}"
    );
}

#[tokio::test]
async fn hostile_links_never_become_buttons() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    let mut payload = fixture_json("build.finished");
    payload["build"]["web_url"] = json!("javascript:alert(1)");
    app.post_signed(&serde_json::to_vec(&payload).unwrap())
        .await;
    let slack = rec.wait_for("slack", 1).await[0].json();
    assert!(!slack.to_string().contains("javascript:"), "{slack}");
    let teams = rec.wait_for("teams", 1).await[0].json();
    assert_eq!(teams["attachments"][0]["content"]["actions"], json!([]));
}

#[tokio::test]
async fn nulls_and_wrong_types_where_objects_are_expected_still_render() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    let payloads = [
        json!({"event": "build.finished", "build": null, "pipeline": null}),
        json!({"event": "build.finished", "build": "string", "pipeline": 5}),
        json!({"event": "job.finished", "job": [], "build": {"number": "NaN", "message": 12}}),
        json!({"event": "agent.lost", "agent": {"name": null, "meta_data": "queue=x"}}),
        json!({"event": "workflow.alarm", "subject": null}),
        json!({"event": "build.finished", "build": {"number": 1e308, "started_at": "not a time", "finished_at": 5}}),
    ];
    for p in &payloads {
        let (status, answer) = app.post_signed(&serde_json::to_vec(p).unwrap()).await;
        assert_eq!(status, 202, "{p}: {answer}");
    }
    let slack = rec.wait_for("slack", payloads.len()).await;
    assert_eq!(slack.len(), payloads.len());
    let teams = rec.wait_for("teams", payloads.len()).await;
    let validator = card_validator();
    for m in &teams {
        assert!(card_errors(&validator, &m.json()).is_empty());
    }
}
