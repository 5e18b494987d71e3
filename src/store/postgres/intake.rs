//! Taking in one event on PostgreSQL, in one transaction: the duplicate check by a unique key,
//! the branch's build history and each digest's membership under advisory locks, then the
//! event, its deliveries and a `NOTIFY` per destination, all or nothing.
//!
//! Statements that do not depend on each other's answers are sent together (the driver
//! pipelines them on the connection), so an event costs few round trips.

use super::{CHANNEL, PgStore, lock_key};
use crate::store::{Accepted, NewDelivery, NewEvent, Planner, StoreError};
use crate::transition::{LastBuild, Transition, next};
use deadpool_postgres::Transaction;
use futures_util::future::try_join_all;
use std::collections::BTreeSet;

/// Claims `hash` for a new event unless a copy was received at or after `since`; returns the
/// new event's id, or the earlier copy's id as `Err`.
async fn claim(
    tx: &Transaction<'_>,
    hash: &[u8],
    received_at: i64,
    since: Option<i64>,
) -> Result<Result<i64, i64>, StoreError> {
    let Some(since) = since else {
        let id = tx
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('events', 'id'))",
                &[],
            )
            .await?
            .get(0);
        return Ok(Ok(id));
    };
    // A concurrent transaction claiming the same hash makes this wait for its outcome; then
    // the key is either ours or names the copy that arrived first.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO dedupe_keys (body_hash, event_id, received_at) \
             VALUES ($1, nextval(pg_get_serial_sequence('events', 'id')), $2) \
             ON CONFLICT (body_hash) DO UPDATE SET event_id = EXCLUDED.event_id, received_at = EXCLUDED.received_at \
             WHERE dedupe_keys.received_at < $3 RETURNING event_id",
        )
        .await?;
    if let Some(row) = tx.query_opt(&stmt, &[&hash, &received_at, &since]).await? {
        return Ok(Ok(row.get(0)));
    }
    let first: i64 = tx
        .query_one(
            "SELECT event_id FROM dedupe_keys WHERE body_hash = $1",
            &[&hash],
        )
        .await?
        .get(0);
    Ok(Err(first))
}

/// Works out the transition of a counting build and records it as its branch's last build,
/// with the branch locked so concurrent builds of it are taken one after the other.
async fn transition(
    tx: &Transaction<'_>,
    event: &NewEvent,
) -> Result<Option<Transition>, StoreError> {
    let Some(build) = &event.build else {
        return Ok(None);
    };
    let key = lock_key("branch", &[&build.pipeline, &build.branch]);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
    let lock = tx.execute("SELECT pg_advisory_xact_lock($1)", &params);
    let select = tx.prepare_cached(
        "SELECT number, failed, consecutive_failures, finished_at FROM build_states WHERE pipeline = $1 AND branch = $2",
    );
    let (_, select) = futures_util::try_join!(lock, select)?;
    let last = tx
        .query_opt(&select, &[&build.pipeline, &build.branch])
        .await?
        .map(|r| LastBuild {
            number: r.get::<_, i64>(0) as u64,
            failed: r.get(1),
            consecutive_failures: r.get::<_, i64>(2) as u32,
            finished_at: r.get(3),
        });
    let Some((transition, recorded)) = next(last.as_ref(), build) else {
        return Ok(None);
    };
    let upsert = tx
        .prepare_cached(
            "INSERT INTO build_states (pipeline, branch, number, failed, consecutive_failures, finished_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (pipeline, branch) DO UPDATE SET number = $3, failed = $4, consecutive_failures = $5, \
             finished_at = $6, updated_at = $7",
        )
        .await?;
    tx.execute(
        &upsert,
        &[
            &build.pipeline,
            &build.branch,
            &(recorded.number as i64),
            &recorded.failed,
            &i64::from(recorded.consecutive_failures),
            &recorded.finished_at,
            &event.received_at,
        ],
    )
    .await?;
    Ok(Some(transition))
}

/// Adds the event to its group's open digest, or opens one; the group is locked so two
/// replicas never open two digests for it, and the digest's row is locked so a worker closing
/// it either sees this event or makes this one open the next digest.
async fn join_group(
    tx: &Transaction<'_>,
    event_id: i64,
    received: i64,
    d: &NewDelivery,
    key: &str,
    window_ms: i64,
) -> Result<i64, StoreError> {
    let lock = lock_key("group", &[&d.destination, &d.route, key]);
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    let open = tx
        .prepare_cached(
            "SELECT id FROM deliveries WHERE destination = $1 AND route = $2 AND group_key = $3 \
             AND state = 'pending' AND attempts = 0 AND group_closes_at > kb_now_ms() \
             ORDER BY id DESC LIMIT 1 FOR UPDATE",
        )
        .await?;
    let open: Option<i64> = tx
        .query_opt(&open, &[&d.destination, &d.route, &key])
        .await?
        .map(|r| r.get(0));
    let id = match open {
        Some(id) => {
            // A held event holds the whole digest (and keeps it open) until it may be sent.
            if let Some(t) = d.not_before {
                tx.execute(
                    "UPDATE deliveries SET next_attempt_at = GREATEST(next_attempt_at, $2), \
                     age_from = GREATEST(age_from, $2), group_closes_at = GREATEST(group_closes_at, $2) WHERE id = $1",
                    &[&id, &t],
                )
                .await?;
            }
            id
        }
        None => {
            // A digest opened while muted stays open until the mute ends.
            let closes = d
                .not_before
                .map_or(received + window_ms, |t| t.max(received + window_ms));
            let insert = tx
                .prepare_cached(
                    "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
                     next_attempt_at, updated_at, group_key, group_closes_at, thread_key) \
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6, $5, $7, $6, $8) RETURNING id",
                )
                .await?;
            tx.query_one(
                &insert,
                &[
                    &event_id,
                    &d.route,
                    &d.destination,
                    &d.template,
                    &received,
                    &closes,
                    &key,
                    &d.thread_key,
                ],
            )
            .await?
            .get(0)
        }
    };
    tx.execute(
        "INSERT INTO delivery_events (delivery_id, event_id) VALUES ($1, $2)",
        &[&id, &event_id],
    )
    .await?;
    Ok(id)
}

/// Stores `event` (whose body has the SHA-256 `hash`) and what `plan` decides for it.
pub(super) async fn accept(
    store: &PgStore,
    event: NewEvent,
    hash: Vec<u8>,
    plan: Planner,
    dedupe_since: Option<i64>,
) -> Result<Accepted, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let event_id = match claim(&tx, &hash, event.received_at, dedupe_since).await? {
        Ok(id) => id,
        Err(first) => {
            tx.rollback().await?;
            return Ok(Accepted::Duplicate { event_id: first });
        }
    };
    let transition = transition(&tx, &event).await?;
    let deliveries = plan(transition.as_ref());
    let transition_json = transition
        .as_ref()
        .map(|t| serde_json::to_string(t).expect("a transition serialises"));
    let received = event.received_at;
    // The event row first: the deliveries refer to it.
    let insert_event = tx
        .prepare_cached(
            "INSERT INTO events (id, name, body, body_hash, received_at, transition) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    tx.execute(
        &insert_event,
        &[
            &event_id,
            &event.name,
            &&event.body[..],
            &hash,
            &received,
            &transition_json,
        ],
    )
    .await?;
    let insert_single = tx
        .prepare_cached(
            "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
             next_attempt_at, updated_at, thread_key) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6, $5, $7) RETURNING id",
        )
        .await?;
    let mut delivery_ids = Vec::with_capacity(deliveries.len());
    // Single messages go out together (in order, so their ids follow the plan); digests need
    // their group's lock first, one at a time.
    let mut i = 0;
    while i < deliveries.len() {
        let run: Vec<&NewDelivery> = deliveries[i..]
            .iter()
            .take_while(|d| d.group.is_none())
            .collect();
        if run.is_empty() {
            let d = &deliveries[i];
            let (key, window_ms) = d.group.as_ref().expect("a digest delivery");
            delivery_ids.push(join_group(&tx, event_id, received, d, key, *window_ms).await?);
            i += 1;
            continue;
        }
        i += run.len();
        let tx = &tx;
        let inserts = run.iter().map(|d| {
            // max_age counts from when a message may first be sent (after a mute hold).
            let due = d.not_before.map_or(received, |t| t.max(received));
            let stmt = &insert_single;
            async move {
                tx.query_one(
                    stmt,
                    &[
                        &event_id,
                        &d.route,
                        &d.destination,
                        &d.template,
                        &received,
                        &due,
                        &d.thread_key,
                    ],
                )
                .await
                .map(|row| row.get::<_, i64>(0))
            }
        });
        delivery_ids.extend(try_join_all(inserts).await?);
    }
    // Heard by the replica holding each destination once this commits.
    let destinations: BTreeSet<&str> = deliveries.iter().map(|d| d.destination.as_str()).collect();
    let notify = destinations.iter().map(|d| {
        let tx = &tx;
        async move { tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, d]).await }
    });
    try_join_all(notify).await?;
    tx.commit().await?;
    Ok(Accepted::New {
        event_id,
        delivery_ids,
        transition,
    })
}
