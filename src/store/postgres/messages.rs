//! The Slack app's message per build on PostgreSQL.

use super::{PgStore, timed};
use crate::store::{MessageIds, MessageRef, Progress, StoreError};
use async_trait::async_trait;

#[async_trait]
impl MessageIds for PgStore {
    async fn message_ref(
        &self,
        destination: &str,
        key: &str,
    ) -> Result<Option<MessageRef>, StoreError> {
        timed(async {
            let client = self.bookkeeping().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT channel, ts, rank, event_id FROM message_refs WHERE destination = $1 AND key = $2",
                )
                .await?;
            Ok(client
                .query_opt(&stmt, &[&destination, &key])
                .await?
                .map(|r| MessageRef {
                    channel: r.get(0),
                    ts: r.get(1),
                    as_of: Progress {
                        rank: r.get(2),
                        event_id: r.get(3),
                    },
                }))
        })
        .await
    }

    async fn set_message_ref(
        &self,
        destination: &str,
        key: &str,
        message: MessageRef,
    ) -> Result<(), StoreError> {
        let now = crate::store::now_ms();
        timed(async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO message_refs (destination, key, channel, ts, rank, event_id, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (destination, key) DO UPDATE SET channel = $3, ts = $4, rank = $5, event_id = $6, updated_at = $7 \
                     WHERE (EXCLUDED.rank, EXCLUDED.event_id) >= (message_refs.rank, message_refs.event_id)",
                )
                .await?;
            client
                .execute(
                    &stmt,
                    &[
                        &destination,
                        &key,
                        &message.channel,
                        &message.ts,
                        &message.as_of.rank,
                        &message.as_of.event_id,
                        &now,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }
}
