//! Start-up and shutdown: opens the store, starts the delivery workers, serves HTTP until the
//! shutdown signal, then lets attempts in flight finish (up to a deadline) and leaves the rest
//! queued for the next start.

use crate::config::Config;
use crate::deliver;
use crate::ingress::{self, AppState};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::render::Renderer;
use crate::routing::Router;
use crate::store::{SqliteStore, Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;

/// Why the service could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Templates did not compile, or routes name templates that do not exist.
    #[error("{}", .0.join("\n"))]
    Templates(Vec<String>),
    /// The store could not be opened.
    #[error("{path}: {source}")]
    Store {
        /// The database file.
        path: String,
        /// What went wrong.
        source: StoreError,
    },
    /// The listener failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that every route's explicit template exists for the kind of each of its
/// destinations; one line per problem.
pub fn check_route_templates(config: &Config, renderer: &Renderer) -> Vec<String> {
    let mut problems = Vec::new();
    for route in &config.routes {
        let Some(template) = &route.template else {
            continue;
        };
        for dest in route.to.iter().filter_map(|d| config.destination(d)) {
            let kind = dest.kind.template_kind();
            if !renderer.has(kind, template) || template.starts_with('_') {
                problems.push(format!(
                    "{}: route {:?}: no {kind} template named {template:?} (for destination {:?})",
                    config.path.display(),
                    route.name,
                    dest.name
                ));
            }
        }
    }
    problems
}

/// The assembled, running service.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

impl Service {
    /// Opens the configured store and starts the service's workers.
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let path = config.storage_path.clone();
        let durability = config.durability;
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, durability))
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
            .map_err(|source| ServeError::Store {
                path: config.storage_path.display().to_string(),
                source,
            })?;
        Self::start_with_store(config, Arc::new(store)).await
    }

    /// Starts the service on a given store.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServeError> {
        let renderer = Renderer::new(config.templates_dir.as_deref(), config.people.clone())
            .map_err(ServeError::Templates)?;
        let problems = check_route_templates(&config, &renderer);
        if !problems.is_empty() {
            return Err(ServeError::Templates(problems));
        }
        let client = deliver::client();
        let mut destinations = Vec::new();
        for d in &config.destinations {
            match deliver::build(d, &client, store.clone()) {
                Some(dest) => destinations.push((dest, d.limits)),
                None => {
                    tracing::warn!(destination = %d.name, kind = %d.kind, "destination disabled: its url is empty")
                }
            }
        }
        let metrics = Arc::new(Metrics::new());
        let queue = Queue::start(
            store,
            Arc::new(renderer),
            destinations,
            config.queue.clone(),
            metrics.clone(),
        );
        let router = Arc::new(Router::new(config.routes.clone()));
        Ok(Self {
            state: AppState {
                config: Arc::new(config),
                router,
                queue,
                metrics,
            },
        })
    }

    /// The HTTP routes, for tests that drive the service without a socket.
    pub fn router(&self) -> axum::Router {
        ingress::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; then stops the workers, waiting up to
    /// the configured deadline for attempts in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            path = %self.state.config.server.path,
            routes = self.state.router.routes().len(),
            store = %self.state.config.storage_path.display(),
            "listening"
        );
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        });
        // Connections still open this long after the signal (a client holding one idle, say)
        // do not keep the process alive.
        let deadline = self.state.config.shutdown_deadline;
        let cut_off = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(deadline).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = serving => served?,
            () = cut_off => tracing::warn!(?deadline, "closing connections still open at the shutdown deadline"),
        }
        self.stop().await;
        Ok(())
    }

    /// Stops the workers: attempts in flight get the configured deadline, the rest stay queued.
    pub async fn stop(&self) {
        let deadline = self.state.config.shutdown_deadline;
        tracing::info!(?deadline, "shutting down: finishing attempts in flight");
        if !self.state.queue.shutdown(deadline).await {
            tracing::warn!(
                ?deadline,
                "attempts still in flight at the deadline stay queued for the next start"
            );
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
