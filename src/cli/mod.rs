//! The command line: `serve`, `check`, `render`, `send-test`, `deliveries` and `store`.

mod check;
mod deliveries;
mod render;
mod send_test;
mod store_copy;

use crate::config::Config;
use crate::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// kitebridge: Buildkite webhooks to Slack, Microsoft Teams and signed JSON webhooks.
#[derive(Debug, Parser)]
#[command(name = "kitebridge", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "KITEBRIDGE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The config file argument every command takes.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(long, env = "KITEBRIDGE_CONFIG")]
    pub config: PathBuf,
}

/// `render`'s output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// Readable: one block per message.
    Text,
    /// A JSON array of {"route","destination","kind","body"}.
    Json,
}

/// `deliveries list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting for a first or next attempt.
    Pending,
    /// Sent.
    Sent,
    /// Dead letters.
    Dead,
}

/// `deliveries` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only deliveries in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one delivery: its rendered body and every attempt.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The delivery's id.
        id: i64,
    },
    /// Queue a dead (or pending) delivery, or every dead letter, to be sent again now.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The delivery's id.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<i64>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
    },
}

/// `actions` subcommands.
#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// List button presses, newest first: who pressed what, where, and what came of it.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy what an embedded SQLite store still needs into the shared store the config names.
    ///
    /// Pending deliveries, dead letters and open digests (with their events and attempts),
    /// branch history, Slack message ids and the duplicate keys inside `dedupe_window`, in one
    /// transaction. Stop the service using the SQLite file first.
    Copy {
        #[command(flatten)]
        config: ConfigArg,
        /// The old SQLite store.
        #[arg(long)]
        from: PathBuf,
        /// Copy even into a store that already holds events or deliveries.
        #[arg(long)]
        force: bool,
    },
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver and the delivery workers until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the config, compile every template and render each against built-in samples.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Dry run, no network: which routes match a payload and the exact bodies that would be sent.
    Render {
        #[command(flatten)]
        config: ConfigArg,
        /// A webhook body (JSON) to route and render.
        #[arg(long)]
        payload: PathBuf,
        /// The event name; defaults to the payload's `event` field.
        #[arg(long)]
        event: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: RenderFormat,
        /// Also say, for every route in order, whether it matched and why (or why not).
        #[arg(long)]
        explain: bool,
    },
    /// Post a test message to one destination and report the answer.
    SendTest {
        #[command(flatten)]
        config: ConfigArg,
        /// The destination's name.
        #[arg(long)]
        destination: String,
        /// Send this built-in sample event instead of a connection test (e.g. build.finished).
        #[arg(long)]
        sample: Option<String>,
    },
    /// Inspect and replay the delivery queue.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// The audit of button presses.
    Actions {
        #[command(subcommand)]
        command: ActionsCommand,
    },
    /// Move between stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Edit templates in the browser and watch them render, for real events.
    Studio {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to listen (keep it on the loopback interface).
        #[arg(long, default_value = crate::studio::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Let "Send test" post the rendering to a destination.
        #[arg(long)]
        allow_send: bool,
        /// More sample events: every JSON webhook body in this folder.
        #[arg(long)]
        samples: Option<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    crate::secret::install_panic_hook();
    match cli.command {
        Command::Serve { config } => serve(&config.config),
        Command::Check { config } => check::run(&config.config),
        Command::Render {
            config,
            payload,
            event,
            format,
            explain,
        } => render::run(&config.config, &payload, event.as_deref(), format, explain),
        Command::SendTest {
            config,
            destination,
            sample,
        } => send_test::run(&config.config, &destination, sample.as_deref()),
        Command::Deliveries { command } => run_deliveries(command),
        Command::Actions {
            command: ActionsCommand::List { config, limit },
        } => match load(&config.config) {
            Some(config) => deliveries::presses(&config, limit),
            None => ExitCode::FAILURE,
        },
        Command::Studio {
            config,
            listen,
            allow_send,
            samples,
        } => crate::studio::run(crate::studio::Options {
            config: config.config,
            listen,
            allow_send,
            samples,
        }),
        Command::Store {
            command:
                StoreCommand::Copy {
                    config,
                    from,
                    force,
                },
        } => match load(&config.config) {
            Some(config) => store_copy::run(&config, &from, force),
            None => ExitCode::FAILURE,
        },
    }
}

fn run_deliveries(command: DeliveriesCommand) -> ExitCode {
    use crate::store::{DeliveryState, RetrySelector};
    let path = match &command {
        DeliveriesCommand::List { config, .. }
        | DeliveriesCommand::Show { config, .. }
        | DeliveriesCommand::Retry { config, .. } => config.config.clone(),
    };
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    match command {
        DeliveriesCommand::List { state, limit, .. } => {
            let state = state.map(|s| match s {
                StateArg::Pending => DeliveryState::Pending,
                StateArg::Sent => DeliveryState::Sent,
                StateArg::Dead => DeliveryState::Dead,
            });
            deliveries::list(&config, state, limit)
        }
        DeliveriesCommand::Show { id, .. } => deliveries::show(&config, id),
        DeliveriesCommand::Retry { id, all_dead, .. } => {
            let selector = match (id, all_dead) {
                (Some(id), false) => RetrySelector::Id(id),
                _ => RetrySelector::AllDead,
            };
            deliveries::retry(&config, selector)
        }
    }
}

/// Loads the config (printing its warnings) or prints its problems.
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("{w}");
            }
            Some(config)
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            None
        }
    }
}

/// The config's templates, compiled; `None` after printing why they cannot be.
fn renderer(config: &Config) -> Option<crate::render::Renderer> {
    crate::render::Renderer::new(config.templates_dir.as_deref(), config.people.clone())
        .map_err(|problems| problems.iter().for_each(|p| eprintln!("{p}")))
        .ok()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn serve(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    // A socket systemd opened (socket activation), taken before any thread starts: while the
    // service restarts, connections wait in its queue instead of being refused.
    let inherited = match listenfd::ListenFd::from_env().take_tcp_listener(0) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "LISTEN_FDS: the first passed socket is not a TCP listener");
            return ExitCode::FAILURE;
        }
    };
    runtime().block_on(async move {
        let listener = match inherited {
            Some(socket) => {
                tracing::info!("listening on the socket systemd passed (LISTEN_FDS); [server] listen is not used");
                socket
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(socket))
            }
            None => tokio::net::TcpListener::bind(config.server.listen).await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.server.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match crate::server::run(listener, config, crate::server::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("{line}");
                }
                ExitCode::FAILURE
            }
        }
    })
}
