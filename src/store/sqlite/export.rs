//! Reading an embedded store for `kitebridge store copy`: the file opened read-only (never
//! created or migrated), one read transaction for the whole copy, and only what a shared store
//! needs to carry on ([`crate::store::copy`]): pending deliveries and dead letters with their
//! events, attempts and digest links, branch histories, Slack message ids, the events (with
//! their keys) still inside the duplicate window, and the action buttons' claims and audit
//! trail. Sent deliveries stay behind.

use super::MIGRATIONS;
use super::presses::press;
use crate::store::copy::{
    AttemptRow, Batch, BuildStateRow, ClaimRow, CopyError, DedupeKeyRow, DeliveryRow, EventRow,
    Extent, LinkRow, MessageRefRow,
};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, Row};
use std::path::Path;

/// What is read, in this order: each part refers only to the parts before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Events,
    Deliveries,
    Attempts,
    Links,
    BuildStates,
    MessageRefs,
    DedupeKeys,
    Claims,
    Presses,
}

const PARTS: [Part; 9] = [
    Part::Events,
    Part::Deliveries,
    Part::Attempts,
    Part::Links,
    Part::BuildStates,
    Part::MessageRefs,
    Part::DedupeKeys,
    Part::Claims,
    Part::Presses,
];

/// An embedded store as it was at one moment, open for reading.
#[derive(Debug)]
pub struct Snapshot {
    conn: Connection,
    /// Its schema version (1 has no digests, transitions or message ids; before 4 there are no
    /// action buttons).
    version: usize,
    /// Events received at or after this (ms) are inside the duplicate window.
    dedupe_since: Option<i64>,
}

impl Snapshot {
    /// Opens the store at `path` read-only and starts the read transaction every batch is read
    /// in. Refuses a missing file, one that is not a kitebridge store, and a schema newer than
    /// this binary's. `dedupe_since` is the start of the duplicate window (`None`: off).
    pub fn open(path: &Path, dedupe_since: Option<i64>) -> Result<Self, CopyError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(CopyError::Source("not a file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CopyError::Source("no such file".into()));
            }
            Err(e) => return Err(CopyError::Source(e.to_string())),
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Deferred: the snapshot is taken by the first read below and holds until the end.
        conn.execute_batch("BEGIN")?;
        let not_a_store =
            |why: &str| CopyError::Source(format!("not a kitebridge SQLite store ({why})"));
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => not_a_store(&e.to_string()),
                _ => e.into(),
            })?;
        let known = MIGRATIONS.len();
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > known {
            return Err(CopyError::Source(format!(
                "the store has schema version {version}, newer than this kitebridge knows ({known}): copy it with a kitebridge at least as new as the one that wrote it"
            )));
        }
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('events', 'deliveries', 'attempts')",
            [],
            |r| r.get(0),
        )?;
        if version == 0 || tables != 3 {
            return Err(not_a_store("no kitebridge tables"));
        }
        Ok(Self {
            conn,
            version,
            dedupe_since,
        })
    }

    /// The highest ids the store has given.
    pub fn extent(&self) -> Result<Extent, CopyError> {
        let max = |table: &str| -> Result<i64, CopyError> {
            Ok(self.conn.query_row(
                &format!("SELECT COALESCE(MAX(rowid), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?)
        };
        Ok(Extent {
            events: max("events")?,
            deliveries: max("deliveries")?,
            attempts: max("attempts")?,
        })
    }

    /// Everything that is copied, in batches of at most `size` rows of one kind, each kind
    /// after the ones it refers to.
    pub fn batches(&self, size: usize) -> Batches<'_> {
        Batches {
            snapshot: self,
            part: 0,
            after: i64::MIN,
            size: size.max(1),
        }
    }

    /// Up to `size` rows of `part` after the cursor `after`, with the new cursor; `None` when
    /// the part is done.
    fn read(&self, part: Part, after: i64, size: usize) -> rusqlite::Result<Option<(Batch, i64)>> {
        let v2 = self.version >= 2;
        if !v2 && matches!(part, Part::Links | Part::BuildStates | Part::MessageRefs) {
            return Ok(None); // schema 1 has no such tables
        }
        if self.version < 4 && matches!(part, Part::Claims | Part::Presses) {
            return Ok(None); // no action buttons before schema 4
        }
        if part == Part::DedupeKeys && self.dedupe_since.is_none() {
            return Ok(None);
        }
        let sql = sql(part, v2);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let limit = size as i64;
        let all: [&dyn ToSql; 3] = [&after, &limit, &self.dedupe_since];
        let used = stmt.parameter_count();
        let mut rows = stmt.query(&all[..used])?;
        let mut cursor = after;
        macro_rules! collect {
            ($variant:ident, $row:expr) => {{
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    cursor = r.get(0)?;
                    out.push($row(r)?);
                }
                (!out.is_empty()).then(|| (Batch::$variant(out), cursor))
            }};
        }
        Ok(match part {
            Part::Events => collect!(Events, event),
            Part::Deliveries => collect!(Deliveries, delivery),
            Part::Attempts => collect!(Attempts, attempt),
            Part::Links => collect!(Links, link),
            Part::BuildStates => collect!(BuildStates, build_state),
            Part::MessageRefs => collect!(MessageRefs, message_ref),
            Part::DedupeKeys => collect!(DedupeKeys, dedupe_key),
            Part::Claims => collect!(Claims, claim),
            Part::Presses => collect!(Presses, press),
        })
    }
}

/// The batches of a [`Snapshot`], read as they are asked for.
#[derive(Debug)]
pub struct Batches<'a> {
    snapshot: &'a Snapshot,
    part: usize,
    after: i64,
    size: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, CopyError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(&part) = PARTS.get(self.part) {
            match self.snapshot.read(part, self.after, self.size) {
                Ok(Some((batch, cursor))) => {
                    self.after = cursor;
                    return Some(Ok(batch));
                }
                Ok(None) => {
                    self.part += 1;
                    self.after = i64::MIN;
                }
                Err(e) => {
                    self.part = PARTS.len();
                    return Some(Err(e.into()));
                }
            }
        }
        None
    }
}

/// Each part's query. The first column is the cursor (a row id, or the latest event of a
/// duplicate key), `?1` the cursor to go on from, `?2` the batch size, `?3` the start of the
/// duplicate window. A delivery is copied unless it was sent; so are its attempts, its
/// digest's links and every event it names.
fn sql(part: Part, v2: bool) -> String {
    let unless_v1 = |column: &str| {
        if v2 {
            column.to_string()
        } else {
            "NULL".into()
        }
    };
    match part {
        Part::Events => format!(
            "SELECT e.id, e.name, e.body, e.body_hash, e.received_at, {transition} FROM events e \
             WHERE e.id > ?1 AND (e.received_at >= ?3 \
             OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state <> 'sent') {links}) \
             ORDER BY e.id LIMIT ?2",
            transition = unless_v1("e.transition"),
            links = if v2 {
                "OR EXISTS (SELECT 1 FROM delivery_events de JOIN deliveries d ON d.id = de.delivery_id \
                 WHERE de.event_id = e.id AND d.state <> 'sent')"
            } else {
                ""
            },
        ),
        Part::Deliveries => format!(
            "SELECT id, event_id, route, destination, template, state, attempts, created_at, age_from, \
             next_attempt_at, updated_at, last_status, last_error, body, {}, {}, {} \
             FROM deliveries WHERE id > ?1 AND state <> 'sent' ORDER BY id LIMIT ?2",
            unless_v1("group_key"),
            unless_v1("group_closes_at"),
            unless_v1("thread_key"),
        ),
        Part::Attempts => {
            "SELECT a.rowid, a.delivery_id, a.at, a.status, a.outcome, a.reason, a.latency_ms \
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE a.rowid > ?1 AND d.state <> 'sent' ORDER BY a.rowid LIMIT ?2"
                .into()
        }
        Part::Links => "SELECT de.rowid, de.delivery_id, de.event_id \
             FROM delivery_events de JOIN deliveries d ON d.id = de.delivery_id \
             WHERE de.rowid > ?1 AND d.state <> 'sent' ORDER BY de.rowid LIMIT ?2"
            .into(),
        Part::BuildStates => {
            "SELECT rowid, pipeline, branch, number, failed, consecutive_failures, finished_at, \
             updated_at FROM build_states WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
                .into()
        }
        Part::MessageRefs => {
            "SELECT rowid, destination, key, channel, ts, rank, event_id, updated_at \
             FROM message_refs WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
                .into()
        }
        // One key per body: the latest copy inside the window (SQLite takes the bare column
        // from the row MAX picks).
        Part::DedupeKeys => "SELECT MAX(id), body_hash, received_at FROM events \
             WHERE received_at >= ?3 AND id > ?1 GROUP BY body_hash ORDER BY MAX(id) LIMIT ?2"
            .into(),
        // Expired ones too: the shared store prunes them as it would its own.
        Part::Claims => "SELECT rowid, nonce, claimed_by, claimed_at, expires_at \
             FROM press_claims WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            .into(),
        Part::Presses => "SELECT id, at, action, target, route, destination, channel, presser, \
             presser_name, source, outcome, detail FROM presses WHERE id > ?1 ORDER BY id LIMIT ?2"
            .into(),
    }
}

fn event(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        name: r.get(1)?,
        body: r.get(2)?,
        body_hash: r.get(3)?,
        received_at: r.get(4)?,
        transition: r.get(5)?,
    })
}

fn delivery(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        route: r.get(2)?,
        destination: r.get(3)?,
        template: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        created_at: r.get(7)?,
        age_from: r.get(8)?,
        next_attempt_at: r.get(9)?,
        updated_at: r.get(10)?,
        last_status: r.get(11)?,
        last_error: r.get(12)?,
        body: r.get(13)?,
        group_key: r.get(14)?,
        group_closes_at: r.get(15)?,
        thread_key: r.get(16)?,
    })
}

fn attempt(r: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        id: r.get(0)?,
        delivery_id: r.get(1)?,
        at: r.get(2)?,
        status: r.get(3)?,
        outcome: r.get(4)?,
        reason: r.get(5)?,
        latency_ms: r.get(6)?,
    })
}

fn link(r: &Row<'_>) -> rusqlite::Result<LinkRow> {
    Ok(LinkRow {
        delivery_id: r.get(1)?,
        event_id: r.get(2)?,
    })
}

fn build_state(r: &Row<'_>) -> rusqlite::Result<BuildStateRow> {
    Ok(BuildStateRow {
        pipeline: r.get(1)?,
        branch: r.get(2)?,
        number: r.get(3)?,
        failed: r.get(4)?,
        consecutive_failures: r.get(5)?,
        finished_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn message_ref(r: &Row<'_>) -> rusqlite::Result<MessageRefRow> {
    Ok(MessageRefRow {
        destination: r.get(1)?,
        key: r.get(2)?,
        channel: r.get(3)?,
        ts: r.get(4)?,
        rank: r.get(5)?,
        event_id: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn dedupe_key(r: &Row<'_>) -> rusqlite::Result<DedupeKeyRow> {
    Ok(DedupeKeyRow {
        event_id: r.get(0)?,
        body_hash: r.get(1)?,
        received_at: r.get(2)?,
    })
}

fn claim(r: &Row<'_>) -> rusqlite::Result<ClaimRow> {
    Ok(ClaimRow {
        nonce: r.get(1)?,
        claimed_by: r.get(2)?,
        claimed_at: r.get(3)?,
        expires_at: r.get(4)?,
    })
}
