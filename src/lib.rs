//! kitebridge: verified Buildkite webhooks in, routed and rendered chat messages out.
//!
//! The modules follow the data flow of one webhook:
//!
//! - [`ingress`]: the HTTP receiver; checks the caller (IP, token or HMAC signature) on the raw
//!   bytes before anything is parsed, and answers Buildkite.
//! - [`event`]: the parsed, verified [`event::Event`] and the facts routing needs from it.
//! - [`routing`]: the operator's `[[routes]]`, compiled; a pure function from an event to the
//!   (route, destination) pairs it should reach.
//! - [`render`]: Handlebars templates per destination kind, the derived template data, escaping
//!   and the destination size limits.
//! - [`deliver`]: one module per destination kind (Slack, Teams, console) behind one trait that
//!   classifies each answer as sent, retry later or permanent failure.
//! - [`store`]: the durable store (SQLite, WAL, group commit) of accepted events and their
//!   deliveries.
//! - [`queue`]: stores each accepted event with one delivery per (route, destination) before
//!   the answer, then per-destination workers render, pace, send and retry.
//!
//! Beside them: [`config`] (TOML, environment interpolation, validation into a runtime form),
//! [`condition`] (Buildkite's `if:` expression language: parse, check, evaluate),
//! [`cli`] (the `serve`, `check`, `render`, `send-test` and `deliveries` commands), [`server`] (start-up and
//! graceful shutdown) and [`secret`] (values that never print).

pub mod cli;
pub mod condition;
pub mod config;
pub mod deliver;
pub mod event;
pub mod ingress;
pub mod memory;
pub mod metrics;
pub mod mute;
pub mod queue;
pub mod reload;
pub mod render;
pub mod routing;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transition;
pub mod validate;
