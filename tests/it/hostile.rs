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

#[tokio::test]
async fn limits_hold_even_for_a_template_that_prints_the_raw_200kb_message() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    for kind in ["slack", "teams"] {
        std::fs::create_dir_all(dir.path().join(kind)).unwrap();
    }
    std::fs::write(
        dir.path().join("slack/raw.hbs"),
        r#"{"text": "{{build.message}}", "blocks": [
             {"type": "header", "text": {"type": "plain_text", "text": "{{build.message}}"}},
             {"type": "section", "text": {"type": "mrkdwn", "text": "{{build.message}}"},
              "fields": [{{#each build.env}}{"type": "mrkdwn", "text": "{{this}}"}{{#unless @last}},{{/unless}}{{/each}}]}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("teams/raw.hbs"),
        r#"{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
             "type": "AdaptiveCard", "version": "1.4",
             "body": [{"type": "TextBlock", "text": "{{build.message}}", "wrap": true},
                      {"type": "TextBlock", "text": "{{build.message}}", "wrap": true}],
             "actions": [{"type": "Action.OpenUrl", "title": "View", "url": "{{{plain kb.url}}}"}]}}]}"#,
    )
    .unwrap();
    let toml = config_for(&rec, "").replace(
        "to = [\"slack\", \"teams\"]",
        &format!(
            "to = [\"slack\", \"teams\"]\ntemplate = \"raw\"\n\n[templates]\ndir = \"{}\"",
            dir.path().display()
        ),
    );
    let app = TestApp::spawn(&toml).await;
    let mut payload = hostile_build();
    payload["build"]["env"] = json!(
        (0..15)
            .map(|i| (format!("K{i}"), json!("v".repeat(3000))))
            .collect::<serde_json::Map<String, Value>>()
    );
    assert_eq!(
        app.post_signed(&serde_json::to_vec(&payload).unwrap())
            .await
            .0,
        202
    );

    let slack = rec.wait_for("slack", 1).await[0].json();
    assert_eq!(slack["text"].as_str().unwrap().chars().count(), 40_000);
    assert_eq!(
        slack["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        150
    );
    assert_eq!(
        slack["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        3_000
    );
    assert_eq!(slack["blocks"][1]["fields"].as_array().unwrap().len(), 10);
    assert_inert_slack_text(&slack);

    let teams = &rec.wait_for("teams", 1).await[0];
    assert!(teams.body.len() <= 28_000, "{} bytes", teams.body.len());
    let card = &teams.json()["attachments"][0]["content"];
    assert_eq!(
        card["actions"][0]["url"], "https://buildkite.com/acme/web-app/builds/1842",
        "the link is kept"
    );
    assert!(card["body"][0]["text"].as_str().unwrap().ends_with('…'));
}

fn assert_inert_slack_text(body: &Value) {
    for s in strings(body) {
        for bad in ["<!channel>", "<!here>", "<@U123>", "<https://evil"] {
            assert!(!s.contains(bad), "{bad:?} survived");
        }
    }
}
