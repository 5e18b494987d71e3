//! `[actions]` as validated: the keys, the Buildkite and Slack credentials, the sign-in
//! provider and the policies.

use super::policy::Policy;
use crate::secret::Secret;
use std::time::Duration;

/// `[actions]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionsConfig {
    /// `signing_key` first (it signs), then `previous_signing_keys` (they still verify).
    pub keys: Vec<Secret>,
    /// How long a button acts after its event arrived.
    pub ttl: Duration,
    /// Where people's browsers reach this service (Teams links, the sign-in callback).
    pub public_url: Option<String>,
    /// `[actions.buildkite]`.
    pub buildkite: BuildkiteSettings,
    /// `[actions.slack]`, when Slack buttons are answered.
    pub slack: Option<SlackSettings>,
    /// `[actions.oidc]`, when Teams links can be used.
    pub oidc: Option<OidcSettings>,
    /// `[[actions.policies]]`, in file order.
    pub policies: Vec<Policy>,
}

/// `[actions.buildkite]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildkiteSettings {
    /// The organization slug; buttons are only made for its builds.
    pub org: String,
    /// An API token with `read_builds` and `write_builds`.
    pub token: Secret,
    /// The REST API's base URL.
    pub api_url: String,
    /// `unblock_fields`: the block step's fields sent with every unblock.
    pub unblock_fields: serde_json::Map<String, serde_json::Value>,
}

/// `[actions.slack]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackSettings {
    /// The Slack app's signing secret, which signs each interaction request.
    pub signing_secret: Secret,
    /// Where Slack posts interactions (the app's Interactivity Request URL).
    pub path: String,
    /// The Web API's base URL.
    pub api_url: String,
    /// A bot token with `users:read`, `users:read.email` and `usergroups:read`, to learn who
    /// pressed (bots and guests never act) and which groups they are in.
    pub token: Secret,
}

/// `[actions.oidc]`: the provider Teams users sign in with.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcSettings {
    /// The issuer URL (for Entra ID `https://login.microsoftonline.com/{tenant}/v2.0`).
    pub issuer: String,
    /// The app registration's client id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: Secret,
}

impl ActionsConfig {
    /// The key that signs new buttons.
    pub fn signing_key(&self) -> &Secret {
        &self.keys[0]
    }

    /// Where the sign-in provider sends people back.
    pub fn callback_url(&self) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/actions/callback", u.trim_end_matches('/')))
    }

    /// A Teams button's link for `token`.
    pub fn link(&self, token: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/actions/{token}", u.trim_end_matches('/')))
    }
}
