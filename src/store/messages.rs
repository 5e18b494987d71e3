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
    /// How far along the build the message shows it: (lifecycle rank of the build event,
    /// event id). A message is only ever moved forward.
    pub as_of: (i64, i64),
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
