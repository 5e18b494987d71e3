//! Start-up and shutdown: builds the runtime from a validated config, serves HTTP until the
//! shutdown signal, then waits (up to a deadline) for messages still being sent.

use crate::config::Config;
use crate::deliver;
use crate::dispatch::Dispatcher;
use crate::ingress::{self, AppState};
use crate::render::Renderer;
use crate::routing::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

/// How long shutdown waits for in-flight sends.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the service could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Templates did not compile, or routes name templates that do not exist.
    #[error("{}", .0.join("\n"))]
    Templates(Vec<String>),
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

/// The assembled service.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

impl Service {
    /// Compiles templates, builds destinations and routes.
    pub fn build(config: Config) -> Result<Self, ServeError> {
        let renderer =
            Renderer::new(config.templates_dir.as_deref()).map_err(ServeError::Templates)?;
        let problems = check_route_templates(&config, &renderer);
        if !problems.is_empty() {
            return Err(ServeError::Templates(problems));
        }
        let client = deliver::client();
        let mut destinations = Vec::new();
        for d in &config.destinations {
            match deliver::build(d, &client) {
                Some(dest) => destinations.push(dest),
                None => {
                    tracing::warn!(destination = %d.name, kind = %d.kind, "destination disabled: its url is empty")
                }
            }
        }
        let dispatcher = Dispatcher::new(Arc::new(renderer), destinations);
        let router = Arc::new(Router::new(config.routes.clone()));
        Ok(Self {
            state: AppState {
                config: Arc::new(config),
                router,
                dispatcher,
            },
        })
    }

    /// The HTTP routes, for tests that drive the service without a socket.
    pub fn router(&self) -> axum::Router {
        ingress::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight sends.
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
            "listening"
        );
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        tracing::info!("shutting down: waiting for messages in flight");
        if !self.state.dispatcher.drain(DRAIN_DEADLINE).await {
            tracing::warn!(deadline = ?DRAIN_DEADLINE, "gave up waiting for messages in flight");
        }
        Ok(())
    }
}

/// Builds the service from `config` and serves on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Service::build(config)?.serve(listener, shutdown).await
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
