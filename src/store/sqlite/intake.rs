//! Taking in one event, inside the shared transaction: duplicate check, the branch's build
//! history, the deliveries (joining open digests), all or nothing.

use crate::store::{Accepted, Group, NewEvent, Planner};
use crate::transition::{LastBuild, Transition, next};
use rusqlite::{Connection, OptionalExtension, params};

/// Works out the transition of a counting build and records it as its branch's last build.
fn transition(conn: &Connection, event: &NewEvent) -> rusqlite::Result<Option<Transition>> {
    let Some(build) = &event.build else {
        return Ok(None);
    };
    let last = conn
        .prepare_cached(
            "SELECT number, failed, consecutive_failures, finished_at FROM build_states WHERE pipeline = ?1 AND branch = ?2",
        )?
        .query_row(params![build.pipeline, build.branch], |r| {
            Ok(LastBuild {
                number: r.get::<_, i64>(0)? as u64,
                failed: r.get(1)?,
                consecutive_failures: r.get(2)?,
                finished_at: r.get(3)?,
            })
        })
        .optional()?;
    let Some((transition, recorded)) = next(last.as_ref(), build) else {
        return Ok(None);
    };
    conn.prepare_cached(
        "INSERT INTO build_states (pipeline, branch, number, failed, consecutive_failures, finished_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (pipeline, branch) DO UPDATE SET number = ?3, failed = ?4, consecutive_failures = ?5, \
         finished_at = ?6, updated_at = ?7",
    )?
    .execute(params![
        build.pipeline,
        build.branch,
        recorded.number as i64,
        recorded.failed,
        recorded.consecutive_failures,
        recorded.finished_at,
        event.received_at
    ])?;
    Ok(Some(transition))
}

/// The duplicate check's index groups keys by the minute a body arrived (schema v5's
/// `events_by_minute`, whose expression this must match).
const KEY_MINUTE_MS: i64 = 60_000;

/// The first event received at or after `since` whose body has the SHA-256 `hash`; `now` is
/// the new event's own time.
pub(super) fn earlier_copy(
    conn: &Connection,
    hash: &[u8],
    since: i64,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    // One probe of the index per minute of the window: each lands on the few keys of that
    // minute with these first bytes, never on the whole store. Divided as SQLite divides
    // integers, so each minute is the index's own.
    let last = now / KEY_MINUTE_MS;
    let minutes: Vec<i64> = (since / KEY_MINUTE_MS..=last).collect();
    let minutes = serde_json::to_string(&minutes).expect("numbers serialise");
    let mut within = conn.prepare_cached(
        "SELECT min(id) FROM events INDEXED BY events_by_minute \
         WHERE received_at / 60000 IN (SELECT value FROM json_each(?1)) \
         AND substr(body_hash, 1, 8) = substr(?2, 1, 8) AND body_hash = ?2 AND received_at >= ?3",
    )?;
    let first: Option<i64> = within.query_row(params![minutes, hash, since], |r| r.get(0))?;
    // A copy stamped in a later minute than this event: times are taken before the writer
    // puts concurrent requests in order, and clocks step back. Normally there is no such row,
    // so this range of the index is empty.
    let mut after = conn.prepare_cached(
        "SELECT min(id) FROM events INDEXED BY events_by_minute \
         WHERE received_at / 60000 > ?1 AND body_hash = ?2",
    )?;
    let later: Option<i64> = after.query_row(params![last, hash], |r| r.get(0))?;
    Ok(first.into_iter().chain(later).min())
}

/// Stores `event` (whose body has the SHA-256 `hash`) and what `plan` decides for it.
pub(super) fn accept(
    conn: &Connection,
    event: NewEvent,
    hash: Vec<u8>,
    mut plan: Planner,
    dedupe_since: Option<i64>,
) -> rusqlite::Result<Accepted> {
    if let Some(since) = dedupe_since
        && let Some(event_id) = earlier_copy(conn, &hash, since, event.received_at)?
    {
        return Ok(Accepted::Duplicate { event_id });
    }
    let transition = transition(conn, &event)?;
    let deliveries = plan(transition.as_ref());
    let transition_json = transition
        .as_ref()
        .map(|t| serde_json::to_string(t).expect("a transition serialises"));
    conn.prepare_cached("INSERT INTO events (name, body, body_hash, received_at, transition) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![event.name, &event.body[..], hash, event.received_at, transition_json])?;
    let event_id = conn.last_insert_rowid();
    let received = event.received_at;
    // Whether a digest is still open is judged by the writer's clock: a worker closes a digest
    // (through this same writer) before reading its events, so nothing joins one that is
    // already being sent.
    let writer_now = crate::store::now_ms();
    let mut delivery_ids = Vec::with_capacity(deliveries.len());
    for d in &deliveries {
        let Some(Group { key, window_ms }) = &d.group else {
            // max_age counts from when a message may first be sent (after a mute hold).
            let due = d.not_before.map_or(received, |t| t.max(received));
            conn.prepare_cached(
                "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
                 next_attempt_at, updated_at, thread_key) VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6, ?5, ?7)",
            )?
            .execute(params![event_id, d.route, d.destination, d.template, received, due, d.thread_key])?;
            delivery_ids.push(conn.last_insert_rowid());
            continue;
        };
        let open: Option<i64> = conn
            .prepare_cached(
                "SELECT id FROM deliveries WHERE destination = ?1 AND route = ?2 AND group_key = ?3 \
                 AND state = 'pending' AND attempts = 0 AND group_closes_at > ?4 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![d.destination, d.route, key, writer_now], |r| r.get(0))
            .optional()?;
        let id = match open {
            Some(id) => {
                // A held event holds the whole digest (and keeps it open) until it may be sent.
                if let Some(t) = d.not_before {
                    conn.prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = MAX(next_attempt_at, ?2), age_from = MAX(age_from, ?2), \
                         group_closes_at = MAX(group_closes_at, ?2) WHERE id = ?1",
                    )?
                    .execute(params![id, t])?;
                }
                id
            }
            None => {
                // A digest opened while muted stays open until the mute ends, so a quiet night
                // gives one message in the morning, not one per window.
                let closes = d
                    .not_before
                    .map_or(received + window_ms, |t| t.max(received + window_ms));
                conn.prepare_cached(
                    "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
                     next_attempt_at, updated_at, group_key, group_closes_at, thread_key) \
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6, ?5, ?7, ?6, ?8)",
                )?
                .execute(params![event_id, d.route, d.destination, d.template, received, closes, key, d.thread_key])?;
                conn.last_insert_rowid()
            }
        };
        conn.prepare_cached("INSERT INTO delivery_events (delivery_id, event_id) VALUES (?1, ?2)")?
            .execute(params![id, event_id])?;
        delivery_ids.push(id);
    }
    Ok(Accepted::New {
        event_id,
        delivery_ids,
        transition,
    })
}
