//! Hot reload: the config file and templates are read again, validated as `check` does, and
//! swapped in at once. A bad config is refused with its problems logged, and the old one keeps
//! running. Requests in flight finish on the config they started with; queued deliveries stay
//! in the store and are picked up by the new workers.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::routing::Router;
use crate::validate::validate;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;

/// The parts of the service a reload replaces.
#[derive(Debug)]
pub struct Live {
    /// The config in force.
    pub config: Arc<Config>,
    /// Its compiled routes.
    pub router: Arc<Router>,
}

impl Live {
    /// The live parts of `config`.
    pub fn new(config: Config) -> Self {
        Self {
            router: Arc::new(Router::new(config.routes.clone())),
            config: Arc::new(config),
        }
    }
}

/// Reloads the config from its file.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    live: Arc<ArcSwap<Live>>,
    queue: Queue,
    metrics: Arc<Metrics>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// Settings that take effect only at a restart: each one that changed keeps its running value
/// in `new` (so what runs matches what the warning says), and is named in the result.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if old.$($field).+ != new.$($field).+ {
                new.$($field).+ = old.$($field).+.clone();
                kept.push($name);
            }
        };
    }
    keep!("server.listen", server.listen);
    keep!("server.path", server.path);
    keep!("server.read_timeout", server.read_timeout);
    keep!(
        "server.max_concurrent_requests",
        server.max_concurrent_requests
    );
    keep!("server.tls", server.tls);
    keep!("storage", storage);
    keep!("buildkite.allowed_ips \"buildkite\"", allow_buildkite_ips);
    keep!("buildkite.meta_url", meta_url);
    // The interactions path is routed at start; the handler reads everything else live.
    let path = |c: &Config| {
        c.actions
            .as_ref()
            .and_then(|a| a.slack.as_ref())
            .map(|s| s.path.clone())
    };
    if path(old) != path(new) {
        kept.push("actions.slack.path");
    }
    kept
}

impl Reloader {
    /// A reloader for the service whose live parts are `live`.
    pub fn new(
        path: PathBuf,
        live: Arc<ArcSwap<Live>>,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            path,
            live,
            queue,
            metrics,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads, validates and applies the config file; the problems when it is refused.
    pub async fn reload(&self) -> Result<String, Vec<String>> {
        let _one = self.one_at_a_time.lock().await;
        let path = self.path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(|e| e.problems)?;
            let validated = validate(&config)?;
            Ok::<_, Vec<String>>((config, validated))
        })
        .await
        .unwrap_or_else(|e| Err(vec![format!("reload failed: {e}")]));
        let (mut config, validated) = match checked {
            Ok(ok) => ok,
            Err(problems) => {
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                for p in &problems {
                    tracing::error!(problem = %p, "config reload refused; the running config stays");
                }
                return Err(problems);
            }
        };
        for w in &config.warnings {
            tracing::warn!(warning = %w, "config reloaded with a warning");
        }
        let old = self.live.load_full();
        for setting in keep_restart_only(&old.config, &mut config) {
            tracing::warn!(setting, "changed, but takes effect only at the next start");
        }
        // Workers first, so routes to a new destination find it ready.
        self.queue
            .reload(
                validated.renderer,
                &config.destinations,
                config.queue.clone(),
            )
            .await;
        self.live.store(Arc::new(Live::new(config)));
        self.metrics.reloads.with_label_values(&["applied"]).inc();
        tracing::info!(summary = %validated.summary, "config reloaded");
        Ok(validated.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra_server: &str, allowed_ips: &str) -> Config {
        let text = format!(
            "[server]\n{extra_server}\n[buildkite]\ntoken = \"t\"\nallowed_ips = {allowed_ips}\n\
             [destinations.c]\nkind = \"console\"\n[[routes]]\nname = \"all\"\nto = [\"c\"]\n"
        );
        Config::parse(Path::new("k.toml"), &text, |_| None).unwrap()
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let old = parse("listen = \"127.0.0.1:9000\"", "[]");
        let mut new = parse(
            "listen = \"127.0.0.1:9001\"\nmax_body_bytes = 2048",
            "[\"buildkite\"]",
        );
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(
            kept,
            ["server.listen", "buildkite.allowed_ips \"buildkite\""]
        );
        assert_eq!(new.server.listen, old.server.listen);
        assert!(
            !new.allow_buildkite_ips,
            "no address list is being fetched, so it must not be required"
        );
        assert_eq!(new.server.max_body_bytes, 2048, "live settings change");
    }
}
