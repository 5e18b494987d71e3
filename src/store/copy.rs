//! What `kitebridge store copy` moves from an embedded store into a shared one, as plain rows:
//! [`sqlite::Snapshot`](super::sqlite::Snapshot) reads them, in batches and in an order that
//! keeps every reference valid (events, then the deliveries that name them, then their
//! attempts and digest links, then the tables that stand alone, the action buttons' claims and
//! audit trail last);
//! [`PgStore::import`](super::PgStore::import) writes them.
//!
//! Rows carry the ids they had in the embedded store; the writer moves them past the shared
//! store's own ids ([`Extent`] says how far the source's go).

use super::{Press, StoreError};
use thiserror::Error;

/// An event: one a copied delivery or digest needs, or one inside the duplicate window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Its id in the embedded store.
    pub id: i64,
    /// Event name.
    pub name: String,
    /// The verified body, byte for byte.
    pub body: Vec<u8>,
    /// SHA-256 of the body.
    pub body_hash: Vec<u8>,
    /// When it was received (ms).
    pub received_at: i64,
    /// The transition it made (JSON), for a finished build.
    pub transition: Option<String>,
}

/// A pending delivery or a dead letter, every column as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Its id in the embedded store.
    pub id: i64,
    /// Its event (for a digest: the first one).
    pub event_id: i64,
    /// Route name.
    pub route: String,
    /// Destination name.
    pub destination: String,
    /// The route's template override.
    pub template: Option<String>,
    /// `pending` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// When it was accepted (ms).
    pub created_at: i64,
    /// Where `max_age` counts from.
    pub age_from: i64,
    /// When it may next be tried.
    pub next_attempt_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The rendered body, once rendered.
    pub body: Option<String>,
    /// A digest's group.
    pub group_key: Option<String>,
    /// When the digest stops taking events (ms).
    pub group_closes_at: Option<i64>,
    /// The build a Slack app message belongs to.
    pub thread_key: Option<String>,
}

/// One recorded attempt of a copied delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// Its position in the embedded store (the row id), which orders a delivery's attempts.
    pub id: i64,
    /// Its delivery.
    pub delivery_id: i64,
    /// When it ended (ms).
    pub at: i64,
    /// HTTP status, if an answer came.
    pub status: Option<i32>,
    /// `sent`, `retry`, `permanent` or `render`.
    pub outcome: String,
    /// What went wrong, if anything.
    pub reason: Option<String>,
    /// How long it took.
    pub latency_ms: i64,
}

/// An event's membership of a copied digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRow {
    /// The digest (a grouped delivery).
    pub delivery_id: i64,
    /// One of its events.
    pub event_id: i64,
}

/// A branch's last finished build, for transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStateRow {
    /// Pipeline slug.
    pub pipeline: String,
    /// Branch.
    pub branch: String,
    /// Build number.
    pub number: i64,
    /// Whether it failed.
    pub failed: bool,
    /// Failed builds in a row up to it.
    pub consecutive_failures: i64,
    /// When it finished (ms), to order two results of one build.
    pub finished_at: Option<i64>,
    /// Last change (ms).
    pub updated_at: i64,
}

/// The Slack message kept for a build at a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRefRow {
    /// Destination name.
    pub destination: String,
    /// The build (`pipeline#number`).
    pub key: String,
    /// Channel id.
    pub channel: String,
    /// The message's `ts`.
    pub ts: String,
    /// The build's lifecycle step the message shows…
    pub rank: i64,
    /// …and the event it was last moved on by, in the embedded store's ids.
    pub event_id: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

/// A body seen inside the duplicate window: an identical one arriving later is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeKeyRow {
    /// SHA-256 of the body.
    pub body_hash: Vec<u8>,
    /// The copy that counts (the latest one received).
    pub event_id: i64,
    /// When it was received (ms).
    pub received_at: i64,
}

/// A button's nonce, claimed: copied so a button pressed before the copy cannot be pressed
/// again after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    /// The button's single-use nonce.
    pub nonce: String,
    /// Who claimed it, as shown.
    pub claimed_by: String,
    /// When (ms).
    pub claimed_at: i64,
    /// When the button expires, and the claim may go (ms).
    pub expires_at: i64,
}

/// Rows of one kind, at most a batch's worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Events, by id.
    Events(Vec<EventRow>),
    /// Pending deliveries and dead letters, by id.
    Deliveries(Vec<DeliveryRow>),
    /// Their attempts, in the order they were recorded.
    Attempts(Vec<AttemptRow>),
    /// Their digests' events.
    Links(Vec<LinkRow>),
    /// Branch histories.
    BuildStates(Vec<BuildStateRow>),
    /// Slack message ids.
    MessageRefs(Vec<MessageRefRow>),
    /// Duplicate keys.
    DedupeKeys(Vec<DedupeKeyRow>),
    /// Claimed button nonces.
    Claims(Vec<ClaimRow>),
    /// The presses' audit trail, as recorded; ids are the embedded store's, and the shared
    /// store gives them its own.
    Presses(Vec<Press>),
}

/// How far the embedded store's ids go (the highest ever given, copied or not), so the
/// writer can set aside room for them all at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extent {
    /// The highest event id.
    pub events: i64,
    /// The highest delivery id.
    pub deliveries: i64,
    /// The highest attempt row id.
    pub attempts: i64,
}

/// What a copy wrote, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Pending deliveries that are not digests.
    pub pending: u64,
    /// Dead letters (digests among them).
    pub dead: u64,
    /// Pending digests.
    pub digests: u64,
    /// The events in those pending digests.
    pub digest_events: u64,
    /// Events, all told.
    pub events: u64,
    /// Attempts, all told.
    pub attempts: u64,
    /// Branch histories written (those the shared store had newer are kept).
    pub build_states: u64,
    /// Slack message ids written (likewise).
    pub message_refs: u64,
    /// Duplicate keys written (likewise).
    pub dedupe_keys: u64,
    /// Button nonce claims written (those the shared store already has are kept).
    pub claims: u64,
    /// Presses of the audit trail.
    pub presses: u64,
}

/// Why a copy did not happen. Nothing is written unless all of it is.
#[derive(Debug, Error)]
pub enum CopyError {
    /// The embedded store cannot be read: missing, not a kitebridge store, too new, corrupt.
    #[error("{0}")]
    Source(String),
    /// The shared store already holds events or deliveries, and `--force` was not given.
    #[error(
        "it already holds events or deliveries: copy into an empty store, or add --force to copy beside them"
    )]
    NotEmpty,
    /// The shared store refused.
    #[error(transparent)]
    Target(#[from] StoreError),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Source(e.to_string())
    }
}
