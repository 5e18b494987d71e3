//! `kitebridge store copy`: moving from the embedded store to a shared one. Reads the old
//! SQLite file (read-only, one snapshot) on a blocking thread while the rows it yields are
//! written into the configured PostgreSQL store in one transaction, then prints what arrived.

use crate::config::Config;
use crate::store::copy::{Copied, CopyError};
use crate::store::sqlite::Snapshot;
use crate::store::{PgStore, Schema, StoreConfig, now_ms};
use std::path::Path;
use std::process::ExitCode;

/// Rows per batch: large enough that a round trip carries many, small enough (a few MB of
/// bodies) that reading and writing overlap.
const BATCH: usize = 1000;

/// Batches read ahead of the writer.
const READ_AHEAD: usize = 4;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

/// `n` and its noun, singular or plural.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The summary line.
fn summary(c: &Copied) -> String {
    format!(
        "copied {}, {}, {} ({}), {}, {}, {}, {}, {}",
        count(c.pending, "pending delivery", "pending deliveries"),
        count(c.dead, "dead letter", "dead letters"),
        count(c.digests, "open digest", "open digests"),
        count(c.digest_events, "event", "events"),
        count(c.build_states, "branch history", "branch histories"),
        count(c.message_refs, "message id", "message ids"),
        count(c.dedupe_keys, "duplicate key", "duplicate keys"),
        count(c.claims, "button claim", "button claims"),
        count(c.presses, "button press", "button presses"),
    )
}

/// `store copy --config FILE --from OLD.db [--force]`.
pub fn run(config: &Config, from: &Path, force: bool) -> ExitCode {
    let StoreConfig::Postgres(options) = &config.storage else {
        return fail(format!(
            "{}: store copy copies into a shared store: set [storage] url (this config uses the embedded store {})",
            config.path.display(),
            config.storage.shown()
        ));
    };
    let shown = config.storage.shown();
    // The window as serve would judge a body arriving now.
    let since = config
        .queue
        .dedupe_window
        .map(|w| now_ms() - i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
    let opened = Snapshot::open(from, since).and_then(|s| Ok((s.extent()?, s)));
    let (extent, snapshot) = match opened {
        Ok(found) => found,
        Err(e) => return fail(format!("{}: {e}", from.display())),
    };
    let rt = super::runtime();
    let store = match rt.block_on(PgStore::connect((**options).clone(), Schema::Migrate)) {
        Ok(s) => s,
        Err(e) => return fail(format!("{shown}: {e}")),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = rt.spawn_blocking(move || {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for batch in snapshot.batches(BATCH) {
                // A closed channel: the writer gave up, and says why.
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        }));
        // The end of the batches commits the copy: a reader that died must not end them.
        if read.is_err() {
            let stopped = CopyError::Source("reading stopped unexpectedly".into());
            let _ = tx.blocking_send(Err(stopped));
        }
    });
    let batches = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let result = rt.block_on(store.import(extent, force, batches));
    let _ = rt.block_on(reader);
    match result {
        Ok(copied) => {
            println!("{}", summary(&copied));
            ExitCode::SUCCESS
        }
        Err(CopyError::Source(e)) => fail(format!("{}: {e}", from.display())),
        Err(e) => fail(format!("{shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_kind_singular_or_plural() {
        let c = Copied {
            pending: 12,
            dead: 1,
            digests: 2,
            digest_events: 7,
            build_states: 41,
            message_refs: 1,
            dedupe_keys: 230,
            claims: 1,
            presses: 3,
            ..Copied::default()
        };
        assert_eq!(
            summary(&c),
            "copied 12 pending deliveries, 1 dead letter, 2 open digests (7 events), 41 branch histories, 1 message id, 230 duplicate keys, 1 button claim, 3 button presses"
        );
    }
}
