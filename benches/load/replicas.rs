//! The shared store under load: one and three replicas on one PostgreSQL database, the same
//! generator as the rest of the run, and how long a takeover takes after `kill -9` of the
//! replica sending the destination.

use super::generator::{Bodies, closed_loop, open_loop, quantile};
use super::sink::Sink;
use super::{
    CONNECTIONS, Kitebridge, OPEN_RATE, OPEN_SECONDS, TOKEN, latencies, ms, per_second, wait_for,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server the benchmark makes its database on.
fn admin_url() -> String {
    ["KB_BENCH_DATABASE_URL", "KITEBRIDGE_TEST_DATABASE_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = head[scheme_end..]
        .find('/')
        .map_or(head, |i| &head[..scheme_end + i]);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn admin(sql: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    client.batch_execute(sql).await.map_err(|e| e.to_string())
}

/// Whether the replica listening on `port` sends the sink.
async fn holds(port: u16) -> bool {
    let Ok(resp) = kitebridge::destination::client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return false;
    };
    resp.text()
        .await
        .unwrap_or_default()
        .contains("kitebridge_destination_held{destination=\"sink\"} 1")
}

/// Replicas on a fresh database of their own.
async fn cluster(n: usize, sink: &str, db: &str) -> (Vec<Kitebridge>, Vec<tempfile::TempDir>) {
    let storage = format!("[storage]\nurl = \"{}\"\n", with_database(&admin_url(), db));
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let (kb, _) = Kitebridge::start_on(dir.path(), sink, 1, &storage).await;
        replicas.push(kb);
        dirs.push(dir);
    }
    // Until one of them has taken the destination.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut any = false;
        for r in &replicas {
            any |= holds(r.port).await;
        }
        if any {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (replicas, dirs)
}

/// The PostgreSQL rows of the report; `bare_rate` is the bare endpoint's, from the same run.
pub async fn run(bodies: &Arc<Bodies>, bare_rate: f64, events: u64, out: &mut impl FnMut(String)) {
    let sink = Sink::default();
    let sink_url = format!("http://{}/sink", sink.start().await);
    let mut first_id = 50_000_000;
    for n in [1, 3] {
        let db = format!("kb_bench_{}_{n}", std::process::id());
        if let Err(e) = admin(&format!("CREATE DATABASE {db}")).await {
            out(format!(
                "| PostgreSQL store | not measured: {e} (set KB_BENCH_DATABASE_URL) | |"
            ));
            return;
        }
        let (replicas, _dirs) = cluster(n, &sink_url, &db).await;
        let urls: Vec<String> = replicas.iter().map(Kitebridge::url).collect();
        let before = sink.count();
        let max = closed_loop(&urls, bodies.clone(), TOKEN, first_id, events, CONNECTIONS).await;
        first_id += events;
        let drain = wait_for(
            &sink,
            before + max.accepted as usize,
            Duration::from_secs(300),
        )
        .await;
        let before = sink.count();
        let open = open_loop(
            &urls,
            bodies.clone(),
            TOKEN,
            first_id,
            OPEN_RATE,
            Duration::from_secs(OPEN_SECONDS),
        )
        .await;
        first_id += OPEN_RATE * OPEN_SECONDS;
        wait_for(
            &sink,
            before + open.accepted as usize,
            Duration::from_secs(120),
        )
        .await;
        let (mut answers, mut e2e, missing) = latencies(&open, &sink);
        let rate = per_second(&max);
        let label = if n == 1 { "1 replica" } else { "3 replicas" };
        out(format!(
            "| PostgreSQL, {label}: sustained accepted events/s ({events} events, {CONNECTIONS} connections) | {rate:.0}/s = {:.0}% of bare ({} refused); all delivered {:.1} s after the last answer | report |",
            rate / bare_rate * 100.0,
            max.refused,
            drain.as_secs_f64()
        ));
        out(format!(
            "| PostgreSQL, {label}: answer latency at {OPEN_RATE}/s, open loop, {OPEN_SECONDS} s | p50 {} · p99 {} ({} refused) | report |",
            ms(quantile(&mut answers.clone(), 0.5)),
            ms(quantile(&mut answers, 0.99)),
            open.refused
        ));
        out(format!(
            "| PostgreSQL, {label}: end-to-end at {OPEN_RATE}/s | p50 {} · p99 {} ({missing} not delivered) | |",
            ms(quantile(&mut e2e.clone(), 0.5)),
            ms(quantile(&mut e2e, 0.99))
        ));
        if n == 3 {
            let before = sink.count();
            let slow = open_loop(
                &urls,
                bodies.clone(),
                TOKEN,
                first_id,
                200,
                Duration::from_secs(10),
            )
            .await;
            first_id += 2_000;
            wait_for(
                &sink,
                before + slow.accepted as usize,
                Duration::from_secs(60),
            )
            .await;
            let (_, mut e2e, missing) = latencies(&slow, &sink);
            out(format!(
                "| PostgreSQL, 3 replicas: end-to-end at 200/s (received by any replica → sink) | p50 {} · p99 {} ({missing} not delivered) | p99 < 100 ms |",
                ms(quantile(&mut e2e.clone(), 0.5)),
                ms(quantile(&mut e2e, 0.99))
            ));
            takeover(replicas, bodies, &sink, first_id, out).await;
        } else {
            replicas.into_iter().for_each(Kitebridge::stop);
        }
        let _ = admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
    }
}

/// Kills the sending replica and measures how long until the others send again.
async fn takeover(
    mut replicas: Vec<Kitebridge>,
    bodies: &Arc<Bodies>,
    sink: &Sink,
    first_id: u64,
    out: &mut impl FnMut(String),
) {
    let mut owner = None;
    for (i, r) in replicas.iter().enumerate() {
        if holds(r.port).await {
            owner = Some(i);
        }
    }
    let Some(owner) = owner else {
        out("| takeover after kill -9 | no replica held the destination | |".into());
        return;
    };
    let mut dead = replicas.remove(owner);
    let _ = dead.child.kill();
    let killed = Instant::now();
    let _ = dead.child.wait();
    let urls: Vec<String> = replicas.iter().map(Kitebridge::url).collect();
    let before = sink.count();
    let run = open_loop(
        &urls,
        bodies.clone(),
        TOKEN,
        first_id,
        100,
        Duration::from_secs(20),
    )
    .await;
    wait_for(
        sink,
        before + run.accepted as usize,
        Duration::from_secs(60),
    )
    .await;
    let first = run
        .answers
        .iter()
        .filter_map(|(id, _, _)| sink.arrival(*id))
        .min();
    let (_, _, missing) = latencies(&run, sink);
    out(format!(
        "| takeover after kill -9 of the sending replica (lease 10 s, the default) | sending again {} after the kill; {missing} of {} events sent meanwhile not delivered | within 30 s |",
        first.map_or("never".into(), |t| format!(
            "{:.1} s",
            (t - killed).as_secs_f64()
        )),
        run.accepted
    ));
    replicas.into_iter().for_each(Kitebridge::stop);
}
