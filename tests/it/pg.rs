//! PostgreSQL for tests: one fresh database per test on the server named by
//! `KITEBRIDGE_TEST_DATABASE_URL` (on a developer's machine, the local server when unset). A
//! test that needs PostgreSQL fails, never skips, when none can be reached.

use kitebridge::store::postgres::PgOptions;
use kitebridge::store::{PgStore, Schema};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The server tests create their databases on.
pub fn admin_url() -> String {
    match std::env::var("KITEBRIDGE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "KITEBRIDGE_TEST_DATABASE_URL is not set: CI must give the tests a PostgreSQL server (.ci/test starts one)"
            )
        }
        _ => "postgres://postgres@127.0.0.1:5432/postgres".into(),
    }
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn admin() -> tokio_postgres::Client {
    let url = admin_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach the test PostgreSQL at KITEBRIDGE_TEST_DATABASE_URL ({e}); run `bash .ci/test` or set the variable")
        });
    tokio::spawn(connection);
    client
}

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kb_test_{}_{}_{:04x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    /// Options for this database, with a short lease (tests wait for takeovers).
    pub fn options(&self, lease: Duration) -> PgOptions {
        let mut o = PgOptions::parse(&self.url, std::path::Path::new("")).unwrap();
        o.lease = lease;
        o.max_connections = 4;
        o
    }

    /// A store on this database (one replica's), migrated.
    pub async fn store(&self) -> PgStore {
        self.store_with(Duration::from_secs(2)).await
    }

    pub async fn store_with(&self, lease: Duration) -> PgStore {
        PgStore::connect(self.options(lease), Schema::Migrate)
            .await
            .unwrap()
    }

    /// A connection of its own to this database, bypassing kitebridge.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Runs `sql` on this database directly.
    pub async fn execute(&self, sql: &str) {
        self.connect().await.batch_execute(sql).await.unwrap();
    }

    /// The first column of the first row of `sql`, as an integer.
    pub async fn count(&self, sql: &str) -> i64 {
        self.connect()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The first column of the first row of `sql`, as text.
    pub async fn text(&self, sql: &str) -> String {
        self.connect()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Makes this database refuse writes (`default_transaction_read_only`), or take them
    /// again, for every session: the setting applies to new sessions, so the ones open now
    /// are ended and whoever uses the database reconnects under it.
    pub async fn set_read_only(&self, on: bool) {
        let admin = admin().await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = {}",
                self.name,
                if on { "on" } else { "off" }
            ))
            .await
            .unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .await
            .unwrap();
    }

    /// `[storage]` for a config file.
    pub fn storage_toml(&self) -> String {
        format!(
            "[storage]\nurl = \"{}\"\nlease = \"2s\"\nmax_connections = 4\n",
            self.url
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropped from inside a runtime: a thread of its own with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP relay to the test server that can be cut like a network: while cut, bytes stop
/// flowing both ways and new connections hang, but nothing is closed, as when packets are lost.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut flowing = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let mut up = [0u8; 16 * 1024];
                    let mut down = [0u8; 16 * 1024];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    loop {
                        // While cut, wait for the cable to come back; read nothing meanwhile.
                        if *flowing.borrow() {
                            if flowing.wait_for(|c| !*c).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        tokio::select! {
                            n = cr.read(&mut up) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
                            },
                            n = sr.read(&mut down) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
                            },
                            _ = flowing.changed() => {}
                        }
                    }
                });
            }
        });
        Self { addr, cut }
    }

    /// Stops every byte, both ways.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets them flow again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// The test server's address, for a relay.
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    let o = PgOptions::parse(url, std::path::Path::new("")).unwrap();
    let host = match &o.config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) if h == "localhost" => "127.0.0.1".to_string(),
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the test server is reached over TCP"),
    };
    let port = o.config.get_ports().first().copied().unwrap_or(5432);
    std::net::SocketAddr::new(host.parse().unwrap(), port)
}
