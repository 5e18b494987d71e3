//! The durable store: accepted events and their deliveries, kept until each is sent or an
//! operator has seen why it could not be.
//!
//! The boundary is split by who uses it, one trait each: [`Intake`] (the webhook handler
//! storing an event with its deliveries), [`DeliveryQueue`] (the workers taking and recording
//! deliveries), [`MessageIds`] (the Slack app's message per build), [`Operations`] (the
//! operator's commands, metrics and probes) and [`Leases`] (which replica sends each
//! destination). [`Store`] is all of them. Behind it:
//! [`sqlite::SqliteStore`], the embedded default (WAL mode, group commit).

mod intake;
mod lease;
mod messages;
mod operations;
mod queue;
pub mod sqlite;

pub use intake::{Accepted, Intake, NewDelivery, NewEvent, Planner};
pub use lease::{Carry, Leases, Left, LocalLeases, Pace, Ring, Taken};
pub use messages::{MessageIds, MessageRef};
pub use operations::{Operations, QueueStat, RetrySelector};
pub use queue::{Attempt, Delivery, DeliveryQueue, DeliveryState, Resolution, StoredEvent};
pub use sqlite::SqliteStore;

use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

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
    Intake + DeliveryQueue + MessageIds + Operations + Leases + Send + Sync + std::fmt::Debug
{
}

impl<T> Store for T where
    T: Intake + DeliveryQueue + MessageIds + Operations + Leases + Send + Sync + std::fmt::Debug
{
}
