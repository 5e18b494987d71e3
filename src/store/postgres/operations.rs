//! What operators and the service's upkeep do on PostgreSQL: retries, listings, pruning,
//! queue depths and the readiness probe.

use super::queue::{DELIVERY_COLUMNS, EVENT_COLUMNS, delivery, stored_event};
use super::{CHANNEL, PgStore, timed};
use crate::store::{
    Attempt, Delivery, DeliveryState, Operations, QueueStat, RetrySelector, StoreError, StoredEvent,
};
use async_trait::async_trait;

#[async_trait]
impl Operations for PgStore {
    async fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e ORDER BY e.id DESC LIMIT $1"
                ))
                .await?;
            let rows = client.query(&stmt, &[&(limit as i64)]).await?;
            Ok(rows.iter().map(stored_event).collect())
        })
        .await
    }

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
        let now = crate::store::now_ms();
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
            // Claims go by their button's expiry, not by the retention: until then a claim
            // must stay (however short the retention), and after it the button can no longer
            // be pressed, so nothing needs to remember that it was.
            let claims = tx
                .execute(
                    "DELETE FROM press_claims WHERE nonce IN \
                     (SELECT nonce FROM press_claims WHERE expires_at < $1 LIMIT $2)",
                    &[&now, &limit],
                )
                .await?;
            let presses = tx
                .execute(
                    "DELETE FROM presses WHERE id IN (SELECT id FROM presses WHERE at < $1 LIMIT $2)",
                    &[&before, &limit],
                )
                .await?;
            tx.execute(
                "DELETE FROM replicas WHERE seen_at < now() - interval '1 day'",
                &[],
            )
            .await?;
            tx.commit().await?;
            Ok(deliveries.max(events).max(keys).max(refs).max(claims).max(presses) as usize)
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
