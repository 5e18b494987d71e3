//! Alerts people act on: transitions, mentions, one live Slack message per build, digests and
//! mute windows.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

fn finished(number: u64, state: &str, blocked: bool) -> Vec<u8> {
    let mut v = fixture_json("build.finished");
    v["build"]["number"] = json!(number);
    v["build"]["state"] = json!(state);
    v["build"]["blocked"] = json!(blocked);
    serde_json::to_vec(&v).unwrap()
}

fn only_slack(rec: &Recorder, extra_route: &str) -> String {
    config_for(rec, "").replace(
        "[[routes]]\nname = \"everything\"\nevents = [\"*\"]\nto = [\"slack\", \"teams\"]\n",
        &format!("[[routes]]\n{extra_route}\n"),
    )
}

#[tokio::test]
async fn transitions_tell_broken_and_fixed_through_out_of_order_blocked_canceled_and_retried_builds()
 {
    let rec = Recorder::start().await;
    let toml = only_slack(
        &rec,
        "name = \"changes\"\nevents = [\"build.finished\"]\ntransitions = [\"broken\", \"fixed\"]\nto = [\"slack\"]\n\n\
         [[routes]]\nname = \"still\"\nevents = [\"build.finished\"]\ntransitions = [\"still_failing\"]\nto = [\"teams\"]",
    );
    let app = TestApp::spawn(&toml).await;
    let steps: [(u64, &str, bool, Option<&str>); 7] = [
        (10, "passed", false, Some("passing")),
        (11, "failed", false, Some("broken")),
        (13, "failed", false, Some("still_failing")), // arrives before 12
        (12, "passed", false, None),                  // older than 13: changes nothing
        (14, "passed", true, None),                   // blocked
        (15, "canceled", false, None),
        (13, "passed", false, Some("fixed")), // 13 again, its failed jobs retried
    ];
    for (n, state, blocked, want) in steps {
        let (status, answer) = app.post_signed(&finished(n, state, blocked)).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            answer["transition"].as_str(),
            want,
            "build {n} {state} blocked={blocked}: {answer}"
        );
    }
    let slack = rec.wait_for("slack", 2).await;
    let titles: Vec<String> = slack
        .iter()
        .map(|m| m.json()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, ["❌ Web App #11 failed", "🔧 Web App #13 fixed"]);
    let teams = rec.wait_for("teams", 1).await;
    let title = &teams[0].json()["attachments"][0]["content"]["body"][0]["items"][0]["text"];
    assert_eq!(title, "❌ Web App #13 is still failing (2 in a row)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.received().len(), 3, "nothing else");
}

#[tokio::test]
async fn transitions_live_in_the_store_across_restarts() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = with_store(
        &only_slack(
            &rec,
            "name = \"fixed\"\ntransitions = [\"fixed\"]\nto = [\"slack\"]",
        ),
        &dir.path().join("k.db"),
    );
    let app = TestApp::spawn(&toml).await;
    app.post_signed(&finished(20, "failed", false)).await;
    app.stop().await;
    let again = TestApp::spawn(&toml).await;
    let (_, answer) = again.post_signed(&finished(21, "passed", false)).await;
    assert_eq!(answer["transition"], "fixed");
    assert_eq!(
        rec.wait_for("slack", 1).await[0].json()["text"],
        "🔧 Web App #21 fixed"
    );
}

/// Routes in Buildkite's own language: every fixture is posted, and only the events the
/// expressions pick reach the destinations.
#[tokio::test]
async fn routes_with_if_expressions_pick_exactly_their_events() {
    let rec = Recorder::start().await;
    let toml = only_slack(
        &rec,
        "name = \"main failures\"\nif = 'build.state == \"failed\" && build.branch == pipeline.default_branch'\nto = [\"slack\"]\n\n\
         [[routes]]\nname = \"failed jobs\"\nif = \"event == 'job.finished' && job.exit_status != 0\"\nto = [\"teams\"]",
    );
    let app = TestApp::spawn(&toml).await;
    for (name, body) in fixtures() {
        let (status, _) = app.post_signed(&body).await;
        assert!(status == 200 || status == 202, "{name}: {status}");
    }
    let slack = rec.wait_for("slack", 1).await;
    let teams = rec.wait_for("teams", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rec.received_on("slack").len(),
        1,
        "only the failed build on main"
    );
    assert!(
        slack[0].json()["text"].as_str().unwrap().contains("#1842"),
        "{:?}",
        slack[0].json()
    );
    assert_eq!(
        rec.received_on("teams").len(),
        1,
        "only the job that failed"
    );
    let card = teams[0].json().to_string();
    assert!(card.contains("exit") || card.contains("failed"), "{card}");
}

const PEOPLE: &str = r#"
[[people]]
name = "Maria López"
emails = ["maria.lopez@acme.example"]
buildkite = ["mlopez"]
slack = "U024BE7LH"
teams = "maria.lopez@acme.example"
"#;

#[tokio::test]
async fn a_mapped_author_is_mentioned_in_slack_and_teams_and_an_unmapped_one_is_not() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&format!("{}{PEOPLE}", config_for(&rec, ""))).await;
    app.post_signed(&fixture("build.finished")).await;
    let mut stranger = fixture_json("build.finished");
    stranger["build"]["number"] = json!(1900);
    stranger["build"]["author"] =
        json!({"username": "ghost", "name": "Casper <@U999>", "email": "ghost@elsewhere.example"});
    stranger["build"]["creator"] = json!(null);
    app.post_signed(&serde_json::to_vec(&stranger).unwrap())
        .await;

    let slack = rec.wait_for("slack", 2).await;
    let mapped = strings(&slack[0].json()).join("\n");
    assert!(mapped.contains("*Author*\n<@U024BE7LH>"), "{mapped}");
    let unmapped = strings(&slack[1].json()).join("\n");
    assert!(
        unmapped.contains("*Author*\nCasper &lt;@U999&gt;"),
        "{unmapped}"
    );
    assert!(!unmapped.contains("<@"), "no mention from payload text");

    // Teams sends two at a time (`concurrency = 2`), so the cards may come in either order.
    let teams = rec.wait_for("teams", 2).await;
    let card = |m: &Received| m.json()["attachments"][0]["content"].clone();
    let (strangers, known): (Vec<Value>, Vec<Value>) = teams
        .iter()
        .map(card)
        .partition(|c| c.to_string().contains("#1900"));
    let (mapped, unmapped) = (known[0].clone(), strangers[0].clone());
    assert!(
        strings(&mapped)
            .iter()
            .any(|s| s == "by <at>Maria López</at>"),
        "{mapped}"
    );
    assert_eq!(
        mapped["msteams"]["entities"],
        json!([{"type": "mention", "text": "<at>Maria López</at>",
                "mentioned": {"id": "maria.lopez@acme.example", "name": "Maria López"}}])
    );
    assert!(unmapped["msteams"].get("entities").is_none(), "{unmapped}");
    assert!(!unmapped.to_string().contains("<at>"));
    let validator = card_validator();
    for m in &teams {
        assert!(card_errors(&validator, &m.json()).is_empty());
    }
}

#[tokio::test]
async fn five_job_failures_within_the_window_give_one_message_even_across_a_restart() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = with_store(
        &only_slack(
            &rec,
            "name = \"failed jobs\"\nevents = [\"job.finished\"]\nstates = [\"failed\"]\nto = [\"slack\"]\ngroup_window = \"6s\"\ngroup_by = [\"build.id\"]",
        ),
        &dir.path().join("k.db"),
    );
    let app = TestApp::spawn(&toml).await;
    let started = std::time::Instant::now();
    for n in 1..=3 {
        assert_eq!(app.post_signed(&failed_job(n)).await.0, 202);
    }
    app.stop().await;
    let again = TestApp::spawn(&toml).await;
    for n in 4..=5 {
        assert_eq!(again.post_signed(&failed_job(n)).await.0, 202);
    }
    assert_one_digest_of_five_shards(&rec).await;
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "held for the window"
    );
}

fn window_around_now(seconds_left: i64, action: &str) -> String {
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::seconds(60)).format("%H:%M:%S");
    let to = (now + chrono::Duration::seconds(seconds_left)).format("%H:%M:%S");
    format!(
        "[[mute]]\nname = \"quiet\"\nfrom = \"{from}\"\nto = \"{to}\"\ntimezone = \"UTC\"\naction = \"{action}\"\n"
    )
}

#[tokio::test]
async fn a_muted_route_holds_its_message_until_the_window_ends() {
    let rec = Recorder::start().await;
    let toml = format!(
        "{}{}",
        only_slack(
            &rec,
            "name = \"quiet\"\nto = [\"slack\"]\nmute = [\"quiet\"]"
        ),
        // Long enough that a slow start and post still leave more than the second checked.
        window_around_now(6, "hold")
    );
    let app = TestApp::spawn(&toml).await;
    let sent = std::time::Instant::now();
    let (_, answer) = app.post_signed(&finished(1, "failed", false)).await;
    assert_eq!(
        answer["muted"],
        json!({"held": 1, "dropped": 0}),
        "{answer}"
    );
    // render, during the window, says the message would be held, and until when.
    let text = render_text(&toml);
    assert!(
        text.contains("route \"quiet\" → slack: muted by \"quiet\": held until ")
            && text.contains(" UTC"),
        "{text}"
    );
    let got = rec.wait_for("slack", 1).await;
    assert_eq!(got.len(), 1, "released");
    assert!(
        got[0].at - sent >= Duration::from_secs(1),
        "held, not sent at once"
    );
}

/// What `kitebridge render` prints for build.finished under the config `toml`.
fn render_text(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(&cfg, toml).unwrap();
    let payload = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/buildkite/build.finished.json"
    );
    let out = kitebridge(&[
        "render",
        "--config",
        cfg.to_str().unwrap(),
        "--payload",
        payload,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_dropping_mute_sends_nothing_and_render_says_so() {
    let rec = Recorder::start().await;
    let toml = format!(
        "{}{}",
        only_slack(
            &rec,
            "name = \"quiet\"\nto = [\"slack\"]\nmute = [\"quiet\"]"
        ),
        window_around_now(600, "drop")
    );
    let app = TestApp::spawn(&toml).await;
    let (_, answer) = app.post_signed(&finished(1, "failed", false)).await;
    assert_eq!(answer["muted"], json!({"held": 0, "dropped": 1}));
    assert_eq!(answer["deliveries"], 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rec.received().is_empty());

    let text = render_text(&toml);
    assert!(
        text.contains("route \"quiet\" → slack: muted by \"quiet\": dropped"),
        "{text}"
    );
}

/// Serves the Slack Web API paths of the recorder under `api/`.
fn slack_app_config(rec: &Recorder, storage: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[buildkite]
token = "{TOKEN}"

[storage]
path = "{db}"

[delivery]
backoff_initial = "100ms"
backoff_max = "500ms"
allowed_hosts = ["127.0.0.1"]

[destinations.live]
kind = "slack_app"
token = "xoxb-test-token"
channel = "C0TEST"
url = "{api}"
rate = 0

[[routes]]
name = "builds"
events = ["build.*"]
to = ["live"]

[[routes]]
name = "failed jobs"
events = ["job.finished"]
states = ["failed"]
to = ["live"]
"#,
        db = storage.display(),
        api = rec.url("api"),
    )
}

fn calls(rec: &Recorder) -> Vec<(String, Value)> {
    rec.received()
        .iter()
        .filter(|r| r.path.starts_with("api/"))
        .map(|r| (r.path.trim_start_matches("api/").to_string(), r.json()))
        .collect()
}

async fn wait_calls(rec: &Recorder, n: usize) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = calls(rec);
        if c.len() >= n || tokio::time::Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_slack_message_per_build_updated_in_place_with_failed_jobs_in_its_thread_across_a_restart()
 {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(&cfg, slack_app_config(&rec, &dir.path().join("k.db"))).unwrap();

    let mut first = start_binary(&cfg).await;
    assert_eq!(
        post_signed_to(first.addr, &fixture("build.scheduled"))
            .await
            .unwrap(),
        202
    );
    assert_eq!(wait_calls(&rec, 1).await.len(), 1);
    assert_eq!(
        post_signed_to(first.addr, &fixture("build.running"))
            .await
            .unwrap(),
        202
    );
    assert_eq!(wait_calls(&rec, 2).await.len(), 2);
    // A clean stop, so the second update is recorded as sent (killed before that, it is sent
    // again after the restart: at least once).
    first.signal("TERM");
    first.child.wait().await.unwrap();

    let second = start_binary(&cfg).await;
    let mut job2 = fixture_json("job.finished");
    job2["job"]["id"] = json!("job-2");
    let events = [
        fixture("build.failing"),
        fixture("job.finished"),
        serde_json::to_vec(&job2).unwrap(),
        fixture("build.finished"),
        fixture("build.finished.passed"),
    ];
    for body in events {
        // One at a time, as Buildkite sends a build's events over minutes. Counted before the
        // post: its call may arrive before the answer does.
        let before = calls(&rec).len();
        assert_eq!(post_signed_to(second.addr, &body).await.unwrap(), 202);
        assert_eq!(wait_calls(&rec, before + 1).await.len(), before + 1);
    }
    let calls = calls(&rec);
    let methods: Vec<&str> = calls.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        [
            "chat.postMessage",
            "chat.update",
            "chat.update",
            "chat.postMessage",
            "chat.postMessage",
            "chat.update",
            "chat.update"
        ]
    );
    let ts = "1700000000.000001";
    for (method, body) in &calls {
        assert_eq!(body["channel"], "C0TEST");
        match method.as_str() {
            "chat.update" => assert_eq!(body["ts"], ts, "updates go to the first message"),
            _ if body.get("thread_ts").is_some() => assert_eq!(body["thread_ts"], ts),
            _ => {}
        }
    }
    assert!(
        calls[0].1.get("thread_ts").is_none(),
        "the build's message is top-level"
    );
    assert_eq!(calls[3].1["thread_ts"], ts, "a failed job is a reply");
    assert_eq!(calls[4].1["thread_ts"], ts);
    assert_eq!(
        calls[6].1["text"], "🔧 Web App #1842 fixed",
        "the message shows the latest state"
    );
    let auth = rec
        .received()
        .iter()
        .filter(|r| r.path.starts_with("api/"))
        .all(|r| r.headers["authorization"] == "Bearer xoxb-test-token");
    assert!(auth, "the bot token goes in the Authorization header");
}

#[tokio::test]
async fn slack_web_api_errors_at_http_200_are_classified() {
    let rec = Recorder::start().await;
    let gone = Reply::Json(200, r#"{"ok":false,"error":"message_not_found"}"#);
    rec.script("api/chat.update", [gone.clone(), gone]);
    rec.script(
        "api/chat.postMessage",
        [
            Reply::Json(200, r#"{"ok":true,"ts":"1.000001"}"#),
            Reply::Json(200, r#"{"ok":false,"error":"ratelimited"}"#),
            Reply::Json(200, r#"{"ok":true,"ts":"1.000002"}"#),
            Reply::Json(200, r#"{"ok":false,"error":"channel_not_found"}"#),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let toml = slack_app_config(&rec, &dir.path().join("k.db"))
        .replace("[server]\nlisten = \"127.0.0.1:0\"\n", "");
    let app = TestApp::spawn(&toml).await;
    // Posted as 1.000001. The update finds it deleted, so it is posted anew; that post is
    // rate limited and retried; the retry finds the message still gone and posts 1.000002.
    app.post_signed(&fixture("build.scheduled")).await;
    wait_calls(&rec, 1).await;
    app.post_signed(&fixture("build.running")).await;
    let got = wait_calls(&rec, 5).await;
    let methods: Vec<&str> = got.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        [
            "chat.postMessage",
            "chat.update",
            "chat.postMessage",
            "chat.update",
            "chat.postMessage"
        ]
    );
    // Later updates go to the new message.
    app.post_signed(&fixture("build.failing")).await;
    let got = wait_calls(&rec, 6).await;
    assert_eq!(
        (got[5].0.as_str(), &got[5].1["ts"]),
        ("chat.update", &json!("1.000002"))
    );
    // Another build's message is refused for good: a dead letter with the API's reason.
    let mut other = fixture_json("build.scheduled");
    other["build"]["number"] = json!(77);
    app.post_signed(&serde_json::to_vec(&other).unwrap()).await;
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter()
            .any(|d| d.state == kitebridge::store::DeliveryState::Dead)
    })
    .await;
    let dead: Vec<_> = all
        .iter()
        .filter(|d| d.state == kitebridge::store::DeliveryState::Dead)
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("slack: channel_not_found")
    );
    let running = all
        .iter()
        .find(|d| d.event_name == "build.running")
        .unwrap();
    assert_eq!(
        (running.state, running.attempts),
        (kitebridge::store::DeliveryState::Sent, 2),
        "ratelimited was retried"
    );
}

#[tokio::test]
async fn a_failed_job_before_any_build_message_creates_the_build_message_and_replies_in_its_thread()
{
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Only failing and finished builds: Buildkite sends the failed job before build.failing.
    let toml = slack_app_config(&rec, &dir.path().join("k.db"))
        .replace("[server]\nlisten = \"127.0.0.1:0\"\n", "")
        .replace(
            "events = [\"build.*\"]",
            "events = [\"build.failing\", \"build.finished\"]",
        );
    let app = TestApp::spawn(&toml).await;
    app.post_signed(&fixture("job.finished")).await;
    let got = wait_calls(&rec, 2).await;
    assert_eq!(got[0].0, "chat.postMessage");
    assert!(got[0].1.get("thread_ts").is_none());
    assert_eq!(
        got[0].1["text"], "🟠 Web App #1842 is failing",
        "the build's message, from the job's copy"
    );
    assert_eq!(got[1].0, "chat.postMessage");
    assert_eq!(
        got[1].1["thread_ts"], "1700000000.000001",
        "the job is a reply"
    );
    app.post_signed(&fixture("build.failing")).await;
    let got = wait_calls(&rec, 3).await;
    assert_eq!(
        (got[2].0.as_str(), &got[2].1["ts"]),
        ("chat.update", &json!("1700000000.000001"))
    );
}

#[tokio::test]
async fn a_late_event_about_an_earlier_step_never_undoes_the_finished_state() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = slack_app_config(&rec, &dir.path().join("k.db"))
        .replace("[server]\nlisten = \"127.0.0.1:0\"\n", "");
    let store = FaultyStore::new(open_store(&dir.path().join("k.db")));
    // The store refuses to keep message ids: the process remembers them itself.
    store
        .refuse_message_refs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let config =
        kitebridge::config::Config::parse(std::path::Path::new("t.toml"), &toml, |_| None).unwrap();
    let service = kitebridge::server::Service::start_with_store(config, std::sync::Arc::new(store))
        .await
        .unwrap();
    let app = TestApp::serve(service, dir.path().join("k.db"), None).await;
    app.post_signed(&fixture("build.finished")).await;
    wait_calls(&rec, 1).await;
    app.post_signed(&fixture("build.failing")).await; // late: the build already finished
    app.post_signed(&fixture("build.finished.passed")).await;
    let got = wait_calls(&rec, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = calls(&rec);
    assert_eq!(got_all.len(), 2, "{got_all:?}");
    assert_eq!(got[0].0, "chat.postMessage");
    assert_eq!(
        (got[1].0.as_str(), got[1].1["text"].as_str()),
        ("chat.update", Some("🔧 Web App #1842 fixed"))
    );
}
