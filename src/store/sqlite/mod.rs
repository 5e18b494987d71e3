//! The embedded store: SQLite in WAL mode.
//!
//! All writes go through one writer thread that drains whatever requests are waiting and
//! applies them in a single transaction (group commit): under load, many concurrent webhooks
//! share one commit, and each is answered only after that commit. Each request runs in its own
//! savepoint, so one failing request does not undo the others. Reads use a small pool of
//! other connections, so readers never wait on each other or on the writer (WAL).

mod export;
mod intake;
mod presses;
mod queries;

pub use export::{Batches, Snapshot};

use super::{LocalLeases, StoreError};
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most requests one transaction takes.
const MAX_BATCH: usize = 1024;

/// Reads running at once (besides the operators' slot), each on its own connection. A fixed set of connections keeps their
/// compiled statements and page caches warm; opening one per burst of reads showed up in
/// profiles as SQLite compiling the same queries again and again.
const MAX_READERS: usize = 4;

/// How often the log is copied into the database file, when something was written. Small,
/// frequent checkpoints keep each flush of the database file short, so the flushes of the
/// log that answers wait for are not stuck behind one (answer p99 at 2,000 events/s, five
/// alternating runs each: 3.9–4.5 ms with 10 ms against 4.9–7.3 ms with 25 ms; earlier, 8–9
/// ms with 100 ms and 16 ms with 500 ms).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Log pages (4 KiB) after which the writer checkpoints by itself: only when the checkpointer
/// falls far behind.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// The log file is cut back to this size once it has been copied in.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

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
    /// One permit per read connection.
    read_slots: Arc<tokio::sync::Semaphore>,
    /// A slot of its own for the slow whole-queue counts behind `/metrics` and the depth log,
    /// so a scrape of a big backlog never keeps the delivery workers from their reads.
    ops_slot: Arc<tokio::sync::Semaphore>,
    durability: Durability,
    commits: Arc<AtomicU64>,
    /// One process has the file to itself, so its leases are local.
    leases: LocalLeases,
    /// The connections and threads, closed by the last handle.
    open: Arc<Open>,
}

/// An open store's connections and threads. When the last handle goes they are closed one
/// after another, the writer's last, so the store is closed on disk (its log copied in and
/// removed) by the time the drop returns, not a moment after the service has exited.
///
/// The order matters: SQLite removes the log only when the connection closing last has the
/// file to itself. Closed at the same moment on several threads, each connection could see
/// another still open, and the log was left behind now and then.
#[derive(Debug)]
struct Open {
    /// The writer thread's queue; `None` for a store opened by
    /// [`SqliteStore::open_read_only`], whose read connections SQLite keeps from writing.
    writer: Option<mpsc::Sender<Job>>,
    /// Read connections, checked out one per read so readers never wait on each other.
    readers: Mutex<Vec<Connection>>,
    /// Dropping it wakes the checkpointer to stop.
    stop: Option<mpsc::Sender<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    write_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // Closed first even if a read panicked while it held the pool.
        self.readers
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.stop.take();
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
        self.writer.take();
        if let Some(thread) = self.write_thread.take() {
            // A write that held the last handle drops it on the writer thread itself, which
            // closes its connection as soon as that write returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    settings(&conn, durability)?;
    Ok(conn)
}

/// A connection that cannot write: SQLite itself refuses every change through it.
fn open_read_only(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    settings(&conn, durability)?;
    Ok(conn)
}

/// The per-connection settings every connection shares.
fn settings(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // SQLite re-prepares a statement whenever a new value is bound to a parameter it used in
    // planning, and in the SQLite bundled here (3.54) that includes every `LIMIT ?`: the
    // workers' queue query was parsed and planned again on every look at the queue, 14% of
    // the service's CPU at 2,000 events/s. The query planner's stability guarantee plans
    // each statement once, whatever is bound to it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let writer_conn = open(path, durability)?;
        migrate(&writer_conn)?;
        // Checkpoints (copying the log into the database file, and flushing that) run on their
        // own thread, so the writer only appends to the log. Left to the writer, a checkpoint
        // with a big database took a third of its time, and every waiting webhook with it.
        // The writer still checkpoints by itself should the log ever grow this long.
        writer_conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        writer_conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let reader = open(path, durability)?;
        let checkpointer = open(path, durability)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel::<Job>();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let checkpointer = std::thread::Builder::new()
            .name("kitebridge-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stopped, &counter))
            .map_err(|e| StoreError::Database(format!("cannot start the checkpointer: {e}")))?;
        // Owned before the writer starts: should it fail to, dropping this stops the
        // checkpointer again.
        let mut parts = Open {
            writer: Some(tx),
            readers: Mutex::new(vec![reader]),
            stop: Some(stop),
            checkpointer: Some(checkpointer),
            write_thread: None,
        };
        let counter = commits.clone();
        parts.write_thread = Some(
            std::thread::Builder::new()
                .name("kitebridge-store".into())
                .spawn(move || write_loop(writer_conn, rx, &counter))
                .map_err(|e| StoreError::Database(format!("cannot start the writer: {e}")))?,
        );
        Ok(Self::with_parts(path, parts, durability, commits))
    }

    fn with_parts(
        path: &Path,
        open: Open,
        durability: Durability,
        commits: Arc<AtomicU64>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            ops_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            durability,
            commits,
            leases: LocalLeases::default(),
            open: Arc::new(open),
        }
    }

    /// Opens an existing database for reading only, as the template studio does: nothing is
    /// created or migrated, no writer or checkpointer starts, every write answers an error,
    /// and SQLite refuses changes through its connections. Refuses a database at another
    /// schema version than this binary's.
    pub fn open_read_only(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let reader = open_read_only(path, durability)?;
        let version: i64 = reader.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != MIGRATIONS.len() as i64 {
            return Err(StoreError::Database(format!(
                "{}: schema version {version}, and this kitebridge reads only version {}: start `kitebridge serve` of this version once to migrate it",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        let parts = Open {
            writer: None,
            readers: Mutex::new(vec![reader]),
            stop: None,
            checkpointer: None,
            write_thread: None,
        };
        Ok(Self::with_parts(
            path,
            parts,
            durability,
            Arc::new(AtomicU64::new(0)),
        ))
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
        let Some(writer) = &self.open.writer else {
            return Err(StoreError::Database("the store is open read-only".into()));
        };
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
        writer.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_in(&self.read_slots, f).await
    }

    /// [`read`](Self::read) for the operators' whole-queue queries, in their own slot.
    async fn read_ops<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_in(&self.ops_slot, f).await
    }

    async fn read_in<T: Send + 'static>(
        &self,
        slots: &Arc<tokio::sync::Semaphore>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // The blocking task holds the store open: a read whose caller has gone still
        // returns its connection before the store can close.
        let (held, path, durability, read_only) = (
            self.open.clone(),
            self.path.clone(),
            self.durability,
            self.open.writer.is_none(),
        );
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // With a slot held, a connection is idle or not opened yet.
            let spare = held.readers.lock().map_err(|_| StoreError::Closed)?.pop();
            let conn = match spare {
                Some(conn) => conn,
                None if read_only => open_read_only(&path, durability)?,
                None => open(&path, durability)?,
            };
            let result = f(&conn);
            held.readers
                .lock()
                .map_err(|_| StoreError::Closed)?
                .push(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// The schema, one step per version; `PRAGMA user_version` records how far a database is.
const MIGRATIONS: [&str; 5] = [
    include_str!("../schema/v1.sql"),
    include_str!("../schema/v2.sql"),
    include_str!("../schema/v3.sql"),
    include_str!("../schema/v4.sql"),
    include_str!("../schema/v5.sql"),
];

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}, newer than this kitebridge knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // Cached statements: parsing these twice per write showed up in profiles.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// Copies the log into the database file until the store is dropped. Passive: it never makes
/// the writer or a reader wait.
fn checkpoint_loop(conn: &Connection, stop: &mpsc::Receiver<()>, commits: &AtomicU64) {
    let mut failing = false;
    let mut seen = 0;
    loop {
        // Nothing is ever sent: the store going away disconnects this and ends the loop.
        if stop.recv_timeout(CHECKPOINT_EVERY) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        let now = commits.load(Ordering::Relaxed);
        if now == seen && !failing {
            continue; // nothing new in the log
        }
        seen = now;
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => failing = false,
            // Once per spell of failures, not ten times a second.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "storage: checkpoint failed; the writer will do it");
            }
            Err(_) => {}
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
            // Planning runs in here (routing needs the transition); a bug there must cost one
            // request, not the writer thread and with it the whole store.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&conn)))) {
                Ok(finish) => finishes.push(finish),
                Err(_) => {
                    tracing::error!(
                        "storage: a write panicked; that request is refused, the batch goes on"
                    );
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                }
            }
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

#[cfg(test)]
mod tests;
