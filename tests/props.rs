//! Property tests over hostile input (issue 5): the signature-header parser, event parsing,
//! the router and the renderer never panic, and every rendered body is valid JSON within the
//! destination's limits with payload text unable to ping or mention anyone.
//!
//! Case counts are modest so the file runs in seconds in a debug build; raise them locally with
//! `PROPTEST_CASES=10000 cargo test --test props`. Failing cases are not persisted to a
//! regressions file: proptest prints the minimal input, which belongs in a unit test.

use chrono::Utc;
use kitebridge::auth::{AuthError, AuthMode, Credentials, SignatureHeader, sign};
use kitebridge::config::Config;
use kitebridge::destination::{DestinationKind, Rendered, console, slack::limits, teams};
use kitebridge::event::{Event, EventError, VerifiedBody};
use kitebridge::render::{Body, Renderer, TemplateData, TemplateKind, samples};
use kitebridge::routing::{Condition, PatternList, Route, Router, Test};
use kitebridge::secret::Secret;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

/// `cases` cases (unless `PROPTEST_CASES` says otherwise), no regressions file.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile strings
// ---------------------------------------------------------------------------------------------

/// Fragments that break JSON, chat markup, terminals or templates when passed through raw.
const NASTY: &[&str] = &[
    "\"",
    "\\",
    "\\\"",
    "\\u0000",
    "\u{0}",
    "\u{7}",
    "\u{8}",
    "\u{1b}[2J",
    "\u{1b}]0;owned\u{7}",
    "\r\n",
    "\n",
    "\t",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "\u{2060}",
    "\u{202e}",
    "\u{feff}",
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123>",
    "<#C123>",
    "@channel",
    "@here",
    "@everyone",
    "<https://evil.example|click>",
    "[x](http://e)",
    "](",
    "<at>Boss</at>",
    "<",
    ">",
    "&",
    "&amp;",
    "&lt;",
    "*bold*",
    "_it_",
    "`code`",
    "```",
    "~",
    "|",
    "{{",
    "}}",
    "{{{kb.url}}}",
    "{{> _message}}",
    "🚀",
    "👩‍👩‍👧‍👦",
    "é",
    "e\u{301}",
    "漢字",
    "𝔘𝔫𝔦",
    "https://",
    "http://e/<!channel>",
    "%",
    " ",
    "",
];

/// A short hostile string: nasty fragments, arbitrary characters (control characters included)
/// and plain words, concatenated.
fn short_hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(NASTY).prop_map(String::from),
        2 => prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
        1 => "[a-zA-Z0-9 ./_-]{0,16}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// A hostile string, now and then repeated out to 1 KB – 100 KB.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => short_hostile(),
        1 => (short_hostile(), 1_000usize..100_000).prop_map(|(unit, bytes)| long(&unit, bytes)),
    ]
}

/// `unit` repeated to about `bytes` bytes (cut on a character boundary).
fn long(unit: &str, bytes: usize) -> String {
    let unit = if unit.is_empty() { "<!channel>" } else { unit };
    let mut s = unit.repeat(bytes / unit.len() + 1);
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// Any JSON value, a few levels deep, with hostile strings and keys.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        short_hostile().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "event",
                "build",
                "job",
                "agent",
                "pipeline",
                "state",
                "branch",
                "name",
                "message",
                "web_url",
                "webhook_url",
                "url",
                "text",
                "0",
            ][..]
        )
        .prop_map(String::from),
        short_hostile(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Signature header
// ---------------------------------------------------------------------------------------------

/// Header-shaped noise: real keys with broken values, huge numbers, many commas, unicode.
fn header_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        "timestamp=[0-9]{0,40}",
        "timestamp=-?[0-9+ ]{0,12}",
        "signature=[0-9a-fA-F]{0,70}",
        "signature=[0-9a-zA-Z]{64}",
        "[a-z]{0,10}=[^,]{0,20}",
        "[=, \t]{0,8}",
        Just("timestamp=99999999999999999999999999999999".to_string()),
        Just(format!("signature={}", "é".repeat(32))),
        Just(format!("signature={}", "a".repeat(10_000))),
        short_hostile(),
    ];
    prop_oneof![
        prop::collection::vec(part, 0..8).prop_map(|parts| parts.join(",")),
        any::<String>(),
        ",{0,500}",
        (1usize..50_000).prop_map(|n| ",".repeat(n)),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn signature_header_parse_never_panics_and_only_reports_malformed_headers(
        header in header_like(),
    ) {
        if let Err(e) = SignatureHeader::parse(&header) {
            prop_assert!(matches!(e, AuthError::MalformedSignature(_)), "{e:?}");
        }
    }

    #[test]
    fn signature_header_parse_never_panics_on_arbitrary_strings(header in any::<String>()) {
        let _ = SignatureHeader::parse(&header);
    }

    #[test]
    fn well_formed_signature_header_parses_to_its_values(
        timestamp in any::<u32>(),
        digest in any::<[u8; 32]>(),
        upper in any::<bool>(),
        signature_first in any::<bool>(),
        extra in prop::collection::vec("[a-z]{1,8}=[a-z0-9]{0,8}", 0..3),
        pad in "[ \t]{0,2}",
    ) {
        let hex = if upper { hex::encode_upper(digest) } else { hex::encode(digest) };
        let mut parts = vec![format!("{pad}timestamp={timestamp}{pad}"), format!("signature={hex}")];
        if signature_first {
            parts.reverse();
        }
        // Unknown parts (a future scheme) are ignored, wherever they are.
        let extra: Vec<String> = extra
            .into_iter()
            .filter(|p| !p.starts_with("timestamp=") && !p.starts_with("signature="))
            .collect();
        parts.splice(1..1, extra);
        let header = parts.join(",");
        let parsed = SignatureHeader::parse(&header);
        prop_assert_eq!(
            parsed,
            Ok(SignatureHeader { timestamp: i64::from(timestamp), digest }),
            "{}", header
        );
    }

    #[test]
    fn signed_body_verifies_at_its_time_and_nothing_else_does(
        token in "[ -~]{1,40}",
        timestamp in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..256),
        flip in any::<prop::sample::Index>(),
        skew in 0i64..600,
    ) {
        let creds = Credentials {
            tokens: vec![Secret::new(token.clone())],
            mode: AuthMode::Signature,
            replay_window: Duration::from_secs(300),
        };
        let sig = SignatureHeader::parse(&sign(&token, timestamp, &body)).unwrap();
        prop_assert_eq!(sig.timestamp, timestamp);
        let at = timestamp + skew;
        let want = if skew <= 300 { Ok(()) } else { Err(AuthError::Stale) };
        prop_assert_eq!(creds.check_signature(&sig, &body, at), want);
        let mut other = body.clone();
        if other.is_empty() {
            other.push(b'x');
        } else {
            let i = flip.index(other.len());
            other[i] ^= 1;
        }
        prop_assert_eq!(
            creds.check_signature(&sig, &other, timestamp),
            Err(AuthError::BadSignature)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Event parsing
// ---------------------------------------------------------------------------------------------

fn header_event() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(&["ping", "build.finished", "job.started", "agent.lost"][..])
            .prop_map(String::from),
        short_hostile(),
    ])
}

fn parse(bytes: Vec<u8>, header: Option<&str>) -> Result<Event, EventError> {
    Event::parse(&VerifiedBody::trusted(bytes), header, Utc::now())
}

/// What `Event::parse` returned is consistent with the JSON it was given.
fn check_parsed(
    result: &Result<Event, EventError>,
    value: Option<&Value>,
    header: Option<&str>,
) -> Result<(), TestCaseError> {
    match (result, value) {
        (Ok(event), Some(value)) => {
            prop_assert!(value.is_object(), "accepted a non-object: {value}");
            prop_assert_eq!(event.payload(), value);
            let body_name = value.get("event").and_then(Value::as_str);
            prop_assert!(
                Some(event.name()) == body_name || Some(event.name()) == header,
                "name {:?} from neither body nor header",
                event.name()
            );
        }
        (Ok(event), None) => prop_assert!(false, "accepted non-JSON as {}", event.name()),
        (Err(EventError::NotJson(_)), Some(value)) => {
            prop_assert!(false, "rejected valid JSON as not JSON: {value}")
        }
        (Err(EventError::NotObject), Some(value)) => prop_assert!(!value.is_object()),
        (Err(e), Some(value)) if !value.is_object() => {
            prop_assert!(false, "{e:?} for a non-object: {value}")
        }
        (Err(_), _) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn event_parse_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            short_hostile().prop_map(String::into_bytes),
        ],
        header in header_event(),
    ) {
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        let result = parse(bytes, header.as_deref());
        check_parsed(&result, value.as_ref(), header.as_deref())?;
    }

    #[test]
    fn event_parse_never_panics_on_arbitrary_json_and_accepts_only_objects(
        value in arb_json(),
        header in header_event(),
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let result = parse(bytes, header.as_deref());
        if !value.is_object() {
            prop_assert_eq!(result.as_ref().err(), Some(&EventError::NotObject));
        }
        check_parsed(&result, Some(&value), header.as_deref())?;
    }

    #[test]
    fn event_parse_accepts_any_object_that_names_a_valid_event(
        value in arb_json(),
        name in "[!-~]{1,100}",
    ) {
        let mut map = match value {
            Value::Object(map) => map,
            other => Map::from_iter([("data".to_string(), other)]),
        };
        map.insert("event".into(), Value::String(name.clone()));
        let value = Value::Object(map);
        let event = parse(serde_json::to_vec(&value).unwrap(), Some(&name));
        prop_assert!(event.is_ok(), "{:?}", event.as_ref().err());
        prop_assert_eq!(event.unwrap().name().to_string(), name);
    }

    #[test]
    fn event_parse_rejects_deep_nesting_without_overflowing_the_stack(
        depth in 1usize..100_000,
        open in prop::sample::select(&["[", "{\"a\":"][..]),
    ) {
        let bytes = open.repeat(depth).into_bytes();
        prop_assert!(parse(bytes, Some("ping")).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// A glob as an operator might write one (mostly), or noise; a quarter are negated.
fn glob() -> impl Strategy<Value = String> {
    let body = prop_oneof![
        6 => prop::sample::select(&[
            "*", "**", "?*", "build.*", "job.*", "agent.*", "build.finished", "ping", "main",
            "release/*", "web-*", "web-sandbox", "failed", "passed", "blocked", "lost",
            "job.{finished,activated}", "*.finished", "[a-m]*", "[!a]*",
        ][..])
        .prop_map(String::from),
        1 => prop::sample::select(&["{", "}", "[", "[a-", "[]]", "\\", "\\*", "a**b", ""][..])
            .prop_map(String::from),
        1 => "[a-z.*?/_{}\\[\\]!,-]{0,12}",
        1 => short_hostile(),
    ];
    (prop::bool::weighted(0.25), body)
        .prop_map(|(negate, g)| if negate { format!("!{g}") } else { g })
}

fn globs() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec(glob(), 1..4),
    ]
}

/// A `when` condition, or none when the generated path or regex does not compile.
fn condition() -> impl Strategy<Value = Option<Condition>> {
    let path = prop_oneof![
        prop::sample::select(
            &[
                "build.source",
                "build.branch",
                "pipeline.slug",
                "build.number",
                "x.y",
                "build",
                "pipeline.steps.0.name",
                "a..b",
                "",
            ][..]
        )
        .prop_map(String::from),
        short_hostile(),
    ];
    let test = prop_oneof![
        arb_json().prop_map(|v| Some(Test::Equals(v))),
        prop::collection::vec(arb_json(), 0..4).prop_map(|v| Some(Test::In(v))),
        any::<bool>().prop_map(|b| Some(Test::Exists(b))),
        prop_oneof![
            Just("^ma".to_string()),
            Just("(".to_string()),
            short_hostile()
        ]
        .prop_map(|r| Condition::regex(&r).ok()),
    ];
    (path, test).prop_map(|(path, test)| Condition::new(&path, test?).ok())
}

#[derive(Debug, Clone)]
struct RouteSpec {
    events: Vec<String>,
    pipelines: Vec<String>,
    branches: Vec<String>,
    states: Vec<String>,
    when: Vec<Option<Condition>>,
    cont: bool,
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        globs(),
        globs(),
        globs(),
        globs(),
        // Most routes have no condition: a generated one rarely holds.
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(condition(), 1..3),
        ],
        any::<bool>(),
    )
        .prop_map(
            |(events, pipelines, branches, states, when, cont)| RouteSpec {
                events,
                pipelines,
                branches,
                states,
                when,
                cont,
            },
        )
}

/// The route, named `name`, or `None` when one of its lists does not compile.
fn compile(spec: &RouteSpec, name: String) -> Option<Route> {
    Some(Route {
        events: PatternList::new(&spec.events).ok()?,
        pipelines: PatternList::new(&spec.pipelines).ok()?,
        branches: PatternList::new(&spec.branches).ok()?,
        states: PatternList::new(&spec.states).ok()?,
        when: spec.when.iter().flatten().cloned().collect(),
        continue_matching: spec.cont,
        ..Route::new(name, ["dest"])
    })
}

/// The routes that compile, each named by its position in the result.
fn router(specs: &[RouteSpec]) -> Router {
    let routes = specs
        .iter()
        .filter_map(|spec| compile(spec, String::new()))
        .enumerate()
        .map(|(i, mut route)| {
            route.name = i.to_string();
            route
        })
        .collect();
    Router::new(routes)
}

fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(&[
            "main", "release/1.2", "release/2026/11", "web-app", "web-sandbox", "api", "failed",
            "passed", "failing", "lost", "connected", "",
        ][..])
        .prop_map(Value::from),
        2 => short_hostile().prop_map(Value::from),
        1 => arb_json(),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let name = prop_oneof![
        prop::sample::select(
            &[
                "ping",
                "build.scheduled",
                "build.running",
                "build.failing",
                "build.finished",
                "job.finished",
                "job.activated",
                "agent.lost",
                "agent.connected",
                "cluster_token.registration_blocked",
                "brand.new_event",
            ][..]
        )
        .prop_map(String::from),
        "[!-~]{1,30}",
    ];
    (
        name,
        prop::option::of(field()),
        prop::option::of(field()),
        prop::option::of(field()),
        prop::option::of(any::<bool>()),
        prop::option::of(field()),
    )
        .prop_map(|(name, slug, branch, state, blocked, source)| {
            let mut payload = json!({"pipeline": {}, "build": {}, "job": {}, "agent": {}});
            if let Some(slug) = slug {
                payload["pipeline"]["slug"] = slug;
            }
            if let Some(branch) = branch {
                payload["build"]["branch"] = branch;
            }
            if let Some(state) = state {
                payload["build"]["state"] = state.clone();
                payload["job"]["state"] = state.clone();
                payload["agent"]["connection_state"] = state;
            }
            if let Some(blocked) = blocked {
                payload["build"]["blocked"] = Value::Bool(blocked);
            }
            if let Some(source) = source {
                payload["build"]["source"] = source;
            }
            Event::from_value(&name, payload, Utc::now())
        })
}

fn position(route: &Route) -> usize {
    route.name.parse().expect("routes are named by position")
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn router_never_panics_and_returns_matching_routes_in_file_order(
        specs in prop::collection::vec(route_spec(), 0..8),
        event in event(),
    ) {
        let router = router(&specs);
        let matched: Vec<usize> = router.route(&event).into_iter().map(position).collect();
        prop_assert!(matched.windows(2).all(|w| w[0] < w[1]), "not in file order: {:?}", matched);

        let routes = router.routes();
        // Matching stops at the first matching route that does not continue.
        let stop = routes
            .iter()
            .position(|r| !r.continue_matching && r.matches(&event))
            .unwrap_or(routes.len());
        for (i, route) in routes.iter().enumerate() {
            let want = i <= stop && route.matches(&event);
            prop_assert_eq!(
                matched.contains(&i),
                want,
                "route {} (continue = {}) for {} {}",
                i,
                route.continue_matching,
                event.name(),
                event.payload()
            );
        }
        for &i in matched.iter().rev().skip(1) {
            prop_assert!(routes[i].continue_matching, "matching went on after route {}", i);
        }
    }

    #[test]
    fn a_route_that_does_not_continue_stops_the_matching(
        before in prop::collection::vec(route_spec(), 0..5),
        after in prop::collection::vec(route_spec(), 0..5),
        event in event(),
    ) {
        // A catch-all that does not continue, between arbitrary routes.
        let stop = RouteSpec {
            events: vec![],
            pipelines: vec![],
            branches: vec![],
            states: vec![],
            when: vec![],
            cont: false,
        };
        let specs: Vec<RouteSpec> =
            before.iter().cloned().chain([stop]).chain(after.iter().cloned()).collect();
        let router = router(&specs);
        let stop_at = before.iter().filter(|s| compile(s, String::new()).is_some()).count();
        let matched: Vec<usize> = router.route(&event).into_iter().map(position).collect();
        prop_assert!(matched.iter().all(|&i| i <= stop_at), "{:?} past {}", matched, stop_at);
        let stopped_earlier = router.routes()[..stop_at]
            .iter()
            .any(|r| !r.continue_matching && r.matches(&event));
        prop_assert_eq!(matched.contains(&stop_at), !stopped_earlier);
    }

    #[test]
    fn pattern_lists_never_panic_on_arbitrary_globs_and_values(
        patterns in prop::collection::vec(glob(), 0..6),
        value in prop::option::of(short_hostile()),
    ) {
        if let Ok(list) = PatternList::new(&patterns) {
            let matches = list.matches(value.as_deref());
            if patterns.is_empty() {
                prop_assert!(matches);
            } else if value.is_none() {
                prop_assert!(!matches);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

static RENDERER: LazyLock<Renderer> =
    LazyLock::new(|| Renderer::new(None, Default::default()).expect("built-in templates compile"));

static SAMPLES: LazyLock<Vec<(&'static str, Event)>> = LazyLock::new(samples::events);

/// Payload paths the templates show, plus a few they do not.
const PATHS: &[&str] = &[
    "build.message",
    "build.branch",
    "build.commit",
    "build.state",
    "build.blocked_state",
    "build.source",
    "build.web_url",
    "build.number",
    "build.author.name",
    "build.author.username",
    "build.author.email",
    "build.creator.name",
    "build.creator.email",
    "build.pull_request.id",
    "build.pull_request.base",
    "build.started_at",
    "build.finished_at",
    "pipeline.name",
    "pipeline.slug",
    "pipeline.web_url",
    "pipeline.steps.0.name",
    "job.label",
    "job.name",
    "job.command",
    "job.state",
    "job.exit_status",
    "job.step_key",
    "job.web_url",
    "job.agent.name",
    "job.unblocked_by.name",
    "agent.name",
    "agent.hostname",
    "agent.ip_address",
    "agent.version",
    "agent.queue",
    "agent.connection_state",
    "agent.web_url",
    "agent.meta_data.0",
    "cluster_token.description",
    "organization.name",
    "organization.web_url",
    "sender.name",
    "subject.test_full_name",
    "subject.test_location",
    "subject.test_url",
    "workflow_event.type",
    "workflow_url",
    "widget.name",
    "widget.web_url",
    "event",
];

/// A payload path: half the time one every family shows.
fn path() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        prop::sample::select(
            &[
                "build.message",
                "build.branch",
                "build.author.name",
                "pipeline.name",
                "job.label",
                "agent.name",
            ][..]
        ),
        prop::sample::select(PATHS),
    ]
}

/// The chat markup that must never come out of payload text live.
const MARKUP: &[&str] = &[
    "<!channel>",
    "<!here>",
    "<@U123>",
    "<#C123>",
    "[x](http://e)",
    "<at>Boss</at>",
    "<https://evil.example|click>",
];

/// A value for a payload field: mostly hostile text, sometimes a URL carrying it, sometimes
/// any JSON at all.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile_string().prop_map(Value::String),
        3 => (prop::sample::select(MARKUP), hostile_string())
            .prop_map(|(m, s)| Value::String(format!("{m} {s} {m}"))),
        2 => hostile_string().prop_map(|s| Value::String(format!("https://e.example/{s}"))),
        1 => arb_json(),
    ]
}

/// Sets `path` in `payload`, turning whatever is in the way into objects (or indexing arrays).
fn set_path(payload: &mut Value, path: &str, value: Value) {
    let mut slot = payload;
    for seg in path.split('.') {
        let index = seg.parse::<usize>().ok();
        let replace = match &*slot {
            Value::Object(_) => false,
            Value::Array(items) => index.is_none_or(|i| i >= items.len()),
            _ => true,
        };
        if replace {
            *slot = Value::Object(Map::new());
        }
        slot = match slot {
            Value::Array(items) => &mut items[index.expect("checked above")],
            Value::Object(map) => map.entry(seg).or_insert(Value::Null),
            _ => unreachable!("made an object above"),
        };
    }
    *slot = value;
}

fn strings(v: &Value) -> Vec<&str> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    out.push(k);
                    walk(v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// Every limit of `slack::limits::enforce` holds, and no payload text became a ping or mention.
fn check_slack(body: &Value) -> Result<(), TestCaseError> {
    use limits::*;
    prop_assert!(body.is_object(), "not an object");
    prop_assert!(body["text"].is_string(), "no top-level text");
    prop_assert!(chars(&body["text"]) <= TEXT);
    let mut block_lists = vec![&body["blocks"]];
    for att in body["attachments"].as_array().into_iter().flatten() {
        for key in ["text", "fallback", "pretext"] {
            prop_assert!(chars(&att[key]) <= SECTION, "attachment {}", key);
        }
        block_lists.push(&att["blocks"]);
    }
    for blocks in block_lists {
        let Some(blocks) = blocks.as_array() else {
            continue;
        };
        prop_assert!(blocks.len() <= BLOCKS);
        for block in blocks {
            match block["type"].as_str() {
                Some("header") => prop_assert!(chars(&block["text"]["text"]) <= HEADER),
                Some("section") => {
                    prop_assert!(chars(&block["text"]["text"]) <= SECTION);
                    let fields = block["fields"].as_array().map_or(&[][..], Vec::as_slice);
                    prop_assert!(fields.len() <= FIELDS);
                    for f in fields {
                        prop_assert!(chars(&f["text"]) <= FIELD);
                    }
                    prop_assert!(chars(&block["accessory"]["text"]["text"]) <= BUTTON);
                }
                Some("context") => {
                    let els = block["elements"].as_array().map_or(&[][..], Vec::as_slice);
                    prop_assert!(els.len() <= CONTEXT_ELEMENTS);
                    for e in els {
                        prop_assert!(chars(&e["text"]) <= FIELD);
                    }
                }
                Some("actions") => {
                    let els = block["elements"].as_array().map_or(&[][..], Vec::as_slice);
                    prop_assert!(els.len() <= ACTIONS);
                    for e in els {
                        prop_assert!(chars(&e["text"]["text"]) <= BUTTON);
                    }
                }
                _ => {}
            }
        }
    }
    for s in strings(body) {
        for bad in ["<!channel>", "<!here>", "<!everyone>", "<@U123>", "<#C123>"] {
            prop_assert!(!s.contains(bad), "{:?} survived in Slack text {:?}", bad, s);
        }
    }
    Ok(())
}

/// No Teams text (links aside) holds a Markdown link or an `<at>` mention tag.
fn check_teams_inert(v: &Value) -> Result<(), TestCaseError> {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(s) if !key.ends_with("url") => {
                        let lower = s.to_lowercase();
                        for bad in ["](", "<at", "</at"] {
                            prop_assert!(
                                !lower.contains(bad),
                                "{:?} in Teams {}: {:?}",
                                bad,
                                key,
                                s
                            );
                        }
                    }
                    _ => check_teams_inert(child)?,
                }
            }
        }
        Value::Array(items) => items.iter().try_for_each(check_teams_inert)?,
        _ => {}
    }
    Ok(())
}

/// The Teams body without its real mentions. A mention is an `<at>…</at>` tag in the card's text
/// plus an entry in the card's `msteams.entities` that Teams resolves it by: every entity must
/// be a mention whose tag appears in the card, and the copy returned has the entities and every
/// tag that matches one removed, so any `<at` left over came from payload text.
fn without_mentions(v: &Value) -> Result<Value, TestCaseError> {
    let mut rest = v.clone();
    let Some(entities) = rest
        .pointer_mut("/attachments/0/content/msteams")
        .and_then(Value::as_object_mut)
        .and_then(|msteams| msteams.remove("entities"))
    else {
        return Ok(rest);
    };
    let entities = entities.as_array().map_or(&[][..], Vec::as_slice);
    prop_assert!(
        !entities.is_empty(),
        "msteams.entities is empty or not a list"
    );
    let mut tags = Vec::new();
    for e in entities {
        let tag = e["text"].as_str().unwrap_or_default();
        prop_assert_eq!(&e["type"], "mention", "{}", e);
        prop_assert!(tag.starts_with("<at>") && tag.ends_with("</at>"), "{}", e);
        prop_assert!(e["mentioned"]["id"].is_string(), "{}", e);
        tags.push(tag.to_string());
    }
    fn strip(v: &mut Value, tags: &[String], used: &mut [bool]) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        Value::String(s) if !key.ends_with("url") => {
                            for (tag, used) in tags.iter().zip(used.iter_mut()) {
                                if s.contains(tag.as_str()) {
                                    *used = true;
                                    *s = s.replace(tag.as_str(), "");
                                }
                            }
                        }
                        _ => strip(child, tags, used),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| strip(i, tags, used)),
            _ => {}
        }
    }
    let mut used = vec![false; tags.len()];
    strip(&mut rest, &tags, &mut used);
    for (tag, used) in tags.iter().zip(used) {
        prop_assert!(used, "entity {:?} has no tag in the card", tag);
    }
    Ok(rest)
}

/// Checks one rendered body: Slack and Teams bodies are JSON within the destination's limits,
/// console text is clean, and no payload text became a ping or mention.
fn check_body(
    label: &str,
    kind: TemplateKind,
    template: &str,
    body: &Body,
) -> Result<(), TestCaseError> {
    match (kind, body) {
        (TemplateKind::Slack, Body::Json(v)) => check_slack(v)
            .map_err(|e| TestCaseError::fail(format!("{label} slack/{template}: {e}")))?,
        (TemplateKind::Teams, Body::Json(v)) => {
            without_mentions(v)
                .and_then(|rest| check_teams_inert(&rest))
                .map_err(|e| TestCaseError::fail(format!("{label} teams/{template}: {e}")))?;
            let size = serde_json::to_vec(v).unwrap().len();
            prop_assert!(
                size <= teams::MAX_BYTES,
                "{} teams/{}: {} bytes",
                label,
                template,
                size
            );
        }
        (TemplateKind::Console, Body::Text(t)) => {
            prop_assert!(t.chars().count() <= console::MAX_CHARS);
            prop_assert!(
                !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{} console/{}: control character in {:?}",
                label,
                template,
                t
            );
        }
        (TemplateKind::Webhook, Body::Json(v)) => check_envelope(v)
            .map_err(|e| TestCaseError::fail(format!("{label} webhook/{template}: {e}")))?,
        (kind, body) => prop_assert!(false, "{label} {kind}: unexpected body {body:?}"),
    }
    // Whatever the kind, the bytes posted are what the value says.
    if let Body::Json(v) = body {
        let back: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        prop_assert_eq!(&back, v);
    }
    Ok(())
}

/// A webhook body is the documented envelope, for one event or a digest.
fn check_envelope(v: &Value) -> Result<(), TestCaseError> {
    prop_assert!(v["type"].is_string(), "no type");
    prop_assert!(
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap_or_default()).is_ok(),
        "timestamp is not RFC 3339"
    );
    prop_assert_eq!(&v["data"]["version"], &json!(1));
    let events = match v["data"]["events"].as_array() {
        Some(events) => events.iter().collect(),
        None => vec![&v["data"]],
    };
    for data in events {
        prop_assert!(data["payload"].is_object(), "no payload");
        prop_assert!(data["kb"]["title"].is_string(), "no kb");
        prop_assert!(data["payload"].get("kb").is_none(), "kb inside the payload");
    }
    Ok(())
}

/// Renders `event` as the first destination kind using template `kind` would.
fn render_as(
    renderer: &Renderer,
    kind: TemplateKind,
    event: &Event,
    data: &TemplateData,
) -> Result<(String, Body), kitebridge::render::RenderError> {
    let destination = DestinationKind::rendered_by(kind).expect("every template kind is used");
    destination
        .render_event(renderer, None, event, data)
        .map(|Rendered { template, body }| (template, body))
}

/// Renders `event` for every kind and checks each body.
fn check_render(label: &str, event: &Event) -> Result<(), TestCaseError> {
    let data = TemplateData::new(event, Utc::now());
    for kind in TemplateKind::ALL {
        let (template, body) = render_as(&RENDERER, kind, event, &data).map_err(|e| {
            TestCaseError::fail(format!("{label} {kind}: {e}\n{}", event.payload()))
        })?;
        check_body(label, kind, &template, &body)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn hostile_payload_text_renders_valid_json_within_limits_and_inert(
        sample in any::<prop::sample::Index>(),
        edits in prop::collection::vec((path(), field_value()), 1..8),
    ) {
        let (label, base) = &SAMPLES[sample.index(SAMPLES.len())];
        let mut payload = base.payload().clone();
        for (path, value) in edits {
            set_path(&mut payload, path, value);
        }
        let event = Event::from_value(base.name(), payload, Utc::now());
        check_render(label, &event)?;
    }

    #[test]
    fn arbitrary_payloads_under_any_event_name_render_within_limits(
        sample in any::<prop::sample::Index>(),
        payload in arb_json(),
    ) {
        let (label, base) = &SAMPLES[sample.index(SAMPLES.len())];
        let event = Event::from_value(base.name(), payload, Utc::now());
        check_render(label, &event)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Mentions and digests
// ---------------------------------------------------------------------------------------------

/// The one person in the mention config: her Slack member id, Teams UPN and name.
const MARIA_SLACK: &str = "U024BE7LH";
const MARIA_TEAMS: &str = "mlopez@acme.onmicrosoft.example";
const MARIA_NAME: &str = "Maria López";
/// The emails and Buildkite user name `[[people]]` knows her by, as written there.
const MARIA_KEYS: &[&str] = &["maria.lopez@acme.example", "Maria@Acme.Example", "mlopez"];

/// The built-in templates with a config that lists Maria in `[[people]]`.
static MENTIONING: LazyLock<Renderer> = LazyLock::new(|| {
    let toml = format!(
        r#"
[buildkite]
token = "t"

[destinations.out]
kind = "console"

[[routes]]
name = "all"
to = ["out"]

[[people]]
name = "{MARIA_NAME}"
emails = ["{}", "{}"]
buildkite = ["{}"]
slack = "{MARIA_SLACK}"
teams = "{MARIA_TEAMS}"
"#,
        MARIA_KEYS[0], MARIA_KEYS[1], MARIA_KEYS[2]
    );
    let config = Config::parse(Path::new("kitebridge.toml"), &toml, |_| None)
        .expect("the people config is valid");
    assert_eq!(config.people.len(), 1);
    Renderer::new(None, config.people.clone()).expect("built-in templates compile")
});

/// The payload fields `{{mention}}` looks the author up by.
const AUTHOR_KEYS: [&str; 3] = [
    "build.author.email",
    "build.creator.email",
    "build.author.username",
];

/// Whether `payload` names Maria where `{{mention}}` looks: one of her keys, in any case, with
/// any space around it.
fn names_maria(payload: &Value) -> bool {
    AUTHOR_KEYS.iter().any(|path| {
        let pointer = format!("/{}", path.replace('.', "/"));
        payload
            .pointer(&pointer)
            .and_then(Value::as_str)
            .is_some_and(|s| {
                let s = s.trim().to_lowercase();
                MARIA_KEYS.iter().any(|k| k.to_lowercase() == s)
            })
    })
}

/// Strings close to Maria's keys, her ids or her mention that are none of her keys.
const NEAR_MISSES: &[&str] = &[
    "maria.lopez@acme.example.evil",
    "maria.lopez@acme",
    "maria.lopez",
    "mlopez2",
    "m lopez",
    "mlopez@acme.example",
    "maria.lopez@acme.example\u{200b}",
    "\u{feff}mlopez",
    "maria.lopez@acme.example mlopez",
    "Maria López",
    "U024BE7LH",
    "<@U024BE7LH>",
    "<at>Maria López</at>",
    "mlopez@acme.onmicrosoft.example",
];

/// A value for a field the author is looked up by: one of Maria's keys in any case with space
/// around it, a near miss, hostile text, any JSON, or null.
fn author_key() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => (prop::sample::select(MARIA_KEYS), any::<u64>(), "[ \t\n]{0,2}", "[ \t\n]{0,2}")
            .prop_map(|(key, case, before, after)| {
                let key: String = key
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if case >> (i % 64) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                Value::String(format!("{before}{key}{after}"))
            }),
        2 => prop::sample::select(NEAR_MISSES).prop_map(Value::from),
        2 => short_hostile().prop_map(Value::String),
        1 => arb_json(),
        2 => Just(Value::Null),
    ]
}

/// Text imitating a mention of Maria (or a group).
const IMPERSONATIONS: &[&str] = &[
    "<@U024BE7LH>",
    "<@U024BE7LH|maria>",
    "<at>Maria López</at>",
    "<AT>Maria López</AT>",
    "<at>mlopez@acme.onmicrosoft.example</at>",
    "@Maria López",
    "<!subteam^S0123>",
];

/// Fields a message shows: names and the commit message.
const SHOWN: &[&str] = &[
    "build.author.name",
    "build.creator.name",
    "build.message",
    "job.unblocked_by.name",
    "sender.name",
];

/// A shown field's value: an imitated mention inside hostile text, or any field value.
fn shown_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            short_hostile(),
            prop::sample::select(IMPERSONATIONS),
            short_hostile()
        )
            .prop_map(|(a, m, b)| Value::String(format!("{a}{m}{b}"))),
        field_value(),
    ]
}

/// A sample event (with its fixture name) with hostile edits, imitated mentions in its text,
/// and author fields that name Maria or not.
fn authored_event() -> impl Strategy<Value = (&'static str, Event)> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec((path(), field_value()), 0..4),
        prop::collection::vec((prop::sample::select(SHOWN), shown_text()), 1..4),
        prop::array::uniform3(author_key()),
    )
        .prop_map(|(sample, edits, shown, keys)| {
            let (label, base) = &SAMPLES[sample.index(SAMPLES.len())];
            let mut payload = base.payload().clone();
            for (path, value) in edits.into_iter().chain(shown) {
                set_path(&mut payload, path, value);
            }
            for (path, value) in AUTHOR_KEYS.into_iter().zip(keys) {
                set_path(&mut payload, path, value);
            }
            (*label, Event::from_value(base.name(), payload, Utc::now()))
        })
}

/// The default templates that show the author with `{{mention}}`.
fn mentions_author(template: &str) -> bool {
    matches!(template, "build" | "job")
}

/// How many Slack mentions `body` holds; each must be Maria's.
fn slack_mentions(body: &Value) -> Result<usize, TestCaseError> {
    let want = format!("<@{MARIA_SLACK}>");
    let mut n = 0;
    for s in strings(body) {
        for (i, _) in s.match_indices("<@") {
            prop_assert!(s[i..].starts_with(&want), "not Maria's mention: {:?}", s);
            n += 1;
        }
    }
    Ok(n)
}

/// How many Teams mention entities `body` holds; each must be Maria's, as configured. (That
/// every `<at>` tag has its entity and every entity its tag is `check_body`'s.)
fn teams_mentions(body: &Value) -> Result<usize, TestCaseError> {
    let want = json!({
        "type": "mention",
        "text": format!("<at>{MARIA_NAME}</at>"),
        "mentioned": {"id": MARIA_TEAMS, "name": MARIA_NAME},
    });
    let entities = body
        .pointer("/attachments/0/content/msteams/entities")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for e in entities {
        prop_assert_eq!(e, &want);
    }
    Ok(entities.len())
}

/// How many mentions a Slack or Teams body holds (none for console text).
fn mentions(kind: TemplateKind, body: &Body) -> Result<usize, TestCaseError> {
    match (kind, body) {
        (TemplateKind::Slack, Body::Json(v)) => slack_mentions(v),
        (TemplateKind::Teams, Body::Json(v)) => teams_mentions(v),
        _ => Ok(0),
    }
}

/// An event for a digest: an authored sample, or any JSON under a sample's event name.
fn digest_event() -> impl Strategy<Value = (&'static str, Event)> {
    prop_oneof![
        3 => authored_event(),
        1 => (any::<prop::sample::Index>(), arb_json()).prop_map(|(sample, payload)| {
            let (label, base) = &SAMPLES[sample.index(SAMPLES.len())];
            (*label, Event::from_value(base.name(), payload, Utc::now()))
        }),
    ]
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn only_a_mapped_author_is_mentioned_and_payload_text_never_is(
        (label, event) in authored_event(),
    ) {
        let mapped = names_maria(event.payload());
        let data = TemplateData::new(&event, Utc::now());
        for kind in TemplateKind::ALL {
            let (template, body) = render_as(&MENTIONING, kind, &event, &data)
                .map_err(|e| TestCaseError::fail(format!("{label} {kind}: {e}\n{}", event.payload())))?;
            check_body(label, kind, &template, &body)?;
            if kind == TemplateKind::Console {
                continue;
            }
            // Exactly one mention where the template shows the author and Maria is the
            // author; none anywhere else, whatever the text says.
            let want = usize::from(mapped && mentions_author(&template));
            prop_assert_eq!(
                mentions(kind, &body)?,
                want,
                "{} {}/{}: mapped = {}\n{}",
                label,
                kind,
                template,
                mapped,
                event.payload()
            );
        }
    }

    #[test]
    fn digests_of_arbitrary_events_render_valid_json_within_limits(
        events in prop::collection::vec(digest_event(), 2..8),
        // Eight times over goes past the 30 lines a digest lists.
        copies in prop_oneof![3 => Just(1usize), 1 => Just(8)],
        explicit in prop::option::of(
            prop::sample::select(&["digest", "default", "build", "job", "agent"][..])
        ),
    ) {
        let label = events.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(" + ");
        let mapped = events.iter().any(|(_, e)| names_maria(e.payload()));
        let count = events.len() * copies;
        let events: Vec<Event> = events.into_iter().map(|(_, e)| e).cycle().take(count).collect();
        for kind in TemplateKind::ALL {
            if explicit.is_some_and(|name| !MENTIONING.has(kind, name)) {
                continue; // webhook templates are one envelope: no `build` or `job` of their own
            }
            let (template, body) = DestinationKind::rendered_by(kind)
                .expect("every template kind is used")
                .render_group(&MENTIONING, explicit, &events, Utc::now())
                .map(|Rendered { template, body }| (template, body))
                .map_err(|e| TestCaseError::fail(format!("{label} {kind} digest: {e}")))?;
            prop_assert_eq!(template.as_str(), explicit.unwrap_or("digest"));
            check_body(&label, kind, &template, &body)?;
            // A template that mentions the author can only mention Maria, and only when she
            // wrote one of the events.
            let found = mentions(kind, &body)?;
            prop_assert!(mapped || found == 0, "{} {}/{}: {} mentions", label, kind, template, found);
        }
    }
}
