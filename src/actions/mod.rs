//! Buttons that act: signed tokens naming one action on one build or job ([`token`]), which
//! buttons fit an event ([`buttons`]), the policies that say who may press them ([`policy`]),
//! and the clients that carry a press out: Buildkite's REST API ([`buildkite`]), the Slack Web
//! API ([`slack_api`]) and an OpenID Connect provider for Teams sign-in ([`oidc`]).
//!
//! Nothing here serves HTTP or reads the config file: the `press` module answers the presses,
//! and `config` builds [`ActionsConfig`].

pub mod action;
pub mod buildkite;
pub mod buttons;
pub mod oidc;
pub mod policy;
pub mod settings;
pub mod slack_api;
pub mod token;
mod transport;

pub use action::Action;
pub use buttons::{Button, Buttons};
pub use settings::{ActionsConfig, BuildkiteSettings, OidcSettings, SlackSettings};
