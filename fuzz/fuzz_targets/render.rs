//! `Event::parse` of arbitrary bytes; if it is an event, render it for Slack, Teams and the
//! console with the built-in templates.
//!
//! Rendering always succeeds; Slack and Teams bodies are JSON within the destination's limits;
//! no Slack text can ping or mention (`<!…>`, `<@…>`, `<#…>`), no Teams text holds a Markdown
//! link or `<at>` tag, and console text carries no control characters.

#![no_main]

use kitebridge::render::limits::*;
use kitebridge::render::{Body, Renderer, TemplateData, TemplateKind};
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

fuzz_target!(|data: &[u8]| {
    let Some(event) = kitebridge_fuzz::event(data) else {
        return;
    };
    let data = TemplateData::new(&event, kitebridge_fuzz::now());
    for kind in TemplateKind::ALL {
        let (name, body) = match RENDERER.render_event(kind, None, &event, &data) {
            Ok(ok) => ok,
            Err(e) => panic!("{kind} {}: {e}", event.name()),
        };
        match (kind, &body) {
            (TemplateKind::Slack, Body::Json(v)) => check_slack(v),
            (TemplateKind::Teams, Body::Json(v)) => check_teams(v),
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
