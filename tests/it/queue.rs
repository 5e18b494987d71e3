//! The durable queue: retries that respect Slack and Teams, dead letters, replay, duplicates,
//! pacing, independence of destinations, storage failures and graceful shutdown.

use crate::helpers::*;
use kitebridge::store::DeliveryState;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_its_retry_after() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::RateLimited(2)]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let got = rec.wait_for("slack", 2).await;
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(got[0].body, got[1].body, "the same message");
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    let slack = all.iter().find(|d| d.destination == "slack").unwrap();
    assert_eq!((slack.state, slack.attempts), (DeliveryState::Sent, 2));
}

#[tokio::test]
async fn a_500_then_200_is_delivered_once() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Status(500, "oops")]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    let slack = all.iter().find(|d| d.destination == "slack").unwrap();
    assert_eq!(
        (slack.state, slack.attempts),
        (DeliveryState::Sent, 2),
        "{slack:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rec.received_on("slack").len(),
        2,
        "one failure, one success, nothing after"
    );
    let (_, attempts) = {
        use kitebridge::store::Operations;
        open_store(&app.db).show(slack.id).await.unwrap()
    };
    let outcomes: Vec<(&str, Option<u16>)> = attempts
        .iter()
        .map(|a| (a.outcome.as_str(), a.status))
        .collect();
    assert_eq!(outcomes, [("retry", Some(500)), ("sent", Some(200))]);
}

/// The host allow-list is checked on the configured URL; a redirect would carry the message to
/// a host nobody checked, so it is not followed: it is a permanent failure.
#[tokio::test]
async fn a_redirect_is_not_followed_and_becomes_a_dead_letter() {
    let rec = Recorder::start().await;
    let elsewhere = Recorder::start().await;
    rec.script("slack", [Reply::Redirect(elsewhere.url("collect"))]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().any(|d| d.state == DeliveryState::Dead)
    })
    .await;
    let dead = all.iter().find(|d| d.destination == "slack").unwrap();
    assert_eq!(
        (dead.state, dead.last_status),
        (DeliveryState::Dead, Some(307))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(elsewhere.received().is_empty(), "nothing went elsewhere");
    assert_eq!(rec.received_on("slack").len(), 1, "and it is not retried");
}

#[tokio::test]
async fn a_404_becomes_a_dead_letter_and_retry_resends_it_after_the_fix() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Status(404, "channel_not_found")]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().any(|d| d.state == DeliveryState::Dead)
    })
    .await;
    let dead = all
        .iter()
        .find(|d| d.destination == "slack")
        .unwrap()
        .clone();
    assert_eq!(dead.state, DeliveryState::Dead);
    assert_eq!(dead.last_status, Some(404));
    assert!(
        dead.last_error
            .as_deref()
            .unwrap()
            .contains("channel_not_found")
    );
    assert_eq!(
        rec.received_on("slack").len(),
        1,
        "a permanent failure is not retried"
    );

    // The channel is fixed (the recorder now answers 200); an operator replays the message.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(&cfg, with_store(&config_for(&rec, ""), &app.db)).unwrap();
    let list = run_ok(&[
        "deliveries",
        "list",
        "--state",
        "dead",
        "--config",
        cfg.to_str().unwrap(),
    ])
    .await;
    assert!(
        list.contains(&format!("{:>8}  dead", dead.id)) && list.contains("channel_not_found"),
        "{list}"
    );
    let show = run_ok(&[
        "deliveries",
        "show",
        &dead.id.to_string(),
        "--config",
        cfg.to_str().unwrap(),
    ])
    .await;
    assert!(
        show.contains("HTTP 404") && show.contains("\"text\": \"❌ Web App #1 failed\""),
        "{show}"
    );
    assert!(
        !show.contains(&rec.addr.to_string()),
        "no webhook URL in show: {show}"
    );
    let retry = run_ok(&[
        "deliveries",
        "retry",
        &dead.id.to_string(),
        "--config",
        cfg.to_str().unwrap(),
    ])
    .await;
    assert!(retry.contains("re-queued 1 delivery"), "{retry}");

    let got = rec.wait_for("slack", 2).await;
    assert_eq!(got.len(), 2, "re-sent");
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    assert!(
        all.iter().all(|d| d.state == DeliveryState::Sent),
        "{all:?}"
    );
    // Every sent message still shows what was sent: the resent one, and those sent at once.
    for d in &all {
        let show = run_ok(&[
            "deliveries",
            "show",
            &d.id.to_string(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .await;
        assert!(
            show.contains("state        sent") && show.contains("\nbody:\n{"),
            "{show}"
        );
    }
}

#[tokio::test]
async fn a_throttled_destination_does_not_delay_another() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::RateLimited(3)]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    for n in 1..=3 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
    }
    let teams = rec.wait_for("teams", 3).await;
    assert_eq!(teams.len(), 3);
    let slack = rec.wait_for("slack", 4).await;
    assert_eq!(slack.len(), 4, "one 429, then all three");
    assert!(
        slack[1].at - slack[0].at >= Duration::from_secs(3),
        "slack paused for its Retry-After"
    );
    assert!(
        teams[2].at < slack[1].at,
        "teams went on while slack was paused"
    );
}

#[tokio::test]
async fn a_duplicate_event_gives_one_message() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    let body = build_finished(7);
    let (status, first) = app.post_signed(&body).await;
    assert_eq!((status, first["status"].as_str()), (202, Some("accepted")));
    let (status, second) = app.post_signed(&body).await;
    assert_eq!(
        (status, second["status"].as_str()),
        (202, Some("duplicate")),
        "{second}"
    );
    assert_eq!(second["id"], first["id"]);
    assert_eq!(
        app.post_signed(&build_finished(8)).await.1["status"],
        "accepted",
        "a different body is new"
    );
    assert_eq!(rec.wait_for("slack", 2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rec.received_on("slack").len(),
        2,
        "build 7 once, build 8 once"
    );
}

#[tokio::test]
async fn dedupe_can_be_turned_off() {
    let rec = Recorder::start().await;
    let toml = format!(
        "{}\n[storage]\ndedupe_window = \"0s\"\n",
        config_for(&rec, "")
    );
    let dir = tempfile::tempdir().unwrap();
    let toml = toml.replace(
        "dedupe_window = \"0s\"",
        &format!(
            "dedupe_window = \"0s\"\npath = \"{}\"",
            dir.path().join("k.db").display()
        ),
    );
    let app = TestApp::spawn(&toml).await;
    let body = build_finished(7);
    app.post_signed(&body).await;
    assert_eq!(app.post_signed(&body).await.1["status"], "accepted");
    assert_eq!(rec.wait_for("slack", 2).await.len(), 2);
}

#[tokio::test]
async fn pacing_spaces_messages_to_one_destination() {
    let rec = Recorder::start().await;
    let toml = config_for(&rec, "").replacen("rate = 0", "rate = 4\nburst = 1", 1);
    let app = TestApp::spawn(&toml).await;
    for n in 1..=5 {
        app.post_signed(&build_finished(n)).await;
    }
    let got = rec.wait_for("slack", 5).await;
    assert_eq!(got.len(), 5);
    let spread = got[4].at - got[0].at;
    assert!(
        spread >= Duration::from_millis(950),
        "4 per second: 5 messages span at least ~1 s, got {spread:?}"
    );
    let numbers: Vec<u64> = got
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str()?))
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "first in, first out");
}

#[tokio::test]
async fn messages_still_failing_after_max_age_become_dead_letters() {
    let rec = Recorder::start().await;
    rec.script("slack", (0..50).map(|_| Reply::Status(503, "unavailable")));
    let toml = config_for(&rec, "").replace(
        "backoff_max = \"1s\"",
        "backoff_max = \"200ms\"\nmax_age = \"1s\"",
    );
    let app = TestApp::spawn(&toml).await;
    app.post_signed(&build_finished(1)).await;
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().any(|d| d.state == DeliveryState::Dead)
    })
    .await;
    let slack = all.iter().find(|d| d.destination == "slack").unwrap();
    assert_eq!(slack.state, DeliveryState::Dead, "{slack:?}");
    assert!(slack.attempts >= 2);
    assert!(
        slack
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("still failing after 1s"),
        "{slack:?}"
    );
}

#[tokio::test]
async fn a_template_that_renders_invalid_json_dead_letters_the_message() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("slack")).unwrap();
    // Valid for every sample event (so the service starts), broken for this one payload.
    std::fs::write(
        dir.path().join("slack/broken.hbs"),
        "{\"text\": \"{{kb.title}}\" {{#if build.env.BREAK}}, oops{{/if}} }",
    )
    .unwrap();
    let toml = config_for(&rec, "").replace(
        "to = [\"slack\", \"teams\"]",
        &format!(
            "to = [\"slack\"]\ntemplate = \"broken\"\n\n[templates]\ndir = \"{}\"",
            dir.path().display()
        ),
    );
    let app = TestApp::spawn(&toml).await;
    let mut breaking = fixture_json("build.finished");
    breaking["build"]["env"] = json!({"BREAK": "1"});
    let body = serde_json::to_vec(&breaking).unwrap();
    assert_eq!(app.post_signed(&body).await.0, 202);
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().any(|d| d.state == DeliveryState::Dead)
    })
    .await;
    assert_eq!(all[0].state, DeliveryState::Dead);
    assert!(
        all[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("rendered invalid JSON"),
        "{:?}",
        all[0]
    );
    assert!(rec.received().is_empty(), "never sent broken");
}

#[tokio::test]
async fn an_unwritable_store_answers_503_and_readyz_turns_503() {
    let rec = Recorder::start().await;
    let config = kitebridge::config::Config::parse(
        std::path::Path::new("t.toml"),
        &config_for(&rec, ""),
        |_| None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(open_store(&dir.path().join("k.db")));
    store.fail_writes.store(true, Ordering::SeqCst);
    let service = kitebridge::server::Service::start_with_store(config, Arc::new(store))
        .await
        .unwrap();
    let app = TestApp::serve(service, "unused.db".into(), None).await;
    let (status, answer) = app.post_signed(&build_finished(1)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("storage unavailable")
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive, just not ready");
}

#[tokio::test]
async fn stopping_leaves_unsent_messages_queued_for_the_next_start() {
    let rec = Recorder::start().await;
    // Still in flight when the stop comes, which first gives the listener half a second.
    rec.script("slack", [Reply::Slow(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let toml = with_store(&config_for(&rec, ""), &db);
    let app = TestApp::spawn(&toml).await;
    for n in 1..=3 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
    }
    assert_eq!(
        rec.wait_for("slack", 1).await.len(),
        1,
        "the first is in flight"
    );
    app.stop().await;
    let after_stop = deliveries(&db).await;
    let slack: Vec<_> = after_stop
        .iter()
        .filter(|d| d.destination == "slack")
        .collect();
    assert_eq!(
        slack[0].state,
        DeliveryState::Sent,
        "the attempt in flight finished"
    );
    assert!(
        slack[1..].iter().all(|d| d.state == DeliveryState::Pending),
        "{slack:?}"
    );

    let again = TestApp::spawn(&toml).await;
    let got = rec.wait_for("slack", 3).await;
    assert_eq!(got.len(), 3);
    let all = wait_for_deliveries(&db, |d| d.iter().all(|d| d.state == DeliveryState::Sent)).await;
    assert!(all.iter().all(|d| d.state == DeliveryState::Sent));
    again.stop().await;
}

#[tokio::test]
async fn a_message_whose_result_cannot_be_recorded_is_not_sent_again() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let store = FaultyStore::new(open_store(&db));
    store.refuse_records.store(3, Ordering::SeqCst);
    let toml = config_for(&rec, "").replace("to = [\"slack\", \"teams\"]", "to = [\"slack\"]");
    let config =
        kitebridge::config::Config::parse(std::path::Path::new("t.toml"), &toml, |_| None).unwrap();
    let service = kitebridge::server::Service::start_with_store(config, Arc::new(store))
        .await
        .unwrap();
    let app = TestApp::serve(service, db.clone(), None).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let all = wait_for_deliveries(&db, |d| d.iter().all(|d| d.state == DeliveryState::Sent)).await;
    assert_eq!(
        all[0].state,
        DeliveryState::Sent,
        "recorded once the store took it"
    );
    assert_eq!(all[0].attempts, 1);
    assert_eq!(rec.received_on("slack").len(), 1, "sent exactly once");
}

#[tokio::test]
async fn hanging_attempts_keep_only_their_own_slots() {
    let rec = Recorder::start().await;
    rec.script("slack", std::iter::repeat_n(Reply::Hang, 7));
    let toml = config_for(&rec, "").replace(
        "kind = \"slack\"\n",
        "kind = \"slack\"\ntimeout = \"30s\"\nconcurrency = 8\n",
    );
    let app = TestApp::spawn(&toml).await;
    for n in 1..=7 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
    }
    // Seven attempts hang; the eighth slot is free and takes the next message at once.
    let started = std::time::Instant::now();
    assert_eq!(app.post_signed(&build_finished(8)).await.0, 202);
    let got = rec.wait_for("slack", 8).await;
    assert_eq!(got.len(), 8, "the eighth message was sent");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "it did not wait for a hanging attempt's timeout (30 s) nor for an idle poll"
    );
}

/// A counter's value in `/metrics` text (0 when it has not been counted yet).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn workers_that_keep_up_take_new_messages_from_intake_and_never_one_twice() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    let reads = |metrics: &str, d: &str| {
        counter(
            metrics,
            &format!("kitebridge_queue_reads_total{{destination=\"{d}\"}}"),
        )
    };
    // One at a time, each sent before the next comes: the workers look at the stored queue
    // when they start and about once a second after, not once per message.
    let started = std::time::Instant::now();
    let before = app.metrics().await;
    for n in 1..=20 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
        assert_eq!(rec.wait_for("teams", n as usize).await.len(), n as usize);
        assert_eq!(rec.wait_for("slack", n as usize).await.len(), n as usize);
    }
    let after = app.metrics().await;
    let seconds = started.elapsed().as_secs();
    for d in ["slack", "teams"] {
        let looked = reads(&after, d) - reads(&before, d);
        assert!(
            looked < 20 && looked <= seconds + 3,
            "{d}: {looked} looks at the queue in {seconds} s for 20 messages"
        );
    }
    // A burst, while the workers' once-a-second looks run: each message is sent exactly once.
    let posts = (21..=120).map(|n| {
        let app = &app;
        async move { app.post_signed(&build_finished(n)).await.0 }
    });
    let answers = futures_util::future::join_all(posts).await;
    assert!(answers.iter().all(|s| *s == 202), "{answers:?}");
    assert_eq!(rec.wait_for("slack", 120).await.len(), 120);
    assert_eq!(rec.wait_for("teams", 120).await.len(), 120);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rec.received_on("slack").len(), 120, "none sent twice");
    assert_eq!(rec.received_on("teams").len(), 120, "none sent twice");
    let all = deliveries(&app.db).await;
    assert_eq!(all.len(), 240);
    assert!(
        all.iter()
            .all(|d| d.state == DeliveryState::Sent && d.attempts == 1),
        "{all:?}"
    );
}

/// The build number in a Slack message's title.
fn build_number(body: &[u8]) -> u64 {
    let message: serde_json::Value = serde_json::from_slice(body).unwrap();
    let title = message["text"].as_str().unwrap();
    let digits: String = title
        .split('#')
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test]
async fn a_worker_behind_intake_still_sends_what_waits_in_the_store_first() {
    // One message at a time, each answered slowly: intake runs far ahead, its worker's
    // inbox fills and the rest wait in the store. Those must not be overtaken by the newer
    // ones the inbox keeps taking as it empties.
    let rec = Recorder::start().await;
    rec.script("slack", std::iter::repeat_n(Reply::Slow(10), 240));
    let toml = config_for(&rec, "")
        .replace("kind = \"slack\"\n", "kind = \"slack\"\nconcurrency = 1\n")
        .replace("to = [\"slack\", \"teams\"]", "to = [\"slack\"]");
    let app = TestApp::spawn(&toml).await;
    for batch in (1..=240u64).collect::<Vec<_>>().chunks(8) {
        let posts = batch.iter().map(|&n| {
            let app = &app;
            async move { app.post_signed(&build_finished(n)).await.0 }
        });
        let answers = futures_util::future::join_all(posts).await;
        assert!(answers.iter().all(|s| *s == 202), "{answers:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rec.received_on("slack").len() < 240 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order: Vec<u64> = rec
        .received_on("slack")
        .iter()
        .map(|r| build_number(&r.body))
        .collect();
    assert_eq!(order.len(), 240, "every message sent once");
    // Eight at a time were posted together, so their commits may come in any order.
    let overtaken = order
        .iter()
        .enumerate()
        .map(|(i, &n)| (i as i64 + 1 - n as i64).abs())
        .max()
        .unwrap();
    assert!(
        overtaken <= 16,
        "sent out of order by up to {overtaken}: {order:?}"
    );
}

#[tokio::test]
async fn an_event_is_parsed_once_while_its_workers_keep_up_and_read_back_after_a_restart() {
    let rec = Recorder::start().await;
    // Still in flight when the stop comes, which first gives the listener half a second.
    rec.script("slack", [Reply::Slow(2500)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let toml = with_store(&config_for(&rec, ""), &db);
    let memory = "kitebridge_event_reads_total{source=\"memory\"}";
    let store = "kitebridge_event_reads_total{source=\"store\"}";

    let app = TestApp::spawn(&toml).await;
    // Teams keeps up: its three messages render from the events intake parsed. One at a
    // time, each sent before the next event comes: a worker still looking at the queue as an
    // event commits can find it a moment before intake hands it over, and reads it back (one
    // parse more; nothing is lost).
    let sent = |all: &[kitebridge::store::Delivery]| {
        all.iter()
            .filter(|d| d.destination == "teams" && d.state == DeliveryState::Sent)
            .count()
    };
    for n in 1..=3 {
        assert_eq!(app.post_signed(&build_finished(n as u64)).await.0, 202);
        assert_eq!(
            sent(&wait_for_deliveries(&db, |all| sent(all) >= n).await),
            n
        );
    }
    assert_eq!(rec.wait_for("teams", 3).await.len(), 3);
    assert_eq!(rec.wait_for("slack", 1).await.len(), 1, "one is in flight");
    let metrics = app.metrics().await;
    assert_eq!(counter(&metrics, store), 0, "{metrics}");
    assert!(counter(&metrics, memory) >= 4, "{metrics}");
    app.stop().await;
    let pending = deliveries(&db)
        .await
        .into_iter()
        .filter(|d| d.state == DeliveryState::Pending)
        .count();
    assert_eq!(pending, 2, "Slack's last two wait for the next start");

    // After a restart nothing is in memory: they are read back from the store, and sent.
    let again = TestApp::spawn(&toml).await;
    assert_eq!(rec.wait_for("slack", 3).await.len(), 3);
    let metrics = again.metrics().await;
    assert_eq!(counter(&metrics, store), 2, "{metrics}");
    assert_eq!(counter(&metrics, memory), 0, "{metrics}");
    let slack = rec.received_on("slack");
    for (n, message) in slack.iter().enumerate() {
        let text = String::from_utf8_lossy(&message.body);
        assert!(text.contains(&format!("#{}", n + 1)), "{text}");
    }
    again.stop().await;
}
