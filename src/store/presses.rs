//! The action buttons' part of the store: each button's single-use nonce, claimed once across
//! every replica, and the audit trail of presses (`kitebridge actions list`).

use super::StoreError;
use async_trait::async_trait;

/// One button press, allowed or not: the audit trail (`kitebridge actions list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    /// Assigned by the store (0 when recording).
    pub id: i64,
    /// When it was pressed (ms since epoch).
    pub at: i64,
    /// The action: `retry_failed`, `rebuild`, `unblock`, `cancel` (or `unknown` for a token
    /// that could not be read).
    pub action: String,
    /// What it acts on, e.g. `acme/web-app#1842` or `acme/web-app#1842 job 0190…` (empty if
    /// unknown).
    pub target: String,
    /// The route the button was rendered for (empty if unknown).
    pub route: String,
    /// The destination the button was rendered for (empty if unknown).
    pub destination: String,
    /// Where it was pressed: `slack` or `teams`.
    pub channel: String,
    /// Who pressed: Slack user id or email.
    pub presser: String,
    /// The presser's display name, when known.
    pub presser_name: Option<String>,
    /// Where from: Slack team/channel ids, or the client IP for a Teams confirm page.
    pub source: String,
    /// `done`, `denied`, `duplicate`, `expired`, `forged`, `failed`, `unavailable`, …
    pub outcome: String,
    /// Buildkite's answer or the reason, when there is one.
    pub detail: Option<String>,
}

/// The `presses` columns, in the order both stores read a [`Press`] from.
pub(super) const PRESS_COLUMNS: &str = "id, at, action, target, route, destination, channel, presser, \
     presser_name, source, outcome, detail";

/// Who claimed a nonce first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The display form of the presser, as given to [`Presses::claim_nonce`].
    pub by: String,
    /// When they claimed it (ms since epoch).
    pub at: i64,
}

/// Button nonces and the presses' audit trail.
#[async_trait]
pub trait Presses {
    /// Claims a button's single-use `nonce` for `by` at `at`, kept until `expires_at` (ms).
    /// `Ok(None)`: this caller won and may act. `Ok(Some(claim))`: someone claimed it first
    /// (decided by the database: a unique key / INSERT … ON CONFLICT DO NOTHING, so two
    /// replicas pressing at the same moment get one winner). A claim stands until it is
    /// released or pruned after `expires_at`, even once that has passed: a nonce is never
    /// won twice while its claim is kept.
    async fn claim_nonce(
        &self,
        nonce: &str,
        by: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<Option<Claim>, StoreError>;

    /// Gives a claimed nonce back (the action was refused by Buildkite and nothing happened),
    /// so the button can be pressed again. Only removes a claim held by `by`.
    async fn release_nonce(&self, nonce: &str, by: &str) -> Result<(), StoreError>;

    /// Records one press; returns its id.
    async fn record_press(&self, press: Press) -> Result<i64, StoreError>;

    /// The last `limit` presses, newest first (by when they were pressed, then as recorded).
    async fn presses(&self, limit: usize) -> Result<Vec<Press>, StoreError>;
}
