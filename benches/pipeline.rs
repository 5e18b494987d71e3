//! Criterion benchmarks of the per-event work, one core: signature verification, parsing,
//! routing with 10, 100 and 1,000 routes (by glob lists, and by an `if` expression),
//! rendering the default Slack and Teams templates, and
//! the whole verify → parse → route → render path, with 3 KB and 100 KB payloads; and
//! recording delivery attempts in the embedded store, batched and one by one; a worker finding
//! a new message, by a look at the stored queue or from its inbox. (In the
//! service the webhook handler verifies, parses and routes, then stores the event; a delivery
//! worker parses it again and renders.)
//!
//! `cargo bench --bench pipeline`

use chrono::Utc;
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kitebridge::auth::{AuthMode, Credentials, SignatureHeader, sign};
use kitebridge::destination::DestinationKind;
use kitebridge::event::{Event, VerifiedBody};
use kitebridge::render::{Renderer, TemplateData};
use kitebridge::routing::{PatternList, Route, Router};
use kitebridge::secret::Secret;
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Duration;

const TOKEN: &str = "bench-token-0123456789";

fn fixture() -> Value {
    serde_json::from_str(include_str!(
        "../tests/fixtures/buildkite/build.finished.json"
    ))
    .unwrap()
}

/// The build.finished fixture (about 3.4 KB), and the same padded to about 100 KB with a long
/// commit message.
fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let small = serde_json::to_vec(&fixture()).unwrap();
    let mut big = fixture();
    big["build"]["message"] = json!(format!(
        "Long change\n\n{}",
        "lorem ipsum dolor sit amet ".repeat(3_700)
    ));
    vec![("3KB", small), ("100KB", serde_json::to_vec(&big).unwrap())]
}

fn credentials() -> Credentials {
    Credentials {
        tokens: vec![Secret::new(TOKEN)],
        mode: AuthMode::Signature,
        replay_window: Duration::from_secs(300),
    }
}

/// `n` routes, one per pipeline, as a big org might write them; the event's pipeline is the
/// one in the middle, and a catch-all comes last. Each route's branch and state conditions are
/// glob lists, or with `by_if` the same as one `if` expression in Buildkite's language.
pub fn router(n: usize, by_if: bool) -> Router {
    let list = |v: &[&str]| PatternList::new(v).unwrap();
    let expr = r#"(build.branch == "main" || build.branch =~ /^release\//) && (build.state == "failed" || build.state == "failing")"#;
    let condition = std::sync::Arc::new(
        kitebridge::condition::Condition::compile(expr, kitebridge::condition::event_schema())
            .unwrap(),
    );
    let mut routes: Vec<Route> = (0..n)
        .map(|i| {
            let pipeline = if i == n / 2 {
                "web-app".to_string()
            } else {
                format!("pipeline-{i}")
            };
            let route = Route {
                events: list(&["build.finished", "build.failing"]),
                pipelines: list(&[pipeline.as_str()]),
                ..Route::new(format!("route {i}"), ["slack"])
            };
            if by_if {
                Route {
                    condition: Some(condition.clone()),
                    ..route
                }
            } else {
                Route {
                    branches: list(&["main", "release/*"]),
                    states: list(&["failed", "failing"]),
                    ..route
                }
            }
        })
        .collect();
    routes.push(Route {
        events: list(&["*"]),
        ..Route::new("everything", ["console"])
    });
    Router::new(routes)
}

fn event(body: &[u8]) -> Event {
    Event::parse(&VerifiedBody::trusted(body.to_vec()), None, Utc::now()).unwrap()
}

fn benches(c: &mut Criterion) {
    let creds = credentials();
    let renderer = Renderer::new(None, Default::default()).unwrap();
    let now = Utc::now().timestamp();

    let mut g = c.benchmark_group("verify");
    for (size, body) in payloads() {
        let header = SignatureHeader::parse(&sign(TOKEN, now, &body)).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                creds
                    .check_signature(black_box(&header), black_box(body), now)
                    .unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parse");
    for (size, body) in payloads() {
        let verified = VerifiedBody::trusted(body.clone());
        g.throughput(Throughput::Elements(1));
        g.bench_function(size, |b| {
            b.iter(|| {
                Event::parse(black_box(&verified), Some("build.finished"), Utc::now()).unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route");
    let ev = event(&payloads()[0].1);
    for n in [10, 100, 1_000] {
        let r = router(n, false);
        assert_eq!(r.route(&ev)[0].name, format!("route {}", n / 2));
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(n), &r, |b, r| {
            b.iter(|| r.route(black_box(&ev)).len())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route_if");
    for n in [10, 100, 1_000] {
        let r = router(n, true);
        assert_eq!(r.route(&ev)[0].name, format!("route {}", n / 2));
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(n), &r, |b, r| {
            b.iter(|| r.route(black_box(&ev)).len())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("render");
    for (size, body) in payloads() {
        let ev = event(&body);
        for kind in ["slack", "teams", "webhook"] {
            let kind = DestinationKind::parse(kind).unwrap();
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{kind}/{size}"), |b| {
                b.iter(|| {
                    let data = TemplateData::new(black_box(&ev), Utc::now());
                    kind.render_event(&renderer, None, &ev, &data).unwrap()
                })
            });
        }
    }
    g.finish();

    // The same for Slack with the event given up to the template data (as a worker does with
    // an event no other message needs) instead of copied into it.
    let mut g = c.benchmark_group("render_given");
    let slack = DestinationKind::parse("slack").unwrap();
    for (size, body) in payloads() {
        let ev = event(&body);
        let template = renderer.select(slack.template_kind(), None, &ev).unwrap();
        g.throughput(Throughput::Elements(1));
        // Both from a fresh copy of the event, as a worker has it, so only the data differs.
        g.bench_function(format!("slack/{size}/copied"), |b| {
            b.iter_batched(
                || ev.clone(),
                |ev| {
                    let data = TemplateData::new(&ev, Utc::now());
                    slack.render(&renderer, &template, &data).unwrap()
                },
                criterion::BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("slack/{size}/given"), |b| {
            b.iter_batched(
                || ev.clone(),
                |ev| {
                    let data = TemplateData::from_event(ev, Utc::now());
                    slack.render(&renderer, &template, &data).unwrap()
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("path");
    let slack = DestinationKind::parse("slack").unwrap();
    let r = router(100, false);
    for (size, body) in payloads() {
        let header = sign(TOKEN, now, &body);
        g.throughput(Throughput::Elements(1));
        g.bench_function(size, |b| {
            b.iter(|| {
                let presented = creds.presented(None, Some(&header)).unwrap();
                let verified = creds.verify(&presented, body.clone().into(), now).unwrap();
                let ev = Event::parse(&verified, Some("build.finished"), Utc::now()).unwrap();
                let routes = r.route(&ev);
                let data = TemplateData::new(&ev, Utc::now());
                // The event's route is the one to Slack (the route benchmark checks it).
                slack
                    .render_event(&renderer, routes[0].template.as_deref(), &ev, &data)
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// A runtime of one thread to drive the store with: the store's own threads do its work.
fn store_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A plan of one message, to the destination `sink`.
fn to_sink() -> kitebridge::store::Planner {
    Box::new(|_| {
        vec![kitebridge::store::NewDelivery {
            route: "r".into(),
            destination: "sink".into(),
            template: None,
            group: None,
            not_before: None,
            thread_key: None,
        }]
    })
}

/// Recording 64 attempts in the embedded store (`durability = "normal"`, so the CPU and not
/// the disk is measured): one batch, as the workers record them, against 64 writes sent at
/// once (which the store's writer already put in one transaction, a savepoint each).
fn records(c: &mut Criterion) {
    use kitebridge::store::{
        Accepted, Attempt, DeliveryQueue, Finished, Intake, NewEvent, Resolution, SqliteStore,
        sqlite::Durability,
    };
    const N: usize = 64;
    let rt = store_runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db"), Durability::Normal).unwrap();
    // N stored deliveries, due now, each with the version an attempt would record.
    let fresh = |store: &SqliteStore| {
        rt.block_on(async {
            let mut picked = Vec::with_capacity(N);
            for _ in 0..N {
                let event = NewEvent {
                    name: "build.finished".into(),
                    body: bytes::Bytes::from_static(b"{}"),
                    received_at: kitebridge::store::now_ms(),
                    build: None,
                };
                let plan = to_sink();
                let Accepted::New { delivery_ids, .. } =
                    store.accept(event, plan, None).await.unwrap()
                else {
                    unreachable!("no duplicate check")
                };
                let (d, _) = kitebridge::store::Operations::show(store, delivery_ids[0])
                    .await
                    .unwrap();
                picked.push(Finished {
                    delivery_id: d.id,
                    picked: d.updated_at,
                    attempt: Attempt {
                        at: kitebridge::store::now_ms(),
                        status: Some(200),
                        outcome: "sent".into(),
                        reason: None,
                        latency_ms: 3,
                    },
                    body: Some("{\"text\":\"a rendered message of some length\"}".into()),
                    resolution: Resolution::Sent,
                });
            }
            picked
        })
    };
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("64 in one batch", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let records = fresh(&store);
                let started = std::time::Instant::now();
                let applied = rt.block_on(store.finish_attempts(records)).unwrap();
                took += started.elapsed();
                assert!(applied.iter().all(|a| *a));
            }
            took
        })
    });
    g.bench_function("64 writes at once", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let records = fresh(&store);
                let started = std::time::Instant::now();
                let applied = rt.block_on(futures_util::future::join_all(records.into_iter().map(
                    |r| {
                        store.finish_attempt(
                            r.delivery_id,
                            r.picked,
                            r.attempt,
                            r.body,
                            r.resolution,
                        )
                    },
                )));
                took += started.elapsed();
                assert!(applied.into_iter().all(|a| a.unwrap()));
            }
            took
        })
    });
    g.finish();
}

/// What a delivery worker does to find a new message: a look at the queue in the embedded
/// store (the message with its event's 3.4 KB body; then the queue found empty and the next
/// retry's time asked, as a worker did before the inbox), against taking it from the inbox
/// intake offered it to.
fn handover(c: &mut Criterion) {
    use kitebridge::queue::inbox::{Inbox, Tickets};
    use kitebridge::store::{
        Accepted, DeliveryQueue, Intake, NewEvent, SqliteStore, now_ms, sqlite::Durability,
    };
    use std::collections::HashSet;
    use std::sync::Arc;
    let rt = store_runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db"), Durability::Normal).unwrap();
    let body = payloads().remove(0).1;
    let event = NewEvent {
        name: "build.finished".into(),
        body: body.clone().into(),
        received_at: now_ms(),
        build: None,
    };
    let Accepted::New { .. } = rt.block_on(store.accept(event, to_sink(), None)).unwrap() else {
        unreachable!("no duplicate check")
    };
    let mut g = c.benchmark_group("handover");
    g.bench_function("look at the queue: the message", |b| {
        b.iter(|| {
            let due = rt
                .block_on(store.due("sink", now_ms(), 33, vec![]))
                .unwrap();
            assert_eq!(due.len(), 1);
            due
        })
    });
    let row = rt
        .block_on(store.due("sink", now_ms(), 1, vec![]))
        .unwrap()
        .remove(0);
    g.bench_function("look at the queue: empty, and the next retry", |b| {
        b.iter(|| {
            rt.block_on(async {
                let none = store.due("sink", now_ms(), 33, vec![row.id]).await.unwrap();
                assert!(none.is_empty());
                store.next_due_after("sink", now_ms()).await.unwrap()
            })
        })
    });
    let parsed = Arc::new(Event::parse(&VerifiedBody::trusted(body), None, Utc::now()).unwrap());
    let tickets = Arc::new(Tickets::default());
    let inbox = Inbox::new(tickets.clone());
    inbox.open();
    let busy = HashSet::new();
    g.bench_function("inbox: offered, then taken", |b| {
        b.iter(|| {
            let ticket = tickets.begin();
            inbox.offer(&ticket, row.clone(), &parsed);
            drop(ticket);
            let taken = inbox.take(33, &busy);
            assert_eq!(taken.len(), 1);
            taken
        })
    });
    g.finish();
}

/// Taking in one new event (`durability = "normal"`, so the CPU and not the disk is measured)
/// into a store holding 100,000 events of the last ten minutes, with the duplicate check of a
/// ten-minute window (one index probe per minute) and without it.
fn dedupe(c: &mut Criterion) {
    use kitebridge::store::{Intake, NewEvent, SqliteStore, now_ms, sqlite::Durability};
    use sha2::Digest as _;
    const STORED: i64 = 100_000;
    const WINDOW: i64 = 600_000;
    let rt = store_runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    drop(SqliteStore::open(&path, Durability::Normal).unwrap());
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        let now = now_ms();
        let mut insert = tx
            .prepare("INSERT INTO events (name, body, body_hash, received_at) VALUES ('ping', ?1, ?2, ?3)")
            .unwrap();
        for i in 0..STORED {
            let body = format!("{{\"stored\":{i}}}");
            let hash = sha2::Sha256::digest(body.as_bytes()).to_vec();
            insert
                .execute(rusqlite::params![
                    body,
                    hash,
                    now - WINDOW + i * WINDOW / STORED
                ])
                .unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let mut n = 0_u64;
    let mut g = c.benchmark_group("dedupe");
    for (name, window) in [("window 10m", Some(WINDOW)), ("off", None)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let now = now_ms();
                let event = NewEvent {
                    name: "ping".into(),
                    body: bytes::Bytes::from(format!("{{\"new\":{n}}}")),
                    received_at: now,
                    build: None,
                };
                let since = window.map(|w| now - w);
                rt.block_on(store.accept(event, Box::new(|_| Vec::new()), since))
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(name = pipeline; config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)); targets = benches, records, handover, dedupe);
criterion_main!(pipeline);
