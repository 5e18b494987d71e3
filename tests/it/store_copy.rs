//! `kitebridge store copy`: an embedded store made by the real service, copied by the real
//! binary into a fresh PostgreSQL database, and the service carrying on from there.

use crate::helpers::*;
use crate::pg::TestDb;
use crate::replicas::Replica;
use kitebridge::store::DeliveryState;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failed `build.finished` of build `n` on its own branch `b{n}`.
fn build(branch: &str, n: u64) -> Vec<u8> {
    let mut v = fixture_json("build.finished");
    v["build"]["number"] = serde_json::json!(n);
    v["build"]["branch"] = serde_json::json!(branch);
    serde_json::to_vec(&v).unwrap()
}

/// A config whose `slack` destination posts to `slack`: builds go to `slack`, `gone` and the
/// Slack app `live`; failed jobs gather in an hour-long digest to `slack`.
fn config(dir: &Path, name: &str, storage: &str, slack: &str, rec: &Recorder) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[buildkite]
token = "{TOKEN}"

{storage}

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "{slack}"
rate = 0

[destinations.gone]
kind = "slack"
url = "{gone}"
rate = 0

[destinations.live]
kind = "slack_app"
token = "xoxb-test-token"
channel = "C0TEST"
url = "{api}"

[[routes]]
name = "builds"
events = ["build.finished"]
to = ["slack", "gone", "live"]

[[routes]]
name = "failed jobs"
events = ["job.finished"]
to = ["slack"]
group_window = "1h"
"#,
            gone = rec.url("gone"),
            api = rec.url("api"),
        ),
    )
    .unwrap();
    path
}

/// The embedded store the service leaves behind with `slack` down and `gone` answering 404:
/// builds 1 to 3 (on branches b1 to b3) pending for `slack`, dead for `gone` and sent to
/// `live` (three Slack message ids), three failed jobs in an open digest, and an
/// `agent.connected` no route takes. Returns the config and the store.
async fn old_store(dir: &Path, rec: &Recorder) -> (PathBuf, PathBuf) {
    rec.script(
        "gone",
        (0..3).map(|_| Reply::Status(404, "channel_not_found")),
    );
    let down = format!("http://{}/slack", dead_address());
    let cfg = config(dir, "old.toml", "[storage]\npath = \"old.db\"", &down, rec);
    let app = TestApp::spawn_file(&cfg).await;
    for n in 1..=3 {
        assert_eq!(app.post_signed(&build(&format!("b{n}"), n)).await.0, 202);
    }
    for n in 1..=3 {
        assert_eq!(app.post_signed(&failed_job(n)).await.0, 202);
    }
    assert_eq!(app.post_signed(&fixture("agent.connected")).await.0, 202);
    let settled = |d: &[kitebridge::store::Delivery], dest: &str, state| {
        d.iter()
            .filter(|d| d.destination == dest && d.state == state)
            .count()
            == 3
    };
    wait_for_deliveries(&app.db, |d| {
        settled(d, "gone", DeliveryState::Dead) && settled(d, "live", DeliveryState::Sent)
    })
    .await;
    let db = app.db.clone();
    app.stop().await;
    (cfg, db)
}

/// `kitebridge store copy --config CFG --from FROM EXTRA…`, off the async runtime.
async fn store_copy(cfg: &Path, from: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = ["store", "copy", "--config", path(cfg), "--from", path(from)]
        .map(str::to_string)
        .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        kitebridge(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy that worked: its summary line.
async fn copied(cfg: &Path, from: &Path, extra: &[&str]) -> String {
    let out = store_copy(cfg, from, extra).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A copy refused with exit 1 and one line: that line.
async fn refused(cfg: &Path, from: &Path) -> String {
    let out = store_copy(cfg, from, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim().to_string()
}

/// The shared store's config, `slack` up.
fn pg_config(dir: &Path, storage: &str, rec: &Recorder) -> PathBuf {
    config(dir, "pg.toml", storage, &rec.url("slack"), rec)
}

/// `SELECT COUNT(*) FROM table`.
fn rows(table: &str) -> String {
    format!("SELECT COUNT(*) FROM {table}")
}

/// `deliveries show ID` without the line that counts the age from now.
async fn show(cfg: &Path, id: i64) -> String {
    let id = id.to_string();
    let out = run_ok(&["deliveries", "show", "--config", cfg.to_str().unwrap(), &id]).await;
    out.lines()
        .filter(|l| !l.starts_with("  accepted"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (up to 10 s) until `sql` counts `n` on `db`.
async fn wait_count(db: &TestDb, sql: &str, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = db.count(sql).await;
        if got == n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SUMMARY: &str = "copied 3 pending deliveries, 3 dead letters, 1 open digest (3 events), 3 branch histories, 3 message ids, 7 duplicate keys, 0 button claims, 0 button presses";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copied_row_arrives_as_it_was_and_the_old_store_is_only_read() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (old_cfg, old_db) = old_store(dir.path(), &rec).await;
    let before = deliveries(&old_db).await;
    let db = TestDb::new().await;
    let cfg = pg_config(dir.path(), &db.storage_toml(), &rec);

    assert_eq!(copied(&cfg, &old_db, &[]).await, SUMMARY);

    assert_eq!(db.count(&rows("events")).await, 7, "all inside the window");
    assert_eq!(db.count(&rows("deliveries")).await, 7, "not the sent ones");
    for (table, n) in [
        ("delivery_events", 3),
        ("build_states", 3),
        ("message_refs", 3),
    ] {
        assert_eq!(db.count(&rows(table)).await, n, "{table}");
    }
    assert_eq!(db.count(&rows("dedupe_keys")).await, 7);
    let attempts: i64 = rusqlite::Connection::open(&old_db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.state <> 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(attempts >= 3, "at least the dead letters' attempts");
    assert_eq!(db.count(&rows("attempts")).await, attempts);
    // Into an empty store the ids stay: each delivery shows as it did, attempts and all.
    let kept: Vec<_> = before
        .iter()
        .filter(|d| d.state != DeliveryState::Sent)
        .collect();
    assert_eq!(kept.len(), 7, "3 pending, 3 dead, 1 digest");
    for d in &kept {
        assert_eq!(show(&cfg, d.id).await, show(&old_cfg, d.id).await);
    }
    let dead = run_ok(&[
        "deliveries",
        "list",
        "--state",
        "dead",
        "--config",
        path(&cfg),
    ])
    .await;
    assert_eq!(dead.matches("channel_not_found").count(), 3, "{dead}");
    assert_eq!(
        deliveries(&old_db).await,
        before,
        "the old store is as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_on_the_copy_carries_on_where_the_old_one_left_off() {
    kitebridge::crypto::install_provider();
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, old_db) = old_store(dir.path(), &rec).await;
    let digest = deliveries(&old_db)
        .await
        .iter()
        .find(|d| d.grouped)
        .unwrap()
        .id;
    let db = TestDb::new().await;
    let cfg = pg_config(dir.path(), &db.storage_toml(), &rec);
    assert_eq!(copied(&cfg, &old_db, &[]).await, SUMMARY);
    let serve = Replica::start(&cfg).await;

    // Bodies received within the window are still duplicates, answered with the first id.
    let agent = 7; // posted last: events 1 to 3 are the builds, 4 to 6 the jobs
    let (status, answer) = post_signed_json_to(serve.addr, &fixture("agent.connected")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "duplicate", "{answer}");
    assert_eq!(answer["id"], agent, "{answer}");
    let (_, answer) = post_signed_json_to(serve.addr, &build("b1", 1)).await;
    assert_eq!(answer["status"], "duplicate", "{answer}");
    // What was waiting for `slack` is sent from the shared store.
    let sent = rec.wait_for("slack", 3).await;
    let mut titles: Vec<_> = sent.iter().map(|r| r.json()["text"].clone()).collect();
    titles.sort_by_key(|t| t.to_string());
    let want = [
        "❌ Web App #1 failed",
        "❌ Web App #2 failed",
        "❌ Web App #3 failed",
    ];
    assert_eq!(titles, want);
    let sent = "SELECT COUNT(*) FROM deliveries WHERE destination = 'slack' AND state = 'sent'";
    assert_eq!(wait_count(&db, sent, 3).await, 3);
    // The digest is still open: a fourth failed job joins it.
    assert_eq!(post_signed_json_to(serve.addr, &failed_job(4)).await.0, 202);
    let links = format!("SELECT COUNT(*) FROM delivery_events WHERE delivery_id = {digest}");
    assert_eq!(db.count(&links).await, 4);
    // The branch's history came along: b1 failed before, so this is still failing.
    let (_, answer) = post_signed_json_to(serve.addr, &build("b1", 10)).await;
    assert_eq!(answer["transition"], "still_failing", "{answer}");
    assert!(
        answer["id"].as_i64().unwrap() > agent,
        "new ids follow the copied ones"
    );
    // So did the Slack message of build 2: its later result updates it in place.
    let ts = db
        .text("SELECT ts FROM message_refs WHERE key = 'web-app#2'")
        .await;
    let mut again: Value = serde_json::from_slice(&build("b2", 2)).unwrap();
    again["build"]["finished_at"] = "2026-11-30T05:00:00.000Z".into();
    let (status, _) = post_signed_json_to(serve.addr, &serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(status, 202);
    let updates = rec.wait_for("api/chat.update", 1).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].json()["ts"], ts.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_needs_force_and_then_goes_in_beside_the_first_with_ids_of_its_own() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, old_db) = old_store(dir.path(), &rec).await;
    let db = TestDb::new().await;
    let cfg = pg_config(dir.path(), &db.storage_toml(), &rec);
    assert_eq!(copied(&cfg, &old_db, &[]).await, SUMMARY);

    let err = refused(&cfg, &old_db).await;
    let want = format!("{}: it already holds events or deliveries", db.url);
    assert!(err.starts_with(&want) && err.contains("--force"), "{err}");
    assert_eq!(db.count(&rows("deliveries")).await, 7, "nothing written");

    // Meanwhile the shared store moved on for some things and not for others: only what the
    // copy has newer replaces them (equal is not newer).
    db.execute(
        "UPDATE build_states SET number = 100 WHERE branch = 'b1'; \
         UPDATE build_states SET number = 0 WHERE branch = 'b2'; \
         UPDATE message_refs SET rank = 99 WHERE key = 'web-app#1'; \
         UPDATE dedupe_keys SET received_at = 0 WHERE event_id = 7;",
    )
    .await;
    // The same rows again, under new ids.
    assert_eq!(
        copied(&cfg, &old_db, &["--force"]).await,
        "copied 3 pending deliveries, 3 dead letters, 1 open digest (3 events), 1 branch history, 2 message ids, 1 duplicate key, 0 button claims, 0 button presses"
    );
    let numbers =
        "SELECT string_agg(branch || '#' || number, ' ' ORDER BY branch) FROM build_states";
    assert_eq!(db.text(numbers).await, "b1#100 b2#2 b3#3");
    let kept =
        "SELECT COUNT(*) FROM message_refs WHERE key = 'web-app#1' AND rank = 99 AND event_id = 1";
    assert_eq!(db.count(kept).await, 1, "the later message id stays");
    let moved = "SELECT COUNT(*) FROM message_refs WHERE event_id > 7";
    assert_eq!(
        db.count(moved).await,
        2,
        "the others name the second copy's events"
    );
    let key = "SELECT COUNT(*) FROM dedupe_keys WHERE event_id = 14 AND received_at > 0";
    assert_eq!(
        db.count(key).await,
        1,
        "the newer key names the second copy's event"
    );
    for (table, n) in [("events", 14), ("deliveries", 14), ("delivery_events", 6)] {
        assert_eq!(db.count(&rows(table)).await, n, "{table}");
    }
    // Each copy's rows refer to their own copy's: the first kept the old ids (events 1 to 7).
    let crossed = "SELECT COUNT(*) FROM delivery_events de JOIN deliveries d ON d.id = de.delivery_id \
                   WHERE (d.event_id > 7) <> (de.event_id > 7)";
    assert_eq!(db.count(crossed).await, 0);
    for table in ["events", "deliveries", "attempts"] {
        let past = format!(
            "SELECT (nextval(pg_get_serial_sequence('{table}', 'id')) > (SELECT MAX(id) FROM {table}))::int::bigint"
        );
        assert_eq!(db.count(&past).await, 1, "{table}: new ids never collide");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_duplicate_window_off_only_the_events_messages_need_are_copied() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, old_db) = old_store(dir.path(), &rec).await;
    let db = TestDb::new().await;
    let storage = format!("{}dedupe_window = \"0s\"\n", db.storage_toml());
    let cfg = pg_config(dir.path(), &storage, &rec);
    assert_eq!(
        copied(&cfg, &old_db, &[]).await,
        "copied 3 pending deliveries, 3 dead letters, 1 open digest (3 events), 3 branch histories, 3 message ids, 0 duplicate keys, 0 button claims, 0 button presses"
    );
    assert_eq!(db.count(&rows("events")).await, 6, "not the agent event");
    assert_eq!(db.count(&rows("dedupe_keys")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bodies_inside_the_duplicate_window_are_copied_as_duplicate_keys() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, old_db) = old_store(dir.path(), &rec).await;
    // Two events fall out of a 1 h window: the agent event no route took, and build 1,
    // whose pending delivery still needs it.
    let two_hours_ago = kitebridge::store::now_ms() - 2 * 3_600_000;
    let conn = rusqlite::Connection::open(&old_db).unwrap();
    let aged = conn
        .execute(
            "UPDATE events SET received_at = ?1 WHERE name = 'agent.connected' \
             OR id = (SELECT MIN(id) FROM events WHERE name = 'build.finished')",
            [two_hours_ago],
        )
        .unwrap();
    assert_eq!(aged, 2);
    drop(conn);
    let db = TestDb::new().await;
    let storage = format!("{}dedupe_window = \"1h\"\n", db.storage_toml());
    let cfg = pg_config(dir.path(), &storage, &rec);
    assert_eq!(
        copied(&cfg, &old_db, &[]).await,
        "copied 3 pending deliveries, 3 dead letters, 1 open digest (3 events), 3 branch histories, 3 message ids, 5 duplicate keys, 0 button claims, 0 button presses"
    );
    assert_eq!(
        db.count(&rows("events")).await,
        6,
        "the old build stays for its delivery; the old agent event is gone"
    );
    assert_eq!(db.count(&rows("dedupe_keys")).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_version_1_is_copied_too() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1.db");
    let conn = rusqlite::Connection::open(&old).unwrap();
    conn.execute_batch(include_str!("../../src/store/schema/v1.sql"))
        .unwrap();
    conn.execute_batch(
        "INSERT INTO events (id, name, body, body_hash, received_at) VALUES (5, 'ping', x'7b7d', x'00', 1000);
         INSERT INTO deliveries (id, event_id, route, destination, state, attempts, created_at, age_from,
             next_attempt_at, updated_at, last_status, last_error)
             VALUES (9, 5, 'r', 'slack', 'pending', 1, 1000, 1000, 2000, 1500, 500, 'HTTP 500');
         INSERT INTO attempts (delivery_id, at, status, outcome, reason, latency_ms)
             VALUES (9, 1500, 500, 'retry', 'HTTP 500', 12);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let rec = Recorder::start().await;
    let db = TestDb::new().await;
    let cfg = pg_config(dir.path(), &db.storage_toml(), &rec);
    assert_eq!(
        copied(&cfg, &old, &[]).await,
        "copied 1 pending delivery, 0 dead letters, 0 open digests (0 events), 0 branch histories, 0 message ids, 0 duplicate keys, 0 button claims, 0 button presses"
    );
    let shown = show(&cfg, 9).await;
    assert!(shown.contains("event        ping (#5)"), "{shown}");
    assert!(
        shown.contains("retry      HTTP 500      12 ms  HTTP 500"),
        "{shown}"
    );
}

#[tokio::test]
async fn store_copy_refuses_with_one_line_naming_the_file_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::start().await;
    let port = dead_address().port();
    let url = format!("postgres://kb:s3cret-pw@127.0.0.1:{port}/kb?sslmode=disable");
    let cfg = pg_config(dir.path(), &format!("[storage]\nurl = \"{url}\""), &rec);
    let refuse = async |from: &Path| {
        let err = refused(&cfg, from).await;
        assert!(!err.contains("s3cret-pw"), "{err}");
        err
    };
    let starts = |err: String, want: String| assert!(err.starts_with(&want), "{err}");

    let missing = dir.path().join("missing.db");
    let err = refuse(&missing).await;
    assert_eq!(err, format!("{}: no such file", missing.display()));
    assert!(!missing.exists(), "nothing is created");

    let notes = dir.path().join("notes.db");
    std::fs::write(&notes, "not a database, just some notes\n".repeat(200)).unwrap();
    let want = format!("{}: not a kitebridge SQLite store", notes.display());
    starts(refuse(&notes).await, want);

    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE t (x)").unwrap();
    let want = format!(
        "{}: not a kitebridge SQLite store (no kitebridge tables)",
        other.display()
    );
    starts(refuse(&other).await, want);

    let newer = dir.path().join("newer.db");
    drop(open_store(&newer));
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    let want = format!(
        "{}: the store has schema version 99, newer than this kitebridge knows (5)",
        newer.display()
    );
    starts(refuse(&newer).await, want);

    // A good store, a shared store that does not answer: named without its password.
    let good = dir.path().join("good.db");
    drop(open_store(&good));
    starts(
        refuse(&good).await,
        format!("postgres://kb@127.0.0.1:{port}/kb?sslmode=disable: "),
    );

    let embedded = config(
        dir.path(),
        "k.toml",
        "[storage]\npath = \"k.db\"",
        "http://127.0.0.1:1/x",
        &rec,
    );
    let err = refused(&embedded, &good).await;
    let want = format!(
        "{}: store copy copies into a shared store: set [storage] url",
        embedded.display()
    );
    starts(err, want);
}
