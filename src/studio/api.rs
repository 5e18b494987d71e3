//! The studio's HTTP API and its page. Every answer is JSON (the page and its assets aside);
//! a template that does not compile or render is a `200` with problems, bad requests are
//! `4xx` with `{"error": …}` and a log line, never a `5xx`.

use super::guard;
use super::problems::{self, Problem};
use super::samples::{self, Sample};
use super::{STORE_SAMPLES, State};
use crate::destination::{BuildEnv, Context, DestinationKind, Outcome};
use crate::event::Event;
use crate::queue::plan;
use crate::render::{Body, Renderer, TemplateData, TemplateKind};
use crate::routing::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State as Shared};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router as Routes};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest template source taken.
pub const MAX_SOURCE: usize = 256 * 1024;

/// The largest request body (a pasted payload).
const MAX_REQUEST: usize = 2 * 1024 * 1024;

/// How long one rendering may take; past it, the template surely repeats itself.
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);

const INDEX: &str = include_str!("assets/index.html");
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "studio.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/studio.js"),
    ),
    (
        "studio.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/studio.css"),
    ),
];

type AppState = Shared<Arc<State>>;

/// The routes, behind the guard.
pub(super) fn router(state: Arc<State>) -> Routes {
    Routes::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/info", get(info))
        .route("/api/templates", get(templates))
        .route("/api/templates/{kind}/{name}", put(save))
        .route("/api/samples", get(list_samples))
        .route("/api/samples/{id}", get(one_sample))
        .route("/api/render", post(render))
        .route("/api/explain", post(explain))
        .route("/api/send", post(send))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .layer(middleware::from_fn_with_state(state.clone(), check))
        .with_state(state)
}

/// A request the studio will not serve: its status and why, answered as `{"error": …}` and
/// logged.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::warn!(status = self.status.as_u16(), message = %self.message, "studio request refused");
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// A `422` with the problems found.
fn unprocessable(problems: Value) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "problems": problems })),
    )
        .into_response()
}

/// The guard, and headers every answer carries.
async fn check(Shared(state): AppState, request: Request, next: Next) -> Response {
    let writes = request.uri().path() == "/api/send" || request.method() == Method::PUT;
    if let Err(refusal) = guard::check(request.headers(), writes, &state.hosts, &state.token) {
        state.refused.count(&refusal);
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            origin = request.headers().get("origin").and_then(|v| v.to_str().ok()).unwrap_or("-"),
            reason = refusal.message(),
            "studio refused a request"
        );
        return error(StatusCode::FORBIDDEN, refusal.message()).into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Card images are the user's own content, from anywhere; everything else is the studio's.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

async fn index(Shared(state): AppState) -> Response {
    let page = INDEX.replace("__KB_TOKEN__", &state.token);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, bytes)) => ([(header::CONTENT_TYPE, *kind)], *bytes).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

async fn info(Shared(state): AppState) -> Json<Value> {
    let config = &state.config;
    let destinations: Vec<Value> = config
        .destinations
        .iter()
        .map(|d| {
            json!({"name": d.name, "kind": d.kind.as_str(),
                   "template_kind": d.kind.template_kind().as_str(), "enabled": d.enabled()})
        })
        .collect();
    Json(json!({
        "config": config.path.display().to_string(),
        "templates_dir": config.templates_dir.as_ref().map(|d| d.display().to_string()),
        "allow_send": state.allow_send,
        "kinds": TemplateKind::ALL.map(TemplateKind::as_str),
        "destinations": destinations,
        "store": state.store_problem.as_deref().map_or(json!("open"), |p| json!(p)),
        "refused": state.refused.counts(),
    }))
}

async fn templates(Shared(state): AppState) -> Json<Value> {
    let list: Vec<Value> = state
        .renderer
        .load()
        .templates()
        .into_iter()
        .map(|t| {
            json!({"kind": t.kind.as_str(), "name": t.name, "source": t.source,
                   "builtin": t.builtin, "overridden": t.overridden,
                   "partial": t.name.starts_with('_')})
        })
        .collect();
    Json(Value::Array(list))
}

/// Every sample: built-in, from the folder, and the store's latest (read afresh).
async fn all_samples(state: &State) -> Vec<Sample> {
    let mut all = state.builtin_samples.clone();
    all.extend(state.file_samples.iter().cloned());
    if let Some(store) = &state.store {
        match store.recent_events(STORE_SAMPLES).await {
            Ok(events) => all.extend(samples::from_store(events)),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's recent events"),
        }
    }
    all
}

async fn find_sample(state: &State, id: &str) -> Option<Sample> {
    if let Some(n) = id.strip_prefix("store:") {
        let id: i64 = n.parse().ok()?;
        let stored = state.store.as_ref()?.event(id).await.ok()?;
        return samples::from_store(vec![stored]).into_iter().next();
    }
    state
        .builtin_samples
        .iter()
        .chain(&state.file_samples)
        .find(|s| s.id == id)
        .cloned()
}

async fn list_samples(Shared(state): AppState) -> Json<Value> {
    Json(json!(all_samples(&state).await))
}

async fn one_sample(Shared(state): AppState, Path(id): Path<String>) -> Response {
    match find_sample(&state, &id).await {
        Some(s) => {
            Json(json!({"id": s.id, "event": s.event, "payload": s.payload})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no sample {id:?}")).into_response(),
    }
}

/// Which event a request is about: a sample, or a pasted payload.
#[derive(Debug, Deserialize)]
struct EventChoice {
    sample: Option<String>,
    payload: Option<Value>,
    event: Option<String>,
}

impl EventChoice {
    async fn event(&self, state: &State) -> Result<Event, ApiError> {
        let mut event = match (&self.sample, &self.payload) {
            (_, Some(payload)) => {
                if !payload.is_object() {
                    return Err(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "the payload must be a JSON object",
                    ));
                }
                let name = self
                    .event
                    .clone()
                    .or_else(|| payload["event"].as_str().map(str::to_string));
                let Some(name) = name.filter(|n| !n.is_empty() && n.len() <= 100) else {
                    return Err(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "the payload names no event: give its \"event\" field, or \"event\" beside it",
                    ));
                };
                Event::from_value(&name, payload.clone(), chrono::Utc::now())
            }
            (Some(id), None) => match find_sample(state, id).await {
                Some(sample) => {
                    let mut event = sample.to_event();
                    if let Some(name) = &self.event {
                        event =
                            Event::from_value(name, event.payload().clone(), event.received_at());
                    }
                    event
                }
                None => return Err(error(StatusCode::NOT_FOUND, format!("no sample {id:?}"))),
            },
            (None, None) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "name a \"sample\" or give a \"payload\"",
                ));
            }
        };
        // As `render` does: no branch history here, so a finished build is the first of its branch.
        if event.transition().is_none() {
            let transition = crate::transition::outcome(&event)
                .and_then(|b| crate::transition::next(None, &b))
                .map(|(t, _)| t);
            event.set_transition(transition);
        }
        Ok(event)
    }
}

#[derive(Debug, Deserialize)]
struct RenderRequest {
    kind: String,
    name: Option<String>,
    source: Option<String>,
    #[serde(flatten)]
    choice: EventChoice,
}

fn template_kind(kind: &str) -> Result<TemplateKind, ApiError> {
    TemplateKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("kind {kind:?} is not one of slack, teams, console, webhook"),
            )
        })
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| error(e.status(), e.body_text()))
}

/// What one rendering came to.
struct Rendering {
    template: Option<String>,
    body: Option<Body>,
    problems: Vec<Problem>,
    ms: f64,
}

impl Rendering {
    fn failed(problem: Problem, started: Instant) -> Self {
        Self {
            template: None,
            body: None,
            problems: vec![problem],
            ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }

    fn to_json(&self) -> Value {
        let (body, text) = match &self.body {
            Some(Body::Json(v)) => (v.clone(), v.to_string()),
            Some(Body::Text(t)) => (Value::Null, t.clone()),
            None => (Value::Null, String::new()),
        };
        json!({"template": self.template, "body": body, "text": text,
               "problems": self.problems, "ms": self.ms})
    }
}

/// Renders `event` with template `name` of `kind` (its `source` when given, else as saved),
/// as the first destination kind using that template kind would, on a blocking thread with a
/// time limit.
async fn render_with(
    state: &State,
    kind: TemplateKind,
    name: &str,
    source: Option<&str>,
    event: Event,
) -> Rendering {
    let started = Instant::now();
    let base = state.renderer.load_full();
    let renderer: Arc<Renderer> = match source {
        Some(source) => {
            match base.with_template(kind, name, source, &format!("{kind}/{name} (editing)")) {
                Ok(r) => Arc::new(r),
                Err(e) => return Rendering::failed(problems::compile(&e), started),
            }
        }
        None if base.has(kind, name) => base,
        None => {
            return Rendering::failed(
                Problem::general("handlebars", format!("no {kind} template named {name:?}")),
                started,
            );
        }
    };
    let Some(destination) = DestinationKind::rendered_by(kind) else {
        return Rendering::failed(
            Problem::general("shape", "no destination renders these"),
            started,
        );
    };
    let (name, source) = (name.to_string(), source.unwrap_or_default().to_string());
    let work = tokio::task::spawn_blocking(move || {
        // A partial is seen through the template the event would get, which includes it.
        let chosen = if name.starts_with('_') {
            renderer.select(kind, None, &event)
        } else {
            Ok(name.clone())
        };
        let data = TemplateData::new(&event, chrono::Utc::now());
        let rendered = chosen.and_then(|chosen| {
            renderer
                .render(kind, &chosen, &data)
                .map(|body| (chosen, body))
        });
        match rendered {
            Err(e) => (None, None, vec![problems::render(&e, &name, &source)]),
            Ok((chosen, raw)) => {
                let mut body = raw.clone();
                let mut found = Vec::new();
                if let Err(why) = destination.fit(&mut body) {
                    found.push(Problem::general("limit", why));
                }
                if let (Body::Json(before), Body::Json(after)) = (&raw, &body) {
                    found.extend(problems::shortened(before, after));
                }
                if let Err(why) = destination.check_body(&body) {
                    found.push(Problem::general("shape", why));
                }
                (Some(chosen), Some(body), found)
            }
        }
    });
    match tokio::time::timeout(RENDER_TIMEOUT, work).await {
        Ok(Ok((template, body, problems))) => Rendering {
            template,
            body,
            problems,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        },
        Ok(Err(e)) => Rendering::failed(
            Problem::general("handlebars", format!("rendering failed: {e}")),
            started,
        ),
        Err(_) => Rendering::failed(
            Problem::general(
                "handlebars",
                format!(
                    "rendering took longer than {} s: does the template repeat itself?",
                    RENDER_TIMEOUT.as_secs()
                ),
            ),
            started,
        ),
    }
}

/// The name and source a request edits, checked.
fn edited(
    kind: TemplateKind,
    name: Option<&str>,
    source: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(source) = source
        && source.len() > MAX_SOURCE
    {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a template may hold {} KiB at most", MAX_SOURCE / 1024),
        ));
    }
    match name {
        Some(name) => valid_name(name).map(str::to_string),
        None if source.is_some() => Ok("studio".to_string()),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            format!("give the {kind} template's \"name\", or its \"source\""),
        )),
    }
}

/// A template name is a file name: letters, digits, `_`, `-` and `.`, not starting with a dot.
fn valid_name(name: &str) -> Result<&str, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            "a template name holds letters, digits, _, - and . (not starting with a dot), 64 at most",
        ))
    }
}

async fn render(
    Shared(state): AppState,
    body: Result<Json<RenderRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(body)?;
    let kind = template_kind(&request.kind)?;
    let name = edited(kind, request.name.as_deref(), request.source.as_deref())?;
    let event = request.choice.event(&state).await?;
    let rendering = render_with(&state, kind, &name, request.source.as_deref(), event).await;
    Ok(Json(rendering.to_json()).into_response())
}

async fn explain(
    Shared(state): AppState,
    body: Result<Json<EventChoice>, JsonRejection>,
) -> Result<Response, ApiError> {
    let choice = json_body(body)?;
    let event = choice.event(&state).await?;
    let config = &state.config;
    let router = Router::new(config.routes.clone());
    let explained = router.explain(&event);
    let routes = router.route(&event);
    let renderer = state.renderer.load();
    let deliveries: Vec<Value> = plan(&routes, &event, |_| true)
        .deliveries
        .iter()
        .filter_map(|d| {
            let dest = config.destination(&d.destination)?;
            let template = renderer
                .select(dest.kind.template_kind(), d.template.as_deref(), &event)
                .ok();
            Some(
                json!({"route": d.route, "destination": d.destination, "kind": dest.kind.as_str(),
                        "template": template, "enabled": dest.enabled()}),
            )
        })
        .collect();
    Ok(
        Json(json!({"event": event.name(), "routes": explained, "deliveries": deliveries}))
            .into_response(),
    )
}

async fn save(
    Shared(state): AppState,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = template_kind(&kind)?;
    let name = valid_name(&name)?.to_string();
    if body.len() > MAX_SOURCE {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a template may hold {} KiB at most", MAX_SOURCE / 1024),
        ));
    }
    let Ok(source) = String::from_utf8(body.to_vec()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the template is not UTF-8 text",
        ));
    };
    let Some(dir) = state.config.templates_dir.clone() else {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "{} has no [templates] dir: add one (for example dir = \"templates\") and start the studio again",
                state.config.path.display()
            ),
        ));
    };
    let file = dir.join(kind.as_str()).join(format!("{name}.hbs"));
    let base = state.renderer.load_full();
    let renderer = match base.with_template(kind, &name, &source, &file.display().to_string()) {
        Ok(r) => r,
        Err(e) => {
            return Ok(unprocessable(json!([problems::compile(&e)])));
        }
    };
    // Only what `serve` would take: every template renders, validly, every built-in sample it
    // is used for.
    let config = state.config.clone();
    let checked = {
        let renderer = renderer.clone();
        tokio::time::timeout(
            RENDER_TIMEOUT * 5,
            tokio::task::spawn_blocking(move || {
                crate::validate::check_renderer(&config, &renderer)
            }),
        )
        .await
    };
    match checked {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(found))) => {
            let found: Vec<Problem> = found
                .into_iter()
                .map(|p| Problem::general("handlebars", p))
                .collect();
            return Ok(unprocessable(json!(found)));
        }
        _ => {
            return Ok(unprocessable(json!([Problem::general(
                "handlebars",
                "checking the templates took too long: does one repeat itself?"
            )])));
        }
    }
    if let Err(e) = write_inside(&dir, &file, &source) {
        return Err(error(
            StatusCode::CONFLICT,
            format!("cannot write {}: {e}", file.display()),
        ));
    }
    state.renderer.store(Arc::new(renderer));
    tracing::info!(file = %file.display(), "template saved");
    Ok(Json(json!({
        "saved": file.display().to_string(),
        "message": format!("saved {}; a running `kitebridge serve` picks it up on reload (SIGHUP, or POST /-/reload)", file.display()),
    }))
    .into_response())
}

/// Writes `file` (`dir/KIND/NAME.hbs`) whole: to a temporary file, then renamed over it. Nothing
/// is created or written outside `dir`: a kind folder that is a link leading out is refused
/// before anything is made, and a link in the file's place is replaced, never followed.
fn write_inside(dir: &std::path::Path, file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let outside = || std::io::Error::other("it is outside the templates folder");
    // The templates folder itself is the operator's to place, wherever it is.
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let kind = file
        .parent()
        .and_then(|f| f.file_name())
        .ok_or_else(outside)?;
    let name = file.file_name().ok_or_else(outside)?;
    let folder = dir.join(kind);
    if let Err(e) = std::fs::symlink_metadata(&folder) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir(&folder)?;
    }
    let folder = folder.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            std::io::Error::other(format!("{} is a link to nowhere", kind.to_string_lossy()))
        }
        _ => e,
    })?;
    if !folder.starts_with(&dir) {
        return Err(outside());
    }
    let temporary = folder.join(format!(".{}.tmp", name.to_string_lossy()));
    // A leftover (or a planted link) goes first: the new file is always a new file.
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&temporary, folder.join(name))
}

#[derive(Debug, Deserialize)]
struct SendRequest {
    destination: String,
    name: Option<String>,
    source: Option<String>,
    #[serde(flatten)]
    choice: EventChoice,
}

async fn send(
    Shared(state): AppState,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !state.allow_send {
        return Err(error(
            StatusCode::FORBIDDEN,
            "sending is off: start the studio with --allow-send",
        ));
    }
    let request = json_body(body)?;
    let Some(dest) = state.config.destination(&request.destination).cloned() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no destination {:?}", request.destination),
        ));
    };
    if let Some(reason) = dest.disabled_reason() {
        return Err(error(
            StatusCode::CONFLICT,
            format!("destination {:?} is disabled: {reason}", dest.name),
        ));
    }
    let kind = dest.kind.template_kind();
    let event = request.choice.event(&state).await?;
    let name = match (&request.name, &request.source) {
        (None, None) => match state.renderer.load().select(kind, None, &event) {
            Ok(n) => n,
            Err(e) => return Err(error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        },
        _ => edited(kind, request.name.as_deref(), request.source.as_deref())?,
    };
    let event_name = event.name().to_string();
    let rendering = render_with(&state, kind, &name, request.source.as_deref(), event).await;
    let Some(body) = rendering.body else {
        return Ok(unprocessable(json!(rendering.problems)));
    };
    let mut env = BuildEnv {
        client: state.client.clone(),
        store: None,
    };
    // A destination that needs a store (a Slack app keeps which message is which build's
    // there) gets a scratch one. Not the real one, which the studio only reads: there a test
    // would update (or become) a build's live message; in a scratch one every test is new.
    let sender = match dest.build(&env) {
        Some(sender) => sender,
        None => {
            let scratch = scratch_store()
                .await
                .map_err(|e| error(StatusCode::CONFLICT, format!("no scratch store: {e}")))?;
            env.store = Some(scratch);
            dest.build(&env).ok_or_else(|| {
                error(
                    StatusCode::CONFLICT,
                    format!("destination {:?} cannot be built here", dest.name),
                )
            })?
        }
    };
    let started = Instant::now();
    let context = Context {
        event_name,
        ..Context::default()
    };
    let outcome = sender.send(&body, &context).await;
    let reason = match &outcome {
        Outcome::Sent { .. } => None,
        Outcome::Retry { reason, .. } | Outcome::Permanent { reason, .. } => Some(reason.clone()),
    };
    tracing::info!(destination = %dest.name, outcome = outcome.label(), "studio sent a test");
    Ok(Json(
        json!({"outcome": outcome.label(), "status": outcome.status(), "reason": reason,
                "ms": started.elapsed().as_millis() as u64}),
    )
    .into_response())
}

/// An empty store in memory, gone when dropped.
async fn scratch_store() -> Result<Arc<dyn crate::store::Store>, crate::store::StoreError> {
    let name = format!(
        "file:kitebridge-studio-{:016x}?mode=memory&cache=shared",
        fastrand::u64(..)
    );
    let store = tokio::task::spawn_blocking(move || {
        crate::store::sqlite::SqliteStore::open(
            std::path::Path::new(&name),
            crate::store::sqlite::Durability::Normal,
        )
    })
    .await
    .map_err(|_| crate::store::StoreError::Closed)??;
    Ok(Arc::new(store))
}
