//! The [`Store`] operations, as SQL.

use super::SqliteStore;
use crate::store::{
    Accepted, Attempt, Carry, Delivery, DeliveryQueue, DeliveryState, Finished, Intake, Leases,
    MessageIds, MessageRef, NewEvent, Operations, Planner, Progress, QueueStat, RetrySelector,
    Ring, StoreError, StoredEvent, Taken,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, Row, params};
use sha2::Digest as _;

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.name, d.route, d.destination, d.template, d.state, d.attempts, \
     d.created_at, d.age_from, d.next_attempt_at, d.updated_at, d.last_status, d.last_error, d.body, \
     d.group_key IS NOT NULL, d.thread_key";

/// The random bytes the readiness probe rewrites. A commit needs room in the log for every
/// page it changed, and on a full disk the log has only the room its file already has.
/// Storing one webhook event (its row and two indexes, a delivery per destination and their
/// three) changed 7 to 15 pages in measurements: bodies of Buildkite's sizes (0.7 to 5.3 KiB),
/// one to four destinations, stores of up to 3,000 events. Rewriting one tiny row changed one
/// page, so a full disk that refused events still took the probe. This blob is rewritten in
/// place as 16 overflow pages and the row's, 17, so when the log has no room for the probe it
/// has none for such an event. Random, so no file system keeps it in less room.
const PROBE_BYTES: i64 = 64 << 10;

const EVENT_COLUMNS: &str =
    "events.id, events.name, events.body, events.received_at, events.transition";

fn stored_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let transition: Option<String> = row.get(4)?;
    Ok(StoredEvent {
        id: row.get(0)?,
        name: row.get(1)?,
        body: Bytes::from(row.get::<_, Vec<u8>>(2)?),
        received_at: row.get(3)?,
        // Written by this program; an unreadable one only loses the template fields.
        transition: transition.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

fn delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = row.get(6)?;
    Ok(Delivery {
        id: row.get(0)?,
        event_id: row.get(1)?,
        event_name: row.get(2)?,
        route: row.get(3)?,
        destination: row.get(4)?,
        template: row.get(5)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Pending),
        attempts: row.get(7)?,
        created_at: row.get(8)?,
        age_from: row.get(9)?,
        next_attempt_at: row.get(10)?,
        updated_at: row.get(11)?,
        last_status: row.get(12)?,
        last_error: row.get(13)?,
        body: row.get(14)?,
        grouped: row.get(15)?,
        thread_key: row.get(16)?,
        event: None,
    })
}

/// The queue query: due messages of one destination, oldest first, with the event itself
/// for messages that still need rendering from it. Built once: every worker turn runs it.
pub(super) static DUE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLUMNS}, \
         CASE WHEN d.body IS NULL AND d.group_key IS NULL THEN e.body END, e.received_at, e.transition \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.destination = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2 \
         AND d.id NOT IN (SELECT value FROM json_each(?4)) \
         ORDER BY d.next_attempt_at, d.id LIMIT ?3"
    )
});

#[async_trait]
impl Intake for SqliteStore {
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        // Hashed here, on the caller's thread, not on the one writer every webhook waits for.
        let hash = sha2::Sha256::digest(&event.body).to_vec();
        self.write(move |conn| super::intake::accept(conn, event, hash, plan, dedupe_since))
            .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn due(
        &self,
        destination: &str,
        now: i64,
        limit: usize,
        skip: Vec<i64>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let destination = destination.to_string();
        // Left out in the query, so no body is read only to be thrown away.
        let skip = serde_json::to_string(&skip).expect("ids serialise");
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&DUE_SQL)?;
            let rows = stmt.query_map(params![destination, now, limit as i64, skip], |row| {
                let mut d = delivery(row)?;
                let body: Option<Vec<u8>> = row.get(17)?;
                if let Some(body) = body {
                    let transition: Option<String> = row.get(19)?;
                    d.event = Some(StoredEvent {
                        id: d.event_id,
                        name: d.event_name.clone(),
                        body: Bytes::from(body),
                        received_at: row.get(18)?,
                        transition: transition.and_then(|t| serde_json::from_str(&t).ok()),
                    });
                }
                Ok(d)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn next_due_after(&self, destination: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let destination = destination.to_string();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_attempt_at) FROM deliveries \
                 WHERE destination = ?1 AND state = 'pending' AND next_attempt_at > ?2",
                params![destination, now],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn event(&self, event_id: i64) -> Result<StoredEvent, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
                .query_row(params![event_id], stored_event)
                .optional()?
                .ok_or(StoreError::NotFound(event_id))
        })
        .await
    }

    async fn close_group(&self, delivery_id: i64, now: i64) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let closed = conn
                .prepare_cached(
                    "UPDATE deliveries SET group_closes_at = MIN(group_closes_at, ?2) \
                     WHERE id = ?1 AND next_attempt_at <= ?2",
                )?
                .execute(params![delivery_id, now])?;
            Ok(closed == 1)
        })
        .await
    }

    async fn group_events(&self, delivery_id: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM delivery_events de JOIN events ON events.id = de.event_id \
                 WHERE de.delivery_id = ?1 ORDER BY events.id"
            ))?;
            let rows = stmt.query_map(params![delivery_id], stored_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn finish_attempts(&self, records: Vec<Finished>) -> Result<Vec<bool>, StoreError> {
        self.write(move |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO attempts (delivery_id, at, status, outcome, reason, latency_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut update = conn.prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3, \
                 updated_at = MAX(?4, updated_at + 1), last_status = ?5, last_error = ?6, body = COALESCE(?7, body) \
                 WHERE id = ?1 AND state = 'pending' AND updated_at = ?8",
            )?;
            let mut applied = Vec::with_capacity(records.len());
            for r in records {
                let a = &r.attempt;
                insert.execute(params![
                    r.delivery_id,
                    a.at,
                    a.status,
                    a.outcome,
                    a.reason,
                    a.latency_ms as i64
                ])?;
                let (state, next) = r.resolution.state_and_next(a.at);
                let changed = update.execute(params![
                    r.delivery_id,
                    state.as_str(),
                    next,
                    a.at,
                    a.status,
                    a.reason,
                    r.body,
                    r.picked
                ])?;
                applied.push(changed == 1);
            }
            Ok(applied)
        })
        .await
    }
}

#[async_trait]
impl MessageIds for SqliteStore {
    async fn message_ref(
        &self,
        destination: &str,
        key: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        let (destination, key) = (destination.to_string(), key.to_string());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT channel, ts, rank, event_id FROM message_refs WHERE destination = ?1 AND key = ?2")?
                .query_row(params![destination, key], |r| {
                    Ok(MessageRef {
                        channel: r.get(0)?,
                        ts: r.get(1)?,
                        as_of: Progress {
                        rank: r.get(2)?,
                        event_id: r.get(3)?,
                    },
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn set_message_ref(
        &self,
        destination: &str,
        key: &str,
        message: MessageRef,
    ) -> Result<(), StoreError> {
        let (destination, key) = (destination.to_string(), key.to_string());
        let now = crate::store::now_ms();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO message_refs (destination, key, channel, ts, rank, event_id, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (destination, key) DO UPDATE SET channel = ?3, ts = ?4, rank = ?5, event_id = ?6, updated_at = ?7 \
                 WHERE (excluded.rank, excluded.event_id) >= (message_refs.rank, message_refs.event_id)",
            )?
            .execute(params![destination, key, message.channel, message.ts, message.as_of.rank, message.as_of.event_id, now])?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Operations for SqliteStore {
    async fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit as i64], stored_event)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn retry(&self, selector: RetrySelector, now: i64) -> Result<usize, StoreError> {
        self.write(move |conn| {
            // `updated_at` always grows: an attempt in flight must see that its delivery changed.
            let set = "SET state = 'pending', attempts = 0, next_attempt_at = ?1, age_from = ?1, \
                       updated_at = MAX(?1, updated_at + 1), body = NULL";
            match selector {
                RetrySelector::Id(id) => conn.execute(
                    &format!(
                        "UPDATE deliveries {set} WHERE id = ?2 AND state IN ('dead', 'pending')"
                    ),
                    params![now, id],
                ),
                RetrySelector::AllDead => conn.execute(
                    &format!("UPDATE deliveries {set} WHERE state = 'dead'"),
                    params![now],
                ),
            }
        })
        .await
    }

    async fn list(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                 WHERE (?1 IS NULL OR d.state = ?1) ORDER BY d.id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(
                params![state.map(DeliveryState::as_str), limit as i64],
                delivery,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn show(&self, id: i64) -> Result<(Delivery, Vec<Attempt>), StoreError> {
        self.read(move |conn| {
            let d = conn
                .query_row(
                    &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?1"),
                    params![id],
                    delivery,
                )
                .optional()?
                .ok_or(StoreError::NotFound(id))?;
            let mut stmt = conn.prepare_cached(
                "SELECT at, status, outcome, reason, latency_ms FROM attempts WHERE delivery_id = ?1 ORDER BY rowid",
            )?;
            let attempts = stmt
                .query_map(params![id], |r| {
                    Ok(Attempt {
                        at: r.get(0)?,
                        status: r.get(1)?,
                        outcome: r.get(2)?,
                        reason: r.get(3)?,
                        latency_ms: r.get::<_, i64>(4)? as u64,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((d, attempts))
        })
        .await
    }

    async fn prune(&self, before: i64, limit: usize) -> Result<usize, StoreError> {
        let now = crate::store::now_ms();
        self.write(move |conn| {
            let limit = limit as i64;
            // One choice of deliveries, so their attempts and event links go with them.
            let chosen: Vec<i64> = conn
                .prepare_cached(
                    "SELECT id FROM deliveries WHERE state = 'sent' AND updated_at < ?1 LIMIT ?2",
                )?
                .query_map(params![before, limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let chosen = serde_json::to_string(&chosen).expect("ids serialise");
            for sql in [
                "DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM delivery_events WHERE delivery_id IN (SELECT value FROM json_each(?1))",
            ] {
                conn.prepare_cached(sql)?.execute([&chosen])?;
            }
            let deliveries = conn
                .prepare_cached("DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?1))")?
                .execute([&chosen])?;
            let events = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id) \
                 AND NOT EXISTS (SELECT 1 FROM delivery_events de WHERE de.event_id = events.id) LIMIT ?2)",
                params![before, limit],
            )?;
            let refs = conn.execute(
                "DELETE FROM message_refs WHERE rowid IN (SELECT rowid FROM message_refs WHERE updated_at < ?1 LIMIT ?2)",
                params![before, limit],
            )?;
            // Claims go by their button's expiry, not by the retention: until then a claim
            // must stay (however short the retention), and after it the button can no longer
            // be pressed, so nothing needs to remember that it was.
            let claims = conn.execute(
                "DELETE FROM press_claims WHERE rowid IN (SELECT rowid FROM press_claims WHERE expires_at < ?1 LIMIT ?2)",
                params![now, limit],
            )?;
            let presses = conn.execute(
                "DELETE FROM presses WHERE id IN (SELECT id FROM presses WHERE at < ?1 LIMIT ?2)",
                params![before, limit],
            )?;
            Ok(deliveries.max(events).max(refs).max(claims).max(presses))
        })
        .await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        let now = crate::store::now_ms();
        self.read_ops(move |conn| {
            // `age_from` is when a message became deliverable: its arrival, or the end of the
            // mute window or digest that held it. Held messages are queued but not late, so
            // they count in the depth and not in the age.
            let mut stmt = conn.prepare_cached(
                "SELECT destination, SUM(state = 'pending'), \
                 MIN(CASE WHEN state = 'pending' AND age_from <= ?1 THEN age_from END), SUM(state = 'dead') \
                 FROM deliveries WHERE state IN ('pending', 'dead') GROUP BY destination ORDER BY destination",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok(QueueStat {
                    destination: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    oldest_due_at: r.get(2)?,
                    dead: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let now = crate::store::now_ms();
        // Through the writer, like an event, so it waits and commits as an event does.
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO probe (id, at, payload) VALUES (1, ?1, randomblob(?2)) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, payload = excluded.payload",
            )?
            .execute(params![now, PROBE_BYTES])?;
            Ok(())
        })
        .await
    }
}

/// One process has an SQLite store to itself: its leases are local.
#[async_trait]
impl Leases for SqliteStore {
    fn replica(&self) -> &str {
        self.leases.replica()
    }

    fn lease_ttl(&self) -> Option<std::time::Duration> {
        self.leases.lease_ttl()
    }

    async fn heartbeat(&self) -> Result<usize, StoreError> {
        self.leases.heartbeat().await
    }

    async fn acquire(
        &self,
        destinations: &[String],
        grace: std::time::Duration,
    ) -> Result<Vec<Taken>, StoreError> {
        self.leases.acquire(destinations, grace).await
    }

    async fn renew(&self, held: &[(String, i64)]) -> Result<Vec<String>, StoreError> {
        self.leases.renew(held).await
    }

    async fn save_pause(
        &self,
        destination: &str,
        epoch: i64,
        paused_until: i64,
        failures: u32,
    ) -> Result<(), StoreError> {
        self.leases
            .save_pause(destination, epoch, paused_until, failures)
            .await
    }

    async fn release(&self, destination: &str, epoch: i64, carry: Carry) -> Result<(), StoreError> {
        self.leases.release(destination, epoch, carry).await
    }

    async fn listen(&self, ring: Ring, cancel: tokio_util::sync::CancellationToken) {
        self.leases.listen(ring, cancel).await
    }

    async fn leave(&self) -> Result<(), StoreError> {
        self.leases.leave().await
    }
}
