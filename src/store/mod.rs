//! The durable store: accepted events and their deliveries, kept until each is sent or an
//! operator has seen why it could not be.
//!
//! [`Store`] is the boundary the queue and the CLI use; [`sqlite::SqliteStore`] is the embedded
//! implementation (WAL mode, group commit). A PostgreSQL one can sit behind the same trait.

pub mod sqlite;

pub use sqlite::SqliteStore;

use crate::transition::{BuildOutcome, Transition};
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
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
    /// The database refused (disk full, read-only, corrupt…).
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

/// An authentic event to keep.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event name.
    pub name: String,
    /// The verified body, byte for byte.
    pub body: Bytes,
    /// When it was received.
    pub received_at: i64,
    /// For a finished build that counts for transitions: its outcome.
    pub build: Option<BuildOutcome>,
}

/// One message to keep for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Route name.
    pub route: String,
    /// Destination name.
    pub destination: String,
    /// The route's template override.
    pub template: Option<String>,
    /// For a digest: the group key and how long a new group stays open (ms).
    pub group: Option<(String, i64)>,
    /// Not before this time (ms): a mute window holds it.
    pub not_before: Option<i64>,
    /// The build this message belongs to (`pipeline#number`), for messages updated in place.
    pub thread_key: Option<String>,
}

/// Decides an event's deliveries once its transition is known (inside the store's
/// transaction, so concurrent events of one branch see each other in order).
pub type Planner = Box<dyn FnOnce(Option<&Transition>) -> Vec<NewDelivery> + Send>;

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its id.
    pub id: i64,
    /// Event name.
    pub name: String,
    /// The verified body.
    pub body: Bytes,
    /// When it was received (ms).
    pub received_at: i64,
    /// The transition it made, for a finished build.
    pub transition: Option<Transition>,
}

/// The Slack message kept for a build at a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// Channel id.
    pub channel: String,
    /// The message's `ts`.
    pub ts: String,
    /// How far along the build the message shows it: (lifecycle rank of the build event,
    /// event id). A message is only ever moved forward.
    pub as_of: (i64, i64),
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored, with its deliveries.
    New {
        /// The event's id.
        event_id: i64,
        /// The deliveries' ids, in the planned order (an open digest's id when the event
        /// joined one).
        delivery_ids: Vec<i64>,
        /// The transition it made, for a finished build.
        transition: Option<Transition>,
    },
    /// An identical body arrived within the dedupe window: nothing new was stored.
    Duplicate {
        /// The id of the first copy.
        event_id: i64,
    },
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    /// Accepted by the destination.
    Sent,
    /// Given up on: a permanent failure, or still failing after `max_age`.
    Dead,
}

impl DeliveryState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id.
    pub id: i64,
    /// The event's id.
    pub event_id: i64,
    /// The event's name.
    pub event_name: String,
    /// Route name.
    pub route: String,
    /// Destination name.
    pub destination: String,
    /// The route's template override.
    pub template: Option<String>,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When it was accepted.
    pub created_at: i64,
    /// Where `max_age` counts from.
    pub age_from: i64,
    /// When it may next be tried.
    pub next_attempt_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The rendered body, once rendered.
    pub body: Option<String>,
    /// True for a digest, which renders all its events together.
    pub grouped: bool,
    /// The build this message belongs to, for messages updated in place.
    pub thread_key: Option<String>,
    /// The event itself, when `due` could read it in the same query (a single message not
    /// rendered yet), saving the worker a second read.
    pub event: Option<StoredEvent>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it ended.
    pub at: i64,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// `sent`, `retry`, `permanent` or `render` (a failing attempt past `max_age` is a
    /// `retry` whose delivery became dead).
    pub outcome: String,
    /// What went wrong, if anything.
    pub reason: Option<String>,
    /// How long the attempt took.
    pub latency_ms: u64,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// It was sent.
    Sent,
    /// Try again at this time.
    RetryAt(i64),
    /// Give up; keep it as a dead letter.
    Dead,
}

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

/// The durable store.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Keeps an event and its deliveries in one transaction, unless an identical body was
    /// received at or after `dedupe_since` (then nothing is stored). For a finished build, the
    /// transition is worked out and the branch's history updated in the same transaction,
    /// before `plan` decides the deliveries. A delivery that names a group joins that group's
    /// open digest if there is one.
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError>;

    /// Pending deliveries of `destination` due at `now`, in the order they came due (for new
    /// messages, the order they were accepted), at most `limit`, leaving out those in `skip`
    /// (the caller's attempts in flight).
    async fn due(
        &self,
        destination: &str,
        now: i64,
        limit: usize,
        skip: Vec<i64>,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The earliest time after `now` at which a pending delivery of `destination` becomes due.
    async fn next_due_after(&self, destination: &str, now: i64) -> Result<Option<i64>, StoreError>;

    /// A stored event.
    async fn event(&self, event_id: i64) -> Result<StoredEvent, StoreError>;

    /// Closes a digest at `now`, so no later event joins it. Call before reading its events.
    async fn close_group(&self, delivery_id: i64, now: i64) -> Result<(), StoreError>;

    /// The events of a digest, in the order they arrived.
    async fn group_events(&self, delivery_id: i64) -> Result<Vec<StoredEvent>, StoreError>;

    /// The Slack message kept for `key` at `destination`.
    async fn message_ref(
        &self,
        destination: &str,
        key: &str,
    ) -> Result<Option<MessageRef>, StoreError>;

    /// Keeps (or moves on) the Slack message for `key`; never moves it back (by `as_of`).
    async fn set_message_ref(
        &self,
        destination: &str,
        key: &str,
        message: MessageRef,
    ) -> Result<(), StoreError>;

    /// Records an attempt that started at `started_at`, and its consequence; `body` stores the
    /// rendered body the first time. If the delivery changed after the attempt started (an
    /// operator re-queued it), the attempt is recorded but the delivery is left as it is.
    async fn finish_attempt(
        &self,
        delivery_id: i64,
        started_at: i64,
        attempt: Attempt,
        body: Option<String>,
        resolution: Resolution,
    ) -> Result<(), StoreError>;

    /// Re-queues dead (or pending) deliveries to be tried now, re-rendered, with `max_age` and
    /// the attempt count (and so the backoff) starting afresh. Returns how many.
    async fn retry(&self, selector: RetrySelector, now: i64) -> Result<usize, StoreError>;

    /// Deliveries, newest first, optionally in one state.
    async fn list(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// One delivery and its attempts.
    async fn show(&self, id: i64) -> Result<(Delivery, Vec<Attempt>), StoreError>;

    /// Deletes up to `limit` sent deliveries last changed before `before` (with their
    /// attempts), up to `limit` events older than `before` that no delivery needs any more, and
    /// up to `limit` Slack message ids not updated since. Returns the largest of those counts;
    /// call again while it returns `limit`, so no single write holds the store long.
    async fn prune(&self, before: i64, limit: usize) -> Result<usize, StoreError>;

    /// Pending and dead counts per destination.
    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError>;

    /// Makes a small write, to prove the store is writable.
    async fn probe(&self) -> Result<(), StoreError>;
}
