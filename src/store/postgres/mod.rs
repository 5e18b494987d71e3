//! The shared store: PostgreSQL, for replicas.
//!
//! Every replica keeps its events and deliveries here, and everything that must be decided
//! once for the whole cluster is decided by the database: a body's duplicate by a unique key,
//! a branch's history and a digest's membership under transaction-scoped advisory locks, who
//! sends a destination by a lease row ([`lease`]). A replica that stores work for a
//! destination says so with `NOTIFY`, so the destination's holder starts at once.
//!
//! The schema is created and migrated at start under a session advisory lock: when several
//! replicas start at once, one migrates and the others wait, then find it current. A binary
//! older than the schema refuses to start.

mod import;
mod intake;
mod lease;
mod messages;
mod operations;
pub mod options;
mod presses;
mod queue;
mod tls;

pub use options::{PgOptions, SslMode, is_postgres_url};

use super::{Schema, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The schema, one step per version.
const MIGRATIONS: [&str; 2] = [include_str!("schema/v1.sql"), include_str!("schema/v2.sql")];

/// The session lock held while migrating (any fixed number; "kitebridge" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_7465_6272_6964;

/// How long a replica waits for another to finish migrating the schema.
const MIGRATION_WAIT: Duration = Duration::from_secs(300);

/// How long any one store operation may take before it counts as failed: a database that
/// stopped answering must turn into `503`s and paused workers, not requests that hang.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel replicas tell each other about new work on; the payload is a destination,
/// followed by [`FROM`] and the replica's name when a replica's intake stored the work.
const CHANNEL: &str = "kitebridge";

/// Between a notification's destination and the replica that sent it. A replica does not
/// need to hear its own intake: its workers take their new messages from intake in memory,
/// and hearing it made them look at the queue for every event.
const FROM: char = '\u{1f}';

/// The transport: plain or rustls.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// PostgreSQL-backed [`super::Store`].
#[derive(Clone)]
pub struct PgStore {
    /// Connections whose commits wait for the disk.
    pool: Pool,
    /// Connections for the workers' bookkeeping (asynchronous commit).
    bookkeeping: Pool,
    options: Arc<PgOptions>,
    tls: Tls,
    /// This process's name among the replicas: host, process id and a random part.
    replica: Arc<str>,
    /// Takes events in batches, one transaction each.
    intake: Arc<intake::Batcher>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.options.shown)
            .field("replica", &self.replica)
            .finish()
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        StoreError::Database(match e {
            PoolError::Backend(e) => describe(&e),
            PoolError::Timeout(_) => "no database connection could be had in time".into(),
            other => crate::secret::scrub(&other.to_string()),
        })
    }
}

/// A driver error as one line: the server's own message when it sent one, else the driver's
/// with its causes, which carry the useful part (a refused connection); never a known secret.
fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    };
    crate::secret::scrub(&text)
}

thread_local! {
    /// Set while [`timed`] drops an operation it gave up on, so the connections that operation
    /// held leave the pool instead of going back with a request still outstanding.
    static ABANDONING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the operation timeout.
async fn timed<T>(f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut f = Box::pin(f);
    match tokio::time::timeout(OPERATION_TIMEOUT, &mut f).await {
        Ok(result) => result,
        Err(_) => {
            ABANDONING.with(|a| a.set(true));
            drop(f);
            ABANDONING.with(|a| a.set(false));
            Err(no_answer())
        }
    }
}

/// What an operation that ran out of [`OPERATION_TIMEOUT`] answers.
fn no_answer() -> StoreError {
    StoreError::Database(format!(
        "the database did not answer within {}s",
        OPERATION_TIMEOUT.as_secs()
    ))
}

/// A pooled connection. One that an abandoned operation was using may be stuck behind a
/// server that stopped answering, or out of step with it: it is closed, not reused.
struct Conn(Option<deadpool_postgres::Object>);

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a connection until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("a connection until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if ABANDONING.with(|a| a.get())
            && let Some(object) = self.0.take()
        {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// This process's name among the replicas.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A pool of `size` connections made with `config`.
fn connections(tls: &Tls, config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Plain => Manager::from_config(config, NoTls, manager_config),
        Tls::Rustls(c) => Manager::from_config(config, c.clone(), manager_config),
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Database(e.to_string()))
}

impl PgStore {
    /// Connects, and creates or migrates the schema (or checks it; read-only sessions for
    /// [`Schema::ReadOnly`]).
    pub async fn connect(options: PgOptions, schema: Schema) -> Result<Self, StoreError> {
        crate::crypto::install_provider();
        let tls = match tls::connector(&options).map_err(StoreError::Database)? {
            Some(c) => Tls::Rustls(c),
            None => Tls::Plain,
        };
        let mut config = options.config.clone();
        if schema == Schema::ReadOnly {
            // The server itself then refuses any write through these sessions.
            let given = config.get_options().unwrap_or_default().to_string();
            config.options(format!("{given} -c default_transaction_read_only=on").trim());
        }
        let pool = connections(&tls, config.clone(), options.max_connections)?;
        // The delivery workers' bookkeeping commits without waiting for the disk: a record lost
        // to a database crash means a message sent again (at least once), never one lost; the
        // write-ahead log keeps commits in order, and anything stored durably after one (an
        // event joining a digest after it closed) makes it durable too.
        let mut quick = config;
        let given = quick.get_options().unwrap_or_default().to_string();
        quick.options(format!("{given} -c synchronous_commit=off").trim());
        let bookkeeping = connections(&tls, quick, (options.max_connections / 2).max(2))?;
        // Up to four intake writers, each with a transaction at a time (a branch's builds go
        // to one of them, other events to the least loaded); half the pool stays for
        // everything else.
        let replica: Arc<str> = replica_name().into();
        let intake = Arc::new(intake::Batcher::new(
            (options.max_connections / 2).clamp(1, 4),
            &replica,
        ));
        let store = Self {
            pool,
            bookkeeping,
            intake,
            options: Arc::new(options),
            tls,
            replica,
        };
        store.schema(schema).await?;
        Ok(store)
    }

    /// A connection whose commits are durable: events, leases, message ids, operators' writes.
    async fn client(&self) -> Result<Conn, StoreError> {
        Ok(Conn(Some(self.pool.get().await?)))
    }

    /// A connection for the workers' reads and attempt records, whose commits do not wait
    /// for the disk.
    async fn bookkeeping(&self) -> Result<Conn, StoreError> {
        Ok(Conn(Some(self.bookkeeping.get().await?)))
    }

    /// Brings the schema to this binary's version, one replica at a time.
    async fn schema(&self, schema: Schema) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // A migration may take long: no statement limit on this session, which leaves the
        // pool afterwards so the setting goes with it.
        client.batch_execute("SET statement_timeout = 0").await?;
        // A session lock: replicas starting together queue here, and find the schema
        // current once the first has migrated it.
        let mut waited = Duration::ZERO;
        loop {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await?
                .get(0);
            if locked {
                break;
            }
            if waited >= MIGRATION_WAIT {
                return Err(StoreError::Database(format!(
                    "another kitebridge has been migrating the schema for over {}s (or holds its lock): see pg_locks for advisory lock {MIGRATION_LOCK}",
                    MIGRATION_WAIT.as_secs()
                )));
            }
            if waited == Duration::ZERO {
                tracing::info!("storage: another replica is migrating the schema; waiting");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += Duration::from_millis(200);
        }
        let result = migrate(&mut client, schema).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        if let Some(object) = client.0.take() {
            drop(deadpool_postgres::Object::take(object));
        }
        result?;
        unlocked?;
        Ok(())
    }
}

/// The schema's version, 0 for an empty database.
async fn version(client: &Conn) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('kitebridge_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM kitebridge_schema",
            &[],
        )
        .await?
        .get(0))
}

async fn migrate(client: &mut Conn, schema: Schema) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found = version(client).await?;
    if found > known {
        return Err(StoreError::Database(format!(
            "the database has schema version {found}, newer than this kitebridge knows ({known}): run a kitebridge at least as new as the one that migrated it"
        )));
    }
    if found == known {
        return Ok(());
    }
    if schema != Schema::Migrate {
        return Err(StoreError::Database(format!(
            "the database has schema version {found}, older than this kitebridge's ({known}): start `kitebridge serve` of this version to migrate it first"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = client.transaction().await?;
        if i == 0 {
            tx.batch_execute(
                "CREATE TABLE kitebridge_schema (version integer NOT NULL, migrated_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO kitebridge_schema (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = i + 1, "storage: schema migrated");
    }
    Ok(())
}

/// A 64-bit key for a transaction-scoped advisory lock on `parts` (a branch, a digest group):
/// concurrent writers of the same thing queue, others do not wait. Two things sharing a key
/// by chance only wait for each other.
fn lock_key(kind: &str, parts: &[&str]) -> i64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_differ_by_kind_and_part_boundaries() {
        use super::lock_key;
        assert_ne!(
            lock_key("branch", &["a", "bc"]),
            lock_key("branch", &["ab", "c"])
        );
        assert_ne!(lock_key("branch", &["a"]), lock_key("group", &["a"]));
        assert_eq!(
            lock_key("group", &["x", "y"]),
            lock_key("group", &["x", "y"])
        );
    }
}
