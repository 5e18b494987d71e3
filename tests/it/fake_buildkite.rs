//! A fake Buildkite REST API on 127.0.0.1: records every request, answers the build, retry,
//! rebuild, unblock and cancel endpoints with plausible JSON, and can be scripted.
//!
//! ```ignore
//! let bk = FakeBuildkite::start().await;
//! bk.set_build("web-app", 1842, json!({"number": 1842, "jobs": [...]}));
//! bk.script("/rebuild", BkReply::Status(422, json!({"message": "Build not rebuildable"})));
//! let client = Buildkite::new(client(), &bk.url(), "acme", Secret::new(FakeBuildkite::TOKEN));
//! assert_eq!(bk.puts("/rebuild"), 1);
//! ```
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request a fake server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `PUT`, `POST`, …
    pub method: Method,
    /// The path, from the leading `/`.
    pub path: String,
    /// The raw query string, without `?` (empty when none).
    pub query: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The query (or a form body) as name → value.
    pub fn params(&self) -> HashMap<String, String> {
        parse_form(&self.query)
    }

    /// A form-encoded body as name → value.
    pub fn form(&self) -> HashMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body))
    }
}

/// `a=1&b=x+y` as a map.
pub fn parse_form(text: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x.invalid/?{text}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A scripted answer. Each one answers one request whose path ends with its key, then the
/// defaults resume; several queued for one key answer in order.
#[derive(Debug, Clone)]
pub enum BkReply {
    /// `200` with this JSON.
    Ok(Value),
    /// This status with this JSON, e.g. `422 {"message": "Job not retriable"}`.
    Status(u16, Value),
    /// `429` with `Retry-After: retry_after_secs` (and `RateLimit-Reset`).
    TooMany { retry_after_secs: u64 },
    /// Sleep this long, then answer as by default (the default work is done too).
    Slow(Duration),
}

#[derive(Default)]
struct BkState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<Vec<(String, BkReply)>>,
    builds: Mutex<HashMap<(String, u64), Value>>,
}

/// The fake. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct FakeBuildkite {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<BkState>,
}

impl FakeBuildkite {
    /// The API token it accepts (`Authorization: Bearer …`); any other gets `401`.
    pub const TOKEN: &'static str = "bkua_fake_buildkite_token";

    /// The organization slug its default answers use in URLs.
    pub const ORG: &'static str = "acme";

    /// Starts on a random port.
    pub async fn start() -> Self {
        let state = Arc::new(BkState::default());
        let app = axum::Router::new()
            .route("/v2/{*path}", axum::routing::any(handle))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    /// The API URL to give the client: `http://127.0.0.1:PORT/v2`.
    pub fn url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    /// Queues `reply` for the next request whose path ends with `path_suffix` (`"/rebuild"`,
    /// `"retry"`, `"builds/1842"`).
    pub fn script(&self, path_suffix: &str, reply: BkReply) {
        self.state
            .script
            .lock()
            .unwrap()
            .push((path_suffix.to_string(), reply));
    }

    /// What `GET …/pipelines/{pipeline}/builds/{number}` answers (otherwise a failed build with
    /// one failed and one passed script job). Retries and unblocks update it.
    pub fn set_build(&self, pipeline: &str, number: u64, build: Value) {
        self.state
            .builds
            .lock()
            .unwrap()
            .insert((pipeline.to_string(), number), build);
    }

    /// The build as it is now (after retries and unblocks).
    pub fn build(&self, pipeline: &str, number: u64) -> Option<Value> {
        self.state
            .builds
            .lock()
            .unwrap()
            .get(&(pipeline.to_string(), number))
            .cloned()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `PUT`s whose path contains `path_contains`.
    pub fn put_requests(&self, path_contains: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::PUT && r.path.contains(path_contains))
            .collect()
    }

    /// How many `PUT`s had a path containing `path_contains`.
    pub fn puts(&self, path_contains: &str) -> usize {
        self.put_requests(path_contains).len()
    }
}

/// The default build for `GET` when none was set.
pub fn default_build(org: &str, pipeline: &str, number: u64) -> Value {
    let web = format!("https://buildkite.com/{org}/{pipeline}/builds/{number}");
    json!({
        "id": format!("build-{number}"),
        "number": number,
        "state": "failed",
        "web_url": web,
        "jobs": [
            {"id": "job-failed-1", "type": "script", "name": "Tests", "state": "failed",
             "retried": false, "web_url": format!("{web}#job-failed-1")},
            {"id": "job-passed-1", "type": "script", "name": "Lint", "state": "passed",
             "retried": false, "web_url": format!("{web}#job-passed-1")}
        ]
    })
}

async fn handle(
    State(state): State<Arc<BkState>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v2/{rest}");
    state.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.unwrap_or_default(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
    let scripted = {
        let mut script = state.script.lock().unwrap();
        let at = script
            .iter()
            .position(|(key, _)| path.ends_with(key.as_str()));
        at.map(|i| script.remove(i).1)
    };
    match scripted {
        Some(BkReply::Ok(json)) => return (StatusCode::OK, axum::Json(json)).into_response(),
        Some(BkReply::Status(code, json)) => {
            return (StatusCode::from_u16(code).unwrap(), axum::Json(json)).into_response();
        }
        Some(BkReply::TooMany { retry_after_secs }) => {
            let secs = retry_after_secs.to_string();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.clone()), ("ratelimit-reset", secs)],
                axum::Json(json!({"message": "Too many requests"})),
            )
                .into_response();
        }
        Some(BkReply::Slow(pause)) => tokio::time::sleep(pause).await,
        None => {}
    }
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", FakeBuildkite::TOKEN));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Authentication required. Please supply a valid API Access Token"})),
        )
            .into_response();
    }
    let (status, json) = default_answer(&state, &method, &rest, &body);
    (StatusCode::from_u16(status).unwrap(), axum::Json(json)).into_response()
}

/// The plausible answer for `rest` (the path after `/v2/`).
fn default_answer(state: &BkState, method: &Method, rest: &str, body: &[u8]) -> (u16, Value) {
    let parts: Vec<&str> = rest.split('/').collect();
    let not_found = (404, json!({"message": "No build found"}));
    // organizations/{org}/pipelines/{p}/builds/{n}[/…]
    let [
        "organizations",
        org,
        "pipelines",
        pipeline,
        "builds",
        number,
        tail @ ..,
    ] = parts.as_slice()
    else {
        return not_found;
    };
    let Ok(number) = number.parse::<u64>() else {
        return not_found;
    };
    let key = (pipeline.to_string(), number);
    let web = format!("https://buildkite.com/{org}/{pipeline}/builds/{number}");
    let mut builds = state.builds.lock().unwrap();
    let build = builds
        .entry(key)
        .or_insert_with(|| default_build(org, pipeline, number));
    match (method.as_str(), tail) {
        ("GET", []) => (200, build.clone()),
        ("PUT", ["rebuild"]) => {
            let n = number + 1;
            (
                201,
                json!({"id": format!("build-{n}"), "number": n, "state": "scheduled",
                       "web_url": format!("https://buildkite.com/{org}/{pipeline}/builds/{n}")}),
            )
        }
        ("PUT", ["cancel"]) => {
            build["state"] = json!("canceling");
            (
                200,
                json!({"id": format!("build-{number}"), "number": number, "state": "canceling", "web_url": web}),
            )
        }
        ("PUT", ["jobs", job, "retry"]) => {
            let Some(old) = find_job(build, job) else {
                return (404, json!({"message": "No job found"}));
            };
            if old["retried"] == json!(true) {
                return (422, json!({"message": "Job has already been retried"}));
            }
            old["retried"] = json!(true);
            let mut new = old.clone();
            let new_id = format!("{job}-retry");
            new["id"] = json!(new_id);
            new["state"] = json!("scheduled");
            new["retried"] = json!(false);
            new["web_url"] = json!(format!("{web}#{new_id}"));
            old["retried_in_job_id"] = json!(new_id);
            if let Some(jobs) = build["jobs"].as_array_mut() {
                jobs.push(new.clone());
            }
            (200, new)
        }
        ("PUT", ["jobs", job, "unblock"]) => {
            let Some(found) = find_job(build, job) else {
                return (404, json!({"message": "No job found"}));
            };
            if found["state"] != json!("blocked") {
                return (422, json!({"message": "This job is not blocked"}));
            }
            found["state"] = json!("unblocked");
            let asked: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            found["unblocked_by"] = json!({"id": asked["unblocker"].clone()});
            found["fields"] = asked["fields"].clone();
            let mut answer = found.clone();
            if answer.get("web_url").is_none() {
                answer["web_url"] = json!(format!("{web}#{job}"));
            }
            (200, answer)
        }
        _ => not_found,
    }
}

fn find_job<'a>(build: &'a mut Value, id: &str) -> Option<&'a mut Value> {
    build["jobs"]
        .as_array_mut()?
        .iter_mut()
        .find(|j| j["id"] == json!(id))
}
