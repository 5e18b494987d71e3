//! No token, key or webhook URL is ever shown: the whole output of a run of every command, with
//! failures of every kind, is searched for the secrets.

use crate::helpers::*;
use std::process::Command;
use std::time::Duration;

const SECRETS: [(&str, &str); 8] = [
    ("BUILDKITE_WEBHOOK_TOKEN", "tok-SECRET-aaa111"),
    ("HOOK_HEADER", "hdr-SECRET-fff666"),
    (
        "HOOK_SIGNING_SECRET",
        "whsec_U0VDUkVULXNpZ25pbmcta2V5LWhoaDg4OC14eXoh",
    ),
    ("OLD_TOKEN", "old-SECRET-bbb222"),
    ("TEST_ENGINE_WEBHOOK_KEY", "te-SECRET-ccc333"),
    ("RELOAD_TOKEN", "rl-SECRET-ddd444"),
    ("SLACK_BOT_TOKEN", "xoxb-SECRET-ggg777"),
    ("PATH_PART", "SECRET-eee555"),
];

fn command(args: &[&str], envs: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitebridge"));
    c.args(args);
    for (k, v) in SECRETS {
        c.env(k, v);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn output(args: &[&str], envs: &[(&str, String)]) -> String {
    let out = command(args, envs).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn no_secret_appears_in_any_output() {
    let rec = Recorder::start().await;
    rec.script(
        "hook/SECRET-eee555/gone",
        [Reply::Status(404, "no_service")],
    );
    rec.script(
        "hook/SECRET-eee555/wh",
        (0..50).map(|_| Reply::Status(500, "down")),
    );
    let down = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
reload_token = "${{RELOAD_TOKEN}}"

[buildkite]
token = "${{BUILDKITE_WEBHOOK_TOKEN}}"
previous_tokens = ["${{OLD_TOKEN}}"]

[test_engine]
key = "${{TEST_ENGINE_WEBHOOK_KEY}}"

[storage]
path = "k.db"

[delivery]
backoff_initial = "50ms"
backoff_max = "100ms"
max_age = "1s"
allowed_hosts = ["127.0.0.1"]

[destinations.gone]
kind = "slack"
url = "http://{rec}/hook/${{PATH_PART}}/gone"
rate = 0

[destinations.down]
kind = "teams"
url = "http://{down}/hook/${{PATH_PART}}?sig=${{PATH_PART}}"
rate = 0

[destinations.app]
kind = "slack_app"
token = "${{SLACK_BOT_TOKEN}}"
channel = "C0SECRET1"
url = "http://{down}/api"

[destinations.hook]
kind = "webhook"
url = "http://{rec}/hook/${{PATH_PART}}/wh"
headers = {{ Authorization = "Bearer ${{HOOK_HEADER}}" }}
signing_secret = "${{HOOK_SIGNING_SECRET}}"

[destinations.console]
kind = "console"

[[routes]]
name = "all"
to = ["gone", "down", "app", "hook", "console"]
"#,
        rec = rec.addr
    );
    std::fs::write(&cfg, &config).unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let payload = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/buildkite/build.finished.json"
    );
    let mut all = String::new();

    all += &output(&["check", "--config", &cfg_s], &[]);
    all += &output(&["render", "--config", &cfg_s, "--payload", payload], &[]);
    all += &output(
        &[
            "render",
            "--config",
            &cfg_s,
            "--payload",
            payload,
            "--format",
            "json",
        ],
        &[],
    );
    for dest in ["gone", "down", "app", "hook"] {
        all += &output(
            &["send-test", "--config", &cfg_s, "--destination", dest],
            &[],
        );
    }

    // A config with secrets in the wrong places.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config
            .replace(
                "reload_token = \"${RELOAD_TOKEN}\"",
                "reload_token = \"${RELOAD_TOKEN}\"\nmax_body_bytes = \"${OLD_TOKEN}\"",
            )
            .replace(
                "to = [\"gone\", \"down\", \"app\", \"hook\", \"console\"]",
                "to = [\"${BUILDKITE_WEBHOOK_TOKEN}\"]",
            )
            .replace(
                "[buildkite]\n",
                "[buildkite]\nmode = \"${TEST_ENGINE_WEBHOOK_KEY}\"\n",
            ),
    )
    .unwrap();
    all += &output(&["check", "--config", bad.to_str().unwrap()], &[]);

    // Serve, with JSON logs and then human ones: good events, refused ones, failing deliveries,
    // a reload, a dead letter shown.
    for format in ["json", "text"] {
        let mut child = command(&["--log-format", format, "serve", "--config", &cfg_s], &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its stderr is captured whole for the search, so the port is found from /proc.
        let addr = listening_port(child.id());
        let client = kitebridge::destination::client();
        let url = format!("http://{addr}/webhooks/buildkite");
        let body = fixture("build.finished");
        let good = signature("tok-SECRET-aaa111", now(), &body);
        let rotated = signature("old-SECRET-bbb222", now(), &body);
        for (header, value) in [
            ("X-Buildkite-Signature", good),
            ("X-Buildkite-Signature", rotated),
            ("X-Buildkite-Signature", signature("wrong", now(), &body)),
            ("X-Buildkite-Token", "nope".into()),
            ("X-Buildkite-Token", "tok-SECRET-aaa111".into()),
        ] {
            let _ = client
                .post(&url)
                .header(header, value)
                .body(body.clone())
                .send()
                .await;
        }
        let _ = client
            .post(format!("http://{addr}/webhooks/test-engine/wrong"))
            .body(fixture("workflow.alarm"))
            .send()
            .await;
        let _ = client
            .post(format!(
                "http://{addr}/webhooks/test-engine/te-SECRET-ccc333"
            ))
            .body(fixture("workflow.alarm"))
            .send()
            .await;
        let _ = client
            .post(format!("http://{addr}/-/reload"))
            .bearer_auth("nope")
            .send()
            .await;
        let _ = client
            .post(format!("http://{addr}/-/reload"))
            .bearer_auth("rl-SECRET-ddd444")
            .send()
            .await;
        let _ = client.get(format!("http://{addr}/metrics")).send().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        all += &output(&["deliveries", "list", "--config", &cfg_s], &[]);
        for id in 1..=10 {
            all += &output(
                &["deliveries", "show", &id.to_string(), "--config", &cfg_s],
                &[],
            );
        }
        signal(child.id(), "TERM");
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while child.try_wait().unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        all += &String::from_utf8_lossy(&out.stdout);
        all += &String::from_utf8_lossy(&out.stderr);
    }

    assert!(
        all.contains("dead letter"),
        "the run did fail deliveries:\n{all}"
    );
    assert!(all.contains("webhook refused"), "and refuse requests");
    let hooked = rec.received_on("hook/SECRET-eee555/wh");
    assert!(
        hooked
            .iter()
            .any(|r| r.headers["authorization"] == "Bearer hdr-SECRET-fff666"
                && r.headers.contains_key("webhook-signature")),
        "the webhook destination was sent to, with its header and signature"
    );
    assert!(all.contains("config reloaded"), "and reload");
    for (_, secret) in SECRETS {
        assert!(!all.contains(secret), "{secret} appeared in:\n{all}");
    }
    assert!(!all.contains("SECRET"), "no part of a secret appeared");
}

/// The port a child process listens on, from /proc.
fn listening_port(pid: u32) -> std::net::SocketAddr {
    for _ in 0..100 {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter_map(|l| {
                        l.to_str()?
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        for line in tcp.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // state 0A = LISTEN
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap();
                return std::net::SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no listening socket for {pid}");
}

/// A panic (a bug, never expected) prints its message with every known secret scrubbed. The
/// test runs itself again as a child process that installs the service's panic hook and
/// panics with a secret in the message, and reads everything the child printed.
#[test]
fn a_panic_message_is_scrubbed_of_secrets() {
    const NAME: &str = "secrets::a_panic_message_is_scrubbed_of_secrets";
    if std::env::var_os("KITEBRIDGE_PANIC_CHILD").is_some() {
        kitebridge::secret::install_panic_hook();
        let token = kitebridge::secret::Secret::new(SECRETS[0].1);
        panic!("lost the token {} here", token.expose());
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env("KITEBRIDGE_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the child panicked: {text}");
    assert!(
        text.contains("kitebridge panicked at ") && text.contains("lost the token [redacted] here"),
        "{text}"
    );
    assert!(!text.contains(SECRETS[0].1), "{text}");
}

/// The shared store's URL holds a password: no command, log line or error shows it, whether
/// the database answers or not.
#[tokio::test]
async fn the_database_password_appears_in_no_output() {
    let db = crate::pg::TestDb::new().await;
    // The test server's own password, or (with trust authentication) one it ignores.
    let options =
        kitebridge::store::postgres::PgOptions::parse(&db.url, std::path::Path::new("")).unwrap();
    // A password as awkward as people make them: '/', '?' and ':' as they are, '@' encoded.
    let (url, password) = match options.config.get_password() {
        Some(p) => (db.url.clone(), String::from_utf8_lossy(p).into_owned()),
        None => {
            let at = db.url.find('@').unwrap();
            (
                format!("{}:pw/SECRET?f:ff%40666{}", &db.url[..at], &db.url[at..]),
                "SECRET".to_string(),
            )
        }
    };
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"0s\"\n[buildkite]\ntoken = \"t0ken-x\"\n\
                 [storage]\nurl = \"${{KB_DATABASE_URL}}\"\nlease = \"2s\"\n\
                 [delivery]\nallowed_hosts = [\"127.0.0.1\"]\n\
                 [destinations.slack]\nkind = \"slack\"\nurl = \"{}\"\nrate = 0\n\
                 [[routes]]\nname = \"all\"\nto = [\"slack\"]\n",
                rec.url("slack")
            ),
        )
        .unwrap();
        (path.to_str().unwrap().to_string(), url.to_string())
    };
    let dead = dead_address();
    // The same URL, password and all, pointing at a port where nothing listens.
    let host_start = url.find('@').unwrap() + 1;
    let host_end = host_start + url[host_start..].find('/').unwrap();
    let unreachable = format!("{}{dead}{}", &url[..host_start], &url[host_end..]);
    let payload = fixture_path("build.finished");
    let mut all = String::new();
    for (cfg, url) in [write("good.toml", &url), write("down.toml", &unreachable)] {
        let env = [("KB_DATABASE_URL", url.clone())];
        all += &output(&["check", "--config", &cfg], &env);
        all += &output(&["render", "--config", &cfg, "--payload", &payload], &env);
        let serve = command(&["--log-format", "text", "serve", "--config", &cfg], &env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if url == unreachable {
            let out = tokio::task::spawn_blocking(move || serve.wait_with_output().unwrap())
                .await
                .unwrap();
            assert!(!out.status.success(), "it cannot start without its store");
            all += &String::from_utf8_lossy(&out.stderr);
        } else {
            let addr = listening_port(serve.id());
            let posted = post_signed_to_with(addr, "t0ken-x", &build_finished(7)).await;
            assert_eq!(posted.unwrap(), 202);
            rec.wait_for("slack", 1).await;
            all += &output(&["deliveries", "list", "--config", &cfg], &env);
            all += &output(&["deliveries", "show", "1", "--config", &cfg], &env);
            signal(serve.id(), "TERM");
            let out = tokio::task::spawn_blocking(move || serve.wait_with_output().unwrap())
                .await
                .unwrap();
            all += &String::from_utf8_lossy(&out.stderr);
        }
        all += &output(&["deliveries", "list", "--config", &cfg], &env);
    }
    assert!(all.contains("listening"), "it ran:\n{all}");
    assert!(
        all.contains("Connection refused"),
        "and failed to connect:\n{all}"
    );
    assert!(
        all.contains(&format!("@{dead}")),
        "the URL is shown without its password"
    );
    assert!(!all.contains(&password), "the password appeared in:\n{all}");
}
