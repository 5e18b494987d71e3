use super::*;
use crate::store::{
    Accepted, DeliveryQueue, Intake, NewDelivery, NewEvent, Planner, StoreError, now_ms,
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
    Box::new(move |_| deliveries)
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
