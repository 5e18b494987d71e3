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

/// Settings that take effect only at a restart.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.server.path != new.server.path {
        changed.push("server.path");
    }
    if old.server.read_timeout != new.server.read_timeout {
        changed.push("server.read_timeout");
    }
    if old.server.max_concurrent_requests != new.server.max_concurrent_requests {
        changed.push("server.max_concurrent_requests");
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        changed.push("server.tls");
    }
    if old.storage_path != new.storage_path || old.durability != new.durability {
        changed.push("storage");
    }
    if old.allow_buildkite_ips != new.allow_buildkite_ips || old.meta_url != new.meta_url {
        changed.push("buildkite.allowed_ips \"buildkite\" / buildkite.meta_url");
    }
    changed
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
        let (config, validated) = match checked {
            Ok(ok) => ok,
            Err(problems) => {
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                for p in &problems {
                    tracing::error!(problem = %p, "config reload refused; the running config stays");
                }
                return Err(problems);
            }
        };
        let old = self.live.load_full();
        for setting in restart_only(&old.config, &config) {
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
