//! `Event::parse` of arbitrary bytes; if it is an event, render it with the built-in
//! templates of every template kind (Slack, Teams, console, webhook), as the destination kind
//! each renders for would, within its limits.
//!
//! Rendering always succeeds and passes the kind's body check; Slack and Teams bodies are JSON
//! within the destination's limits; no Slack text can ping or mention (`<!…>`, `<@…>`,
//! `<#…>`), no Teams text holds a Markdown link or `<at>` tag, console text carries no control
//! characters, and a webhook body is the documented envelope around the payload as received,
//! without any `webhook_url`.

#![no_main]

use kitebridge::destination::DestinationKind;
use kitebridge::destination::console::MAX_CHARS as CONSOLE_CHARS;
use kitebridge::destination::slack::limits::{
    ACTIONS as SLACK_ACTIONS, BLOCKS as SLACK_BLOCKS, BUTTON as SLACK_BUTTON,
    CONTEXT_ELEMENTS as SLACK_CONTEXT_ELEMENTS, FIELD as SLACK_FIELD, FIELDS as SLACK_FIELDS,
    HEADER as SLACK_HEADER, SECTION as SLACK_SECTION, TEXT as SLACK_TEXT,
};
use kitebridge::destination::teams::MAX_BYTES as TEAMS_BYTES;
use kitebridge::event::Event;
use kitebridge::render::{Body, Renderer, TemplateData, TemplateKind, without_secrets};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

static RENDERER: LazyLock<Renderer> =
    LazyLock::new(|| Renderer::new(None, Default::default()).expect("built-in templates"));

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// Every string in `v` with the key it sits under (`""` in arrays), keys included.
fn strings<'a>(v: &'a Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::String(s) => out.push((key, s)),
        Value::Array(items) => items.iter().for_each(|i| strings(i, key, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(("", k));
                strings(v, k, out);
            }
        }
        _ => {}
    }
}

fn check_slack(body: &Value) {
    assert!(chars(&body["text"]) <= SLACK_TEXT);
    let mut lists = vec![&body["blocks"]];
    for att in body["attachments"].as_array().into_iter().flatten() {
        for key in ["text", "fallback", "pretext"] {
            assert!(chars(&att[key]) <= SLACK_SECTION);
        }
        lists.push(&att["blocks"]);
    }
    for blocks in lists.into_iter().filter_map(Value::as_array) {
        assert!(blocks.len() <= SLACK_BLOCKS);
        for block in blocks {
            let elements = block["elements"].as_array().map_or(&[][..], Vec::as_slice);
            match block["type"].as_str() {
                Some("header") => assert!(chars(&block["text"]["text"]) <= SLACK_HEADER),
                Some("section") => {
                    assert!(chars(&block["text"]["text"]) <= SLACK_SECTION);
                    let fields = block["fields"].as_array().map_or(&[][..], Vec::as_slice);
                    assert!(fields.len() <= SLACK_FIELDS);
                    assert!(fields.iter().all(|f| chars(&f["text"]) <= SLACK_FIELD));
                    assert!(chars(&block["accessory"]["text"]["text"]) <= SLACK_BUTTON);
                }
                Some("context") => {
                    assert!(elements.len() <= SLACK_CONTEXT_ELEMENTS);
                    assert!(elements.iter().all(|e| chars(&e["text"]) <= SLACK_FIELD));
                }
                Some("actions") => {
                    assert!(elements.len() <= SLACK_ACTIONS);
                    assert!(
                        elements
                            .iter()
                            .all(|e| chars(&e["text"]["text"]) <= SLACK_BUTTON)
                    );
                }
                _ => {}
            }
        }
    }
    let mut all = Vec::new();
    strings(body, "", &mut all);
    for (key, s) in all {
        for bad in ["<!", "<@", "<#"] {
            assert!(!s.contains(bad), "{bad:?} in Slack {key:?}: {s:?}");
        }
    }
}

fn check_teams(body: &Value) {
    let size = serde_json::to_vec(body).unwrap().len();
    assert!(size <= TEAMS_BYTES, "Teams body is {size} bytes");
    let mut all = Vec::new();
    strings(body, "", &mut all);
    for (key, s) in all.into_iter().filter(|(key, _)| !key.ends_with("url")) {
        let lower = s.to_lowercase();
        for bad in ["](", "<at", "</at"] {
            assert!(!lower.contains(bad), "{bad:?} in Teams {key:?}: {s:?}");
        }
    }
}

/// The envelope of docs/destinations.md ("The webhook envelope"), version 1.
fn check_webhook(body: &Value, event: &Event) {
    assert_eq!(body["type"], event.name(), "webhook type");
    let timestamp = body["timestamp"].as_str().expect("a timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "timestamp {timestamp:?}"
    );
    let data = &body["data"];
    assert_eq!(data["version"], 1);
    assert_eq!(data["event"], event.name());
    assert!(data["id"].is_number() || data["id"].is_null());
    assert!(data["kb"].is_object());
    assert!(data["transition"].is_null() || data["transition"]["kind"].is_string());
    // The payload as received, minus secrets (and minus `kb`, where the derived fields sit).
    let mut want = without_secrets(event.payload());
    if let Some(map) = want.as_object_mut() {
        map.remove("kb");
    }
    assert_eq!(data["payload"], want, "webhook payload");
    fn no_secret(v: &Value) {
        match v {
            Value::Object(map) => {
                assert!(
                    !map.contains_key("webhook_url"),
                    "webhook_url in a webhook body"
                );
                map.values().for_each(no_secret);
            }
            Value::Array(items) => items.iter().for_each(no_secret),
            _ => {}
        }
    }
    no_secret(body);
}

fuzz_target!(|data: &[u8]| {
    let Some(event) = kitebridge_fuzz::event(data) else {
        return;
    };
    let data = TemplateData::new(&event, kitebridge_fuzz::now());
    for kind in TemplateKind::ALL {
        let dest =
            DestinationKind::rendered_by(kind).expect("a destination kind per template kind");
        let (name, body) = match dest.render_event(&RENDERER, None, &event, &data) {
            Ok(r) => (r.template, r.body),
            Err(e) => panic!("{kind} {}: {e}", event.name()),
        };
        if let Err(e) = dest.check_body(&body) {
            panic!("{kind}/{name}: {e}");
        }
        match (kind, &body) {
            (TemplateKind::Slack, Body::Json(v)) => check_slack(v),
            (TemplateKind::Teams, Body::Json(v)) => check_teams(v),
            (TemplateKind::Webhook, Body::Json(v)) => check_webhook(v, &event),
            (TemplateKind::Console, Body::Text(t)) => {
                assert!(t.chars().count() <= CONSOLE_CHARS);
                assert!(
                    !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                    "control character in console/{name}: {t:?}"
                );
            }
            _ => panic!("{kind}/{name} rendered {body:?}"),
        }
        if let Body::Json(v) = &body {
            let back: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
            assert_eq!(&back, v);
        }
    }
});
