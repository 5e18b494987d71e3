//! Escaping of payload text for each template kind.
//!
//! Every `{{value}}` in a Slack or Teams template lands inside a JSON string, so it is escaped
//! twice: first so chat markup cannot come out of it (no mention, channel ping or link), then
//! as JSON string content so the body stays valid JSON whatever the payload holds. A webhook
//! template's values are read by programs: they are only JSON string content.

use super::TemplateKind;

/// Makes payload text inert in `kind`'s markup (mentions, links, terminal controls).
pub fn markup(kind: TemplateKind, s: &str) -> String {
    match kind {
        TemplateKind::Slack => slack_text(s),
        TemplateKind::Teams => teams_text(s),
        TemplateKind::Console => console_text(s),
        // Programs read it: nothing to make inert.
        TemplateKind::Webhook => s.to_string(),
    }
}

/// What a `{{value}}` in a `kind` template becomes: inert markup, and for Slack and Teams
/// (whose templates are JSON) also JSON string content.
pub fn template_value(kind: TemplateKind, s: &str) -> String {
    match kind {
        TemplateKind::Console => markup(kind, s),
        TemplateKind::Slack | TemplateKind::Teams | TemplateKind::Webhook => {
            json_content(&markup(kind, s))
        }
    }
}

/// Escapes `s` as the content of a JSON string (without the surrounding quotes).
pub fn json_content(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a str always serialises");
    quoted[1..quoted.len() - 1].to_string()
}

/// Makes payload text inert in Slack `mrkdwn`: `&`, `<` and `>` become entities (so `<!here>`,
/// `<@U123>` and `<https://x|y>` cannot form), and `@channel`, `@here` and `@everyone` get an
/// invisible word joiner after the `@` so no client turns them into a ping.
pub fn slack_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => {
                out.push('@');
                let after = &rest[1..];
                if ["channel", "here", "everyone"]
                    .iter()
                    .any(|w| starts_with_ignore_case(after, w))
                {
                    out.push('\u{2060}');
                }
            }
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Makes payload text inert in a Teams Adaptive Card: a word joiner breaks Markdown link syntax
/// (`](`) and `<at>` mention tags, which Teams would otherwise turn into links and mentions.
pub fn teams_text(s: &str) -> String {
    if !s.contains("](") && !s.contains('<') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        out.push(c);
        let after = &rest[c.len_utf8()..];
        if (c == ']' && after.starts_with('('))
            || (c == '<'
                && (starts_with_ignore_case(after, "at") || starts_with_ignore_case(after, "/at")))
        {
            out.push('\u{2060}');
        }
        rest = after;
    }
    out
}

/// Console text: drops control characters other than newline and tab, so a payload cannot move
/// the cursor, recolour or clear an operator's terminal.
pub fn console_text(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_keeps_any_text_valid_inside_quotes() {
        for s in [
            "plain",
            "quote \" and \\ back",
            "new\nline\ttab\r",
            "\u{0}\u{1f}",
            "emoji 🚀 é",
        ] {
            let json = format!("\"{}\"", json_content(s));
            assert_eq!(serde_json::from_str::<String>(&json).unwrap(), s);
        }
    }

    #[test]
    fn slack_text_defuses_mentions_and_links() {
        assert_eq!(
            slack_text("a & b <!channel> <@U123>"),
            "a &amp; b &lt;!channel&gt; &lt;@U123&gt;"
        );
        assert_eq!(
            slack_text("<https://evil|click>"),
            "&lt;https://evil|click&gt;"
        );
        assert_eq!(
            slack_text("ping @here and @Channel"),
            "ping @\u{2060}here and @\u{2060}Channel"
        );
        assert_eq!(slack_text("mail me@example.com"), "mail me@example.com");
        assert_eq!(slack_text("héllo 🚀"), "héllo 🚀");
    }

    #[test]
    fn console_text_drops_terminal_escapes() {
        assert_eq!(
            console_text("red \u{1b}[31mX\u{1b}[0m\r\nline\ttab\u{7}"),
            "red [31mX[0m\nline\ttab"
        );
    }

    #[test]
    fn teams_text_breaks_markdown_links_and_at_tags() {
        assert_eq!(teams_text("[x](https://evil)"), "[x]\u{2060}(https://evil)");
        assert_eq!(teams_text("<at>Boss</at>"), "<\u{2060}at>Boss<\u{2060}/at>");
        assert_eq!(teams_text("<AT>Boss</At>"), "<\u{2060}AT>Boss<\u{2060}/At>");
        assert_eq!(teams_text("a < b [c] (d)"), "a < b [c] (d)");
    }
}
