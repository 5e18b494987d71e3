//! Restarts that refuse nothing: the drain a load balancer needs to move traffic away, a
//! rolling restart of replicas behind one, and a single node restarted under systemd socket
//! activation while webhooks keep coming.

use crate::balancer::{Balancer, HEALTH_EVERY};
use crate::helpers::*;
use crate::pg::TestDb;
use crate::replicas::{Replica, replica_config};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Posts a new build every `every` to `addr` until stopped; keeps each build number's answer
/// (the status, or the error when the request failed).
struct Load {
    stop: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<Vec<(u64, Result<u16, String>)>>,
}

impl Load {
    fn start(addr: SocketAddr, every: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let done = tokio::spawn(async move {
            let answers = Arc::new(Mutex::new(Vec::new()));
            let mut posts = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(every);
            let mut n = 0;
            while !token.is_cancelled() {
                tick.tick().await;
                n += 1;
                let answers = answers.clone();
                // Each on a connection of its own, not waiting for the one before.
                posts.spawn(async move {
                    let got = post_keeping_why(addr, &build_finished(n)).await;
                    answers.lock().unwrap().push((n, got));
                });
            }
            while posts.join_next().await.is_some() {}
            let mut all = answers.lock().unwrap().clone();
            all.sort_by_key(|(n, _)| *n);
            all
        });
        Self { stop, done }
    }

    async fn finish(self) -> Vec<(u64, Result<u16, String>)> {
        self.stop.cancel();
        self.done.await.unwrap()
    }
}

/// Posts `body` signed to `addr`: `Ok(202)`, or what else came back (the status and the
/// answer's text) or went wrong, so a failure says who refused and why.
async fn post_keeping_why(addr: SocketAddr, body: &[u8]) -> Result<u16, String> {
    match post_signed_answer_to(addr, TOKEN, body).await {
        Ok((202, _)) => Ok(202),
        Ok((status, text)) => Err(format!("{status} {text}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Every answer was 202, and every build then reached the recorder.
async fn assert_none_refused_or_lost(answers: &[(u64, Result<u16, String>)], rec: &Recorder) {
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, a)| !matches!(a, Ok(202)))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let wanted: BTreeSet<u64> = answers.iter().map(|(n, _)| *n).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: BTreeSet<u64> = rec
            .received_on("slack")
            .iter()
            .filter_map(|r| build_number_in(r.json()["text"].as_str().unwrap_or_default()))
            .collect();
        let missing: Vec<_> = wanted.difference(&seen).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "never delivered: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_service_says_so_on_readyz_and_still_takes_webhooks_until_the_drain_ends() {
    let _cluster = one_cluster_at_a_time().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"2s\"\n{}",
            with_store(&config_for(&rec, ""), &dir.path().join("k.db"))
        ),
    )
    .unwrap();
    let mut running = start_binary(&cfg).await;
    let client = kitebridge::destination::client();
    let readyz = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(readyz(running.addr).await.unwrap(), 200);
    running.signal("TERM");
    let signalled = Instant::now();
    running
        .wait_for_line("draining")
        .await
        .expect("says it drains");
    assert_eq!(
        readyz(running.addr).await.unwrap(),
        503,
        "out of the balancer"
    );
    assert_eq!(
        post_signed_to(running.addr, &build_finished(1))
            .await
            .unwrap(),
        202,
        "still served while draining"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), running.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(
        signalled.elapsed() >= Duration::from_millis(1900),
        "the listener stayed open for the drain: {:?}",
        signalled.elapsed()
    );
    assert!(
        post_signed_to(running.addr, &build_finished(2))
            .await
            .is_err()
    );
    assert_eq!(
        rec.wait_for("slack", 1).await.len(),
        1,
        "the drained event went out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_balancer_refuses_and_loses_no_webhook() {
    let _cluster = one_cluster_at_a_time().await;
    let db = TestDb::new().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = replica_config(dir.path(), &db, &rec, "rate = 0\nconcurrency = 4");
    // A drain longer than the balancer takes to see a replica go: the round of checks in
    // flight when the drain starts (each waits for a store write, slow on a busy machine) and
    // two failed checks after it, so it stops sending before the listener closes.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("drain = \"0s\"", "drain = \"5s\"")).unwrap();
    assert!(Duration::from_secs(2) + HEALTH_EVERY * 2 < Duration::from_secs(5));
    let lb = Balancer::start().await;
    let mut replicas = vec![Replica::start(&cfg).await, Replica::start(&cfg).await];
    for r in &replicas {
        lb.add(r.addr);
        lb.until_ready(r.addr).await;
    }
    let load = Load::start(lb.addr, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each replica in turn: a new one joins, then the old one is stopped as a deploy does.
    for _ in 0..2 {
        let fresh = Replica::start(&cfg).await;
        lb.add(fresh.addr);
        lb.until_ready(fresh.addr).await;
        let mut old = replicas.remove(0);
        old.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(20), old.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "stopped cleanly");
        lb.remove(old.addr);
        replicas.push(fresh);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answers = load.finish().await;
    assert!(
        answers.len() > 100,
        "steady load: {} webhooks",
        answers.len()
    );
    assert_none_refused_or_lost(&answers, &rec).await;
}

/// Starts the binary on a socket passed as systemd does: fd 3, `LISTEN_FDS=1`, and
/// `LISTEN_PID` naming the process itself (the shell's pid, which `exec` keeps).
async fn start_activated(config: &std::path::Path, socket: &std::net::TcpListener) -> Running {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kitebridge"))
        .args(serve_args(config));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already in place: only its close-on-exec flag must go.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    start_command(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_socket_activation_webhooks_wait_out_a_restart_instead_of_being_refused() {
    let _cluster = one_cluster_at_a_time().await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        with_store(&config_for(&rec, ""), &dir.path().join("k.db")),
    )
    .unwrap();
    // The socket systemd would hold: it outlives every process serving it.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let first = start_activated(&cfg, &socket).await;
    assert_eq!(
        first.addr, addr,
        "serves the passed socket, not [server] listen"
    );
    assert!(
        first
            .startup
            .iter()
            .any(|l| l.contains("the socket systemd passed")),
        "{:?}",
        first.startup
    );
    let load = Load::start(addr, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut first = Replica::gather(first);
    first.signal("TERM");
    let _ = first.child.wait().await;
    // Nobody accepts for a moment: connections wait in the socket's queue.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = Replica::gather(start_activated(&cfg, &socket).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.finish().await;
    assert!(answers.len() > 50, "{} webhooks", answers.len());
    assert_none_refused_or_lost(&answers, &rec).await;
    drop(second);
}
