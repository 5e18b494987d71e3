use super::*;
use crate::auth::AuthMode;
use crate::store::sqlite::Durability;

fn env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("tok-s3cr3t".into()),
        "SLACK_URL" => Some("https://hooks.slack.com/services/T0/B0/s3cr3t".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("dir/kitebridge.toml"), text, env)
}

fn problems(text: &str) -> Vec<String> {
    parse(text).unwrap_err().problems
}

const MINIMAL: &str = r#"
[buildkite]
token = "${TOKEN}"

[destinations.out]
kind = "console"

[[routes]]
name = "all"
to = ["out"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8686");
    assert_eq!(c.server.path, "/webhooks/buildkite");
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    assert_eq!(c.credentials.mode, AuthMode::Auto);
    assert_eq!(c.credentials.replay_window, Duration::from_secs(300));
    assert_eq!(c.credentials.tokens[0].expose(), "tok-s3cr3t");
    assert_eq!(
        c.storage,
        StoreConfig::Sqlite {
            path: "dir/kitebridge.db".into(),
            durability: Durability::Full
        }
    );
    assert_eq!(
        c.server.drain,
        Duration::ZERO,
        "a single node stops at once"
    );
    assert!(c.templates_dir.is_none() && c.test_engine_key.is_none());
    assert_eq!(c.routes[0].name, "all");
}

#[test]
fn example_config_is_valid_without_any_secret_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::parse(&path, &text, |_| None).unwrap();
    assert!(c.destination("console").unwrap().enabled());
    assert!(!c.destination("ci-slack").unwrap().enabled());
    assert!(!c.destination("platform-teams").unwrap().enabled());
    assert!(c.test_engine_key.is_none());
}

#[test]
fn a_shared_store_is_read_from_its_url_and_never_shown_with_its_password() {
    let env = |name: &str| match name {
        "TOKEN" => Some("tok-s3cr3t".to_string()),
        "DATABASE_URL" => {
            Some("postgres://kb:db-s3cr3t@db.internal:5432/kitebridge?sslmode=verify-full".into())
        }
        _ => None,
    };
    let text = format!(
        "{MINIMAL}\n[storage]\nurl = \"${{DATABASE_URL}}\"\nlease = \"5s\"\nmax_connections = 20\n"
    );
    let c = Config::parse(Path::new("k.toml"), &text, env).unwrap();
    let StoreConfig::Postgres(o) = &c.storage else {
        panic!("{:?}", c.storage)
    };
    assert_eq!(
        (o.ssl, o.lease, o.max_connections),
        (
            crate::store::postgres::SslMode::VerifyFull,
            Duration::from_secs(5),
            20
        )
    );
    assert_eq!(
        c.storage.shown(),
        "postgres://kb@db.internal:5432/kitebridge?sslmode=verify-full"
    );
    assert!(!format!("{c:?}").contains("db-s3cr3t"));
    assert_eq!(
        c.server.drain,
        Duration::from_secs(5),
        "replicas drain first"
    );
    // An empty url (the variable unset) is the embedded store, shared settings and all.
    let unset = Config::parse(Path::new("k.toml"), &text, |n| {
        (n == "TOKEN").then(|| "tok-s3cr3t".to_string())
    });
    assert!(unset.is_err(), "${{DATABASE_URL}} must be set");
    let optional = text.replace("${DATABASE_URL}", "${DATABASE_URL:-}");
    let c = Config::parse(Path::new("k.toml"), &optional, |n| {
        (n == "TOKEN").then(|| "tok-s3cr3t".to_string())
    })
    .unwrap();
    assert!(matches!(c.storage, StoreConfig::Sqlite { .. }));
}

#[test]
fn storage_mistakes_name_their_line_without_the_url() {
    let cases: &[(&str, &str)] = &[
        (
            "[storage]\npath = \"k.db\"\nurl = \"postgres://kb:pw-s3cr3t@db/k\"\n",
            "k.toml:6: storage.path and storage.url are both set",
        ),
        (
            "[storage]\nurl = \"mysql://kb:pw-s3cr3t@db/k\"\n",
            "k.toml:6: storage.url: not a postgres:// or postgresql:// URL",
        ),
        (
            "[storage]\nurl = \"postgres://kb:pw-s3cr3t@db/k?sslmode=verify-ca\"\n",
            "k.toml:6: storage.url: sslmode=\"verify-ca\" is not one of disable, prefer, require, verify-full",
        ),
        (
            "[storage]\nurl = \"postgres://kb:pw-s3cr3t@db/k\"\ndurability = \"normal\"\n",
            "k.toml:7: storage.durability applies to the embedded store only",
        ),
        (
            "[storage]\nurl = \"postgres://kb:pw-s3cr3t@db/k\"\nlease = \"1m\"\n",
            "k.toml:7: storage.lease: 1m must be between 1s and 20s",
        ),
        (
            "[storage]\nlease = \"5s\"\n",
            "k.toml:6: storage.lease applies to a shared store (storage.url) only",
        ),
        (
            "[storage]\nurl = \"postgres://kb:pw-s3cr3t@db/k\"\nmax_connections = 1\n",
            "k.toml:7: storage.max_connections must be between 2 and 1000",
        ),
    ];
    for (storage, want) in cases {
        let text = format!(
            "[buildkite]\ntoken = \"t\"\n[destinations.out]\nkind = \"console\"\n{storage}"
        );
        let got = Config::parse(Path::new("k.toml"), &text, env)
            .unwrap_err()
            .problems;
        assert!(
            got.iter().any(|p| p.starts_with(want)),
            "{storage}: {got:?}"
        );
        assert!(got.iter().all(|p| !p.contains("pw-s3cr3t")), "{got:?}");
    }
}

#[test]
fn each_mistake_is_named_with_its_line() {
    let cases: &[(&str, &str)] = &[
        (
            "[buildkite]\ntoken = \"t\"\ncolour = 1\n",
            "dir/kitebridge.toml:3: unknown field `colour`",
        ),
        (
            "[buildkite]\ntoken = \"${NOPE}\"\n",
            "dir/kitebridge.toml:2: buildkite.token: environment variable NOPE is not set",
        ),
        (
            "[buildkite]\ntoken = \"\"\n",
            "dir/kitebridge.toml:2: buildkite.token is empty",
        ),
        (
            "[buildkite]\ntoken = \"t\"\nmode = \"hmac\"\n",
            "dir/kitebridge.toml:3: buildkite.mode: \"hmac\" is not one of",
        ),
        (
            "[buildkite]\ntoken = \"t\"\nreplay_window = \"soon\"\n",
            "dir/kitebridge.toml:3: buildkite.replay_window: \"soon\" is not a duration",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[storage]\nretention = \"1h\"\ndedupe_window = \"2h\"\n",
            "dir/kitebridge.toml:5: storage.dedupe_window (2h) is longer than storage.retention (1h)",
        ),
        (
            "[buildkite]\ntoken = \"t\"\nallowed_ips = [\"10.0.0.0/33\"]\n",
            "dir/kitebridge.toml:3: buildkite.allowed_ips: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "[server]\nlisten = \"localhost\"\n[buildkite]\ntoken = \"t\"\n",
            "dir/kitebridge.toml:2: server.listen",
        ),
        (
            "[server]\npath = \"webhooks\"\n[buildkite]\ntoken = \"t\"\n",
            "dir/kitebridge.toml:2: server.path",
        ),
        (
            "[server]\nmax_body_bytes = 10\n[buildkite]\ntoken = \"t\"\n",
            "dir/kitebridge.toml:2: server.max_body_bytes",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.x]\nkind = \"email\"\n",
            "dir/kitebridge.toml:4: destination \"x\": kind \"email\"",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.x]\nkind = \"slack\"\n",
            "dir/kitebridge.toml:3: destination \"x\": url is required",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.x]\nkind = \"slack\"\nurl = \"ftp://x\"\n",
            "dir/kitebridge.toml:5: destination \"x\": url is not an https://",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.x]\nkind = \"console\"\nurl = \"https://x\"\n",
            "destination \"x\": a console destination takes no url",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[[routes]]\nname = \"r\"\nto = [\"nowhere\"]\n",
            "dir/kitebridge.toml:5: route \"r\": unknown destination \"nowhere\"",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[[routes]]\nto = []\n",
            "dir/kitebridge.toml:3: route #1: name is required",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\n",
            "route \"r\": `to` must name at least one destination",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\nbranches = [\"feature/[x\"]\n",
            "dir/kitebridge.toml:8: route \"r\" branches: invalid pattern \"feature/[x\"",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n",
            "dir/kitebridge.toml:8: route \"r\": another route has the same name",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n[[routes.when]]\npath = \"build.source\"\nmatches = \"(\"\n",
            "dir/kitebridge.toml:10: route \"r\" when \"build.source\": invalid regex",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n[[routes.when]]\npath = \"build.source\"\nequals = \"x\"\nexists = true\n",
            "dir/kitebridge.toml:8: route \"r\" when \"build.source\": give exactly one of",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n[[routes.when]]\npath = \"a..b\"\nexists = true\n",
            "dir/kitebridge.toml:9: route \"r\" when: path \"a..b\"",
        ),
        (
            "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n[[routes]]\nname = \"r\"\nto = [\"o\"]\n[[routes.when]]\npath = \"a\"\nequals = [1]\n",
            "dir/kitebridge.toml:8: route \"r\" when: compare with a string, number or boolean, not array",
        ),
        ("[server]\n", "missing field `buildkite`"),
        ("this is not toml", "dir/kitebridge.toml:1:"),
    ];
    for (text, want) in cases {
        let got = problems(text);
        assert!(
            got.iter().any(|p| p.contains(want)),
            "{text:?}\nwant {want:?}\ngot {got:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let got = problems("[buildkite]\ntoken = \"${A}\"\nmode = \"x\"\nreplay_window = \"y\"\n");
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn empty_optional_url_disables_a_destination() {
    let c = parse(
        "[buildkite]\ntoken = \"t\"\n[destinations.s]\nkind = \"slack\"\nurl = \"${UNSET:-}\"\n",
    )
    .unwrap();
    assert!(!c.destination("s").unwrap().enabled());
    let c = parse("[buildkite]\ntoken = \"t\"\n[destinations.s]\nkind = \"slack\"\nurl = \"${SLACK_URL}\"\ntimeout = \"3s\"\n").unwrap();
    let s = c.destination("s").unwrap();
    assert!(s.enabled());
    assert_eq!(s.timeout, Duration::from_secs(3));
}

#[test]
fn routes_compile_with_conditions_and_rotation_tokens() {
    let c = parse(
        r#"
[buildkite]
token = "new"
previous_tokens = ["${TOKEN}"]
mode = "signature"
allowed_ips = ["192.0.2.0/24", "2001:db8::1"]

[destinations.o]
kind = "console"

[[routes]]
name = "r"
events = ["build.*"]
pipelines = ["web-*", "!web-sandbox"]
to = ["o"]
template = "custom"
continue = true

[[routes.when]]
path = "build.source"
in = ["webhook", "ui"]

[[routes.when]]
path = "build.number"
equals = 7
"#,
    )
    .unwrap();
    assert_eq!(c.credentials.tokens.len(), 2);
    assert_eq!(c.credentials.mode, AuthMode::Signature);
    assert_eq!(c.allowed_ips.len(), 2);
    let r = &c.routes[0];
    assert!(r.continue_matching);
    assert_eq!(r.template.as_deref(), Some("custom"));
    assert_eq!(r.when.len(), 2);
}

#[test]
fn secrets_never_appear_in_problems() {
    let typed = problems("[buildkite]\ntoken = \"t\"\nprevious_tokens = \"old-s3cr3t\"\n");
    assert!(
        typed[0].starts_with("dir/kitebridge.toml:3: invalid type: string \"…\""),
        "{typed:?}"
    );
    assert!(!typed.join("").contains("s3cr3t"));
    let url = problems(
        "[buildkite]\ntoken = \"t\"\n[destinations.s]\nkind = \"slack\"\nurl = \"https://hooks s3cr3t.com/x\"\n",
    );
    assert!(
        url[0].contains("url is not an https://") && !url[0].contains("s3cr3t"),
        "{url:?}"
    );
    let text = "[buildkite]\ntoken = \"${TOKEN}\"\nmode = \"${TOKEN}\"\n[destinations.s]\nkind = \"slack\"\nurl = \"${TOKEN}\"\n";
    let got = problems(text).join("\n");
    assert!(!got.contains("s3cr3t"), "{got}");
    let debug = format!("{:?}", parse(MINIMAL).unwrap());
    assert!(!debug.contains("s3cr3t"), "{debug}");
}

#[test]
fn people_mutes_and_alert_routes_compile() {
    let c = parse(
        r#"
[buildkite]
token = "t"

[destinations.live]
kind = "slack_app"
token = "${TOKEN}"
channel = "C0123ABCD"

[destinations.off]
kind = "slack_app"
token = "${UNSET:-}"
channel = "C0123ABCD"

[[people]]
name = "Maria"
emails = ["Maria@acme.example"]
buildkite = ["mlopez"]
slack = "U024BE7LH"
teams = "maria@acme.example"

[[mute]]
name = "night"
days = ["mon", "tuesday", "fri"]
from = "22:00"
to = "07:00:30"
timezone = "Europe/Berlin"
action = "drop"

[[routes]]
name = "r"
transitions = ["broken", "!passing"]
group_window = "10s"
group_by = ["build.id"]
mute = ["night"]
to = ["live", "off"]
"#,
    )
    .unwrap();
    let live = c.destination("live").unwrap();
    assert!(live.enabled());
    assert_eq!(live.url.as_ref().unwrap().expose(), "https://slack.com/api");
    assert!(
        !format!("{live:?}").contains("tok-s3cr3t"),
        "the token is kept, never shown"
    );
    assert!(!c.destination("off").unwrap().enabled());
    assert_eq!(c.people.len(), 1);
    assert!(c.people.find("maria@ACME.example").is_some());
    let r = &c.routes[0];
    assert_eq!(r.group.as_ref().unwrap().window, Duration::from_secs(10));
    assert_eq!(
        r.mute[0].days,
        [true, true, false, false, true, false, false]
    );
    assert_eq!(r.mute[0].action, crate::mute::MuteAction::Drop);
}

#[test]
fn alert_mistakes_are_named_with_their_line() {
    let base = "[buildkite]\ntoken = \"t\"\n[destinations.o]\nkind = \"console\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "[[people]]\nslack = \"U1234\"\n",
            "kitebridge.toml:5: people #1: give emails or buildkite user names",
        ),
        (
            "[[people]]\nemails = [\"a@x\"]\nslack = \"maria\"\n",
            "kitebridge.toml:7: people #1: slack must be a member id",
        ),
        (
            "[[people]]\nemails = [\"a@x\"]\nteams = \"maria\"\n",
            "kitebridge.toml:7: people #1: teams must be a user principal name",
        ),
        (
            "[[people]]\nemails = [\"a@x\"]\n",
            "people #1: give slack, teams, buildkite_id or several",
        ),
        (
            "[[people]]\nemails = [\"a@x\"]\nslack = \"U1234\"\n[[people]]\nemails = [\"A@x\"]\nslack = \"U5678\"\n",
            "kitebridge.toml:8: people #2: \"A@x\" already belongs to another person",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"25:00\"\nto = \"07:00\"\n",
            "kitebridge.toml:7: mute \"n\": from \"25:00\" is not a time",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"22:00\"\n",
            "mute \"n\": to is required",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"22:00\"\nto = \"06:00\"\ndays = [\"someday\"]\n",
            "kitebridge.toml:9: mute \"n\": day \"someday\"",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"22:00\"\nto = \"06:00\"\ndays = [\"monstrous\"]\n",
            "kitebridge.toml:9: mute \"n\": day \"monstrous\"",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"22:00\"\nto = \"06:00\"\ntimezone = \"Mars/Olympus\"\n",
            "kitebridge.toml:9: mute \"n\": timezone \"Mars/Olympus\"",
        ),
        (
            "[[mute]]\nname = \"n\"\nfrom = \"22:00\"\nto = \"06:00\"\naction = \"snooze\"\n",
            "kitebridge.toml:9: mute \"n\": action \"snooze\"",
        ),
        (
            "[[routes]]\nname = \"r\"\nto = [\"o\"]\ntransitions = [\"flaky\"]\n",
            "kitebridge.toml:8: route \"r\" transitions: \"flaky\" is not one of",
        ),
        (
            "[[routes]]\nname = \"r\"\nto = [\"o\"]\ngroup_by = [\"build.id\"]\n",
            "kitebridge.toml:5: route \"r\": group_by needs group_window",
        ),
        (
            "[[routes]]\nname = \"r\"\nto = [\"o\"]\ngroup_window = \"soon\"\n",
            "kitebridge.toml:8: route \"r\" group_window",
        ),
        (
            "[[routes]]\nname = \"r\"\nto = [\"o\"]\nmute = [\"nope\"]\n",
            "kitebridge.toml:8: route \"r\": unknown mute \"nope\"",
        ),
        (
            "[destinations.a]\nkind = \"slack_app\"\ntoken = \"x\"\n",
            "kitebridge.toml:5: destination \"a\": channel is required",
        ),
        (
            "[destinations.a]\nkind = \"slack_app\"\nchannel = \"C1234\"\n",
            "kitebridge.toml:5: destination \"a\": token is required",
        ),
        (
            "[destinations.a]\nkind = \"slack_app\"\ntoken = \"x\"\nchannel = \"#builds\"\n",
            "kitebridge.toml:8: destination \"a\": channel must be a channel id",
        ),
        (
            "[destinations.a]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nchannel = \"C1234\"\n",
            "kitebridge.toml:8: destination \"a\": channel is for kind \"slack_app\" only",
        ),
    ];
    for (extra, want) in cases {
        let text = format!("{base}{extra}");
        let got = problems(&text);
        assert!(
            got.iter().any(|p| p.contains(want)),
            "{extra:?}\nwant {want:?}\ngot {got:?}"
        );
    }
}

/// The recipes in docs/configuration.md, put together, are a valid config.
#[test]
fn documented_recipes_are_valid_config() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let recipes = &doc[doc.find("\n## Recipes\n").unwrap() + 1..];
    let recipes = &recipes[..recipes[3..].find("\n## ").map_or(recipes.len(), |i| i + 3)];
    let blocks: Vec<&str> = recipes
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    assert_eq!(blocks.len(), 5, "one block per recipe");
    let text = format!("[buildkite]\ntoken = \"t\"\n{}", blocks.join("\n"));
    let env = |n: &str| Some(format!("https://hooks.slack.com/{n}"));
    let config = Config::parse(Path::new("docs/configuration.md"), &text, env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 6);

    // The quiet-hours recipe does what its text says.
    let route = config
        .routes
        .iter()
        .find(|r| r.name == "failures, not at night")
        .unwrap();
    let windows: Vec<&crate::mute::MuteWindow> = route.mute.iter().map(AsRef::as_ref).collect();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let monday_8 = at("2026-12-07T08:00:00+01:00");
    let held = |s: &str| match crate::mute::decide(&windows, at(s)) {
        Some(crate::mute::Muted::Hold(_, until)) => Some(until),
        _ => None,
    };
    assert_eq!(
        held("2026-12-04T21:00:00+01:00"),
        Some(monday_8),
        "Friday evening"
    );
    assert_eq!(
        held("2026-12-06T12:00:00+01:00"),
        Some(monday_8),
        "Sunday noon"
    );
    assert_eq!(
        held("2026-12-08T06:00:00+01:00"),
        Some(at("2026-12-08T08:00:00+01:00")),
        "Tuesday early"
    );
    assert_eq!(held("2026-12-02T12:00:00+01:00"), None, "Wednesday noon");
}

#[test]
fn destination_hosts_must_be_allowed() {
    let base = "[buildkite]\ntoken = \"t\"\n";
    let dest = |url: &str| format!("[destinations.d]\nkind = \"teams\"\nurl = \"{url}\"\n");
    for ok in [
        "https://acme.webhook.office.com/webhookb2/x",
        "https://prod-12.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=s",
        "https://default1234.56.environment.api.powerplatform.com:443/powerautomate/automations/direct/workflows/x",
        "https://hooks.slack.com/services/T/B/X",
    ] {
        assert!(parse(&format!("{base}{}", dest(ok))).is_ok(), "{ok}");
    }
    let got = problems(&format!(
        "{base}{}",
        dest("https://hooks.s1ack.com/services/T/B/SECRET")
    ));
    assert_eq!(
        got,
        [
            "dir/kitebridge.toml:5: destination \"d\": host \"hooks.s1ack.com\" is not in delivery.allowed_hosts (add it there if it is meant)"
        ]
    );
    let own = format!(
        "{base}[delivery]\nallowed_hosts = [\"chat.internal\", \"*.corp.example\"]\n{}",
        dest("https://a.corp.example/x")
    );
    assert!(parse(&own).is_ok());
    let own_only = format!(
        "{base}[delivery]\nallowed_hosts = [\"chat.internal\"]\n{}",
        dest("https://hooks.slack.com/x")
    );
    assert!(parse(&own_only).is_err(), "the list replaces the defaults");
    assert!(host_allowed(&["*.example.com".into()], "a.b.example.com"));
    assert!(!host_allowed(&["*.example.com".into()], "example.com"));
    assert!(!host_allowed(&["*.example.com".into()], "evilexample.com"));
}

#[test]
fn people_may_be_a_table_keyed_by_email_or_user_name() {
    let c = parse(&format!(
        r#"{MINIMAL}
[people]
"maria@acme.example" = {{ slack = "U024BE7LH", teams = "maria@acme.example", name = "Maria" }}
mlopez = {{ slack = "U024BE7LH" }}
"#
    ))
    .unwrap();
    assert_eq!(c.people.len(), 2);
    let maria = c.people.find("MARIA@acme.example").unwrap();
    assert_eq!(
        (
            maria.slack.as_deref(),
            maria.teams.as_deref(),
            maria.name.as_deref()
        ),
        (Some("U024BE7LH"), Some("maria@acme.example"), Some("Maria"))
    );
    assert_eq!(
        c.people.find("mlopez").unwrap().slack.as_deref(),
        Some("U024BE7LH")
    );

    let problems = self::problems(&format!(
        "{MINIMAL}\n[people]\n\"maria@acme.example\" = {{ slack = \"maria\" }}\n"
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "dir/kitebridge.toml:13: people.\"maria@acme.example\": slack must be a member id"
        ),
        "{problems:?}"
    );
    let problems = self::problems(&format!(
        "{MINIMAL}\n[people]\n\"maria@acme.example\" = {{ slack = \"U1\", emails = [] }}\n"
    ));
    assert!(
        problems[0].starts_with("dir/kitebridge.toml:13:") && problems[0].contains("emails"),
        "{problems:?}"
    );
}

/// A webhook destination: its keys, checked, and its secrets never shown.
#[test]
fn webhook_destinations_are_checked() {
    let base = "[buildkite]\ntoken = \"t\"\n[delivery]\nallowed_hosts = [\"ingest.example.com\"]\n[destinations.w]\nkind = \"webhook\"\nurl = \"https://ingest.example.com/in\"\n";
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let c = parse(&format!(
        "{base}method = \"put\"\nheaders = {{ Authorization = \"Bearer tok-s3cr3t\", X-Team = \"ci\" }}\nsigning_secret = \"{secret}\"\nmax_body_bytes = 4096\n"
    ))
    .unwrap();
    let w = c.destination("w").unwrap();
    assert!(w.enabled());
    assert_eq!(w.kind.as_str(), "webhook");
    assert_eq!(w.limits.rate, None, "no pace by default");
    assert_eq!(w.limits.concurrency, 4);
    let shown = format!("{w:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("MfKQ9r8G"),
        "{shown}"
    );
    assert!(
        parse(base).unwrap().destination("w").unwrap().enabled(),
        "unsigned is fine"
    );
    let unset = parse(&format!("{base}signing_secret = \"${{UNSET:-}}\"\n")).unwrap();
    assert!(unset.destination("w").unwrap().enabled());

    let cases = [
        (
            "method = \"GET\"\n",
            "kitebridge.toml:8: destination \"w\": method \"GET\" is not \"POST\" or \"PUT\"",
        ),
        (
            "headers = { Content-Type = \"text/plain\" }\n",
            "destination \"w\": headers: Content-Type is set by kitebridge",
        ),
        (
            "headers = { webhook-signature = \"x\" }\n",
            "headers: webhook-signature is set by kitebridge",
        ),
        (
            "headers = { \"bad name\" = \"x\" }\n",
            "headers: \"bad name\" is not a header name",
        ),
        (
            "headers = { X-A = \"line\\nbreak-s3cr3t\" }\n",
            "headers: the value of X-A holds characters",
        ),
        (
            "headers = { X-A = 1 }\n",
            "headers must be a table of strings",
        ),
        (
            "signing_secret = \"s3cr3t\"\n",
            "kitebridge.toml:8: destination \"w\": signing_secret: a signing secret starts with whsec_",
        ),
        (
            "signing_secret = \"whsec_s3cr3t!!\"\n",
            "signing_secret: the part after whsec_ is not base64",
        ),
        (
            "signing_secret = \"whsec_c2hvcnQ=\"\n",
            "signing_secret: a signing secret holds 24 to 64 bytes",
        ),
        (
            &format!("previous_signing_secrets = [\"{secret}\"]\n"),
            "set signing_secret too",
        ),
        (
            "max_body_bytes = 0\n",
            "max_body_bytes must be between 1 and 67108864",
        ),
        (
            "token = \"x\"\n",
            "destination \"w\": token is for kind \"slack_app\" only",
        ),
        (
            "retries = 3\n",
            "destination \"w\": unknown key \"retries\"",
        ),
    ];
    for (extra, want) in cases {
        let got = problems(&format!("{base}{extra}"));
        assert!(
            got.iter().any(|p| p.contains(want)),
            "{extra:?}\nwant {want:?}\ngot {got:?}"
        );
        assert!(!got.join("").contains("s3cr3t"), "{got:?}");
    }
    let elsewhere = problems(
        "[buildkite]\ntoken = \"t\"\n[destinations.s]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nmethod = \"PUT\"\n",
    );
    assert!(
        elsewhere[0].contains("destination \"s\": method is for kind \"webhook\" only"),
        "{elsewhere:?}"
    );
    let host = problems(
        "[buildkite]\ntoken = \"t\"\n[destinations.w]\nkind = \"webhook\"\nurl = \"https://ingest.example.com/in\"\n",
    );
    assert!(
        host[0].contains("host \"ingest.example.com\" is not in delivery.allowed_hosts"),
        "{host:?}"
    );
}

/// The signed-webhook example in docs/destinations.md is a valid config.
#[test]
fn the_documented_webhook_destination_is_valid_config() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/destinations.md"))
            .unwrap();
    let block = doc.split("```toml\n").nth(1).unwrap();
    let block = &block[..block.find("```").unwrap()];
    let text = format!("[buildkite]\ntoken = \"t\"\n{block}");
    let env = |n: &str| {
        Some(match n {
            "WEBHOOK_SIGNING_SECRET" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            "OLD_SIGNING_SECRET" => String::new(),
            _ => "tok".to_string(),
        })
    };
    let config = Config::parse(Path::new("docs/destinations.md"), &text, env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.destination("warehouse").unwrap().enabled());
}

const ACTIONS: &str = r#"
[buildkite]
token = "${TOKEN}"

[destinations.chat]
kind = "slack"
url = "${SLACK_URL}"

[[routes]]
name = "failures"
to = ["chat"]
buttons = ["rebuild", "cancel"]

[actions]
signing_key = "0123456789abcdef0123456789abcdef"
[actions.buildkite]
org = "acme"
token = "bk"
[actions.slack]
signing_secret = "s"
token = "xoxb-1"
[[actions.policies]]
pipelines = ["web-*"]
allow = ["rebuild"]
email_domains = ["@ACME.example"]
"#;

#[test]
fn actions_are_read_with_their_policies_and_route_buttons() {
    let c = parse(ACTIONS).unwrap();
    let a = c.actions.as_ref().unwrap();
    assert_eq!(a.ttl, Duration::from_secs(86_400));
    assert_eq!(a.buildkite.api_url, "https://api.buildkite.com/v2");
    assert_eq!(a.slack.as_ref().unwrap().path, "/slack/interactions");
    assert_eq!(a.policies[0].email_domains, ["acme.example"]);
    assert_eq!(a.policies[0].at, "dir/kitebridge.toml:22");
    use crate::actions::Action;
    assert_eq!(c.routes[0].buttons, [Action::Rebuild, Action::Cancel]);
}

#[test]
fn action_mistakes_name_their_line() {
    let cases = [
        (
            "buttons = [\"rebuild\", \"cancel\"]",
            "buttons = [\"deploy\"]",
            "dir/kitebridge.toml:12: route \"failures\" buttons: unknown action \"deploy\"",
        ),
        (
            "signing_key = \"0123456789abcdef0123456789abcdef\"",
            "signing_key = \"short\"",
            "dir/kitebridge.toml:15: actions signing key: at least 32 bytes",
        ),
        (
            "allow = [\"rebuild\"]",
            "allow = [\"reboot\"]",
            "dir/kitebridge.toml:24: policy at dir/kitebridge.toml:22 allow: unknown action \"reboot\"",
        ),
        (
            "[actions.slack]\nsigning_secret = \"s\"\ntoken = \"xoxb-1\"\n",
            "",
            "dir/kitebridge.toml:12: route \"failures\" buttons: destination \"chat\" (slack) needs [actions.slack]",
        ),
        (
            "[actions.buildkite]\norg = \"acme\"\ntoken = \"bk\"\n",
            "",
            "dir/kitebridge.toml:14: [actions] needs [actions.buildkite]",
        ),
        (
            "pipelines = [\"web-*\"]",
            "pipelines = [\"web-[\"]",
            "dir/kitebridge.toml:23: policy at dir/kitebridge.toml:22 pipelines: \"web-[\" is not a glob",
        ),
    ];
    for (from, to, expected) in cases {
        let text = ACTIONS.replace(from, to);
        let found = problems(&text);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{expected:?} not in {found:#?}"
        );
    }
    // The interactions path may not take the webhook's (as `[server] path` sets it).
    let clash = ACTIONS.replace(
        "token = \"xoxb-1\"",
        "token = \"xoxb-1\"\npath = \"/hooks/bk\"",
    ) + "[server]\npath = \"/hooks/bk\"\n";
    assert!(
        problems(&clash).iter().any(|p| p.starts_with(
            "dir/kitebridge.toml:22: actions.slack.path: \"/hooks/bk\" must be a plain path"
        )),
        "{:#?}",
        problems(&clash)
    );
    let without = ACTIONS.split("[actions]").next().unwrap();
    assert!(
        problems(without)
            .iter()
            .any(|p| p.contains("needs an [actions] section"))
    );
}

#[test]
fn an_empty_signing_key_turns_buttons_off_with_a_warning() {
    let text = ACTIONS.replace(
        "signing_key = \"0123456789abcdef0123456789abcdef\"",
        "signing_key = \"${NO_SUCH_KEY:-}\"",
    );
    let c = parse(&text).unwrap();
    assert!(c.actions.is_none());
    assert!(
        c.warnings.iter().any(|w| w.contains("buttons are off")),
        "{:?}",
        c.warnings
    );
}

/// A duplicate window of days makes every event probe the embedded store's index for each
/// of its minutes: warned about, with the line; an hour or a shared store is not.
#[test]
fn a_long_duplicate_window_on_the_embedded_store_is_warned_about() {
    let config = |storage: &str| {
        parse(&format!("[buildkite]\ntoken = \"t\"\n[storage]\n{storage}")).unwrap()
    };
    let long = config("dedupe_window = \"1d\"\n");
    assert!(
        long.warnings.iter().any(|w| w.contains(":4: warning: storage.dedupe_window (1day) makes each event look for a copy in 1441 minutes")),
        "{:?}",
        long.warnings
    );
    for quiet in [
        "dedupe_window = \"1h\"\n",
        "url = \"postgres://kb@127.0.0.1/kb\"\ndedupe_window = \"1d\"\n",
    ] {
        let c = config(quiet);
        assert!(
            !c.warnings.iter().any(|w| w.contains("dedupe_window")),
            "{quiet}: {:?}",
            c.warnings
        );
    }
}

/// `events`/`states` entries that can match no Buildkite name are warned about; globs and
/// exclusions are judged by what they could match, and `${…}` entries not at all.
#[test]
fn typo_warnings_judge_what_an_entry_could_match() {
    let text = format!(
        "{MINIMAL}events = [\"build.finshed\", \"!build.finshed\", \"buld.*\", \"build.fin*\", \
         \"!job.*\", \"job.[fs]*\", \"${{EVENT}}\", \"!${{EVENT}}\"]\n\
         states = [\"faild\", \"!faild\", \"fail*\", \"!pass?d\", \"${{STATE}}\"]\n"
    );
    let env = |n: &str| match n {
        "TOKEN" => Some("t".to_owned()),
        "EVENT" => Some("build.finshed".to_owned()),
        "STATE" => Some("faild".to_owned()),
        _ => None,
    };
    let c = Config::parse(Path::new("dir/kitebridge.toml"), &text, env).unwrap();
    let warned: Vec<&str> = c
        .warnings
        .iter()
        .filter_map(|w| w.split_once(": \"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(entry, _)| entry))
        .collect();
    assert_eq!(
        warned,
        ["build.finshed", "build.finshed", "buld.*", "faild", "faild"],
        "{:?}",
        c.warnings
    );
}
