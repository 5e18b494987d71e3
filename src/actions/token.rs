//! A button's signed token: one action on one build (or job), for one route and destination,
//! until an expiry, with a single-use nonce. It travels in a Slack button's `value` and in a
//! Teams link's path, so everything the press acts on comes from here, never from what the
//! chat service sends along.
//!
//! Form: `kb1.<base64url JSON>.<base64url HMAC-SHA256>`. The same sealing ([`seal`], [`open`])
//! keeps the Teams sign-in cookies, each purpose with a MAC key derived from `[actions]
//! signing_key` for it alone, so a cookie can never stand for a button. Verification tries the
//! current key and then each of `previous_signing_keys`, so keys rotate without breaking what
//! was signed before.

use super::action::Action;
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

const PREFIX: &str = "kb1.";

/// What a button may do, as signed into its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The action.
    #[serde(rename = "a", with = "action_name")]
    pub action: Action,
    /// The organization slug.
    #[serde(rename = "o")]
    pub org: String,
    /// The pipeline slug.
    #[serde(rename = "p")]
    pub pipeline: String,
    /// The build number.
    #[serde(rename = "b")]
    pub build: u64,
    /// The job, for an action on one job.
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The build's branch, which policies judge.
    #[serde(rename = "br")]
    pub branch: String,
    /// The route that rendered the button.
    #[serde(rename = "r")]
    pub route: String,
    /// The destination it was posted to.
    #[serde(rename = "d")]
    pub destination: String,
    /// When it stops acting, in seconds since the Unix epoch.
    #[serde(rename = "e")]
    pub expires: i64,
    /// Single use: the store claims it once.
    #[serde(rename = "n")]
    pub nonce: String,
}

impl Grant {
    /// What it acts on, for people and the audit: `acme/web-app#1842` (and the job).
    pub fn target(&self) -> String {
        match &self.job {
            Some(job) => format!("{}/{}#{} job {job}", self.org, self.pipeline, self.build),
            None => format!("{}/{}#{}", self.org, self.pipeline, self.build),
        }
    }
}

mod action_name {
    use super::Action;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let name = String::deserialize(d)?;
        Action::parse(&name).ok_or_else(|| serde::de::Error::custom("unknown action"))
    }
}

/// Why a token does not act.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a token at all.
    #[error("not a kitebridge button token")]
    Malformed,
    /// Signed by no key this service has: forged or tampered with.
    #[error(
        "the button's signature does not match (forged, tampered with, or signed by a key no longer configured)"
    )]
    Forged,
    /// Past its expiry.
    #[error("the button expired")]
    Expired,
}

/// A key derived from `key` for one `purpose`, so one configured secret serves several uses
/// that can never be mistaken for each other.
fn subkey(key: &Secret, purpose: &str) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key");
    mac.update(b"kitebridge:");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

fn mac(key: &Secret, purpose: &str, data: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&subkey(key, purpose)).expect("HMAC takes any key");
    mac.update(data.as_bytes());
    mac
}

/// The MAC of `data` for `purpose` with `key` (the first of the configured keys), base64url.
pub fn tag(key: &Secret, purpose: &str, data: &str) -> String {
    B64.encode(mac(key, purpose, data).finalize().into_bytes())
}

/// Whether `given` is the MAC of `data` for `purpose` by one of `keys` (compared in constant
/// time).
pub fn tag_ok(keys: &[Secret], purpose: &str, data: &str, given: &str) -> bool {
    let Ok(given) = B64.decode(given.trim()) else {
        return false;
    };
    keys.iter()
        .any(|k| mac(k, purpose, data).verify_slice(&given).is_ok())
}

/// `value` as base64url JSON and its MAC for `purpose`: `<data>.<tag>`.
pub fn seal<T: Serialize>(key: &Secret, purpose: &str, value: &T) -> String {
    let data = B64.encode(serde_json::to_vec(value).expect("sealed values serialise"));
    let tag = tag(key, purpose, &data);
    format!("{data}.{tag}")
}

/// The value in `text` if one of `keys` sealed it for `purpose`. The MAC is checked (in
/// constant time) before anything inside is read.
pub fn open<T: DeserializeOwned>(
    keys: &[Secret],
    purpose: &str,
    text: &str,
) -> Result<T, TokenError> {
    let (data, given) = text.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let given = B64.decode(given).map_err(|_| TokenError::Malformed)?;
    if !keys
        .iter()
        .any(|k| mac(k, purpose, data).verify_slice(&given).is_ok())
    {
        return Err(TokenError::Forged);
    }
    let json = B64.decode(data).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

/// The token for `grant`, signed with `key`.
pub fn sign(grant: &Grant, key: &Secret) -> String {
    format!("{PREFIX}{}", seal(key, "button", grant))
}

/// The grant in `token` if one of `keys` signed it and it has not expired at `now` (seconds).
pub fn verify(token: &str, keys: &[Secret], now: i64) -> Result<Grant, TokenError> {
    let token = token.trim();
    let sealed = token
        .strip_prefix(PREFIX)
        .filter(|_| token.len() <= 4096)
        .ok_or(TokenError::Malformed)?;
    let grant: Grant = open(keys, "button", sealed)?;
    if grant.expires <= now {
        return Err(TokenError::Expired);
    }
    Ok(grant)
}

/// A nonce that is the same each time one event's button for one action is rendered (a
/// retried delivery, a second destination, after a key rotation), so the action is done once
/// per alert, whatever channel it is pressed in; random where there is no stored event
/// (`render`). It need not be secret: the token's MAC covers it.
pub fn nonce(event_id: Option<i64>, action: Action) -> String {
    match event_id {
        Some(id) => {
            use sha2::Digest;
            let hash = Sha256::digest(format!("kitebridge-nonce:{id}:{action}").as_bytes());
            B64.encode(&hash[..16])
        }
        None => {
            let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            B64.encode(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            action: Action::Rebuild,
            org: "acme".into(),
            pipeline: "web-app".into(),
            build: 1842,
            job: None,
            branch: "main".into(),
            route: "failures".into(),
            destination: "team-slack".into(),
            expires: 2_000,
            nonce: "abc".into(),
        }
    }

    fn key(s: &str) -> Secret {
        Secret::new(s)
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let k = key("a-signing-key-of-enough-length-000");
        let t = sign(&grant(), &k);
        assert_eq!(verify(&t, std::slice::from_ref(&k), 1_999), Ok(grant()));
        assert_eq!(verify(&t, &[k], 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn previous_keys_still_verify_and_unknown_keys_do_not() {
        let (old, new) = (
            key("old-key-old-key-old-key-old-key-1"),
            key("new-key-new-key-new-key-new-key-2"),
        );
        let t = sign(&grant(), &old);
        assert!(verify(&t, &[new.clone(), old], 0).is_ok());
        assert_eq!(verify(&t, &[new], 0), Err(TokenError::Forged));
    }

    #[test]
    fn tampering_with_any_part_is_forgery() {
        let k = key("a-signing-key-of-enough-length-000");
        let t = sign(&grant(), &k);
        let (body, tag) = t.rsplit_once('.').unwrap();
        let mut changed = grant();
        changed.action = Action::Cancel;
        let swapped = format!(
            "{PREFIX}{}.{tag}",
            B64.encode(serde_json::to_vec(&changed).unwrap())
        );
        assert_eq!(
            verify(&swapped, std::slice::from_ref(&k), 0),
            Err(TokenError::Forged)
        );
        let mut bytes = body.as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{}.{tag}", String::from_utf8(bytes).unwrap());
        assert_eq!(
            verify(&flipped, std::slice::from_ref(&k), 0),
            Err(TokenError::Forged)
        );
        assert_eq!(
            verify("nonsense", std::slice::from_ref(&k), 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(verify("kb1.x", &[k], 0), Err(TokenError::Malformed));
    }

    #[test]
    fn nonces_are_stable_per_event_and_action() {
        assert_eq!(
            nonce(Some(7), Action::Rebuild),
            nonce(Some(7), Action::Rebuild)
        );
        assert_ne!(
            nonce(Some(7), Action::Rebuild),
            nonce(Some(8), Action::Rebuild)
        );
        assert_ne!(
            nonce(Some(7), Action::Rebuild),
            nonce(Some(7), Action::Cancel)
        );
        assert_ne!(nonce(None, Action::Rebuild), nonce(None, Action::Rebuild));
    }
}
