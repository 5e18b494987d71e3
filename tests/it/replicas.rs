//! Several replicas on one PostgreSQL: real `kitebridge serve` processes on random ports,
//! webhooks spread over them, and the recording server playing Slack.

use crate::helpers::*;
use crate::pg::TestDb;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One replica: the real binary, its log lines gathered as they come (so its output never
/// fills a pipe and stalls it).
pub struct Replica {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    pub async fn start(config: &std::path::Path) -> Self {
        Self::gather(start_binary(config).await)
    }

    /// Gathers a started binary's log lines from now on.
    pub fn gather(running: Running) -> Self {
        let Running {
            child,
            addr,
            startup,
            mut lines,
        } = running;
        let log = Arc::new(Mutex::new(startup));
        let gathered = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                gathered.lock().unwrap().push(line);
            }
        });
        Self { child, addr, log }
    }

    /// Whether this replica sends `destination` now (by its metrics).
    pub async fn holds(&self, destination: &str) -> bool {
        let Ok(resp) = kitebridge::destination::client()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
        else {
            return false;
        };
        let text = resp.text().await.unwrap_or_default();
        text.contains(&format!(
            "kitebridge_destination_held{{destination=\"{destination}\"}} 1"
        ))
    }

    pub fn signal(&self, name: &str) {
        signal(self.child.id().unwrap(), name);
    }

    /// Log lines containing `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// The index of the replica that holds `destination`, waiting up to 20 s for one to.
pub async fn owner(replicas: &[&Replica], destination: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if r.holds(destination).await {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no replica took {destination}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A config for replicas on `db`: every event to the recorder's `slack` path, through
/// `destination` (TOML lines added to its table).
pub fn replica_config(
    dir: &std::path::Path,
    db: &TestDb,
    rec: &Recorder,
    destination: &str,
) -> std::path::PathBuf {
    let path = dir.join("k.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain = "0s"

[buildkite]
token = "{TOKEN}"

{storage}
dedupe_window = "10m"

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
shutdown_deadline = "5s"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "{url}"
{destination}

[[routes]]
name = "all"
to = ["slack"]
"#,
            storage = db.storage_toml(),
            url = rec.url("slack"),
        ),
    )
    .unwrap();
    path
}

/// How many times each build number arrived at `path`.
fn arrivals(rec: &Recorder, path: &str) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for r in rec.received_on(path) {
        let title = r.json()["text"].as_str().unwrap_or_default().to_string();
        if let Some(n) = build_number_in(&title) {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_delivered_when_the_sending_replica_is_killed_mid_load() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0\nconcurrency = 4");
    let mut replicas = [
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
    ];
    let sender = owner(&replicas.iter().collect::<Vec<_>>(), "slack").await;
    let mut accepted = Vec::new();
    let started = Instant::now();
    let mut killed_at = None;
    for n in 1..=300u64 {
        if n == 100 {
            // Mid-load, the replica that sends Slack dies with whatever it has in flight.
            replicas[sender].child.start_kill().unwrap();
            killed_at = Some(Instant::now());
        }
        let to = &replicas[(n as usize) % 3];
        if let Ok(202) = post_signed_to(to.addr, &build_finished(n)).await {
            accepted.push(n);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        accepted.len() >= 200,
        "the two live replicas took their share: {}",
        accepted.len()
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        let seen = arrivals(&rec, "slack");
        if accepted.iter().all(|n| seen.contains_key(n)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing: Vec<_> = accepted.iter().filter(|n| !seen.contains_key(n)).collect();
    let duplicates: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "{} accepted in {:?}; killed the sender after {:?}; {} delivered twice: {duplicates:?}",
        accepted.len(),
        started.elapsed(),
        killed_at.map(|k| k - started),
        duplicates.len()
    );
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    // Another replica takes over within 30 s: the first message to arrive after the kill
    // (leaving the dead one's last packets a moment to land) came from the new sender.
    let killed = killed_at.unwrap();
    let first_after = rec
        .received_on("slack")
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > killed + Duration::from_millis(500))
        .min()
        .expect("something arrived after the kill");
    println!(
        "first arrival from the new sender {:?} after the kill",
        first_after - killed
    );
    assert!(
        first_after - killed <= Duration::from_secs(30),
        "the takeover took {:?}",
        first_after - killed
    );
    assert!(
        duplicates.len() <= 4,
        "only attempts in flight at the kill may repeat (concurrency 4): {duplicates:?}"
    );
    let live: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != sender)
        .map(|(_, r)| r)
        .collect();
    let took = owner(&live, "slack").await;
    assert!(
        !live[took].logged("took the destination").is_empty(),
        "the new sender says so"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_body_sent_to_two_replicas_at_once_is_stored_and_sent_once() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0");
    let (a, b) = (Replica::start(&cfg).await, Replica::start(&cfg).await);
    for n in 1..=5u64 {
        let body = build_finished(n);
        let sig = signature(TOKEN, now(), &body);
        let post = |addr: std::net::SocketAddr| {
            let (body, sig) = (body.clone(), sig.clone());
            async move {
                let resp = kitebridge::destination::client()
                    .post(format!("http://{addr}/webhooks/buildkite"))
                    .header("X-Buildkite-Signature", sig)
                    .header("X-Buildkite-Event", "build.finished")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                (
                    status,
                    serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                )
            }
        };
        let ((s1, j1), (s2, j2)) = tokio::join!(post(a.addr), post(b.addr));
        assert_eq!((s1, s2), (202, 202));
        let mut statuses = [j1["status"].clone(), j2["status"].clone()];
        statuses.sort_by_key(|s| s.to_string());
        assert_eq!(statuses, ["accepted", "duplicate"], "{j1} {j2}");
        assert_eq!(j1["id"], j2["id"], "both name the one stored copy");
    }
    rec.wait_for("slack", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = arrivals(&rec, "slack");
    assert_eq!(seen.len(), 5);
    assert!(seen.values().all(|c| *c == 1), "each sent once: {seen:?}");
}

/// Three replicas sending one `slack_app` destination, and the five events of one failing
/// build (scheduled, running, a failed job, failing, finished).
async fn slack_app_cluster(
    dir: &std::path::Path,
    db: &TestDb,
    rec: &Recorder,
) -> ([Replica; 3], [Vec<u8>; 5]) {
    let cfg = dir.join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain = "0s"

[buildkite]
token = "{TOKEN}"

{storage}

[delivery]
allowed_hosts = ["127.0.0.1"]

[destinations.live]
kind = "slack_app"
token = "xoxb-test-token"
channel = "C0TEST"
url = "{api}"

[[routes]]
name = "live"
events = ["build.*", "job.finished"]
to = ["live"]
"#,
            storage = db.storage_toml(),
            api = rec.url("api"),
        ),
    )
    .unwrap();
    let replicas = [
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
    ];
    let build = |event: &str, state: &str| {
        let mut v = fixture_json("build.finished");
        v["event"] = serde_json::json!(event);
        v["build"]["state"] = serde_json::json!(state);
        serde_json::to_vec(&v).unwrap()
    };
    let mut job = fixture_json("job.finished");
    job["build"] = fixture_json("build.finished")["build"].clone();
    job["build"]["state"] = serde_json::json!("failing");
    let events = [
        build("build.scheduled", "scheduled"),
        build("build.running", "running"),
        serde_json::to_vec(&job).unwrap(),
        build("build.failing", "failing"),
        build("build.finished", "failed"),
    ];
    (replicas, events)
}

/// The recorder numbers its posts from 1: the build's message is the first.
const FIRST_TS: &str = "1700000000.000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_app_build_whose_events_land_on_different_replicas_is_one_message() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (replicas, events) = slack_app_cluster(dir.path(), &db, &rec).await;
    for (i, body) in events.iter().enumerate() {
        let to = &replicas[i % 3];
        assert_eq!(post_signed_to(to.addr, body).await.unwrap(), 202);
        // One at a time, as Buildkite sends a build's events.
        let total = || rec.received().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while total() < i + 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let posts = rec.received_on("api/chat.postMessage");
    let updates = rec.received_on("api/chat.update");
    let top: Vec<_> = posts
        .iter()
        .filter(|p| p.json().get("thread_ts").is_none())
        .collect();
    assert_eq!(top.len(), 1, "one message for the build");
    assert_eq!(
        updates.len(),
        3,
        "updated in place by the later build events"
    );
    assert!(updates.iter().all(|u| u.json()["ts"] == FIRST_TS));
    let replies: Vec<_> = posts
        .iter()
        .filter(|p| p.json()["thread_ts"] == FIRST_TS)
        .collect();
    assert_eq!(replies.len(), 1, "the failed job is a reply in its thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_app_build_whose_events_reach_three_replicas_at_the_same_moment_is_one_message() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (replicas, events) = slack_app_cluster(dir.path(), &db, &rec).await;
    let posts = events
        .iter()
        .enumerate()
        .map(|(i, body)| post_signed_to(replicas[i % 3].addr, body));
    for status in futures_util::future::join_all(posts).await {
        assert_eq!(status.unwrap(), 202);
    }
    // The failed job's reply and at least the build's message; then let the rest settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    while rec.received_on("api/chat.postMessage").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = rec.received_on("api/chat.postMessage");
    let top: Vec<_> = posts
        .iter()
        .filter(|p| p.json().get("thread_ts").is_none())
        .collect();
    assert_eq!(
        top.len(),
        1,
        "one message for the build, whichever replica stored first"
    );
    let replies: Vec<_> = posts
        .iter()
        .filter(|p| p.json()["thread_ts"] == FIRST_TS)
        .collect();
    assert_eq!(replies.len(), 1, "the failed job is a reply in its thread");
    let updates = rec.received_on("api/chat.update");
    assert!(updates.iter().all(|u| u.json()["ts"] == FIRST_TS));
    // Moved forward only: whatever order they were stored in, the message ends as failed.
    let last = updates.last().map_or_else(|| top[0].json(), |u| u.json());
    let shown = last.to_string();
    assert!(
        shown.contains("failed"),
        "the message ends on the build's result: {shown}"
    );
}

/// Arrival times at the recorder never exceed `burst` plus `rate` per second, in any window.
fn assert_paced(times: &[Instant], rate: f64, burst: f64) {
    for i in 0..times.len() {
        for j in i..times.len() {
            let window = (times[j] - times[i]).as_secs_f64();
            let count = (j - i + 1) as f64;
            // 250 ms of slack for the network and scheduling between sender and recorder on a
            // busy machine (one late arrival shortens the window to the next); sending at
            // three times the rate breaks this over any few seconds.
            assert!(
                count <= burst + rate * (window + 0.25),
                "{count} messages in {window:.3}s (rate {rate}, burst {burst})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_destination_keeps_its_pace_across_the_cluster_and_a_handover() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 2\nburst = 2");
    let mut replicas = [
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
    ];
    let sender = owner(&replicas.iter().collect::<Vec<_>>(), "slack").await;
    for n in 1..=12u64 {
        let to = &replicas[(n as usize) % 3];
        assert_eq!(
            post_signed_to(to.addr, &build_finished(n)).await.unwrap(),
            202
        );
    }
    // Halfway through, the sender stops (a deploy): another replica goes on at the same pace.
    rec.wait_for("slack", 5).await;
    replicas[sender].signal("TERM");
    let _ = replicas[sender].child.wait().await;
    let got = rec.wait_for("slack", 12).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rec.received_on("slack").len() < 12 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = if got.len() < 12 {
        rec.received_on("slack")
    } else {
        got
    };
    assert_eq!(got.len(), 12, "all sent");
    let times: Vec<Instant> = got.iter().map(|r| r.at).collect();
    assert_paced(&times, 2.0, 2.0);
    let span = (times[11] - times[0]).as_secs_f64();
    assert!(
        span >= 4.5,
        "12 messages at 2/s after a burst of 2 take 5 s: {span:.2}s"
    );
}

/// Three replicas; the sender's first answer is `first` (which pauses the destination for 3 s
/// or more), and the sender stops right after it. The replica that takes over (inside the
/// pause: asserted) is given builds 2 to 5, and sends nothing before the pause has passed.
/// `backoff` replaces the test config's backoff (both its bounds). Returns the arrivals.
async fn a_pause_across_a_handover(first: Reply, backoff: Option<&str>) -> BTreeMap<u64, usize> {
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    rec.script("slack", [first]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0");
    if let Some(b) = backoff {
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(
                "backoff_initial = \"100ms\"",
                &format!("backoff_initial = \"{b}\""),
            )
            .replace("backoff_max = \"1s\"", &format!("backoff_max = \"{b}\""));
        std::fs::write(&cfg, text).unwrap();
    }
    let mut replicas = [
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
        Replica::start(&cfg).await,
    ];
    let sender = owner(&replicas.iter().collect::<Vec<_>>(), "slack").await;
    assert_eq!(
        post_signed_to(replicas[sender].addr, &build_finished(1))
            .await
            .unwrap(),
        202
    );
    let paused = rec.wait_for("slack", 1).await[0].at;
    replicas[sender].signal("TERM");
    let _ = replicas[sender].child.wait().await;
    let live: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != sender)
        .map(|(_, r)| r)
        .collect();
    owner(&live, "slack").await;
    assert!(
        paused.elapsed() < Duration::from_millis(2900),
        "the handover happened inside the pause, so the new sender is the one keeping it: {:?}",
        paused.elapsed()
    );
    // New events, due at once, still wait for the pause the first answer set.
    for n in 2..=5u64 {
        let to = live[n as usize % 2];
        assert_eq!(
            post_signed_to(to.addr, &build_finished(n)).await.unwrap(),
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while rec.received_on("slack").len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = rec.received_on("slack");
    assert_eq!(got.len(), 6, "the first answer, then all five");
    let next = got[1].at - paused;
    assert!(
        next >= Duration::from_millis(2900),
        "nothing was sent during the pause: the next came after {next:?}"
    );
    arrivals(&rec, "slack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_destination_on_every_replica_even_after_a_handover() {
    let _cluster = one_cluster_at_a_time().await;
    let seen = a_pause_across_a_handover(Reply::RateLimited(3), None).await;
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_pause_holds_for_the_replica_that_takes_over() {
    let _cluster = one_cluster_at_a_time().await;
    // One failure pauses the destination for backoff_initial with jitter: 3 to 6 s here.
    let seen = a_pause_across_a_handover(Reply::Status(500, "down"), Some("6s")).await;
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sender_is_replaced_and_sends_nothing_once_it_wakes() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0");
    let replicas = [Replica::start(&cfg).await, Replica::start(&cfg).await];
    let sender = owner(&replicas.iter().collect::<Vec<_>>(), "slack").await;
    let other = 1 - sender;
    // The sender freezes with an attempt on its way: Slack has the request and has not
    // answered.
    rec.script("slack", [Reply::Hang]);
    assert_eq!(
        post_signed_to(replicas[other].addr, &build_finished(1))
            .await
            .unwrap(),
        202
    );
    rec.wait_for("slack", 1).await;
    replicas[sender].signal("STOP");
    let frozen = Instant::now();
    for n in 2..=5u64 {
        assert_eq!(
            post_signed_to(replicas[other].addr, &build_finished(n))
                .await
                .unwrap(),
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals(&rec, "slack").len() < 5 || arrivals(&rec, "slack")[&1] < 2 {
        assert!(
            Instant::now() < deadline,
            "taken over and sent within 30 s, the attempt in flight included: {:?} after {:?}",
            arrivals(&rec, "slack"),
            frozen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "takeover of a frozen sender: all sent {:?} after it froze",
        frozen.elapsed()
    );
    replicas[sender].signal("CONT");
    for n in 6..=10u64 {
        assert_eq!(
            post_signed_to(replicas[sender].addr, &build_finished(n))
                .await
                .unwrap(),
            202
        );
    }
    rec.wait_for("slack", 11).await;
    // The woken replica's attempt ends (its timeout passed while it was frozen); what it
    // records must not undo what the new holder recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicas[sender]
        .logged("the delivery changed during the attempt")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the woken replica's late attempt left the delivery alone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = arrivals(&rec, "slack");
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter().all(|(n, c)| *c == if *n == 1 { 2 } else { 1 }),
        "only the attempt in flight at the freeze sent twice: {seen:?}"
    );
    assert!(
        replicas[other].holds("slack").await,
        "the woken replica did not take it back"
    );
    assert!(
        !replicas[sender]
            .logged("lost the destination's lease")
            .is_empty(),
        "the woken replica says it lost the destination"
    );
    let sent = db
        .count("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'")
        .await;
    assert_eq!(
        sent, 10,
        "every delivery is recorded as sent, none sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_and_the_command_line_see_the_shared_queue_and_a_retry_is_sent_at_once() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Status(404, "channel_not_found")]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0");
    let replicas = [Replica::start(&cfg).await, Replica::start(&cfg).await];
    let sender = owner(&replicas.iter().collect::<Vec<_>>(), "slack").await;
    let other = &replicas[1 - sender];
    assert_eq!(
        post_signed_to(other.addr, &build_finished(1))
            .await
            .unwrap(),
        202
    );
    rec.wait_for("slack", 1).await;
    // The dead letter shows on the replica that did not send it, and on the command line.
    let metrics = kitebridge::destination::client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics
            .get(format!("http://{}/metrics", other.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("kitebridge_dead_letters{destination=\"slack\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg_s = cfg.to_str().unwrap();
    let listed = run_ok(&["deliveries", "list", "--config", cfg_s, "--state", "dead"]).await;
    assert!(listed.contains("channel_not_found"), "{listed}");
    let retried = run_ok(&["deliveries", "retry", "--all-dead", "--config", cfg_s]).await;
    assert!(retried.contains("re-queued 1 delivery"), "{retried}");
    let got = rec.wait_for("slack", 2).await;
    assert_eq!(
        got.len(),
        2,
        "sent again by the replica holding the destination"
    );
    let shown = run_ok(&["deliveries", "show", "1", "--config", cfg_s]).await;
    assert!(shown.contains("state        sent"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cut_off_from_the_database_stops_sending_and_is_replaced() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0");
    // Replica a reaches the database through a cable the test can cut.
    let relay = crate::pg::Relay::start(crate::pg::server_addr(&db.url)).await;
    let direct = crate::pg::server_addr(&db.url).to_string();
    let a_cfg = dir.path().join("a.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains(&direct) || text.contains("localhost"),
        "{text}"
    );
    let relayed = text.replace(&direct, &relay.addr.to_string()).replace(
        &format!("localhost:{}", crate::pg::server_addr(&db.url).port()),
        &relay.addr.to_string(),
    );
    std::fs::write(&a_cfg, relayed).unwrap();
    let a = Replica::start(&a_cfg).await;
    // b starts once a holds the destination, so a is the sender.
    assert_eq!(owner(&[&a], "slack").await, 0);
    let b = Replica::start(&cfg).await;
    // The cut comes with an attempt on its way: Slack has the request and has not answered.
    rec.script("slack", [Reply::Hang]);
    assert_eq!(
        post_signed_to(b.addr, &build_finished(1)).await.unwrap(),
        202
    );
    rec.wait_for("slack", 1).await;
    relay.cut();
    let cut = Instant::now();
    for n in 2..=5u64 {
        assert_eq!(
            post_signed_to(b.addr, &build_finished(n)).await.unwrap(),
            202
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals(&rec, "slack").len() < 5 || arrivals(&rec, "slack")[&1] < 2 {
        assert!(
            Instant::now() < deadline,
            "b took over within 30 s, the attempt in flight included: {:?}",
            arrivals(&rec, "slack")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "takeover of a cut-off sender: all sent {:?} after the cut",
        cut.elapsed()
    );
    assert!(b.holds("slack").await);
    relay.restore();
    for n in 6..=8u64 {
        assert_eq!(
            post_signed_to(a.addr, &build_finished(n)).await.unwrap(),
            202
        );
    }
    rec.wait_for("slack", 9).await;
    // a's attempt ends at its timeout; what it records must not undo what b recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a
        .logged("the delivery changed during the attempt")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "a's late attempt left the delivery alone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = arrivals(&rec, "slack");
    assert_eq!(seen.len(), 8);
    assert!(
        seen.iter().all(|(n, c)| *c == if *n == 1 { 2 } else { 1 }),
        "only the attempt in flight at the cut sent twice: {seen:?}"
    );
    assert!(!a.holds("slack").await, "a did not take it back");
    let sent = db
        .count("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'")
        .await;
    assert_eq!(
        sent, 8,
        "every delivery is recorded as sent, none sent again"
    );
}
