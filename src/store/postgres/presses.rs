//! Button nonces and the presses' audit trail on PostgreSQL. Which replica's press of a button
//! counts is decided by the claims table's primary key.

use super::{PgStore, timed};
use crate::store::presses::PRESS_COLUMNS;
use crate::store::{Claim, Press, Presses, StoreError};
use async_trait::async_trait;

/// How often a claim is tried again when the claim it lost to was released before it could be
/// read: each round needs the holder to claim and release again within one round trip.
const CLAIM_ROUNDS: usize = 5;

fn press(r: &tokio_postgres::Row) -> Press {
    Press {
        id: r.get(0),
        at: r.get(1),
        action: r.get(2),
        target: r.get(3),
        route: r.get(4),
        destination: r.get(5),
        channel: r.get(6),
        presser: r.get(7),
        presser_name: r.get(8),
        source: r.get(9),
        outcome: r.get(10),
        detail: r.get(11),
    }
}

#[async_trait]
impl Presses for PgStore {
    async fn claim_nonce(
        &self,
        nonce: &str,
        by: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<Option<Claim>, StoreError> {
        timed(async {
            // Durable: a claim lost to a crash would let the button be pressed twice.
            let client = self.client().await?;
            let insert = client
                .prepare_cached(
                    "INSERT INTO press_claims (nonce, claimed_by, claimed_at, expires_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (nonce) DO NOTHING",
                )
                .await?;
            let select = client
                .prepare_cached("SELECT claimed_by, claimed_at FROM press_claims WHERE nonce = $1")
                .await?;
            for _ in 0..CLAIM_ROUNDS {
                if client
                    .execute(&insert, &[&nonce, &by, &at, &expires_at])
                    .await?
                    == 1
                {
                    return Ok(None);
                }
                // Someone holds it; unless they gave it back in between, say who.
                if let Some(r) = client.query_opt(&select, &[&nonce]).await? {
                    return Ok(Some(Claim {
                        by: r.get(0),
                        at: r.get(1),
                    }));
                }
            }
            Err(StoreError::Database(format!(
                "the button's nonce was claimed and released {CLAIM_ROUNDS} times while claiming it"
            )))
        })
        .await
    }

    async fn release_nonce(&self, nonce: &str, by: &str) -> Result<(), StoreError> {
        timed(async {
            let client = self.client().await?;
            client
                .execute(
                    "DELETE FROM press_claims WHERE nonce = $1 AND claimed_by = $2",
                    &[&nonce, &by],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn record_press(&self, p: Press) -> Result<i64, StoreError> {
        timed(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO presses (at, action, target, route, destination, channel, presser, \
                     presser_name, source, outcome, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                )
                .await?;
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &p.at,
                        &p.action,
                        &p.target,
                        &p.route,
                        &p.destination,
                        &p.channel,
                        &p.presser,
                        &p.presser_name,
                        &p.source,
                        &p.outcome,
                        &p.detail,
                    ],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    async fn presses(&self, limit: usize) -> Result<Vec<Press>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {PRESS_COLUMNS} FROM presses ORDER BY at DESC, id DESC LIMIT $1"
                    ),
                    &[&(limit as i64)],
                )
                .await?;
            Ok(rows.iter().map(press).collect())
        })
        .await
    }
}
