//! `kitebridge studio`: a local web app for writing templates, served by the binary itself.
//!
//! The page (compiled in from `assets/`, built from `studio/web/`) edits a template and shows,
//! as the user types, what each destination would receive, rendered by the same code `serve`
//! uses. The JSON API under `/api/` is the page's and scripts' (see README.md,
//! "Template studio"). The studio reads the config, the templates folder and, read-only, the
//! store; it writes only templates, into `[templates] dir`, and sends only when started with
//! `--allow-send`. Every request is checked by [`guard`].

mod api;
mod guard;
mod problems;
mod samples;

pub use guard::TOKEN_HEADER;

use crate::config::Config;
use crate::render::Renderer;
use crate::store::{Schema, Store};
use arc_swap::ArcSwap;
use samples::Sample;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where the studio listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8687";

/// How many stored events the sample picker offers.
const STORE_SAMPLES: usize = 50;

/// How the studio was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether "Send test" may post to destinations.
    pub allow_send: bool,
    /// More sample events: every `*.json` webhook body in this folder.
    pub samples: Option<PathBuf>,
}

/// What every request sees.
pub(crate) struct State {
    config: Config,
    /// The templates as saved (swapped after each save).
    renderer: ArcSwap<Renderer>,
    builtin_samples: Vec<Sample>,
    file_samples: Vec<Sample>,
    store: Option<Arc<dyn Store>>,
    /// Why the store could not be opened, if so.
    store_problem: Option<String>,
    token: String,
    hosts: Vec<String>,
    refused: guard::Refused,
    allow_send: bool,
    client: reqwest::Client,
}

/// The studio, listening.
pub struct Running {
    /// Its address.
    pub addr: SocketAddr,
    /// The token the page holds (for scripts that write).
    pub token: String,
    /// The server task.
    pub task: tokio::task::JoinHandle<()>,
}

/// A fresh token: 16 bytes from the operating system's generator, in hex (`fastrand` only if
/// `/dev/urandom` cannot be read; the token only keeps other web pages out).
fn new_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        for b in &mut bytes {
            *b = fastrand::u8(..);
        }
    }
    hex::encode(bytes)
}

/// Loads everything and starts listening. The error is one line for the terminal.
pub async fn start(options: Options) -> Result<Running, String> {
    let config = Config::load(&options.config).map_err(|e| e.to_string())?;
    let renderer = Renderer::new(config.templates_dir.as_deref(), config.people.clone())
        .map_err(|problems| problems.join("\n"))?;
    let (file_samples, skipped) = match &options.samples {
        Some(dir) => samples::from_dir(dir),
        None => (Vec::new(), Vec::new()),
    };
    for line in skipped {
        tracing::warn!(%line, "sample left out");
    }
    // Read-only: the studio never creates, migrates or writes the store (the database refuses
    // it); without one it still works.
    let (store, store_problem) = match config.storage.open(Schema::ReadOnly).await {
        Ok(store) => (Some(store), None),
        Err(e) => {
            let problem = format!("{}: {e}", config.storage.shown());
            tracing::warn!(problem = %problem, "no stored events to offer as samples");
            (None, Some(problem))
        }
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let token = new_token();
    let state = Arc::new(State {
        config,
        renderer: ArcSwap::from_pointee(renderer),
        builtin_samples: samples::builtin(),
        file_samples,
        store,
        store_problem,
        token: token.clone(),
        hosts: guard::hosts(addr),
        refused: guard::Refused::default(),
        allow_send: options.allow_send,
        client: crate::destination::client(),
    });
    let app = api::router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the studio stopped");
        }
    });
    Ok(Running { addr, token, task })
}

/// `kitebridge studio`: runs until Ctrl-C.
pub fn run(options: Options) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime starts");
    rt.block_on(async {
        match start(options.clone()).await {
            Ok(running) => {
                tracing::info!(addr = %running.addr, config = %options.config.display(), "studio listening");
                println!(
                    "kitebridge studio: http://{}/ (config {}; Ctrl-C stops it)",
                    running.addr,
                    options.config.display()
                );
                let _ = tokio::signal::ctrl_c().await;
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
