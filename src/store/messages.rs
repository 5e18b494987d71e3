//! The Slack app's part of the store: which message shows which build, so later events update
//! it in place, across restarts and replicas.

use super::StoreError;
use async_trait::async_trait;

/// The Slack message kept for a build at a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// Channel id.
    pub channel: String,
    /// The message's `ts`.
    pub ts: String,
    /// How far along the build the message shows it. A message is only ever moved forward.
    pub as_of: Progress,
}

/// How far along its build a message is: compared by the build event's place in a build's
/// life first, then by event id (ids grow with arrival).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progress {
    /// The build event's place in a build's life (scheduled 0 … finished 3).
    pub rank: i64,
    /// The id of the event the message was last rendered from.
    pub event_id: i64,
}

/// Message ids per (destination, build).
#[async_trait]
pub trait MessageIds {
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
}
