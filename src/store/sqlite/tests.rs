use super::*;
use crate::store::{
    Accepted, Attempt, DeliveryQueue, DeliveryState, Intake, NewDelivery, NewEvent, Operations,
    Planner, Resolution, RetrySelector, StoreError, now_ms,
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

#[tokio::test]
async fn an_attempt_ending_after_a_manual_retry_does_not_undo_it() {
    let (_dir, store) = store();
    let t = now_ms();
    let Accepted::New { delivery_ids, .. } = store
        .accept(event("{}", t), fixed(vec![to("a")]), None)
        .await
        .unwrap()
    else {
        panic!()
    };
    let id = delivery_ids[0];
    // The attempt starts at t; an operator re-queues the delivery at t + 5 (say after a
    // dead letter from an earlier attempt); then the attempt ends as a dead letter.
    assert_eq!(store.retry(RetrySelector::Id(id), t + 5).await.unwrap(), 1);
    let late = Attempt {
        at: t + 10,
        status: Some(404),
        outcome: "permanent".into(),
        reason: None,
        latency_ms: 10,
    };
    store
        .finish_attempt(id, t, late, None, Resolution::Dead)
        .await
        .unwrap();
    let (d, attempts) = store.show(id).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending, "the retry stands");
    assert_eq!(attempts.len(), 1, "the attempt is still in the history");
}

#[tokio::test]
async fn identical_bodies_within_the_window_are_stored_once() {
    let (_dir, store) = store();
    let t = now_ms();
    let first = store
        .accept(event("{\"a\":1}", t), fixed(vec![to("a")]), Some(t - 1000))
        .await
        .unwrap();
    let Accepted::New { event_id, .. } = first else {
        panic!()
    };
    let again = store
        .accept(
            event("{\"a\":1}", t + 10),
            fixed(vec![to("a")]),
            Some(t + 10 - 1000),
        )
        .await
        .unwrap();
    assert_eq!(again, Accepted::Duplicate { event_id });
    let later = store
        .accept(
            event("{\"a\":1}", t + 5000),
            fixed(vec![to("a")]),
            Some(t + 5000 - 1000),
        )
        .await
        .unwrap();
    assert!(
        matches!(later, Accepted::New { .. }),
        "outside the window it is new"
    );
    assert_eq!(store.due("a", t + 5000, 10, vec![]).await.unwrap().len(), 2);
    // Messages in flight are left out, and the limit counts only the others.
    let all = store.due("a", t + 5000, 10, vec![]).await.unwrap();
    let rest = store.due("a", t + 5000, 1, vec![all[0].id]).await.unwrap();
    assert_eq!(rest.iter().map(|d| d.id).collect::<Vec<_>>(), [all[1].id]);
}

#[tokio::test]
async fn attempts_retries_and_pruning() {
    let (_dir, store) = store();
    let t = now_ms();
    let Accepted::New { delivery_ids, .. } = store
        .accept(event("{}", t), fixed(vec![to("a"), to("b")]), None)
        .await
        .unwrap()
    else {
        panic!()
    };
    let attempt = |outcome: &str, status| Attempt {
        at: t,
        status,
        outcome: outcome.into(),
        reason: Some("why".into()),
        latency_ms: 3,
    };
    store
        .finish_attempt(
            delivery_ids[0],
            t,
            attempt("retry", Some(500)),
            Some("{}".into()),
            Resolution::RetryAt(t + 60_000),
        )
        .await
        .unwrap();
    assert!(
        store.due("a", t, 10, vec![]).await.unwrap().is_empty(),
        "not due before its retry time"
    );
    assert_eq!(
        store.next_due_after("a", t).await.unwrap(),
        Some(t + 60_000)
    );
    store
        .finish_attempt(
            delivery_ids[0],
            t,
            attempt("permanent", Some(404)),
            None,
            Resolution::Dead,
        )
        .await
        .unwrap();
    let (dead, attempts) = store.show(delivery_ids[0]).await.unwrap();
    assert_eq!(
        (dead.state, dead.attempts, dead.last_status),
        (DeliveryState::Dead, 2, Some(404))
    );
    assert_eq!(
        dead.body.as_deref(),
        Some("{}"),
        "the first rendering is kept"
    );
    assert_eq!(attempts.len(), 2);

    assert_eq!(store.retry(RetrySelector::AllDead, t + 1).await.unwrap(), 1);
    let (retried, _) = store.show(delivery_ids[0]).await.unwrap();
    assert_eq!(
        (retried.state, retried.age_from, retried.body),
        (DeliveryState::Pending, t + 1, None)
    );

    store
        .finish_attempt(
            delivery_ids[1],
            t,
            attempt("sent", Some(200)),
            None,
            Resolution::Sent,
        )
        .await
        .unwrap();
    assert_eq!(
        store.prune(t + 1, 1000).await.unwrap(),
        1,
        "the sent one goes"
    );
    assert!(store.show(delivery_ids[1]).await.is_err());
    assert!(
        store.show(delivery_ids[0]).await.is_ok(),
        "the pending one stays"
    );
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].destination.as_str(), stats[0].pending), ("a", 1));
    store.probe().await.unwrap();
}

fn grouped(dest: &str, key: &str, window_ms: i64, not_before: Option<i64>) -> NewDelivery {
    NewDelivery {
        group: Some((key.into(), window_ms)),
        not_before,
        ..to(dest)
    }
}

#[tokio::test]
async fn a_closed_digest_takes_no_more_events() {
    let (_dir, store) = store();
    let t = now_ms();
    let accept = |body: &str, d: NewDelivery| store.accept(event(body, t), fixed(vec![d]), None);
    let Accepted::New {
        delivery_ids: a, ..
    } = accept("{\"n\":1}", grouped("a", "k", 60_000, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    let Accepted::New {
        delivery_ids: b, ..
    } = accept("{\"n\":2}", grouped("a", "k", 60_000, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(a, b, "joined the open digest");
    store.close_group(a[0], now_ms()).await.unwrap();
    let Accepted::New {
        delivery_ids: c, ..
    } = accept("{\"n\":3}", grouped("a", "k", 60_000, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_ne!(a, c, "a new digest after the first was closed");
    assert_eq!(store.group_events(a[0]).await.unwrap().len(), 2);
    assert_eq!(store.group_events(c[0]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_held_event_holds_the_digest_it_joins_and_max_age_counts_from_release() {
    let (_dir, store) = store();
    let t = now_ms();
    let later = t + 3_600_000;
    let accept = |body: &str, d: NewDelivery| store.accept(event(body, t), fixed(vec![d]), None);
    let Accepted::New {
        delivery_ids: a, ..
    } = accept("{\"n\":1}", grouped("a", "k", 10_000, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    accept("{\"n\":2}", grouped("a", "k", 10_000, Some(later)))
        .await
        .unwrap();
    let (d, _) = store.show(a[0]).await.unwrap();
    assert_eq!((d.next_attempt_at, d.age_from), (later, later));
    let Accepted::New {
        delivery_ids: h, ..
    } = accept(
        "{\"n\":3}",
        NewDelivery {
            not_before: Some(later),
            ..to("b")
        },
    )
    .await
    .unwrap()
    else {
        panic!()
    };
    let (held, _) = store.show(h[0]).await.unwrap();
    assert_eq!(
        (held.next_attempt_at, held.age_from, held.created_at),
        (later, later, t)
    );
}

/// A message held by a mute window or an open digest is queued but not late: it shows in the
/// depth, not in the oldest-pending age that operators alert on.
#[tokio::test]
async fn held_messages_count_in_the_depth_but_not_in_the_age() {
    let (_dir, store) = store();
    let t = now_ms();
    let later = t + 3_600_000;
    let held = NewDelivery {
        not_before: Some(later),
        ..to("a")
    };
    store
        .accept(event("{\"n\":1}", t - 60_000), fixed(vec![held]), None)
        .await
        .unwrap();
    store
        .accept(
            event("{\"n\":2}", t - 30_000),
            fixed(vec![grouped("a", "k", 600_000, None)]),
            None,
        )
        .await
        .unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats[0].pending, stats[0].oldest_due_at), (2, None));

    store
        .accept(event("{\"n\":3}", t - 5_000), fixed(vec![to("a")]), None)
        .await
        .unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (stats[0].pending, stats[0].oldest_due_at),
        (3, Some(t - 5_000))
    );
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
