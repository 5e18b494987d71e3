//! The delivery queue on PostgreSQL: what is due, the events to render, digests closed, and
//! attempts recorded; and how its rows read back.

use super::{PgStore, timed};
use crate::store::{Delivery, DeliveryQueue, DeliveryState, Finished, StoreError, StoredEvent};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use tokio_postgres::Row;

pub(super) const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.name, d.route, d.destination, d.template, d.state, d.attempts, \
     d.created_at, d.age_from, d.next_attempt_at, d.updated_at, d.last_status, d.last_error, d.body, \
     d.group_key IS NOT NULL, d.thread_key";

pub(super) const EVENT_COLUMNS: &str = "e.id, e.name, e.body, e.received_at, e.transition";

pub(super) fn stored_event(row: &Row) -> StoredEvent {
    let transition: Option<String> = row.get(4);
    StoredEvent {
        id: row.get(0),
        name: row.get(1),
        body: Bytes::from(row.get::<_, Vec<u8>>(2)),
        received_at: row.get(3),
        // Written by this program; an unreadable one only loses the template fields.
        transition: transition.and_then(|t| serde_json::from_str(&t).ok()),
    }
}

pub(super) fn delivery(row: &Row) -> Delivery {
    let state: String = row.get(6);
    Delivery {
        id: row.get(0),
        event_id: row.get(1),
        event_name: row.get(2),
        route: row.get(3),
        destination: row.get(4),
        template: row.get(5),
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
        attempts: row.get::<_, i32>(7).max(0) as u32,
        created_at: row.get(8),
        age_from: row.get(9),
        next_attempt_at: row.get(10),
        updated_at: row.get(11),
        last_status: row
            .get::<_, Option<i32>>(12)
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.get(13),
        body: row.get(14),
        grouped: row.get(15),
        thread_key: row.get(16),
        event: None,
    }
}

/// The queue query: due messages of one destination, oldest first, with the event itself
/// for messages that still need rendering from it.
static DUE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLUMNS}, \
         CASE WHEN d.body IS NULL AND d.group_key IS NULL THEN e.body END, e.received_at, e.transition \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.destination = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2 \
         AND d.id <> ALL($4) \
         ORDER BY d.next_attempt_at, d.id LIMIT $3"
    )
});

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn due(
        &self,
        destination: &str,
        now: i64,
        limit: usize,
        skip: Vec<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client.prepare_cached(&DUE_SQL).await?;
            let rows = client
                .query(&stmt, &[&destination, &now, &(limit as i64), &skip])
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let mut d = delivery(row);
                    if let Some(body) = row.get::<_, Option<Vec<u8>>>(17) {
                        let transition: Option<String> = row.get(19);
                        d.event = Some(StoredEvent {
                            id: d.event_id,
                            name: d.event_name.clone(),
                            body: Bytes::from(body),
                            received_at: row.get(18),
                            transition: transition.and_then(|t| serde_json::from_str(&t).ok()),
                        });
                    }
                    d
                })
                .collect())
        })
        .await
    }

    async fn next_due_after(&self, destination: &str, now: i64) -> Result<Option<i64>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT MIN(next_attempt_at) FROM deliveries \
                     WHERE destination = $1 AND state = 'pending' AND next_attempt_at > $2",
                )
                .await?;
            Ok(client.query_one(&stmt, &[&destination, &now]).await?.get(0))
        })
        .await
    }

    async fn event(&self, event_id: i64) -> Result<StoredEvent, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1"
                ))
                .await?;
            client
                .query_opt(&stmt, &[&event_id])
                .await?
                .map(|r| stored_event(&r))
                .ok_or(StoreError::NotFound(event_id))
        })
        .await
    }

    async fn close_group(&self, delivery_id: i64, now: i64) -> Result<bool, StoreError> {
        // Closed by the database's clock, as joining is judged: the row lock orders the two.
        // Whether it is due is judged by the clock that set its time, the replicas'.
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(
                    "UPDATE deliveries SET group_closes_at = LEAST(group_closes_at, kb_now_ms()) \
                     WHERE id = $1 AND next_attempt_at <= $2",
                )
                .await?;
            Ok(client.execute(&stmt, &[&delivery_id, &now]).await? == 1)
        })
        .await
    }

    async fn group_events(&self, delivery_id: i64) -> Result<Vec<StoredEvent>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM delivery_events de JOIN events e ON e.id = de.event_id \
                         WHERE de.delivery_id = $1 ORDER BY e.id"
                    ),
                    &[&delivery_id],
                )
                .await?;
            Ok(rows.iter().map(stored_event).collect())
        })
        .await
    }

    async fn finish_attempts(&self, records: Vec<Finished>) -> Result<Vec<bool>, StoreError> {
        timed(async {
            let mut client = self.bookkeeping().await?;
            let tx = client.transaction().await?;
            // In rounds of distinct deliveries, one statement each, in order: a second attempt
            // of one delivery (rare) is judged by the version the first left.
            let mut seen: HashMap<i64, usize> = HashMap::new();
            let rounds: Vec<usize> = records
                .iter()
                .map(|r| {
                    let n = seen.entry(r.delivery_id).or_default();
                    *n += 1;
                    *n - 1
                })
                .collect();
            let mut changed = vec![false; records.len()];
            for round in 0..seen.values().copied().max().unwrap_or(0) {
                let these: Vec<usize> =
                    (0..records.len()).filter(|&i| rounds[i] == round).collect();
                let records: Vec<&Finished> = these.iter().map(|&i| &records[i]).collect();
                for (i, c) in these.into_iter().zip(finish_together(&tx, &records).await?) {
                    changed[i] = c;
                }
            }
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }
}

/// Records attempts of distinct deliveries in one statement: each attempt, and its
/// consequence for a delivery still at the version it was picked at; returns, in the records'
/// order, whether each delivery changed.
async fn finish_together(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[&Finished],
) -> Result<Vec<bool>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "WITH r AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::text[], \
             $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::bigint[]) \
             AS r(id, at, status, outcome, reason, latency, state, next, body, picked)), \
             attempt AS (INSERT INTO attempts (delivery_id, at, status, outcome, reason, latency_ms) \
             SELECT id, at, status, outcome, reason, latency FROM r) \
             UPDATE deliveries d SET state = r.state, attempts = d.attempts + 1, next_attempt_at = r.next, \
             updated_at = GREATEST(r.at, d.updated_at + 1), last_status = r.status, last_error = r.reason, \
             body = COALESCE(r.body, d.body) \
             FROM r WHERE d.id = r.id AND d.state = 'pending' AND d.updated_at = r.picked RETURNING d.id",
        )
        .await?;
    let ids: Vec<i64> = records.iter().map(|r| r.delivery_id).collect();
    let at: Vec<i64> = records.iter().map(|r| r.attempt.at).collect();
    let status: Vec<Option<i32>> = records
        .iter()
        .map(|r| r.attempt.status.map(i32::from))
        .collect();
    let outcome: Vec<&str> = records.iter().map(|r| r.attempt.outcome.as_str()).collect();
    let reason: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.attempt.reason.as_deref())
        .collect();
    let latency: Vec<i64> = records
        .iter()
        .map(|r| r.attempt.latency_ms as i64)
        .collect();
    let (state, next): (Vec<&str>, Vec<i64>) = records
        .iter()
        .map(|r| {
            let (state, next) = r.resolution.state_and_next(r.attempt.at);
            (state.as_str(), next)
        })
        .unzip();
    let body: Vec<Option<&str>> = records.iter().map(|r| r.body.as_deref()).collect();
    let picked: Vec<i64> = records.iter().map(|r| r.picked).collect();
    let changed: std::collections::HashSet<i64> = tx
        .query(
            &stmt,
            &[
                &ids, &at, &status, &outcome, &reason, &latency, &state, &next, &body, &picked,
            ],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids.iter().map(|id| changed.contains(id)).collect())
}
