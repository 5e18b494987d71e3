//! The durable store: accepted events and their deliveries, kept until each is sent or an
//! operator has seen why it could not be.
//!
//! The boundary is split by who uses it, one trait each: [`Intake`] (the webhook handler
//! storing an event with its deliveries), [`DeliveryQueue`] (the workers taking and recording
//! deliveries), [`MessageIds`] (the Slack app's message per build), [`Operations`] (the
//! operator's commands, metrics and probes), [`Leases`] (which replica sends each
//! destination) and [`Presses`] (the action buttons' single-use nonces and audit trail).
//! [`Store`] is all of them. Two implementations sit behind it:
//! [`sqlite::SqliteStore`], the embedded default (WAL mode, group commit), and
//! [`postgres::PgStore`], which replicas share. [`copy`] is what `kitebridge store copy`
//! carries from the first to the second.

pub mod copy;
mod intake;
mod lease;
mod messages;
mod operations;
pub mod postgres;
mod presses;
mod queue;
pub mod sqlite;

pub use intake::{Accepted, Group, Intake, NewDelivery, NewEvent, Planner};
pub use lease::{Carry, Leases, Left, LocalLeases, Pace, Ring, Taken};
pub use messages::{MessageIds, MessageRef, Progress};
pub use operations::{Operations, QueueStat, RetrySelector};
pub use postgres::PgStore;
pub use presses::{Claim, Press, Presses};
pub use queue::{
    Attempt, Delivery, DeliveryQueue, DeliveryState, Finished, Resolution, StoredEvent,
};
pub use sqlite::SqliteStore;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Whether opening a store may bring its schema up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Create or migrate it (`serve`).
    Migrate,
    /// Refuse anything but the current version (the operator's commands, which must not
    /// change a schema running replicas use).
    Check,
    /// [`Check`](Self::Check), and never write: the store is only read (the template
    /// studio). The database refuses writes itself: SQLite opens its file read-only, and
    /// PostgreSQL sessions are read-only transactions.
    ReadOnly,
}

/// Which store, and where (`[storage]`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// The embedded SQLite database (the default).
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// How hard commits are pushed to disk.
        durability: sqlite::Durability,
    },
    /// A PostgreSQL database that replicas share.
    Postgres(Box<postgres::PgOptions>),
}

impl StoreConfig {
    /// Where the store is, as it may be shown (a URL without its password).
    pub fn shown(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => path.display().to_string(),
            Self::Postgres(o) => o.shown.clone(),
        }
    }

    /// True for a store that replicas share.
    pub fn shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Opens the store. `serve` creates or migrates its schema; the operator's commands
    /// (`Schema::Check`) use a shared store only at this binary's schema, and an embedded
    /// one only once it exists.
    pub async fn open(&self, schema: Schema) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Self::Sqlite { path, durability } => {
                if schema != Schema::Migrate && !path.exists() {
                    return Err(StoreError::Database(
                        "no store yet (it is created when kitebridge serve first starts)".into(),
                    ));
                }
                let (path, durability) = (path.clone(), *durability);
                let store = tokio::task::spawn_blocking(move || match schema {
                    Schema::ReadOnly => SqliteStore::open_read_only(&path, durability),
                    Schema::Migrate | Schema::Check => SqliteStore::open(&path, durability),
                })
                .await
                .map_err(|_| StoreError::Closed)??;
                Ok(Arc::new(store))
            }
            Self::Postgres(options) => Ok(Arc::new(
                PgStore::connect((**options).clone(), schema).await?,
            )),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A store failure. Cloneable so one commit's result can answer every request in it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database refused (disk full, read-only, unreachable, corrupt…).
    #[error("storage error: {0}")]
    Database(String),
    /// The store's writer has stopped.
    #[error("storage is closed")]
    Closed,
    /// No such delivery.
    #[error("no delivery {0}")]
    NotFound(i64),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// The whole store: every part of the boundary.
pub trait Store:
    Intake + DeliveryQueue + MessageIds + Operations + Leases + Presses + Send + Sync + std::fmt::Debug
{
}

impl<T> Store for T where
    T: Intake
        + DeliveryQueue
        + MessageIds
        + Operations
        + Leases
        + Presses
        + Send
        + Sync
        + std::fmt::Debug
{
}
