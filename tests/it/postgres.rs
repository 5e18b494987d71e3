//! What only the shared store does: its schema migrated once when replicas start together,
//! leases that run out and are taken over, notifications between replicas, TLS, and errors
//! that never show the password.

use crate::pg::TestDb;
use kitebridge::store::postgres::{PgOptions, SslMode};
use kitebridge::store::{
    Carry, Intake, Leases, Left, NewDelivery, NewEvent, Operations, PgStore, Schema, StoreError,
};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_the_schema_once() {
    let db = TestDb::new().await;
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let options = db.options(Duration::from_secs(2));
        starting.spawn(async move { PgStore::connect(options, Schema::Migrate).await });
    }
    while let Some(r) = starting.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM kitebridge_schema").await, 2);
    // The operator's commands use it as it is.
    PgStore::connect(db.options(Duration::from_secs(2)), Schema::Check)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_binary_older_than_the_schema_refuses_it_and_commands_never_migrate() {
    let empty = TestDb::new().await;
    let e = PgStore::connect(empty.options(Duration::from_secs(2)), Schema::Check)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("start `kitebridge serve` of this version to migrate it"),
        "{e}"
    );
    let db = TestDb::new().await;
    db.store().await;
    db.execute("INSERT INTO kitebridge_schema (version) VALUES (99)")
        .await;
    let e = PgStore::connect(db.options(Duration::from_secs(2)), Schema::Migrate)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("schema version 99, newer than this kitebridge knows (2)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_lease_that_runs_out_is_taken_by_another_replica_and_the_old_holder_loses_it() {
    let db = TestDb::new().await;
    let lease = Duration::from_millis(1500);
    let (a, b) = (db.store_with(lease).await, db.store_with(lease).await);
    assert_ne!(a.replica(), b.replica());
    let x = vec!["x".to_string()];
    let held = a.acquire(&x, Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(
        b.acquire(&x, Duration::ZERO).await.unwrap().is_empty(),
        "held by a"
    );
    a.save_pause("x", held[0].epoch, 123_456, 2).await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let taken = b.acquire(&x, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 1, "a stopped renewing");
    assert!(matches!(taken[0].left, Left::Expired { ago_ms } if ago_ms >= 0));
    assert_eq!(
        (taken[0].carry.paused_until, taken[0].carry.failures),
        (123_456, 2),
        "the pause holds for the next holder"
    );
    assert!(taken[0].epoch > held[0].epoch);
    assert!(
        a.renew(&[("x".into(), held[0].epoch)])
            .await
            .unwrap()
            .is_empty(),
        "a's hold is gone"
    );
    // Nor can a let go of what is now b's.
    a.release("x", held[0].epoch, Carry::default())
        .await
        .unwrap();
    assert_eq!(b.renew(&[("x".into(), taken[0].epoch)]).await.unwrap(), x);
    a.heartbeat().await.unwrap();
    assert_eq!(b.heartbeat().await.unwrap(), 2, "two replicas seen");
    a.leave().await.unwrap();
    assert_eq!(b.heartbeat().await.unwrap(), 1, "one left");
}

/// A hold granted to a destination whose worker has just stopped for good (a reload removed
/// it) is let go, not renewed for ever: another replica takes it at once, and shutting down
/// does not wait for a report that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_nobody_will_use_is_let_go() {
    use kitebridge::queue::cluster::Cluster;
    let db = TestDb::new().await;
    let lease = Duration::from_secs(2);
    let (a, b) = (db.store_with(lease).await, db.store_with(lease).await);
    let (cluster, reports) =
        Cluster::new(Arc::new(a), Arc::new(kitebridge::metrics::Metrics::new()));
    let (role, _reports) = cluster.join("d");
    // And one whose worker stops, without a word, as the hold is granted (at shutdown).
    let (gone, _) = cluster.join("e");
    drop(gone);
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(cluster.clone().run(reports, cancel.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cluster.holds("d") || !cluster.holds("e") {
        assert!(std::time::Instant::now() < deadline, "never took it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No worker ever looks at the hold; the destination is dropped.
    drop(role);
    cluster.leave("d");
    let d = vec!["d".to_string()];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        if !b.acquire(&d, Duration::ZERO).await.unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hold is still kept (its lease is {lease:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("shut down without waiting for a report that will not come")
        .unwrap();
    let e = vec!["e".to_string()];
    assert_eq!(
        b.acquire(&e, Duration::ZERO).await.unwrap().len(),
        1,
        "let go at shutdown, not left to run out"
    );
}

#[tokio::test]
async fn a_free_lease_waits_out_the_grace_of_a_replica_that_has_its_share() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    let x = vec!["x".to_string()];
    let held = a.acquire(&x, Duration::ZERO).await.unwrap();
    a.release("x", held[0].epoch, Carry::default())
        .await
        .unwrap();
    assert!(
        b.acquire(&x, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "freed only now: not yet for a replica that must wait"
    );
    assert_eq!(b.acquire(&x, Duration::ZERO).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_taking_one_destination_at_once_get_it_once() {
    let db = TestDb::new().await;
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(Arc::new(db.store().await));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for s in &stores {
        let s = s.clone();
        tasks.spawn(async move {
            s.acquire(&["a".to_string(), "b".to_string()], Duration::ZERO)
                .await
                .unwrap()
        });
    }
    let mut holders = std::collections::HashMap::<String, usize>::new();
    while let Some(r) = tasks.join_next().await {
        for t in r.unwrap() {
            *holders.entry(t.destination).or_default() += 1;
        }
    }
    assert_eq!(holders.get("a"), Some(&1), "{holders:?}");
    assert_eq!(holders.get("b"), Some(&1), "{holders:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_hears_when_another_stores_work_for_a_destination() {
    let db = TestDb::new().await;
    let (a, b) = (db.store().await, db.store().await);
    let own = a.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let cancel = tokio_util::sync::CancellationToken::new();
    let listening = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            a.listen(
                Arc::new(move |d: &str| {
                    let _ = tx.send(d.to_string());
                }),
                cancel,
            )
            .await
        })
    };
    let store = |store: &PgStore, destination: &str| {
        let event = NewEvent {
            name: "ping".into(),
            body: format!("{{\"for\":\"{destination}\"}}").into(),
            received_at: kitebridge::store::now_ms(),
            build: None,
        };
        let d = NewDelivery {
            route: "r".into(),
            destination: destination.into(),
            template: None,
            group: None,
            not_before: None,
            thread_key: None,
        };
        let store = store.clone();
        async move {
            store
                .accept(event, Box::new(move |_| vec![d.clone()]), None)
                .await
                .unwrap()
        }
    };
    // Listening takes a moment to begin; keep storing until it hears.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            store(&b, "ci-slack").await;
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                return d;
            }
        }
    })
    .await
    .expect("a heard of b's work within 10 s");
    assert_eq!(heard, "ci-slack");
    // Its own intake's work it does not hear (its workers have those messages from intake in
    // memory); the command line's, and other replicas', it does. Heard in commit order.
    let kitebridge::store::Accepted::New { delivery_ids, .. } = store(&own, "own-slack").await
    else {
        panic!("a new event")
    };
    let retried = own
        .retry(
            kitebridge::store::RetrySelector::Id(delivery_ids[0]),
            kitebridge::store::now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(retried, 1);
    store(&b, "other-slack").await;
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("heard within 10 s")
            .expect("still listening");
        if d != "ci-slack" {
            heard.push(d);
        }
    }
    assert_eq!(
        heard,
        ["own-slack", "other-slack"],
        "the retry and the other replica's intake, not its own intake"
    );
    cancel.cancel();
    listening.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_an_error_that_never_shows_the_password() {
    let dead = crate::helpers::dead_address();
    let url = format!("postgres://kb:never-shown-pw@{dead}/kitebridge?sslmode=disable");
    let mut options = PgOptions::parse(&url, std::path::Path::new("")).unwrap();
    options.config.connect_timeout(Duration::from_secs(1));
    let e = PgStore::connect(options, Schema::Migrate)
        .await
        .unwrap_err();
    let StoreError::Database(text) = &e else {
        panic!("{e:?}")
    };
    assert!(!text.contains("never-shown-pw"), "{text}");
    assert!(!format!("{e:?}").contains("never-shown-pw"));
}

/// A statement stuck behind another session's lock is cancelled by the server before the
/// replica's own limit, with the server's reason, and the connection is fine afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_on_a_lock_is_cancelled_by_the_server() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut blocker = db.connect().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = store
        .accept(ping(1), Box::new(|_| Vec::new()), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("statement timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "before the replica gave up itself: {:?}",
        started.elapsed()
    );
    tx.rollback().await.unwrap();
    store
        .accept(ping(2), Box::new(|_| Vec::new()), None)
        .await
        .unwrap();
}

/// An operation the replica gives up on leaves its connection out of the pool: a connection
/// with a request outstanding on a server that stopped answering is never handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_given_up_on_is_closed_not_reused() {
    let db = TestDb::new().await;
    db.store().await;
    let relay = crate::pg::Relay::start(crate::pg::server_addr(&db.url)).await;
    let direct = crate::pg::server_addr(&db.url).to_string();
    let name = format!("kb-given-up-{:04x}", fastrand::u16(..));
    let url = db
        .url
        .replace("localhost", "127.0.0.1")
        .replace(&direct, &relay.addr.to_string());
    let url = format!(
        "{url}{}application_name={name}",
        if url.contains('?') { "&" } else { "?" }
    );
    let mut options = PgOptions::parse(&url, std::path::Path::new("")).unwrap();
    options.max_connections = 2;
    let store = PgStore::connect(options, Schema::Check).await.unwrap();
    let backends =
        format!("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{name}'");
    store.probe().await.unwrap();
    let before = db.count(&backends).await;
    assert!(before >= 1, "{before}");

    relay.cut();
    let e = store.probe().await.unwrap_err();
    assert!(e.to_string().contains("did not answer within"), "{e}");
    relay.restore();
    // The given-up connection says goodbye once bytes flow; its server session ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db.count(&backends).await >= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection given up on is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.probe().await.unwrap();
}

/// Events that arrive while the intake is busy are written together, in one transaction. One
/// the database refuses (its message's build key holds a NUL, which PostgreSQL's text cannot
/// hold; the pipeline's slug comes from the body, where `\u0000` is valid JSON) makes the
/// whole batch fail, and then each event is taken again alone: it fails, the rest are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_fails_alone_not_its_batch() {
    use kitebridge::transition::BuildOutcome;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = TestDb::new().await;
    // Two connections: one intake writer, so what waits behind it is one batch.
    let mut options = db.options(Duration::from_secs(2));
    options.max_connections = 2;
    let store = Arc::new(PgStore::connect(options, Schema::Migrate).await.unwrap());
    let build = |branch: &str| BuildOutcome {
        pipeline: "web".into(),
        branch: branch.into(),
        number: 1,
        failed: true,
        finished_at: None,
    };

    // The writer is held on the branch history table while the batch gathers.
    let mut blocker = db.connect().await;
    let hold = blocker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE build_states IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let first = {
        let store = store.clone();
        let mut e = ping(0);
        e.build = Some(build("held"));
        tokio::spawn(async move { store.accept(e, Box::new(|_| Vec::new()), None).await })
    };
    let waiting =
        "SELECT COUNT(*) FROM pg_locks WHERE relation = 'build_states'::regclass AND NOT granted";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db.count(waiting).await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let planned = Arc::new(AtomicUsize::new(0));
    let mut batch = Vec::new();
    for n in 1..=10u32 {
        let (store, planned) = (store.clone(), planned.clone());
        batch.push(tokio::spawn(async move {
            let plan = move |_: Option<&kitebridge::transition::Transition>| {
                planned.fetch_add(1, Ordering::SeqCst);
                vec![NewDelivery {
                    route: "r".into(),
                    destination: "d".into(),
                    template: None,
                    group: None,
                    not_before: None,
                    thread_key: (n == 5).then(|| "web\u{0}#1".to_string()),
                }]
            };
            store.accept(ping(n), Box::new(plan), None).await
        }));
    }
    // They are handed in at once; give the handlers a moment to queue behind the writer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.rollback().await.unwrap();
    first.await.unwrap().unwrap();

    let mut stored = 0;
    for (n, task) in (1..=10).zip(batch) {
        match task.await.unwrap() {
            Ok(kitebridge::store::Accepted::New { delivery_ids, .. }) => {
                assert_ne!(n, 5);
                assert_eq!(delivery_ids.len(), 1);
                stored += 1;
            }
            Ok(other) => panic!("event {n}: {other:?}"),
            Err(e) => {
                assert_eq!(n, 5, "{e}");
                assert!(e.to_string().contains("0x00"), "{e}");
            }
        }
    }
    assert_eq!(stored, 9);
    // All ten were planned in the refused batch, then again alone.
    assert_eq!(planned.load(Ordering::SeqCst), 10 * 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM events").await, 10);
    assert_eq!(db.count("SELECT COUNT(*) FROM deliveries").await, 9);
}

fn ping(n: u32) -> NewEvent {
    NewEvent {
        name: "ping".into(),
        body: format!("{{\"n\":{n}}}").into(),
        received_at: kitebridge::store::now_ms(),
        build: None,
    }
}

/// A TLS-terminating stand-in for the server: answers PostgreSQL's TLS request, completes the
/// handshake with `cert`, then passes the plain protocol on to the real server.
async fn tls_front(
    upstream: std::net::SocketAddr,
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain = vec![cert.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if client.read_exact(&mut request).await.is_err() {
                    return;
                }
                // SSLRequest: length 8, code 80877103. Anything else is refused: TLS only.
                if request != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    return;
                }
                if client.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_or_verified_as_sslmode_says() {
    let db = TestDb::new().await;
    db.store().await;
    let real = PgOptions::parse(&db.url, std::path::Path::new("")).unwrap();
    let upstream = match (&real.config.get_hosts()[0], real.config.get_ports().first()) {
        (tokio_postgres::config::Host::Tcp(h), port) => {
            let ip: std::net::IpAddr = if h == "localhost" {
                [127, 0, 0, 1].into()
            } else {
                h.parse().expect("the test server's host is an address")
            };
            std::net::SocketAddr::new(ip, *port.unwrap_or(&5432))
        }
        #[allow(unreachable_patterns)]
        _ => panic!("the test server is reached over TCP"),
    };
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let front = tls_front(upstream, &cert).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("other.pem"), other.cert.pem()).unwrap();
    let user = real.config.get_user().unwrap().to_string();
    let dbname = real.config.get_dbname().unwrap().to_string();
    let password = real
        .config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let connect = |query: &str| {
        let url = format!("postgres://{user}{password}@{front}/{dbname}?{query}");
        let options = PgOptions::parse(&url, dir.path()).unwrap();
        async move { PgStore::connect(options, Schema::Check).await }
    };
    connect("sslmode=require")
        .await
        .expect("require: encrypted, not verified");
    connect("sslmode=prefer")
        .await
        .expect("prefer: TLS when offered");
    let verified = connect("sslmode=verify-full&sslrootcert=ca.pem").await;
    verified.expect("verify-full with the server's own root");
    let wrong = connect("sslmode=verify-full&sslrootcert=other.pem")
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("certificate"), "{wrong}");
    let plain = connect("sslmode=disable").await.unwrap_err();
    assert!(matches!(plain, StoreError::Database(_)), "{plain:?}");
    assert_eq!(
        PgOptions::parse(
            &format!("postgres://u@{front}/d?sslmode=verify-full"),
            dir.path()
        )
        .unwrap()
        .ssl,
        SslMode::VerifyFull
    );
}

#[tokio::test]
async fn a_read_only_store_reads_and_the_server_refuses_its_writes() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store
        .accept(ping(1), Box::new(|_| Vec::new()), None)
        .await
        .unwrap();
    let reader = PgStore::connect(db.options(Duration::from_secs(2)), Schema::ReadOnly)
        .await
        .unwrap();
    assert_eq!(reader.recent_events(50).await.unwrap().len(), 1);
    let e = reader
        .accept(ping(2), Box::new(|_| Vec::new()), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only transaction"), "{e}");
    assert_eq!(db.count("SELECT COUNT(*) FROM events").await, 1);
    // And it never migrates: an empty database stays empty.
    let empty = TestDb::new().await;
    assert!(
        PgStore::connect(empty.options(Duration::from_secs(2)), Schema::ReadOnly)
            .await
            .is_err()
    );
    assert_eq!(
        empty
            .count("SELECT COUNT(*) FROM pg_tables WHERE tablename LIKE 'kitebridge%'")
            .await,
        0
    );
}
