//! Every fixture, signed, through the real service to the recording server.

use crate::helpers::*;

#[tokio::test]
async fn every_fixture_reaches_slack_and_teams_as_valid_bodies() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "mode = \"signature\"")).await;
    let fixtures = fixtures();
    for (name, body) in &fixtures {
        let (status, answer) = app.post_signed(body).await;
        let want = if name == "ping" { 200 } else { 202 };
        assert_eq!(status, want, "{name}: {answer}");
    }
    let slack = rec.wait_for("slack", fixtures.len()).await;
    let teams = rec.wait_for("teams", fixtures.len()).await;
    assert_eq!((slack.len(), teams.len()), (fixtures.len(), fixtures.len()));

    let validator = card_validator();
    for msg in &slack {
        assert!(
            msg.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body = msg.json();
        let text = body["text"].as_str().unwrap();
        assert!(!text.is_empty());
        let header = &body["blocks"][0];
        assert_eq!(header["type"], "header");
        assert!(header["text"]["text"].as_str().unwrap().chars().count() <= 150);
        assert!(
            body["attachments"][0]["color"]
                .as_str()
                .unwrap()
                .starts_with('#')
        );
    }
    for msg in &teams {
        let body = msg.json();
        assert!(msg.body.len() <= 28_000);
        let errors = card_errors(&validator, &body);
        assert!(errors.is_empty(), "{errors:?}\n{body}");
        let card = &body["attachments"][0]["content"];
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["msteams"]["width"], "Full");
    }

    // The expected first lines, one per fixture, each seen on both destinations.
    let titles = [
        "❌ Web App #1842 failed",
        "🔧 Web App #1842 fixed", // the same build, failed above, passing after a retry
        "⏸️ infusion #302 is blocked",
        "⛔ Web App #1842 was canceled",
        "❌ Web App #1843 failed",
        "🟠 Web App #1842 is failing",
        "🔄 Web App #1842 is running",
        "🔄 Web App #1842 is scheduled",
        "⏭️ Web App #1842 was skipped",
        "❌ Web App #1842: :rspec: Checkout specs failed with exit 1",
        "✅ webhook test #5: :llama: passed",
        "▶️ Web App #1842: :rocket: Deploy to production was unblocked by Maria López",
        "🟠 Web App #1842: :rspec: Checkout specs will exit 1",
        "🔄 Web App #1842: :rspec: Checkout specs is scheduled",
        "🔄 Web App #1842: :rspec: Checkout specs started",
        "🔴 Agent ci-agent-7f3a-1 was lost",
        "🟢 Agent ci-agent-7f3a-1 connected",
        "⚪ Agent ci-agent-7f3a-1 disconnected",
        "🟡 Agent ci-agent-7f3a-1 is stopping",
        "⚪ Agent ci-agent-7f3a-1 stopped",
        "🚫 Agent ci-agent-7f3a-1 was blocked from 202.188.43.20",
        "🚫 Agent registration blocked from 202.188.43.20",
        "📦 package.created: web-app",
        "🔌 kitebridge connected to Buildkite org ACME Inc",
        "🚨 Test Engine alarm: Checkout applies discount codes",
    ];
    let slack_texts: Vec<String> = slack
        .iter()
        .map(|m| m.json()["text"].as_str().unwrap().to_string())
        .collect();
    let teams_titles: Vec<String> = teams
        .iter()
        .map(|m| {
            m.json()["attachments"][0]["content"]["body"][0]["items"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for title in titles {
        assert!(
            slack_texts.iter().any(|t| t == title),
            "slack lacks {title:?}: {slack_texts:#?}"
        );
        assert!(
            teams_titles.iter().any(|t| t == title),
            "teams lacks {title:?}: {teams_titles:#?}"
        );
    }
    assert_eq!(titles.len(), fixtures.len());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_build_names_commit_author_branch_and_links_the_build() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    app.post_signed(&fixture("build.finished")).await;
    let slack = rec.wait_for("slack", 1).await[0].json();
    let all = strings(&slack).join("\n");
    for want in [
        "Retry payment mock before asserting totals",
        "Maria López",
        "`main`",
        "`9f3c1e7`",
        "8m 42s",
        "Web App",
    ] {
        assert!(all.contains(want), "missing {want:?} in {all}");
    }
    let button = &slack["attachments"][0]["blocks"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["elements"][0];
    assert_eq!(
        button["url"],
        "https://buildkite.com/acme/web-app/builds/1842"
    );
    assert!(
        !all.contains("flaked on slow agents"),
        "only the first line of the message"
    );

    let teams = rec.wait_for("teams", 1).await[0].json();
    let card = &teams["attachments"][0]["content"];
    assert_eq!(card["body"][0]["items"][0]["color"], "Attention");
    assert_eq!(
        card["body"][2]["text"], "by Maria López",
        "no [[people]]: the plain name"
    );
    let facts: Vec<(String, String)> = card["body"][3]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().into(),
                f["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        facts.contains(&("Branch".into(), "main".into())),
        "{facts:?}"
    );
    assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
    assert_eq!(
        card["actions"][0]["url"],
        "https://buildkite.com/acme/web-app/builds/1842"
    );
}

#[tokio::test]
async fn a_failed_job_names_the_step_and_exit_status() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    app.post_signed(&fixture("job.finished")).await;
    let slack = rec.wait_for("slack", 1).await[0].json();
    let all = strings(&slack).join("\n");
    assert!(all.contains("*Exit status*\n`1`"), "{all}");
    assert!(all.contains(":rspec: Checkout specs"), "{all}");
    assert!(all.contains("76d17dc8d368-1"), "the agent");
}

#[tokio::test]
async fn routes_choose_destinations_in_file_order() {
    let rec = Recorder::start().await;
    let toml = format!(
        r#"
[buildkite]
token = "{TOKEN}"

[delivery]
allowed_hosts = ["127.0.0.1"]

[destinations.failures]
kind = "slack"
url = "{failures}"

[destinations.agents]
kind = "teams"
url = "{agents}"

[destinations.rest]
kind = "slack"
url = "{rest}"

[destinations.off]
kind = "slack"
url = "${{KITEBRIDGE_TEST_UNSET_URL:-}}"

[[routes]]
name = "main failures"
events = ["build.finished"]
branches = ["main"]
states = ["failed"]
to = ["failures", "off"]
continue = true

[[routes]]
name = "agents"
events = ["agent.*"]
states = ["lost"]
to = ["agents"]

[[routes]]
name = "manual builds"
events = ["build.*"]
to = ["rest"]

[[routes.when]]
path = "build.source"
equals = "ui"
"#,
        failures = rec.url("failures"),
        agents = rec.url("teams-agents"),
        rest = rec.url("rest"),
    );
    let app = TestApp::spawn(&toml).await;
    let cases = [
        ("build.finished", 202, vec!["main failures"]),
        ("build.finished.passed", 202, vec![]),
        ("build.finished.blocked", 202, vec!["manual builds"]),
        ("agent.lost", 202, vec!["agents"]),
        ("agent.connected", 202, vec![]),
    ];
    for (name, status, routes) in cases {
        let (got, answer) = app.post_signed(&fixture(name)).await;
        assert_eq!(got, status, "{name}");
        let names: Vec<&str> = answer["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, routes, "{name}");
    }
    assert_eq!(rec.wait_for("failures", 1).await.len(), 1);
    assert_eq!(rec.wait_for("teams-agents", 1).await.len(), 1);
    assert_eq!(rec.wait_for("rest", 1).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let paths: Vec<String> = rec.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 3, "nothing else was sent: {paths:?}");
    let blocked = &rec.received_on("rest")[0].json();
    assert_eq!(blocked["text"], "⏸️ infusion #302 is blocked");
}

#[tokio::test]
async fn shutdown_lets_attempts_in_flight_finish() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Slow(700)]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.post_signed(&fixture("build.finished")).await.0, 202);
    assert_eq!(
        rec.wait_for("slack", 1).await.len(),
        1,
        "the attempt is in flight"
    );
    let db = app.db.clone();
    let _dir = app.stop().await;
    let all = deliveries(&db).await;
    let slack = all.iter().find(|d| d.destination == "slack").unwrap();
    assert_eq!(
        slack.state,
        kitebridge::store::DeliveryState::Sent,
        "finished before stop returned: {slack:?}"
    );
}

#[tokio::test]
async fn a_hanging_destination_delays_neither_the_answer_nor_other_destinations() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Hang]);
    let toml = config_for(&rec, "").replace(
        "kind = \"slack\"\n",
        "kind = \"slack\"\ntimeout = \"30s\"\n",
    );
    let app = TestApp::spawn(&toml).await;
    let started = std::time::Instant::now();
    assert_eq!(app.post_signed(&fixture("build.finished")).await.0, 202);
    assert_eq!(rec.wait_for("teams", 1).await.len(), 1);
    // Measured as a lower bound on what did not happen: neither waited for the 30 s timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(
        rec.wait_for("slack", 1).await.len(),
        1,
        "the slack request is still hanging"
    );
}
