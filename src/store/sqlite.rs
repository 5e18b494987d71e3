//! The embedded store: SQLite in WAL mode.
//!
//! All writes go through one writer thread that drains whatever requests are waiting and
//! applies them in a single transaction (group commit): under load, many concurrent webhooks
//! share one commit, and each is answered only after that commit. Each request runs in its own
//! savepoint, so one failing request does not undo the others. Reads use a second connection.

use super::{
    Accepted, Attempt, Delivery, DeliveryState, NewDelivery, NewEvent, QueueStat, Resolution,
    RetrySelector, Store, StoreError,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most requests one transaction takes.
const MAX_BATCH: usize = 1024;

/// Idle read connections kept open.
const MAX_READERS: usize = 8;

/// How hard SQLite pushes commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: a committed event survives power loss.
    Full,
    /// `synchronous = NORMAL`: survives a crash of the process (`kill -9`), and may lose the
    /// last commits on power loss; fewer disk flushes.
    Normal,
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write request: given the connection inside the shared transaction (or `None` when the
/// transaction could not begin), it runs and returns how to answer once the commit is known.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Finish + Send>;

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    /// Read connections, checked out one per read so readers never wait on each other.
    readers: Arc<Mutex<Vec<Connection>>>,
    durability: Durability,
    commits: Arc<AtomicU64>,
}

fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let writer_conn = open(path, durability)?;
        writer_conn.execute_batch(include_str!("schema.sql"))?;
        let reader = open(path, durability)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("kitebridge-store".into())
            .spawn(move || write_loop(writer_conn, rx, &counter))
            .map_err(|e| StoreError::Database(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: tx,
            readers: Arc::new(Mutex::new(vec![reader])),
            durability,
            commits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions committed so far (each may hold many writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` in the next group commit and returns its result once that commit is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let result = match conn {
                Some(conn) => in_savepoint(conn, f).map_err(StoreError::from),
                None => Err(StoreError::Closed),
            };
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(result));
            })
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (readers, path, durability) =
            (self.readers.clone(), self.path.clone(), self.durability);
        tokio::task::spawn_blocking(move || {
            let spare = readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match spare {
                Some(conn) => conn,
                None => open(&path, durability)?,
            };
            let result = f(&conn);
            let mut pool = readers.lock().map_err(|_| StoreError::Closed)?;
            if pool.len() < MAX_READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn write_loop(conn: Connection, rx: mpsc::Receiver<Job>, commits: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if !conn.is_autocommit() {
            // A transaction left open by an earlier failure would make every BEGIN fail.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = StoreError::from(e);
            tracing::error!(error = %err, "storage: cannot begin a transaction");
            for job in jobs {
                job(None)(Err(err.clone()));
            }
            continue;
        }
        // Some errors (a full disk, say) make SQLite roll back the whole transaction, not just
        // the failing job's savepoint. From then on nothing may run outside a transaction, and
        // every job of the batch must learn that it was not kept.
        let mut aborted = false;
        let mut finishes: Vec<Finish> = Vec::with_capacity(jobs.len());
        for job in jobs {
            if aborted {
                finishes.push(job(None));
                continue;
            }
            finishes.push(job(Some(&conn)));
            aborted = conn.is_autocommit();
        }
        let commit = if aborted {
            Err(StoreError::Database(
                "the transaction was rolled back; nothing of this batch was kept".into(),
            ))
        } else {
            conn.execute_batch("COMMIT").map_err(StoreError::from)
        };
        match &commit {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "storage: commit failed");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
            }
        }
        for finish in finishes {
            finish(commit.clone());
        }
    }
}

fn body_hash(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.name, d.route, d.destination, d.template, d.state, d.attempts, \
     d.created_at, d.age_from, d.next_attempt_at, d.updated_at, d.last_status, d.last_error, d.body";

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
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        let hash = body_hash(&event.body);
        self.write(move |conn| {
            if let Some(since) = dedupe_since {
                let first: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM events WHERE body_hash = ?1 AND received_at >= ?2 ORDER BY id LIMIT 1",
                        params![hash, since],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(event_id) = first {
                    return Ok(Accepted::Duplicate { event_id });
                }
            }
            conn.prepare_cached("INSERT INTO events (name, body, body_hash, received_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![event.name, &event.body[..], hash, event.received_at])?;
            let event_id = conn.last_insert_rowid();
            let mut insert = conn.prepare_cached(
                "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, next_attempt_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5, ?5)",
            )?;
            let mut delivery_ids = Vec::with_capacity(deliveries.len());
            for d in &deliveries {
                insert.execute(params![event_id, d.route, d.destination, d.template, event.received_at])?;
                delivery_ids.push(conn.last_insert_rowid());
            }
            Ok(Accepted::New { event_id, delivery_ids })
        })
        .await
    }

    async fn due(
        &self,
        destination: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let destination = destination.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                 WHERE d.destination = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2 \
                 ORDER BY d.next_attempt_at, d.id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![destination, now, limit as i64], delivery)?;
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

    async fn event(&self, event_id: i64) -> Result<(String, Bytes, i64), StoreError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT name, body, received_at FROM events WHERE id = ?1",
                params![event_id],
                |r| Ok((r.get(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?), r.get(2)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound(event_id))
        })
        .await
    }

    async fn finish_attempt(
        &self,
        delivery_id: i64,
        started_at: i64,
        attempt: Attempt,
        body: Option<String>,
        resolution: Resolution,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO attempts (delivery_id, at, status, outcome, reason, latency_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                delivery_id,
                attempt.at,
                attempt.status,
                attempt.outcome,
                attempt.reason,
                attempt.latency_ms as i64
            ])?;
            let (state, next) = match resolution {
                Resolution::Sent => ("sent", attempt.at),
                Resolution::RetryAt(at) => ("pending", at),
                Resolution::Dead => ("dead", attempt.at),
            };
            conn.prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3, updated_at = ?4, \
                 last_status = ?5, last_error = ?6, body = COALESCE(?7, body) \
                 WHERE id = ?1 AND state = 'pending' AND updated_at <= ?8",
            )?
            .execute(params![
                delivery_id,
                state,
                next,
                attempt.at,
                attempt.status,
                attempt.reason,
                body,
                started_at
            ])?;
            Ok(())
        })
        .await
    }

    async fn retry(&self, selector: RetrySelector, now: i64) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let set = "SET state = 'pending', attempts = 0, next_attempt_at = ?1, age_from = ?1, \
                       updated_at = ?1, body = NULL";
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
        self.write(move |conn| {
            let limit = limit as i64;
            let chosen = "SELECT id FROM deliveries WHERE state = 'sent' AND updated_at < ?1 LIMIT ?2";
            conn.execute(
                &format!("DELETE FROM attempts WHERE delivery_id IN ({chosen})"),
                params![before, limit],
            )?;
            let deliveries = conn.execute(
                &format!("DELETE FROM deliveries WHERE id IN ({chosen})"),
                params![before, limit],
            )?;
            let events = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id) LIMIT ?2)",
                params![before, limit],
            )?;
            Ok(deliveries.max(events))
        })
        .await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT destination, SUM(state = 'pending'), MIN(CASE WHEN state = 'pending' THEN created_at END), SUM(state = 'dead') \
                 FROM deliveries WHERE state IN ('pending', 'dead') GROUP BY destination ORDER BY destination",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(QueueStat {
                    destination: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    oldest_created_at: r.get(2)?,
                    dead: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let now = super::now_ms();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = ?1",
                params![now],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now_ms;

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
        }
    }

    fn to(dest: &str) -> NewDelivery {
        NewDelivery {
            route: "r".into(),
            destination: dest.into(),
            template: None,
        }
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
                        vec![to("a")],
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
        assert_eq!(store.due("a", now_ms(), 1000).await.unwrap().len(), 400);
    }

    #[tokio::test]
    async fn a_failed_accept_keeps_nothing() {
        let (_dir, store) = store();
        store
            .write(|c| c.execute_batch("DROP TABLE attempts; DROP TABLE deliveries"))
            .await
            .unwrap();
        let failed = store
            .accept(event("{}", now_ms()), vec![to("a")], None)
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
                        .accept(event(&body, now_ms()), vec![to("a")], None)
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
            refused > 0 && !kept.is_empty(),
            "the disk filled part-way: kept {}, refused {refused}",
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
        let deliveries = store.due("a", now_ms(), 1000).await.unwrap();
        assert_eq!(deliveries.len(), kept.len());
    }

    #[tokio::test]
    async fn an_attempt_ending_after_a_manual_retry_does_not_undo_it() {
        let (_dir, store) = store();
        let t = now_ms();
        let Accepted::New { delivery_ids, .. } = store
            .accept(event("{}", t), vec![to("a")], None)
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
            .accept(event("{\"a\":1}", t), vec![to("a")], Some(t - 1000))
            .await
            .unwrap();
        let Accepted::New { event_id, .. } = first else {
            panic!()
        };
        let again = store
            .accept(
                event("{\"a\":1}", t + 10),
                vec![to("a")],
                Some(t + 10 - 1000),
            )
            .await
            .unwrap();
        assert_eq!(again, Accepted::Duplicate { event_id });
        let later = store
            .accept(
                event("{\"a\":1}", t + 5000),
                vec![to("a")],
                Some(t + 5000 - 1000),
            )
            .await
            .unwrap();
        assert!(
            matches!(later, Accepted::New { .. }),
            "outside the window it is new"
        );
        assert_eq!(store.due("a", t + 5000, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn attempts_retries_and_pruning() {
        let (_dir, store) = store();
        let t = now_ms();
        let Accepted::New { delivery_ids, .. } = store
            .accept(event("{}", t), vec![to("a"), to("b")], None)
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
            store.due("a", t, 10).await.unwrap().is_empty(),
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
}
