//! Sending rendered bodies to destinations, one module per kind behind [`Destination`].
//!
//! Each kind judges its own answers into an [`Outcome`]: sent, retry (with the delay the
//! destination asked for, if any) or permanent failure. Callers decide what to do with a retry.

mod console;
mod http;
mod slack_app;
mod teams;
mod webhook;

pub use console::Console;
pub use http::{client, install_crypto_provider};
pub use slack_app::{SlackApp, build_event_for};
pub use webhook::Webhook;

use crate::config::DestinationConfig;
use crate::render::{Body, TemplateKind};
use crate::store::Store;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The kinds of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    /// Slack incoming webhook.
    Slack,
    /// Slack app (bot token): one message per build, updated in place, failed jobs in its thread.
    SlackApp,
    /// Teams Workflows webhook (or a legacy Office 365 connector).
    Teams,
    /// Standard output.
    Console,
}

impl DestinationKind {
    /// Parses a config `kind`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "slack" => Some(Self::Slack),
            "slack_app" => Some(Self::SlackApp),
            "teams" => Some(Self::Teams),
            "console" => Some(Self::Console),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::SlackApp => "slack_app",
            Self::Teams => "teams",
            Self::Console => "console",
        }
    }

    /// Which templates render for it.
    pub fn template_kind(self) -> TemplateKind {
        match self {
            Self::Slack | Self::SlackApp => TemplateKind::Slack,
            Self::Teams => TemplateKind::Teams,
            Self::Console => TemplateKind::Console,
        }
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted the message.
    Sent {
        /// HTTP status, when there was a request.
        status: Option<u16>,
    },
    /// Worth trying again.
    Retry {
        /// HTTP status, if an answer came.
        status: Option<u16>,
        /// The delay the destination asked for (`Retry-After`).
        after: Option<Duration>,
        /// What happened.
        reason: String,
    },
    /// Will fail again the same way; needs an operator.
    Permanent {
        /// HTTP status, if an answer came.
        status: Option<u16>,
        /// What happened.
        reason: String,
    },
}

impl Outcome {
    /// The HTTP status, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Sent { status }
            | Outcome::Retry { status, .. }
            | Outcome::Permanent { status, .. } => *status,
        }
    }

    /// A short word for logs: `sent`, `retry`, `permanent`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Retry { .. } => "retry",
            Outcome::Permanent { .. } => "permanent",
        }
    }
}

/// What a destination may need to know about a message besides its body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The (first) event's id; ids grow with arrival.
    pub event_id: i64,
    /// The event's name.
    pub event_name: String,
    /// The build the message belongs to (`pipeline#number`), for build and job events.
    pub thread_key: Option<String>,
    /// For a job event to a Slack app: the build's own message (and the build event it was
    /// rendered as), to post first when the build has no message yet.
    pub parent: Option<(String, Body)>,
}

/// A boxed send future.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Somewhere a rendered message can go.
pub trait Destination: Send + Sync + fmt::Debug {
    /// The destination's name from the config.
    fn name(&self) -> &str;
    /// Its kind.
    fn kind(&self) -> DestinationKind;
    /// Makes one attempt to deliver `body`.
    fn send<'a>(&'a self, body: &'a Body, context: &'a Context) -> SendFuture<'a>;
}

/// Builds the destination for a config entry, or `None` when it is disabled (no URL or token).
/// `store` keeps what a Slack app needs between messages (which message is which build's).
pub fn build(
    config: &DestinationConfig,
    client: &reqwest::Client,
    store: Arc<dyn Store>,
) -> Option<Arc<dyn Destination>> {
    let name = config.name.clone();
    Some(match config.kind {
        DestinationKind::Console => Arc::new(Console::new(name)),
        DestinationKind::Slack | DestinationKind::Teams => Arc::new(Webhook::new(
            name,
            config.kind,
            config.url.clone()?,
            config.timeout,
            client.clone(),
        )),
        DestinationKind::SlackApp => Arc::new(SlackApp {
            name,
            api: config.url.clone()?,
            token: config.token.clone()?,
            channel: config.channel.clone()?,
            timeout: config.timeout,
            client: client.clone(),
            store,
            known: Default::default(),
        }),
    })
}
