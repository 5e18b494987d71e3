//! Start-up and shutdown: opens the store, checks the config as `check` does, starts the
//! delivery workers, serves HTTP (or HTTPS) until the shutdown signal, reloads on SIGHUP, then
//! lets attempts in flight finish (up to a deadline) and leaves the rest queued.

mod http;
mod meta;

use crate::config::Config;
use crate::destination;
use crate::ingress::{self, AppState};
use crate::metrics::Metrics;
use crate::press::{self, PressDesk};
use crate::queue::Queue;
use crate::reload::{Live, Reloader};
use crate::store::{Schema, Store, StoreError};
use crate::validate::validate;
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the service could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Templates did not compile, or routes name templates that do not exist, or a template
    /// fails on a sample event.
    #[error("{}", .0.join("\n"))]
    Templates(Vec<String>),
    /// The store could not be opened.
    #[error("{path}: {source}")]
    Store {
        /// The database file or URL (without its password).
        path: String,
        /// What went wrong.
        source: StoreError,
    },
    /// The listener (or the TLS files) failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// The assembled, running service.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
    stop_tasks: CancellationToken,
}

impl Service {
    /// Opens the configured store (creating or migrating its schema) and starts the
    /// service's workers.
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let store = config
            .storage
            .open(Schema::Migrate)
            .await
            .map_err(|source| ServeError::Store {
                path: config.storage.shown(),
                source,
            })?;
        Self::start_with_store(config, store).await
    }

    /// Starts the service on a given store.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServeError> {
        let validated = validate(&config).map_err(ServeError::Templates)?;
        for d in &config.destinations {
            if let Some(reason) = d.disabled_reason() {
                tracing::warn!(destination = %d.name, kind = %d.kind, reason, "destination disabled");
            }
        }
        let metrics = Arc::new(Metrics::new());
        let queue = Queue::start(
            store,
            validated.renderer,
            &config.destinations,
            config.queue.clone(),
            metrics.clone(),
        )
        .await;
        let stop_tasks = CancellationToken::new();
        let buildkite_ips = Arc::new(ArcSwap::from_pointee(Vec::new()));
        if config.allow_buildkite_ips {
            tokio::spawn(meta::keep_fresh(
                destination::client(),
                config.meta_url.clone(),
                buildkite_ips.clone(),
                stop_tasks.clone(),
            ));
        }
        let path = config.path.clone();
        let live = Arc::new(ArcSwap::from_pointee(Live::new(config)));
        let reloader = Arc::new(Reloader::new(
            path,
            live.clone(),
            queue.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            state: AppState {
                live,
                queue,
                metrics,
                reloader,
                buildkite_ips,
                draining: Default::default(),
            },
            stop_tasks,
        })
    }

    /// Serves on `listener` (with TLS when configured) until `shutdown` resolves; then answers
    /// `/readyz` with 503 for `[server] drain` while still serving, so a load balancer moves
    /// traffic away first; then stops taking connections, gives open ones and attempts in
    /// flight the configured deadline, and leaves everything else queued.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let config = self.state.live.load().config.clone();
        let addr = listener.local_addr()?;
        let tls = match &config.server.tls {
            Some(tls) => Some(http::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let (live, draining) = (self.state.live.clone(), self.state.draining.clone());
        let stop = async move {
            shutdown.await;
            // Read now: a reload may have changed them since the start.
            let config = live.load().config.clone();
            let drain = config.server.drain;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            if !drain.is_zero() {
                tracing::info!(
                    ?drain,
                    "draining: /readyz answers 503 while requests are still served"
                );
                tokio::time::sleep(drain).await;
            }
            config.shutdown_deadline
        };
        // The handler is in place before "listening" is logged: a SIGHUP sent as soon as the
        // service says it is up must reload it, not end it (the default action).
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(reload_on_sighup(
                    hup,
                    self.state.reloader.clone(),
                    self.stop_tasks.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload")
            }
        }
        crate::memory::release_after_start_up();
        tracing::info!(
            %addr,
            tls = config.server.tls.is_some(),
            path = %config.server.path,
            routes = config.routes.len(),
            store = %config.storage.shown(),
            replica = self.state.queue.store().replica(),
            "listening"
        );
        let serving = http::Serving {
            read_timeout: config.server.read_timeout,
            tls,
        };
        let desk = Arc::new(PressDesk::new(
            self.state.live.clone(),
            self.state.queue.store().clone(),
            self.state.metrics.clone(),
        ));
        let app = ingress::router(self.state.clone()).merge(press::router(desk));
        http::serve(listener, app, serving, stop).await;
        self.stop().await;
        Ok(())
    }

    /// Stops the workers: attempts in flight get the configured deadline, the rest stay queued.
    pub async fn stop(&self) {
        self.stop_tasks.cancel();
        let deadline = self.state.live.load().config.shutdown_deadline;
        tracing::info!(?deadline, "shutting down: finishing attempts in flight");
        if !self.state.queue.shutdown(deadline).await {
            tracing::warn!(
                ?deadline,
                "attempts still in flight at the deadline stay queued for the next start"
            );
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            Some(()) = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reloader.reload().await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Opens the store, starts the service and serves on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Service::start(config)
        .await?
        .serve(listener, shutdown)
        .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
