//! Validation of `[storage]`'s choice of store: the embedded SQLite file (`path`, the
//! default) or a PostgreSQL database that replicas share (`url`).

use super::check::Check;
use super::raw::{RawStorage, Text};
use crate::store::StoreConfig;
use crate::store::postgres::{PgOptions, is_postgres_url};
use crate::store::sqlite::Durability;
use std::path::Path;
use std::time::Duration;

/// The longest lease: a replica that dies must be replaced within 30 s, and a takeover takes
/// the lease plus a quarter of it at most.
const MAX_LEASE: Duration = Duration::from_secs(20);

impl Check<'_> {
    pub(super) fn storage(&mut self, s: &RawStorage, base: &Path) -> StoreConfig {
        let url = s
            .url
            .as_ref()
            .and_then(|t| self.text(t, "storage.url").map(|v| (t, v)))
            .filter(|(_, v)| !v.trim().is_empty());
        let Some((url_text, url)) = url else {
            // A url that is written but empty (`"${DATABASE_URL:-}"` with the variable unset)
            // means the embedded store, and its shared-store settings wait unused.
            if s.url.is_none() {
                let spans = [
                    ("lease", s.lease.as_ref().map(|t| t.span())),
                    (
                        "max_connections",
                        s.max_connections.as_ref().map(|n| n.span()),
                    ),
                ];
                for (key, span) in spans {
                    if let Some(span) = span {
                        self.problem(
                            Some(span),
                            format!("storage.{key} applies to a shared store (storage.url) only"),
                        );
                    }
                }
            }
            let path = s
                .path
                .as_ref()
                .and_then(|p| self.text(p, "storage.path"))
                .unwrap_or_else(|| "kitebridge.db".into());
            return StoreConfig::Sqlite {
                path: base.join(path),
                durability: self.durability(s.durability.as_ref()),
            };
        };
        if let Some(p) = &s.path {
            self.problem(
                Some(p.span()),
                "storage.path and storage.url are both set: use path for the embedded store, or url for a shared PostgreSQL one",
            );
        }
        if let Some(d) = &s.durability {
            self.problem(
                Some(d.span()),
                "storage.durability applies to the embedded store only (PostgreSQL's synchronous_commit decides for a url)",
            );
        }
        // The URL holds a password: it is never quoted, only named by its line.
        crate::secret::remember(&url);
        if !is_postgres_url(&url) {
            self.problem(
                Some(url_text.span()),
                "storage.url: not a postgres:// or postgresql:// URL",
            );
            return StoreConfig::Sqlite {
                path: base.join("kitebridge.db"),
                durability: Durability::Full,
            };
        }
        let mut options = match PgOptions::parse(&url, base) {
            Ok(o) => o,
            Err(e) => {
                self.problem(Some(url_text.span()), format!("storage.url: {e}"));
                return StoreConfig::Sqlite {
                    path: base.join("kitebridge.db"),
                    durability: Durability::Full,
                };
            }
        };
        if let Some(password) = options.password() {
            // So that no driver error or panic message can carry it.
            crate::secret::remember(&password);
        }
        if let Some(t) = &s.lease {
            options.lease = self.lease(t).unwrap_or(options.lease);
        }
        if let Some(n) = &s.max_connections {
            match usize::try_from(*n.get_ref()) {
                Ok(v) if (2..=1000).contains(&v) => options.max_connections = v,
                _ => self.problem(
                    Some(n.span()),
                    "storage.max_connections must be between 2 and 1000",
                ),
            }
        }
        StoreConfig::Postgres(Box::new(options))
    }

    fn lease(&mut self, t: &Text) -> Option<Duration> {
        let d = self.duration_of(t, "storage.lease", false)?;
        if d < Duration::from_secs(1) || d > MAX_LEASE {
            self.problem(
                Some(t.span()),
                format!(
                    "storage.lease: {} must be between 1s and {}s, so a replica that dies is replaced within 30s",
                    humantime::format_duration(d),
                    MAX_LEASE.as_secs()
                ),
            );
            return None;
        }
        Some(d)
    }

    fn durability(&mut self, t: Option<&Text>) -> Durability {
        let Some(t) = t else { return Durability::Full };
        match self.text(t, "storage.durability").as_deref() {
            Some("full") | None => Durability::Full,
            Some("normal") => Durability::Normal,
            Some(other) => {
                let shown = Self::shown(t, other);
                self.problem(
                    Some(t.span()),
                    format!("storage.durability: {shown} is not \"full\" or \"normal\""),
                );
                Durability::Full
            }
        }
    }
}
