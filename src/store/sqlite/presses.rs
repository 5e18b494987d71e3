//! Button nonces and the presses' audit trail, as SQL.

use super::SqliteStore;
use crate::store::presses::PRESS_COLUMNS;
use crate::store::{Claim, Press, Presses, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

/// One `presses` row, read in [`PRESS_COLUMNS`] order (also by the export).
pub(super) fn press(r: &Row<'_>) -> rusqlite::Result<Press> {
    Ok(Press {
        id: r.get(0)?,
        at: r.get(1)?,
        action: r.get(2)?,
        target: r.get(3)?,
        route: r.get(4)?,
        destination: r.get(5)?,
        channel: r.get(6)?,
        presser: r.get(7)?,
        presser_name: r.get(8)?,
        source: r.get(9)?,
        outcome: r.get(10)?,
        detail: r.get(11)?,
    })
}

#[async_trait]
impl Presses for SqliteStore {
    async fn claim_nonce(
        &self,
        nonce: &str,
        by: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<Option<Claim>, StoreError> {
        let (nonce, by) = (nonce.to_string(), by.to_string());
        // Through the one writer, so the insert and the look at who won see the same state;
        // the primary key would decide even between two processes.
        self.write(move |conn| {
            let won = conn
                .prepare_cached(
                    "INSERT INTO press_claims (nonce, claimed_by, claimed_at, expires_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (nonce) DO NOTHING",
                )?
                .execute(params![nonce, by, at, expires_at])?
                == 1;
            if won {
                return Ok(None);
            }
            conn.prepare_cached("SELECT claimed_by, claimed_at FROM press_claims WHERE nonce = ?1")?
                .query_row(params![nonce], |r| {
                    Ok(Claim {
                        by: r.get(0)?,
                        at: r.get(1)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn release_nonce(&self, nonce: &str, by: &str) -> Result<(), StoreError> {
        let (nonce, by) = (nonce.to_string(), by.to_string());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM press_claims WHERE nonce = ?1 AND claimed_by = ?2")?
                .execute(params![nonce, by])?;
            Ok(())
        })
        .await
    }

    async fn record_press(&self, p: Press) -> Result<i64, StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO presses (at, action, target, route, destination, channel, presser, \
                 presser_name, source, outcome, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                p.at,
                p.action,
                p.target,
                p.route,
                p.destination,
                p.channel,
                p.presser,
                p.presser_name,
                p.source,
                p.outcome,
                p.detail
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn presses(&self, limit: usize) -> Result<Vec<Press>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PRESS_COLUMNS} FROM presses ORDER BY at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit as i64], press)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
