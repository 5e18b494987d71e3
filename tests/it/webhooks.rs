//! `kind = "webhook"`: every event, in the documented envelope, signed the Standard Webhooks
//! way, to a recording server playing the receiver; checked with a verifier written here from
//! the specification (standardwebhooks.com), not with kitebridge's own signing code.

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use kitebridge::store::DeliveryState;
use serde_json::Value;
use sha2::Sha256;
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// 32 bytes of 0x2a.
const OLD_SECRET: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const BEARER: &str = "Bearer ingest-tok-Qm9v";
/// The secret part of the receiver's URL.
const PATH: &str = "hook-Zk3Pq";

/// The Standard Webhooks check, from the specification: the key is the base64 after
/// `whsec_`; the signed content is `{id}.{timestamp}.{body}`; the header holds
/// space-separated `v1,<base64 HMAC-SHA256>` entries, any one of which may match; the
/// timestamp must be within five minutes of now. Returns which secrets matched.
fn verify(received: &Received, secrets: &[&str]) -> Result<Vec<bool>, String> {
    let header = |name: &str| {
        received
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(format!("no {name} header"))
    };
    let (id, timestamp, signatures) = (
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
    );
    let ts: i64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return Err(format!("timestamp {ts} is more than 5 minutes off"));
    }
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(&received.body);
    let presented: Vec<Vec<u8>> = signatures
        .split(' ')
        .map(|s| {
            let (version, sig) = s.split_once(',').ok_or("no version prefix")?;
            if version != "v1" {
                return Err("not v1");
            }
            STANDARD.decode(sig).map_err(|_| "not base64")
        })
        .collect::<Result<_, _>>()?;
    Ok(secrets
        .iter()
        .map(|secret| {
            let key = STANDARD.decode(&secret["whsec_".len()..]).unwrap();
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(&content);
            let expected = mac.finalize().into_bytes().to_vec();
            presented.contains(&expected)
        })
        .collect())
}

fn config(recorder: &Recorder, extra: &str) -> String {
    format!(
        r#"
[buildkite]
token = "{TOKEN}"

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
allowed_hosts = ["127.0.0.1"]

[destinations.hook]
kind = "webhook"
url = "{url}"
headers = {{ Authorization = "{BEARER}", X-Team = "ci" }}
signing_secret = "{SECRET}"
previous_signing_secrets = ["{OLD_SECRET}"]
{extra}

[[routes]]
name = "everything"
events = ["*"]
to = ["hook"]
"#,
        url = recorder.url(PATH),
    )
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhook-envelope.schema.json"
    ))
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// The payload with every `webhook_url` removed, at any depth.
fn without_webhook_urls(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("webhook_url");
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[tokio::test]
async fn every_fixture_arrives_signed_in_the_documented_envelope() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config(&rec, "")).await;
    let fixtures = fixtures();
    for (_, body) in &fixtures {
        let (status, answer) = app.post_signed(body).await;
        assert!(matches!(status, 200 | 202), "{answer}"); // ping is answered 200
    }
    let got = rec.wait_for(PATH, fixtures.len()).await;
    assert_eq!(got.len(), fixtures.len());
    let schema = schema();
    let mut ids = std::collections::HashSet::new();
    for received in &got {
        let envelope = received.json();
        let name = envelope["type"].as_str().unwrap().to_string();
        assert_eq!(received.method, "POST");
        assert_eq!(received.headers["content-type"], "application/json");
        assert_eq!(
            received.headers["user-agent"],
            concat!("kitebridge/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(received.headers["authorization"], BEARER);
        assert_eq!(received.headers["x-team"], "ci");
        assert_eq!(
            verify(received, &[SECRET, OLD_SECRET]).unwrap(),
            [true, true],
            "{name}: both secrets sign during a rotation"
        );
        assert!(
            verify(received, &["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]).unwrap() == [false],
            "a wrong secret does not verify"
        );
        ids.insert(received.headers["webhook-id"].to_str().unwrap().to_string());

        let errors: Vec<String> = schema
            .iter_errors(&envelope)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{envelope:#}");
        let (_, sent) = fixtures
            .iter()
            .find(|(_, b)| {
                without_webhook_urls(serde_json::from_slice(b).unwrap())
                    == envelope["data"]["payload"]
            })
            .unwrap_or_else(|| panic!("{name}: the payload is not a fixture as sent"));
        let sent: Value = serde_json::from_slice(sent).unwrap();
        assert_eq!(name, sent["event"].as_str().unwrap());
        assert_eq!(envelope["data"]["event"], name.as_str());
        assert!(
            envelope["data"]["id"].as_i64().unwrap() > 0,
            "the stored id"
        );
        chrono::DateTime::parse_from_rfc3339(envelope["timestamp"].as_str().unwrap()).unwrap();
        // Secrets: Buildkite's build-trigger URL, our header values, the receiver's URL.
        let text = String::from_utf8_lossy(&received.body);
        for secret in ["webhook_url", "ingest-tok-Qm9v", PATH, "whsec_"] {
            assert!(!text.contains(secret), "{name}: {secret} in the body");
        }
    }
    assert_eq!(ids.len(), got.len(), "one id per delivery");

    // A finished build that broke its branch says so.
    let broken = got
        .iter()
        .map(Received::json)
        .find(|e| e["data"]["transition"]["kind"] == "broken")
        .expect("build.finished (failed, first of its branch) is broken");
    assert_eq!(broken["type"], "build.finished");
    assert_eq!(broken["data"]["transition"]["consecutive_failures"], 1);
    app.stop().await;
}

#[tokio::test]
async fn retries_keep_the_id_and_sign_each_attempt_anew() {
    let rec = Recorder::start().await;
    rec.script(
        PATH,
        [
            Reply::RateLimited(1),
            Reply::Status(503, "busy"),
            Reply::Status(408, "slow"),
            Reply::Status(500, "oops"),
        ],
    );
    let app = TestApp::spawn(&config(&rec, "")).await;
    let (status, _) = app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202);
    let got = rec.wait_for(PATH, 5).await;
    assert_eq!(got.len(), 5, "four failures, then sent");
    let first_id = &got[0].headers["webhook-id"];
    for received in &got {
        assert_eq!(
            &received.headers["webhook-id"], first_id,
            "the same id on every retry"
        );
        assert_eq!(verify(received, &[SECRET]).unwrap(), [true]);
    }
    // The 429's Retry-After of a second was waited for.
    assert!(got[1].at - got[0].at >= Duration::from_millis(950));
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, DeliveryState::Sent);
    assert_eq!(all[0].attempts, 5);
    app.stop().await;
}

#[tokio::test]
async fn redirects_and_other_4xx_are_permanent_and_hangs_retry() {
    let rec = Recorder::start().await;
    rec.script(
        PATH,
        [
            Reply::Redirect(rec.url("elsewhere")),
            Reply::Status(422, "unprocessable"),
            Reply::Hang,
        ],
    );
    let app = TestApp::spawn(&config(&rec, "timeout = \"300ms\"\nconcurrency = 1")).await;
    for n in [1, 2, 3] {
        let (status, _) = app.post_signed(&build_finished(n)).await;
        assert_eq!(status, 202);
        // One at a time, so each meets its scripted answer.
        wait_for_deliveries(&app.db, |d| {
            d.len() == n as usize && d[n as usize - 1].attempts >= 1
        })
        .await;
    }
    let all = wait_for_deliveries(&app.db, |d| {
        d.len() == 3 && d.iter().all(|d| d.state != DeliveryState::Pending)
    })
    .await;
    let reason = |i: usize| all[i].last_error.clone().unwrap_or_default();
    assert_eq!(all[0].state, DeliveryState::Dead, "a 307 is never followed");
    assert_eq!(all[0].attempts, 1);
    assert!(reason(0).contains("307"), "{}", reason(0));
    assert_eq!(all[1].state, DeliveryState::Dead);
    assert!(reason(1).contains("422"), "{}", reason(1));
    assert_eq!(all[2].state, DeliveryState::Sent, "a hang is retried");
    assert_eq!(all[2].attempts, 2);
    assert!(rec.received_on("elsewhere").is_empty());
    let hung = rec.received_on(PATH);
    assert_eq!(hung[2].headers["webhook-id"], hung[3].headers["webhook-id"]);
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_dead_letters_and_put_is_put() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config(&rec, "method = \"PUT\"\nmax_body_bytes = 3000")).await;
    let (status, _) = app.post_signed(&fixture("ping")).await;
    assert_eq!(status, 200);
    let got = rec.wait_for(PATH, 1).await;
    assert_eq!(got[0].method, "PUT");
    let (status, _) = app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202);
    let all = wait_for_deliveries(&app.db, |d| {
        d.len() == 2 && d.iter().all(|d| d.state != DeliveryState::Pending)
    })
    .await;
    assert_eq!(all[0].state, DeliveryState::Sent);
    assert_eq!(all[1].state, DeliveryState::Dead);
    let reason = all[1].last_error.clone().unwrap_or_default();
    assert!(reason.contains("over max_body_bytes (3000)"), "{reason}");
    assert_eq!(
        rec.received_on(PATH).len(),
        1,
        "the large body was never sent"
    );
    app.stop().await;
}

/// `check`, `render`, `send-test` and `deliveries show` with a webhook destination, through
/// the real binary; none of them shows a secret.
#[tokio::test]
async fn the_command_line_works_for_webhooks() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kitebridge.toml");
    let db = dir.path().join("kitebridge.db");
    std::fs::write(&path, with_store(&config(&rec, ""), &db)).unwrap();
    let path = path.to_str().unwrap();
    let secrets = ["ingest-tok-Qm9v", PATH, "MfKQ9r8G", "KioqKio"];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows {s}:\n{text}");
        }
    };

    let checked = run_ok(&["check", "--config", path]).await;
    clean("check", &checked);
    assert!(checked.contains("ok: 1 destinations"), "{checked}");

    let rendered = run_ok(&[
        "render",
        "--config",
        path,
        "--payload",
        &fixture_path("build.finished"),
        "--format",
        "json",
    ])
    .await;
    clean("render", &rendered);
    let bodies: Value = serde_json::from_str(&rendered).unwrap();
    let envelope = &bodies[0]["body"];
    assert_eq!(bodies[0]["kind"], "webhook");
    assert_eq!(envelope["type"], "build.finished");
    assert!(envelope["data"]["id"].is_null(), "render stores nothing");
    let errors: Vec<String> = schema()
        .iter_errors(envelope)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    let sent = run_ok(&["send-test", "--config", path, "--destination", "hook"]).await;
    clean("send-test", &sent);
    assert!(sent.contains("hook: sent (HTTP 200"), "{sent}");
    let test = &rec.wait_for(PATH, 1).await[0];
    assert_eq!(verify(test, &[SECRET, OLD_SECRET]).unwrap(), [true, true]);
    assert_eq!(test.json()["type"], "ping");

    // A delivery, then `deliveries show`.
    let running = start_binary(std::path::Path::new(path)).await;
    let status = post_signed_to(running.addr, &fixture("build.finished"))
        .await
        .unwrap();
    assert_eq!(status, 202);
    rec.wait_for(PATH, 2).await;
    let all = wait_for_deliveries(&db, |d| d.iter().any(|d| d.state == DeliveryState::Sent)).await;
    drop(running);
    let shown = run_ok(&[
        "deliveries",
        "show",
        "--config",
        path,
        &all[0].id.to_string(),
    ])
    .await;
    clean("deliveries show", &shown);
    assert!(
        shown.contains("\"type\":\"build.finished\"")
            || shown.contains("\"type\": \"build.finished\""),
        "{shown}"
    );
}

/// A digest in the webhook envelope: one signed body with the gathered events, as the schema
/// says.
#[tokio::test]
async fn a_digest_arrives_as_one_signed_envelope_of_its_events() {
    let rec = Recorder::start().await;
    let toml = config(&rec, "").replace(
        "events = [\"*\"]",
        "events = [\"job.finished\"]\ngroup_window = \"3s\"\ngroup_by = [\"build.id\"]",
    );
    let app = TestApp::spawn(&toml).await;
    for n in 1..=3 {
        assert_eq!(app.post_signed(&failed_job(n)).await.0, 202);
    }
    let got = rec.wait_for(PATH, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.received_on(PATH).len(), 1, "one body for the digest");
    let envelope = got[0].json();
    assert_eq!(envelope["type"], "digest");
    assert_eq!(envelope["data"]["count"], 3);
    assert_eq!(envelope["data"]["events"].as_array().unwrap().len(), 3);
    assert_eq!(verify(&got[0], &[SECRET]).unwrap(), [true]);
    let errors: Vec<String> = schema()
        .iter_errors(&envelope)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{envelope:#}");
}

/// An operator's own `templates/webhook/<name>.hbs` shapes the body instead of the envelope.
#[tokio::test]
async fn a_webhook_template_of_the_operators_own_shapes_the_body() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("webhook")).unwrap();
    std::fs::write(
        dir.path().join("webhook/metrics.hbs"),
        r#"{"pipeline": {{{json pipeline.slug}}}, "state": {{{json build.state}}}, "event": {{{json event}}}}"#,
    )
    .unwrap();
    let toml = format!(
        "[templates]\ndir = \"{}\"\n{}",
        dir.path().display(),
        config(&rec, "").replace("to = [\"hook\"]", "to = [\"hook\"]\ntemplate = \"metrics\"")
    );
    let app = TestApp::spawn(&toml).await;
    assert_eq!(app.post_signed(&fixture("build.finished")).await.0, 202);
    let got = rec.wait_for(PATH, 1).await;
    let body = got[0].json();
    let sent = fixture_json("build.finished");
    assert_eq!(
        body,
        serde_json::json!({
            "pipeline": sent["pipeline"]["slug"],
            "state": sent["build"]["state"],
            "event": "build.finished",
        })
    );
    assert_eq!(
        verify(&got[0], &[SECRET]).unwrap(),
        [true],
        "signed all the same"
    );
}
