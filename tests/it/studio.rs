//! The template studio's API: every endpoint on a real studio on a random port, hostile input
//! included (huge sources, `../` names, partials that recurse or do not exist, other origins):
//! clear 4xx answers, never a 5xx, never a file outside the templates folder.

use crate::helpers::*;
use kitebridge::studio::{Options, Running, TOKEN_HEADER, start};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// How many stored events the sample picker offers (the issue's figure).
const STORE_SAMPLES: usize = 50;

pub struct Studio {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Studio {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    pub fn templates(&self) -> PathBuf {
        self.dir.path().join("templates")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (
            r.status().as_u16(),
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header(TOKEN_HEADER, &self.running.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    pub async fn put(&self, path: &str, source: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.put(self.url(path)).body(source.to_string());
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER, token);
        }
        let r = request.send().await.unwrap();
        (
            r.status().as_u16(),
            serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    pub async fn render(&self, body: Value) -> Value {
        let (status, answer) = self.post("/api/render", body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

/// A config with a console, a webhook to `recorder` (if any) and a templates folder, in a
/// fresh folder; sample fixtures in `samples/`.
pub async fn studio_with(
    recorder: Option<&Recorder>,
    allow_send: bool,
    templates_dir: bool,
) -> Studio {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hook = recorder.map_or(String::new(), |r| {
        format!(
            "[destinations.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
            r.url("studio-hook")
        )
    });
    let templates = if templates_dir {
        "[templates]\ndir = \"templates\"\n"
    } else {
        ""
    };
    let config = format!(
        r#"
[buildkite]
token = "{TOKEN}"

[delivery]
allowed_hosts = ["127.0.0.1"]

{templates}
[destinations.console]
kind = "console"

{hook}
[destinations.off]
kind = "slack"
url = "${{UNSET_STUDIO_URL:-}}"

[[routes]]
name = "main failures"
branches = ["main"]
states = ["failed"]
to = ["console"]
continue = true

[[routes]]
name = "everything"
to = ["console", "off"{extra}]
"#,
        extra = if recorder.is_some() { ", \"hook\"" } else { "" },
    );
    let path = dir.path().join("kitebridge.toml");
    std::fs::write(
        &path,
        with_store(&config, &dir.path().join("kitebridge.db")),
    )
    .unwrap();
    let samples = dir.path().join("samples");
    std::fs::create_dir(&samples).unwrap();
    std::fs::write(
        samples.join("mine.json"),
        fixture("build.finished.pull-request"),
    )
    .unwrap();
    std::fs::write(samples.join("broken.json"), b"{ not json").unwrap();
    let running = start(Options {
        config: path,
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_send,
        samples: Some(samples),
    })
    .await
    .unwrap();
    Studio {
        running,
        dir,
        client: reqwest::Client::new(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A studio on `config` without sample files, as a user would start it.
async fn studio_on(config: &Path, allow_send: bool) -> Running {
    start(Options {
        config: config.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_send,
        samples: None,
    })
    .await
    .unwrap()
}

/// `GET path` of `running`, which must answer 200 with JSON.
async fn get_json(running: &Running, path: &str) -> Value {
    let r = reqwest::get(format!("http://{}{path}", running.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn lists_templates_and_samples_with_secrets_removed() {
    let s = studio_with(None, false, true).await;
    let (status, templates) = s.get("/api/templates").await;
    assert_eq!(status, 200);
    let all = templates.as_array().unwrap();
    for (kind, name) in [
        ("slack", "build"),
        ("slack", "_message"),
        ("teams", "_card"),
        ("console", "build"),
        ("webhook", "default"),
    ] {
        let t = all
            .iter()
            .find(|t| t["kind"] == kind && t["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} listed"));
        assert_eq!(t["builtin"], true);
        assert_eq!(t["overridden"], false);
        assert_eq!(t["partial"], name.starts_with('_'));
        assert!(!t["source"].as_str().unwrap().is_empty());
    }

    let (status, samples) = s.get("/api/samples").await;
    assert_eq!(status, 200);
    let samples = samples.as_array().unwrap();
    let finished = samples
        .iter()
        .find(|x| x["id"] == "builtin:build.finished")
        .unwrap();
    assert_eq!(finished["label"], "build.finished · web-app #1842 · failed");
    let mine = samples.iter().find(|x| x["id"] == "file:mine").unwrap();
    assert_eq!(mine["origin"], "file");
    assert!(
        !samples.iter().any(|x| x["id"] == "file:broken"),
        "a file that is no event is left out"
    );
    let (status, one) = s.get("/api/samples/builtin:build.finished").await;
    assert_eq!(status, 200);
    assert_eq!(one["payload"]["build"]["number"], 1842);
    assert!(!one.to_string().contains("webhook_url"), "secrets removed");
    assert_eq!(s.get("/api/samples/builtin:nope").await.0, 404);
    assert_eq!(s.get("/api/samples/store:abc").await.0, 404);

    let (status, info) = s.get("/api/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["allow_send"], false);
    assert!(
        info["templates_dir"]
            .as_str()
            .unwrap()
            .ends_with("templates")
    );
}

/// Waits until the SQLite store at `db` is as a stopped `serve` leaves it: closed, its log
/// copied in and removed. That happens when its last handle goes, which may be with a task
/// that ends just after the stop.
async fn closed(db: &std::path::Path) {
    let log = db.with_extension("db-wal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!log.exists(), "the stopped service closed its store");
}

#[tokio::test]
async fn stored_events_are_samples_too() {
    let s = studio_with(None, false, true).await;
    // The store the config names, as `serve` leaves it: more events than the picker offers,
    // the newest a job's.
    let config = kitebridge::config::Config::load(&s.dir.path().join("kitebridge.toml")).unwrap();
    let app = TestApp::spawn(&std::fs::read_to_string(config.path.clone()).unwrap()).await;
    let mut build: Value = fixture_json("build.finished");
    for number in 0..STORE_SAMPLES + 2 {
        build["build"]["number"] = json!(number);
        let body = serde_json::to_vec(&build).unwrap();
        assert_eq!(app.post_signed(&body).await.0, 202);
    }
    assert_eq!(app.post_signed(&fixture("job.finished")).await.0, 202);
    let _ = app.stop().await;
    let db = s.dir.path().join("kitebridge.db");
    closed(&db).await;
    let before = std::fs::read(&db).unwrap();

    let running = studio_on(&config.path, false).await;
    let samples = get_json(&running, "/api/samples").await;
    let stored: Vec<&Value> = samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["origin"] == "store")
        .collect();
    assert_eq!(stored.len(), STORE_SAMPLES, "the last 50 only: {samples}");
    assert!(
        stored[0]["label"]
            .as_str()
            .unwrap()
            .starts_with("job.finished · "),
        "newest first: {samples}"
    );
    assert!(
        stored[1]["label"]
            .as_str()
            .unwrap()
            .starts_with(&format!("build.finished · web-app #{} ", STORE_SAMPLES + 1)),
        "{samples}"
    );
    for sample in &stored[..3] {
        let one = get_json(
            &running,
            &format!("/api/samples/{}", sample["id"].as_str().unwrap()),
        )
        .await;
        assert!(one["payload"].is_object(), "{one}");
        assert!(
            !one.to_string().contains("webhook_url"),
            "secrets removed: {one}"
        );
    }
    running.task.abort();
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the studio only reads the store"
    );
}

#[tokio::test]
async fn the_studio_never_creates_or_migrates_a_store() {
    let s = studio_with(None, false, true).await;
    let db = s.dir.path().join("kitebridge.db");
    assert!(
        !db.exists(),
        "no store was created: {:?}",
        files_under(s.dir.path())
    );
    let (status, info) = s.get("/api/info").await;
    assert_eq!(status, 200);
    assert!(
        info["store"].as_str().unwrap().contains("no store yet"),
        "{info}"
    );

    // A store of an older schema is left as it is, and said why.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE old (x); PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let running = studio_on(&s.dir.path().join("kitebridge.toml"), false).await;
    let info = get_json(&running, "/api/info").await;
    assert!(
        info["store"].as_str().unwrap().contains("schema version 1"),
        "{info}"
    );
    running.task.abort();
    assert_eq!(std::fs::read(&db).unwrap(), before, "not migrated");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
}

#[tokio::test]
async fn renders_and_points_at_the_problems() {
    let s = studio_with(None, false, true).await;
    let ok = s
        .render(json!({"kind": "slack", "name": "build", "sample": "builtin:build.finished"}))
        .await;
    assert_eq!(ok["template"], "build");
    assert_eq!(ok["problems"], json!([]), "{ok}");
    assert_eq!(ok["body"]["text"], "❌ Web App #1842 failed");
    let sent: Value = serde_json::from_str(ok["text"].as_str().unwrap()).unwrap();
    assert_eq!(sent, ok["body"], "text is the exact body");

    // Not Handlebars: the line and column of the template.
    let broken = s
        .render(json!({"kind": "slack", "name": "build", "source": "{\n  \"text\": \"{{kb.title\"\n}", "sample": "builtin:build.finished"}))
        .await;
    assert!(broken["body"].is_null());
    assert_eq!(broken["problems"][0]["source"], "handlebars");
    assert_eq!(broken["problems"][0]["line"], 2, "{broken}");
    let column = broken["problems"][0]["column"].as_u64();
    assert!(
        column.is_some_and(|c| (11..=22).contains(&c)),
        "the column, within the broken expression `{{{{kb.title\"`: {broken}"
    );

    // Not JSON: the template line that wrote the broken output line.
    let source = "{\n  \"text\": \"{{kb.title}}\",\n  \"blocks\": [{\"type\": \"divider\"} {\"type\": \"divider\"}]\n}";
    let invalid = s
        .render(json!({"kind": "slack", "name": "build", "source": source, "sample": "builtin:build.finished"}))
        .await;
    assert_eq!(invalid["problems"][0]["source"], "json", "{invalid}");
    assert_eq!(invalid["problems"][0]["line"], 3, "{invalid}");

    // Valid JSON Slack would shorten, and an envelope it would refuse.
    let long = format!(
        "{{\"text\": \"t\", \"blocks\": [{{\"type\": \"header\", \"text\": {{\"type\": \"plain_text\", \"text\": \"{}\"}}}}]}}",
        "h".repeat(200)
    );
    let limited = s
        .render(json!({"kind": "slack", "name": "build", "source": long, "sample": "builtin:build.finished"}))
        .await;
    let problems = limited["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["source"] == "limit"
            && p["message"]
                .as_str()
                .unwrap()
                .contains("200 characters, shortened to 150")),
        "{limited}"
    );
    assert_eq!(
        limited["body"]["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        150,
        "the preview shows what would be sent"
    );
    // A Teams card over Teams' size limit: its longest text is shortened, and said so.
    let huge_card = format!(
        "{{\"type\": \"message\", \"attachments\": [{{\"contentType\": \"application/vnd.microsoft.card.adaptive\", \"content\": {{\"type\": \"AdaptiveCard\", \"version\": \"1.4\", \"body\": [{{\"type\": \"TextBlock\", \"text\": \"{}\", \"wrap\": true}}]}}}}]}}",
        "t".repeat(60_000)
    );
    let teams_limited = s
        .render(json!({"kind": "teams", "name": "build", "source": huge_card, "sample": "builtin:build.finished"}))
        .await;
    let problems = teams_limited["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["source"] == "limit" && p["message"].as_str().unwrap().contains("shortened")),
        "{:.500}",
        teams_limited["problems"]
    );
    let sent = teams_limited["text"].as_str().unwrap().len();
    assert!(
        sent < 60_000,
        "the preview is what would be sent: {sent} bytes"
    );
    let shapeless = s
        .render(json!({"kind": "teams", "name": "build", "source": "{\"type\": \"message\"}", "sample": "builtin:build.finished"}))
        .await;
    assert_eq!(shapeless["problems"][0]["source"], "shape", "{shapeless}");

    // A pasted payload, with its event named beside it; and a partial seen through its template.
    let pasted = s
        .render(json!({"kind": "webhook", "name": "default", "payload": fixture_json("build.finished"), "event": "build.failing"}))
        .await;
    assert_eq!(pasted["body"]["type"], "build.failing", "{pasted}");
    assert_eq!(pasted["body"]["data"]["payload"]["build"]["number"], 1842);
    let partial = s
        .render(json!({"kind": "slack", "name": "_message", "source": "{\"text\": \"partial {{kb.title}}\", \"blocks\": []}", "sample": "builtin:build.finished"}))
        .await;
    assert_eq!(partial["template"], "build");
    assert_eq!(
        partial["body"]["text"], "partial ❌ Web App #1842 failed",
        "{partial}"
    );

    // A webhook envelope and a console text.
    let hook = s
        .render(json!({"kind": "webhook", "name": "default", "sample": "builtin:ping"}))
        .await;
    assert_eq!(hook["body"]["type"], "ping");
    let console = s
        .render(json!({"kind": "console", "name": "build", "sample": "builtin:build.finished"}))
        .await;
    assert!(console["body"].is_null());
    assert!(
        console["text"]
            .as_str()
            .unwrap()
            .starts_with("❌ Web App #1842 failed")
    );
}

#[tokio::test]
async fn hostile_templates_and_requests_get_clear_answers() {
    let s = studio_with(None, false, true).await;
    let render = |body: Value| s.post("/api/render", body);
    let sample = "builtin:build.finished";

    // Partials that come back to themselves, or do not exist: problems, not a crash.
    let (status, looped) = render(
        json!({"kind": "slack", "name": "_message", "source": "{{> build}}", "sample": sample}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        looped["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("includes itself"),
        "{looped}"
    );
    let (status, missing) = render(
        json!({"kind": "slack", "name": "build", "source": "{{> _nowhere}}", "sample": sample}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        missing["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("_nowhere"),
        "{missing}"
    );
    let (status, itself) = render(
        json!({"kind": "slack", "name": "build", "source": "{{> build}}", "sample": sample}),
    )
    .await;
    assert_eq!(status, 200, "{itself}");
    assert!(!itself["problems"].as_array().unwrap().is_empty());
    // A template that multiplies itself (the build's ~30 fields, four deep, a KiB each: some
    // 800 MB) stops at the output cap, as a problem.
    let source = format!(
        "{{{{#each build}}}}{{{{#each ../build}}}}{{{{#each ../../build}}}}{{{{#each ../../../build}}}}{}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}",
        "x".repeat(1024)
    );
    let (status, bomb) =
        render(json!({"kind": "console", "name": "build", "source": source, "sample": sample}))
            .await;
    assert_eq!(status, 200);
    assert!(
        bomb["body"].is_null() && bomb["text"] == "",
        "{:.300}",
        bomb.to_string()
    );
    let said = bomb["problems"][0]["message"].as_str().unwrap_or_default();
    assert!(said.contains("repeat itself"), "{said}");

    for (body, want) in [
        (
            json!({"kind": "email", "name": "build", "sample": sample}),
            400,
        ),
        (json!({"kind": "slack", "sample": sample}), 400),
        (
            json!({"kind": "slack", "name": "../etc/passwd", "sample": sample}),
            400,
        ),
        (json!({"kind": "slack", "name": "build"}), 400),
        (
            json!({"kind": "slack", "name": "build", "sample": "builtin:nope"}),
            404,
        ),
        (
            json!({"kind": "slack", "name": "build", "payload": [1, 2]}),
            422,
        ),
        (
            json!({"kind": "slack", "name": "build", "payload": {"no": "event"}}),
            422,
        ),
        (
            json!({"kind": "slack", "source": "x".repeat(300 * 1024), "sample": sample}),
            413,
        ),
        (json!({"kind": 7}), 422),
    ] {
        let (status, answer) = render(body.clone()).await;
        assert_eq!(status, want, "{body:.200}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let raw = s
        .client
        .post(s.url("/api/render"))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let huge = s
        .client
        .post(s.url("/api/render"))
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    // Other origins, other hosts.
    let foreign = s
        .client
        .get(s.url("/api/templates"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let rebound = s
        .client
        .get(s.url("/api/templates"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let cross = s
        .client
        .post(s.url("/api/render"))
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"kind": "slack", "name": "build", "sample": sample}))
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert_eq!(s.get("/api/nothing").await.0, 404);
}

#[tokio::test]
async fn saves_only_good_templates_only_inside_the_folder() {
    let s = studio_with(None, false, true).await;
    let good = "{{#> _message}}\n{\"type\": \"section\", \"text\": {\"type\": \"mrkdwn\", \"text\": \"Queue: {{build.meta_data.queue}}\"}}\n{{/_message}}";
    let token = s.running.token.clone();
    assert_eq!(
        s.put("/api/templates/slack/build", good, None).await.0,
        403,
        "no token"
    );
    assert_eq!(
        s.put("/api/templates/slack/build", good, Some("wrong"))
            .await
            .0,
        403
    );
    let (status, saved) = s
        .put("/api/templates/slack/build", good, Some(&token))
        .await;
    assert_eq!(status, 200, "{saved}");
    assert!(saved["message"].as_str().unwrap().contains("reload"));
    let file = s.templates().join("slack/build.hbs");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
    let (_, templates) = s.get("/api/templates").await;
    let build = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "slack" && t["name"] == "build")
        .unwrap()
        .clone();
    assert_eq!(build["overridden"], true);
    assert_eq!(build["source"], good);

    // Refused: broken, not rendering every sample validly, bad names, too big.
    let (status, broken) = s
        .put("/api/templates/slack/build", "{{#if}}", Some(&token))
        .await;
    assert_eq!(status, 422, "{broken}");
    assert!(broken["problems"][0]["line"].is_number());
    let (status, invalid) = s
        .put(
            "/api/templates/teams/build",
            "{\"type\": \"message\"}",
            Some(&token),
        )
        .await;
    assert_eq!(status, 422, "{invalid}");
    for name in ["..%2F..%2Fescape", ".hidden", "a%2Fb", "%2E%2E"] {
        let (status, answer) = s
            .put(&format!("/api/templates/slack/{name}"), good, Some(&token))
            .await;
        assert!(matches!(status, 400 | 404), "{name}: {status} {answer}");
    }
    assert_eq!(
        s.put("/api/templates/email/build", good, Some(&token))
            .await
            .0,
        400
    );
    let big = "x".repeat(300 * 1024);
    assert_eq!(
        s.put("/api/templates/console/big", &big, Some(&token))
            .await
            .0,
        413
    );
    let foreign = s
        .client
        .put(s.url("/api/templates/slack/build"))
        .header(TOKEN_HEADER, &token)
        .header("origin", "http://evil.example")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    // Only the one file was written, inside the folder.
    let written: Vec<PathBuf> = files_under(s.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with(s.dir.path().join("samples")))
        .filter(|p| p.file_name().unwrap() != "kitebridge.toml")
        .collect();
    assert_eq!(written, vec![file], "{written:?}");
    // It is what `check` now sees.
    let config = s.dir.path().join("kitebridge.toml");
    let checked = run_ok(&["check", "--config", config.to_str().unwrap()]).await;
    assert!(checked.contains("ok:"), "{checked}");
}

#[tokio::test]
async fn saving_needs_a_templates_folder_and_sending_needs_permission() {
    let s = studio_with(None, false, false).await;
    let token = s.running.token.clone();
    let (status, answer) = s
        .put("/api/templates/console/build", "{{kb.title}}", Some(&token))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("[templates] dir")
    );
    let (status, answer) = s
        .post(
            "/api/send",
            json!({"destination": "console", "sample": "builtin:ping"}),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("--allow-send"));
}

#[tokio::test]
async fn sends_the_current_rendering_when_allowed() {
    let rec = Recorder::start().await;
    let s = studio_with(Some(&rec), true, true).await;
    let source = "{\"edited\": true, \"event\": {{{json kb.event}}}}";
    let (status, answer) = s
        .post("/api/send", json!({"destination": "hook", "name": "default", "source": source, "sample": "builtin:build.finished"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "sent");
    assert_eq!(answer["status"], 200);
    let got = rec.wait_for("studio-hook", 1).await;
    assert_eq!(
        got[0].json(),
        json!({"edited": true, "event": "build.finished"})
    );
    rec.script("studio-hook", [Reply::Status(400, "no thanks")]);
    let (_, refused) = s
        .post(
            "/api/send",
            json!({"destination": "hook", "sample": "builtin:ping"}),
        )
        .await;
    assert_eq!(refused["outcome"], "permanent", "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("400"));
    let no_token = s
        .client
        .post(s.url("/api/send"))
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"destination": "hook", "sample": "builtin:ping"})).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 403);
    for (body, want) in [
        (
            json!({"destination": "nowhere", "sample": "builtin:ping"}),
            404,
        ),
        (json!({"destination": "off", "sample": "builtin:ping"}), 409),
    ] {
        assert_eq!(s.post("/api/send", body.clone()).await.0, want, "{body}");
    }

    let (status, explained) = s
        .post("/api/explain", json!({"sample": "builtin:build.finished"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(explained["routes"][0]["route"], "main failures");
    assert_eq!(explained["routes"][0]["matched"], true);
    let deliveries = explained["deliveries"].as_array().unwrap();
    let hook = deliveries
        .iter()
        .find(|d| d["destination"] == "hook")
        .unwrap();
    assert_eq!(hook["template"], "default");
    assert_eq!(hook["kind"], "webhook");
    let off = deliveries
        .iter()
        .find(|d| d["destination"] == "off")
        .unwrap();
    assert_eq!(off["enabled"], false);
    let (_, passed) = s
        .post(
            "/api/explain",
            json!({"sample": "builtin:build.finished.passed"}),
        )
        .await;
    assert_eq!(passed["routes"][0]["matched"], false, "{passed}");
}

#[tokio::test]
async fn the_page_carries_its_token_and_its_assets() {
    let s = studio_with(None, false, true).await;
    let page = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(&s.running.token), "the page holds the token");
    assert!(!html.contains("__KB_TOKEN__"));
    for asset in ["/assets/studio.js", "/assets/studio.css"] {
        let r = s.client.get(s.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
    }
    assert_eq!(
        s.client
            .get(s.url("/assets/../Cargo.toml"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn a_test_sent_to_a_slack_app_is_a_new_message_and_leaves_the_store_alone() {
    init_logs();
    let slack = crate::fake_slack::FakeSlack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kitebridge.db");
    let config = format!(
        r#"
[buildkite]
token = "{TOKEN}"

[delivery]
allowed_hosts = ["127.0.0.1"]

[destinations.live]
kind = "slack_app"
token = "{bot}"
channel = "C0TEST"
url = "{api}"
rate = 0

[[routes]]
name = "builds"
events = ["build.*"]
to = ["live"]
"#,
        bot = crate::fake_slack::FakeSlack::TOKEN,
        api = slack.api_url(),
    );
    let path = dir.path().join("kitebridge.toml");
    std::fs::write(&path, with_store(&config, &db)).unwrap();

    // `serve` posts build 1842's live message and keeps its id in the store.
    let app = TestApp::spawn(&std::fs::read_to_string(&path).unwrap()).await;
    assert_eq!(app.post_signed(&fixture("build.running")).await.0, 202);
    for _ in 0..200 {
        if !slack.calls("chat.postMessage").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(slack.calls("chat.postMessage").len(), 1, "the live message");
    let _ = app.stop().await;
    closed(&db).await;
    let before = std::fs::read(&db).unwrap();

    let running = studio_on(&path, true).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let answer: Value = client
            .post(format!("http://{}/api/send", running.addr))
            .header(TOKEN_HEADER, &running.token)
            .header("content-type", "application/json")
            .body(json!({"destination": "live", "sample": "builtin:build.finished"}).to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        assert_eq!(answer["outcome"], "sent", "{answer}");
    }
    running.task.abort();
    assert_eq!(
        slack.calls("chat.postMessage").len(),
        3,
        "each test is a message of its own"
    );
    assert!(
        slack.calls("chat.update").is_empty(),
        "a test never updates a build's live message"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the store is unchanged"
    );
}

#[tokio::test]
async fn a_save_refuses_partials_that_loop_or_are_missing_templates_that_explode_and_links_out() {
    let s = studio_with(None, false, true).await;
    let token = s.running.token.clone();
    let put = |path: &'static str, source: String| {
        let token = token.clone();
        let s = &s;
        async move { s.put(path, &source, Some(&token)).await }
    };
    let said = |answer: &Value| answer["problems"].to_string();

    let (status, missing) = put("/api/templates/slack/build", "{{> _nowhere}}".into()).await;
    assert_eq!(status, 422, "{missing}");
    assert!(said(&missing).contains("_nowhere"), "{missing}");
    // `_message` including `build`, which includes `_message`.
    let (status, looped) = put("/api/templates/slack/_message", "{{> build}}".into()).await;
    assert_eq!(status, 422, "{looped}");
    let (status, itself) = put("/api/templates/slack/build", "{{> build}}".into()).await;
    assert_eq!(status, 422, "{itself}");
    let bomb = format!(
        "{{{{#each build}}}}{{{{#each ../build}}}}{{{{#each ../../build}}}}{{{{#each ../../../build}}}}{}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}{{{{/each}}}}",
        "x".repeat(1024)
    );
    let (status, exploded) = put("/api/templates/console/build", bomb).await;
    assert_eq!(status, 422, "{exploded}");
    assert!(
        said(&exploded).contains("repeat itself"),
        "{:.300}",
        said(&exploded)
    );
    assert!(
        !s.templates().exists(),
        "nothing refused was written: {:?}",
        files_under(s.dir.path())
    );

    // A kind folder that is a link out of the templates folder: refused before anything is
    // made there.
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(s.templates()).unwrap();
    std::fs::create_dir(outside.path().join("teams")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("teams"), s.templates().join("teams")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("nowhere"), s.templates().join("slack"))
        .unwrap();
    let (_, templates) = s.get("/api/templates").await;
    let teams_build = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "teams" && t["name"] == "build")
        .unwrap()["source"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, answer) = put("/api/templates/teams/build", teams_build).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("outside the templates folder"),
        "{answer}"
    );
    let good = "{{#> _message}}\n{\"type\": \"divider\"}\n{{/_message}}";
    let (status, answer) = put("/api/templates/slack/build", good.into()).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("link to nowhere"),
        "{answer}"
    );
    assert!(!outside.path().join("nowhere").exists());
    // A link in the file's place is replaced by the file, and what it pointed at is untouched.
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::fs::create_dir_all(s.templates().join("console")).unwrap();
    let file = s.templates().join("console/build.hbs");
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    std::os::unix::fs::symlink(&victim, s.templates().join("console/.build.hbs.tmp")).unwrap();
    let (status, answer) = put("/api/templates/console/build", "{{kb.title}}".into()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!std::fs::symlink_metadata(&file).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{{kb.title}}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(
        files_under(outside.path()),
        vec![victim],
        "nothing written outside (the linked folder is still empty)"
    );
}
