//! kitebridge: verified Buildkite webhooks in, routed and rendered chat messages out.
//!
//! The modules follow the data flow of one webhook:
//!
//! - [`ingress`]: the HTTP receiver; checks the caller (IP, and with [`auth`] the token or HMAC
//!   signature) on the raw bytes before anything is parsed, and answers Buildkite.
//! - [`event`]: the parsed, verified [`event::Event`] and the facts routing needs from it.
//! - [`routing`]: the operator's `[[routes]]`, compiled; a pure function from an event to the
//!   (route, destination) pairs it should reach.
//! - [`render`]: Handlebars templates per template kind (`slack`, `teams`, `webhook`,
//!   `console`), the derived template data and escaping.
//! - [`destination`]: one module per destination kind (Slack, Slack app, Teams, signed webhook,
//!   console), each owning its config keys and defaults, its template kind and limits, its body
//!   check, its sender and how it judges answers (sent, retry later or permanent failure).
//! - [`store`]: the durable store (SQLite, WAL, group commit; or PostgreSQL for replicas) of
//!   accepted events and their deliveries.
//! - [`queue`]: stores each accepted event with one delivery per (route, destination) before
//!   the answer, then per-destination workers render, pace, send and retry.
//!
//! Beside them: [`config`] (TOML, environment interpolation, validation into a runtime form),
//! [`condition`] (Buildkite's `if:` expression language: parse, check, evaluate),
//! [`cli`] (the `serve`, `check`, `render`, `send-test`, `deliveries` and `studio` commands),
//! [`studio`] (the template studio: a local page and its JSON API), [`actions`] (buttons that
//! act: signed tokens, policies, the Buildkite, Slack and sign-in clients), [`press`] (answering
//! the presses from Slack and the Teams confirm pages), [`server`] (start-up and
//! graceful shutdown), [`secret`] (values that never print) and [`crypto`] (the rustls provider).
//!
//! The module graph is acyclic (`tests/architecture.rs` checks it): config sits above
//! destination, which sits above render and store, which sit above event.

pub mod actions;
pub mod auth;
pub mod cli;
pub mod condition;
pub mod config;
pub mod crypto;
pub mod destination;
pub mod event;
pub mod ingress;
pub mod memory;
pub mod metrics;
pub mod mute;
pub mod press;
pub mod queue;
pub mod reload;
pub mod render;
pub mod routing;
pub mod secret;
pub mod server;
pub mod store;
pub mod studio;
pub mod telemetry;
pub mod transition;
pub mod validate;
