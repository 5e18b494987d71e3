//! Buildkite's regex dialect, applied before a pattern reaches Rust's `regex` crate.
//!
//! Buildkite's server validates a conditional's regex before compiling it (buildkite/conditional
//! mirrors the rules in `internal/regex/regex.go`): it refuses lookbehind, atomic groups, named
//! groups, conditionals and possessive quantifiers, skips `(?#…)` comments, and leaves bracket
//! classes (with POSIX `[[:digit:]]` sets) alone. [`translate`] applies the same rules, strips
//! the comments (Rust's `regex` has none), and refuses with a "known difference" message what
//! Buildkite accepts but a linear-time engine cannot run: lookahead and backreferences.

use std::borrow::Cow;

/// Why a pattern is refused, and where: `offset` counts characters from the pattern's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialectError {
    pub offset: usize,
    pub message: String,
}

fn refused(offset: usize, feature: &str, text: &str) -> DialectError {
    DialectError {
        offset,
        message: format!("{feature} `{text}` is not supported in Buildkite's regex dialect"),
    }
}

fn difference(offset: usize, feature: &str, text: &str) -> DialectError {
    DialectError {
        offset,
        message: format!(
            "{feature} `{text}` is accepted by Buildkite but not by kitebridge's linear-time regex engine (a known difference)"
        ),
    }
}

/// The pattern Rust's `regex` should compile: `pattern` without its `(?#…)` comments, or why
/// Buildkite (or kitebridge) refuses it.
pub(crate) fn translate(pattern: &str) -> Result<Cow<'_, str>, DialectError> {
    let p: Vec<char> = pattern.chars().collect();
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| p.get(i + k) == Some(&c));
    // Character ranges of the comments to drop.
    let mut comments: Vec<(usize, usize)> = Vec::new();
    let (mut in_class, mut class_first) = (false, false);
    let mut i = 0;
    while i < p.len() {
        let ch = p[i];
        if ch == '\\' {
            if !in_class {
                match p.get(i + 1) {
                    Some(d @ '1'..='9') => {
                        return Err(difference(i, "backreference", &format!("\\{d}")));
                    }
                    Some('k') if matches!(p.get(i + 2), Some('<' | '\'' | '{')) => {
                        return Err(difference(i, "named backreference", "\\k"));
                    }
                    _ => {}
                }
            }
            class_first = false;
            i += 2;
            continue;
        }
        if in_class {
            if ch == '[' && matches!(p.get(i + 1), Some(':' | '.' | '=')) {
                // A POSIX set such as `[:digit:]` ends at its marker and `]`.
                let marker = p[i + 1];
                if let Some(end) =
                    (i + 2..p.len().saturating_sub(1)).find(|&j| p[j] == marker && p[j + 1] == ']')
                {
                    i = end + 2;
                    class_first = false;
                    continue;
                }
                i += 1;
                continue;
            }
            if ch == ']' && !class_first {
                in_class = false;
            }
            class_first = false;
            i += 1;
            continue;
        }
        if ch == '[' {
            (in_class, class_first) = (true, true);
            i += 1;
            continue;
        }
        if ch == '(' && p.get(i + 1) == Some(&'?') {
            if at(i, "(?#") {
                // Buildkite's comment ends at the first `)`, escaped or not.
                let Some(end) = (i + 3..p.len()).find(|&j| p[j] == ')') else {
                    return Err(DialectError {
                        offset: i,
                        message: "comment `(?#` is not closed by `)`".into(),
                    });
                };
                comments.push((i, end + 1));
                i = end + 1;
                continue;
            }
            let found = [
                ("(?<=", "lookbehind", false),
                ("(?<!", "negative lookbehind", false),
                ("(?>", "atomic group", false),
                ("(?<", "named group", false),
                ("(?P<", "named group", false),
                ("(?'", "named group", false),
                ("(?(", "conditional", false),
                ("(?=", "lookahead", true),
                ("(?!", "negative lookahead", true),
            ]
            .into_iter()
            .find(|(text, _, _)| at(i, text));
            if let Some((text, feature, known)) = found {
                return Err(if known {
                    difference(i, feature, text)
                } else {
                    refused(i, feature, text)
                });
            }
        }
        if p.get(i + 1) == Some(&'+') {
            let possessive = match ch {
                '?' | '*' | '+' => Some(format!("{ch}+")),
                '}' => bounded_quantifier(&p, i).map(|open| {
                    let text: String = p[open..=i + 1].iter().collect();
                    text
                }),
                _ => None,
            };
            if let Some(text) = possessive {
                return Err(refused(i, "possessive quantifier", &text));
            }
        }
        i += 1;
    }
    if comments.is_empty() {
        return Ok(Cow::Borrowed(pattern));
    }
    let kept = p
        .iter()
        .enumerate()
        .filter(|(j, _)| !comments.iter().any(|(s, e)| (*s..*e).contains(j)))
        .map(|(_, c)| c)
        .collect();
    Ok(Cow::Owned(kept))
}

/// Where the `{` of a bounded quantifier `{n}`, `{n,}` or `{n,m}` ending at `close` is, if the
/// braces are one.
fn bounded_quantifier(p: &[char], close: usize) -> Option<usize> {
    let open = (0..close).rev().find(|&j| p[j] == '{')?;
    let backslashes = p[..open].iter().rev().take_while(|c| **c == '\\').count();
    if backslashes % 2 == 1 {
        return None;
    }
    let bounds: String = p[open + 1..close].iter().collect();
    let (min, max) = bounds.split_once(',').unwrap_or((&bounds, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    (!min.is_empty() && digits(min) && digits(max)).then_some(open)
}

#[cfg(test)]
mod tests {
    use super::translate;

    /// Each `(pattern, offset, feature)` is refused at `offset`, naming `feature`, saying `why`.
    fn assert_refused(cases: &[(&str, usize, &str)], why: &str) {
        for &(pattern, offset, feature) in cases {
            let err = translate(pattern).expect_err(pattern);
            assert_eq!(err.offset, offset, "{pattern}");
            assert!(
                err.message.starts_with(feature),
                "{pattern}: {}",
                err.message
            );
            assert!(err.message.contains(why), "{pattern}: {}", err.message);
        }
    }

    #[test]
    fn refuses_what_buildkite_refuses() {
        // From buildkite/conditional internal/regex/regex_test.go and regex_test.go, with the
        // offset of the feature (ours).
        let cases = [
            ("(?<=a)b", 0, "lookbehind"),
            ("(?<!a)b", 0, "negative lookbehind"),
            ("(?>a*)a", 0, "atomic group"),
            ("a?+", 1, "possessive quantifier `?+`"),
            ("a*+", 1, "possessive quantifier `*+`"),
            ("a++", 1, "possessive quantifier `++`"),
            ("a{1,3}+", 5, "possessive quantifier `{1,3}+`"),
            ("a{3}+", 3, "possessive quantifier `{3}+`"),
            ("a{2,}+", 4, "possessive quantifier `{2,}+`"),
            ("(?<name>group)", 0, "named group `(?<`"),
            ("(?P<name>group)", 0, "named group `(?P<`"),
            ("(?'name'group)", 0, "named group `(?'`"),
            ("(?(1)a|b)", 0, "conditional"),
            // The comment ends at the first `)`, even an escaped one.
            (r"a(?#\)(?<name>b)", 6, "named group"),
        ];
        assert_refused(&cases, "Buildkite's regex dialect");
    }

    #[test]
    fn keeps_escaped_and_class_text_literal() {
        // From buildkite/conditional regex_test.go.
        for pattern in [
            r"\(\?<=a\)",
            r"\{1,3\}\+",
            "}+",
            "[(?<=]",
            "[[:digit:](?<=]",
            "[](?<=]",
            r"[\]?+]",
            "^v[[:digit:]]+$",
            r"\[skip tests\]",
            "a{,3}+",
        ] {
            assert_eq!(translate(pattern).as_deref(), Ok(pattern), "{pattern}");
        }
    }

    #[test]
    fn strips_comments() {
        // From buildkite/conditional regex_test.go: comment contents are not validated.
        assert_eq!(translate("a(?# (?<= literal )b").as_deref(), Ok("ab"));
        assert_eq!(translate("(?#x)é(?#y)").as_deref(), Ok("é"));
        assert_eq!(translate("[(?#x)]").as_deref(), Ok("[(?#x)]"));
        assert!(translate("a(?# open").is_err());
    }

    #[test]
    fn refuses_known_differences() {
        let cases = [
            ("a(?=b)", 1, "lookahead"),
            ("a(?!b)", 1, "negative lookahead"),
            (r"(a)\1", 3, "backreference `\\1`"),
            (r"(a)\k<x>", 3, "named backreference"),
        ];
        assert_refused(&cases, "known difference");
        // Inside a class or escaped, they are plain characters.
        assert!(translate(r"[\1]").is_ok());
        assert!(translate(r"\\1").is_ok());
        assert!(translate(r"\(?=").is_ok());
    }
}
