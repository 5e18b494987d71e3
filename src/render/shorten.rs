//! Shortening text to a number of characters, for helpers and for the destinations' limits.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
