//! The delivery workers' part of the store: due messages, the events they render, and each
//! attempt's record.

use super::StoreError;
use crate::transition::Transition;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;

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
    /// Last change. Every change makes it larger, so it is also the delivery's version: an
    /// attempt's record names the version it was picked at (see `finish_attempt`).
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

impl Resolution {
    /// The delivery's state after an attempt at `at`, and when it may next be tried.
    pub fn state_and_next(&self, at: i64) -> (DeliveryState, i64) {
        match self {
            Resolution::Sent => (DeliveryState::Sent, at),
            Resolution::RetryAt(next) => (DeliveryState::Pending, *next),
            Resolution::Dead => (DeliveryState::Dead, at),
        }
    }
}

/// One attempt's record. It is taken for the delivery as it was picked (`picked`: its
/// `updated_at` then), with its consequence; `body` keeps the rendered body the first time.
/// If the delivery changed since (an operator re-queued it, or another replica that took the
/// destination over finished it first), the attempt is recorded but the delivery is left as it
/// is, and its answer is `false`. The version is compared for equality, never ordered against
/// the attempt's time, because replicas' clocks differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The delivery attempted.
    pub delivery_id: i64,
    /// Its version when it was picked.
    pub picked: i64,
    /// What happened.
    pub attempt: Attempt,
    /// The rendered body to keep, when this attempt rendered it.
    pub body: Option<String>,
    /// What follows for the delivery.
    pub resolution: Resolution,
}

/// The delivery workers' part of the store.
#[async_trait]
pub trait DeliveryQueue {
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

    /// Closes a digest now, so no later event joins it, if it is still due at `now`; call
    /// before reading its events. `false`: a held event joined it since it was picked, and
    /// holds it back (it is due later, and stays open meanwhile).
    async fn close_group(&self, delivery_id: i64, now: i64) -> Result<bool, StoreError>;

    /// The events of a digest, in the order they arrived.
    async fn group_events(&self, delivery_id: i64) -> Result<Vec<StoredEvent>, StoreError>;

    /// Records attempts in one transaction, all or none; each answer says whether its
    /// delivery took the consequence (see [`Finished`]). Attempts at many deliveries share
    /// one write this way, where a write each made the store's writer the bottleneck.
    async fn finish_attempts(&self, records: Vec<Finished>) -> Result<Vec<bool>, StoreError>;

    /// Records one attempt: [`finish_attempts`](Self::finish_attempts) with a single record.
    async fn finish_attempt(
        &self,
        delivery_id: i64,
        picked: i64,
        attempt: Attempt,
        body: Option<String>,
        resolution: Resolution,
    ) -> Result<bool, StoreError> {
        let applied = self
            .finish_attempts(vec![Finished {
                delivery_id,
                picked,
                attempt,
                body,
                resolution,
            }])
            .await?;
        Ok(applied.first().copied().unwrap_or(false))
    }
}
