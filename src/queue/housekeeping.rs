//! What the queue does every minute: logs each destination's depth and prunes what retention
//! no longer keeps.

use super::Queue;
use crate::store::now_ms;
use std::time::Duration;

/// How often queue depth is logged and old deliveries pruned.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per pruning write.
const PRUNE_CHUNK: usize = 2_000;

impl Queue {
    /// Logs the depth at start, then every minute logs it and prunes.
    pub(super) async fn housekeeping(self) {
        self.log_depth(true).await;
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.cancel.cancelled() => return,
            }
            self.log_depth(false).await;
            self.prune().await;
        }
    }

    /// Deletes what retention no longer keeps, a chunk per write so webhooks are never held up.
    async fn prune(&self) {
        let before = now_ms() - self.inner.settings.load().retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match self.inner.store.prune(before, PRUNE_CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < PRUNE_CHUNK || self.inner.cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot prune");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                rows = total,
                "pruned sent deliveries and events past retention"
            );
        }
    }

    /// Logs each destination's queue depth and oldest pending age (at start, also dead letters
    /// and queues of destinations that are no longer configured).
    async fn log_depth(&self, at_start: bool) {
        let stats = match self.inner.store.queue_stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read queue depth");
                return;
            }
        };
        let now = now_ms();
        for s in stats {
            let oldest_age_s = s.oldest_age_ms(now).map(|ms| ms / 1000);
            let configured = self.has_destination(&s.destination);
            // Among replicas, the one sending a destination speaks for its queue.
            let mine =
                self.inner.store.lease_ttl().is_none() || self.inner.cluster.holds(&s.destination);
            if s.pending > 0 && !configured {
                tracing::warn!(destination = %s.destination, pending = s.pending, "pending deliveries for a destination that is not configured or is disabled: they wait until it is back");
            } else if mine && (s.pending > 0 || (at_start && s.dead > 0)) {
                tracing::info!(destination = %s.destination, pending = s.pending, oldest_age_s, dead = s.dead, "queue depth");
            }
        }
    }
}
