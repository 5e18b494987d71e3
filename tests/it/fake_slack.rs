//! A fake Slack Web API on 127.0.0.1: `users.info`, `usergroups.users.list` and `chat.update`
//! under `/api`, and `response_url` sinks under `/respond/N`. Records every request.
//!
//! ```ignore
//! let slack = FakeSlack::start().await;
//! slack.set_user(json!({"id": "U1", "team_id": "T1", "real_name": "Ana", "profile": {"email": "ana@example.com"}}));
//! slack.set_usergroup("S1", &["U1"]);
//! let api = SlackApi::new(client(), &slack.api_url(), Secret::new(FakeSlack::TOKEN));
//! let url = slack.response_url();
//! // … after the press:
//! assert_eq!(slack.updates()[0]["ts"], "1700000000.000100");
//! assert_eq!(slack.responses()[0]["replace_original"], false);
//! ```
#![allow(dead_code)]

pub use crate::fake_buildkite::Recorded;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A scripted answer for one request to an API method (or a `/respond/N` path).
#[derive(Debug, Clone)]
pub enum SlackReply {
    /// `200` with this JSON (e.g. `{"ok": false, "error": "channel_not_found"}`).
    Json(Value),
    /// This HTTP status with an empty body.
    Status(u16),
    /// `429` with `Retry-After: retry_after_secs`.
    TooMany { retry_after_secs: u64 },
}

#[derive(Default)]
struct SlackState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<Vec<(String, SlackReply)>>,
    users: Mutex<HashMap<String, Value>>,
    groups: Mutex<HashMap<String, Vec<String>>>,
    sinks: AtomicUsize,
}

/// The fake. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct FakeSlack {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<SlackState>,
}

impl FakeSlack {
    /// A bot token it accepts. Any `Bearer xoxb-…` is accepted (each Slack app destination has
    /// its own); none gives `not_authed`, another kind `invalid_auth`.
    pub const TOKEN: &'static str = "xoxb-fake-slack-token";

    /// Starts on a random port.
    pub async fn start() -> Self {
        let state = Arc::new(SlackState::default());
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::any(api))
            .route("/respond/{n}", axum::routing::post(respond))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    /// The Web API URL: `http://127.0.0.1:PORT/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// A fresh `response_url` (`http://127.0.0.1:PORT/respond/N`) whose bodies
    /// [`FakeSlack::responses`] returns.
    pub fn response_url(&self) -> String {
        let n = self.state.sinks.fetch_add(1, Ordering::SeqCst) + 1;
        format!("http://{}/respond/{n}", self.addr)
    }

    /// Adds (or replaces, by its `id`) a user for `users.info` to answer with; unknown ids get
    /// `user_not_found`.
    pub fn set_user(&self, user: Value) {
        let id = user["id"].as_str().expect("a user has an id").to_string();
        self.state.users.lock().unwrap().insert(id, user);
    }

    /// Sets the members of user group `id`; unknown groups get `no_such_subteam`.
    pub fn set_usergroup(&self, id: &str, members: &[&str]) {
        self.state.groups.lock().unwrap().insert(
            id.to_string(),
            members.iter().map(|m| m.to_string()).collect(),
        );
    }

    /// Queues `reply` for the next request to API method `method` (`"users.info"`) or path
    /// ending with it (`"respond/1"`), before the default.
    pub fn script(&self, method: &str, reply: SlackReply) {
        self.state
            .script
            .lock()
            .unwrap()
            .push((method.to_string(), reply));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests to API method `method` (`"users.info"`).
    pub fn calls(&self, method: &str) -> Vec<Recorded> {
        let path = format!("/api/{method}");
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The JSON bodies of every `chat.update`, in order.
    pub fn updates(&self) -> Vec<Value> {
        self.calls("chat.update")
            .iter()
            .map(Recorded::json)
            .collect()
    }

    /// The JSON bodies posted to any `response_url`, in order.
    pub fn responses(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with("/respond/"))
            .map(Recorded::json)
            .collect()
    }
}

fn record(
    state: &SlackState,
    method: Method,
    path: String,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) {
    state.requests.lock().unwrap().push(Recorded {
        method,
        path,
        query: query.unwrap_or_default(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
}

/// Takes the first scripted reply for `path`, as a response.
fn scripted(state: &SlackState, path: &str) -> Option<Response> {
    let reply = {
        let mut script = state.script.lock().unwrap();
        let at = script
            .iter()
            .position(|(key, _)| path.ends_with(key.as_str()))?;
        script.remove(at).1
    };
    Some(match reply {
        SlackReply::Json(json) => axum::Json(json).into_response(),
        SlackReply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        SlackReply::TooMany { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
        )
            .into_response(),
    })
}

async fn api(
    State(state): State<Arc<SlackState>>,
    method: Method,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/api/{name}");
    record(&state, method, path.clone(), query.clone(), &headers, &body);
    if let Some(reply) = scripted(&state, &path) {
        return reply;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.is_empty() {
        return axum::Json(json!({"ok": false, "error": "not_authed"})).into_response();
    }
    if !auth.starts_with("Bearer xoxb-") {
        return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let params = crate::fake_buildkite::parse_form(query.as_deref().unwrap_or(""));
    let answer = match name.as_str() {
        "users.info" => match params
            .get("user")
            .and_then(|id| state.users.lock().unwrap().get(id).cloned())
        {
            Some(user) => json!({"ok": true, "user": user}),
            None => json!({"ok": false, "error": "user_not_found"}),
        },
        "usergroups.users.list" => match params
            .get("usergroup")
            .and_then(|id| state.groups.lock().unwrap().get(id).cloned())
        {
            Some(users) => json!({"ok": true, "users": users}),
            None => json!({"ok": false, "error": "no_such_subteam"}),
        },
        "auth.test" => {
            json!({"ok": true, "team_id": "T0ACME", "team": "Acme", "user_id": "U0KBBOT"})
        }
        "chat.postMessage" => {
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match asked["channel"].as_str() {
                Some(channel) => json!({"ok": true, "channel": channel, "ts": "1700000000.000100"}),
                None => json!({"ok": false, "error": "channel_not_found"}),
            }
        }
        "chat.update" => {
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match (asked["channel"].as_str(), asked["ts"].as_str()) {
                (Some(channel), Some(ts)) => json!({"ok": true, "channel": channel, "ts": ts,
                    "text": asked["text"].clone(), "message": asked}),
                _ => json!({"ok": false, "error": "invalid_arguments"}),
            }
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    axum::Json(answer).into_response()
}

async fn respond(
    State(state): State<Arc<SlackState>>,
    Path(n): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/respond/{n}");
    record(&state, Method::POST, path.clone(), None, &headers, &body);
    if let Some(reply) = scripted(&state, &path) {
        return reply;
    }
    if serde_json::from_slice::<Value>(&body).is_err() {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    }
    axum::Json(json!({"ok": true})).into_response()
}
