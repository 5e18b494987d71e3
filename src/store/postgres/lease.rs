//! Leases and notifications on PostgreSQL: who sends each destination, renewed by the holder
//! and timed by the database's clock; replicas' heartbeats; and `LISTEN`, so the holder of a
//! destination hears at once when another replica stored work for it.

use super::{CHANNEL, FROM, PgStore, Tls, timed};
use crate::store::{Carry, Leases, Left, Pace, Ring, StoreError, Taken};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::time::Duration;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};
use tokio_util::sync::CancellationToken;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Leases for PgStore {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn lease_ttl(&self) -> Option<Duration> {
        Some(self.options.lease)
    }

    async fn heartbeat(&self) -> Result<usize, StoreError> {
        let ttl = ms(self.options.lease);
        timed(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO replicas (id, seen_at) VALUES ($1, now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                    &[&&*self.replica],
                )
                .await?;
            let n: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM replicas WHERE seen_at > now() - $1::bigint * interval '1 millisecond'",
                    &[&ttl],
                )
                .await?
                .get(0);
            Ok(n.max(1) as usize)
        })
        .await
    }

    async fn acquire(
        &self,
        destinations: &[String],
        grace: Duration,
    ) -> Result<Vec<Taken>, StoreError> {
        // Sorted, so two replicas taking overlapping sets lock rows in the same order.
        let mut wanted = destinations.to_vec();
        wanted.sort();
        let (ttl, grace) = (ms(self.options.lease), ms(grace));
        timed(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO leases (destination, holder, epoch, expires_at) \
                     SELECT d, $1, 1, now() + $2::bigint * interval '1 millisecond' FROM unnest($3::text[]) d \
                     ON CONFLICT (destination) DO UPDATE SET holder = EXCLUDED.holder, epoch = leases.epoch + 1, \
                     expires_at = EXCLUDED.expires_at, released = false, \
                     prev_expires_at = leases.expires_at, prev_released = leases.released \
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= now() - $4::bigint * interval '1 millisecond' \
                     RETURNING destination, epoch, prev_expires_at IS NULL, COALESCE(prev_released, false), \
                     COALESCE((extract(epoch FROM now() - prev_expires_at) * 1000)::bigint, 0), \
                     tokens, tokens_at, paused_until, failures",
                )
                .await?;
            let rows = client
                .query(&stmt, &[&&*self.replica, &ttl, &wanted, &grace])
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let fresh: bool = r.get(2);
                    let released: bool = r.get(3);
                    let pace = match (r.get::<_, Option<f64>>(5), r.get::<_, Option<i64>>(6)) {
                        (Some(tokens), Some(at)) => Some(Pace { tokens, at }),
                        _ => None,
                    };
                    let left = if fresh {
                        Left::Fresh
                    } else if released {
                        Left::Released(pace)
                    } else {
                        Left::Expired {
                            ago_ms: r.get::<_, i64>(4).max(0),
                        }
                    };
                    Taken {
                        destination: r.get(0),
                        epoch: r.get(1),
                        left,
                        carry: Carry {
                            pace,
                            paused_until: r.get(7),
                            failures: r.get::<_, i32>(8).max(0) as u32,
                        },
                    }
                })
                .collect())
        })
        .await
    }

    async fn renew(&self, held: &[(String, i64)]) -> Result<Vec<String>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (names, epochs): (Vec<String>, Vec<i64>) = held.iter().cloned().unzip();
        let ttl = ms(self.options.lease);
        timed(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "UPDATE leases SET expires_at = now() + $2::bigint * interval '1 millisecond' \
                     FROM unnest($3::text[], $4::bigint[]) AS h(destination, epoch) \
                     WHERE leases.destination = h.destination AND leases.epoch = h.epoch \
                     AND leases.holder = $1 AND NOT leases.released RETURNING leases.destination",
                )
                .await?;
            let rows = client
                .query(&stmt, &[&&*self.replica, &ttl, &names, &epochs])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn save_pause(
        &self,
        destination: &str,
        epoch: i64,
        paused_until: i64,
        failures: u32,
    ) -> Result<(), StoreError> {
        timed(async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE leases SET paused_until = $3, failures = $4 \
                     WHERE destination = $1 AND epoch = $2 AND holder = $5",
                    &[
                        &destination,
                        &epoch,
                        &paused_until,
                        &(failures.min(i32::MAX as u32) as i32),
                        &&*self.replica,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn release(&self, destination: &str, epoch: i64, carry: Carry) -> Result<(), StoreError> {
        timed(async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE leases SET expires_at = now(), released = true, tokens = $3, tokens_at = $4, \
                     paused_until = $5, failures = $6 WHERE destination = $1 AND epoch = $2 AND holder = $7",
                    &[
                        &destination,
                        &epoch,
                        &carry.pace.map(|p| p.tokens),
                        &carry.pace.map(|p| p.at),
                        &carry.paused_until,
                        &(carry.failures.min(i32::MAX as u32) as i32),
                        &&*self.replica,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn listen(&self, ring: Ring, cancel: CancellationToken) {
        let mut failing = false;
        while !cancel.is_cancelled() {
            let result = match &self.tls {
                Tls::Plain => {
                    listen_once(&self.options.config, NoTls, &self.replica, &ring, &cancel).await
                }
                Tls::Rustls(c) => {
                    let tls = c.clone();
                    listen_once(&self.options.config, tls, &self.replica, &ring, &cancel).await
                }
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    // Workers still look at their queues every second meanwhile.
                    if !failing {
                        tracing::warn!(error = %e, "storage: not listening for other replicas' work; reconnecting");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    async fn leave(&self) -> Result<(), StoreError> {
        timed(async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM replicas WHERE id = $1", &[&&*self.replica])
                .await?;
            Ok(())
        })
        .await
    }
}

/// One listening connection, until it fails (`Err`) or `cancel` (`Ok`); notifications that
/// `own` (this replica's name) signed are not rung.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    own: &str,
    ring: &Ring,
    cancel: &CancellationToken,
) -> Result<(), StoreError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = timed(async { Ok(config.connect(tls).await?) }).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven here; its notifications come out of the messages it reads.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(e) => return StoreError::from(e),
            }
        }
        StoreError::Database("the listening connection closed".into())
    });
    let listening = timed(async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(())
    })
    .await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    tracing::debug!("storage: listening for other replicas' work");
    let mut driver = driver;
    loop {
        tokio::select! {
            Some(payload) = rx.recv() => {
                if let Some(destination) = heard(&payload, own) {
                    ring(destination);
                }
            }
            ended = &mut driver => {
                return Err(ended.unwrap_or_else(|e| StoreError::Database(e.to_string())));
            }
            () = cancel.cancelled() => {
                driver.abort();
                return Ok(());
            }
        }
    }
}

/// The destination a notification names, unless `own` sent it. Notifications of the command
/// line (and of replicas older than the signature) are a bare destination.
fn heard<'a>(payload: &'a str, own: &str) -> Option<&'a str> {
    match payload.rsplit_once(FROM) {
        Some((_, from)) if from == own => None,
        Some((destination, _)) => Some(destination),
        None => Some(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_hears_other_replicas_and_the_command_line_but_not_itself() {
        let signed = |d: &str, from: &str| format!("{d}{FROM}{from}");
        assert_eq!(heard(&signed("slack", "a-1-x"), "a-1-x"), None);
        assert_eq!(heard(&signed("slack", "b-2-y"), "a-1-x"), Some("slack"));
        assert_eq!(heard("slack", "a-1-x"), Some("slack"), "`deliveries retry`");
        assert_eq!(
            heard(&signed("odd\u{1f}name", "b-2-y"), "a-1-x"),
            Some("odd\u{1f}name"),
            "the replica's name is after the last separator"
        );
    }
}
