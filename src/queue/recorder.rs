//! Attempt records, batched: an attempt's result waits a moment for others, so that many
//! share one store write (one transaction) instead of taking one each. A write per attempt
//! made every delivered event a second trip through the store's single writer.
//!
//! Nothing is answered before its batch is committed, so a worker still picks a delivery again
//! only once its last attempt is on record.

use crate::store::{Finished, Store, StoreError};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the first record of a batch waits for others. Short beside a destination's
/// answer time, so it adds little to end-to-end latency, and long enough under load for
/// dozens to gather.
const LINGER: Duration = Duration::from_millis(2);

/// The most records one write takes.
const MAX_BATCH: usize = 512;

type Answer = oneshot::Sender<Result<bool, StoreError>>;

/// Takes attempt records and writes them in batches. Cloned freely; the batching task ends
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<(Finished, Answer)>,
}

impl Recorder {
    /// Starts the batching task for `store`.
    pub fn start(store: &Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // Held weakly: the store closes (and its files are left alone) as soon as the queue
        // and its workers are gone, not whenever this task is next polled.
        tokio::spawn(batch_loop(Arc::downgrade(store), rx));
        Self { tx }
    }

    /// Records one attempt, once the batch it joined is committed: whether the delivery took
    /// its consequence (see [`Finished`]).
    pub async fn record(&self, record: Finished) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.tx
            .send((record, answer))
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

async fn batch_loop(store: Weak<dyn Store>, mut rx: mpsc::UnboundedReceiver<(Finished, Answer)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            // What is already waiting first; then, for a moment, what comes next.
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let (records, answers): (Vec<Finished>, Vec<Answer>) = batch.drain(..).unzip();
        // Written on its own, so the next batch gathers meanwhile and can join the store's
        // next commit: awaiting each write here held every record back by a whole commit
        // (deliveries then lagged intake by most of a second under load). No two batches hold
        // the same delivery: it is not picked again before its record is answered.
        let Some(store) = store.upgrade() else {
            // Shut down: the workers that sent these are gone too.
            for answer in answers {
                let _ = answer.send(Err(StoreError::Closed));
            }
            continue;
        };
        tokio::spawn(async move {
            match store.finish_attempts(records).await {
                Ok(applied) => {
                    for (answer, applied) in answers.into_iter().zip(applied) {
                        let _ = answer.send(Ok(applied));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
