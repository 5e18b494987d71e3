//! Writing what `kitebridge store copy` read from an embedded store ([`crate::store::copy`]):
//! one transaction for all of it, so a failed copy leaves nothing behind.
//!
//! Copied ids are moved past every id the shared store has or has given out, and its
//! identity sequences are moved past the copied ones before the first row is written
//! (`setval` is not undone by a rollback, so replicas writing meanwhile get ids after the
//! copied range, and a failed copy only leaves a gap). Into an empty store the ids stay as
//! they were. Branch histories, Slack message ids and duplicate keys the store already holds
//! are only replaced by newer ones; a button claim it already holds is kept. Copied presses
//! get the shared store's own ids (nothing refers to them).

use super::{CHANNEL, PgStore, lock_key, timed};
use crate::store::copy::{Batch, Copied, CopyError, DeliveryRow, Extent};
use crate::store::{Press, StoreError};
use deadpool_postgres::Transaction;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeSet, HashSet};

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Target(e.into())
    }
}

/// What is added to a copied row's ids.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    events: i64,
    deliveries: i64,
    attempts: i64,
}

impl PgStore {
    /// Writes `batches` (read from an embedded store whose ids go as far as `extent`) in one
    /// transaction, and returns what was written. Refuses a store that already holds events
    /// or deliveries unless `force`; then the copy goes in beside them. Copies run one at a
    /// time.
    pub async fn import(
        &self,
        extent: Extent,
        force: bool,
        mut batches: impl Stream<Item = Result<Batch, CopyError>> + Unpin + Send,
    ) -> Result<Copied, CopyError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key("copy", &[])],
        )
        .await?;
        let used: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM deliveries)",
                &[],
            )
            .await?
            .get(0);
        if used && !force {
            return Err(CopyError::NotEmpty);
        }
        let offsets = Offsets {
            events: reserve(&tx, "events", extent.events).await?,
            deliveries: reserve(&tx, "deliveries", extent.deliveries).await?,
            attempts: reserve(&tx, "attempts", extent.attempts).await?,
        };
        let mut writer = Writer {
            tx: &tx,
            offsets,
            open: HashSet::new(),
            destinations: BTreeSet::new(),
            copied: Copied::default(),
        };
        while let Some(batch) = batches.next().await {
            timed(writer.write(batch?)).await?;
        }
        // Replicas already running on this store start on the copied messages at once.
        for d in &writer.destinations {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, d])
                .await?;
        }
        let copied = writer.copied;
        tx.commit().await?;
        Ok(copied)
    }
}

/// Moves `table`'s identity sequence `span` past every id the table has or has given out, and
/// returns where it was: the offset for the copied ids (1 to `span`). One statement, so a
/// replica taking an id meanwhile can only make the copy fail, never mix into it.
async fn reserve(tx: &Transaction<'_>, table: &str, span: i64) -> Result<i64, StoreError> {
    let high = format!(
        "GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), \
         COALESCE(pg_sequence_last_value(pg_get_serial_sequence('{table}', 'id')::regclass), 0))"
    );
    let sql = if span > 0 {
        format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), {high} + $1) - $1")
    } else {
        format!("SELECT {high} + $1")
    };
    Ok(tx.query_one(&sql, &[&span]).await?.get(0))
}

/// The copy in progress.
struct Writer<'a> {
    tx: &'a Transaction<'a>,
    offsets: Offsets,
    /// Pending digests copied so far (their ids in the embedded store), to count their events.
    open: HashSet<i64>,
    /// Destinations of the copied messages.
    destinations: BTreeSet<String>,
    copied: Copied,
}

impl Writer<'_> {
    async fn write(&mut self, batch: Batch) -> Result<(), StoreError> {
        let Offsets {
            events: oe,
            deliveries: od,
            attempts: oa,
        } = self.offsets;
        let tx = self.tx;
        match batch {
            Batch::Events(rows) => {
                let ids: Vec<i64> = rows.iter().map(|r| r.id + oe).collect();
                let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
                let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
                let hashes: Vec<&[u8]> = rows.iter().map(|r| r.body_hash.as_slice()).collect();
                let received: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
                let transitions: Vec<Option<&str>> =
                    rows.iter().map(|r| r.transition.as_deref()).collect();
                let n = tx
                    .execute(
                        "INSERT INTO events (id, name, body, body_hash, received_at, transition) \
                         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bytea[], $5::bigint[], $6::text[])",
                        &[&ids, &names, &bodies, &hashes, &received, &transitions],
                    )
                    .await?;
                self.copied.events += n;
            }
            Batch::Deliveries(rows) => self.deliveries(&rows).await?,
            Batch::Attempts(rows) => {
                let ids: Vec<i64> = rows.iter().map(|r| r.id + oa).collect();
                let deliveries: Vec<i64> = rows.iter().map(|r| r.delivery_id + od).collect();
                let at: Vec<i64> = rows.iter().map(|r| r.at).collect();
                let status: Vec<Option<i32>> = rows.iter().map(|r| r.status).collect();
                let outcome: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
                let reason: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
                let latency: Vec<i64> = rows.iter().map(|r| r.latency_ms).collect();
                let n = tx
                    .execute(
                        "INSERT INTO attempts (id, delivery_id, at, status, outcome, reason, latency_ms) \
                         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[], $5::text[], \
                         $6::text[], $7::bigint[])",
                        &[&ids, &deliveries, &at, &status, &outcome, &reason, &latency],
                    )
                    .await?;
                self.copied.attempts += n;
            }
            Batch::Links(rows) => {
                let deliveries: Vec<i64> = rows.iter().map(|r| r.delivery_id + od).collect();
                let events: Vec<i64> = rows.iter().map(|r| r.event_id + oe).collect();
                tx.execute(
                    "INSERT INTO delivery_events (delivery_id, event_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
                    &[&deliveries, &events],
                )
                .await?;
                let open = rows.iter().filter(|r| self.open.contains(&r.delivery_id));
                self.copied.digest_events += open.count() as u64;
            }
            Batch::BuildStates(rows) => {
                let pipelines: Vec<&str> = rows.iter().map(|r| r.pipeline.as_str()).collect();
                let branches: Vec<&str> = rows.iter().map(|r| r.branch.as_str()).collect();
                let numbers: Vec<i64> = rows.iter().map(|r| r.number).collect();
                let failed: Vec<bool> = rows.iter().map(|r| r.failed).collect();
                let failures: Vec<i64> = rows.iter().map(|r| r.consecutive_failures).collect();
                let finished: Vec<Option<i64>> = rows.iter().map(|r| r.finished_at).collect();
                let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
                // A later build, or a later result of the same build (a retry), wins.
                let n = tx
                    .execute(
                        "INSERT INTO build_states (pipeline, branch, number, failed, consecutive_failures, finished_at, updated_at) \
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::bigint[], $6::bigint[], $7::bigint[]) \
                         ON CONFLICT (pipeline, branch) DO UPDATE SET number = EXCLUDED.number, failed = EXCLUDED.failed, \
                         consecutive_failures = EXCLUDED.consecutive_failures, finished_at = EXCLUDED.finished_at, \
                         updated_at = EXCLUDED.updated_at \
                         WHERE EXCLUDED.number > build_states.number \
                         OR (EXCLUDED.number = build_states.number AND EXCLUDED.finished_at > build_states.finished_at)",
                        &[&pipelines, &branches, &numbers, &failed, &failures, &finished, &updated],
                    )
                    .await?;
                self.copied.build_states += n;
            }
            Batch::MessageRefs(rows) => {
                let destinations: Vec<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
                let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
                let channels: Vec<&str> = rows.iter().map(|r| r.channel.as_str()).collect();
                let ts: Vec<&str> = rows.iter().map(|r| r.ts.as_str()).collect();
                let ranks: Vec<i64> = rows.iter().map(|r| r.rank).collect();
                let events: Vec<i64> = rows.iter().map(|r| r.event_id + oe).collect();
                let updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
                // As the Slack app moves a message: only forward, by (rank, event).
                let n = tx
                    .execute(
                        "INSERT INTO message_refs (destination, key, channel, ts, rank, event_id, updated_at) \
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[]) \
                         ON CONFLICT (destination, key) DO UPDATE SET channel = EXCLUDED.channel, ts = EXCLUDED.ts, \
                         rank = EXCLUDED.rank, event_id = EXCLUDED.event_id, updated_at = EXCLUDED.updated_at \
                         WHERE (EXCLUDED.rank, EXCLUDED.event_id) > (message_refs.rank, message_refs.event_id)",
                        &[&destinations, &keys, &channels, &ts, &ranks, &events, &updated],
                    )
                    .await?;
                self.copied.message_refs += n;
            }
            Batch::DedupeKeys(rows) => {
                let hashes: Vec<&[u8]> = rows.iter().map(|r| r.body_hash.as_slice()).collect();
                let events: Vec<i64> = rows.iter().map(|r| r.event_id + oe).collect();
                let received: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
                // The later copy of a body counts, as intake keeps it.
                let n = tx
                    .execute(
                        "INSERT INTO dedupe_keys (body_hash, event_id, received_at) \
                         SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[]) \
                         ON CONFLICT (body_hash) DO UPDATE SET event_id = EXCLUDED.event_id, received_at = EXCLUDED.received_at \
                         WHERE dedupe_keys.received_at < EXCLUDED.received_at",
                        &[&hashes, &events, &received],
                    )
                    .await?;
                self.copied.dedupe_keys += n;
            }
            Batch::Claims(rows) => {
                let nonces: Vec<&str> = rows.iter().map(|r| r.nonce.as_str()).collect();
                let by: Vec<&str> = rows.iter().map(|r| r.claimed_by.as_str()).collect();
                let at: Vec<i64> = rows.iter().map(|r| r.claimed_at).collect();
                let expires: Vec<i64> = rows.iter().map(|r| r.expires_at).collect();
                // Either way the button has been pressed; the claim already there came first.
                let n = tx
                    .execute(
                        "INSERT INTO press_claims (nonce, claimed_by, claimed_at, expires_at) \
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
                         ON CONFLICT (nonce) DO NOTHING",
                        &[&nonces, &by, &at, &expires],
                    )
                    .await?;
                self.copied.claims += n;
            }
            Batch::Presses(rows) => {
                let text = |f: fn(&Press) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
                let opt_text = |f: fn(&Press) -> Option<&str>| {
                    rows.iter().map(f).collect::<Vec<Option<&str>>>()
                };
                let at: Vec<i64> = rows.iter().map(|r| r.at).collect();
                let n = tx
                    .execute(
                        "INSERT INTO presses (at, action, target, route, destination, channel, presser, \
                         presser_name, source, outcome, detail) \
                         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])",
                        &[
                            &at,
                            &text(|r| &r.action),
                            &text(|r| &r.target),
                            &text(|r| &r.route),
                            &text(|r| &r.destination),
                            &text(|r| &r.channel),
                            &text(|r| &r.presser),
                            &opt_text(|r| r.presser_name.as_deref()),
                            &text(|r| &r.source),
                            &text(|r| &r.outcome),
                            &opt_text(|r| r.detail.as_deref()),
                        ],
                    )
                    .await?;
                self.copied.presses += n;
            }
        }
        Ok(())
    }

    async fn deliveries(&mut self, rows: &[DeliveryRow]) -> Result<(), StoreError> {
        let (oe, od) = (self.offsets.events, self.offsets.deliveries);
        let text = |f: fn(&DeliveryRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let opt_text =
            |f: fn(&DeliveryRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
        let int = |f: fn(&DeliveryRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let ids: Vec<i64> = rows.iter().map(|r| r.id + od).collect();
        let events: Vec<i64> = rows.iter().map(|r| r.event_id + oe).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let status: Vec<Option<i32>> = rows.iter().map(|r| r.last_status).collect();
        let closes: Vec<Option<i64>> = rows.iter().map(|r| r.group_closes_at).collect();
        self.tx
            .execute(
                "INSERT INTO deliveries (id, event_id, route, destination, template, state, attempts, created_at, \
                 age_from, next_attempt_at, updated_at, last_status, last_error, body, group_key, group_closes_at, thread_key) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::integer[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::integer[], $13::text[], \
                 $14::text[], $15::text[], $16::bigint[], $17::text[])",
                &[
                    &ids,
                    &events,
                    &text(|r| &r.route),
                    &text(|r| &r.destination),
                    &opt_text(|r| r.template.as_deref()),
                    &text(|r| &r.state),
                    &attempts,
                    &int(|r| r.created_at),
                    &int(|r| r.age_from),
                    &int(|r| r.next_attempt_at),
                    &int(|r| r.updated_at),
                    &status,
                    &opt_text(|r| r.last_error.as_deref()),
                    &opt_text(|r| r.body.as_deref()),
                    &opt_text(|r| r.group_key.as_deref()),
                    &closes,
                    &opt_text(|r| r.thread_key.as_deref()),
                ],
            )
            .await?;
        for r in rows {
            match (r.state.as_str(), r.group_key.is_some()) {
                ("pending", false) => self.copied.pending += 1,
                ("pending", true) => {
                    self.copied.digests += 1;
                    self.open.insert(r.id);
                }
                _ => self.copied.dead += 1,
            }
            self.destinations.insert(r.destination.clone());
        }
        Ok(())
    }
}
