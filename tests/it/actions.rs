//! Buttons that act, end to end: the real service, with Slack, Teams, Buildkite's API and a
//! sign-in provider played by local servers.

use crate::fake_buildkite::{BkReply, FakeBuildkite};
use crate::fake_oidc::FakeOidc;
use crate::fake_slack::FakeSlack;
use crate::helpers::*;
use hmac::{Hmac, KeyInit, Mac};
use kitebridge::actions::Action;
use kitebridge::actions::token::{self, Grant};
use kitebridge::secret::Secret;
use kitebridge::store::Presses;
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::{Duration, Instant};

const KEY: &str = "test-action-signing-key-0123456789abcdef";
const SLACK_SECRET: &str = "slack-signing-secret-for-tests";
const TEAM: &str = "T0ACME";
const MARIA: &str = "U024BE7LH";

/// reqwest is built without its `form` feature.
trait FormBody {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).unwrap())
    }
}

struct World {
    rec: Recorder,
    bk: FakeBuildkite,
    slack: FakeSlack,
    oidc: FakeOidc,
    app: TestApp,
    /// The config, for a second replica.
    toml: String,
}

fn user(id: &str, name: &str, email: &str) -> Value {
    json!({"id": id, "team_id": TEAM, "name": name.to_lowercase(), "real_name": name,
        "tz": "UTC", "is_bot": false, "deleted": false,
        "profile": {"email": email, "real_name": name, "display_name": name}})
}

async fn world() -> World {
    world_to(r#"["slack", "teams"]"#).await
}

/// A world whose route sends to `to` (`slack`, `teams`, or `live`: a Slack app on the fake).
async fn world_to(to: &str) -> World {
    world_on(to, "").await
}

/// A world whose config ends with `storage` (a `[storage]` table, or nothing for a
/// temporary SQLite store).
async fn world_on(to: &str, storage: &str) -> World {
    let rec = Recorder::start().await;
    let bk = FakeBuildkite::start().await;
    let slack = FakeSlack::start().await;
    let oidc = FakeOidc::start("kitebridge-client").await;
    slack.set_user(user(MARIA, "Maria López", "maria@acme.example"));
    slack.set_user(user("U0GROUP", "Gus Group", "gus@elsewhere.example"));
    slack.set_user(user("U0OUT", "Otto Outsider", "otto@elsewhere.example"));
    let mut bot = user("U0BOT", "Deploy Bot", "bot@acme.example");
    bot["is_bot"] = json!(true);
    slack.set_user(bot);
    slack.set_usergroup("S0614TZR7", &["U0GROUP"]);
    let toml = format!(
        r#"
[buildkite]
token = "{TOKEN}"

[delivery]
backoff_initial = "100ms"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "{slack_url}"
rate = 0

[destinations.teams]
kind = "teams"
url = "{teams_url}"
rate = 0

[destinations.live]
kind = "slack_app"
url = "{slack_api}"
token = "xoxb-live-app-token"
channel = "C0ALERTS"

[[routes]]
name = "failures"
events = ["build.*", "job.finished"]
to = {to}
buttons = ["retry_failed", "rebuild", "unblock", "cancel"]

[actions]
signing_key = "{KEY}"
ttl = "1h"
public_url = "https://alerts.example"

[actions.buildkite]
org = "acme"
token = "{bk_token}"
api_url = "{bk_url}"

[actions.slack]
signing_secret = "{SLACK_SECRET}"
token = "xoxb-fake-slack-token"
api_url = "{slack_api}"

[actions.oidc]
issuer = "{issuer}"
client_id = "kitebridge-client"
client_secret = "{oidc_secret}"

[[actions.policies]]
pipelines = ["web-*"]
branches = ["main"]
allow = ["retry_failed", "rebuild", "unblock", "cancel"]
slack_users = ["{MARIA}"]
slack_usergroups = ["S0614TZR7"]
email_domains = ["acme.example"]
"#,
        slack_url = rec.url("slack"),
        teams_url = rec.url("teams"),
        bk_token = FakeBuildkite::TOKEN,
        bk_url = bk.url(),
        slack_api = slack.api_url(),
        issuer = oidc.issuer(),
        oidc_secret = oidc.secret(),
    );
    let toml = format!("{toml}\n{storage}\n");
    let app = TestApp::spawn(&toml).await;
    World {
        rec,
        bk,
        slack,
        oidc,
        app,
        toml,
    }
}

/// The Slack message posted for a failed build, and its buttons by action id.
async fn slack_message(w: &World) -> Value {
    let (status, _) = w.app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202);
    let got = w.rec.wait_for("slack", 1).await;
    serde_json::from_slice(&got[0].body).unwrap()
}

/// The `value` of the element whose `action_id` is `id`, anywhere in `v`.
fn button(v: &Value, id: &str) -> String {
    match v {
        Value::Object(m) if m.get("action_id").and_then(Value::as_str) == Some(id) => {
            m["value"].as_str().unwrap().to_string()
        }
        Value::Object(m) => m
            .values()
            .map(|x| button(x, id))
            .find(|s| !s.is_empty())
            .unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .map(|x| button(x, id))
            .find(|s| !s.is_empty())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn slack_signature(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn interaction(
    w: &World,
    user: &str,
    message: &Value,
    action_id: &str,
    value: &str,
) -> (String, String) {
    let response_url = w.slack.response_url();
    let payload = json!({
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "acme"},
        "user": {"id": user, "username": user, "name": user, "team_id": TEAM},
        "api_app_id": "A0KB",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0ALERTS"},
        "channel": {"id": "C0ALERTS", "name": "alerts"},
        "message": message,
        "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value,
            "action_ts": "1700000001.000200"}]
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    (body, response_url)
}

async fn press(w: &World, body: &str, secret: &str, ts: i64) -> (u16, Duration) {
    press_at(&w.app, body, secret, ts).await
}

/// Posts an interaction to one replica, signed with `secret` at `ts`; the answer's status and
/// how long it took.
async fn press_at(app: &TestApp, body: &str, secret: &str, ts: i64) -> (u16, Duration) {
    let started = Instant::now();
    let resp = app
        .client
        .post(app.url("/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", slack_signature(secret, ts, body))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), started.elapsed())
}

/// Waits until `f` holds (or 10 s pass) and returns its last value.
async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The bodies posted to one `response_url`.
fn answers(w: &World, response_url: &str) -> Vec<Value> {
    let n = response_url.rsplit('/').next().unwrap();
    w.slack
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/respond/{n}"))
        .map(|r| r.json())
        .collect()
}

async fn presses(w: &World) -> Vec<kitebridge::store::Press> {
    open_store(&w.app.db).presses(50).await.unwrap()
}

fn grant(action: Action, pipeline: &str, expires: i64) -> Grant {
    Grant {
        action,
        org: "acme".into(),
        pipeline: pipeline.into(),
        build: 1842,
        job: None,
        branch: "main".into(),
        route: "failures".into(),
        destination: "slack".into(),
        expires,
        nonce: format!("test-nonce-{pipeline}-{expires}"),
    }
}

#[tokio::test]
async fn a_valid_press_acts_once_and_updates_the_message() {
    let w = world().await;
    let message = slack_message(&w).await;
    let rebuild = button(&message, "kb:rebuild");
    assert!(rebuild.starts_with("kb1."), "{message}");
    assert!(!button(&message, "kb:retry_failed").is_empty());
    assert!(
        button(&message, "kb:cancel").is_empty(),
        "a finished build shows no cancel"
    );

    let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
    let update = eventually(|| answers(&w, &url).into_iter().next()).await;
    assert_eq!(w.bk.puts("/builds/1842/rebuild"), 1);
    assert_eq!(update["replace_original"], true);
    let text = update.to_string();
    assert!(text.contains("Rebuilt by Maria López at "), "{text}");
    assert!(text.contains("rebuilt as #1843"), "{text}");
    assert!(
        !text.contains("kb:rebuild"),
        "the used button is gone: {text}"
    );
    assert!(
        text.contains("kb:retry_failed"),
        "the other button stays: {text}"
    );

    // Pressed again (a double click, a second channel): told who did it, nothing more.
    let (again, url2) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &again, SLACK_SECRET, now()).await.0, 200);
    let told = eventually(|| answers(&w, &url2).into_iter().next()).await;
    assert_eq!(told["response_type"], "ephemeral");
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("Already rebuilt by Maria López"),
        "{told}"
    );
    assert_eq!(w.bk.puts("/builds/1842/rebuild"), 1);

    let rows = presses_at_least(&w, 2).await;
    let outcomes: Vec<&str> = rows.iter().map(|p| p.outcome.as_str()).collect();
    assert_eq!(outcomes, ["duplicate", "done"]);
    assert_eq!(rows[1].presser, MARIA);
    assert_eq!(rows[1].presser_name.as_deref(), Some("Maria López"));
    assert_eq!(rows[1].target, "acme/web-app#1842");
    assert_eq!(
        (rows[1].route.as_str(), rows[1].channel.as_str()),
        ("failures", "slack")
    );
    let metrics = w
        .app
        .client
        .get(w.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"kitebridge_actions_total{action="rebuild",outcome="done"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kitebridge_actions_total{action="rebuild",outcome="duplicate"} 1"#)
    );

    // The operator's view of the audit.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("audit.toml");
    std::fs::write(
        &cfg,
        format!(
            "[buildkite]\ntoken = \"t\"\n[storage]\npath = \"{}\"\n[destinations.c]\nkind = \"console\"\n[[routes]]\nname = \"a\"\nto = [\"c\"]\n",
            w.app.db.display()
        ),
    )
    .unwrap();
    let out = kitebridge(&["actions", "list", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines[1].contains("rebuild") && lines[1].contains("duplicate"),
        "{listing}"
    );
    assert!(
        lines[2].contains("done") && lines[2].contains("Maria López (U024BE7LH)"),
        "{listing}"
    );
    assert!(
        lines[2].contains("acme/web-app#1842") && lines[2].contains("rebuilt as #1843"),
        "{listing}"
    );
}

/// The audit rows, once there are at least `n` (they are written after the answer).
async fn presses_at_least(w: &World, n: usize) -> Vec<kitebridge::store::Press> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = presses(w).await;
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn bad_or_stale_signatures_are_refused_and_change_nothing() {
    let w = world().await;
    let message = slack_message(&w).await;
    let rebuild = button(&message, "kb:rebuild");
    let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &body, "not-the-secret", now()).await.0, 401);
    assert_eq!(press(&w, &body, SLACK_SECRET, now() - 600).await.0, 401);
    let unsigned = w
        .app
        .client
        .post(w.app.url("/slack/interactions"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.bk.requests().is_empty());
    assert!(w.slack.calls("users.info").is_empty());
    assert!(answers(&w, &url).is_empty());
}

#[tokio::test]
async fn forged_expired_and_tampered_tokens_do_not_act() {
    let w = world().await;
    let message = slack_message(&w).await;
    let real = button(&message, "kb:rebuild");
    let far = now() + 3600;
    let forged = token::sign(
        &grant(Action::Rebuild, "web-app", far),
        &Secret::new("another-key-another-key-another-key!"),
    );
    let expired = token::sign(
        &grant(Action::Rebuild, "web-app", now() - 10),
        &Secret::new(KEY),
    );
    // The signed part changed (rebuild → cancel) under the old signature.
    let (signed, tag) = real.rsplit_once('.').unwrap();
    let tampered_json = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &signed[4..],
        )
        .unwrap(),
    )
    .unwrap()
    .replace("\"rebuild\"", "\"cancel\"");
    let tampered = format!(
        "kb1.{}.{tag}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            tampered_json
        )
    );
    for (value, expect) in [
        (forged, "signature"),
        (expired, "expired"),
        (tampered, "signature"),
    ] {
        let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &value);
        assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
        let told = eventually(|| answers(&w, &url).into_iter().next()).await;
        assert_eq!(told["response_type"], "ephemeral");
        let text = told["text"].as_str().unwrap();
        assert!(
            text.contains("does not act") && text.contains(expect),
            "{text}"
        );
    }
    assert!(w.bk.requests().is_empty());
    let rows = presses_at_least(&w, 3).await;
    let mut outcomes: Vec<&str> = rows.iter().map(|p| p.outcome.as_str()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["expired", "forged", "forged"]);
}

#[tokio::test]
async fn people_and_pipelines_outside_every_policy_are_refused() {
    let w = world().await;
    let message = slack_message(&w).await;
    let other_pipeline = token::sign(
        &grant(Action::Rebuild, "api", now() + 600),
        &Secret::new(KEY),
    );
    let rebuild = button(&message, "kb:rebuild");
    for (user, value, expect) in [
        (
            MARIA,
            other_pipeline.as_str(),
            "no policy allows rebuild on api",
        ),
        ("U0OUT", rebuild.as_str(), "Otto Outsider is not allowed"),
        ("U0BOT", rebuild.as_str(), "bots cannot press buttons"),
        ("U0NOBODY", rebuild.as_str(), "Could not check who you are"),
    ] {
        let (body, url) = interaction(&w, user, &message, "kb:rebuild", value);
        assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
        let told = eventually(|| answers(&w, &url).into_iter().next()).await;
        assert_eq!(told["response_type"], "ephemeral", "{told}");
        assert!(told["text"].as_str().unwrap().contains(expect), "{told}");
    }
    assert!(w.bk.requests().is_empty(), "nothing reached Buildkite");
}

#[tokio::test]
async fn two_people_pressing_at_once_make_one_api_call() {
    let w = world().await;
    let message = slack_message(&w).await;
    let rebuild = button(&message, "kb:rebuild");
    // Gus is admitted by his user group, Maria by her id.
    let (a, url_a) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    let (b, url_b) = interaction(&w, "U0GROUP", &message, "kb:rebuild", &rebuild);
    let (ra, rb) = tokio::join!(
        press(&w, &a, SLACK_SECRET, now()),
        press(&w, &b, SLACK_SECRET, now())
    );
    assert_eq!((ra.0, rb.0), (200, 200));
    let first = eventually(|| answers(&w, &url_a).into_iter().next()).await;
    let second = eventually(|| answers(&w, &url_b).into_iter().next()).await;
    assert_eq!(w.bk.puts("/rebuild"), 1);
    let texts = [first.to_string(), second.to_string()];
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("replace_original\":true"))
            .count(),
        1,
        "{texts:?}"
    );
    let loser = texts
        .iter()
        .find(|t| t.contains("Already rebuilt by"))
        .expect("the loser is told");
    assert!(
        loser.contains("Maria López") || loser.contains("Gus Group"),
        "{loser}"
    );
}

#[tokio::test]
async fn slack_gets_its_answer_quickly_while_buildkite_is_slow() {
    let w = world().await;
    let message = slack_message(&w).await;
    w.bk.script("/rebuild", BkReply::Slow(Duration::from_secs(5)));
    let rebuild = button(&message, "kb:rebuild");
    let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    let (status, took) = press(&w, &body, SLACK_SECRET, now()).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(
        answers(&w, &url).is_empty(),
        "the work runs after the answer"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while answers(&w, &url).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answers(&w, &url)[0]
            .to_string()
            .contains("Rebuilt by Maria López")
    );
}

#[tokio::test]
async fn a_refusal_is_shown_to_the_presser_and_leaves_the_message() {
    let w = world().await;
    let message = slack_message(&w).await;
    w.bk.script(
        "/rebuild",
        BkReply::Status(422, json!({"message": "Build not rebuildable"})),
    );
    let rebuild = button(&message, "kb:rebuild");
    let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
    let told = eventually(|| answers(&w, &url).into_iter().next()).await;
    assert_eq!(told["response_type"], "ephemeral");
    assert_eq!(told["replace_original"], false);
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("Build not rebuildable"),
        "{told}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        answers(&w, &url).len(),
        1,
        "the message itself is not replaced"
    );
    // Nothing happened, so the button still works.
    let (again, url2) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &again, SLACK_SECRET, now()).await.0, 200);
    let update = eventually(|| answers(&w, &url2).into_iter().next()).await;
    assert_eq!(update["replace_original"], true, "{update}");
    assert_eq!(w.bk.puts("/rebuild"), 2);
}

/// The cookie `name` from a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// Opens the button page signed in, and sends its confirm form back as it is.
async fn confirm_on_page(
    w: &World,
    browser: &reqwest::Client,
    path: &str,
    cookie: &str,
) -> reqwest::Response {
    let html = browser
        .get(w.app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split("name=csrf value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no confirm form in {html}"))
        .split('"')
        .next()
        .unwrap()
        .to_string();
    browser
        .post(w.app.url(path))
        .header("cookie", cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

/// Starts a sign-in for the button page `path`: the login cookie and the provider's
/// authorize URL.
async fn start_sign_in(w: &World, browser: &reqwest::Client, path: &str) -> (String, String) {
    let login = browser
        .get(w.app.url(&format!("/actions/login?next={path}")))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let pending = set_cookie(&login, "kb_login").expect("a login cookie");
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    (pending, authorize)
}

/// Plays the provider and comes back to the callback: the session cookie, after a redirect
/// back to `path`.
async fn finish_sign_in(
    w: &World,
    browser: &reqwest::Client,
    path: &str,
    pending: &str,
    authorize: &str,
) -> String {
    let code = w.oidc.authorize(authorize).await;
    let state = reqwest::Url::parse(authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let back = browser
        .get(
            w.app
                .url(&format!("/actions/callback?code={code}&state={state}")),
        )
        .header("cookie", format!("kb_login={pending}"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303, "{:?}", back.text().await);
    assert_eq!(back.headers()["location"], path);
    format!(
        "kb_session={}",
        set_cookie(&back, "kb_session").expect("a session cookie")
    )
}

#[tokio::test]
async fn teams_links_confirm_sign_in_and_act_once() {
    let w = world().await;
    w.oidc.sign_in_as("dana@acme.example", "Dana Ops");
    let (status, _) = w.app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202);
    let card: Value = serde_json::from_slice(&w.rec.wait_for("teams", 1).await[0].body).unwrap();
    let validator = card_validator();
    assert!(
        card_errors(&validator, &card).is_empty(),
        "{:?}",
        card_errors(&validator, &card)
    );
    let links: Vec<String> = strings(&card)
        .into_iter()
        .filter(|s| s.starts_with("https://alerts.example/actions/"))
        .collect();
    assert_eq!(links.len(), 2, "retry and rebuild: {card}");
    let path = links
        .iter()
        .find(|l| {
            let t = l.rsplit('/').next().unwrap();
            token::verify(t, &[Secret::new(KEY)], now()).unwrap().action == Action::Rebuild
        })
        .unwrap()
        .trim_start_matches("https://alerts.example")
        .to_string();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A link scanner's GET shows a page and changes nothing.
    let page = browser.get(w.app.url(&path)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in"), "{html}");
    assert!(w.bk.requests().is_empty());

    // A POST without a session is refused.
    let anon = browser
        .post(w.app.url(&path))
        .form_body(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // Sign in: our login → the provider → our callback.
    let (pending, authorize) = start_sign_in(&w, &browser, &path).await;
    let cookie = finish_sign_in(&w, &browser, &path, &pending, &authorize).await;

    // Signed in, the GET shows a confirm form, and still changes nothing.
    let html = browser
        .get(w.app.url(&path))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Dana Ops") && html.contains("<form method=post>"),
        "{html}"
    );
    let csrf = html
        .split("name=csrf value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(w.bk.requests().is_empty());

    // Without the page's CSRF token: refused.
    for form in [vec![], vec![("csrf", "forged")]] {
        let r = browser
            .post(w.app.url(&path))
            .header("cookie", &cookie)
            .form_body(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(w.bk.requests().is_empty());

    // With it: done once, and a follow-up card goes to the channel.
    let done = browser
        .post(w.app.url(&path))
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Rebuilt by Dana Ops"));
    assert_eq!(w.bk.puts("/rebuild"), 1);
    let cards = w.rec.wait_for("teams", 2).await;
    let follow: Value = serde_json::from_slice(&cards[1].body).unwrap();
    assert!(
        follow.to_string().contains("Rebuilt by Dana Ops"),
        "{follow}"
    );
    assert!(card_errors(&validator, &follow).is_empty());
    let again = browser
        .post(w.app.url(&path))
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(w.bk.puts("/rebuild"), 1);
    let rows = presses(&w).await;
    assert_eq!(rows[0].channel, "teams");
    assert_eq!(rows[0].presser, "dana@acme.example");
    assert_eq!(
        rows.iter().map(|p| p.outcome.as_str()).collect::<Vec<_>>(),
        [
            "duplicate",
            "done",
            "bad_csrf",
            "bad_csrf",
            "unauthenticated"
        ]
    );
    // Refusals are audited with what their button named.
    assert_eq!(rows[2].action, "rebuild");
    assert_eq!(rows[4].presser, "anonymous");
    assert_eq!(rows[1].source, "127.0.0.1", "the browser's address");
}

#[tokio::test]
async fn teams_sign_in_from_outside_the_policy_is_refused() {
    let w = world().await;
    w.oidc.sign_in_as("eve@elsewhere.example", "Eve");
    let mut for_teams = grant(Action::Rebuild, "web-app", now() + 600);
    for_teams.destination = "teams".into();
    let t = token::sign(&for_teams, &Secret::new(KEY));
    let path = format!("/actions/{t}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (pending, authorize) = start_sign_in(&w, &browser, &path).await;
    let code = w.oidc.authorize(&authorize).await;
    // A callback whose state is not the one started here is refused.
    let wrong = browser
        .get(
            w.app
                .url(&format!("/actions/callback?code={code}&state=other")),
        )
        .header("cookie", format!("kb_login={pending}"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let cookie = finish_sign_in(&w, &browser, &path, &pending, &authorize).await;
    let r = confirm_on_page(&w, &browser, &path, &cookie).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("is not allowed"));

    // A Slack button's token opened as a Teams link does not act, even for someone allowed.
    w.oidc.sign_in_as("dana@acme.example", "Dana Ops");
    let slack_token = token::sign(
        &grant(Action::Rebuild, "web-app", now() + 600),
        &Secret::new(KEY),
    );
    let slack_path = format!("/actions/{slack_token}");
    let (pending, authorize) = start_sign_in(&w, &browser, &slack_path).await;
    let cookie = finish_sign_in(&w, &browser, &slack_path, &pending, &authorize).await;
    let r = confirm_on_page(&w, &browser, &slack_path, &cookie).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not posted to a teams destination")
    );
    assert!(w.bk.requests().is_empty());
}

#[tokio::test]
async fn a_slack_app_message_is_updated_in_place() {
    let w = world_to(r#"["live"]"#).await;
    let (status, _) = w.app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202);
    let posted = eventually(|| w.slack.calls("chat.postMessage").into_iter().next()).await;
    let message = posted.json();
    let rebuild = button(&message, "kb:rebuild");
    assert!(!rebuild.is_empty(), "{message}");
    let (body, url) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
    let update = eventually(|| w.slack.calls("chat.update").into_iter().next()).await;
    assert_eq!(
        update.header("authorization").as_deref(),
        Some("Bearer xoxb-live-app-token")
    );
    let sent = update.json();
    assert_eq!(
        (sent["channel"].as_str(), sent["ts"].as_str()),
        (Some("C0ALERTS"), Some("1700000000.000100"))
    );
    let text = sent.to_string();
    assert!(text.contains("Rebuilt by Maria López"), "{text}");
    assert!(
        !text.contains("kb:rebuild") && text.contains("kb:retry_failed"),
        "{text}"
    );
    assert!(
        answers(&w, &url).is_empty(),
        "updated through the API, not the response_url"
    );
    assert_eq!(w.bk.puts("/rebuild"), 1);
}

#[tokio::test]
async fn a_failed_job_is_retried_and_a_running_build_canceled_through_rate_limits() {
    let w = world_to(r#"["slack"]"#).await;
    let job = "0190e2f4-2222-7000-8000-000000000042";
    let mut build = crate::fake_buildkite::default_build("acme", "web-app", 1842);
    build["jobs"][0]["id"] = json!(job);
    w.bk.set_build("web-app", 1842, build);
    w.bk.script(
        "/retry",
        BkReply::TooMany {
            retry_after_secs: 1,
        },
    );
    let (status, _) = w.app.post_signed(&fixture("job.finished")).await;
    assert_eq!(status, 202);
    let job_message: Value =
        serde_json::from_slice(&w.rec.wait_for("slack", 1).await[0].body).unwrap();
    let retry = button(&job_message, "kb:retry_failed");
    let (body, url) = interaction(&w, MARIA, &job_message, "kb:retry_failed", &retry);
    assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
    let update = eventually(|| answers(&w, &url).into_iter().next()).await;
    assert!(
        update.to_string().contains("Retried by Maria López"),
        "{update}"
    );
    let retries = w.bk.put_requests(&format!("/jobs/{job}/retry"));
    assert_eq!(
        retries.len(),
        2,
        "the 429 was waited out and the retry sent once more"
    );

    let (status, _) = w.app.post_signed(&fixture("build.running")).await;
    assert_eq!(status, 202);
    let running: Value = serde_json::from_slice(&w.rec.wait_for("slack", 2).await[1].body).unwrap();
    assert!(
        button(&running, "kb:retry_failed").is_empty() && button(&running, "kb:rebuild").is_empty()
    );
    let cancel = button(&running, "kb:cancel");
    let (body, url) = interaction(&w, MARIA, &running, "kb:cancel", &cancel);
    assert_eq!(press(&w, &body, SLACK_SECRET, now()).await.0, 200);
    let update = eventually(|| answers(&w, &url).into_iter().next()).await;
    assert!(
        update.to_string().contains("Canceled by Maria López"),
        "{update}"
    );
    assert_eq!(w.bk.puts("/builds/1842/cancel"), 1);
}

#[tokio::test]
async fn two_replicas_pressed_at_once_act_once() {
    let db = crate::pg::TestDb::new().await;
    let storage = format!("[storage]\nurl = \"{}\"\nlease = \"2s\"\n", db.url);
    let w = world_on(r#"["slack"]"#, &storage).await;
    let other = TestApp::spawn(&w.toml).await;
    let message = slack_message(&w).await;
    let rebuild = button(&message, "kb:rebuild");
    let (a, url_a) = interaction(&w, MARIA, &message, "kb:rebuild", &rebuild);
    let (b, url_b) = interaction(&w, "U0GROUP", &message, "kb:rebuild", &rebuild);
    let (ra, rb) = tokio::join!(
        press_at(&w.app, &a, SLACK_SECRET, now()),
        press_at(&other, &b, SLACK_SECRET, now())
    );
    assert_eq!((ra.0, rb.0), (200, 200));
    let first = eventually(|| answers(&w, &url_a).into_iter().next()).await;
    let second = eventually(|| answers(&w, &url_b).into_iter().next()).await;
    assert_eq!(w.bk.puts("/rebuild"), 1, "one rebuild across replicas");
    let texts = [first.to_string(), second.to_string()];
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("Already rebuilt by"))
            .count(),
        1,
        "{texts:?}"
    );
    // Both replicas' presses are in the one audit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rows = Vec::new();
    while rows.len() < 2 && Instant::now() < deadline {
        rows = db.store().await.presses(10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outcomes: Vec<&str> = rows.iter().map(|p| p.outcome.as_str()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["done", "duplicate"]);
}
