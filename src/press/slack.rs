//! `POST [actions.slack] path`: Slack's interaction requests.
//!
//! Each is checked against Slack's signature (`X-Slack-Signature`, `v0=` HMAC-SHA256 of
//! `v0:{timestamp}:{body}` with the app's signing secret, within five minutes, compared in
//! constant time) before anything in it is read. Slack wants its `200` within 3 s, and
//! Buildkite may take longer, so the answer goes back at once and the press is carried out
//! after: who pressed is looked up (bots, guests, deactivated accounts and people from other
//! workspaces never act), the policy decides, the message is updated to say who did what (or
//! the presser alone is told why not).

use super::{Clients, PressDesk, Presser, Verdict};
use crate::actions::ActionsConfig;
use crate::actions::policy::{self, Person};
use crate::actions::slack_api::SlackApi;
use crate::actions::token::Grant;
use crate::destination::slack_app;
use crate::render::slack_text;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Arc;

/// How far a request's timestamp may be from now, either way.
const WINDOW_SECS: i64 = 300;

/// Why a request is not Slack's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or not as Slack writes it.
    #[error("missing or malformed X-Slack-Request-Timestamp or X-Slack-Signature")]
    Missing,
    /// The timestamp is outside the five-minute window (a replay, or a clock far off).
    #[error("X-Slack-Request-Timestamp is more than five minutes from now")]
    Stale,
    /// The signature does not match.
    #[error("X-Slack-Signature does not match the body")]
    Mismatch,
}

/// Checks Slack's signature over `body` at `now` (seconds).
pub fn verify_signature(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts = timestamp.ok_or(SignatureError::Missing)?;
    let at: i64 = ts.trim().parse().map_err(|_| SignatureError::Missing)?;
    let hex_sig = signature
        .and_then(|s| s.trim().strip_prefix("v0="))
        .ok_or(SignatureError::Missing)?;
    let given = hex::decode(hex_sig).map_err(|_| SignatureError::Mismatch)?;
    if (now - at).abs() > WINDOW_SECS {
        return Err(SignatureError::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(b"v0:");
    mac.update(ts.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// The handler.
pub async fn interaction(
    State(desk): State<Arc<PressDesk>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(clients) = desk.clients() else {
        return (StatusCode::NOT_FOUND, "buttons are off").into_response();
    };
    let Some(slack) = clients.config.slack.as_ref() else {
        return (StatusCode::NOT_FOUND, "Slack buttons are off").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = verify_signature(
        slack.signing_secret.expose(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        Utc::now().timestamp(),
    ) {
        tracing::warn!(reason = %e, "Slack interaction refused");
        desk.metrics
            .actions
            .with_label_values(&["unknown", "bad_signature"])
            .inc();
        return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    }
    let payload = match parse(&body) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(
                reason = why,
                "Slack interaction refused: not an interaction payload"
            );
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let Some(pressed) = pressed(&payload) else {
        // Another kind of interaction, or a plain link button (Slack reports those too).
        return StatusCode::OK.into_response();
    };
    tokio::spawn(async move { handle(desk, clients, payload, pressed).await });
    StatusCode::OK.into_response()
}

/// The interaction payload: the `payload` form field, as JSON.
fn parse(body: &[u8]) -> Result<Value, &'static str> {
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| "the body is not a form")?;
    let payload = fields
        .into_iter()
        .find(|(k, _)| k == "payload")
        .ok_or("the form has no payload field")?
        .1;
    serde_json::from_str(&payload).map_err(|_| "the payload is not JSON")
}

/// The `kb:` button pressed: its action id and value.
fn pressed(payload: &Value) -> Option<(String, String)> {
    if payload["type"] != "block_actions" {
        return None;
    }
    let action = payload["actions"].as_array()?.first()?;
    let id = action["action_id"].as_str()?;
    id.starts_with("kb:").then(|| {
        (
            id.to_string(),
            action["value"].as_str().unwrap_or("").to_string(),
        )
    })
}

async fn handle(
    desk: Arc<PressDesk>,
    clients: Arc<Clients>,
    payload: Value,
    pressed: (String, String),
) {
    let (action_id, value) = pressed;
    let Some(api) = clients.slack.as_ref() else {
        return;
    };
    let user_id = payload["user"]["id"].as_str().unwrap_or("").to_string();
    let team = payload["team"]["id"].as_str().unwrap_or("").to_string();
    let channel = payload["channel"]["id"]
        .as_str()
        .or(payload["container"]["channel_id"].as_str())
        .unwrap_or("")
        .to_string();
    let response_url = payload["response_url"]
        .as_str()
        .filter(|u| response_url_allowed(u, &clients.config))
        .map(str::to_string);
    let mut presser = Presser {
        id: user_id.clone(),
        name: payload["user"]["name"]
            .as_str()
            .unwrap_or(&user_id)
            .to_string(),
        channel: "slack",
        source: format!("slack team {team} channel {channel}"),
        person: Person {
            slack_user: Some(user_id.clone()),
            ..Person::default()
        },
    };
    let tell = async |text: String| {
        if let Some(url) = &response_url {
            let body =
                json!({"response_type": "ephemeral", "replace_original": false, "text": text});
            if let Err(e) = api.respond(url, &body).await {
                tracing::warn!(error = %e, "could not answer the presser");
            }
        }
    };
    let grant = match desk.grant(&clients, &value, &presser).await {
        Ok(g) => g,
        Err(e) => return tell(format!("⚠️ This button does not act: {e}.")).await,
    };
    if format!("kb:{}", grant.action) != action_id {
        let why = "the button's action_id and its token disagree";
        desk.record_refusal(&clients, &value, &presser, "action_mismatch", why)
            .await;
        return tell("⚠️ This button does not act: its action and its token disagree.".into())
            .await;
    }
    let user = match api.user(&user_id).await {
        Ok(u) => u,
        Err(e) => {
            let verdict = Verdict::Unavailable(format!("could not look up the Slack user: {e}"));
            desk.record_only(&grant, &presser, &verdict).await;
            return tell(format!(
                "⚠️ Could not check who you are ({e}); nothing was done."
            ))
            .await;
        }
    };
    presser.name = user.name.clone();
    presser.person.email = user.email.clone();
    let tz = user.tz.clone();
    // The workspace (or Enterprise Grid organisation) the bot token belongs to: the only one
    // whose people may act. Slack Connect brings people of other workspaces into channels.
    let home = match api.home().await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn the Slack app's own workspace (auth.test)");
            None
        }
    };
    let refusal = if user.is_bot {
        Some("bots cannot press buttons")
    } else if user.is_restricted || user.is_ultra_restricted {
        Some("guests cannot press buttons")
    } else if user.deleted {
        Some("deactivated accounts cannot press buttons")
    } else if user.is_stranger || !home.as_ref().is_some_and(|h| h.admits(&user)) {
        Some("people from other workspaces cannot press buttons")
    } else {
        None
    };
    if let Some(why) = refusal {
        let verdict = Verdict::Denied(why.into());
        desk.record_only(&grant, &presser, &verdict).await;
        return tell(format!("🚫 Not done: {why}.")).await;
    }
    presser.person.usergroups = usergroups(api, &clients.config, &grant, &user_id).await;
    let verdict = desk.carry_out(&clients, &grant, &presser).await;
    match verdict {
        Verdict::Done(summary) => {
            let line = format!(
                "{} {} by {} at {} · {}",
                grant.action.emoji(),
                grant.action.done(),
                slack_text(&presser.name),
                clock(super::now_secs(), tz.as_deref()),
                slack_text(&summary)
            );
            let original = &payload["message"];
            let updated = acted_message(original, &action_id, &line);
            update(&desk, api, &grant, &payload, response_url.as_deref(), &updated).await;
        }
        Verdict::Duplicate { by, at } => {
            tell(format!(
                "{} Already {} by {} at {}.",
                grant.action.emoji(),
                grant.action.done().to_lowercase(),
                slack_text(&by),
                clock(at / 1000, tz.as_deref())
            ))
            .await
        }
        Verdict::Denied(why) => tell(format!("🚫 Not allowed: {}.", slack_text(&why))).await,
        Verdict::Failed(why) => {
            tell(format!("⚠️ Buildkite refused to {}: {}", grant.action.verb(), slack_text(&why))).await
        }
        Verdict::Unavailable(why) => {
            tell(format!(
                "⚠️ Buildkite did not answer ({}); the {} may or may not have happened: check the build before pressing again.",
                slack_text(&why),
                grant.action.label().to_lowercase()
            ))
            .await
        }
    }
}

/// The user groups (of those the covering policies name) that `user` is in. A group that
/// cannot be read counts as one they are not in: a failed lookup never admits anyone.
async fn usergroups(
    api: &SlackApi,
    config: &ActionsConfig,
    grant: &Grant,
    user: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    for group in policy::usergroups_to_check(&config.policies, grant) {
        match api.usergroup_members(group).await {
            Ok(members) if members.iter().any(|m| m == user) => found.push(group.to_string()),
            Ok(_) => {}
            Err(e) => tracing::warn!(group, error = %e, "could not read a Slack user group"),
        }
    }
    found
}

/// Replaces the message: `chat.update` for a Slack app's message (its own bot token), the
/// interaction's `response_url` for an incoming webhook's.
async fn update(
    desk: &PressDesk,
    api: &SlackApi,
    grant: &Grant,
    payload: &Value,
    response_url: Option<&str>,
    message: &Value,
) {
    let live = desk.live();
    let app = live
        .config
        .destinations
        .iter()
        .find(|d| d.name == grant.destination)
        .and_then(slack_app::web_api);
    let channel = payload["container"]["channel_id"]
        .as_str()
        .or(payload["channel"]["id"].as_str());
    let ts = payload["container"]["message_ts"]
        .as_str()
        .or(payload["message"]["ts"].as_str());
    let result = match (app, channel, ts) {
        (Some((url, token)), Some(channel), Some(ts)) => {
            api.chat_update(url.expose(), &token, channel, ts, message)
                .await
        }
        _ => match response_url {
            Some(url) => {
                let mut body = message.clone();
                body["replace_original"] = Value::Bool(true);
                api.respond(url, &body).await
            }
            None => return,
        },
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, destination = %grant.destination, "could not update the message after a press");
    }
}

/// A `response_url` is only followed to Slack (`hooks.slack.com` over https), or to the host the
/// config names as Slack's Web API (a test's, or a proxy's).
fn response_url_allowed(url: &str, config: &ActionsConfig) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default();
    let slack = u.scheme() == "https" && host == "hooks.slack.com";
    let configured = config
        .slack
        .as_ref()
        .and_then(|s| reqwest::Url::parse(&s.api_url).ok())
        .is_some_and(|api| {
            api.host_str() == Some(host) && api.port_or_known_default() == u.port_or_known_default()
        });
    slack || configured
}

/// The message after a press: the pressed button gone (and its actions block, when it was the
/// last), and a line saying who did what where the button was.
pub fn acted_message(message: &Value, action_id: &str, line: &str) -> Value {
    let note = json!({"type": "context", "elements": [{"type": "mrkdwn", "text": line}]});
    let mut out = serde_json::Map::new();
    for key in ["text", "blocks", "attachments"] {
        if let Some(v) = message.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut placed = false;
    if let Some(blocks) = out.get_mut("blocks").and_then(Value::as_array_mut) {
        placed = take_button(blocks, action_id, &note);
    }
    if !placed && let Some(attachments) = out.get_mut("attachments").and_then(Value::as_array_mut) {
        placed = attachments.iter_mut().any(|a| {
            a.get_mut("blocks")
                .and_then(Value::as_array_mut)
                .is_some_and(|blocks| take_button(blocks, action_id, &note))
        });
    }
    if !placed {
        let blocks = out
            .entry("blocks")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(blocks) = blocks.as_array_mut() {
            blocks.push(note);
        }
    }
    Value::Object(out)
}

/// Removes the button `action_id` from `blocks` and puts `note` after its block; false when
/// no block holds it.
fn take_button(blocks: &mut Vec<Value>, action_id: &str, note: &Value) -> bool {
    for i in 0..blocks.len() {
        let Some(elements) = blocks[i].get_mut("elements").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = elements.len();
        elements.retain(|e| e["action_id"] != action_id);
        if elements.len() == before {
            continue;
        }
        if elements.is_empty() {
            blocks[i] = note.clone();
        } else {
            blocks.insert(i + 1, note.clone());
        }
        return true;
    }
    false
}

/// `HH:MM` at `secs` in the time zone `tz` (with the zone when it is UTC).
fn clock(secs: i64, tz: Option<&str>) -> String {
    let at = Utc.timestamp_opt(secs, 0).single().unwrap_or_else(Utc::now);
    match tz.and_then(|t| t.parse::<chrono_tz::Tz>().ok()) {
        Some(zone) => at.with_timezone(&zone).format("%H:%M").to_string(),
        None => at.format("%H:%M UTC").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn slacks_documented_example_verifies() {
        // The example in Slack's "Verifying requests from Slack" guide.
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify_signature(secret, Some("1531420618"), Some(sig), body, 1531420618 + 10),
            Ok(())
        );
    }

    #[test]
    fn wrong_stale_or_missing_signatures_are_refused() {
        let (secret, body, now) = ("s3cret", b"payload=%7B%7D".as_slice(), 1_700_000_000);
        let ts = now.to_string();
        let good = sign(secret, &ts, body);
        assert_eq!(
            verify_signature(secret, Some(&ts), Some(&good), body, now),
            Ok(())
        );
        assert_eq!(
            verify_signature("other", Some(&ts), Some(&good), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, Some(&ts), Some(&good), b"payload=%7B%7D ", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, Some(&ts), Some(&good), body, now + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(secret, Some(&ts), Some(&good), body, now - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(secret, None, Some(&good), body, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(secret, Some(&ts), None, body, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(secret, Some(&ts), Some("v1=00"), body, now),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_pressed_button_gives_way_to_who_pressed_it() {
        let message = json!({
            "text": "t", "ts": "1.2",
            "attachments": [{"color": "#f00", "blocks": [
                {"type": "section"},
                {"type": "actions", "elements": [
                    {"type": "button", "url": "https://buildkite.com/x"},
                    {"type": "button", "action_id": "kb:rebuild"},
                    {"type": "button", "action_id": "kb:retry_failed"}
                ]}
            ]}]
        });
        let out = acted_message(&message, "kb:rebuild", "🔄 Rebuilt by Maria at 12:03");
        let blocks = &out["attachments"][0]["blocks"];
        assert_eq!(blocks[1]["elements"].as_array().unwrap().len(), 2);
        assert!(blocks[1].to_string().contains("kb:retry_failed"));
        assert_eq!(
            blocks[2]["elements"][0]["text"],
            "🔄 Rebuilt by Maria at 12:03"
        );
        assert!(out.get("ts").is_none());
        let only =
            json!({"blocks": [{"type": "actions", "elements": [{"action_id": "kb:cancel"}]}]});
        let out = acted_message(&only, "kb:cancel", "done");
        assert_eq!(out["blocks"].as_array().unwrap().len(), 1);
        assert_eq!(out["blocks"][0]["type"], "context");
    }

    #[test]
    fn times_are_shown_in_the_pressers_zone() {
        let noon = 1_764_590_580; // 2025-12-01 12:03 UTC
        assert_eq!(clock(noon, None), "12:03 UTC");
        assert_eq!(clock(noon, Some("Europe/Madrid")), "13:03");
        assert_eq!(clock(noon, Some("Not/AZone")), "12:03 UTC");
    }
}
