//! The load benchmark: kitebridge (release build, signature mode, its durable store with the
//! default settings) against a bare axum endpoint and, where Debian's prometheus-alertmanager
//! is installed, Alertmanager, all driven by the same generator on 127.0.0.1 in one run.
//!
//! `bash bench/load.sh` (installs Alertmanager if it can), or `cargo bench --bench load`.
//! Scale with KB_BENCH_EVENTS (default 100000) and KB_BENCH_BACKLOG (default 1000000, 0 skips
//! the backlog part). The PostgreSQL part uses KB_BENCH_DATABASE_URL (else
//! KITEBRIDGE_TEST_DATABASE_URL, else the local server) to create a database of its own;
//! KB_BENCH_ONLY=replicas runs only that part (and the bare endpoint); KB_BENCH_ONLY=backlog
//! only the backlog part; KB_BENCH_ONLY=embedded leaves both out; KB_BENCH_ONLY=intake runs
//! only intake (a route that matches none of the events, so nothing is delivered) with the
//! embedded store, to tell intake's share of the answer latency from delivery's.
//! KB_BENCH_BINARY=path measures another build of kitebridge with the same generator.
//! The report is printed and written to target/load-report.md.

mod generator;
mod replicas;
mod sink;

use generator::{Bodies, Run, closed_loop, open_loop, quantile};
use sink::Sink;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "load-bench-token-7f3a";
const CONNECTIONS: usize = 32;
const OPEN_RATE: u64 = 2_000;
const OPEN_SECONDS: u64 = 10;
/// What the benchmark's route matches: every event the generator sends.
const ALL_EVENTS: &str = r#"["build.finished", "job.finished"]"#;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The kitebridge to measure: this build's, or KB_BENCH_BINARY (another build of it, to
/// compare two versions with the same generator).
fn binary() -> PathBuf {
    std::env::var_os("KB_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kitebridge")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time a process has used so far (user and system, all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are plain numbers.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields, 12th and 13th after the name.
    let per_second = 100.0; // USER_HZ, the same on every Linux the benchmark runs on
    (ticks(11) + ticks(12)) / per_second
}

/// The bare endpoint (run when this program is started with KB_BARE=<port>): reads the body,
/// answers 200.
fn bare(port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            "ok"
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

async fn wait_healthy(url: &str, limit: Duration) -> Option<Duration> {
    let client = kitebridge::destination::client();
    let started = Instant::now();
    while started.elapsed() < limit {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

struct Kitebridge {
    child: Child,
    port: u16,
}

impl Kitebridge {
    /// The embedded store, with KB_BENCH_DURABILITY when set.
    fn sqlite() -> String {
        let durability = std::env::var("KB_BENCH_DURABILITY")
            .map(|d| format!("durability = \"{d}\"\n"))
            .unwrap_or_default();
        format!("[storage]\npath = \"kitebridge.db\"\n{durability}")
    }

    fn config(
        dir: &Path,
        port: u16,
        sink: &str,
        routes: usize,
        storage: &str,
        events: &str,
    ) -> PathBuf {
        let mut text = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[buildkite]
token = "{TOKEN}"
mode = "signature"

{storage}
[delivery]
allowed_hosts = ["127.0.0.1"]

[destinations.sink]
kind = "slack"
url = "{sink}"
rate = 0
concurrency = 64
"#
        );
        // Extra routes that do not match, as a big org's config would have.
        for i in 1..routes {
            let _ = write!(
                text,
                "\n[[routes]]\nname = \"other {i}\"\npipelines = [\"pipeline-{i}\"]\nto = [\"sink\"]\ncontinue = true\n"
            );
        }
        let _ = write!(
            text,
            "\n[[routes]]\nname = \"all\"\nevents = {events}\nto = [\"sink\"]\n"
        );
        let path = dir.join("kitebridge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn start(dir: &Path, sink: &str, routes: usize) -> (Self, Duration) {
        Self::start_on(dir, sink, routes, &Self::sqlite()).await
    }

    /// Starts it with the `[storage]` table `storage`.
    async fn start_on(dir: &Path, sink: &str, routes: usize, storage: &str) -> (Self, Duration) {
        Self::start_matching(dir, sink, routes, storage, ALL_EVENTS).await
    }

    /// Starts it with its route matching the event names `events` (a TOML array).
    async fn start_matching(
        dir: &Path,
        sink: &str,
        routes: usize,
        storage: &str,
        events: &str,
    ) -> (Self, Duration) {
        let port = free_port();
        let config = Self::config(dir, port, sink, routes, storage, events);
        let log = std::fs::File::create(dir.join("kitebridge.log")).unwrap();
        let started = Instant::now();
        let child = Command::new(binary())
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/healthz");
        wait_healthy(&url, Duration::from_secs(30))
            .await
            .expect("kitebridge starts");
        (Self { child, port }, started.elapsed())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/buildkite", self.port)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn wait_for(sink: &Sink, want: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    while sink.count() < want && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

fn per_second(run: &Run) -> f64 {
    run.accepted as f64 / run.elapsed.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `p50 … · p99 … · max …` of some latencies.
fn spread(mut values: Vec<Duration>) -> String {
    let max = values.iter().max().copied().unwrap_or_default();
    let p50 = quantile(&mut values, 0.5);
    format!(
        "p50 {} · p99 {} · max {}",
        ms(p50),
        ms(quantile(&mut values, 0.99)),
        ms(max)
    )
}

/// Answer and end-to-end latency quantiles of an open-loop run.
fn latencies(run: &Run, sink: &Sink) -> (Vec<Duration>, Vec<Duration>, usize) {
    let answers: Vec<Duration> = run.answers.iter().map(|a| a.2).collect();
    let mut missing = 0;
    let e2e: Vec<Duration> = run
        .answers
        .iter()
        .filter_map(|(id, at, _)| match sink.arrival(*id) {
            Some(t) => Some(t.saturating_duration_since(*at)),
            None => {
                missing += 1;
                None
            }
        })
        .collect();
    (answers, e2e, missing)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem:.0} GiB, generator and servers on the same machine")
}

fn main() {
    if let Ok(port) = std::env::var("KB_BARE") {
        return bare(port.parse().unwrap());
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and friends
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let events = env_number("KB_BENCH_EVENTS", 100_000);
    let backlog = env_number("KB_BENCH_BACKLOG", 1_000_000);
    let bodies = Arc::new(Bodies::new());
    let mut report = String::new();
    let mut out = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    out(format!(
        "# kitebridge load benchmark\n\nMachine: {}. Body: {} bytes, build.finished and job.finished alternating, each signed.\n",
        machine(),
        bodies.size()
    ));

    // The physical limit: a bare axum endpoint in its own process.
    let bare_port = free_port();
    let mut bare = Command::new(std::env::current_exe().unwrap())
        .env("KB_BARE", bare_port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(
        &format!("http://127.0.0.1:{bare_port}/"),
        Duration::from_secs(10),
    )
    .await;
    let bare_run = closed_loop(
        &[format!("http://127.0.0.1:{bare_port}/")],
        bodies.clone(),
        TOKEN,
        0,
        events,
        CONNECTIONS,
    )
    .await;
    let bare_rate = per_second(&bare_run);
    // The generator's own floor: the same open loop against the bare endpoint, so the
    // answer latency below can be read against what the generator and the host add.
    let bare_open = open_loop(
        &[format!("http://127.0.0.1:{bare_port}/")],
        bodies.clone(),
        TOKEN,
        0,
        OPEN_RATE,
        Duration::from_secs(OPEN_SECONDS),
    )
    .await;
    let bare_rss = rss(bare.id()).1;
    let _ = bare.kill();
    let _ = bare.wait();

    // KB_BENCH_ONLY=replicas measures the shared store alone (beside the bare endpoint).
    if std::env::var("KB_BENCH_ONLY").is_ok_and(|v| v == "replicas") {
        out("| measure | kitebridge | target |".into());
        out("| --- | --- | --- |".into());
        out(format!("| bare axum endpoint | {bare_rate:.0} req/s | |"));
        replicas::run(&bodies, bare_rate, events.min(50_000), &mut out).await;
        return;
    }

    // KB_BENCH_ONLY=intake measures only intake, nothing delivered (beside the bare endpoint).
    if std::env::var("KB_BENCH_ONLY").is_ok_and(|v| v == "intake") {
        out("| measure | kitebridge | target |".into());
        out("| --- | --- | --- |".into());
        out(format!("| bare axum endpoint | {bare_rate:.0} req/s | |"));
        out(format!(
            "| the open loop at {OPEN_RATE}/s against the bare endpoint | {} | |",
            spread(bare_open.answers.iter().map(|a| a.2).collect())
        ));
        intake_run(&bodies, bare_rate, events, &mut out).await;
        return;
    }

    // KB_BENCH_ONLY=backlog measures only intake with a backlog (beside the bare endpoint).
    if std::env::var("KB_BENCH_ONLY").is_ok_and(|v| v == "backlog") {
        out("| measure | kitebridge | target |".into());
        out("| --- | --- | --- |".into());
        out(format!("| bare axum endpoint | {bare_rate:.0} req/s | |"));
        backlog_run(&bodies, backlog.max(1), events.min(20_000), &mut out).await;
        return;
    }

    // kitebridge.
    let sink = Sink::default();
    let sink_addr = sink.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (kb, _) = Kitebridge::start(dir.path(), &format!("http://{sink_addr}/sink"), 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss(kb.child.id()).0;
    let cpu_before = cpu_seconds(kb.child.id());
    let max = closed_loop(&[kb.url()], bodies.clone(), TOKEN, 1, events, CONNECTIONS).await;
    let drain = wait_for(&sink, max.accepted as usize, Duration::from_secs(300)).await;
    let delivered_max = sink.count();
    let cpu_closed = cpu_seconds(kb.child.id()) - cpu_before;
    let cpu_before = cpu_seconds(kb.child.id());
    let open = at_open_rate(&kb, &bodies).await;
    wait_for(
        &sink,
        delivered_max + open.accepted as usize,
        Duration::from_secs(120),
    )
    .await;
    let cpu_open = cpu_seconds(kb.child.id()) - cpu_before;
    let (answers, mut e2e, missing) = latencies(&open, &sink);
    let (_, peak_rss) = rss(kb.child.id());
    let total_accepted = max.accepted + open.accepted;
    let lost = total_accepted as usize - sink.count().min(total_accepted as usize);
    kb.stop();
    let stored = stored_bytes(&dir.path().join("kitebridge.db"));

    // Start-up with 100 routes.
    let mut startups = Vec::new();
    for _ in 0..5 {
        let d = tempfile::tempdir().unwrap();
        let (k, took) = Kitebridge::start(d.path(), &format!("http://{sink_addr}/sink"), 100).await;
        startups.push(took);
        k.stop();
    }
    let startup = quantile(&mut startups, 0.5);

    let rate = per_second(&max);
    out("| measure | kitebridge | target |".into());
    out("| --- | --- | --- |".into());
    out(format!(
        "| bare axum endpoint (reads body, answers 200), {CONNECTIONS} connections | {bare_rate:.0} req/s (peak RSS {bare_rss:.1} MiB) | the physical limit |"
    ));
    out(format!(
        "| sustained accepted events/s ({events} events, {CONNECTIONS} connections) | {rate:.0}/s = {:.0}% of bare ({} refused) | ≥ 40% |",
        rate / bare_rate * 100.0,
        max.refused
    ));
    let delivered_rate = max.accepted as f64 / (max.elapsed + drain).as_secs_f64();
    out(format!(
        "| delivered to the sink after that burst | all {delivered_max} within {:.1} s of the last answer: {delivered_rate:.0} accepted-and-delivered/s = {:.0}% of bare | every one; ≥ 40% |",
        drain.as_secs_f64(),
        delivered_rate / bare_rate * 100.0
    ));
    out(format!(
        "| kitebridge's CPU per event (all its threads; the closed loop and its drain · the open loop and its drain) | {:.0} µs · {:.0} µs | |",
        cpu_closed / delivered_max.max(1) as f64 * 1e6,
        cpu_open / open.accepted.max(1) as f64 * 1e6
    ));
    out(format!(
        "| answer latency at {OPEN_RATE}/s offered, open loop, {OPEN_SECONDS} s | {} | p99 ≤ 5 ms |",
        spread(answers)
    ));
    out(format!(
        "| the same open loop against the bare endpoint (the generator's and the host's share) | {} | |",
        spread(bare_open.answers.iter().map(|a| a.2).collect())
    ));
    out(format!(
        "| end-to-end (received → sink got it) at {OPEN_RATE}/s | p50 {} · p99 {} | p99 ≤ 50 ms |",
        ms(quantile(&mut e2e.clone(), 0.5)),
        ms(quantile(&mut e2e, 0.99))
    ));
    out(format!(
        "| accepted events that never reached the sink | {lost} of {total_accepted} ({missing} of the timed run) | 0 |"
    ));
    out(format!(
        "| peak RSS over the {} events | {peak_rss:.1} MiB | ≤ 50 MB |",
        total_accepted
    ));
    out(format!("| idle RSS | {idle_rss:.1} MiB | ≤ 15 MB |"));
    out(format!(
        "| stored bytes per accepted event, all delivered ({} B body, default Slack template; pages in use after a checkpoint) | {:.0} B = {:.2}× the body | ≤ 3× |",
        bodies.size(),
        stored / total_accepted as f64,
        stored / total_accepted as f64 / bodies.size() as f64
    ));
    out(format!(
        "| start-up with 100 routes (spawn → /healthz answers), median of 5 | {} | ≤ 100 ms |",
        ms(startup)
    ));

    // KB_BENCH_ONLY=embedded leaves out the shared store and the backlog.
    let embedded_only = std::env::var("KB_BENCH_ONLY").is_ok_and(|v| v == "embedded");
    if !embedded_only {
        replicas::run(&bodies, bare_rate, events.min(50_000), &mut out).await;
    }
    if backlog > 0 && !embedded_only {
        backlog_run(&bodies, backlog, events.min(20_000), &mut out).await;
    }
    alertmanager_run(&sink, events.min(20_000), &mut out).await;

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load-report.md");
    let _ = std::fs::write(&path, &report);
    println!("\n(written to {})", path.display());
}

/// Intake alone: the embedded store, a route that matches none of the events (each is stored,
/// for the duplicate check, and answered; nothing is delivered), the closed loop then the open
/// loop, as in the main part.
async fn intake_run(
    bodies: &Arc<Bodies>,
    bare_rate: f64,
    events: u64,
    out: &mut impl FnMut(String),
) {
    let dir = tempfile::tempdir().unwrap();
    let unused = format!("http://127.0.0.1:{}/unused", free_port());
    let (kb, _) =
        Kitebridge::start_matching(dir.path(), &unused, 1, &Kitebridge::sqlite(), r#"["ping"]"#)
            .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu_seconds(kb.child.id());
    let max = closed_loop(&[kb.url()], bodies.clone(), TOKEN, 1, events, CONNECTIONS).await;
    let cpu_closed = cpu_seconds(kb.child.id()) - cpu_before;
    let cpu_before = cpu_seconds(kb.child.id());
    let open = at_open_rate(&kb, bodies).await;
    let cpu_open = cpu_seconds(kb.child.id()) - cpu_before;
    kb.stop();
    let rate = per_second(&max);
    out(format!(
        "| intake only (no route matches), sustained accepted events/s ({events} events, {CONNECTIONS} connections) | {rate:.0}/s = {:.0}% of bare ({} refused) | (the target, ≥ 50%, is measured with the destination down: the backlog part) |",
        rate / bare_rate * 100.0,
        max.refused
    ));
    out(format!(
        "| intake only: CPU per event (the closed loop · the open loop) | {:.0} µs · {:.0} µs | |",
        cpu_closed / max.accepted.max(1) as f64 * 1e6,
        cpu_open / open.accepted.max(1) as f64 * 1e6
    ));
    out(format!(
        "| intake only: answer latency at {OPEN_RATE}/s offered, open loop, {OPEN_SECONDS} s | {} ({} refused) | |",
        spread(open.answers.iter().map(|a| a.2).collect()),
        open.refused
    ));
}

/// The open loop at OPEN_RATE for OPEN_SECONDS against `kb`, its event ids clear of the
/// closed loop's.
async fn at_open_rate(kb: &Kitebridge, bodies: &Arc<Bodies>) -> Run {
    open_loop(
        &[kb.url()],
        bodies.clone(),
        TOKEN,
        10_000_000,
        OPEN_RATE,
        Duration::from_secs(OPEN_SECONDS),
    )
    .await
}

/// The bytes a stopped kitebridge's store holds: its pages in use once the log is copied in.
fn stored_bytes(db: &Path) -> f64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    ((pragma("page_count") - pragma("freelist_count")) * pragma("page_size")) as f64
}

/// Fills a store with `n` pending deliveries to a destination that is down, then measures
/// intake and memory against the same set-up with an empty queue.
async fn backlog_run(bodies: &Arc<Bodies>, n: u64, intake: u64, out: &mut impl FnMut(String)) {
    let down = format!("http://127.0.0.1:{}/down", free_port());
    let measure = |dir: PathBuf, first: u64| {
        let (bodies, down) = (bodies.clone(), down.clone());
        async move {
            let (kb, _) = Kitebridge::start(&dir, &down, 1).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = rss(kb.child.id()).0;
            let run = closed_loop(&[kb.url()], bodies, TOKEN, first, intake, CONNECTIONS).await;
            let (after, peak) = rss(kb.child.id());
            kb.stop();
            (per_second(&run), before, after, peak)
        }
    };
    let empty = tempfile::tempdir().unwrap();
    let (empty_rate, ..) = measure(empty.path().to_path_buf(), 20_000_000).await;

    let full = tempfile::tempdir().unwrap();
    let started = Instant::now();
    prefill(&full.path().join("kitebridge.db"), bodies, n);
    let filled = started.elapsed();
    let (rate, before, after, peak) = measure(full.path().to_path_buf(), 30_000_000).await;
    out(format!(
        "| intake with {n} deliveries pending (destination down; filled in {:.0} s), {intake} events | {rate:.0}/s vs {empty_rate:.0}/s with an empty queue ({:+.0}%) | within 10% |",
        filled.as_secs_f64(),
        (rate / empty_rate - 1.0) * 100.0
    ));
    out(format!(
        "| RSS with that backlog: before → after the intake (peak) | {before:.1} → {after:.1} MiB ({peak:.1}) | flat |"
    ));
}

/// Writes `n` events, each with one pending delivery, straight into a new store, as intake
/// writes them: with the body's SHA-256 and its arrival time, so the store's own indexes
/// (the duplicate check's among them) hold them as in service. They arrive 1 ms apart,
/// ending when the prefill ends: denser than any real backlog, so the most recent minutes,
/// which the duplicate check keys by, are as full as they can be.
fn prefill(db: &Path, bodies: &Bodies, n: u64) {
    drop(
        kitebridge::store::SqliteStore::open(db, kitebridge::store::sqlite::Durability::Normal)
            .unwrap(),
    );
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let now = kitebridge::store::now_ms();
        let mut event = tx
            .prepare("INSERT INTO events (id, name, body, body_hash, received_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        let mut delivery = tx
            .prepare(
                "INSERT INTO deliveries (event_id, route, destination, state, created_at, age_from, next_attempt_at, updated_at) \
                 VALUES (?1, 'all', 'sink', 'pending', ?2, ?2, ?2, ?2)",
            )
            .unwrap();
        for i in 0..n {
            let id = 100_000_000 + i;
            let (body, _) = bodies.body(id, TOKEN);
            let name = if id % 2 == 0 {
                "build.finished"
            } else {
                "job.finished"
            };
            let at = now - (n - i) as i64;
            event
                .execute(rusqlite::params![
                    id as i64,
                    name,
                    body,
                    <sha2::Sha256 as sha2::Digest>::digest(&body).to_vec(),
                    at
                ])
                .unwrap();
            delivery.execute(rusqlite::params![id as i64, at]).unwrap();
        }
    }
    tx.commit().unwrap();
    drop(conn);
    // A backlog this size builds up over hours, its pages long since written to disk. Written
    // here in seconds, they would still be in the kernel's write-back while intake is timed,
    // and every commit's flush would wait behind gigabytes that are not the service's.
    let _ = Command::new("sync").status();
}

/// The same unique events, as Alertmanager alerts, to the same sink.
async fn alertmanager_run(sink: &Sink, total: u64, out: &mut impl FnMut(String)) {
    let Some(bin) = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        out("| Alertmanager | not installed (`bash bench/load.sh` installs Debian's prometheus-alertmanager) | |".into());
        return;
    };
    let sink_url = format!("http://{}/am", sink.start().await);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("am.yml"),
        format!(
            "route:\n  receiver: sink\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n- name: sink\n  webhook_configs:\n  - url: {sink_url}\n    send_resolved: false\n"
        ),
    )
    .unwrap();
    let mut am = Command::new(bin)
        .args([
            &format!("--config.file={}", dir.path().join("am.yml").display()),
            &format!("--storage.path={}", dir.path().display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=",
            "--log.level=warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    if wait_healthy(&format!("{base}/-/ready"), Duration::from_secs(30))
        .await
        .is_none()
    {
        out("| Alertmanager | did not start | |".into());
        let _ = am.kill();
        let _ = am.wait();
        return;
    }
    let idle = rss(am.id()).0;
    let client = kitebridge::destination::client();
    let alert = |id: u64| {
        serde_json::to_vec(&serde_json::json!([{
            "labels": {"alertname": "BuildFailed", "build": format!("#{}", 1_000_000_000 + id), "pipeline": "web-app", "branch": "main"},
            "annotations": {"summary": "Web App build failed", "commit": "Retry payment mock before asserting totals"},
            "startsAt": chrono::Utc::now().to_rfc3339(),
        }]))
        .unwrap()
    };
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let before = sink.count();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (client, next, url) = (
            client.clone(),
            next.clone(),
            format!("{base}/api/v2/alerts"),
        );
        tasks.spawn(async move {
            let mut ok = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return ok;
                }
                let body = alert(40_000_000 + i);
                if client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    ok += 1;
                }
            }
        });
    }
    let mut accepted = 0;
    while let Some(n) = tasks.join_next().await {
        accepted += n.unwrap();
    }
    let elapsed = started.elapsed();
    let got = wait_for(sink, before + accepted as usize, Duration::from_secs(60)).await;
    let notified = sink.count() - before;
    let (_, peak) = rss(am.id());
    let _ = am.kill();
    let _ = am.wait();
    out(format!(
        "| Alertmanager ({}), {total} unique alerts, {CONNECTIONS} connections | {:.0} alerts/s accepted; {notified} of {accepted} notified, the last {:.1} s after the last answer; peak RSS {peak:.1} MiB (idle {idle:.1}) | the best-known peer |",
        bin,
        accepted as f64 / elapsed.as_secs_f64(),
        got.as_secs_f64()
    ));
}
