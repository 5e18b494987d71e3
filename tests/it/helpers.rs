//! Test harness: the real service on a random port, a recording server playing Slack and
//! Teams, and Buildkite-style signing.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kitebridge::config::Config;
use kitebridge::server::Service;
use kitebridge::store::StoreConfig;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-token-7d1f";

/// Every fixture, as `(file name, bytes)`.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buildkite");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn fixture(name: &str) -> Vec<u8> {
    fixtures().into_iter().find(|(n, _)| n == name).unwrap().1
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `X-Buildkite-Signature` for `body`, signed at `ts` with `token`.
pub fn signature(token: &str, ts: i64, body: &[u8]) -> String {
    kitebridge::auth::sign(token, ts, body)
}

/// What the recording server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status and body.
    Status(u16, &'static str),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Never answer.
    Hang,
    /// Answer `200 ok` after this many milliseconds.
    Slow(u64),
    /// Answer with this status and JSON body.
    Json(u16, &'static str),
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
}

/// One request the recording server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: axum::http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

#[derive(Default)]
struct RecorderState {
    received: Mutex<Vec<Received>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
}

/// An HTTP server standing in for Slack, Teams and webhook receivers. Paths starting with `teams` answer 202 by
/// default, others `200 ok`; scripted replies per path come first.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    state: Arc<RecorderState>,
}

async fn record(
    State(state): State<Arc<RecorderState>>,
    method: axum::http::Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.received.lock().unwrap().push(Received {
        method,
        path: path.clone(),
        headers,
        body: body.to_vec(),
        at: std::time::Instant::now(),
    });
    let scripted = state
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(|q| q.pop_front());
    match scripted {
        Some(Reply::Status(code, body)) => {
            (StatusCode::from_u16(code).unwrap(), body).into_response()
        }
        Some(Reply::RateLimited(secs)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "rate_limited",
        )
            .into_response(),
        Some(Reply::Json(code, body)) => (
            StatusCode::from_u16(code).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Some(Reply::Redirect(to)) => {
            (StatusCode::TEMPORARY_REDIRECT, [("location", to)], "moved").into_response()
        }
        Some(Reply::Slow(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, "ok").into_response()
        }
        Some(Reply::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        None if path.starts_with("teams") => StatusCode::ACCEPTED.into_response(),
        // The Slack Web API: every post gets a new ts; updates answer ok.
        None if path.ends_with("chat.postMessage") => {
            let n = state
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.path.ends_with("chat.postMessage"))
                .count();
            axum::Json(serde_json::json!({"ok": true, "channel": "C0TEST", "ts": format!("1700000000.{n:06}")})).into_response()
        }
        None if path.ends_with("chat.update") => {
            axum::Json(serde_json::json!({"ok": true})).into_response()
        }
        None => (StatusCode::OK, "ok").into_response(),
    }
}

impl Recorder {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to come back on the port a service already points at).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(RecorderState::default());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(record).put(record))
            .with_state(state.clone());
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Queues replies for `path`, used before the default.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .script
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits (up to 10 s) until at least `n` requests arrived on `path`.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received_on(path);
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The SQLite file a config stores in (empty for a shared store).
pub fn sqlite_path(config: &Config) -> std::path::PathBuf {
    match &config.storage {
        StoreConfig::Sqlite { path, .. } => path.clone(),
        StoreConfig::Postgres(_) => std::path::PathBuf::new(),
    }
}

/// The service under test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The store's database file.
    pub db: std::path::PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// A config sending every event to the recorder's `slack` and `teams` paths; `extra` is
/// appended to `[buildkite]`.
pub fn config_for(recorder: &Recorder, buildkite_extra: &str) -> String {
    format!(
        r#"
[buildkite]
token = "{TOKEN}"
{buildkite_extra}

[test_engine]
key = "te-key-123"

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "{slack}"
rate = 0

[destinations.teams]
kind = "teams"
url = "{teams}"
rate = 0

[[routes]]
name = "everything"
events = ["*"]
to = ["slack", "teams"]
"#,
        slack = recorder.url("slack"),
        teams = recorder.url("teams"),
    )
}

impl TestApp {
    /// Starts the service from a config file (which a reload reads again).
    pub async fn spawn_file(path: &std::path::Path) -> Self {
        init_logs();
        let config = Config::load(path).unwrap_or_else(|e| panic!("test config: {e}"));
        let db = sqlite_path(&config);
        let service = Service::start(config).await.unwrap();
        Self::serve(service, db, None).await
    }

    /// Starts the service from TOML text on 127.0.0.1 with a random port; unless the TOML
    /// has a `[storage]` table, the store lives in a fresh temporary folder.
    pub async fn spawn(toml: &str) -> Self {
        init_logs();
        let mut config = Config::parse(std::path::Path::new("test.toml"), toml, |n| {
            std::env::var(n).ok()
        })
        .unwrap_or_else(|e| panic!("test config: {e}"));
        let dir = (!toml.contains("[storage]")).then(|| tempfile::tempdir().unwrap());
        if let Some(dir) = &dir {
            config.storage = StoreConfig::Sqlite {
                path: dir.path().join("kitebridge.db"),
                durability: kitebridge::store::sqlite::Durability::Full,
            };
        }
        let db = sqlite_path(&config);
        let service = Service::start(config).await.unwrap();
        Self::serve(service, db, dir).await
    }

    /// Serves an already started service on a random port.
    pub async fn serve(
        service: Service,
        db: std::path::PathBuf,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(async move {
            service
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            client: kitebridge::destination::client(),
            db,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts `body` to the Buildkite endpoint with the given extra headers.
    pub async fn post(&self, body: impl Into<Vec<u8>>, headers: &[(&str, String)]) -> (u16, Value) {
        self.post_to("/webhooks/buildkite", body, headers).await
    }

    pub async fn post_to(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).body(body.into());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts `body` signed with the test token at the current time.
    pub async fn post_signed(&self, body: &[u8]) -> (u16, Value) {
        let sig = signature(TOKEN, now(), body);
        let event = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_string));
        let mut headers = vec![("X-Buildkite-Signature", sig)];
        if let Some(e) = event {
            headers.push(("X-Buildkite-Event", e));
        }
        self.post(body.to_vec(), &headers).await
    }

    /// Stops the service gracefully and waits for it.
    /// Returns the temporary folder holding the store, so it outlives the service.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self._dir.take()
    }
}

/// The Adaptive Card 1.4 schema, compiled.
pub fn card_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemas/adaptive-card-1.4.json"
    ))
    .unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft6)
        .build(&schema)
        .expect("the Adaptive Card schema compiles")
}

/// Validates a Teams body's card against the schema, with the Teams-only `msteams` key set
/// aside. Returns the schema errors.
pub fn card_errors(validator: &jsonschema::Validator, body: &Value) -> Vec<String> {
    assert_eq!(body["type"], "message", "{body}");
    let att = &body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let mut card = att["content"].clone();
    card.as_object_mut().unwrap().remove("msteams");
    validator
        .iter_errors(&card)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every string in a JSON value, depth-first.
pub fn strings(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Sends raw bytes over a fresh connection and returns what came back, as text.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Logs to the test output when `KITEBRIDGE_TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("KITEBRIDGE_TEST_LOG").is_some() {
        kitebridge::telemetry::init(kitebridge::telemetry::LogFormat::Text);
    }
}

/// A free port on 127.0.0.1 with nothing listening: a destination that is down.
/// Sends process `pid` the signal `name` (`"HUP"`, `"TERM"`, `"STOP"`…).
pub fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

pub fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Opens a service's store, to look at its deliveries.
pub fn open_store(db: &std::path::Path) -> kitebridge::store::SqliteStore {
    kitebridge::store::SqliteStore::open(db, kitebridge::store::sqlite::Durability::Full).unwrap()
}

/// All deliveries in a store, oldest first.
pub async fn deliveries(db: &std::path::Path) -> Vec<kitebridge::store::Delivery> {
    use kitebridge::store::Operations;
    let mut all = open_store(db).list(None, 10_000).await.unwrap();
    all.reverse();
    all
}

/// Waits (up to 15 s) until `check` holds for the store's deliveries.
pub async fn wait_for_deliveries(
    db: &std::path::Path,
    check: impl Fn(&[kitebridge::store::Delivery]) -> bool,
) -> Vec<kitebridge::store::Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let all = deliveries(db).await;
        if check(&all) || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary, serving a config file.
pub struct Running {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// The log lines up to and including `listening`.
    pub startup: Vec<String>,
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

/// Starts `kitebridge serve` with JSON logs and waits for its `listening` line; the config
/// should listen on `127.0.0.1:0`.
pub async fn start_binary(config: &std::path::Path) -> Running {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kitebridge"));
    cmd.args(serve_args(config));
    start_command(cmd).await
}

/// The arguments of `kitebridge serve` with JSON logs.
pub fn serve_args(config: &std::path::Path) -> Vec<String> {
    ["--log-format", "json", "serve", "--config"]
        .iter()
        .map(|s| s.to_string())
        .chain([config.to_str().unwrap().to_string()])
        .collect()
}

/// Spawns `cmd` with its stderr (kitebridge's log) to read line by line; killed when dropped.
pub fn spawn_logging(
    mut cmd: tokio::process::Command,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// Starts `cmd` (a `kitebridge serve` with JSON logs) and waits for its `listening` line.
pub async fn start_command(cmd: tokio::process::Command) -> Running {
    let (child, mut lines) = spawn_logging(cmd);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut startup = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await
        else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        startup.push(line);
        if v["message"] == "listening" {
            let addr = v["addr"].as_str().unwrap().parse().unwrap();
            return Running {
                child,
                addr,
                startup,
                lines,
            };
        }
    }
    panic!("kitebridge did not start: {startup:?}");
}

/// The real store, with faults on demand: every write refused (a full or read-only disk), or
/// the next few attempt records refused (a locked database).
#[derive(Debug)]
pub struct FaultyStore {
    inner: kitebridge::store::SqliteStore,
    pub fail_writes: std::sync::atomic::AtomicBool,
    pub refuse_records: std::sync::atomic::AtomicU32,
    pub refuse_message_refs: std::sync::atomic::AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: kitebridge::store::SqliteStore) -> Self {
        Self {
            inner,
            fail_writes: Default::default(),
            refuse_records: Default::default(),
            refuse_message_refs: Default::default(),
        }
    }

    fn fault(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fail_writes.load(SeqCst) {
            return Err(StoreError::Database("disk I/O error".into()));
        }
        Ok(())
    }
}

use kitebridge::store::{
    Accepted, Attempt, Carry, Delivery, DeliveryQueue, DeliveryState, Finished, Intake, Leases,
    MessageIds, MessageRef, NewEvent, Operations, Planner, QueueStat, RetrySelector, Ring,
    StoreError, StoredEvent, Taken,
};

#[async_trait::async_trait]
impl Intake for FaultyStore {
    async fn accept(
        &self,
        e: NewEvent,
        plan: Planner,
        since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        self.fault()?;
        self.inner.accept(e, plan, since).await
    }
}

#[async_trait::async_trait]
impl DeliveryQueue for FaultyStore {
    async fn due(
        &self,
        dest: &str,
        now: i64,
        limit: usize,
        skip: Vec<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.due(dest, now, limit, skip).await
    }
    async fn next_due_after(&self, dest: &str, now: i64) -> Result<Option<i64>, StoreError> {
        self.inner.next_due_after(dest, now).await
    }
    async fn event(&self, id: i64) -> Result<StoredEvent, StoreError> {
        self.inner.event(id).await
    }
    async fn close_group(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        self.fault()?;
        self.inner.close_group(id, now).await
    }
    async fn group_events(&self, id: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.group_events(id).await
    }
    async fn finish_attempts(&self, records: Vec<Finished>) -> Result<Vec<bool>, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.fault()?;
        let left = self.refuse_records.load(SeqCst);
        if left > 0 {
            self.refuse_records.store(left - 1, SeqCst);
            return Err(StoreError::Database("database is locked".into()));
        }
        self.inner.finish_attempts(records).await
    }
}

#[async_trait::async_trait]
impl MessageIds for FaultyStore {
    async fn message_ref(&self, dest: &str, key: &str) -> Result<Option<MessageRef>, StoreError> {
        self.inner.message_ref(dest, key).await
    }
    async fn set_message_ref(
        &self,
        dest: &str,
        key: &str,
        m: MessageRef,
    ) -> Result<(), StoreError> {
        self.fault()?;
        if self
            .refuse_message_refs
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Database("database is locked".into()));
        }
        self.inner.set_message_ref(dest, key, m).await
    }
}

#[async_trait::async_trait]
impl Operations for FaultyStore {
    async fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.recent_events(limit).await
    }
    async fn retry(&self, s: RetrySelector, now: i64) -> Result<usize, StoreError> {
        self.fault()?;
        self.inner.retry(s, now).await
    }
    async fn list(
        &self,
        s: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.list(s, limit).await
    }
    async fn show(&self, id: i64) -> Result<(Delivery, Vec<Attempt>), StoreError> {
        self.inner.show(id).await
    }
    async fn prune(&self, before: i64, limit: usize) -> Result<usize, StoreError> {
        self.fault()?;
        self.inner.prune(before, limit).await
    }
    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        self.inner.queue_stats().await
    }
    async fn probe(&self) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.probe().await
    }
}

/// Claims and the audit trail are writes like any other: refused when every write is.
#[async_trait::async_trait]
impl kitebridge::store::Presses for FaultyStore {
    async fn claim_nonce(
        &self,
        nonce: &str,
        by: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<Option<kitebridge::store::Claim>, StoreError> {
        self.fault()?;
        self.inner.claim_nonce(nonce, by, at, expires_at).await
    }
    async fn release_nonce(&self, nonce: &str, by: &str) -> Result<(), StoreError> {
        self.fault()?;
        self.inner.release_nonce(nonce, by).await
    }
    async fn record_press(&self, p: kitebridge::store::Press) -> Result<i64, StoreError> {
        self.fault()?;
        self.inner.record_press(p).await
    }
    async fn presses(&self, limit: usize) -> Result<Vec<kitebridge::store::Press>, StoreError> {
        self.inner.presses(limit).await
    }
}

/// Leases are the inner store's: faults here are about storing, not about who sends.
#[async_trait::async_trait]
impl Leases for FaultyStore {
    fn replica(&self) -> &str {
        self.inner.replica()
    }
    fn lease_ttl(&self) -> Option<Duration> {
        self.inner.lease_ttl()
    }
    async fn heartbeat(&self) -> Result<usize, StoreError> {
        self.inner.heartbeat().await
    }
    async fn acquire(&self, d: &[String], grace: Duration) -> Result<Vec<Taken>, StoreError> {
        self.inner.acquire(d, grace).await
    }
    async fn renew(&self, held: &[(String, i64)]) -> Result<Vec<String>, StoreError> {
        self.inner.renew(held).await
    }
    async fn save_pause(&self, d: &str, e: i64, until: i64, f: u32) -> Result<(), StoreError> {
        self.inner.save_pause(d, e, until, f).await
    }
    async fn release(&self, d: &str, e: i64, c: Carry) -> Result<(), StoreError> {
        self.inner.release(d, e, c).await
    }
    async fn listen(&self, ring: Ring, cancel: tokio_util::sync::CancellationToken) {
        self.inner.listen(ring, cancel).await
    }
    async fn leave(&self) -> Result<(), StoreError> {
        self.inner.leave().await
    }
}

/// The build number in a message title such as "❌ Web App #42 failed".
pub fn build_number_in(title: &str) -> Option<u64> {
    let after = &title[title.find('#')? + 1..];
    after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// A `build.finished` fixture made unique by its build number.
pub fn build_finished(n: u64) -> Vec<u8> {
    let mut v = fixture_json("build.finished");
    v["build"]["number"] = serde_json::json!(n);
    serde_json::to_vec(&v).unwrap()
}

/// A failed `job.finished` of the fixture's build, made unique by its job id and label.
pub fn failed_job(n: u64) -> Vec<u8> {
    let mut v = fixture_json("job.finished");
    v["job"]["id"] = serde_json::json!(format!("job-{n}"));
    v["job"]["label"] = serde_json::json!(format!(":rspec: Shard {n}"));
    serde_json::to_vec(&v).unwrap()
}

/// Runs the binary from the project folder, without the variables the example config reads.
pub fn kitebridge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kitebridge"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("SLACK_WEBHOOK_URL")
        .env_remove("TEAMS_WEBHOOK_URL")
        .env_remove("BUILDKITE_WEBHOOK_TOKEN")
        .env_remove("KITEBRIDGE_CONFIG")
        .output()
        .unwrap()
}

/// Runs the binary off the async runtime; returns its output, or fails the test with stderr.
pub async fn run_ok(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        kitebridge(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Posts `body` to the webhook endpoint at `addr`, signed now, with the event header its
/// `event` field names; a fresh connection each time, so none outlives a shutdown.
pub async fn post_signed_to(addr: SocketAddr, body: &[u8]) -> reqwest::Result<u16> {
    post_signed_to_with(addr, TOKEN, body).await
}

/// [`post_signed_to`], signed with `token`.
pub async fn post_signed_to_with(
    addr: SocketAddr,
    token: &str,
    body: &[u8],
) -> reqwest::Result<u16> {
    Ok(post_signed_answer_to(addr, token, body).await?.0)
}

/// [`post_signed_to_with`], with the answer's text: who refused, and why.
pub async fn post_signed_answer_to(
    addr: SocketAddr,
    token: &str,
    body: &[u8],
) -> reqwest::Result<(u16, String)> {
    // Built once: building a client (its TLS roots) costs milliseconds of CPU, which under a
    // test's steady load starves the services it tests.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        kitebridge::crypto::install_provider();
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    });
    let mut req = client
        .post(format!("http://{addr}/webhooks/buildkite"))
        .header("X-Buildkite-Signature", signature(token, now(), body))
        .body(body.to_vec());
    if let Some(event) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_string))
    {
        req = req.header("X-Buildkite-Event", event);
    }
    let answer = req.send().await?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await?))
}

/// [`post_signed_to`], returning the answer too.
pub async fn post_signed_json_to(addr: SocketAddr, body: &[u8]) -> (u16, Value) {
    let event: Value = serde_json::from_slice(body).unwrap();
    let resp = kitebridge::destination::client()
        .post(format!("http://{addr}/webhooks/buildkite"))
        .header("X-Buildkite-Signature", signature(TOKEN, now(), body))
        .header("X-Buildkite-Event", event["event"].as_str().unwrap())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

impl Running {
    /// Sends the process a signal (`"HUP"`, `"TERM"`).
    pub fn signal(&self, name: &str) {
        signal(self.child.id().unwrap(), name);
    }

    /// The next log line containing `needle`, within 10 s of each line.
    pub async fn wait_for_line(&mut self, needle: &str) -> Option<String> {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await
        {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }
}

impl TestApp {
    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).send().await.unwrap();
        resp.text().await.unwrap()
    }

    /// `POST /-/reload`, with `token` as the bearer token if given.
    pub async fn reload(&self, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.post(self.url("/-/reload"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
        )
    }
}

/// `toml` with its store at `db` (TOML text, so it can also be written for the command line).
pub fn with_store(toml: &str, db: &std::path::Path) -> String {
    format!("{toml}\n[storage]\npath = \"{}\"\n", db.display())
}

/// A fixture's path, for `--payload`.
pub fn fixture_path(name: &str) -> String {
    format!(
        "{}/tests/fixtures/buildkite/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Checks the one digest that five failed jobs of build 1842 (shards 1 to 5) give, and that no
/// other message follows.
pub async fn assert_one_digest_of_five_shards(rec: &Recorder) {
    let got = rec.wait_for("slack", 1).await;
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["text"], "❌ 5 × job.finished · Web App #1842");
    let lines = body["attachments"][0]["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap();
    for n in 1..=5 {
        assert!(
            lines.contains(&format!(":rspec: Shard {n} failed")),
            "{lines}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.received_on("slack").len(), 1, "one message, not five");
}

/// Held by the tests that run several replicas under load (or time a restart): on a 2-core
/// machine two such clusters at once starve each other past any answer deadline, which says
/// nothing about the service. They wait for each other; every other test runs beside them.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    CLUSTER.lock().await
}
