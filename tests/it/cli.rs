//! The command line, run as the real binary.

use crate::helpers::*;
use std::path::Path;

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn check_passes_on_the_example_config() {
    let out = kitebridge(&["check", "--config", "config.example.toml"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("ok"));
}

#[test]
fn check_names_file_and_line_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n\n[destinations.c]\nkind = \"console\"\n\n[[routes]]\nname = \"r\"\nto = [\"c\", \"nope\"]\n",
    )
    .unwrap();
    let out = kitebridge(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml:9: route \"r\": unknown destination \"nope\""),
        "{err}"
    );
}

#[test]
fn check_points_into_a_bad_if_expression() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n\n[destinations.c]\nkind = \"console\"\n\n\
         [[routes]]\nname = \"syntax\"\nif = 'build.state == '\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"unknown\"\nif = 'build.brnch == \"main\"'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"types\"\nif = 'build.number == \"7\"'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"dollar\"\nif = 'build.branch == \"${BRANCH}\"'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"match a number\"\nif = 'build.number =~ /1/'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"lookbehind\"\nif = 'build.branch =~ /(?<=a)b/'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"enum\"\nif = 'build.state == \"faild\"'\nto = [\"c\"]\n\n\
         [[routes]]\nname = \"lookahead\"\nif = 'build.branch =~ /^v(?=1)/'\nto = [\"c\"]\n",
    )
    .unwrap();
    let out = kitebridge(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for (line, route, column) in [
        (9, "syntax", 16),         // the end of the expression
        (14, "unknown", 1),        // the variable
        (19, "types", 17),         // the string compared with an integer
        (24, "dollar", 18),        // the `$`
        (29, "match a number", 1), // `=~` on an integer
        (34, "lookbehind", 18),    // the regex feature Buildkite refuses
        (39, "enum", 16),          // a value build.state never takes
        (44, "lookahead", 20),     // Buildkite has it, Rust's regex has not
    ] {
        let want = format!("bad.toml:{line}: route \"{route}\" if: column {column}");
        assert!(err.contains(&want), "{want}\n{err}");
    }
    assert!(
        err.contains("build.branch"),
        "a suggestion for the typo: {err}"
    );
    assert!(
        err.contains(r#"column 16: "faild" is not a valid build.state; did you mean "failed"?"#),
        "the nearest allowed value: {err}"
    );
    assert!(
        err.contains("lookahead `(?=` is accepted by Buildkite but not by kitebridge"),
        "a known difference says so: {err}"
    );
}

#[test]
fn check_warns_of_event_names_and_states_that_match_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n\n[destinations.c]\nkind = \"console\"\n\n\
         [[routes]]\nname = \"r\"\nevents = [\"build.finshed\", \"job.*\", \"!agent.lost\"]\n\
         states = [\"faild\", \"passed\"]\nto = [\"c\"]\n",
    )
    .unwrap();
    let out = kitebridge(&["check", "--config", cfg.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "a warning, not a refusal: {err}");
    assert!(
        err.contains(
            "typo.toml:9: warning: route \"r\" events: \"build.finshed\" matches no Buildkite event; did you mean \"build.finished\"?"
        ),
        "{err}"
    );
    assert!(
        err.contains("typo.toml:10: warning: route \"r\" states: \"faild\" matches no event family's state; did you mean \"failed\"?"),
        "{err}"
    );
    assert_eq!(
        err.matches("warning").count(),
        2,
        "globs and known names pass: {err}"
    );
}

#[test]
fn check_reports_broken_templates_with_their_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates/slack")).unwrap();
    std::fs::write(
        dir.path().join("templates/slack/build.hbs"),
        "{\"text\": \"{{kb.title}}\",\n{{#if}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("templates/slack/agent.hbs"),
        "{\"text\": {{kb.title}} }",
    )
    .unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n[templates]\ndir = \"templates\"\n",
    )
    .unwrap();
    let out = kitebridge(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("templates/slack/build.hbs:") && err.contains("invalid handlebars syntax"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("templates/slack/build.hbs"),
        "{\"text\": \"{{kb.title}}\"}",
    )
    .unwrap();
    let out = kitebridge(&["check", "--config", cfg.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains("templates/slack/agent.hbs rendered invalid JSON")
            && err.contains("[sample agent.connected (and 5 more samples)]"),
        "{err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "one line per broken template: {err}"
    );
}

/// A config with one Slack, one Teams and one console destination, every event to all three,
/// and `extra` appended.
fn three_destinations(dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[buildkite]\ntoken = \"t\"\n\
             [destinations.s]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/SECRET\"\n\
             [destinations.t]\nkind = \"teams\"\nurl = \"https://prod-12.westus.logic.azure.com/workflows/SECRET\"\n\
             [destinations.c]\nkind = \"console\"\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nto = [\"s\", \"t\", \"c\"]\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn render_prints_what_would_be_sent_for_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = three_destinations(dir.path(), "");
    let cards = card_validator();
    for (name, _) in fixtures() {
        let payload = format!("tests/fixtures/buildkite/{name}.json");
        // The example config, as text: its console destination prints the message.
        let out = kitebridge(&[
            "render",
            "--config",
            "config.example.toml",
            "--payload",
            &payload,
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let (head, body) = stdout
            .split_once('\n')
            .unwrap_or_else(|| panic!("{name}: {stdout}"));
        assert!(
            head.starts_with("route \"console\" → console (console, template"),
            "{name}: {stdout}"
        );
        assert!(!body.trim().is_empty(), "{name}: no message printed");

        // Slack, Teams and console, as JSON: each body is what the destination would get.
        let out = kitebridge(&[
            "render",
            "--config",
            cfg.to_str().unwrap(),
            "--payload",
            &payload,
            "--format",
            "json",
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(!text(&out.stdout).contains("SECRET"), "{name}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["slack", "teams", "console"], "{name}");
        let slack = &v[0]["body"];
        assert!(
            !slack["text"].as_str().unwrap_or_default().is_empty()
                && slack["blocks"].as_array().is_some_and(|b| !b.is_empty()),
            "{name}: {slack}"
        );
        let errors = card_errors(&cards, &v[1]["body"]);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert!(!v[2]["body"].as_str().unwrap().trim().is_empty(), "{name}");
    }
}

#[test]
fn a_template_file_overrides_the_built_in_one_of_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates/slack")).unwrap();
    std::fs::write(
        dir.path().join("templates/slack/build.hbs"),
        "{\"text\": \"our own: {{pipeline.name}} #{{build.number}} {{build.state}}\"}",
    )
    .unwrap();
    let cfg = three_destinations(dir.path(), "[templates]\ndir = \"templates\"\n");
    let render = |fixture: &str| {
        let out = kitebridge(&[
            "render",
            "--config",
            cfg.to_str().unwrap(),
            "--payload",
            &format!("tests/fixtures/buildkite/{fixture}.json"),
            "--format",
            "json",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = render("build.finished");
    assert_eq!(
        v[0]["body"],
        serde_json::json!({"text": "our own: Web App #1842 failed"})
    );
    assert_eq!(v[1]["kind"], "teams");
    assert_eq!(
        v[1]["body"]["type"], "message",
        "Teams keeps its built-in template"
    );
    let job = render("job.finished");
    assert!(
        job[0]["body"]["blocks"].is_array(),
        "other Slack templates stay built in: {}",
        job[0]["body"]
    );
}

#[test]
fn render_json_lists_route_destination_kind_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n[destinations.s]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/SECRET\"\n[destinations.c]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"s\", \"c\"]\n",
    )
    .unwrap();
    let payload = std::path::PathBuf::from(fixture_path("build.finished"));
    let out = kitebridge(&[
        "render",
        "--config",
        cfg.to_str().unwrap(),
        "--payload",
        payload.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["route"], "r");
    assert_eq!(v[0]["destination"], "s");
    assert_eq!(v[0]["kind"], "slack");
    assert_eq!(v[0]["body"]["text"], "❌ Web App #1842 failed");
    assert_eq!(v[1]["kind"], "console");
    assert!(
        v[1]["body"]
            .as_str()
            .unwrap()
            .starts_with("❌ Web App #1842 failed")
    );
    assert!(!text(&out.stdout).contains("SECRET"));

    let out = kitebridge(&[
        "render",
        "--config",
        cfg.to_str().unwrap(),
        "--payload",
        payload.to_str().unwrap(),
        "--event",
        "build.failing",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["body"]["text"], "❌ Web App #1842 failed",
        "--event picks the name; the state still comes from the payload"
    );
}

#[tokio::test]
async fn send_test_posts_to_the_destination_and_reports_the_answer() {
    let rec = Recorder::start().await;
    rec.script("gone", [Reply::Status(404, "channel_not_found")]);
    rec.script("busy", [Reply::RateLimited(7)]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[buildkite]\ntoken = \"t\"\n[delivery]\nallowed_hosts = [\"127.0.0.1\"]\n[destinations.s]\nkind = \"slack\"\nurl = \"{}\"\n[destinations.gone]\nkind = \"slack\"\nurl = \"{}\"\n[destinations.t]\nkind = \"teams\"\nurl = \"{}\"\n[destinations.busy]\nkind = \"slack\"\nurl = \"{}\"\n",
            rec.url("slack"),
            rec.url("gone"),
            rec.url("teams"),
            rec.url("busy")
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let ok = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || kitebridge(&["send-test", "--config", &cfg, "--destination", "s"])
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("s: sent (HTTP 200"),
        "{}",
        text(&ok.stdout)
    );
    let got = rec.received_on("slack");
    assert_eq!(got.len(), 1);
    assert!(got[0].json()["text"].as_str().unwrap().starts_with("🔌"));

    let teams = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            kitebridge(&[
                "send-test",
                "--config",
                &cfg,
                "--destination",
                "t",
                "--sample",
                "build.finished",
            ])
        }
    })
    .await
    .unwrap();
    assert!(teams.status.success(), "{}", text(&teams.stderr));
    assert!(text(&teams.stdout).contains("HTTP 202"));

    let busy = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || kitebridge(&["send-test", "--config", &cfg, "--destination", "busy"])
    })
    .await
    .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy.stderr).contains("temporary failure (HTTP 429"),
        "{}",
        text(&busy.stderr)
    );

    let gone = tokio::task::spawn_blocking(move || {
        kitebridge(&["send-test", "--config", &cfg, "--destination", "gone"])
    })
    .await
    .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    let err = text(&gone.stderr);
    assert!(
        err.contains("refused (HTTP 404") && err.contains("channel_not_found"),
        "{err}"
    );
    assert!(
        !err.contains(&rec.addr.to_string()),
        "the URL is never shown: {err}"
    );
}

/// The test config to `rec`, listening on a free port, written into `dir`.
fn serve_config(rec: &Recorder, dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            config_for(rec, "")
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn serve_logs_one_json_line_per_event_and_per_delivery() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = serve_config(&rec, dir.path());
    let mut running = start_binary(&cfg).await;
    let addr = running.addr;
    let mut seen: Vec<serde_json::Value> = running
        .startup
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let body = fixture("build.finished");
    let resp = kitebridge::destination::client()
        .post(format!("http://{addr}/webhooks/buildkite"))
        .header("X-Buildkite-Token", TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen
        .iter()
        .filter(|v: &&serde_json::Value| v["message"] == "delivered")
        .count()
        < 2
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(std::time::Duration::from_secs(5), running.lines.next_line()).await
        {
            seen.push(serde_json::from_str(&line).unwrap());
        }
    }
    let accepted = seen
        .iter()
        .find(|v| v["message"] == "event accepted")
        .expect("an event line");
    assert_eq!(accepted["event"], "build.finished");
    assert_eq!(accepted["pipeline"], "web-app");
    assert_eq!(accepted["build"], 1842);
    assert_eq!(accepted["routes"], "everything");
    let delivered: Vec<_> = seen
        .iter()
        .filter(|v| v["message"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "{seen:?}");
    for d in delivered {
        assert!(d["destination"] == "slack" || d["destination"] == "teams");
        assert!(d["status"] == 200 || d["status"] == 202);
        assert!(d["latency_ms"].is_u64());
    }
    let all = seen.iter().map(|v| v.to_string()).collect::<String>();
    assert!(
        !all.contains(TOKEN) && !all.contains(&rec.addr.to_string()),
        "no secrets in logs"
    );
    running.child.kill().await.unwrap();
}

#[test]
fn render_event_flag_overrides_the_payload_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[buildkite]\ntoken = \"t\"\n[destinations.c]\nkind = \"console\"\n[[routes]]\nname = \"failing only\"\nevents = [\"build.failing\"]\nto = [\"c\"]\n",
    )
    .unwrap();
    let payload = std::path::PathBuf::from(fixture_path("build.finished"));
    let (cfg, payload) = (cfg.to_str().unwrap(), payload.to_str().unwrap());
    let plain = kitebridge(&["render", "--config", cfg, "--payload", payload]);
    assert!(
        text(&plain.stdout).contains("no route matches build.finished"),
        "{}",
        text(&plain.stdout)
    );
    let out = kitebridge(&[
        "render",
        "--config",
        cfg,
        "--payload",
        payload,
        "--event",
        "build.failing",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["route"], "failing only");
}

/// `render --explain`: every route in order, matched or the first condition that failed with
/// the value it saw, and where `continue` ended the search; the same in JSON beside the bodies.
#[test]
fn render_explains_every_route() {
    let cfg = "tests/fixtures/explain.toml";
    let payload = "tests/fixtures/buildkite/build.finished.json";
    let out = kitebridge(&["render", "--explain", "--config", cfg, "--payload", payload]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().take(7).collect();
    assert_eq!(
        lines,
        [
            r#"✗ route "jobs": events: "build.finished" matches none of ["job.*"]"#,
            r#"✗ route "main only": branches: "main" matches none of ["release/*"]"#,
            r#"✗ route "if": if: build.state == "passed" && build.branch == pipeline.default_branch is false (build.state is "failed", build.branch is "main", pipeline.default_branch is "main")"#,
            r#"✗ route "ui builds": when: build.source is "webhook", not "ui""#,
            r#"✓ route "all": matched; continue = true, so later routes are tried"#,
            r#"✓ route "all again": matched"#,
            r#"✗ route "never": not tried: route "all again" took the event and does not continue"#,
        ]
    );
    assert!(
        stdout.contains("route \"all\" → c"),
        "the bodies follow: {stdout}"
    );

    let out = kitebridge(&[
        "render",
        "--explain",
        "--format",
        "json",
        "--config",
        cfg,
        "--payload",
        payload,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let routes = v["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 7);
    assert_eq!(
        routes[3],
        serde_json::json!({"route": "ui builds", "matched": false,
                           "reason": "when: build.source is \"webhook\", not \"ui\""})
    );
    let matched: Vec<&str> = routes
        .iter()
        .filter(|r| r["matched"] == true)
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    let bodies: Vec<&str> = v["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        matched, bodies,
        "the routes explained as matched are the routes rendered"
    );
}

#[tokio::test]
async fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = serve_config(&rec, dir.path());
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitebridge"));
    serve.args(["serve", "--config", cfg.to_str().unwrap()]);
    let (mut child, mut lines) = spawn_logging(serve);
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await
    {
        let listening = line.contains("listening");
        seen.push(line);
        if listening {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("listening") && l.contains("INFO")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "no escape codes: {seen:?}"
    );
    child.kill().await.unwrap();
}
