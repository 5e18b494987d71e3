//! The queue, message-id and operator parts of the store, as PostgreSQL statements.

use super::{CHANNEL, PgStore, timed};
use crate::store::{
    Accepted, Attempt, Delivery, DeliveryQueue, DeliveryState, Intake, MessageIds, MessageRef,
    NewEvent, Operations, Planner, QueueStat, Resolution, RetrySelector, StoreError, StoredEvent,
};
use async_trait::async_trait;
use bytes::Bytes;
use sha2::Digest as _;
use tokio_postgres::Row;

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.name, d.route, d.destination, d.template, d.state, d.attempts, \
     d.created_at, d.age_from, d.next_attempt_at, d.updated_at, d.last_status, d.last_error, d.body, \
     d.group_key IS NOT NULL, d.thread_key";

const EVENT_COLUMNS: &str = "e.id, e.name, e.body, e.received_at, e.transition";

fn stored_event(row: &Row) -> StoredEvent {
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

fn delivery(row: &Row) -> Delivery {
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
impl Intake for PgStore {
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        let hash = sha2::Sha256::digest(&event.body).to_vec();
        timed(super::intake::accept(self, event, hash, plan, dedupe_since)).await
    }
}

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

    async fn finish_attempt(
        &self,
        delivery_id: i64,
        picked: i64,
        attempt: Attempt,
        body: Option<String>,
        resolution: Resolution,
    ) -> Result<bool, StoreError> {
        let (state, next) = match resolution {
            Resolution::Sent => ("sent", attempt.at),
            Resolution::RetryAt(at) => ("pending", at),
            Resolution::Dead => ("dead", attempt.at),
        };
        let status = attempt.status.map(i32::from);
        timed(async {
            let client = self.bookkeeping().await?;
            // One statement: the attempt and its consequence are kept together or not at all.
            let stmt = client
                .prepare_cached(
                    "WITH attempt AS (INSERT INTO attempts (delivery_id, at, status, outcome, reason, latency_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)) \
                     UPDATE deliveries SET state = $7, attempts = attempts + 1, next_attempt_at = $8, \
                     updated_at = GREATEST($2, updated_at + 1), \
                     last_status = $3, last_error = $5, body = COALESCE($9, body) \
                     WHERE id = $1 AND state = 'pending' AND updated_at = $10",
                )
                .await?;
            let changed = client
                .execute(
                    &stmt,
                    &[
                        &delivery_id,
                        &attempt.at,
                        &status,
                        &attempt.outcome,
                        &attempt.reason,
                        &(attempt.latency_ms as i64),
                        &state,
                        &next,
                        &body,
                        &picked,
                    ],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }
}

#[async_trait]
impl MessageIds for PgStore {
    async fn message_ref(
        &self,
        destination: &str,
        key: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT channel, ts, rank, event_id FROM message_refs WHERE destination = $1 AND key = $2",
                )
                .await?;
            Ok(client
                .query_opt(&stmt, &[&destination, &key])
                .await?
                .map(|r| MessageRef {
                    channel: r.get(0),
                    ts: r.get(1),
                    as_of: (r.get(2), r.get(3)),
                }))
        })
        .await
    }

    async fn set_message_ref(
        &self,
        destination: &str,
        key: &str,
        message: MessageRef,
    ) -> Result<(), StoreError> {
        let now = crate::store::now_ms();
        timed(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO message_refs (destination, key, channel, ts, rank, event_id, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (destination, key) DO UPDATE SET channel = $3, ts = $4, rank = $5, event_id = $6, updated_at = $7 \
                     WHERE (EXCLUDED.rank, EXCLUDED.event_id) >= (message_refs.rank, message_refs.event_id)",
                )
                .await?;
            client
                .execute(
                    &stmt,
                    &[
                        &destination,
                        &key,
                        &message.channel,
                        &message.ts,
                        &message.as_of.0,
                        &message.as_of.1,
                        &now,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Operations for PgStore {
    async fn retry(&self, selector: RetrySelector, now: i64) -> Result<usize, StoreError> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // `updated_at` always grows: an attempt in flight must see that its delivery changed.
            let set = "SET state = 'pending', attempts = 0, next_attempt_at = $1, age_from = $1, \
                       updated_at = GREATEST($1, updated_at + 1), body = NULL";
            let rows = match selector {
                RetrySelector::Id(id) => {
                    tx.query(
                        &format!(
                            "UPDATE deliveries {set} WHERE id = $2 AND state IN ('dead', 'pending') RETURNING destination"
                        ),
                        &[&now, &id],
                    )
                    .await?
                }
                RetrySelector::AllDead => {
                    tx.query(
                        &format!("UPDATE deliveries {set} WHERE state = 'dead' RETURNING destination"),
                        &[&now],
                    )
                    .await?
                }
            };
            // The holders start on them at once, wherever they run.
            let mut destinations: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            destinations.sort();
            destinations.dedup();
            for d in &destinations {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, d]).await?;
            }
            tx.commit().await?;
            Ok(rows.len())
        })
        .await
    }

    async fn list(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                         WHERE ($1::text IS NULL OR d.state = $1) ORDER BY d.id DESC LIMIT $2"
                    ),
                    &[&state.map(DeliveryState::as_str), &(limit as i64)],
                )
                .await?;
            Ok(rows.iter().map(delivery).collect())
        })
        .await
    }

    async fn show(&self, id: i64) -> Result<(Delivery, Vec<Attempt>), StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let d = client
                .query_opt(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1"
                    ),
                    &[&id],
                )
                .await?
                .map(|r| delivery(&r))
                .ok_or(StoreError::NotFound(id))?;
            let attempts = client
                .query(
                    "SELECT at, status, outcome, reason, latency_ms FROM attempts WHERE delivery_id = $1 ORDER BY id",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| Attempt {
                    at: r.get(0),
                    status: r.get::<_, Option<i32>>(1).and_then(|s| u16::try_from(s).ok()),
                    outcome: r.get(2),
                    reason: r.get(3),
                    latency_ms: r.get::<_, i64>(4).max(0) as u64,
                })
                .collect();
            Ok((d, attempts))
        })
        .await
    }

    async fn prune(&self, before: i64, limit: usize) -> Result<usize, StoreError> {
        timed(async {
            let mut client = self.bookkeeping().await?;
            let tx = client.transaction().await?;
            // One replica prunes at a time; the others find it busy and skip this round.
            let mine: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&super::lock_key("prune", &[])])
                .await?
                .get(0);
            if !mine {
                return Ok(0);
            }
            let limit = limit as i64;
            let chosen: Vec<i64> = tx
                .query(
                    "SELECT id FROM deliveries WHERE state = 'sent' AND updated_at < $1 LIMIT $2",
                    &[&before, &limit],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.execute("DELETE FROM attempts WHERE delivery_id = ANY($1)", &[&chosen])
                .await?;
            tx.execute("DELETE FROM delivery_events WHERE delivery_id = ANY($1)", &[&chosen])
                .await?;
            let deliveries = tx
                .execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&chosen])
                .await?;
            let events = tx
                .execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ev WHERE received_at < $1 \
                     AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = ev.id) \
                     AND NOT EXISTS (SELECT 1 FROM delivery_events de WHERE de.event_id = ev.id) LIMIT $2)",
                    &[&before, &limit],
                )
                .await?;
            let keys = tx
                .execute(
                    "DELETE FROM dedupe_keys WHERE body_hash IN (SELECT body_hash FROM dedupe_keys WHERE received_at < $1 LIMIT $2)",
                    &[&before, &limit],
                )
                .await?;
            let refs = tx
                .execute(
                    "DELETE FROM message_refs WHERE (destination, key) IN \
                     (SELECT destination, key FROM message_refs WHERE updated_at < $1 LIMIT $2)",
                    &[&before, &limit],
                )
                .await?;
            tx.execute(
                "DELETE FROM replicas WHERE seen_at < now() - interval '1 day'",
                &[],
            )
            .await?;
            tx.commit().await?;
            Ok(deliveries.max(events).max(keys).max(refs) as usize)
        })
        .await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        let now = crate::store::now_ms();
        timed(async {
            let client = self.bookkeeping().await?;
            let rows = client
                .query(
                    "SELECT destination, COUNT(*) FILTER (WHERE state = 'pending'), \
                     MIN(age_from) FILTER (WHERE state = 'pending' AND age_from <= $1), \
                     COUNT(*) FILTER (WHERE state = 'dead') \
                     FROM deliveries WHERE state IN ('pending', 'dead') GROUP BY destination ORDER BY destination",
                    &[&now],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| QueueStat {
                    destination: r.get(0),
                    pending: r.get::<_, i64>(1) as u64,
                    oldest_due_at: r.get(2),
                    dead: r.get::<_, i64>(3) as u64,
                })
                .collect())
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let now = crate::store::now_ms();
        // As much as a typical event with its deliveries, and not compressible, so a database
        // that cannot take an event cannot take the probe either.
        let filler: Vec<u8> = (0..PROBE_BYTES).map(|_| fastrand::u8(..)).collect();
        timed(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO probe (replica, at, filler) VALUES ($1, $2, $3) \
                     ON CONFLICT (replica) DO UPDATE SET at = $2, filler = $3",
                    &[&&*self.replica, &now, &filler],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

/// The probe's size: a little more than a typical webhook body (3 to 4 KB) with its rows.
const PROBE_BYTES: usize = 8 * 1024;
