//! A Slack app (bot token): one live message per build. The first message of a build is
//! posted with `chat.postMessage`; later build events update it with `chat.update`; job events
//! are replies in its thread. Which message belongs to which build is kept in the store, so
//! updates carry on across restarts.
//!
//! The Web API answers most errors as HTTP 200 with `{"ok":false,"error":"…"}`; they are
//! judged like HTTP statuses: `ratelimited` and server-side errors retry, the rest (a missing
//! channel, a revoked token…) are permanent.

use super::http::{Answer, classify_common, post_json};
use super::{
    BuildEnv, Common, Context, Destination, DestinationConfig, DestinationKind, Kind, Limits,
    Options, Outcome, Reported, SendFuture, Table, UrlRule,
};
use crate::event::Event;
use crate::render::{Body, TemplateKind};
use crate::secret::Secret;
use crate::store::{MessageRef, Progress, Store};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the Slack Web API lives, unless a destination's `url` says otherwise.
pub const DEFAULT_API: &str = "https://slack.com/api";

/// The kind.
#[derive(Debug)]
pub struct SlackAppKind;

/// A Slack app destination's Web API base URL and bot token, so a press on one of its
/// messages can update it with `chat.update`; `None` for other kinds or an empty token.
pub fn web_api(config: &DestinationConfig) -> Option<(Secret, Secret)> {
    let options = config.options.get::<AppOptions>()?;
    Some((config.url.clone()?, options.token.clone()?))
}

/// What a Slack app destination keeps besides its URL.
#[derive(Debug, Clone, PartialEq)]
struct AppOptions {
    /// The bot token; `None` when it interpolated to empty (the destination is then off).
    token: Option<Secret>,
    /// The channel id.
    channel: String,
}

impl Kind for SlackAppKind {
    fn name(&self) -> &'static str {
        "slack_app"
    }

    fn template_kind(&self) -> TemplateKind {
        TemplateKind::Slack
    }

    fn default_limits(&self) -> Limits {
        super::slack::LIMITS
    }

    fn url(&self) -> UrlRule {
        UrlRule::Default(DEFAULT_API)
    }

    fn keys(&self) -> &'static [&'static str] {
        &["token", "channel"]
    }

    fn configure(&self, table: &mut Table, common: &Common) -> Result<Options, Reported> {
        let (token, _) = table.required_text("token", "a bot token, xoxb-…")?;
        let (channel, span) =
            table.required_text("channel", "a channel id such as \"C0123ABCD\"")?;
        if !is_slack_id(&channel, &['C', 'G', 'D']) {
            return Err(table.problem(
                Some(span),
                "channel must be a channel id such as \"C0123ABCD\" (updates need the id, not the name)",
            ));
        }
        if common.limits.concurrency > 1
            && let Some(entry) = table.entry("concurrency")
        {
            // Two attempts for one build at once could both find no message and both post.
            let span = entry.span.clone();
            return Err(table.problem(
                Some(span),
                "concurrency must be 1 for kind \"slack_app\", which updates one message per build in order",
            ));
        }
        Ok(Options::new(AppOptions {
            token: (!token.is_empty()).then(|| Secret::new(token)),
            channel,
        }))
    }

    fn disabled_reason(&self, config: &DestinationConfig) -> Option<&'static str> {
        let token = config
            .options
            .get::<AppOptions>()
            .and_then(|o| o.token.as_ref());
        token.is_none().then_some("its token is empty")
    }

    fn fit(&self, body: &mut Body) -> Result<(), String> {
        super::slack::fit(body)
    }

    fn check_body(&self, body: &Body) -> Result<(), String> {
        super::slack::check_body(body)
    }

    fn build(&self, config: &DestinationConfig, env: &BuildEnv) -> Option<Arc<dyn Destination>> {
        let options = config.options.get::<AppOptions>()?;
        Some(Arc::new(SlackApp {
            name: config.name.clone(),
            kind: config.kind,
            api: config.url.clone()?,
            token: options.token.clone()?,
            channel: options.channel.clone(),
            timeout: config.timeout,
            client: env.client.clone(),
            store: env.store.clone()?,
            known: Default::default(),
        }))
    }
}

/// Whether `id` looks like a Slack id starting with one of `first` (`U…` for members, `C…` for
/// channels): upper-case letters and digits only.
pub fn is_slack_id(id: &str, first: &[char]) -> bool {
    id.len() >= 3
        && id.starts_with(first)
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// A Slack app destination.
#[derive(Debug)]
struct SlackApp {
    name: String,
    kind: DestinationKind,
    /// The Web API base URL.
    api: Secret,
    token: Secret,
    /// The channel id.
    channel: String,
    timeout: Duration,
    client: reqwest::Client,
    /// Where message ids are kept.
    store: Arc<dyn Store>,
    /// Message ids seen by this process, so a failed write to the store does not make the
    /// next event post a second message.
    known: Mutex<HashMap<String, MessageRef>>,
}

/// How far along its life a build event is; a build's message is never moved back.
pub fn rank(event_name: &str) -> i64 {
    match event_name {
        "build.scheduled" => 0,
        "build.running" => 1,
        "build.failing" => 2,
        "build.finished" | "build.skipped" => 3,
        _ => 1,
    }
}

/// Judges a Web API `error` code.
pub fn classify_api_error(error: &str, retry_after: Option<Duration>) -> Outcome {
    let reason = format!("slack: {error}");
    match error {
        "ratelimited" | "rate_limited" => Outcome::Retry {
            status: Some(429),
            after: retry_after,
            reason,
        },
        "internal_error"
        | "fatal_error"
        | "service_unavailable"
        | "request_timeout"
        | "team_added_to_org" => Outcome::Retry {
            status: Some(200),
            after: retry_after,
            reason,
        },
        _ => Outcome::Permanent {
            status: Some(200),
            reason,
        },
    }
}

/// Errors of `chat.update` that mean the message is gone or frozen: post a new one instead.
fn must_repost(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Permanent { reason, .. }
        if ["message_not_found", "cant_update_message", "edit_window_closed"]
            .iter()
            .any(|e| reason.ends_with(e)))
}

/// Judges a Web API answer: `Ok` with the answer's JSON when `ok` is true.
fn judge(answer: &Answer) -> Result<Value, Outcome> {
    if let Some(outcome) = classify_common(answer) {
        return Err(outcome);
    }
    let value: Value = serde_json::from_str(&answer.body).map_err(|_| Outcome::Permanent {
        status: Some(answer.status),
        reason: "slack: the answer is not JSON".into(),
    })?;
    if value["ok"] == Value::Bool(true) {
        Ok(value)
    } else {
        let error = value["error"].as_str().unwrap_or("unknown_error");
        Err(classify_api_error(error, answer.retry_after))
    }
}

impl SlackApp {
    async fn call(
        &self,
        method: &str,
        mut payload: Value,
        extra: &[(&str, &str)],
    ) -> Result<Value, Outcome> {
        if let Some(map) = payload.as_object_mut() {
            map.insert("channel".into(), json!(self.channel));
            for (k, v) in extra {
                map.insert((*k).into(), json!(v));
            }
        }
        let url = Secret::new(format!(
            "{}/{method}",
            self.api.expose().trim_end_matches('/')
        ));
        let body = serde_json::to_vec(&payload).expect("JSON values serialise");
        let answer = post_json(&self.client, &url, Some(&self.token), body, self.timeout).await?;
        judge(&answer)
    }

    /// Posts a message (in a thread when `thread_ts` is given); returns its `ts`.
    async fn post(&self, body: &Value, thread_ts: Option<&str>) -> Result<String, Outcome> {
        let extra: Vec<(&str, &str)> = thread_ts.map(|ts| ("thread_ts", ts)).into_iter().collect();
        let answer = self.call("chat.postMessage", body.clone(), &extra).await?;
        Ok(answer["ts"].as_str().unwrap_or_default().to_string())
    }

    async fn known(&self, key: &str) -> Result<Option<MessageRef>, Outcome> {
        if let Some(found) = self.known.lock().expect("never poisoned").get(key) {
            return Ok(Some(found.clone()));
        }
        self.store
            .message_ref(&self.name, key)
            .await
            .map_err(retry_store)
    }

    async fn remember(&self, key: &str, ts: String, as_of: Progress) {
        if ts.is_empty() {
            return;
        }
        let message = MessageRef {
            channel: self.channel.clone(),
            ts,
            as_of,
        };
        {
            let mut known = self.known.lock().expect("never poisoned");
            let newer = known.get(key).is_none_or(|k| as_of >= k.as_of);
            if newer {
                known.insert(key.to_string(), message.clone());
            }
        }
        if let Err(e) = self.store.set_message_ref(&self.name, key, message).await {
            // Kept in memory meanwhile; only a restart before the next write would lose it.
            tracing::error!(destination = %self.name, key, error = %e, "cannot keep the message id");
        }
    }

    /// A build event: update the build's message, or post it if there is none yet.
    async fn post_or_update(&self, body: &Value, context: &Context, key: &str) -> Outcome {
        let as_of = Progress {
            rank: rank(&context.event_name),
            event_id: context.event_id,
        };
        let known = match self.known(key).await {
            Ok(known) => known,
            Err(outcome) => return outcome,
        };
        if let Some(known) = known {
            if as_of < known.as_of {
                // An event about an earlier step arriving late must not undo a later state.
                return Outcome::Sent { status: None };
            }
            match self
                .call("chat.update", body.clone(), &[("ts", &known.ts)])
                .await
            {
                Ok(_) => {
                    self.remember(key, known.ts, as_of).await;
                    return Outcome::Sent { status: Some(200) };
                }
                Err(outcome) if must_repost(&outcome) => {}
                Err(outcome) => return outcome,
            }
        }
        match self.post(body, None).await {
            Ok(ts) => {
                self.remember(key, ts, as_of).await;
                Outcome::Sent { status: Some(200) }
            }
            Err(outcome) => outcome,
        }
    }

    /// A job event: a reply in the build's thread. Without a build message yet (job events
    /// come before `build.failing`), the build's message is posted first, from the job's own
    /// copy of the build.
    async fn reply(&self, body: &Value, context: &Context, key: &str) -> Outcome {
        let mut known = match self.known(key).await {
            Ok(known) => known.map(|k| k.ts),
            Err(outcome) => return outcome,
        };
        if known.is_none()
            && let Some(parent) = &context.parent
        {
            let body = to_json(&parent.body);
            match self.post(&body, None).await {
                Ok(ts) => {
                    self.remember(
                        key,
                        ts.clone(),
                        Progress {
                            rank: rank(&parent.event_name),
                            event_id: context.event_id,
                        },
                    )
                    .await;
                    known = Some(ts).filter(|t| !t.is_empty());
                }
                Err(outcome) => return outcome,
            }
        }
        match self.post(body, known.as_deref()).await {
            Ok(_) => Outcome::Sent { status: Some(200) },
            Err(outcome) => outcome,
        }
    }
}

fn to_json(body: &Body) -> Value {
    match body {
        Body::Json(v) => v.clone(),
        Body::Text(t) => json!({ "text": t }),
    }
}

fn retry_store(e: crate::store::StoreError) -> Outcome {
    Outcome::Retry {
        status: None,
        after: None,
        reason: format!("cannot read the message id: {e}"),
    }
}

impl Destination for SlackApp {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        self.kind
    }

    /// A job's message is a reply under its build's: the build's message, rendered from the
    /// job's copy of the build as the build event its state stands for, is posted first when
    /// the build has none yet.
    fn wants_parent(&self, event_name: &str, threaded: bool) -> bool {
        threaded && event_name.starts_with("job.")
    }

    fn parent(&self, event: &Event) -> Option<Event> {
        let name = build_event_for(event.lookup("build.state").and_then(|v| v.as_str()));
        Some(Event::from_value(
            name,
            event.payload().clone(),
            event.received_at(),
        ))
    }

    fn send<'a>(&'a self, body: &'a Body, context: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            let body = to_json(body);
            let family = context.event_name.split('.').next().unwrap_or_default();
            match (family, context.thread_key.as_deref()) {
                ("build", Some(key)) => self.post_or_update(&body, context, key).await,
                ("job", Some(key)) => self.reply(&body, context, key).await,
                _ => match self.post(&body, None).await {
                    Ok(_) => Outcome::Sent { status: Some(200) },
                    Err(outcome) => outcome,
                },
            }
        })
    }
}

/// The build event whose message a build in `state` shows: a job's reply needs its build's
/// message, and a job event carries only the build's state.
fn build_event_for(state: Option<&str>) -> &'static str {
    match state {
        Some("scheduled") => "build.scheduled",
        Some("failing") => "build.failing",
        Some("running" | "canceling" | "creating") => "build.running",
        _ => "build.finished",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        super::super::http::answer(status, body, Some(3))
    }

    #[test]
    fn web_api_errors_at_http_200_are_judged_like_statuses() {
        assert!(judge(&answer(200, r#"{"ok":true,"ts":"1.2"}"#)).is_ok());
        let cases = [
            ("ratelimited", "retry"),
            ("internal_error", "retry"),
            ("service_unavailable", "retry"),
            ("channel_not_found", "permanent"),
            ("not_in_channel", "permanent"),
            ("invalid_auth", "permanent"),
            ("token_revoked", "permanent"),
            ("message_not_found", "permanent"),
            ("invalid_blocks", "permanent"),
        ];
        for (error, want) in cases {
            let got = judge(&answer(
                200,
                &format!(r#"{{"ok":false,"error":"{error}"}}"#),
            ))
            .unwrap_err();
            assert_eq!(got.label(), want, "{error}");
        }
        let limited = judge(&answer(200, r#"{"ok":false,"error":"ratelimited"}"#)).unwrap_err();
        assert!(matches!(
            limited,
            Outcome::Retry {
                status: Some(429),
                after: Some(_),
                ..
            }
        ));
        assert_eq!(judge(&answer(429, "")).unwrap_err().label(), "retry");
        assert_eq!(
            judge(&answer(200, "<html>")).unwrap_err().label(),
            "permanent"
        );
    }

    #[test]
    fn a_vanished_message_is_posted_again() {
        assert!(must_repost(&classify_api_error("message_not_found", None)));
        assert!(must_repost(&classify_api_error(
            "cant_update_message",
            None
        )));
        assert!(!must_repost(&classify_api_error("channel_not_found", None)));
    }
}
