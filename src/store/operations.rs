//! The operator's part of the store: the `deliveries` commands, pruning, the queue gauges and
//! the readiness probe.

use super::{Attempt, Delivery, DeliveryState, StoreError, StoredEvent};
use async_trait::async_trait;

/// Which deliveries `retry` re-queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySelector {
    /// One delivery (pending or dead).
    Id(i64),
    /// Every dead letter.
    AllDead,
}

/// Queue depth of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStat {
    /// Destination name.
    pub destination: String,
    /// Pending deliveries.
    pub pending: u64,
    /// When the longest-waiting pending delivery became deliverable (it arrived, or the mute
    /// window or digest holding it ended); messages still held do not count.
    pub oldest_due_at: Option<i64>,
    /// Dead letters.
    pub dead: u64,
}

impl QueueStat {
    /// How long (ms) the longest-waiting deliverable message has waited at `now`.
    pub fn oldest_age_ms(&self, now: i64) -> Option<i64> {
        self.oldest_due_at.map(|t| (now - t).max(0))
    }
}

/// What operators (and the service's own housekeeping) ask of the store.
#[async_trait]
pub trait Operations {
    /// Re-queues dead (or pending) deliveries to be tried now, re-rendered, with `max_age` and
    /// the attempt count (and so the backoff) starting afresh. Returns how many.
    async fn retry(&self, selector: RetrySelector, now: i64) -> Result<usize, StoreError>;

    /// Deliveries, newest first, optionally in one state.
    async fn list(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The last `limit` events stored, newest first (the template studio's samples).
    async fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// One delivery and its attempts.
    async fn show(&self, id: i64) -> Result<(Delivery, Vec<Attempt>), StoreError>;

    /// Deletes up to `limit` sent deliveries last changed before `before` (with their
    /// attempts), up to `limit` events older than `before` that no delivery needs any more, up
    /// to `limit` Slack message ids not updated since, and up to `limit` button presses of the
    /// audit trail pressed before `before`. Also deletes up to `limit` nonce claims whose
    /// button has expired (`expires_at` before now, by the store's [`now_ms`](super::now_ms),
    /// not `before`): a claim must outlive its button whatever the retention, and is of no use
    /// after it. Returns the largest of those counts; call again while it returns `limit`, so
    /// no single write holds the store long.
    async fn prune(&self, before: i64, limit: usize) -> Result<usize, StoreError>;

    /// Pending and dead counts per destination.
    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError>;

    /// Writes as much as storing an event would, to prove an event could be stored now.
    async fn probe(&self) -> Result<(), StoreError>;
}
