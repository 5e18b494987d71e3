//! Taking in an event: what the webhook handler hands the store, and what it answers.

use super::StoreError;
use crate::transition::{BuildOutcome, Transition};
use async_trait::async_trait;
use bytes::Bytes;

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
    /// For a digest: which group it joins.
    pub group: Option<Group>,
    /// Not before this time (ms): a mute window holds it.
    pub not_before: Option<i64>,
    /// The build this message belongs to (`pipeline#number`), for messages updated in place.
    pub thread_key: Option<String>,
}

/// The digest a message joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Events with equal keys (the route's `group_by` values, joined) share a digest.
    pub key: String,
    /// How long a new group stays open (ms).
    pub window_ms: i64,
}

/// Decides an event's deliveries once its transition is known (inside the store's
/// transaction, so concurrent events of one branch see each other in order). A store may call
/// it again when it takes the event again after a failed transaction; the last call's plan
/// is the one kept.
pub type Planner = Box<dyn FnMut(Option<&Transition>) -> Vec<NewDelivery> + Send + Sync>;

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

/// The webhook handler's part of the store.
#[async_trait]
pub trait Intake {
    /// Keeps an event and its deliveries in one transaction, unless an identical body was
    /// received at or after `dedupe_since` (then nothing is stored). For a finished build, the
    /// transition is worked out and the branch's history updated in the same transaction,
    /// before `plan` decides the deliveries. A delivery that names a group joins that group's
    /// open digest if there is one. Concurrent calls, from this process or another sharing
    /// the store, are decided by the database: one copy of a body, one digest per group, one
    /// history per branch.
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError>;
}
