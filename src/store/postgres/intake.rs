//! Taking in events on PostgreSQL, in batches. Whatever the webhook handlers hand a writer
//! while it is busy waits for it to finish, and then it takes all of that (up to
//! [`MAX_BATCH`]) in one transaction: one commit and one flush of the log, and a handful of
//! statements and round trips whatever the batch's size. In it, all or nothing: the duplicate
//! check by a unique key, each branch's build history and each digest's membership under
//! advisory locks, then the events, their deliveries and a `NOTIFY` per destination.
//!
//! Every transaction takes its locks in one order (body hashes, then branches, then digest
//! groups, each sorted), so two replicas' batches never wait for each other in a circle. A
//! batch the database refuses is taken again one event at a time, so one event's failure is
//! its own; a database that does not answer fails the batch as it would each event.

use super::{CHANNEL, Conn, FROM, OPERATION_TIMEOUT, PgStore, lock_key, no_answer, timed};
use crate::store::{Accepted, Intake, NewDelivery, NewEvent, Planner, StoreError};
use crate::transition::{LastBuild, Transition, next};
use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

/// Most events in one transaction: enough that a busy store commits rarely, few enough that
/// a batch's statements stay small.
const MAX_BATCH: usize = 64;

/// Events waiting for one writer, beyond which handlers wait to hand theirs in.
const QUEUE: usize = 1024;

/// One event handed to the writers, with where its answer goes.
struct Job {
    event: NewEvent,
    hash: Vec<u8>,
    plan: Planner,
    since: Option<i64>,
    /// Not started after this, it is answered as a store that did not answer in time.
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

impl Job {
    /// The duplicate window in ms (`None`: no check). Jobs with different windows (a reload
    /// between them) go in different batches, as the claim statement takes one window.
    fn window(&self) -> Option<i64> {
        self.since.map(|s| self.event.received_at - s)
    }
}

/// The batching intake of one store, shared by its clones. The writers start with the first
/// event, on the runtime that takes it, and stop when the last clone of the store is gone.
///
/// Each writer has a queue of its own. A finished build goes to the writer its branch maps
/// to, so this replica's builds of one branch never wait for each other's locks in separate
/// transactions, and the other events go to the writer with the least in hand, so they do
/// not queue behind a branch's lock at all.
pub(super) struct Batcher {
    writers: usize,
    /// Ends each notification ([`FROM`] and this replica's name), so the replica does not
    /// answer its own.
    signature: Arc<str>,
    started: OnceLock<Vec<Writer>>,
}

/// One writer's queue, and how many events it holds (queued or being written).
struct Writer {
    queue: mpsc::Sender<Job>,
    load: Arc<AtomicUsize>,
}

impl Batcher {
    /// An intake that writes with up to `writers` transactions at once, for the replica
    /// named `from`.
    pub(super) fn new(writers: usize, from: &str) -> Self {
        Self {
            writers: writers.max(1),
            signature: format!("{FROM}{from}").into(),
            started: OnceLock::new(),
        }
    }

    /// Keeps `event` and what `plan` decides for it, in the next batch.
    pub(super) async fn accept(
        &self,
        pool: &Pool,
        event: NewEvent,
        plan: Planner,
        since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        let writers = self
            .started
            .get_or_init(|| start(pool, self.writers, &self.signature));
        let writer = &writers[choose(writers, &event)];
        let hash = sha2::Sha256::digest(&event.body).to_vec();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            event,
            hash,
            plan,
            since,
            deadline: tokio::time::Instant::now() + OPERATION_TIMEOUT,
            reply,
        };
        let stopped = || StoreError::Database("the store's intake has stopped".into());
        writer.load.fetch_add(1, Ordering::Relaxed);
        if writer.queue.send(job).await.is_err() {
            writer.load.fetch_sub(1, Ordering::Relaxed);
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// Which writer takes `event`: its branch's for a finished build, else the least loaded.
fn choose(writers: &[Writer], event: &NewEvent) -> usize {
    match &event.build {
        Some(b) => {
            (lock_key("branch", &[&b.pipeline, &b.branch]) as u64 % writers.len() as u64) as usize
        }
        None => (0..writers.len())
            .min_by_key(|&i| writers[i].load.load(Ordering::Relaxed))
            .unwrap_or(0),
    }
}

/// Starts `writers` tasks, each taking batches from its own queue and signing its
/// notifications with `signature`.
fn start(pool: &Pool, writers: usize, signature: &Arc<str>) -> Vec<Writer> {
    (0..writers)
        .map(|_| {
            let (queue, mut rx) = mpsc::channel(QUEUE);
            let load = Arc::new(AtomicUsize::new(0));
            let (pool, held, signature) = (pool.clone(), load.clone(), signature.clone());
            tokio::spawn(async move {
                while let Some(jobs) = gather(&mut rx).await {
                    let taken = jobs.len();
                    // A batch of its own task: should writing one ever panic, its events are
                    // answered (their senders dropped) and this writer goes on.
                    let (pool, signature) = (pool.clone(), signature.clone());
                    if let Err(e) =
                        tokio::spawn(async move { take(&pool, jobs, &signature).await }).await
                    {
                        tracing::error!(error = %e, "storage: an intake batch failed unexpectedly");
                    }
                    held.fetch_sub(taken, Ordering::Relaxed);
                }
            });
            Writer { queue, load }
        })
        .collect()
}

/// Waits for an event, then takes whatever else is waiting; `None` once the store is gone.
async fn gather(rx: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let first = rx.recv().await?;
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Writes `jobs` and answers each: in batches of equal windows and distinct bodies (a second
/// copy of a body goes in the batch after the first's, so it finds the first), each batch
/// again one event at a time if the database refused it.
async fn take(pool: &Pool, jobs: Vec<Job>, signature: &str) {
    // Whoever stopped waiting (the request went away) is not written; whoever waited past the
    // operation timeout behind a store that is not answering is told so, as before batching.
    let now = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.reply.is_closed() {
            continue;
        }
        if job.deadline <= now {
            let _ = job.reply.send(Err(no_answer()));
            continue;
        }
        pending.push(job);
    }
    while !pending.is_empty() {
        let (mut now, later) = split(pending);
        pending = later;
        match timed_batch(pool, &mut now, signature).await {
            Ok(answers) => {
                for (job, answer) in now.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) if now.len() > 1 && e.refused() => {
                tracing::warn!(events = now.len(), error = %e.store(), "storage: a batch of events was refused; taking them one at a time");
                for job in now {
                    let mut one = vec![job];
                    let answer = timed_batch(pool, &mut one, signature)
                        .await
                        .map(|mut a| a.remove(0))
                        .map_err(Failure::store);
                    let job = one.pop().expect("the one job taken again");
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                let e = e.store();
                for job in now {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The first batch to write out of `jobs` (the first job's window, each body once, in the
/// order given), and the rest.
fn split(jobs: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    let window = jobs[0].window();
    let mut seen = HashSet::new();
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for job in jobs {
        if job.window() == window && seen.insert(job.hash.clone()) {
            now.push(job);
        } else {
            later.push(job);
        }
    }
    (now, later)
}

/// Why a batch was not written.
enum Failure {
    /// The database answered with an error (a deadlock, a constraint): worth trying its
    /// events one by one.
    Refused(StoreError),
    /// No connection, no answer in time, a broken connection: one by one would fail alike.
    Unavailable(StoreError),
}

impl Failure {
    fn refused(&self) -> bool {
        matches!(self, Failure::Refused(_))
    }

    fn store(self) -> StoreError {
        match self {
            Failure::Refused(e) | Failure::Unavailable(e) => e,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        let refused = e.as_db_error().is_some();
        let e = StoreError::from(e);
        if refused {
            Failure::Refused(e)
        } else {
            Failure::Unavailable(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Failure::Unavailable(e.into())
    }
}

/// [`batch`] within the operation timeout; one that runs out is abandoned (its connection
/// closed, its transaction with it).
async fn timed_batch(
    pool: &Pool,
    jobs: &mut [Job],
    signature: &str,
) -> Result<Vec<Accepted>, Failure> {
    timed(async { Ok(batch(pool, jobs, signature).await) })
        .await
        .unwrap_or_else(|e| Err(Failure::Unavailable(e)))
}

/// A new event's id, or the id of the earlier copy that makes it a duplicate.
type Claim = Result<i64, i64>;

/// Claims an id for each job, in the jobs' order. With a duplicate window (one for the whole
/// batch), each body's key is claimed unless a copy was received within the window before
/// it; a concurrent transaction claiming the same body makes this wait for its outcome, and
/// the keys are claimed in the order of their hashes.
async fn claim(tx: &Transaction<'_>, jobs: &[Job]) -> Result<Vec<Claim>, Failure> {
    let Some(window) = jobs[0].window() else {
        let stmt = tx
            .prepare_cached(
                "SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, $1::bigint)",
            )
            .await?;
        let mut ids: Vec<i64> = tx
            .query(&stmt, &[&(jobs.len() as i64)])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ids.sort_unstable();
        return Ok(ids.into_iter().map(Ok).collect());
    };
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|a, b| jobs[*a].hash.cmp(&jobs[*b].hash));
    let hashes: Vec<&[u8]> = order.iter().map(|&i| &jobs[i].hash[..]).collect();
    let received: Vec<i64> = order.iter().map(|&i| jobs[i].event.received_at).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO dedupe_keys (body_hash, event_id, received_at) \
             SELECT h, nextval(pg_get_serial_sequence('events', 'id')), r FROM unnest($1::bytea[], $2::bigint[]) AS t(h, r) \
             ON CONFLICT (body_hash) DO UPDATE SET event_id = EXCLUDED.event_id, received_at = EXCLUDED.received_at \
             WHERE dedupe_keys.received_at < EXCLUDED.received_at - $3 RETURNING body_hash, event_id",
        )
        .await?;
    let mut ids: HashMap<Vec<u8>, i64> = tx
        .query(&stmt, &[&hashes, &received, &window])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let earlier: Vec<&[u8]> = hashes
        .iter()
        .copied()
        .filter(|h| !ids.contains_key(*h))
        .collect();
    let mut firsts = HashMap::new();
    if !earlier.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT body_hash, event_id FROM dedupe_keys WHERE body_hash = ANY($1::bytea[])",
            )
            .await?;
        for r in tx.query(&stmt, &[&earlier]).await? {
            firsts.insert(r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1));
        }
    }
    jobs.iter()
        .map(|j| match (ids.remove(&j.hash), firsts.get(&j.hash)) {
            (Some(id), _) => Ok(Ok(id)),
            (None, Some(first)) => Ok(Err(*first)),
            (None, None) => Err(Failure::Unavailable(StoreError::Database(
                "a duplicate's first copy vanished while it was checked".into(),
            ))),
        })
        .collect()
}

/// The transitions of the batch's counting builds, in the jobs' order, with their branches
/// locked (in the order of their keys) so concurrent builds of one branch are taken one after
/// the other; returns them with each changed branch's new last build.
async fn transitions(
    tx: &Transaction<'_>,
    jobs: &[&Job],
) -> Result<
    (
        Vec<Option<Transition>>,
        BTreeMap<(String, String), BranchState>,
    ),
    Failure,
> {
    // By lock key, then name: two branches sharing a key by chance are both read.
    let branches: BTreeSet<(i64, &str, &str)> = jobs
        .iter()
        .filter_map(|j| j.event.build.as_ref())
        .map(|b| {
            let key = lock_key("branch", &[&b.pipeline, &b.branch]);
            (key, b.pipeline.as_str(), b.branch.as_str())
        })
        .collect();
    let mut found: HashMap<(String, String), LastBuild> = HashMap::new();
    if !branches.is_empty() {
        let keys: Vec<i64> = branches.iter().map(|(k, _, _)| *k).collect();
        let pipelines: Vec<&str> = branches.iter().map(|(_, p, _)| *p).collect();
        let names: Vec<&str> = branches.iter().map(|(_, _, b)| *b).collect();
        let lock = tx.prepare_cached(LOCK_ALL).await?;
        let read = tx
            .prepare_cached(
                "SELECT s.pipeline, s.branch, s.number, s.failed, s.consecutive_failures, s.finished_at \
                 FROM build_states s JOIN unnest($1::text[], $2::text[]) AS b(pipeline, branch) \
                 ON s.pipeline = b.pipeline AND s.branch = b.branch",
            )
            .await?;
        // Sent together, both prepared already so they run in the order sent: the locks are
        // granted before the read takes its snapshot, in one round trip.
        let lock_params: [&(dyn ToSql + Sync); 1] = [&keys];
        let read_params: [&(dyn ToSql + Sync); 2] = [&pipelines, &names];
        let (_, rows) = futures_util::try_join!(
            tx.execute(&lock, &lock_params),
            tx.query(&read, &read_params)
        )?;
        for r in rows {
            found.insert(
                (r.get(0), r.get(1)),
                LastBuild {
                    number: r.get::<_, i64>(2) as u64,
                    failed: r.get(3),
                    consecutive_failures: r.get::<_, i64>(4) as u32,
                    finished_at: r.get(5),
                },
            );
        }
    }
    let mut changed = BTreeMap::new();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some(b) = &job.event.build else {
            out.push(None);
            continue;
        };
        let at = (b.pipeline.clone(), b.branch.clone());
        match next(found.get(&at), b) {
            Some((t, last)) => {
                changed.insert(
                    at.clone(),
                    BranchState {
                        last: last.clone(),
                        at: job.event.received_at,
                    },
                );
                found.insert(at, last);
                out.push(Some(t));
            }
            None => out.push(None),
        }
    }
    Ok((out, changed))
}

/// A branch's new last build, and when the event that made it was received.
struct BranchState {
    last: LastBuild,
    at: i64,
}

/// Takes the advisory locks on an array of keys, in the array's order.
const LOCK_ALL: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// Adds an event to its group's open digest, or opens one. The group is locked already (so
/// two replicas never open two digests for it), and the digest's row is locked here so a
/// worker closing it either sees this event or makes this one open the next digest.
async fn join_group(
    tx: &Transaction<'_>,
    event_id: i64,
    received: i64,
    d: &NewDelivery,
    key: &str,
    window_ms: i64,
) -> Result<i64, Failure> {
    let open = tx
        .prepare_cached(
            "SELECT id FROM deliveries WHERE destination = $1 AND route = $2 AND group_key = $3 \
             AND state = 'pending' AND attempts = 0 AND group_closes_at > kb_now_ms() \
             ORDER BY id DESC LIMIT 1 FOR UPDATE",
        )
        .await?;
    let open: Option<i64> = tx
        .query_opt(&open, &[&d.destination, &d.route, &key])
        .await?
        .map(|r| r.get(0));
    let id = match open {
        Some(id) => {
            // A held event holds the whole digest (and keeps it open) until it may be sent.
            if let Some(t) = d.not_before {
                tx.execute(
                    "UPDATE deliveries SET next_attempt_at = GREATEST(next_attempt_at, $2), \
                     age_from = GREATEST(age_from, $2), group_closes_at = GREATEST(group_closes_at, $2) WHERE id = $1",
                    &[&id, &t],
                )
                .await?;
            }
            id
        }
        None => {
            // A digest opened while muted stays open until the mute ends.
            let closes = d
                .not_before
                .map_or(received + window_ms, |t| t.max(received + window_ms));
            let insert = tx
                .prepare_cached(
                    "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
                     next_attempt_at, updated_at, group_key, group_closes_at, thread_key) \
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6, $5, $7, $6, $8) RETURNING id",
                )
                .await?;
            tx.query_one(
                &insert,
                &[
                    &event_id,
                    &d.route,
                    &d.destination,
                    &d.template,
                    &received,
                    &closes,
                    &key,
                    &d.thread_key,
                ],
            )
            .await?
            .get(0)
        }
    };
    let link = tx
        .prepare_cached("INSERT INTO delivery_events (delivery_id, event_id) VALUES ($1, $2)")
        .await?;
    tx.execute(&link, &[&id, &event_id]).await?;
    Ok(id)
}

/// Writes one batch (equal windows, distinct bodies) in one transaction; the answers follow
/// the jobs' order. `signature` ends each notification: [`FROM`] and this replica's name.
async fn batch(pool: &Pool, jobs: &mut [Job], signature: &str) -> Result<Vec<Accepted>, Failure> {
    let mut client = Conn(Some(pool.get().await?));
    let txn = client.transaction().await?;
    let tx = &txn;
    let claims = claim(tx, jobs).await?;
    // The new events: their places in the batch, and their ids.
    let (fresh, ids): (Vec<usize>, Vec<i64>) = claims
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.ok().map(|id| (i, id)))
        .unzip();
    let (found, branches) = {
        let new: Vec<&Job> = fresh.iter().map(|&i| &jobs[i]).collect();
        transitions(tx, &new).await?
    };
    // Each new event's plan, now that its transition is known.
    let mut plans: Vec<Vec<NewDelivery>> = Vec::with_capacity(fresh.len());
    for (&i, t) in fresh.iter().zip(&found) {
        plans.push((jobs[i].plan)(t.as_ref()));
    }

    // Everything that needs no answer but the single messages' ids goes out in one round
    // trip, in order: the branches' new last builds, the events, their single messages, a
    // NOTIFY per destination (heard once this commits by the replica that sends it, when that is
    // another one), and the locks of the
    // digest groups the events join.
    let history = tx
        .prepare_cached(
            "INSERT INTO build_states (pipeline, branch, number, failed, consecutive_failures, finished_at, updated_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::bigint[], $6::bigint[], $7::bigint[]) \
             ON CONFLICT (pipeline, branch) DO UPDATE SET number = EXCLUDED.number, failed = EXCLUDED.failed, \
             consecutive_failures = EXCLUDED.consecutive_failures, finished_at = EXCLUDED.finished_at, \
             updated_at = EXCLUDED.updated_at",
        )
        .await?;
    let events = tx
        .prepare_cached(
            "INSERT INTO events (id, name, body, body_hash, received_at, transition) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bytea[], $5::bigint[], $6::text[])",
        )
        .await?;
    let singles = tx
        .prepare_cached(
            "INSERT INTO deliveries (event_id, route, destination, template, state, created_at, age_from, \
             next_attempt_at, updated_at, thread_key) \
             SELECT e, r, d, t, 'pending', c, a, a, c, k \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[]) \
             AS s(e, r, d, t, c, a, k) RETURNING id",
        )
        .await?;
    let notify = tx
        .prepare_cached("SELECT pg_notify($1, d || $3::text) FROM unnest($2::text[]) AS d")
        .await?;
    let lock = tx.prepare_cached(LOCK_ALL).await?;

    let h_pipelines: Vec<&str> = branches.keys().map(|(p, _)| p.as_str()).collect();
    let h_branches: Vec<&str> = branches.keys().map(|(_, b)| b.as_str()).collect();
    let states: Vec<&BranchState> = branches.values().collect();
    let h_numbers: Vec<i64> = states.iter().map(|s| s.last.number as i64).collect();
    let h_failed: Vec<bool> = states.iter().map(|s| s.last.failed).collect();
    let h_consecutive: Vec<i64> = states
        .iter()
        .map(|s| i64::from(s.last.consecutive_failures))
        .collect();
    let h_finished: Vec<Option<i64>> = states.iter().map(|s| s.last.finished_at).collect();
    let h_at: Vec<i64> = states.iter().map(|s| s.at).collect();

    let e_names: Vec<&str> = fresh.iter().map(|&i| jobs[i].event.name.as_str()).collect();
    let e_bodies: Vec<&[u8]> = fresh.iter().map(|&i| &jobs[i].event.body[..]).collect();
    let e_hashes: Vec<&[u8]> = fresh.iter().map(|&i| &jobs[i].hash[..]).collect();
    let e_received: Vec<i64> = fresh.iter().map(|&i| jobs[i].event.received_at).collect();
    let e_transitions: Vec<Option<String>> = found
        .iter()
        .map(|t| {
            t.as_ref()
                .map(|t| serde_json::to_string(t).expect("a transition serialises"))
        })
        .collect();

    let (mut s_events, mut s_routes, mut s_dests, mut s_templates) =
        (vec![], vec![], vec![], vec![]);
    let (mut s_created, mut s_due, mut s_threads) = (vec![], vec![], vec![]);
    let mut groups: BTreeSet<i64> = BTreeSet::new();
    let mut destinations: BTreeSet<&str> = BTreeSet::new();
    for (n, plan) in plans.iter().enumerate() {
        let received = e_received[n];
        for d in plan {
            destinations.insert(&d.destination);
            if let Some(g) = &d.group {
                groups.insert(lock_key("group", &[&d.destination, &d.route, &g.key]));
                continue;
            }
            s_events.push(ids[n]);
            s_routes.push(d.route.as_str());
            s_dests.push(d.destination.as_str());
            s_templates.push(d.template.as_deref());
            s_created.push(received);
            // max_age counts from when a message may first be sent (after a mute hold).
            s_due.push(d.not_before.map_or(received, |t| t.max(received)));
            s_threads.push(d.thread_key.as_deref());
        }
    }
    let destinations: Vec<&str> = destinations.into_iter().collect();
    let groups: Vec<i64> = groups.into_iter().collect();

    // Arrays may be empty (no builds, no single messages, no digests): then the statement
    // does nothing, in the same round trip.
    let history_params: [&(dyn ToSql + Sync); 7] = [
        &h_pipelines,
        &h_branches,
        &h_numbers,
        &h_failed,
        &h_consecutive,
        &h_finished,
        &h_at,
    ];
    let event_params: [&(dyn ToSql + Sync); 6] = [
        &ids,
        &e_names,
        &e_bodies,
        &e_hashes,
        &e_received,
        &e_transitions,
    ];
    let single_params: [&(dyn ToSql + Sync); 7] = [
        &s_events,
        &s_routes,
        &s_dests,
        &s_templates,
        &s_created,
        &s_due,
        &s_threads,
    ];
    let notify_params: [&(dyn ToSql + Sync); 3] = [&CHANNEL, &destinations, &signature];
    let lock_params: [&(dyn ToSql + Sync); 1] = [&groups];
    let (_, _, single_rows, _, _) = futures_util::try_join!(
        tx.execute(&history, &history_params),
        tx.execute(&events, &event_params),
        tx.query(&singles, &single_params),
        tx.execute(&notify, &notify_params),
        tx.execute(&lock, &lock_params)
    )?;
    // The rows were inserted in the arrays' order, each taking the next id.
    let mut single_ids: Vec<i64> = single_rows.iter().map(|r| r.get(0)).collect();
    single_ids.sort_unstable();
    let mut single_ids = single_ids.into_iter();

    // Digests one at a time, their groups locked, once the events are there.
    let mut delivered: Vec<Vec<i64>> = Vec::with_capacity(plans.len());
    for (n, plan) in plans.iter().enumerate() {
        let mut delivery_ids = Vec::with_capacity(plan.len());
        for d in plan {
            delivery_ids.push(match &d.group {
                None => single_ids.next().expect("one id per single message"),
                Some(g) => join_group(tx, ids[n], e_received[n], d, &g.key, g.window_ms).await?,
            });
        }
        delivered.push(delivery_ids);
    }
    txn.commit().await?;

    let mut new = ids.into_iter().zip(delivered).zip(found);
    Ok(claims
        .iter()
        .map(|c| match c {
            Err(first) => Accepted::Duplicate { event_id: *first },
            Ok(_) => {
                let ((event_id, delivery_ids), transition) =
                    new.next().expect("one result per new event");
                Accepted::New {
                    event_id,
                    delivery_ids,
                    transition,
                }
            }
        })
        .collect())
}

#[async_trait]
impl Intake for PgStore {
    async fn accept(
        &self,
        event: NewEvent,
        plan: Planner,
        dedupe_since: Option<i64>,
    ) -> Result<Accepted, StoreError> {
        self.intake
            .accept(&self.pool, event, plan, dedupe_since)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::{Writer, choose};
    use crate::store::NewEvent;
    use crate::transition::BuildOutcome;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn writers(loads: &[usize]) -> Vec<Writer> {
        loads
            .iter()
            .map(|&n| Writer {
                queue: tokio::sync::mpsc::channel(1).0,
                load: Arc::new(AtomicUsize::new(n)),
            })
            .collect()
    }

    fn event(branch: Option<&str>) -> NewEvent {
        NewEvent {
            name: "build.finished".into(),
            body: bytes::Bytes::from_static(b"{}"),
            received_at: 0,
            build: branch.map(|b| BuildOutcome {
                pipeline: "web".into(),
                branch: b.into(),
                number: 1,
                failed: false,
                finished_at: None,
            }),
        }
    }

    #[test]
    fn a_branch_keeps_its_writer_and_other_events_go_to_the_least_loaded() {
        let w = writers(&[5, 0, 3, 9]);
        let main = choose(&w, &event(Some("main")));
        // However loaded: a branch's builds are written one transaction after the other.
        for load in [0, 100] {
            w[main].load.store(load, Ordering::Relaxed);
            assert_eq!(choose(&w, &event(Some("main"))), main);
        }
        let branches: std::collections::HashSet<usize> = (0..64)
            .map(|n| choose(&w, &event(Some(&format!("b{n}")))))
            .collect();
        assert_eq!(branches.len(), 4, "branches spread over the writers");
        for (writer, load) in w.iter().zip([4, 0, 2, 9]) {
            writer.load.store(load, Ordering::Relaxed);
        }
        assert_eq!(choose(&w, &event(None)), 1);
        w[1].load.store(7, Ordering::Relaxed);
        assert_eq!(choose(&w, &event(None)), 2);
    }
}
