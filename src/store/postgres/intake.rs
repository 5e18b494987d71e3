//! Taking in one event on PostgreSQL, in one transaction: the duplicate check by a unique key,
//! the branch's build history and each digest's membership under advisory locks, then the
//! event, its deliveries and a `NOTIFY` per destination, all or nothing.
//!
//! Statements that do not depend on each other's answers are sent together (the driver
//! pipelines them on the connection), so an event costs few round trips.

use super::{CHANNEL, PgStore, lock_key, timed};
use crate::store::{Accepted, Intake, NewDelivery, NewEvent, Planner, StoreError};
use crate::transition::{LastBuild, Transition, next};
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use futures_util::future::try_join_all;
use sha2::Digest as _;
use std::collections::BTreeSet;
use tokio_postgres::types::ToSql;

/// Claims `hash` for a new event unless a copy was received at or after `since`; returns the
/// new event's id, or the earlier copy's id as `Err`.
async fn claim(
    tx: &Transaction<'_>,
    hash: &[u8],
    received_at: i64,
    since: Option<i64>,
) -> Result<Result<i64, i64>, StoreError> {
    let Some(since) = since else {
        let next = tx
            .prepare_cached("SELECT nextval(pg_get_serial_sequence('events', 'id'))")
            .await?;
        let id = tx.query_one(&next, &[]).await?.get(0);
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
    let earlier = tx
        .prepare_cached("SELECT event_id FROM dedupe_keys WHERE body_hash = $1")
        .await?;
    let first: i64 = tx.query_one(&earlier, &[&hash]).await?.get(0);
    Ok(Err(first))
}

/// Works out the transition of a counting build, with its branch locked so concurrent builds
/// of it are taken one after the other; returns it with what to record as the branch's last
/// build (the caller writes that with the event, in one round trip).
async fn transition(
    tx: &Transaction<'_>,
    event: &NewEvent,
) -> Result<Option<(Transition, LastBuild)>, StoreError> {
    let Some(build) = &event.build else {
        return Ok(None);
    };
    let key = lock_key("branch", &[&build.pipeline, &build.branch]);
    let select = tx
        .prepare_cached(
            "SELECT number, failed, consecutive_failures, finished_at FROM build_states WHERE pipeline = $1 AND branch = $2",
        )
        .await?;
    // Sent together, both prepared already so they run in the order sent: the lock is
    // granted before the read takes its snapshot, in one round trip. (A statement given as
    // text is prepared first, which would let the read overtake the lock.)
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    let lock_params: [&(dyn ToSql + Sync); 1] = [&key];
    let read_params: [&(dyn ToSql + Sync); 2] = [&build.pipeline, &build.branch];
    let (_, last) = futures_util::try_join!(
        tx.execute(&lock, &lock_params),
        tx.query_opt(&select, &read_params)
    )?;
    let last = last.map(|r| LastBuild {
        number: r.get::<_, i64>(0) as u64,
        failed: r.get(1),
        consecutive_failures: r.get::<_, i64>(2) as u32,
        finished_at: r.get(3),
    });
    Ok(next(last.as_ref(), build))
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
    let key_lock = lock_key("group", &[&d.destination, &d.route, key]);
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    let open = tx
        .prepare_cached(
            "SELECT id FROM deliveries WHERE destination = $1 AND route = $2 AND group_key = $3 \
             AND state = 'pending' AND attempts = 0 AND group_closes_at > kb_now_ms() \
             ORDER BY id DESC LIMIT 1 FOR UPDATE",
        )
        .await?;
    // In one round trip, in this order (both prepared): the group's lock, then the look.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&key_lock];
    let open_params: [&(dyn ToSql + Sync); 3] = [&d.destination, &d.route, &key];
    let (_, open) = futures_util::try_join!(
        tx.execute(&lock, &lock_params),
        tx.query_opt(&open, &open_params)
    )?;
    let open: Option<i64> = open.map(|r| r.get(0));
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
    let link = tx
        .prepare_cached("INSERT INTO delivery_events (delivery_id, event_id) VALUES ($1, $2)")
        .await?;
    tx.execute(&link, &[&id, &event_id]).await?;
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
    let counted = transition(&tx, &event).await?;
    let transition = counted.as_ref().map(|(t, _)| t.clone());
    let deliveries = plan(transition.as_ref());
    let transition_json = transition
        .as_ref()
        .map(|t| serde_json::to_string(t).expect("a transition serialises"));
    let received = event.received_at;
    let upsert = tx
        .prepare_cached(
            "INSERT INTO build_states (pipeline, branch, number, failed, consecutive_failures, finished_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (pipeline, branch) DO UPDATE SET number = $3, failed = $4, consecutive_failures = $5, \
             finished_at = $6, updated_at = $7",
        )
        .await?;
    let insert_event = tx
        .prepare_cached(
            "INSERT INTO events (id, name, body, body_hash, received_at, transition) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let insert_single = tx
        .prepare_cached(
            "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
             next_attempt_at, updated_at, thread_key) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6, $5, $7) RETURNING id",
        )
        .await?;
    // Everything that needs no answer first goes out in one round trip, in order: the
    // branch's new last build, the event, its single messages (their ids follow the plan),
    // and a NOTIFY per destination, heard by its sender once this commits.
    let txn = tx;
    let tx = &txn;
    let history = async {
        let (Some((_, recorded)), Some(build)) = (&counted, &event.build) else {
            return Ok(0);
        };
        tx.execute(
            &upsert,
            &[
                &build.pipeline,
                &build.branch,
                &(recorded.number as i64),
                &recorded.failed,
                &i64::from(recorded.consecutive_failures),
                &recorded.finished_at,
                &received,
            ],
        )
        .await
    };
    let body = &event.body[..];
    let event_params: [&(dyn ToSql + Sync); 6] = [
        &event_id,
        &event.name,
        &body,
        &hash,
        &received,
        &transition_json,
    ];
    let stored = tx.execute(&insert_event, &event_params);
    let singles = deliveries.iter().filter(|d| d.group.is_none()).map(|d| {
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
    let notify_stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    let destinations: BTreeSet<&str> = deliveries.iter().map(|d| d.destination.as_str()).collect();
    let notify = destinations.iter().map(|d| {
        let stmt = &notify_stmt;
        async move { tx.execute(stmt, &[&CHANNEL, d]).await }
    });
    let (_, _, single_ids, _) =
        futures_util::try_join!(history, stored, try_join_all(singles), try_join_all(notify))?;
    // Digests need their group's lock, one at a time, once the event row is there.
    let mut single_ids = single_ids.into_iter();
    let mut delivery_ids = Vec::with_capacity(deliveries.len());
    for d in &deliveries {
        match &d.group {
            None => delivery_ids.push(single_ids.next().expect("one id per single message")),
            Some(group) => delivery_ids
                .push(join_group(tx, event_id, received, d, &group.key, group.window_ms).await?),
        }
    }
    txn.commit().await?;
    Ok(Accepted::New {
        event_id,
        delivery_ids,
        transition,
    })
}

#[async_trait]
impl Intake for PgStore {
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        let hash = sha2::Sha256::digest(&event.body).to_vec();
        timed(accept(self, event, hash, plan, dedupe_since)).await
    }
}
