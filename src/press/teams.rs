//! The Teams side: a card posted by a Workflows webhook cannot call back, so its buttons are
//! links to `{public_url}/actions/{token}`.
//!
//! - `GET /actions/{token}` only shows a page (link scanners and previews follow links, so a
//!   `GET` never acts): a sign-in button, or once signed in, a confirm form.
//! - `GET /actions/login` and `/actions/callback` sign the person in with the organisation's
//!   OpenID Connect provider (authorization code with PKCE). What the callback needs is kept
//!   in a signed, short-lived cookie, and the session in another, so any replica can answer
//!   any step.
//! - `POST /actions/{token}` acts once: it needs the session and the form's CSRF token (a MAC
//!   of the session and the button), and then posts a follow-up card to the destination.

use super::{PressDesk, Presser, Verdict};
use crate::actions::policy::Person;
use crate::actions::token::{self, Grant};
use crate::actions::{ActionsConfig, oidc::Identity};
use crate::render::teams_text;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

const SESSION: &str = "kb_session";
const LOGIN: &str = "kb_login";
/// How long a sign-in lasts.
const SESSION_SECS: i64 = 8 * 3600;
/// How long the provider's round trip may take.
const LOGIN_SECS: i64 = 600;

/// The signed-in person, as the session cookie keeps them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Session {
    sub: String,
    email: Option<String>,
    name: Option<String>,
    exp: i64,
}

/// What the callback needs from the start of a sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    exp: i64,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(config: &ActionsConfig, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let text = format!(
        "{name}={value}; Path=/actions; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("kb_invalid=1"))
}

fn session(config: &ActionsConfig, headers: &HeaderMap) -> Option<(Session, String)> {
    let raw = cookie(headers, SESSION)?;
    let s: Session = token::open(&config.keys, "session", raw).ok()?;
    (s.exp > super::now_secs()).then(|| (s, raw.to_string()))
}

/// The form's CSRF token: bound to this session and this button.
fn csrf(config: &ActionsConfig, session: &str, button: &str) -> String {
    token::tag(config.signing_key(), "csrf", &format!("{session}|{button}"))
}

fn csrf_ok(config: &ActionsConfig, session: &str, button: &str, given: &str) -> bool {
    token::tag_ok(&config.keys, "csrf", &format!("{session}|{button}"), given)
}

/// A small page, never cached, never framed, sending no referrer (the path holds a token).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>{t}</title>\
<style>body{{font:16px system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#1d1c1d}}\
button,a.button{{font:inherit;padding:.6rem 1.2rem;border-radius:6px;border:0;background:#2b5797;color:#fff;text-decoration:none;cursor:pointer}}\
.muted{{color:#616061}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn what(grant: &Grant) -> String {
    format!("{} {}", grant.action.label(), grant.target())
}

fn off() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p>Buttons are not set up here.</p>",
    )
}

fn bad_token(e: token::TokenError) -> Response {
    let status = match e {
        token::TokenError::Expired => StatusCode::GONE,
        _ => StatusCode::FORBIDDEN,
    };
    page(
        status,
        "This button does not act",
        &format!("<p>{}.</p>", escape(&e.to_string())),
    )
}

/// `GET /actions/{token}`: shows what the button would do; changes nothing.
pub async fn confirm_page(
    State(desk): State<Arc<PressDesk>>,
    Path(button): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(clients) = desk.clients() else {
        return off();
    };
    let config = &clients.config;
    let grant = match token::verify(&button, &config.keys, super::now_secs()) {
        Ok(g) => g,
        Err(e) => return bad_token(e),
    };
    let Some((s, raw)) = session(config, &headers) else {
        let next = format!("/actions/{button}");
        let query = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
        let login = format!("/actions/login?{query}");
        return page(
            StatusCode::OK,
            &what(&grant),
            &format!(
                "<p>Sign in to {} on branch <code>{}</code>.</p><p><a class=button href=\"{}\">Sign in</a></p>",
                escape(&what(&grant)),
                escape(&grant.branch),
                escape(&login)
            ),
        );
    };
    let who = s.name.clone().or(s.email.clone()).unwrap_or(s.sub.clone());
    page(
        StatusCode::OK,
        &what(&grant),
        &format!(
            "<p>Signed in as <b>{}</b>{}.</p><p>{} on branch <code>{}</code>?</p>\
<form method=post><input type=hidden name=csrf value=\"{}\"><button type=submit>{}</button></form>",
            escape(&who),
            s.email
                .as_deref()
                .map(|e| format!(" ({})", escape(e)))
                .unwrap_or_default(),
            escape(&what(&grant)),
            escape(&grant.branch),
            csrf(config, &raw, &button),
            escape(grant.action.label())
        ),
    )
}

/// The confirm form.
#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    csrf: Option<String>,
}

/// `POST /actions/{token}`: acts once, for a signed-in person, with the page's CSRF token.
pub async fn confirm(
    State(desk): State<Arc<PressDesk>>,
    Path(button): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>();
    let form: Option<ConfirmForm> = serde_urlencoded::from_bytes(&body).ok();
    let Some(clients) = desk.clients() else {
        return off();
    };
    let config = &clients.config;
    // Who is behind the browser, as the webhook endpoint would see them (`trusted_proxies`).
    let trusted = desk.live().config.server.trusted_proxies.clone();
    let source = crate::ingress::client_ip(peer.map(|p| p.0.ip()), &headers, &trusted)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let Some((s, raw)) = session(config, &headers) else {
        let anonymous = Presser {
            id: "anonymous".into(),
            name: "someone not signed in".into(),
            channel: "teams",
            source,
            person: Person::default(),
        };
        let why = "a confirm form without a sign-in session";
        desk.record_refusal(&clients, &button, &anonymous, "unauthenticated", why)
            .await;
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "<p>Open the button's link again and sign in.</p>",
        );
    };
    let presser = Presser {
        id: s.email.clone().unwrap_or(s.sub.clone()),
        name: s.name.clone().or(s.email.clone()).unwrap_or(s.sub.clone()),
        channel: "teams",
        source,
        person: Person {
            slack_user: None,
            usergroups: Vec::new(),
            email: s.email.clone(),
        },
    };
    let given = form.and_then(|f| f.csrf).unwrap_or_default();
    if !csrf_ok(config, &raw, &button, &given) {
        let why = "a confirm form without this page's CSRF token";
        desk.record_refusal(&clients, &button, &presser, "bad_csrf", why)
            .await;
        return page(
            StatusCode::FORBIDDEN,
            "Not done",
            "<p>This form is not from this page. Open the button's link again.</p>",
        );
    }
    let grant = match desk.grant(&clients, &button, &presser).await {
        Ok(g) => g,
        Err(e) => return bad_token(e),
    };
    let verdict = desk.carry_out(&clients, &grant, &presser).await;
    let at = chrono::Utc::now().format("%H:%M UTC").to_string();
    match verdict {
        Verdict::Done(summary) => {
            let line = format!(
                "{} {} by {} at {at} · {summary}",
                grant.action.emoji(),
                grant.action.done(),
                presser.name
            );
            follow_up(&desk, &grant, &line).await;
            page(
                StatusCode::OK,
                "Done",
                &format!(
                    "<p>{}</p><p class=muted>A note was posted to the channel.</p>",
                    escape(&line)
                ),
            )
        }
        Verdict::Duplicate { by, at } => page(
            StatusCode::CONFLICT,
            "Already done",
            &format!(
                "<p>{} {} by {} at {}.</p>",
                grant.action.emoji(),
                grant.action.done(),
                escape(&by),
                chrono::DateTime::from_timestamp_millis(at)
                    .map(|t| t.format("%H:%M UTC").to_string())
                    .unwrap_or_default()
            ),
        ),
        Verdict::Denied(why) => page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("<p>{}.</p>", escape(&why)),
        ),
        Verdict::Failed(why) => page(
            StatusCode::BAD_GATEWAY,
            "Buildkite refused",
            &format!(
                "<p>{}</p><p class=muted>Nothing was done.</p>",
                escape(&why)
            ),
        ),
        Verdict::Unavailable(why) => page(
            StatusCode::BAD_GATEWAY,
            "Buildkite did not answer",
            &format!(
                "<p>{}</p><p class=muted>It may or may not have happened: check the build before trying again.</p>",
                escape(&why)
            ),
        ),
    }
}

/// Posts "who did what" to the destination the button came from, as a small card.
async fn follow_up(desk: &PressDesk, grant: &Grant, line: &str) {
    let live = desk.live();
    let Some(dest) = live
        .config
        .destinations
        .iter()
        .find(|d| d.name == grant.destination)
    else {
        return;
    };
    let Some(url) = dest.url.clone() else {
        return;
    };
    let card = json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [{"type": "TextBlock", "text": teams_text(line), "wrap": true}]
            }
        }]
    });
    let body = serde_json::to_vec(&card).expect("a card serialises");
    match crate::destination::post_json(desk.http(), &url, None, body, dest.timeout).await {
        Ok(answer) if (200..300).contains(&answer.status) => {}
        Ok(answer) => {
            tracing::warn!(destination = %dest.name, status = answer.status, "the follow-up card was refused")
        }
        Err(e) => {
            tracing::warn!(destination = %dest.name, outcome = ?e, "the follow-up card could not be posted")
        }
    }
}

/// `GET /actions/login?next=/actions/…`: off to the provider.
pub async fn login(
    State(desk): State<Arc<PressDesk>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(clients) = desk.clients() else {
        return off();
    };
    let Some(oidc) = clients.oidc.as_ref() else {
        return page(
            StatusCode::NOT_FOUND,
            "Sign-in is not set up",
            "<p>[actions.oidc] is not configured.</p>",
        );
    };
    // Only back to a button page: never an open redirect.
    let next = query
        .get("next")
        .filter(|n| n.starts_with("/actions/") && !n.contains("//") && !n.contains('\\'))
        .cloned()
        .unwrap_or_else(|| "/actions/".into());
    let started = match oidc.begin().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a sign-in");
            return page(
                StatusCode::BAD_GATEWAY,
                "Sign-in is unavailable",
                &format!("<p>{}</p>", escape(&e.to_string())),
            );
        }
    };
    let pending = Pending {
        state: started.state,
        nonce: started.nonce,
        verifier: started.verifier,
        next,
        exp: super::now_secs() + LOGIN_SECS,
    };
    let sealed = token::seal(clients.config.signing_key(), "login", &pending);
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&started.url) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::SET_COOKIE,
        set_cookie(&clients.config, LOGIN, &sealed, LOGIN_SECS),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /actions/callback?code&state`: back from the provider.
pub async fn callback(
    State(desk): State<Arc<PressDesk>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(clients) = desk.clients() else {
        return off();
    };
    let Some(oidc) = clients.oidc.as_ref() else {
        return off();
    };
    let config = &clients.config;
    let refused = |why: &str| {
        tracing::warn!(reason = why, "sign-in refused");
        page(
            StatusCode::FORBIDDEN,
            "Sign-in failed",
            &format!("<p>{}</p>", escape(why)),
        )
    };
    if let Some(e) = query.get("error") {
        return refused(&format!("the provider said {e}"));
    }
    let Some(pending) =
        cookie(&headers, LOGIN).and_then(|c| token::open::<Pending>(&config.keys, "login", c).ok())
    else {
        return refused(
            "the sign-in was not started here, or took too long; open the button's link again",
        );
    };
    let state_ok = query.get("state").is_some_and(|s| {
        use subtle::ConstantTimeEq;
        bool::from(s.as_bytes().ct_eq(pending.state.as_bytes()))
    });
    if pending.exp <= super::now_secs() || !state_ok {
        return refused(
            "the sign-in does not match the one started here; open the button's link again",
        );
    }
    let Some(code) = query.get("code") else {
        return refused("the provider sent no code");
    };
    let identity: Identity = match oidc.finish(code, &pending.verifier, &pending.nonce).await {
        Ok(i) => i,
        Err(e) => return refused(&e.to_string()),
    };
    let session = Session {
        sub: identity.subject,
        email: identity.email.map(|e| e.to_ascii_lowercase()),
        name: identity.name,
        exp: super::now_secs() + SESSION_SECS,
    };
    let sealed = token::seal(config.signing_key(), "session", &session);
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&pending.next) {
        h.insert(header::LOCATION, v);
    }
    h.append(
        header::SET_COOKIE,
        set_cookie(config, SESSION, &sealed, SESSION_SECS),
    );
    h.append(header::SET_COOKIE, set_cookie(config, LOGIN, "", 0));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::BuildkiteSettings;
    use crate::secret::Secret;
    use std::time::Duration;

    fn config() -> ActionsConfig {
        ActionsConfig {
            keys: vec![Secret::new("k".repeat(32)), Secret::new("old".repeat(11))],
            ttl: Duration::from_secs(60),
            public_url: Some("https://alerts.example".into()),
            buildkite: BuildkiteSettings {
                org: "acme".into(),
                token: Secret::new("t"),
                api_url: "https://api.buildkite.com/v2".into(),
                unblock_fields: Default::default(),
            },
            slack: None,
            oidc: None,
            policies: Vec::new(),
        }
    }

    #[test]
    fn sealed_values_open_only_with_their_purpose_and_unchanged() {
        let c = config();
        let s = Session {
            sub: "s".into(),
            email: Some("m@acme.example".into()),
            name: None,
            exp: 9,
        };
        let open = |purpose: &str, text: &str| token::open::<Session>(&c.keys, purpose, text).ok();
        let sealed = token::seal(c.signing_key(), "session", &s);
        assert_eq!(open("session", &sealed), Some(s.clone()));
        assert_eq!(open("login", &sealed), None);
        // One character of the sealed data changed: the MAC no longer matches.
        let first = sealed.chars().next().unwrap();
        let other = if first == 'e' { 'f' } else { 'e' };
        let tampered = format!("{other}{}", &sealed[1..]);
        assert_ne!(tampered, sealed);
        assert!(open("session", &tampered).is_none());
        // Sealed with the previous key, it still opens (rotation).
        assert_eq!(
            open("session", &token::seal(&c.keys[1], "session", &s)),
            Some(s)
        );
    }

    #[test]
    fn csrf_tokens_bind_session_and_button() {
        let c = config();
        let t = csrf(&c, "sess", "button");
        assert!(csrf_ok(&c, "sess", "button", &t));
        assert!(!csrf_ok(&c, "other", "button", &t));
        assert!(!csrf_ok(&c, "sess", "other", &t));
        assert!(!csrf_ok(&c, "sess", "button", ""));
    }

    #[test]
    fn cookies_are_read_from_any_header_and_position() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; kb_session=xyz"),
        );
        assert_eq!(cookie(&h, SESSION), Some("xyz"));
        assert_eq!(cookie(&h, LOGIN), None);
    }
}
