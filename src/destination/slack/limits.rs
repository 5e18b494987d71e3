//! Slack's size limits, enforced on every rendered Slack body after templating.
//!
//! Templates truncate what they know is long, but a custom template or a hostile payload can
//! still overshoot; this pass guarantees the limits so a message is shortened, never refused.

use crate::render::truncate_markup;
use serde_json::Value;

/// Characters in the top-level `text`.
pub const TEXT: usize = 40_000;
/// Characters in a header block.
pub const HEADER: usize = 150;
/// Characters in a section's text.
pub const SECTION: usize = 3_000;
/// Characters in one section field or context element.
pub const FIELD: usize = 2_000;
/// Fields in one section.
pub const FIELDS: usize = 10;
/// Blocks in one message or attachment.
pub const BLOCKS: usize = 50;
/// Elements in one context block.
pub const CONTEXT_ELEMENTS: usize = 10;
/// Elements in one actions block.
pub const ACTIONS: usize = 25;
/// Characters in a button's label.
pub const BUTTON: usize = 75;

fn clamp_text(slot: Option<&mut Value>, max: usize) {
    if let Some(Value::String(s)) = slot
        && s.chars().count() > max
    {
        *s = truncate_markup(s, max);
    }
}

fn clamp_array(slot: Option<&mut Value>, max: usize) {
    if let Some(Value::Array(items)) = slot {
        items.truncate(max);
    }
}

fn text_of(obj: &mut Value) -> Option<&mut Value> {
    obj.get_mut("text").and_then(|t| t.get_mut("text"))
}

/// Brings a Slack incoming-webhook or `chat.postMessage` body within Slack's limits.
pub fn enforce(body: &mut Value) {
    clamp_text(body.get_mut("text"), TEXT);
    enforce_blocks(body.get_mut("blocks"));
    if let Some(Value::Array(attachments)) = body.get_mut("attachments") {
        for att in attachments {
            for key in ["text", "fallback", "pretext"] {
                clamp_text(att.get_mut(key), SECTION);
            }
            enforce_blocks(att.get_mut("blocks"));
        }
    }
}

fn enforce_blocks(blocks: Option<&mut Value>) {
    let Some(Value::Array(blocks)) = blocks else {
        return;
    };
    if blocks.len() > BLOCKS {
        // Keep the last block: by convention it holds the link buttons.
        let last = blocks.pop().expect("non-empty");
        blocks.truncate(BLOCKS - 1);
        blocks.push(last);
    }
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("header") => clamp_text(text_of(block), HEADER),
            Some("section") => {
                clamp_text(text_of(block), SECTION);
                clamp_array(block.get_mut("fields"), FIELDS);
                if let Some(Value::Array(fields)) = block.get_mut("fields") {
                    for f in fields {
                        clamp_text(f.get_mut("text"), FIELD);
                    }
                }
                if let Some(acc) = block.get_mut("accessory") {
                    clamp_text(text_of(acc), BUTTON);
                }
            }
            Some("context") => {
                clamp_array(block.get_mut("elements"), CONTEXT_ELEMENTS);
                if let Some(Value::Array(els)) = block.get_mut("elements") {
                    for e in els {
                        clamp_text(e.get_mut("text"), FIELD);
                    }
                }
            }
            Some("actions") => {
                clamp_array(block.get_mut("elements"), ACTIONS);
                if let Some(Value::Array(els)) = block.get_mut("elements") {
                    for e in els {
                        clamp_text(text_of(e), BUTTON);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slack_limits_are_enforced_everywhere() {
        let long = "x".repeat(5_000);
        let mut body = json!({
            "text": "y".repeat(50_000),
            "blocks": (0..60).map(|i| json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("{i}")}})).collect::<Vec<_>>(),
            "attachments": [{"blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": long}},
                {"type": "section", "text": {"type": "mrkdwn", "text": long},
                 "fields": (0..12).map(|_| json!({"type": "mrkdwn", "text": long})).collect::<Vec<_>>()},
                {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": long}, "url": "https://b"}]}
            ]}]
        });
        enforce(&mut body);
        assert_eq!(body["text"].as_str().unwrap().chars().count(), TEXT);
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), BLOCKS);
        assert_eq!(blocks[49]["text"]["text"], "59");
        let att = &body["attachments"][0]["blocks"];
        assert_eq!(
            att[0]["text"]["text"].as_str().unwrap().chars().count(),
            HEADER
        );
        assert_eq!(
            att[1]["text"]["text"].as_str().unwrap().chars().count(),
            SECTION
        );
        assert_eq!(att[1]["fields"].as_array().unwrap().len(), FIELDS);
        assert_eq!(
            att[1]["fields"][0]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            FIELD
        );
        assert_eq!(
            att[2]["elements"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            BUTTON
        );
        assert_eq!(att[2]["elements"][0]["url"], "https://b");
    }
}
