//! A PostgreSQL that stops: a server of the test's own (initdb into a temporary folder, on a
//! free port), stopped and started again under a running `kitebridge serve`.

use crate::helpers::*;
use crate::replicas::Replica;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The PostgreSQL server programs (`initdb`, `pg_ctl`): Debian keeps them per version.
fn server_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no {name} under /usr/lib/postgresql: install Debian's postgresql (bash .ci/test does)"
        )
    })
}

/// Runs a server program as the `postgres` user when we are root (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of this test's own, removed when dropped.
struct PrivatePg {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePg {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kb-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .args(["postgres:postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the data folder to postgres");
        }
        let data = dir.path().join("data");
        let out = as_server_user(&server_bin("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = dead_address().port();
        let pg = Self { dir, port };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let mut c = as_server_user(&server_bin("pg_ctl"));
        c.args([
            "-D",
            data.to_str().unwrap(),
            "-w",
            "-l",
            log.to_str().unwrap(),
        ]);
        match action {
            "start" => c.args(["-o", &options, "start"]),
            _ => c.args(["-m", "fast", "stop"]),
        };
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_server_user(&server_bin("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    kitebridge::destination::client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_turns_intake_and_readyz_503_and_both_recover_with_nothing_lost() {
    let _cluster = one_cluster_at_a_time().await;
    let pg = PrivatePg::start();
    // Slack is down at first, so what was accepted stays queued through the outage.
    let slack = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain = "0s"

[buildkite]
token = "{TOKEN}"

[storage]
url = "{url}"
lease = "2s"
max_connections = 4

[delivery]
backoff_initial = "100ms"
backoff_max = "500ms"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "http://{slack}/slack"
rate = 0

[[routes]]
name = "all"
to = ["slack"]
"#,
            url = pg.url()
        ),
    )
    .unwrap();
    let app = Replica::start(&cfg).await;
    let mut accepted = Vec::new();
    for n in 1..=5 {
        assert_eq!(
            post_signed_to(app.addr, &build_finished(n)).await.unwrap(),
            202
        );
        accepted.push(n);
    }
    assert_eq!(status(app.addr, "/readyz").await, 200);

    // Blocking for the second pg_ctl takes is fine here: the service runs in its own process.
    pg.ctl("stop");
    for n in 6..=8 {
        assert_eq!(
            post_signed_to(app.addr, &build_finished(n)).await.unwrap(),
            503,
            "nothing is answered 2xx while it cannot be stored"
        );
    }
    assert_eq!(status(app.addr, "/readyz").await, 503);
    assert_eq!(
        status(app.addr, "/healthz").await,
        200,
        "alive all the same"
    );

    pg.ctl("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(app.addr, "/readyz").await != 200 {
        assert!(Instant::now() < deadline, "/readyz never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 9..=12 {
        assert_eq!(
            post_signed_to(app.addr, &build_finished(n)).await.unwrap(),
            202
        );
        accepted.push(n);
    }
    // Slack comes back: everything answered 202, before and after the outage, arrives.
    let rec = Recorder::start_on(slack).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: std::collections::BTreeSet<u64> = rec
            .received_on("slack")
            .iter()
            .filter_map(|r| build_number_in(r.json()["text"].as_str().unwrap_or_default()))
            .collect();
        if accepted.iter().all(|n| seen.contains(n)) {
            assert!(
                !seen.iter().any(|n| (6..=8).contains(n)),
                "refused events were not kept"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {seen:?} of {accepted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!app.logged("not ready").is_empty(), "the outage is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_turns_intake_and_readyz_503_and_both_recover() {
    let _cluster = one_cluster_at_a_time().await;
    let db = crate::pg::TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::replicas::replica_config(dir.path(), &db, &rec, "rate = 0");
    let app = Replica::start(&cfg).await;
    assert_eq!(
        post_signed_to(app.addr, &build_finished(1)).await.unwrap(),
        202
    );
    assert_eq!(status(app.addr, "/readyz").await, 200);

    db.set_read_only(true).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(app.addr, "/readyz").await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz kept saying ready on a read-only database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 2..=4 {
        assert_eq!(
            post_signed_to(app.addr, &build_finished(n)).await.unwrap(),
            503,
            "nothing is answered 2xx while it cannot be stored"
        );
    }

    db.set_read_only(false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(app.addr, "/readyz").await != 200 {
        assert!(Instant::now() < deadline, "/readyz never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post_signed_to(app.addr, &build_finished(5)).await.unwrap(),
        202
    );
    let got = rec.wait_for("slack", 2).await;
    let mut numbers: Vec<u64> = got
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str().unwrap_or_default()))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers, [1, 5], "what was accepted is sent, and only that");
}
