//! Destinations: one module per kind, each owning everything that kind is.
//!
//! A kind ([`Kind`]) says which keys its `[destinations.NAME]` table takes and checks them,
//! gives its default pace, names the templates that render for it, brings a rendered body
//! within its limits, checks a body has the envelope it needs, and builds the [`Destination`]
//! that sends, judging each answer into an [`Outcome`]: sent, retry (with the delay the
//! destination asked for, if any) or permanent failure. Callers decide what to do with a
//! retry.
//!
//! A new kind is one module here and one line in [`KINDS`].

pub mod console;
mod http;
pub mod slack;
pub mod slack_app;
mod table;
pub mod teams;
mod webhook;

pub use http::{client, host_allowed, post_json};
pub use slack_app::is_slack_id;
pub use table::{Entry, Problem, Reported, Table, Value};
pub use webhook::webhook_id;

use crate::event::Event;
use crate::render::{Body, RenderError, Renderer, TemplateData, TemplateKind};
use crate::secret::Secret;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Every kind, in the order `check` and error messages list them.
static KINDS: &[&dyn Kind] = &[
    &slack::Slack,
    &slack_app::SlackAppKind,
    &teams::Teams,
    &webhook::WebhookKind,
    &console::ConsoleKind,
];

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a kind of destination is.
pub trait Kind: Send + Sync + fmt::Debug + 'static {
    /// The config spelling (`kind = "…"`).
    fn name(&self) -> &'static str;
    /// Which templates render its messages.
    fn template_kind(&self) -> TemplateKind;
    /// Pace and parallelism unless the config says otherwise.
    fn default_limits(&self) -> Limits;
    /// Whether it takes a `url`.
    fn url(&self) -> UrlRule {
        UrlRule::Required
    }
    /// The keys it takes beyond `kind`, `url`, `timeout`, `rate`, `burst` and `concurrency`.
    fn keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks its own keys (and anything it refuses in the common ones); the options a
    /// destination of this kind keeps. Problems go to `table`.
    fn configure(&self, table: &mut Table, common: &Common) -> Result<Options, Reported> {
        let _ = (table, common);
        Ok(Options::none())
    }
    /// Why nothing is sent to it, if so (a secret that interpolated to empty).
    fn disabled_reason(&self, config: &DestinationConfig) -> Option<&'static str> {
        config.url.is_none().then_some("its url is empty")
    }
    /// Brings a rendered body within the kind's limits, shortening what can be shortened;
    /// an error says why it cannot be.
    fn fit(&self, body: &mut Body) -> Result<(), String>;
    /// Checks that a rendered body has the envelope the kind needs.
    fn check_body(&self, body: &Body) -> Result<(), String>;
    /// The sender for `config`; `None` when it is disabled.
    fn build(&self, config: &DestinationConfig, env: &BuildEnv) -> Option<Arc<dyn Destination>>;
}

/// Whether a kind takes a `url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRule {
    /// It posts to one; the config must give it.
    Required,
    /// It has one unless the config gives another (the Slack Web API's base).
    Default(&'static str),
    /// It takes none (the console).
    Refused,
}

/// What every destination has, checked before its kind's own keys.
#[derive(Debug, Clone)]
pub struct Common {
    /// The URL, when it is set and not empty.
    pub url: Option<Secret>,
    /// Pace and parallelism.
    pub limits: Limits,
}

/// What building a sender may use.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// The shared HTTP client.
    pub client: reqwest::Client,
    /// The store (a Slack app keeps which message is which build's there; without one, a
    /// Slack app cannot be built).
    pub store: Option<Arc<dyn Store>>,
}

/// One kind of destination, by its registered definition.
#[derive(Clone, Copy)]
pub struct DestinationKind(&'static dyn Kind);

impl DestinationKind {
    /// Every kind.
    pub fn all() -> impl Iterator<Item = DestinationKind> {
        KINDS.iter().map(|k| DestinationKind(*k))
    }

    /// The kind a config `kind` names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::all().find(|k| k.name() == s)
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// The kinds that take `key`, for a message about a key in the wrong place.
    pub fn taking(key: &str) -> Vec<&'static str> {
        Self::all()
            .filter(|k| k.keys().contains(&key))
            .map(|k| k.as_str())
            .collect()
    }

    /// The first kind whose messages `template` kind renders (for checking templates).
    pub fn rendered_by(template: TemplateKind) -> Option<Self> {
        Self::all().find(|k| k.template_kind() == template)
    }

    /// Selects and renders the template for `event`, brought within the kind's limits.
    pub fn render_event(
        self,
        renderer: &Renderer,
        explicit: Option<&str>,
        event: &Event,
        data: &TemplateData,
    ) -> Result<Rendered, RenderError> {
        let template = renderer.select(self.template_kind(), explicit, event)?;
        self.render_selected(renderer, template, data)
    }

    /// Renders the already selected `template` with `data`, brought within the kind's limits.
    pub fn render_selected(
        self,
        renderer: &Renderer,
        template: String,
        data: &TemplateData,
    ) -> Result<Rendered, RenderError> {
        let body = self.render(renderer, &template, data)?;
        Ok(Rendered { template, body })
    }

    /// Renders a digest of `events`, brought within the kind's limits.
    pub fn render_group(
        self,
        renderer: &Renderer,
        explicit: Option<&str>,
        events: &[Event],
        now: DateTime<Utc>,
    ) -> Result<Rendered, RenderError> {
        let kind = self.template_kind();
        let template = renderer.select_group(kind, explicit, events)?;
        let data = TemplateData::group(events, now);
        self.render_selected(renderer, template, &data)
    }

    /// Renders template `name` with `data`, brought within the kind's limits.
    pub fn render(
        self,
        renderer: &Renderer,
        name: &str,
        data: &TemplateData,
    ) -> Result<Body, RenderError> {
        let kind = self.template_kind();
        let mut body = renderer.render(kind, name, data)?;
        self.fit(&mut body)
            .map_err(|message| RenderError::TooLarge {
                origin: renderer.origin(kind, name),
                message,
            })?;
        Ok(body)
    }
}

impl std::ops::Deref for DestinationKind {
    type Target = dyn Kind;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for DestinationKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for DestinationKind {}

impl std::hash::Hash for DestinationKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rendered message and the template it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The template's name.
    pub template: String,
    /// The body, within the kind's limits.
    pub body: Body,
}

/// Pace and parallelism of one destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Messages per second on average; `None` for no limit.
    pub rate: Option<f64>,
    /// Messages allowed back to back.
    pub burst: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
}

/// What one kind keeps beyond the common settings (a Slack app's token and channel, a
/// webhook's method, headers and signing secrets), opaque to everything but its kind.
#[derive(Clone)]
pub struct Options(Option<Arc<dyn KindOptions>>);

/// A kind's options: comparable, so a reload can tell whether a destination changed.
pub trait KindOptions: Any + Send + Sync + fmt::Debug {
    /// Whether `other` holds the same options.
    fn same(&self, other: &dyn KindOptions) -> bool;
    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Send + Sync + fmt::Debug + PartialEq> KindOptions for T {
    fn same(&self, other: &dyn KindOptions) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Options {
    /// No options.
    pub fn none() -> Self {
        Self(None)
    }

    /// Options of type `T`.
    pub fn new<T: KindOptions>(options: T) -> Self {
        Self(Some(Arc::new(options)))
    }

    /// The options, when they are a `T`.
    pub fn get<T: KindOptions>(&self) -> Option<&T> {
        self.0.as_deref()?.as_any().downcast_ref()
    }
}

impl PartialEq for Options {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same(b.as_ref()),
            _ => false,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(o) => o.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// One `[destinations.NAME]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    /// The table key.
    pub name: String,
    /// What it is.
    pub kind: DestinationKind,
    /// The URL it posts to (for `slack_app`, the Web API base); `None` for `console`, and for
    /// a destination whose URL interpolated to empty (it is then disabled).
    pub url: Option<Secret>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Pace and parallelism.
    pub limits: Limits,
    /// What its kind keeps besides.
    pub options: Options,
}

impl DestinationConfig {
    /// Whether messages are sent to it.
    pub fn enabled(&self) -> bool {
        self.disabled_reason().is_none()
    }

    /// Why nothing is sent to it, if so.
    pub fn disabled_reason(&self) -> Option<&'static str> {
        self.kind.disabled_reason(self)
    }

    /// The sender, or `None` when it is disabled.
    pub fn build(&self, env: &BuildEnv) -> Option<Arc<dyn Destination>> {
        self.kind.build(self, env)
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
    /// The message's id, the same on every attempt (a signed webhook's `webhook-id`).
    pub message_id: String,
    /// The build the message belongs to (`pipeline#number`), for build and job events.
    pub thread_key: Option<String>,
    /// The message that must exist before this one, rendered (see [`Destination::parent`]).
    pub parent: Option<Parent>,
}

/// A message to post first when it is not there yet: a Slack app's build message, before a
/// reply about one of its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent {
    /// The event it was rendered as.
    pub event_name: String,
    /// Its body.
    pub body: Body,
}

/// A boxed send future.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Somewhere a rendered message can go.
pub trait Destination: Send + Sync + fmt::Debug {
    /// The destination's name from the config.
    fn name(&self) -> &str;
    /// Its kind.
    fn kind(&self) -> DestinationKind;
    /// Whether a message about `event_name` (`threaded`: one that belongs to a build) needs
    /// another message to exist first (a Slack app threads a job's message under its build's).
    fn wants_parent(&self, event_name: &str, threaded: bool) -> bool {
        let _ = (event_name, threaded);
        false
    }
    /// The event whose message must exist before `event`'s, when [`Self::wants_parent`]; it
    /// is rendered with the same templates and handed over as [`Context::parent`].
    fn parent(&self, event: &Event) -> Option<Event> {
        let _ = event;
        None
    }
    /// Makes one attempt to deliver `body`.
    fn send<'a>(&'a self, body: &'a Body, context: &'a Context) -> SendFuture<'a>;
}
