//! kitebridge: verified Buildkite webhooks in; routed, rendered Slack and Teams messages and
//! signed JSON webhooks out.
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
//! - [`transition`]: how a finished build changes its branch (`broken`, `fixed`, …), decided
//!   by the store from the branch's last build; [`mute`]: the windows that drop or hold a
//!   route's messages.
//! - [`queue`]: stores each accepted event with one delivery per (route, destination) before
//!   the answer, then per-destination workers render, pace, send and retry.
//!
//! Beside them: [`config`] (TOML, environment interpolation, validation into a runtime form),
//! [`condition`] (Buildkite's `if:` expression language: parse, check, evaluate),
//! [`validate`] (what `serve`, a reload and `check` verify before a config goes live: the
//! templates compile and render valid bodies), [`reload`] (hot reload of config and templates),
//! [`cli`] (the `serve`, `check`, `render`, `send-test`, `deliveries`, `actions list`,
//! `store copy` and `studio` commands),
//! [`studio`] (the template studio: a local page and its JSON API), [`actions`] (buttons that
//! act: signed tokens, policies, the Buildkite, Slack and sign-in clients), [`press`] (answering
//! the presses from Slack and the Teams confirm pages), [`server`] (start-up and
//! graceful shutdown), [`metrics`] (the Prometheus registry behind `/metrics`), [`telemetry`]
//! (logging, text or JSON), [`memory`] (handing memory back to the system), [`secret`] (values
//! that never print) and [`crypto`] (the rustls provider).
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
