use super::*;
use crate::store::{
    Accepted, DeliveryQueue, Intake, NewDelivery, NewEvent, Operations, Planner, StoreError, now_ms,
};
use bytes::Bytes;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db"), Durability::Full).unwrap();
    (dir, store)
}

fn event(body: &str, at: i64) -> NewEvent {
    NewEvent {
        name: "build.finished".into(),
        body: Bytes::from(body.to_string()),
        received_at: at,
        build: None,
    }
}

fn to(dest: &str) -> NewDelivery {
    NewDelivery {
        route: "r".into(),
        destination: dest.into(),
        template: None,
        group: None,
        not_before: None,
        thread_key: None,
    }
}

/// A plan that ignores the transition.
fn fixed(deliveries: Vec<NewDelivery>) -> Planner {
    Box::new(move |_| deliveries.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let (_dir, store) = store();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .accept(
                    event(&format!("{{\"n\":{i}}}"), now_ms()),
                    fixed(vec![to("a")]),
                    None,
                )
                .await
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap().unwrap() {
            Accepted::New { event_id, .. } => assert!(ids.insert(event_id)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 400);
    assert!(
        store.commits() < 400,
        "{} commits for 400 writes",
        store.commits()
    );
    assert_eq!(
        store.due("a", now_ms(), 1000, vec![]).await.unwrap().len(),
        400
    );
}

#[tokio::test]
async fn a_failed_accept_keeps_nothing() {
    let (_dir, store) = store();
    store
        .write(|c| c.execute_batch("DROP TABLE attempts; DROP TABLE deliveries"))
        .await
        .unwrap();
    let failed = store
        .accept(event("{}", now_ms()), fixed(vec![to("a")]), None)
        .await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    let events: i64 = store
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(events, 0, "the event was not half-kept");
}

/// A full disk makes SQLite roll back the whole shared transaction, not one savepoint:
/// every request in that batch is told so, and whatever was answered Ok is really kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_batch_keeps_exactly_what_was_answered_ok() {
    let (_dir, store) = store();
    let pages: i64 = store
        .read(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?))
        .await
        .unwrap();
    store
        .write(move |c| c.pragma_update(None, "max_page_count", pages + 40))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120 {
        let store = store.clone();
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(3000));
        tasks.spawn(async move {
            (
                i,
                store
                    .accept(event(&body, now_ms()), fixed(vec![to("a")]), None)
                    .await,
            )
        });
    }
    let (mut kept, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (_, Ok(Accepted::New { event_id, .. })) => kept.push(event_id),
            (_, Ok(other)) => panic!("{other:?}"),
            (_, Err(_)) => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "the disk filled: kept {}, refused {refused}",
        kept.len()
    );
    let stored: i64 = store
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        kept.len(),
        "nothing refused was kept, nothing kept was refused"
    );
    let deliveries = store.due("a", now_ms(), 1000, vec![]).await.unwrap();
    assert_eq!(deliveries.len(), kept.len());
}

/// The writer only appends to the log; the checkpointer copies it into the database file soon
/// after, long before the writer's own (far) threshold would.
#[tokio::test]
async fn the_log_is_copied_into_the_database_off_the_writer() {
    let (dir, store) = store();
    let db = dir.path().join("k.db");
    let empty = std::fs::metadata(&db).unwrap().len();
    let body = "x".repeat(3000);
    for i in 0..50 {
        store
            .accept(
                event(&format!("{{\"n\":{i},\"pad\":\"{body}\"}}"), now_ms()),
                fixed(vec![to("a")]),
                None,
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&db).unwrap().len() < empty + 50 * 3000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes",
            std::fs::metadata(&db).unwrap().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Pages in the log and pages of it copied into the database file, checkpointing what it can.
async fn log_pages(store: &SqliteStore) -> (i64, i64) {
    loop {
        let pages = store
            .read(|c| {
                Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })?)
            })
            .await
            .unwrap();
        // -1: the checkpointer was at it just then.
        if pages.0 >= 0 {
            return pages;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The pages `write` appends to the log: it runs once the log is all copied in, so its commit
/// starts the log afresh.
async fn log_pages_of<T: std::fmt::Debug>(
    store: &SqliteStore,
    write: impl std::future::Future<Output = Result<T, StoreError>>,
) -> i64 {
    loop {
        let (log, copied) = log_pages(store).await;
        if log == copied {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    write.await.unwrap();
    log_pages(store).await.0
}

/// A commit needs room in the log for every page it changed; a full disk has room for the
/// probe only when it has room for an event of Buildkite's size.
#[tokio::test]
async fn the_probe_needs_as_much_room_in_the_log_as_storing_an_event() {
    let (_dir, store) = store();
    let t = now_ms();
    let bodies = [
        include_str!("../../../tests/fixtures/buildkite/ping.json"),
        include_str!("../../../tests/fixtures/buildkite/build.finished.json"),
        include_str!("../../../tests/fixtures/buildkite/job.finished.json"),
    ];
    let mut event_pages = Vec::new();
    for n in 0..60 {
        let body = bodies[n % 3].replacen('{', &format!("{{\"n\":{n},"), 1);
        let plan = (0..=n % 4).map(|d| to(&format!("d{d}"))).collect();
        let accept = store.accept(event(&body, t + n as i64), fixed(plan), Some(t - 600_000));
        event_pages.push(log_pages_of(&store, accept).await);
    }
    let most = *event_pages.iter().max().unwrap();
    // The first probe also makes its row (and grows the file by it); later ones rewrite it.
    store.probe().await.unwrap();
    let probe = log_pages_of(&store, store.probe()).await;
    assert!(
        (most..=2 * most).contains(&probe),
        "the probe wrote {probe} pages, an event up to {most}: {event_pages:?}"
    );
}

/// `store copy` carries the buttons' claims and the audit trail, the latter as recorded.
#[tokio::test]
async fn a_snapshot_reads_claims_and_presses() {
    use crate::store::copy::{Batch, ClaimRow};
    use crate::store::{Press, Presses};
    let (dir, store) = store();
    assert_eq!(store.claim_nonce("n", "maria", 5, 50).await.unwrap(), None);
    let press = |at: i64| Press {
        id: 0,
        at,
        action: "rebuild".into(),
        target: "acme/web-app#1".into(),
        route: "r".into(),
        destination: "a".into(),
        channel: "slack".into(),
        presser: "U1".into(),
        presser_name: Some("María".into()),
        source: "T1/C1".into(),
        outcome: "done".into(),
        detail: None,
    };
    let first = store.record_press(press(20)).await.unwrap();
    let second = store.record_press(press(10)).await.unwrap();
    let snapshot = Snapshot::open(&dir.path().join("k.db"), None).unwrap();
    let batches: Vec<Batch> = snapshot.batches(10).map(Result::unwrap).collect();
    assert!(batches.contains(&Batch::Claims(vec![ClaimRow {
        nonce: "n".into(),
        claimed_by: "maria".into(),
        claimed_at: 5,
        expires_at: 50,
    }])));
    assert!(batches.contains(&Batch::Presses(vec![
        Press {
            id: first,
            ..press(20)
        },
        Press {
            id: second,
            ..press(10)
        },
    ])));
}

/// Every connection plans a statement once: binding a new `LIMIT` (or anything else) must not
/// make SQLite parse and plan the queue's query again on each look.
#[test]
fn statements_are_planned_once_whatever_is_bound() {
    use rusqlite::StatementStatus;
    use rusqlite::config::DbConfig;
    let (dir, store) = store();
    let path = dir.path().join("k.db");
    let writer_side = open(&path, Durability::Full).unwrap();
    let read_only = open_read_only(&path, Durability::Full).unwrap();
    // The queue's query run with five limits: how often SQLite planned it again.
    let re_prepares = |conn: &Connection| {
        let mut stmt = conn.prepare(&super::queries::DUE_SQL).unwrap();
        for limit in 1..=5_i64 {
            let rows = stmt
                .query_map(rusqlite::params!["d", now_ms(), limit, "[]"], |_| Ok(()))
                .unwrap()
                .count();
            assert_eq!(rows, 0);
        }
        stmt.get_status(StatementStatus::RePrepare)
    };
    // Without the guarantee, SQLite does plan it again for each new LIMIT.
    assert_eq!(re_prepares(&Connection::open(&path).unwrap()), 5);
    for conn in [&writer_side, &read_only] {
        assert!(
            conn.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG)
                .unwrap()
        );
        assert_eq!(re_prepares(conn), 0);
    }
    drop(store);
}

/// The index only picks candidates by the hash's first bytes; the whole hash decides.
#[test]
fn a_body_sharing_the_first_bytes_of_the_hash_is_no_copy() {
    let (dir, store) = store();
    let conn = open(&dir.path().join("k.db"), Durability::Full).unwrap();
    let at = 1_700_000_000_000_i64;
    let hash = [7_u8; 32];
    let mut near = hash;
    near[31] = 8;
    conn.execute(
        "INSERT INTO events (id, name, body, body_hash, received_at) VALUES (1, 'ping', x'7b7d', ?1, ?2)",
        rusqlite::params![&near[..], at],
    )
    .unwrap();
    let find = |hash: &[u8]| super::intake::earlier_copy(&conn, hash, at - 60_000, at + 1).unwrap();
    assert_eq!(find(&hash), None, "same first bytes, another body");
    assert_eq!(find(&near), Some(1));
    drop(store);
}

/// A store of schema 4 (the hash-keyed duplicate index) moves to the minute-keyed one, and
/// the bodies it already holds are still found as copies.
#[tokio::test]
async fn a_version_4_store_keeps_finding_its_copies_after_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let at = now_ms();
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute(
            "INSERT INTO events (id, name, body, body_hash, received_at) VALUES (1, 'build.finished', ?1, ?2, ?3)",
            rusqlite::params![
                &b"{\"old\":1}"[..],
                <sha2::Sha256 as sha2::Digest>::digest(b"{\"old\":1}").to_vec(),
                at - 1000
            ],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Durability::Full).unwrap();
    let again = store
        .accept(
            event("{\"old\":1}", at),
            fixed(vec![to("a")]),
            Some(at - 60_000),
        )
        .await
        .unwrap();
    assert_eq!(again, Accepted::Duplicate { event_id: 1 });
    let conn = Connection::open(&path).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["events_by_minute", "events_by_time"]);
}

/// The last handle's drop closes the store on disk before it returns: the log is copied in
/// and removed, so a stopped service leaves one file. SQLite removes the log only when the
/// connection closing last has the file to itself, so connections closed at the same moment
/// on several threads left it behind now and then: hence many rounds, each with several
/// read connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_the_store_on_disk() {
    for round in 0..40 {
        let (dir, store) = store();
        let at = now_ms();
        store
            .accept(event("{\"closing\":1}", at), fixed(vec![to("a")]), None)
            .await
            .unwrap();
        let reads: Vec<_> = (0..MAX_READERS).map(|_| store.recent_events(1)).collect();
        for read in futures_util::future::join_all(reads).await {
            read.unwrap();
        }
        let log = dir.path().join("k.db-wal");
        assert!(log.exists(), "the write went to the log");
        drop(store);
        assert!(
            !log.exists(),
            "round {round}: closed when the drop returned"
        );
    }
}
