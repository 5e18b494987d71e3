//! The few Slack Web API calls a button press needs: who pressed (`users.info`), whether they
//! are in a user group (`usergroups.users.list`), the bot's own workspace (`auth.test`),
//! rewriting the message (`chat.update`), and answering through an interaction's
//! `response_url`.
//!
//! Slack answers API errors with HTTP 200 and `{"ok": false, "error": "…"}`, so every answer
//! is read as JSON and its `ok` checked. Lookups are cached for a minute (so a deactivated
//! account or a removed member acts at most that long): one person pressing several buttons,
//! or many people in one group, should not cost a call each.

use crate::secret::Secret;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one request may take, from connecting to the end of the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a looked-up user or group stays cached.
const CACHE_FOR: Duration = Duration::from_secs(60);

/// A cache holding more entries than this is emptied (bounded memory, whatever the callers).
const CACHE_ENTRIES: usize = 10_000;

/// The longest wait after a `429` before the one retry.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);

/// The most of an answer read (`chat.update` echoes the whole message back).
const ANSWER_BYTES: usize = 1024 * 1024;

/// A Slack Web API client with one bot token for lookups, and caches for them.
#[derive(Debug)]
pub struct SlackApi {
    client: reqwest::Client,
    api_url: String,
    token: Secret,
    timeout: Duration,
    users: Cache<SlackUser>,
    groups: Cache<Vec<String>>,
    /// The bot token's workspace: it never changes, so it is asked once.
    home: tokio::sync::OnceCell<Home>,
}

/// The workspace a bot token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The workspace, `T…`.
    pub team_id: String,
    /// The Enterprise Grid organisation, `E…`, when there is one.
    pub enterprise_id: Option<String>,
}

impl Home {
    /// Whether `user` is one of this workspace's (or organisation's) own people.
    pub fn admits(&self, user: &SlackUser) -> bool {
        let grid = |id: &str| self.enterprise_id.as_deref() == Some(id);
        user.team_id == self.team_id
            || grid(&user.team_id)
            || user.enterprise_id.as_deref().is_some_and(grid)
    }
}

/// A Slack user, as `users.info` describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackUser {
    /// The user id, `U…` or `W…`.
    pub id: String,
    /// The workspace (`T…`) the user belongs to.
    pub team_id: String,
    /// The name to show: the real name, else the display name, else the user name.
    pub name: String,
    /// `profile.email`, when the token may read it (`users:read.email`).
    pub email: Option<String>,
    /// A bot user.
    pub is_bot: bool,
    /// A multi-channel guest.
    pub is_restricted: bool,
    /// A single-channel guest.
    pub is_ultra_restricted: bool,
    /// A deactivated account.
    pub deleted: bool,
    /// A person from another organisation, seen through a shared (Slack Connect) channel.
    pub is_stranger: bool,
    /// Their Enterprise Grid organisation, when they belong to one.
    pub enterprise_id: Option<String>,
    /// The user's time zone, like `Europe/Madrid`, for showing times in their terms.
    pub tz: Option<String>,
}

/// Why a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack answered `ok: false` with this `error` (`user_not_found`, `invalid_auth`, …), or
    /// the request could not be put together (then a text saying why).
    #[error("Slack said {0}")]
    Api(String),
    /// Slack answered with this non-2xx HTTP status (429 after the one retry).
    #[error("Slack answered HTTP {0}")]
    Http(u16),
    /// No answer, or one that is not Slack's (a timeout, a refused connection, not JSON).
    #[error("Slack unreachable: {0}")]
    Unreachable(String),
}

impl SlackApi {
    /// A client for the Web API at `api_url` (e.g. `https://slack.com/api`; a trailing slash
    /// is dropped) that looks people up with bot token `token`. `client` should come from
    /// [`crate::destination::client`].
    pub fn new(client: reqwest::Client, api_url: &str, token: Secret) -> Self {
        Self {
            client,
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
            timeout: TIMEOUT,
            users: Cache::default(),
            groups: Cache::default(),
            home: tokio::sync::OnceCell::new(),
        }
    }

    /// The same client with another per-request timeout (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The user with id `id` (`users.info`), cached for a minute.
    pub async fn user(&self, id: &str) -> Result<SlackUser, SlackError> {
        if let Some(user) = self.users.get(id) {
            return Ok(user);
        }
        let answer = self.lookup("users.info", "user", id).await?;
        let user = parse_user(answer.get("user").unwrap_or(&Value::Null))
            .ok_or_else(|| SlackError::Unreachable("users.info answered without a user".into()))?;
        self.users.put(id, user.clone());
        Ok(user)
    }

    /// The workspace (and Enterprise Grid organisation) the bot token belongs to
    /// (`auth.test`), learnt once.
    pub async fn home(&self) -> Result<Home, SlackError> {
        self.home.get_or_try_init(|| self.ask_home()).await.cloned()
    }

    async fn ask_home(&self) -> Result<Home, SlackError> {
        let url = format!("{}/auth.test", self.api_url);
        let answer = ok_or_error(&self.send(Post::Get(&url)).await?)?;
        let text = |k: &str| {
            answer
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let home = Home {
            team_id: text("team_id").ok_or_else(|| {
                SlackError::Unreachable("auth.test answered without a team".into())
            })?,
            enterprise_id: text("enterprise_id"),
        };
        Ok(home)
    }

    /// The member ids of user group `group` (`usergroups.users.list`), cached for a minute
    /// (someone removed from the group acts at most that long).
    pub async fn usergroup_members(&self, group: &str) -> Result<Vec<String>, SlackError> {
        if let Some(members) = self.groups.get(group) {
            return Ok(members);
        }
        let answer = self
            .lookup("usergroups.users.list", "usergroup", group)
            .await?;
        let members: Vec<String> = answer
            .get("users")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                SlackError::Unreachable("usergroups.users.list answered without users".into())
            })?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect();
        self.groups.put(group, members.clone());
        Ok(members)
    }

    /// Replaces message `ts` in `channel` (`chat.update`) with `message`'s fields (`text`,
    /// `blocks`, `attachments`, …). `api_url` and `token` are per call because each Slack app
    /// destination has its own bot token (and may have its own API URL).
    pub async fn chat_update(
        &self,
        api_url: &str,
        token: &Secret,
        channel: &str,
        ts: &str,
        message: &Value,
    ) -> Result<(), SlackError> {
        let Some(fields) = message.as_object() else {
            return Err(SlackError::Api("the message must be a JSON object".into()));
        };
        let mut body = Map::new();
        body.insert("channel".into(), Value::String(channel.to_string()));
        body.insert("ts".into(), Value::String(ts.to_string()));
        for (key, value) in fields {
            // The message cannot move itself to another channel or message.
            if key != "channel" && key != "ts" {
                body.insert(key.clone(), value.clone());
            }
        }
        let url = format!("{}/chat.update", api_url.trim_end_matches('/'));
        let body = to_json(&Value::Object(body))?;
        let answer = self.send(Post::Json(&url, body, Some(token))).await?;
        ok_or_error(&answer).map(|_| ())
    }

    /// POSTs `body` to an interaction's `response_url` (no token: the URL is the credential).
    /// The URL is used as given: the caller checks it is Slack's.
    pub async fn respond(&self, response_url: &str, body: &Value) -> Result<(), SlackError> {
        let body = to_json(body)?;
        let answer = self.send(Post::Json(response_url, body, None)).await?;
        // A response_url answers plain `ok` or `{"ok": true}`; only an explicit `ok: false`
        // is a failure.
        match answer {
            Some(answer) if answer.get("ok") == Some(&Value::Bool(false)) => {
                ok_or_error(&Some(answer)).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// `GET {api_url}/{method}?{param}={value}` with the bot token, checked for `ok`.
    async fn lookup(&self, method: &str, param: &str, value: &str) -> Result<Value, SlackError> {
        let mut url = reqwest::Url::parse(&format!("{}/{method}", self.api_url))
            .map_err(|e| SlackError::Api(format!("the Slack API URL cannot be used: {e}")))?;
        url.query_pairs_mut().append_pair(param, value);
        let answer = self.send(Post::Get(url.as_str())).await?;
        ok_or_error(&answer)
    }

    /// Sends one request, retrying once after a `429` (waiting at most 5 s). Gives back the
    /// answer as JSON, or `None` when a 2xx answer is not JSON.
    async fn send(&self, call: Post<'_>) -> Result<Option<Value>, SlackError> {
        let mut retried = false;
        loop {
            let request = match &call {
                Post::Get(url) => self.client.get(*url).bearer_auth(self.token.expose()),
                Post::Json(url, body, token) => {
                    let request = self
                        .client
                        .post(*url)
                        .header(CONTENT_TYPE, "application/json; charset=utf-8")
                        .body(body.clone());
                    match token {
                        Some(token) => request.bearer_auth(token.expose()),
                        None => request,
                    }
                }
            };
            let response = request
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| unreachable(&e, self.timeout))?;
            let status = response.status().as_u16();
            if status == 429 && !retried {
                let wait = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RATE_LIMIT_WAIT);
                tracing::debug!(?wait, "Slack rate limit; waiting");
                tokio::time::sleep(wait).await;
                retried = true;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(SlackError::Http(status));
            }
            let body = super::transport::read_capped(response, ANSWER_BYTES)
                .await
                .map_err(|e| unreachable(&e, self.timeout))?;
            return Ok(serde_json::from_slice(&body).ok());
        }
    }
}

/// One request [`SlackApi::send`] makes.
enum Post<'a> {
    /// A lookup with the bot token.
    Get(&'a str),
    /// A JSON POST, with a token or none.
    Json(&'a str, Vec<u8>, Option<&'a Secret>),
}

/// The answer when it says `ok: true`; its `error` when it says `ok: false`.
fn ok_or_error(answer: &Option<Value>) -> Result<Value, SlackError> {
    let Some(answer) = answer else {
        return Err(SlackError::Unreachable("the answer is not JSON".into()));
    };
    match answer.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(answer.clone()),
        Some(false) => Err(SlackError::Api(
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error")
                .chars()
                .take(200)
                .collect(),
        )),
        None => Err(SlackError::Unreachable("the answer has no \"ok\"".into())),
    }
}

/// A `users.info` `user` object as a [`SlackUser`]; `None` without an id.
fn parse_user(user: &Value) -> Option<SlackUser> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let flag = |key: &str| user.get(key).and_then(Value::as_bool).unwrap_or(false);
    let profile = user.get("profile");
    let field = |key: &str| text(profile.and_then(|p| p.get(key)));
    let id = text(user.get("id"))?;
    let name = text(user.get("real_name"))
        .or_else(|| field("real_name"))
        .or_else(|| field("display_name"))
        .or_else(|| text(user.get("name")))
        .unwrap_or_else(|| id.clone());
    Some(SlackUser {
        team_id: text(user.get("team_id")).unwrap_or_default(),
        name,
        email: field("email"),
        is_bot: flag("is_bot"),
        is_restricted: flag("is_restricted"),
        is_ultra_restricted: flag("is_ultra_restricted"),
        deleted: flag("deleted"),
        is_stranger: flag("is_stranger"),
        enterprise_id: text(
            user.get("enterprise_user")
                .and_then(|e| e.get("enterprise_id")),
        ),
        tz: text(user.get("tz")),
        id,
    })
}

fn to_json(value: &Value) -> Result<Vec<u8>, SlackError> {
    serde_json::to_vec(value).map_err(|e| SlackError::Api(format!("cannot be sent: {e}")))
}

/// A transport failure in words (never with its URL: a `response_url` is a credential).
fn unreachable(e: &reqwest::Error, timeout: Duration) -> SlackError {
    SlackError::Unreachable(super::transport::describe(e, timeout, "Slack"))
}

/// A small time-limited cache, emptied whole when it grows past [`CACHE_ENTRIES`].
#[derive(Debug)]
struct Cache<T> {
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Cache<T> {
    fn get(&self, key: &str) -> Option<T> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // usable, and a cache must never take the press down with it.
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, value)| value.clone())
    }

    fn put(&self, key: &str, value: T) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key.to_string(), (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_info_users_are_read_with_fallbacks_for_the_name() {
        let user = parse_user(&json!({
            "id": "U0123", "team_id": "T9", "name": "maria", "real_name": "Maria López",
            "tz": "Europe/Madrid", "is_restricted": true,
            "profile": {"email": "maria@example.com", "display_name": "mlopez"}
        }))
        .unwrap();
        assert_eq!(
            user,
            SlackUser {
                id: "U0123".into(),
                team_id: "T9".into(),
                name: "Maria López".into(),
                email: Some("maria@example.com".into()),
                is_bot: false,
                is_restricted: true,
                is_ultra_restricted: false,
                deleted: false,
                is_stranger: false,
                enterprise_id: None,
                tz: Some("Europe/Madrid".into()),
            }
        );
        let display = parse_user(&json!({"id": "U1", "name": "x", "real_name": "",
            "profile": {"display_name": "Ex", "email": ""}}))
        .unwrap();
        assert_eq!((display.name.as_str(), display.email), ("Ex", None));
        assert_eq!(
            parse_user(&json!({"id": "U2", "name": "x"})).unwrap().name,
            "x"
        );
        assert_eq!(parse_user(&json!({"name": "no id"})), None);
    }

    #[test]
    fn ok_false_is_an_api_error_and_ok_true_the_answer() {
        assert_eq!(
            ok_or_error(&Some(json!({"ok": false, "error": "user_not_found"}))),
            Err(SlackError::Api("user_not_found".into()))
        );
        assert_eq!(
            ok_or_error(&Some(json!({"ok": true, "x": 1}))).unwrap()["x"],
            1
        );
        assert!(matches!(
            ok_or_error(&None),
            Err(SlackError::Unreachable(_))
        ));
        assert!(matches!(
            ok_or_error(&Some(json!({"users": []}))),
            Err(SlackError::Unreachable(_))
        ));
    }

    #[test]
    fn the_cache_forgets_when_full_and_keeps_values_otherwise() {
        let cache: Cache<u32> = Cache::default();
        cache.put("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("b"), None);
        for i in 0..CACHE_ENTRIES {
            cache.put(&i.to_string(), 0);
        }
        assert_eq!(cache.get("a"), None, "cleared when it passed the bound");
        assert!(cache.entries.lock().unwrap().len() <= CACHE_ENTRIES);
    }

    #[test]
    fn the_token_never_shows() {
        let api = SlackApi::new(
            crate::destination::client(),
            "https://slack.com/api/",
            Secret::new("xoxb-never-shown-123"),
        );
        assert_eq!(api.api_url, "https://slack.com/api");
        assert!(!format!("{api:?}").contains("xoxb-never-shown-123"));
    }
}
