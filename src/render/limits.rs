//! The destinations' size limits, enforced on every rendered body after templating.
//!
//! Templates truncate what they know is long, but a custom template or a hostile payload can
//! still overshoot; this pass guarantees the limits so a message is shortened, never refused.

use serde_json::Value;
use thiserror::Error;

/// Slack: characters in the top-level `text`.
pub const SLACK_TEXT: usize = 40_000;
/// Slack: characters in a header block.
pub const SLACK_HEADER: usize = 150;
/// Slack: characters in a section's text.
pub const SLACK_SECTION: usize = 3_000;
/// Slack: characters in one section field or context element.
pub const SLACK_FIELD: usize = 2_000;
/// Slack: fields in one section.
pub const SLACK_FIELDS: usize = 10;
/// Slack: blocks in one message or attachment.
pub const SLACK_BLOCKS: usize = 50;
/// Slack: elements in one context block.
pub const SLACK_CONTEXT_ELEMENTS: usize = 10;
/// Slack: elements in one actions block.
pub const SLACK_ACTIONS: usize = 25;
/// Slack: characters in a button's label.
pub const SLACK_BUTTON: usize = 75;
/// Teams: bytes in the whole posted body (Teams refuses bodies over about 28 KB).
pub const TEAMS_BYTES: usize = 28_000;
/// Console: characters of one printed message.
pub const CONSOLE_CHARS: usize = 16_000;

/// A body that cannot be brought within limits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("body is {size} bytes, over the {limit}-byte limit, and has no long text left to shorten")]
pub struct TooLarge {
    /// Bytes after shortening what could be shortened.
    pub size: usize,
    /// The limit.
    pub limit: usize,
}

/// Shortens `s` to at most `max` characters, ending in `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
    format!("{}…", &s[..end])
}

/// Like [`truncate`], for Slack text that is already escaped: there `&` only starts an entity
/// (`&amp;`) and `<` only starts a link or mention the template wrote, so the cut backs off to
/// before an unfinished one and what is kept still renders.
pub fn truncate_markup(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let end = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
    let mut kept = &s[..end];
    if let Some(amp) = kept.rfind('&')
        && !kept[amp..].contains(';')
    {
        kept = &kept[..amp];
    }
    if let Some(lt) = kept.rfind('<')
        && !kept[lt..].contains('>')
    {
        kept = &kept[..lt];
    }
    format!("{kept}…")
}

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
pub fn enforce_slack(body: &mut Value) {
    clamp_text(body.get_mut("text"), SLACK_TEXT);
    enforce_slack_blocks(body.get_mut("blocks"));
    if let Some(Value::Array(attachments)) = body.get_mut("attachments") {
        for att in attachments {
            for key in ["text", "fallback", "pretext"] {
                clamp_text(att.get_mut(key), SLACK_SECTION);
            }
            enforce_slack_blocks(att.get_mut("blocks"));
        }
    }
}

fn enforce_slack_blocks(blocks: Option<&mut Value>) {
    let Some(Value::Array(blocks)) = blocks else {
        return;
    };
    if blocks.len() > SLACK_BLOCKS {
        // Keep the last block: by convention it holds the link buttons.
        let last = blocks.pop().expect("non-empty");
        blocks.truncate(SLACK_BLOCKS - 1);
        blocks.push(last);
    }
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("header") => clamp_text(text_of(block), SLACK_HEADER),
            Some("section") => {
                clamp_text(text_of(block), SLACK_SECTION);
                clamp_array(block.get_mut("fields"), SLACK_FIELDS);
                if let Some(Value::Array(fields)) = block.get_mut("fields") {
                    for f in fields {
                        clamp_text(f.get_mut("text"), SLACK_FIELD);
                    }
                }
                if let Some(acc) = block.get_mut("accessory") {
                    clamp_text(text_of(acc), SLACK_BUTTON);
                }
            }
            Some("context") => {
                clamp_array(block.get_mut("elements"), SLACK_CONTEXT_ELEMENTS);
                if let Some(Value::Array(els)) = block.get_mut("elements") {
                    for e in els {
                        clamp_text(e.get_mut("text"), SLACK_FIELD);
                    }
                }
            }
            Some("actions") => {
                clamp_array(block.get_mut("elements"), SLACK_ACTIONS);
                if let Some(Value::Array(els)) = block.get_mut("elements") {
                    for e in els {
                        clamp_text(text_of(e), SLACK_BUTTON);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Brings a Teams body under [`TEAMS_BYTES`] by shortening its longest texts, repeatedly.
pub fn enforce_teams(body: &mut Value) -> Result<(), TooLarge> {
    loop {
        let size = serde_json::to_vec(body).map_or(usize::MAX, |v| v.len());
        if size <= TEAMS_BYTES {
            return Ok(());
        }
        let Some(longest) = longest_text(body) else {
            return Err(TooLarge {
                size,
                limit: TEAMS_BYTES,
            });
        };
        let Value::String(s) = longest else {
            unreachable!("longest_text only returns strings")
        };
        let chars = s.chars().count();
        if chars <= 40 {
            return Err(TooLarge {
                size,
                limit: TEAMS_BYTES,
            });
        }
        // Cut by the excess (bytes ≥ chars, so this is enough or close), at least by half of
        // what is left over 40 so the loop ends quickly.
        let excess = size - TEAMS_BYTES;
        let target = chars.saturating_sub(excess.max((chars - 40) / 2)).max(40);
        *s = truncate(s, target);
    }
}

/// The longest string under a `text`, `value` or `title` key anywhere in `v`.
fn longest_text(v: &mut Value) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<(usize, &'a mut Value)>) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if let Value::String(s) = child {
                        if matches!(key.as_str(), "text" | "value" | "title")
                            && best.as_ref().is_none_or(|(len, _)| s.len() > *len)
                        {
                            *best = Some((s.len(), child));
                        }
                    } else {
                        walk(child, best);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|c| walk(c, best)),
            _ => {}
        }
    }
    let mut best = None;
    walk(v, &mut best);
    best.map(|(_, v)| v)
}

/// Caps console output.
pub fn enforce_console(text: &str) -> String {
    truncate(text, CONSOLE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncate_counts_characters_and_respects_entities_and_links() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("🚀🚀🚀", 2).chars().count(), 2);
        let plain = format!("Fix a < b comparison & more {}", "x".repeat(300));
        assert_eq!(
            truncate(&plain, 40).chars().count(),
            40,
            "plain text is cut where it is long"
        );
        assert_eq!(truncate_markup("a &amp; b", 5), "a …");
        assert_eq!(truncate_markup("see <https://x|y> now", 10), "see …");
        assert_eq!(truncate_markup("a &lt; b and more", 12), "a &lt; b an…");
    }

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
        enforce_slack(&mut body);
        assert_eq!(body["text"].as_str().unwrap().chars().count(), SLACK_TEXT);
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), SLACK_BLOCKS);
        assert_eq!(blocks[49]["text"]["text"], "59");
        let att = &body["attachments"][0]["blocks"];
        assert_eq!(
            att[0]["text"]["text"].as_str().unwrap().chars().count(),
            SLACK_HEADER
        );
        assert_eq!(
            att[1]["text"]["text"].as_str().unwrap().chars().count(),
            SLACK_SECTION
        );
        assert_eq!(att[1]["fields"].as_array().unwrap().len(), SLACK_FIELDS);
        assert_eq!(
            att[1]["fields"][0]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            SLACK_FIELD
        );
        assert_eq!(
            att[2]["elements"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            SLACK_BUTTON
        );
        assert_eq!(att[2]["elements"][0]["url"], "https://b");
    }

    #[test]
    fn teams_bodies_shrink_under_the_byte_limit_keeping_urls() {
        let mut body = json!({"type": "message", "attachments": [{"content": {
            "body": [{"type": "TextBlock", "text": "\"é".repeat(40_000)},
                     {"type": "FactSet", "facts": [{"title": "t", "value": "v".repeat(30_000)}]}],
            "actions": [{"type": "Action.OpenUrl", "title": "View", "url": "https://buildkite.com/x"}]}}]});
        enforce_teams(&mut body).unwrap();
        assert!(serde_json::to_vec(&body).unwrap().len() <= TEAMS_BYTES);
        assert_eq!(
            body["attachments"][0]["content"]["actions"][0]["url"],
            "https://buildkite.com/x"
        );
    }

    #[test]
    fn teams_body_made_of_many_short_texts_is_reported() {
        let facts: Vec<_> = (0..2_000)
            .map(|_| json!({"title": "t", "value": "v".repeat(20)}))
            .collect();
        let mut body = json!({"facts": facts});
        assert!(enforce_teams(&mut body).is_err());
    }
}
