//! The store's contract: each test below runs, unchanged, against the embedded SQLite store
//! and against PostgreSQL (a fresh database each).

use kitebridge::store::{
    Accepted, Attempt, Carry, Claim, DeliveryState, Finished, Group, Left, MessageRef, NewDelivery,
    NewEvent, Pace, Planner, Press, Progress, Resolution, RetrySelector, Store, now_ms,
};
use kitebridge::transition::{BuildOutcome, TransitionKind};
use std::sync::Arc;
use std::time::Duration;

/// Runs each named contract test against both stores.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = kitebridge::store::SqliteStore::open(
                        &dir.path().join("k.db"),
                        kitebridge::store::sqlite::Durability::Full,
                    )
                    .unwrap();
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::pg::TestDb::new().await;
                    super::$name(std::sync::Arc::new(db.store().await)).await;
                }
            )*
        }
    };
}

contract!(
    concurrent_events_are_each_stored_with_their_deliveries,
    identical_bodies_within_the_window_are_stored_once,
    a_copy_is_found_across_the_minutes_of_a_long_window,
    the_same_body_from_many_writers_at_once_is_stored_once,
    an_attempt_ending_after_a_manual_retry_does_not_undo_it,
    attempts_are_matched_by_version_not_by_clock,
    attempts_recorded_together_are_each_judged_by_their_own_version,
    attempts_retries_and_pruning,
    a_closed_digest_takes_no_more_events,
    a_digest_held_back_after_it_was_picked_is_not_closed,
    concurrent_events_of_one_group_share_one_digest,
    a_held_event_holds_the_digest_it_joins_and_max_age_counts_from_release,
    held_messages_count_in_the_depth_but_not_in_the_age,
    concurrent_builds_of_one_branch_are_counted_one_after_the_other,
    a_retried_build_and_late_older_builds_at_once_keep_the_history_right,
    a_build_message_is_only_moved_forward,
    a_released_lease_hands_on_its_pace_and_pause,
    recent_events_come_newest_first,
    a_button_nonce_is_won_by_the_first_claim_only,
    many_presses_of_one_button_at_once_have_one_winner,
    only_the_holder_gives_a_nonce_back,
    presses_are_listed_newest_first_with_every_field,
    pruning_drops_expired_claims_and_old_presses,
);

/// The template studio's samples: the last events stored, newest first, at most `limit`.
async fn recent_events_come_newest_first(store: Arc<dyn Store>) {
    assert!(store.recent_events(5).await.unwrap().is_empty());
    let t = now_ms();
    let mut stored = Vec::new();
    for n in 0..4 {
        let accepted = store
            .accept(event(&format!("{{\"n\":{n}}}"), t + n), fixed(vec![]), None)
            .await
            .unwrap();
        let Accepted::New { event_id, .. } = accepted else {
            panic!("{accepted:?}")
        };
        stored.push(event_id);
    }
    let recent = store.recent_events(3).await.unwrap();
    let ids: Vec<i64> = recent.iter().map(|e| e.id).collect();
    assert_eq!(ids, [stored[3], stored[2], stored[1]]);
    assert_eq!(&recent[0].body[..], b"{\"n\":3}");
    assert_eq!(recent[0].name, "build.finished");
}

fn event(body: &str, at: i64) -> NewEvent {
    NewEvent {
        name: "build.finished".into(),
        body: bytes::Bytes::from(body.to_string()),
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

fn grouped(dest: &str, key: &str, window_ms: i64, not_before: Option<i64>) -> NewDelivery {
    NewDelivery {
        group: Some(Group {
            key: key.into(),
            window_ms,
        }),
        not_before,
        ..to(dest)
    }
}

/// A plan that ignores the transition.
fn fixed(deliveries: Vec<NewDelivery>) -> Planner {
    Box::new(move |_| deliveries.clone())
}

fn ids(a: Accepted) -> Vec<i64> {
    match a {
        Accepted::New { delivery_ids, .. } => delivery_ids,
        other => panic!("{other:?}"),
    }
}

async fn concurrent_events_are_each_stored_with_their_deliveries(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .accept(
                    event(&format!("{{\"n\":{i}}}"), now_ms()),
                    fixed(vec![to("a"), to("b")]),
                    None,
                )
                .await
        });
    }
    let mut events = std::collections::HashSet::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap().unwrap() {
            Accepted::New {
                event_id,
                delivery_ids,
                ..
            } => {
                assert!(events.insert(event_id));
                assert_eq!(delivery_ids.len(), 2);
                assert!(delivery_ids[0] < delivery_ids[1], "in the planned order");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events.len(), 200);
    let due = store.due("a", now_ms(), 1000, vec![]).await.unwrap();
    assert_eq!(due.len(), 200);
    assert!(
        due.windows(2)
            .all(|w| (w[0].next_attempt_at, w[0].id) < (w[1].next_attempt_at, w[1].id)),
        "in the order they came due"
    );
    assert!(
        due.iter().all(|d| d.event.is_some()),
        "the event comes with each message to render"
    );
}

async fn identical_bodies_within_the_window_are_stored_once(store: Arc<dyn Store>) {
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

async fn a_copy_is_found_across_the_minutes_of_a_long_window(store: Arc<dyn Store>) {
    const MINUTE: i64 = 60_000;
    // The first copy arrives in the last second of a minute, the others minutes later.
    let t0 = (now_ms() / MINUTE - 30) * MINUTE + MINUTE - 500;
    let window = 10 * MINUTE;
    let body = "{\"across\":\"minutes\"}";
    let accept = |at: i64| {
        let store = store.clone();
        async move {
            store
                .accept(event(body, at), fixed(vec![to("a")]), Some(at - window))
                .await
                .unwrap()
        }
    };
    let Accepted::New { event_id, .. } = accept(t0).await else {
        panic!("the first copy is new")
    };
    for later in [1_000, 4 * MINUTE, window - 1] {
        assert_eq!(
            accept(t0 + later).await,
            Accepted::Duplicate { event_id },
            "{later} ms later, inside the window"
        );
    }
    let Accepted::New { event_id: next, .. } = accept(t0 + window + 1).await else {
        panic!("a copy just outside the window is new")
    };
    // And a different body received in the same millisecond is not taken for a copy.
    assert!(matches!(
        store
            .accept(
                event("{\"across\":\"minute\"}", t0 + window + 1),
                fixed(vec![to("a")]),
                Some(t0 + 1)
            )
            .await
            .unwrap(),
        Accepted::New { .. }
    ));
    assert_eq!(
        accept(t0 + window + 2).await,
        Accepted::Duplicate { event_id: next },
        "the later copy is now the one to match"
    );
    // Two requests stamped a moment apart can reach the store in either order: a copy
    // stamped a minute later than the one arriving now is still a copy, and so is one
    // stamped exactly at the window's start.
    let body = "{\"out of\":\"order\"}";
    let at = t0 + 3 * window;
    let Accepted::New {
        event_id: ahead, ..
    } = store
        .accept(
            event(body, at + MINUTE + 1),
            fixed(vec![to("a")]),
            Some(at + MINUTE + 1 - window),
        )
        .await
        .unwrap()
    else {
        panic!("the first copy to arrive is new")
    };
    for (stamped, since) in [
        (at, at - window),
        (at + MINUTE + 1 + window, at + MINUTE + 1),
    ] {
        assert_eq!(
            store
                .accept(event(body, stamped), fixed(vec![to("a")]), Some(since))
                .await
                .unwrap(),
            Accepted::Duplicate { event_id: ahead },
            "stamped {stamped}, window from {since}"
        );
    }
}

async fn the_same_body_from_many_writers_at_once_is_stored_once(store: Arc<dyn Store>) {
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .accept(
                    event("{\"same\":true}", t),
                    fixed(vec![to("a")]),
                    Some(t - 60_000),
                )
                .await
                .unwrap()
        });
    }
    let (mut new, mut duplicates) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Accepted::New { event_id, .. } => new.push(event_id),
            Accepted::Duplicate { event_id } => duplicates.push(event_id),
        }
    }
    assert_eq!(new.len(), 1, "stored once");
    assert_eq!(duplicates.len(), 15);
    assert!(
        duplicates.iter().all(|id| *id == new[0]),
        "each names the first"
    );
    assert_eq!(store.due("a", t, 100, vec![]).await.unwrap().len(), 1);
}

async fn an_attempt_ending_after_a_manual_retry_does_not_undo_it(store: Arc<dyn Store>) {
    let t = now_ms();
    let id = ids(store
        .accept(event("{}", t), fixed(vec![to("a")]), None)
        .await
        .unwrap())[0];
    let picked = store.due("a", t, 10, vec![]).await.unwrap()[0].updated_at;
    // The attempt is picked; an operator re-queues the delivery (say after a dead letter
    // from an earlier attempt), with a clock that is behind; then the attempt ends as a
    // dead letter.
    assert_eq!(
        store
            .retry(RetrySelector::Id(id), picked - 60_000)
            .await
            .unwrap(),
        1
    );
    let late = Attempt {
        at: t + 10,
        status: Some(404),
        outcome: "permanent".into(),
        reason: None,
        latency_ms: 10,
    };
    assert!(
        !store
            .finish_attempt(id, picked, late, None, Resolution::Dead)
            .await
            .unwrap(),
        "the store says the delivery had changed"
    );
    let (d, attempts) = store.show(id).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending, "the retry stands");
    assert_eq!(attempts.len(), 1, "the attempt is still in the history");
}

/// Replicas' clocks differ: an attempt is judged by the version it was picked at, never by
/// comparing one replica's time with another's. Two replicas that attempted the same delivery
/// (the first lost its hold mid-send) are counted once.
async fn attempts_are_matched_by_version_not_by_clock(store: Arc<dyn Store>) {
    let t = now_ms();
    let id = ids(store
        .accept(event("{}", t), fixed(vec![to("a")]), None)
        .await
        .unwrap())[0];
    let attempt = |at: i64| Attempt {
        at,
        status: Some(500),
        outcome: "retry".into(),
        reason: Some("server error".into()),
        latency_ms: 3,
    };
    // A replica whose clock runs ahead records a failure, to be retried at once.
    let picked = store.due("a", t, 10, vec![]).await.unwrap()[0].updated_at;
    let ahead = t + 120_000;
    assert!(
        store
            .finish_attempt(id, picked, attempt(ahead), None, Resolution::RetryAt(t))
            .await
            .unwrap()
    );
    // Another replica, two minutes behind, picks it up: its record still counts.
    let picked = store.due("a", t, 10, vec![]).await.unwrap()[0].updated_at;
    assert!(
        store
            .finish_attempt(id, picked, attempt(t), None, Resolution::RetryAt(t))
            .await
            .unwrap()
    );
    let (d, _) = store.show(id).await.unwrap();
    assert_eq!(d.attempts, 2, "both attempts moved the delivery on");
    assert!(
        d.updated_at > picked,
        "every change makes the version larger"
    );

    // Two replicas picked the same version: the first to finish decides.
    let picked = d.updated_at;
    let sent = Attempt {
        status: Some(200),
        outcome: "sent".into(),
        reason: None,
        ..attempt(t)
    };
    assert!(
        store
            .finish_attempt(id, picked, sent, None, Resolution::Sent)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_attempt(id, picked, attempt(t), None, Resolution::RetryAt(t))
            .await
            .unwrap()
    );
    let (d, attempts) = store.show(id).await.unwrap();
    assert_eq!((d.state, d.attempts), (DeliveryState::Sent, 3));
    assert_eq!(attempts.len(), 4, "every attempt is in the history");
}

/// Attempts recorded in one batch (as the workers record them) are kept together, and each
/// moves its own delivery on only if that delivery is still at the version it was picked at.
async fn attempts_recorded_together_are_each_judged_by_their_own_version(store: Arc<dyn Store>) {
    let t = now_ms();
    let mut delivery_ids = Vec::new();
    for n in 0..3 {
        let accepted = store
            .accept(
                event(&format!("{{\"n\":{n}}}"), t),
                fixed(vec![to("a")]),
                None,
            )
            .await
            .unwrap();
        delivery_ids.extend(ids(accepted));
    }
    let due = store.due("a", t, 10, vec![]).await.unwrap();
    assert_eq!(due.len(), 3);
    let record = |i: usize, picked: i64, resolution: Resolution| Finished {
        delivery_id: due[i].id,
        picked,
        attempt: Attempt {
            at: t + 1,
            status: Some(200),
            outcome: "sent".into(),
            reason: None,
            latency_ms: 2,
        },
        body: Some(format!("body {i}")),
        resolution,
    };
    // The second was re-queued by an operator meanwhile: its record must not undo that.
    let stale = due[1].updated_at - 1;
    let applied = store
        .finish_attempts(vec![
            record(0, due[0].updated_at, Resolution::Sent),
            record(1, stale, Resolution::Sent),
            record(2, due[2].updated_at, Resolution::RetryAt(t + 60_000)),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [true, false, true]);
    let (first, history) = store.show(delivery_ids[0]).await.unwrap();
    assert_eq!((first.state, first.attempts), (DeliveryState::Sent, 1));
    assert_eq!(first.body.as_deref(), Some("body 0"));
    assert_eq!(history.len(), 1);
    let (second, history) = store.show(delivery_ids[1]).await.unwrap();
    assert_eq!((second.state, second.attempts), (DeliveryState::Pending, 0));
    assert_eq!(
        history.len(),
        1,
        "its attempt is in the history all the same"
    );
    let (third, _) = store.show(delivery_ids[2]).await.unwrap();
    assert_eq!(
        (third.state, third.next_attempt_at, third.body.as_deref()),
        (DeliveryState::Pending, t + 60_000, Some("body 2"))
    );
    // Two records of one delivery in one call: the second is judged by the version the first
    // left, so it changes nothing (though both attempts are kept).
    let applied = store
        .finish_attempts(vec![
            record(1, due[1].updated_at, Resolution::RetryAt(t + 1_000)),
            record(1, due[1].updated_at, Resolution::Sent),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [true, false]);
    let (second, history) = store.show(delivery_ids[1]).await.unwrap();
    assert_eq!(
        (second.state, second.attempts, second.next_attempt_at),
        (DeliveryState::Pending, 1, t + 1_000)
    );
    assert_eq!(history.len(), 3);
    assert!(store.finish_attempts(vec![]).await.unwrap().is_empty());
}

async fn attempts_retries_and_pruning(store: Arc<dyn Store>) {
    let t = now_ms();
    let delivery_ids = ids(store
        .accept(event("{}", t), fixed(vec![to("a"), to("b")]), None)
        .await
        .unwrap());
    let attempt = |outcome: &str, status| Attempt {
        at: t,
        status,
        outcome: outcome.into(),
        reason: Some("why".into()),
        latency_ms: 3,
    };
    let version = |id: i64| {
        let store = store.clone();
        async move { store.show(id).await.unwrap().0.updated_at }
    };
    assert!(
        store
            .finish_attempt(
                delivery_ids[0],
                version(delivery_ids[0]).await,
                attempt("retry", Some(500)),
                Some("{}".into()),
                Resolution::RetryAt(t + 60_000),
            )
            .await
            .unwrap()
    );
    assert!(
        store.due("a", t, 10, vec![]).await.unwrap().is_empty(),
        "not due before its retry time"
    );
    assert_eq!(
        store.next_due_after("a", t).await.unwrap(),
        Some(t + 60_000)
    );
    assert!(
        store
            .finish_attempt(
                delivery_ids[0],
                version(delivery_ids[0]).await,
                attempt("permanent", Some(404)),
                None,
                Resolution::Dead,
            )
            .await
            .unwrap()
    );
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
    assert_eq!(
        store.list(Some(DeliveryState::Dead), 10).await.unwrap()[0].id,
        delivery_ids[0]
    );

    assert_eq!(store.retry(RetrySelector::AllDead, t + 1).await.unwrap(), 1);
    let (retried, _) = store.show(delivery_ids[0]).await.unwrap();
    assert_eq!(
        (retried.state, retried.age_from, retried.body),
        (DeliveryState::Pending, t + 1, None)
    );

    assert!(
        store
            .finish_attempt(
                delivery_ids[1],
                version(delivery_ids[1]).await,
                attempt("sent", Some(200)),
                None,
                Resolution::Sent,
            )
            .await
            .unwrap()
    );
    let pruned_at = version(delivery_ids[1]).await + 1;
    assert_eq!(
        store.prune(pruned_at, 1000).await.unwrap(),
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

async fn a_closed_digest_takes_no_more_events(store: Arc<dyn Store>) {
    let t = now_ms();
    let window = 300;
    let accept = |body: &str, d: NewDelivery| store.accept(event(body, t), fixed(vec![d]), None);
    let a = ids(accept("{\"n\":1}", grouped("a", "k", window, None))
        .await
        .unwrap());
    let b = ids(accept("{\"n\":2}", grouped("a", "k", window, None))
        .await
        .unwrap());
    assert_eq!(a, b, "joined the open digest");
    assert!(
        !store.close_group(a[0], t).await.unwrap(),
        "not closed before it is due"
    );
    tokio::time::sleep(Duration::from_millis(window as u64 + 100)).await;
    assert!(store.close_group(a[0], now_ms()).await.unwrap());
    let c = ids(store
        .accept(
            event("{\"n\":3}", now_ms()),
            fixed(vec![grouped("a", "k", 60_000, None)]),
            None,
        )
        .await
        .unwrap());
    assert_ne!(a, c, "a new digest after the first was closed");
    assert_eq!(store.group_events(a[0]).await.unwrap().len(), 2);
    assert_eq!(store.group_events(c[0]).await.unwrap().len(), 1);
}

/// A worker whose clock runs ahead of the store's picks a digest as due while the store still
/// takes events into it; a held event (a mute until later) joins and holds the digest back:
/// the close refuses, so the held event is not sent early.
async fn a_digest_held_back_after_it_was_picked_is_not_closed(store: Arc<dyn Store>) {
    let t = now_ms();
    let a = ids(store
        .accept(
            event("{\"n\":1}", t),
            fixed(vec![grouped("a", "k", 60_000, None)]),
            None,
        )
        .await
        .unwrap());
    let ahead = t + 60_000;
    assert_eq!(store.due("a", ahead, 10, vec![]).await.unwrap().len(), 1);
    let later = t + 3_600_000;
    let joined = ids(store
        .accept(
            event("{\"n\":2}", t),
            fixed(vec![grouped("a", "k", 60_000, Some(later))]),
            None,
        )
        .await
        .unwrap());
    assert_eq!(joined, a, "the digest was still open");
    assert!(
        !store.close_group(a[0], ahead).await.unwrap(),
        "held back: not closed, not sent now"
    );
    assert!(store.due("a", ahead, 10, vec![]).await.unwrap().is_empty());
    assert!(store.close_group(a[0], later).await.unwrap());
    assert_eq!(store.group_events(a[0]).await.unwrap().len(), 2);
}

async fn concurrent_events_of_one_group_share_one_digest(store: Arc<dyn Store>) {
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            ids(store
                .accept(
                    event(&format!("{{\"n\":{i}}}"), t),
                    fixed(vec![grouped("a", "k", 60_000, None), to("b")]),
                    None,
                )
                .await
                .unwrap())
        });
    }
    let mut digests = std::collections::HashSet::new();
    while let Some(r) = tasks.join_next().await {
        digests.insert(r.unwrap()[0]);
    }
    assert_eq!(digests.len(), 1, "one digest: {digests:?}");
    let digest = *digests.iter().next().unwrap();
    assert_eq!(store.group_events(digest).await.unwrap().len(), 16);
}

async fn a_held_event_holds_the_digest_it_joins_and_max_age_counts_from_release(
    store: Arc<dyn Store>,
) {
    let t = now_ms();
    let later = t + 3_600_000;
    let accept = |body: &str, d: NewDelivery| store.accept(event(body, t), fixed(vec![d]), None);
    let a = ids(accept("{\"n\":1}", grouped("a", "k", 10_000, None))
        .await
        .unwrap());
    accept("{\"n\":2}", grouped("a", "k", 10_000, Some(later)))
        .await
        .unwrap();
    let (d, _) = store.show(a[0]).await.unwrap();
    assert_eq!((d.next_attempt_at, d.age_from), (later, later));
    let h = ids(accept(
        "{\"n\":3}",
        NewDelivery {
            not_before: Some(later),
            ..to("b")
        },
    )
    .await
    .unwrap());
    let (held, _) = store.show(h[0]).await.unwrap();
    assert_eq!(
        (held.next_attempt_at, held.age_from, held.created_at),
        (later, later, t)
    );
}

/// A message held by a mute window or an open digest is queued but not late: it shows in the
/// depth, not in the oldest-pending age that operators alert on.
async fn held_messages_count_in_the_depth_but_not_in_the_age(store: Arc<dyn Store>) {
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

/// Twelve failed builds of one branch arriving together: each that counts sees the one before
/// it, so no two claim the same place in the run of failures.
async fn concurrent_builds_of_one_branch_are_counted_one_after_the_other(store: Arc<dyn Store>) {
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 1..=12u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut e = event(&format!("{{\"build\":{n}}}"), t);
            e.build = Some(BuildOutcome {
                pipeline: "web".into(),
                branch: "main".into(),
                number: n,
                failed: true,
                finished_at: Some(t),
            });
            match store.accept(e, fixed(vec![to("a")]), None).await.unwrap() {
                Accepted::New { transition, .. } => transition,
                other => panic!("{other:?}"),
            }
        });
    }
    let mut counts = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(t) = r.unwrap() {
            assert!(matches!(
                t.kind,
                TransitionKind::Broken | TransitionKind::StillFailing
            ));
            counts.push(t.consecutive_failures);
        }
    }
    counts.sort();
    let expected: Vec<u32> = (1..=counts.len() as u32).collect();
    assert_eq!(counts, expected, "each counted once, in a row");
    // Then a pass fixes the branch, whatever order the failures landed in.
    let mut fixed_build = event("{\"build\":13}", t);
    fixed_build.build = Some(BuildOutcome {
        pipeline: "web".into(),
        branch: "main".into(),
        number: 13,
        failed: false,
        finished_at: Some(t),
    });
    let Accepted::New { transition, .. } = store
        .accept(fixed_build, fixed(vec![]), None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(transition.unwrap().kind, TransitionKind::Fixed);
}

fn finished(n: u64, failed: bool, at: i64) -> NewEvent {
    let mut e = event(
        &format!("{{\"build\":{n},\"failed\":{failed},\"at\":{at}}}"),
        at,
    );
    e.build = Some(BuildOutcome {
        pipeline: "web".into(),
        branch: "main".into(),
        number: n,
        failed,
        finished_at: Some(at),
    });
    e
}

/// Build 10 failed; then, at the same moment, its retry passes, its earlier result arrives
/// late, and two older builds arrive late. Whatever order the store takes them in, the
/// older builds get no transition, exactly one of them is `fixed`, and the branch ends passing.
async fn a_retried_build_and_late_older_builds_at_once_keep_the_history_right(
    store: Arc<dyn Store>,
) {
    let t = now_ms();
    let transition = |a: Accepted| match a {
        Accepted::New { transition, .. } => transition.map(|t| t.kind),
        other => panic!("{other:?}"),
    };
    let first = store
        .accept(finished(10, true, t), fixed(vec![]), None)
        .await
        .unwrap();
    assert_eq!(transition(first), Some(TransitionKind::Broken));
    let arrivals = [
        finished(10, false, t + 1_000), // the retry passes
        finished(10, true, t + 500),    // a result between the two, arriving late
        finished(9, false, t - 5_000),
        finished(8, true, t - 9_000),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in arrivals.into_iter().enumerate() {
        let store = store.clone();
        tasks.spawn(async move { (i, store.accept(e, fixed(vec![]), None).await.unwrap()) });
    }
    let mut kinds = [None; 4];
    while let Some(r) = tasks.join_next().await {
        let (i, accepted) = r.unwrap();
        kinds[i] = transition(accepted);
    }
    assert_eq!(kinds[2], None, "an older build changes nothing");
    assert_eq!(kinds[3], None, "an older build changes nothing");
    assert_eq!(
        kinds[0],
        Some(TransitionKind::Fixed),
        "the retry that passed fixes it"
    );
    assert!(
        matches!(kinds[1], None | Some(TransitionKind::StillFailing)),
        "the late middle result is ignored, or counted before the pass: {kinds:?}"
    );
    // The history kept is the retry's pass: the next failure breaks the branch anew.
    let next = store
        .accept(finished(11, true, t + 2_000), fixed(vec![]), None)
        .await
        .unwrap();
    let Accepted::New {
        transition: Some(next),
        ..
    } = next
    else {
        panic!("{next:?}")
    };
    assert_eq!(
        (next.kind, next.consecutive_failures),
        (TransitionKind::Broken, 1)
    );
}

async fn a_build_message_is_only_moved_forward(store: Arc<dyn Store>) {
    let m = |ts: &str, rank, id| MessageRef {
        channel: "C1".into(),
        ts: ts.into(),
        as_of: Progress { rank, event_id: id },
    };
    assert_eq!(store.message_ref("live", "web#1").await.unwrap(), None);
    store
        .set_message_ref("live", "web#1", m("1.1", 1, 10))
        .await
        .unwrap();
    store
        .set_message_ref("live", "web#1", m("1.1", 3, 12))
        .await
        .unwrap();
    store
        .set_message_ref("live", "web#1", m("9.9", 2, 11))
        .await
        .unwrap();
    assert_eq!(
        store.message_ref("live", "web#1").await.unwrap(),
        Some(m("1.1", 3, 12)),
        "a late event about an earlier step does not move it back"
    );
    assert_eq!(store.message_ref("other", "web#1").await.unwrap(), None);
}

async fn a_released_lease_hands_on_its_pace_and_pause(store: Arc<dyn Store>) {
    let a = vec!["a".to_string()];
    let first = store.acquire(&a, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].left, Left::Fresh);
    let epoch = first[0].epoch;
    assert_eq!(store.renew(&[("a".into(), epoch)]).await.unwrap(), a);
    store.save_pause("a", epoch, 5_000, 3).await.unwrap();
    let carry = Carry {
        pace: Some(Pace {
            tokens: 0.5,
            at: 4_000,
        }),
        paused_until: 6_000,
        failures: 4,
    };
    store.release("a", epoch, carry).await.unwrap();
    assert!(
        store
            .renew(&[("a".into(), epoch)])
            .await
            .unwrap()
            .is_empty(),
        "a released hold is not renewed"
    );
    let second = store.acquire(&a, Duration::ZERO).await.unwrap();
    assert_eq!(second[0].left, Left::Released(carry.pace));
    assert_eq!(second[0].carry, carry);
    assert!(second[0].epoch > epoch);
    // A stale holder's release changes nothing.
    store.release("a", epoch, Carry::default()).await.unwrap();
    assert_eq!(
        store.renew(&[("a".into(), second[0].epoch)]).await.unwrap(),
        a
    );
    assert!(store.heartbeat().await.unwrap() >= 1);
}

/// A press as the actions code records one, at `at`.
fn press(at: i64, outcome: &str) -> Press {
    Press {
        id: 0,
        at,
        action: "rebuild".into(),
        target: "acme/web-app#1842".into(),
        route: "main failures".into(),
        destination: "ci-slack".into(),
        channel: "slack".into(),
        presser: "U024BE7LH".into(),
        presser_name: None,
        source: "T0001/C0002".into(),
        outcome: outcome.into(),
        detail: None,
    }
}

async fn a_button_nonce_is_won_by_the_first_claim_only(store: Arc<dyn Store>) {
    let t = now_ms();
    let expires = t + 600_000;
    assert_eq!(
        store.claim_nonce("n-1", "maria", t, expires).await.unwrap(),
        None,
        "the first claim wins"
    );
    let first = Some(Claim {
        by: "maria".into(),
        at: t,
    });
    assert_eq!(
        store
            .claim_nonce("n-1", "jonas", t + 5, expires)
            .await
            .unwrap(),
        first,
        "a later claim learns who pressed first, and when"
    );
    assert_eq!(
        store
            .claim_nonce("n-1", "maria", t + 9, expires)
            .await
            .unwrap(),
        first,
        "not even the winner wins twice"
    );
    assert_eq!(
        store
            .claim_nonce("n-2", "jonas", t + 5, expires)
            .await
            .unwrap(),
        None,
        "another button is claimed apart"
    );
}

async fn many_presses_of_one_button_at_once_have_one_winner(store: Arc<dyn Store>) {
    let t = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.spawn(async move {
            let by = format!("presser-{i}");
            let claim = store
                .claim_nonce("same", &by, t + i, t + 600_000)
                .await
                .unwrap();
            (by, t + i, claim)
        });
    }
    let (mut winners, mut losers) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (by, at, None) => winners.push(Claim { by, at }),
            (_, _, Some(claim)) => losers.push(claim),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert_eq!(losers.len(), 19);
    assert!(
        losers.iter().all(|c| *c == winners[0]),
        "each loser is told the winner: {losers:?}"
    );
}

async fn only_the_holder_gives_a_nonce_back(store: Arc<dyn Store>) {
    let t = now_ms();
    let expires = t + 600_000;
    assert_eq!(
        store.claim_nonce("n", "maria", t, expires).await.unwrap(),
        None
    );
    store.release_nonce("n", "jonas").await.unwrap();
    assert_eq!(
        store
            .claim_nonce("n", "jonas", t + 1, expires)
            .await
            .unwrap(),
        Some(Claim {
            by: "maria".into(),
            at: t
        }),
        "a release by someone else leaves the claim"
    );
    store.release_nonce("n", "maria").await.unwrap();
    assert_eq!(
        store
            .claim_nonce("n", "jonas", t + 2, expires)
            .await
            .unwrap(),
        None,
        "released by its holder, the button can be pressed again"
    );
    assert_eq!(
        store
            .claim_nonce("n", "maria", t + 3, expires)
            .await
            .unwrap(),
        Some(Claim {
            by: "jonas".into(),
            at: t + 2
        })
    );
    // Giving back what nobody holds is no error.
    store.release_nonce("never-claimed", "maria").await.unwrap();
}

async fn presses_are_listed_newest_first_with_every_field(store: Arc<dyn Store>) {
    assert!(store.presses(10).await.unwrap().is_empty());
    let t = now_ms();
    let full = Press {
        action: "retry_failed".into(),
        target: "acme/web-app#1842 job 0190a2b3-c4d5".into(),
        channel: "teams".into(),
        presser: "maria@example.com".into(),
        presser_name: Some("María López".into()),
        source: "203.0.113.9".into(),
        detail: Some("HTTP 422: job cannot be retried".into()),
        ..press(t + 20, "failed")
    };
    let unknown = Press {
        action: "unknown".into(),
        target: String::new(),
        route: String::new(),
        destination: String::new(),
        ..press(t + 10, "forged")
    };
    // Recorded out of order: the list goes by when each was pressed.
    let mut recorded = Vec::new();
    for p in [press(t, "done"), full, unknown] {
        let id = store.record_press(p.clone()).await.unwrap();
        assert!(id > 0);
        recorded.push(Press { id, ..p });
    }
    let ids: std::collections::HashSet<i64> = recorded.iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), 3, "each press has its own id");
    let listed = store.presses(10).await.unwrap();
    assert_eq!(
        listed,
        [
            recorded[1].clone(),
            recorded[2].clone(),
            recorded[0].clone()
        ],
        "every field comes back, newest first"
    );
    assert_eq!(
        store.presses(2).await.unwrap(),
        [recorded[1].clone(), recorded[2].clone()],
        "at most `limit`"
    );
}

async fn pruning_drops_expired_claims_and_old_presses(store: Arc<dyn Store>) {
    let t = now_ms();
    // A claim lives as long as its button, whatever the retention.
    assert_eq!(
        store
            .claim_nonce("expired", "maria", t - 120_000, t - 1_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_nonce("live", "maria", t - 120_000, t + 600_000)
            .await
            .unwrap(),
        None
    );
    for at in [t - 300_000, t - 200_000, t - 100_000] {
        store.record_press(press(at, "done")).await.unwrap();
    }
    let kept = store.record_press(press(t, "done")).await.unwrap();

    let before = t - 50_000;
    // In batches of at most `limit`: two old presses, then the last one with the claim.
    assert_eq!(store.prune(before, 2).await.unwrap(), 2);
    assert_eq!(store.prune(before, 2).await.unwrap(), 1);
    assert_eq!(store.prune(before, 2).await.unwrap(), 0);

    let left: Vec<i64> = store
        .presses(10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, [kept], "only the press inside the retention stays");
    assert_eq!(
        store
            .claim_nonce("expired", "jonas", t, t + 600_000)
            .await
            .unwrap(),
        None,
        "the expired claim is gone"
    );
    assert_eq!(
        store
            .claim_nonce("live", "jonas", t, t + 600_000)
            .await
            .unwrap(),
        Some(Claim {
            by: "maria".into(),
            at: t - 120_000
        }),
        "the claim of a button still pressable stays, though older than the retention"
    );
}
