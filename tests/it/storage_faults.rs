//! The store on a real disk that fills up: a small tmpfs mounted by the test (which must run
//! as root). Intake and `/readyz` both say the store cannot take an event, nothing answered
//! `2xx` is lost, and both recover once there is room again.

use crate::helpers::*;
use kitebridge::store::DeliveryState;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tmpfs of its own, unmounted when dropped, even by a failing test.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it) on a fresh folder.
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Self { dir },
            Ok(out) => panic!(
                "this test mounts a small tmpfs and must run as root: `mount` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("this test mounts a small tmpfs and must run as root: `mount`: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: after a failed assertion the service may still hold the store open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a file in `dir` until the disk is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return path,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

async fn readyz(app: &TestApp) -> u16 {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    resp.status().as_u16()
}

/// The build numbers Slack has received so far.
fn delivered(rec: &Recorder) -> BTreeSet<u64> {
    rec.received_on("slack")
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str()?))
        .collect()
}

/// Waits (up to 10 s) until Slack has received every build in `accepted`.
async fn wait_delivered(rec: &Recorder, accepted: &BTreeSet<u64>) -> BTreeSet<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = delivered(rec);
        if got.is_superset(accepted) || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_intake_and_readyz_503_until_there_is_room_again() {
    let disk = Tmpfs::mount("4m");
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&with_store(
        &config_for(&rec, ""),
        &disk.path().join("kitebridge.db"),
    ))
    .await;
    assert_eq!(readyz(&app).await, 200, "ready with room on the disk");
    let mut accepted = BTreeSet::new();
    for n in 1..=5 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
        accepted.insert(n);
    }
    let sent = |d: &[kitebridge::store::Delivery]| {
        d.len() == 10 && d.iter().all(|d| d.state == DeliveryState::Sent)
    };
    assert!(
        sent(&wait_for_deliveries(&app.db, sent).await),
        "the first five are sent"
    );
    // The next sends (one to Slack, two to Teams: as many as each has in flight at once) take
    // long enough that no attempt is recorded while the disk is full. The webhooks and the
    // probes are all that is written then, so what they are answered is the disk's doing.
    rec.script("slack", [Reply::Slow(2500)]);
    rec.script("teams", [Reply::Slow(2500), Reply::Slow(2500)]);

    let filler = fill(disk.path());
    // What the log's file already holds may still take an event or two.
    let mut refused = None;
    for n in 6..=100 {
        match app.post_signed(&build_finished(n)).await {
            (202, _) => {
                accepted.insert(n);
            }
            (503, _) => {
                refused = Some(n);
                break;
            }
            (status, answer) => panic!("build {n}: {status} {answer}"),
        }
    }
    let refused = refused.expect("a full disk refuses events");
    assert_eq!(readyz(&app).await, 503, "an event was just refused");
    for n in refused + 1..refused + 4 {
        // A smaller event may still fit where the refused one did not; the probe, as large as
        // the largest, does not.
        match app.post_signed(&build_finished(n)).await {
            (202, _) => {
                accepted.insert(n);
            }
            (503, _) => {}
            (status, answer) => panic!("build {n}: {status} {answer}"),
        }
        assert_eq!(readyz(&app).await, 503, "the disk is still full");
    }

    std::fs::remove_file(filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while readyz(&app).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still 503 with room on the disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh: BTreeSet<u64> = (200..203).collect();
    for &n in &fresh {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
    }
    let got = wait_delivered(&rec, &accepted.union(&fresh).copied().collect()).await;
    assert!(
        got.is_superset(&accepted),
        "every event answered 202 is sent: accepted {accepted:?}, sent {got:?}"
    );
    assert!(got.is_superset(&fresh), "sent {got:?}");
    app.stop().await;
}
