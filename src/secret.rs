//! Values that must never be shown: webhook tokens and destination URLs.
//!
//! A [`Secret`] prints as `[redacted]` through both `Debug` and `Display`, so it can sit in any
//! struct that gets logged or formatted into an error without leaking. The only way to the
//! value is [`Secret::expose`], which is easy to grep for.

use std::fmt;
use std::sync::RwLock;

/// Every secret value this process has seen, so a panic message can be scrubbed of them.
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Replaces every known secret in `text` with `[redacted]`.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    known.iter().fold(text.to_string(), |acc, s| {
        acc.replace(s.as_str(), "[redacted]")
    })
}

/// Remembers `value` for [`scrub`], for a secret that is not kept as a [`Secret`] (one the
/// database driver holds, say). Very short values would scrub ordinary words and are left.
pub fn remember(value: &str) {
    if value.len() >= 6 {
        let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|k| k == value) {
            known.push(value.to_string());
        }
    }
}

/// Prints panics (a bug, never expected) with every known secret scrubbed from the message.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("kitebridge panicked{at}: {}", scrub(&payload));
    }));
}

/// A string that prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value, and remembers it for [`scrub`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Self(value)
    }

    /// The value itself; call only where it is sent, never where it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn known_secrets_are_scrubbed_from_any_text() {
        let _ = Secret::new("https://hooks.example/very-secret-path");
        assert_eq!(
            scrub("failed for https://hooks.example/very-secret-path!"),
            "failed for [redacted]!"
        );
    }
}
