//! Buildkite webhook authentication: the plain token and the HMAC-SHA256 signature.
//!
//! Pure functions over header values and raw body bytes; the clock is a parameter so the
//! published signature vector can be checked with its own timestamp.

use crate::event::VerifiedBody;
use crate::secret::Secret;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Which Buildkite header a request must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Only `X-Buildkite-Signature` (recommended: the token never travels).
    Signature,
    /// Only `X-Buildkite-Token`.
    Token,
    /// Whichever arrives; the signature wins when both do.
    Auto,
}

/// Why a request is not authentic (answered with 401). Messages say which check failed,
/// never what was expected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// Neither header arrived.
    #[error("missing X-Buildkite-Signature or X-Buildkite-Token header")]
    Missing,
    /// A token arrived but only signatures are accepted.
    #[error("X-Buildkite-Signature header required (token auth is disabled)")]
    SignatureRequired,
    /// A signature arrived but only tokens are accepted.
    #[error("X-Buildkite-Token header required (signature auth is disabled)")]
    TokenRequired,
    /// A header appeared more than once or is not text.
    #[error("{0} header must appear once, as text")]
    BadHeader(&'static str),
    /// The signature header is not `timestamp=<unix seconds>,signature=<64 hex digits>`.
    #[error("malformed X-Buildkite-Signature header: {0}")]
    MalformedSignature(&'static str),
    /// The signature's timestamp is too far from now.
    #[error("signature timestamp is outside the replay window")]
    Stale,
    /// The signature does not match the body under any configured token.
    #[error("signature does not match")]
    BadSignature,
    /// The token matches no configured token.
    #[error("token does not match")]
    BadToken,
}

/// A parsed `X-Buildkite-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// Unix seconds the signature was made at.
    pub timestamp: i64,
    /// The HMAC-SHA256 digest.
    pub digest: [u8; 32],
}

impl SignatureHeader {
    /// Parses `timestamp=<digits>,signature=<64 hex>`; other `key=value` parts are ignored so a
    /// future scheme added beside these does not break verification.
    pub fn parse(header: &str) -> Result<Self, AuthError> {
        let (mut timestamp, mut digest) = (None, None);
        for part in header.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(AuthError::MalformedSignature("expected key=value parts"))?;
            match key {
                "timestamp" if timestamp.is_some() => {
                    return Err(AuthError::MalformedSignature("timestamp given twice"));
                }
                "signature" if digest.is_some() => {
                    return Err(AuthError::MalformedSignature("signature given twice"));
                }
                "timestamp" => timestamp = Some(parse_timestamp(value)?),
                "signature" => digest = Some(parse_digest(value)?),
                _ => {}
            }
        }
        Ok(Self {
            timestamp: timestamp.ok_or(AuthError::MalformedSignature("no timestamp"))?,
            digest: digest.ok_or(AuthError::MalformedSignature("no signature"))?,
        })
    }
}

fn parse_timestamp(value: &str) -> Result<i64, AuthError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::MalformedSignature(
            "timestamp is not unix seconds",
        ));
    }
    value
        .parse()
        .map_err(|_| AuthError::MalformedSignature("timestamp is out of range"))
}

fn parse_digest(value: &str) -> Result<[u8; 32], AuthError> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(value, &mut digest)
        .map_err(|_| AuthError::MalformedSignature("signature is not 64 hex digits"))?;
    Ok(digest)
}

/// What the caller presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// `X-Buildkite-Token`.
    Token(String),
    /// `X-Buildkite-Signature`, parsed.
    Signature(SignatureHeader),
}

/// The configured tokens and rules.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The current token first, then `previous_tokens`.
    pub tokens: Vec<Secret>,
    /// Which header is required.
    pub mode: AuthMode,
    /// How far a signature timestamp may be from now, either way.
    pub replay_window: Duration,
}

impl Credentials {
    /// Picks the credential to check from the two header values (each `None` when absent).
    pub fn presented(
        &self,
        token: Option<&str>,
        signature: Option<&str>,
    ) -> Result<Presented, AuthError> {
        match (self.mode, token, signature) {
            (AuthMode::Token, _, Some(_)) if token.is_none() => Err(AuthError::TokenRequired),
            (AuthMode::Signature, Some(_), None) => Err(AuthError::SignatureRequired),
            (AuthMode::Signature | AuthMode::Auto, _, Some(sig)) => {
                SignatureHeader::parse(sig).map(Presented::Signature)
            }
            (AuthMode::Token | AuthMode::Auto, Some(token), _) => {
                Ok(Presented::Token(token.to_string()))
            }
            _ => Err(AuthError::Missing),
        }
    }

    /// Checks a token against every configured token, each in constant time.
    pub fn check_token(&self, token: &str) -> Result<(), AuthError> {
        let matches = self
            .tokens
            .iter()
            .fold(false, |acc, t| acc | secret_eq(t.expose(), token));
        if matches {
            Ok(())
        } else {
            Err(AuthError::BadToken)
        }
    }

    /// Checks a signature over `body` at time `now` (unix seconds).
    pub fn check_signature(
        &self,
        sig: &SignatureHeader,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        if now.abs_diff(sig.timestamp) > self.replay_window.as_secs() {
            return Err(AuthError::Stale);
        }
        let any = self.tokens.iter().any(|token| {
            mac(token.expose(), sig.timestamp, body)
                .verify_slice(&sig.digest)
                .is_ok()
        });
        if any {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    /// Checks what was presented against `body`; the only way to a [`VerifiedBody`] from the
    /// network.
    pub fn verify(
        &self,
        presented: &Presented,
        body: Bytes,
        now: i64,
    ) -> Result<VerifiedBody, AuthError> {
        match presented {
            Presented::Token(token) => self.check_token(token)?,
            Presented::Signature(sig) => self.check_signature(sig, &body, now)?,
        }
        Ok(VerifiedBody::trusted(body))
    }
}

/// Compares a secret with a presented value in constant time. Both are hashed first, so the
/// time taken does not depend on where they differ, nor reveal the secret's length.
pub fn secret_eq(secret: &str, presented: &str) -> bool {
    let a = Sha256::digest(secret.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// Buildkite's MAC: HMAC-SHA256 keyed with the token over `<timestamp>.<body>`.
fn mac(token: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Signs `body` as Buildkite does; for tests, benchmarks and `send-test` style tooling.
pub fn sign(token: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "timestamp={timestamp},signature={}",
        hex::encode(mac(token, timestamp, body).finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
    const VECTOR_HEADER: &str = "timestamp=1642080837,signature=582d496ac2d869dd97a3101c4cda346288c49a742592daf582ec64c86449f79c";
    const PING: &[u8] = include_bytes!("../tests/fixtures/buildkite/ping.json");

    fn creds(mode: AuthMode, tokens: &[&str]) -> Credentials {
        Credentials {
            tokens: tokens.iter().map(|t| Secret::new(*t)).collect(),
            mode,
            replay_window: Duration::from_secs(300),
        }
    }

    #[test]
    fn published_signature_vector_verifies_at_its_own_time() {
        let c = creds(AuthMode::Signature, &[VECTOR_SECRET]);
        let sig = SignatureHeader::parse(VECTOR_HEADER).unwrap();
        assert_eq!(c.check_signature(&sig, PING, 1_642_080_837), Ok(()));
        assert_eq!(c.check_signature(&sig, PING, 1_642_080_837 + 299), Ok(()));
        assert_eq!(sign(VECTOR_SECRET, 1_642_080_837, PING), VECTOR_HEADER);
    }

    #[test]
    fn vector_is_stale_today_and_wrong_under_another_key_or_body() {
        let sig = SignatureHeader::parse(VECTOR_HEADER).unwrap();
        let c = creds(AuthMode::Auto, &[VECTOR_SECRET]);
        assert_eq!(
            c.check_signature(&sig, PING, 1_800_000_000),
            Err(AuthError::Stale)
        );
        assert_eq!(
            c.check_signature(&sig, PING, 1_642_080_837 - 301),
            Err(AuthError::Stale)
        );
        let other = creds(AuthMode::Auto, &["another"]);
        assert_eq!(
            other.check_signature(&sig, PING, 1_642_080_837),
            Err(AuthError::BadSignature)
        );
        let mut body = PING.to_vec();
        body.push(b' ');
        assert_eq!(
            c.check_signature(&sig, &body, 1_642_080_837),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn previous_tokens_still_verify_during_rotation() {
        let c = creds(AuthMode::Auto, &["new-token", VECTOR_SECRET]);
        let sig = SignatureHeader::parse(VECTOR_HEADER).unwrap();
        assert_eq!(c.check_signature(&sig, PING, 1_642_080_837), Ok(()));
        assert_eq!(c.check_token(VECTOR_SECRET), Ok(()));
        assert_eq!(c.check_token("new-token"), Ok(()));
        assert_eq!(c.check_token("new-toke"), Err(AuthError::BadToken));
        assert_eq!(c.check_token(""), Err(AuthError::BadToken));
    }

    #[test]
    fn parses_signature_headers_strictly() {
        let good =
            SignatureHeader::parse(&(" timestamp=1 , signature=".to_string() + &"ab".repeat(32)));
        assert!(good.is_ok());
        let bad = [
            "",
            "timestamp=1",
            &format!("signature={}", "ab".repeat(32)),
            &format!("timestamp=,signature={}", "ab".repeat(32)),
            &format!("timestamp=-5,signature={}", "ab".repeat(32)),
            &format!(
                "timestamp=99999999999999999999999,signature={}",
                "ab".repeat(32)
            ),
            "timestamp=1,signature=abc",
            &format!("timestamp=1,signature={}", "zz".repeat(32)),
            &format!("timestamp=1,signature={}", "ab".repeat(33)),
            &format!("timestamp=1,timestamp=2,signature={}", "ab".repeat(32)),
            "garbage",
        ];
        for header in bad {
            assert!(
                matches!(
                    SignatureHeader::parse(header),
                    Err(AuthError::MalformedSignature(_))
                ),
                "{header:?}"
            );
        }
    }

    #[test]
    fn mode_decides_which_header_counts() {
        let sig = format!("timestamp=1,signature={}", "ab".repeat(32));
        let cases = [
            (AuthMode::Auto, Some("t"), None, Ok("token")),
            (AuthMode::Auto, None, Some(sig.as_str()), Ok("signature")),
            (
                AuthMode::Auto,
                Some("t"),
                Some(sig.as_str()),
                Ok("signature"),
            ),
            (AuthMode::Auto, None, None, Err(AuthError::Missing)),
            (AuthMode::Token, Some("t"), None, Ok("token")),
            (AuthMode::Token, Some("t"), Some(sig.as_str()), Ok("token")),
            (
                AuthMode::Token,
                None,
                Some(sig.as_str()),
                Err(AuthError::TokenRequired),
            ),
            (
                AuthMode::Signature,
                Some("t"),
                None,
                Err(AuthError::SignatureRequired),
            ),
            (
                AuthMode::Signature,
                None,
                Some(sig.as_str()),
                Ok("signature"),
            ),
            (AuthMode::Signature, None, None, Err(AuthError::Missing)),
        ];
        for (mode, token, signature, want) in cases {
            let got = creds(mode, &["t"])
                .presented(token, signature)
                .map(|p| match p {
                    Presented::Token(_) => "token",
                    Presented::Signature(_) => "signature",
                });
            assert_eq!(got, want, "{mode:?} {token:?} {signature:?}");
        }
    }

    #[test]
    fn errors_never_show_the_expected_value() {
        let c = creds(AuthMode::Auto, &["s3cr3t"]);
        let sig = SignatureHeader::parse(&sign("wrong", 100, b"{}")).unwrap();
        let errs = [
            c.check_token("nope").unwrap_err(),
            c.check_signature(&sig, b"{}", 100).unwrap_err(),
        ];
        for e in errs {
            assert!(!e.to_string().contains("s3cr3t"));
        }
    }
}
