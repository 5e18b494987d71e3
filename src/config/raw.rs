//! The config file as written: serde structs that reject unknown keys and keep spans, so every
//! later complaint can name its line. String values are interpolated during validation.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A string value with its position in the file.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub buildkite: Spanned<RawBuildkite>,
    #[serde(default)]
    pub test_engine: RawTestEngine,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub templates: RawTemplates,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub destinations: BTreeMap<Spanned<String>, Spanned<RawDestination>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub people: RawPeople,
    #[serde(default)]
    pub mute: Vec<Spanned<RawMute>>,
    pub actions: Option<Spanned<RawActions>>,
}

/// `[actions]`: buttons that act.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActions {
    pub signing_key: Text,
    #[serde(default)]
    pub previous_signing_keys: Vec<Text>,
    pub ttl: Option<Text>,
    pub public_url: Option<Text>,
    pub buildkite: Option<Spanned<RawActionsBuildkite>>,
    pub slack: Option<Spanned<RawActionsSlack>>,
    pub oidc: Option<Spanned<RawOidc>>,
    #[serde(default)]
    pub policies: Vec<Spanned<RawPolicy>>,
}

/// `[actions.buildkite]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActionsBuildkite {
    pub org: Text,
    pub token: Text,
    pub api_url: Option<Text>,
    pub unblock_fields: Option<BTreeMap<Text, Text>>,
}

/// `[actions.slack]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActionsSlack {
    pub signing_secret: Text,
    pub token: Text,
    pub path: Option<Text>,
    pub api_url: Option<Text>,
}

/// `[actions.oidc]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: Text,
    pub client_id: Text,
    pub client_secret: Text,
}

/// `[[actions.policies]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub pipelines: Vec<Text>,
    #[serde(default)]
    pub branches: Vec<Text>,
    #[serde(default)]
    pub allow: Vec<Text>,
    #[serde(default)]
    pub slack_users: Vec<Text>,
    #[serde(default)]
    pub slack_usergroups: Vec<Text>,
    #[serde(default)]
    pub emails: Vec<Text>,
    #[serde(default)]
    pub email_domains: Vec<Text>,
}

/// Who can be mentioned, written either way: `[[people]]` entries that each list the emails and
/// user names of one person, or one `[people]` table from an email or user name to a person.
#[derive(Debug, Default)]
pub struct RawPeople(pub Vec<Spanned<RawPerson>>);

impl<'de> Deserialize<'de> for RawPeople {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawPeople;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[[people]] entries, or a [people] table keyed by email or user name")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawPeople, A::Error> {
                let mut people = Vec::new();
                while let Some(p) = seq.next_element::<Spanned<RawPerson>>()? {
                    people.push(p);
                }
                Ok(RawPeople(people))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawPeople, A::Error> {
                let mut people = Vec::new();
                while let Some(key) = map.next_key::<Text>()? {
                    let entry = map.next_value::<Spanned<RawPersonEntry>>()?;
                    let span = entry.span();
                    let e = entry.into_inner();
                    people.push(Spanned::new(
                        span,
                        RawPerson {
                            key: Some(key.get_ref().clone()),
                            name: e.name,
                            emails: vec![key],
                            buildkite: Vec::new(),
                            slack: e.slack,
                            teams: e.teams,
                            buildkite_id: e.buildkite_id,
                        },
                    ));
                }
                Ok(RawPeople(people))
            }
        }
        d.deserialize_any(Either)
    }
}

/// One value of the `[people]` table: the key is the email or user name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersonEntry {
    pub name: Option<Text>,
    pub slack: Option<Text>,
    pub teams: Option<Text>,
    pub buildkite_id: Option<Text>,
}

/// `[[people]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerson {
    /// The `[people]` table key this entry came from, to name it in complaints.
    #[serde(skip)]
    pub key: Option<String>,
    pub name: Option<Text>,
    #[serde(default)]
    pub emails: Vec<Text>,
    #[serde(default)]
    pub buildkite: Vec<Text>,
    pub slack: Option<Text>,
    pub teams: Option<Text>,
    /// Their Buildkite user id (a UUID): the unblocker when they unblock from a button.
    pub buildkite_id: Option<Text>,
}

/// `[[mute]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMute {
    pub name: Option<Text>,
    #[serde(default)]
    pub days: Vec<Text>,
    pub from: Option<Text>,
    pub to: Option<Text>,
    pub timezone: Option<Text>,
    pub action: Option<Text>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Text>,
    pub path: Option<Text>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub read_timeout: Option<Text>,
    pub drain: Option<Text>,
    pub max_concurrent_requests: Option<Spanned<i64>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Text>,
    pub reload_token: Option<Text>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Text,
    pub key: Text,
}

/// `[buildkite]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuildkite {
    pub token: Text,
    #[serde(default)]
    pub previous_tokens: Vec<Text>,
    pub mode: Option<Text>,
    pub replay_window: Option<Text>,
    #[serde(default)]
    pub allowed_ips: Vec<Text>,
    pub meta_url: Option<Text>,
}

/// `[test_engine]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestEngine {
    pub key: Option<Text>,
}

/// `[storage]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub path: Option<Text>,
    pub url: Option<Text>,
    pub lease: Option<Text>,
    pub max_connections: Option<Spanned<i64>>,
    pub durability: Option<Text>,
    pub dedupe_window: Option<Text>,
    pub retention: Option<Text>,
}

/// `[delivery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub max_age: Option<Text>,
    pub max_retry_after: Option<Text>,
    pub backoff_initial: Option<Text>,
    pub backoff_max: Option<Text>,
    pub shutdown_deadline: Option<Text>,
    pub allowed_hosts: Option<Vec<Text>>,
}

/// `[templates]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    pub dir: Option<Text>,
}

/// `[destinations.NAME]`: its keys as written; what each kind takes is the kind's to say.
pub type RawDestination = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Text>,
    #[serde(default)]
    pub events: Vec<Text>,
    #[serde(default)]
    pub pipelines: Vec<Text>,
    #[serde(default)]
    pub branches: Vec<Text>,
    #[serde(default)]
    pub states: Vec<Text>,
    #[serde(default)]
    pub to: Vec<Text>,
    pub template: Option<Text>,
    #[serde(default)]
    pub transitions: Vec<Text>,
    pub group_window: Option<Text>,
    #[serde(default)]
    pub group_by: Vec<Text>,
    #[serde(default)]
    pub mute: Vec<Text>,
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    #[serde(default)]
    pub when: Vec<Spanned<RawWhen>>,
    /// A condition in Buildkite's language; never interpolated (`$` means something there).
    #[serde(rename = "if")]
    pub condition: Option<Text>,
    /// Action buttons the route's messages show, where they fit the event.
    #[serde(default)]
    pub buttons: Vec<Text>,
}

/// `[[routes.when]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub path: Text,
    pub equals: Option<toml::Value>,
    #[serde(rename = "in")]
    pub in_: Option<Vec<toml::Value>>,
    pub matches: Option<Text>,
    pub exists: Option<bool>,
}
