//! Which replica sends each destination: a lease per destination, renewed by its holder and
//! taken over by another replica when the holder stops renewing it.
//!
//! A lease carries what must hold for the destination across the cluster, not just inside one
//! process: the pause a `429` or a run of failures set, and (when let go cleanly) the pacing
//! bucket. [`LocalLeases`] is the single-process form, for a store only one process uses.

use super::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A pacing bucket as a holder left it: `tokens` at wall-clock time `at` (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Tokens left.
    pub tokens: f64,
    /// When (ms since the epoch).
    pub at: i64,
}

/// What a holder leaves for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Carry {
    /// The pacing bucket, when the destination is paced.
    pub pace: Option<Pace>,
    /// No message may be sent before this (ms since the epoch; 0: none).
    pub paused_until: i64,
    /// Failed attempts in a row.
    pub failures: u32,
}

/// How the previous holder left a destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Left {
    /// Nobody held it before.
    Fresh,
    /// Let go cleanly, with this bucket.
    Released(Option<Pace>),
    /// Its holder stopped renewing; the lease ran out this long ago (ms). The holder may have
    /// sent right up to then.
    Expired {
        /// Milliseconds since the lease ran out.
        ago_ms: i64,
    },
}

/// A destination this replica has just taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The destination's name.
    pub destination: String,
    /// This hold's number: renewals and the release name it, so a hold that was lost and taken
    /// by someone else can no longer be renewed or released by mistake.
    pub epoch: i64,
    /// How the previous holder left it.
    pub left: Left,
    /// The pause and failure count the previous holders kept.
    pub carry: Carry,
}

/// Called with a destination's name when another process has queued work for it.
pub type Ring = Arc<dyn Fn(&str) + Send + Sync>;

/// The leases' part of the store.
#[async_trait]
pub trait Leases {
    /// This process's name among the replicas sharing the store.
    fn replica(&self) -> &str;

    /// How long a hold lasts unless renewed; `None` when this process is the store's only
    /// user, so holds never run out.
    fn lease_ttl(&self) -> Option<Duration>;

    /// Says this replica is alive; returns how many replicas are (this one included).
    async fn heartbeat(&self) -> Result<usize, StoreError>;

    /// Takes those of `destinations` whose lease has been free (let go, or run out) for at
    /// least `grace`, or that this replica holds already (under a new epoch).
    async fn acquire(
        &self,
        destinations: &[String],
        grace: Duration,
    ) -> Result<Vec<Taken>, StoreError>;

    /// Renews holds, given as (destination, epoch); returns the destinations still held.
    async fn renew(&self, held: &[(String, i64)]) -> Result<Vec<String>, StoreError>;

    /// Keeps a held destination's pause and failure count, so whoever holds it next keeps the
    /// pause too.
    async fn save_pause(
        &self,
        destination: &str,
        epoch: i64,
        paused_until: i64,
        failures: u32,
    ) -> Result<(), StoreError>;

    /// Lets go of a hold, leaving `carry` to the next holder.
    async fn release(&self, destination: &str, epoch: i64, carry: Carry) -> Result<(), StoreError>;

    /// Until `cancel`, calls `ring` with a destination's name whenever another process queued
    /// work for it. Returns at once where no other process shares the store.
    async fn listen(&self, ring: Ring, cancel: CancellationToken);

    /// Says this replica has stopped (its leases are let go separately).
    async fn leave(&self) -> Result<(), StoreError>;
}

#[derive(Debug, Default)]
struct LocalLease {
    epoch: i64,
    held: bool,
    carry: Carry,
}

/// Leases for a store one process has to itself: every destination is granted at once and
/// never runs out; what a released hold carries is kept for the next worker (after a reload).
#[derive(Debug, Default, Clone)]
pub struct LocalLeases {
    leases: Arc<Mutex<HashMap<String, LocalLease>>>,
}

impl LocalLeases {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, LocalLease>) -> T) -> T {
        f(&mut self.leases.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Leases for LocalLeases {
    fn replica(&self) -> &str {
        "local"
    }

    fn lease_ttl(&self) -> Option<Duration> {
        None
    }

    async fn heartbeat(&self) -> Result<usize, StoreError> {
        Ok(1)
    }

    async fn acquire(
        &self,
        destinations: &[String],
        _grace: Duration,
    ) -> Result<Vec<Taken>, StoreError> {
        Ok(self.with(|leases| {
            destinations
                .iter()
                .map(|d| {
                    let lease = leases.entry(d.clone()).or_default();
                    let left = match (lease.epoch, lease.held) {
                        (0, _) => Left::Fresh,
                        (_, false) => Left::Released(lease.carry.pace),
                        (_, true) => Left::Expired { ago_ms: 0 },
                    };
                    lease.epoch += 1;
                    lease.held = true;
                    Taken {
                        destination: d.clone(),
                        epoch: lease.epoch,
                        left,
                        carry: lease.carry,
                    }
                })
                .collect()
        }))
    }

    async fn renew(&self, held: &[(String, i64)]) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|leases| {
            held.iter()
                .filter(|(d, epoch)| leases.get(d).is_some_and(|l| l.held && l.epoch == *epoch))
                .map(|(d, _)| d.clone())
                .collect()
        }))
    }

    async fn save_pause(
        &self,
        destination: &str,
        epoch: i64,
        paused_until: i64,
        failures: u32,
    ) -> Result<(), StoreError> {
        self.with(|leases| {
            if let Some(l) = leases.get_mut(destination).filter(|l| l.epoch == epoch) {
                l.carry.paused_until = paused_until;
                l.carry.failures = failures;
            }
        });
        Ok(())
    }

    async fn release(&self, destination: &str, epoch: i64, carry: Carry) -> Result<(), StoreError> {
        self.with(|leases| {
            if let Some(l) = leases.get_mut(destination).filter(|l| l.epoch == epoch) {
                l.held = false;
                l.carry = carry;
            }
        });
        Ok(())
    }

    async fn listen(&self, _ring: Ring, _cancel: CancellationToken) {}

    async fn leave(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_lease_is_granted_at_once_and_carries_what_its_holder_left() {
        let leases = LocalLeases::default();
        let a = vec!["a".to_string()];
        let first = leases.acquire(&a, Duration::ZERO).await.unwrap();
        assert_eq!(first[0].left, Left::Fresh);
        assert_eq!(
            leases.renew(&[("a".into(), first[0].epoch)]).await.unwrap(),
            a
        );
        leases
            .save_pause("a", first[0].epoch, 5_000, 3)
            .await
            .unwrap();
        let pace = Pace {
            tokens: 0.5,
            at: 4_000,
        };
        let carry = Carry {
            pace: Some(pace),
            paused_until: 6_000,
            failures: 4,
        };
        leases.release("a", first[0].epoch, carry).await.unwrap();
        assert!(
            leases
                .renew(&[("a".into(), first[0].epoch)])
                .await
                .unwrap()
                .is_empty(),
            "a released hold is not renewed"
        );
        let second = leases.acquire(&a, Duration::ZERO).await.unwrap();
        assert_eq!(second[0].left, Left::Released(Some(pace)));
        assert_eq!(second[0].carry, carry);
        assert!(second[0].epoch > first[0].epoch);
        // A stale holder's release changes nothing.
        leases
            .release("a", first[0].epoch, Carry::default())
            .await
            .unwrap();
        assert_eq!(
            leases
                .renew(&[("a".into(), second[0].epoch)])
                .await
                .unwrap(),
            a
        );
    }
}
