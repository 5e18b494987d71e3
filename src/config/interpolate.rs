//! `${VAR}` and `${VAR:-default}` environment interpolation of config string values.
//!
//! Interpolation runs on each string value after TOML parsing, not on the file text, so a
//! value containing quotes cannot break the TOML and a parse error never quotes a secret.

use thiserror::Error;

/// Why a value could not be interpolated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InterpolateError {
    /// `${VAR}` without a default, and `VAR` is not set.
    #[error("environment variable {0} is not set (use ${{{0}:-default}} to make it optional)")]
    Unset(String),
    /// `${` without its closing `}`.
    #[error("unterminated ${{ in value")]
    Unterminated,
    /// The name inside `${…}` is not a valid variable name.
    #[error("invalid environment variable name {0:?}")]
    BadName(String),
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) in `input`.
///
/// `lookup` returns a variable's value; `${VAR:-default}` uses the default when the variable is
/// unset or empty, as the shell does. A `$` not followed by `{` or `$` stays as it is.
pub fn expand(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or(InterpolateError::Unterminated)?;
            let expr = &inner[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if !is_var_name(name) {
                return Err(InterpolateError::BadName(name.to_string()));
            }
            match (lookup(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(InterpolateError::Unset(name.to_string())),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaulted_variables() {
        let cases = [
            ("plain", Ok("plain")),
            ("${TOKEN}", Ok("s3cr3t")),
            ("a-${TOKEN}-b", Ok("a-s3cr3t-b")),
            ("${MISSING:-fallback}", Ok("fallback")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("${EMPTY}", Ok("")),
            ("${MISSING:-}", Ok("")),
            ("${TOKEN:-x}", Ok("s3cr3t")),
            (
                "cost $5 and $$ and $${TOKEN}",
                Ok("cost $5 and $ and ${TOKEN}"),
            ),
            ("trailing $", Ok("trailing $")),
            ("${MISSING:-a:-b}", Ok("a:-b")),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand(input, env).as_deref(),
                want.map_err(|e: InterpolateError| e).as_deref(),
                "{input}"
            );
        }
    }

    #[test]
    fn reports_unset_unterminated_and_bad_names() {
        assert_eq!(
            expand("${MISSING}", env),
            Err(InterpolateError::Unset("MISSING".into()))
        );
        assert_eq!(expand("${TOKEN", env), Err(InterpolateError::Unterminated));
        assert_eq!(
            expand("${1X}", env),
            Err(InterpolateError::BadName("1X".into()))
        );
        assert_eq!(
            expand("${}", env),
            Err(InterpolateError::BadName("".into()))
        );
    }

    #[test]
    fn unset_message_never_contains_a_value() {
        let msg = expand("${MISSING}", env).unwrap_err().to_string();
        assert!(msg.contains("MISSING") && !msg.contains("s3cr3t"));
    }
}
