//! An OpenID Connect relying party: the authorization code flow with PKCE (S256), so a person
//! pressing a button in Teams can prove who they are by signing in (Microsoft Entra ID is the
//! expected provider; any compliant one works).
//!
//! [`Oidc::begin`] gives the sign-in URL and the one-time values (`state`, `nonce`, PKCE
//! verifier) the caller keeps until the callback; [`Oidc::finish`] swaps the code for an
//! `id_token` and checks it with [`verify_id_token`], a pure function written here with ring so
//! every check is visible and tested: only RS256 and ES256 signatures (never `none` or an
//! HMAC, which a client secret could forge), the issuer, the audience, the times, the nonce.
//!
//! Entra's multi-tenant `common` endpoint publishes an issuer with a `{tenantid}` placeholder,
//! which never equals a token's issuer: configure a tenant's own issuer
//! (`https://login.microsoftonline.com/{tenant}/v2.0`).

use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use ring::rand::SecureRandom;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one request may take, from connecting to the end of the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a discovery document is used before it is fetched again.
const DISCOVERY_FOR: Duration = Duration::from_secs(60 * 60);

/// How long a key set is used before it is fetched again, even when every `kid` is known, so a
/// key the provider withdrew stops being trusted.
const JWKS_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// Clock difference tolerated between this host and the provider.
const LEEWAY_SECS: i64 = 60;

/// The most of an answer read; a discovery document or key set is a few KiB.
const ANSWER_BYTES: usize = 1024 * 1024;

/// The most often an unknown key id makes the key set be fetched again.
const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Random bytes in each `state`, `nonce` and verifier (43 characters once encoded, the
/// shortest PKCE verifier RFC 7636 allows, with 256 bits of entropy).
const RANDOM_BYTES: usize = 32;

/// A relying party for one provider and one registered client.
#[derive(Debug)]
pub struct Oidc {
    client: reqwest::Client,
    issuer: String,
    client_id: String,
    client_secret: Secret,
    redirect_uri: String,
    timeout: Duration,
    discovery: Mutex<Option<(Instant, Arc<Discovery>)>>,
    jwks: Mutex<Option<(Instant, String, Arc<Jwks>)>>,
    /// When a fetch of the key set was last forced by an unknown key.
    forced: Mutex<Option<Instant>>,
}

/// Where to send the browser, and the values to keep (in a signed cookie, say) until the
/// callback: compare `state` with the callback's, pass `verifier` and `nonce` to
/// [`Oidc::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The provider's authorization URL with every parameter.
    pub url: String,
    /// The `state` the callback must bring back (against cross-site request forgery).
    pub state: String,
    /// The `nonce` the id_token must carry (against a replayed token).
    pub nonce: String,
    /// The PKCE code verifier (against a stolen code).
    pub verifier: String,
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's stable id for the person (`sub`).
    pub subject: String,
    /// The `email` claim, when the provider says it is verified (`email_verified`, or Entra's
    /// `xms_edov`).
    pub email: Option<String>,
    /// The `name` claim.
    pub name: Option<String>,
    /// The issuer that vouched for them.
    pub issuer: String,
}

/// What an id_token must say to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The issuer (a trailing slash on either side is ignored).
    pub issuer: String,
    /// This client's id, which must be an audience.
    pub client_id: String,
    /// The nonce sent in the authorization request.
    pub nonce: String,
}

/// The checked claims of an id_token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`, as a list.
    pub audience: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires: i64,
    /// `iat`, seconds since the epoch.
    pub issued: i64,
    /// `email`.
    pub email: Option<String>,
    /// `email_verified` (or Entra's `xms_edov`), when present.
    pub email_verified: Option<bool>,
    /// `name`.
    pub name: Option<String>,
}

/// A JSON Web Key Set: the provider's public signing keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Jwks {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

/// One public key of a [`Jwks`] (only the members used here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA` or `EC`.
    #[serde(default)]
    pub kty: String,
    /// Key id, matched against the token header's `kid`.
    pub kid: Option<String>,
    /// The algorithm the key is for, when the provider says.
    pub alg: Option<String>,
    /// `sig` for a signing key, when the provider says.
    #[serde(rename = "use")]
    pub use_: Option<String>,
    /// RSA modulus, base64url.
    pub n: Option<String>,
    /// RSA exponent, base64url.
    pub e: Option<String>,
    /// EC curve (`P-256`).
    pub crv: Option<String>,
    /// EC x coordinate, base64url.
    pub x: Option<String>,
    /// EC y coordinate, base64url.
    pub y: Option<String>,
}

impl Jwks {
    /// Parses a key set document.
    pub fn parse(json: &[u8]) -> Result<Self, OidcError> {
        serde_json::from_slice(json)
            .map_err(|e| OidcError::Provider(format!("the key set is not a JWKS: {e}")))
    }
}

/// Why a sign-in failed. Each id_token check has its own variant so a log says which failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached, or answered a non-2xx (not the token endpoint).
    #[error("the sign-in provider is unreachable: {0}")]
    Unreachable(String),
    /// The provider's discovery document or key set is unusable.
    #[error("the sign-in provider is misconfigured: {0}")]
    Provider(String),
    /// The token endpoint refused the code (`invalid_grant`: expired, used, or a wrong
    /// verifier; `invalid_client`: the client secret).
    #[error("the sign-in provider refused the code ({status}): {error}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` (and `error_description`), or the status text.
        error: String,
    },
    /// The token endpoint gave no id_token.
    #[error("the sign-in provider sent no id_token")]
    NoIdToken,
    /// The id_token is not a well-formed JWT.
    #[error("the id_token is malformed: {0}")]
    Malformed(String),
    /// The id_token uses an algorithm other than RS256 or ES256 (`none`, `HS256`, …).
    #[error("the id_token's algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No key in the provider's key set matches the id_token's `kid` and algorithm.
    #[error("no signing key {0:?} in the provider's key set")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the id_token's signature is not valid")]
    Signature,
    /// `iss` is not the configured issuer.
    #[error("the id_token comes from issuer {0:?}")]
    Issuer(String),
    /// `aud` does not contain this client, or `azp` names another.
    #[error("the id_token is not meant for this client")]
    Audience,
    /// `exp` has passed.
    #[error("the id_token has expired")]
    Expired,
    /// `iat` is in the future.
    #[error("the id_token is issued in the future")]
    NotYetValid,
    /// `nonce` is missing or not the one sent.
    #[error("the id_token's nonce does not match")]
    Nonce,
    /// A required claim is missing.
    #[error("the id_token has no {0:?} claim")]
    MissingClaim(&'static str),
    /// The system random number generator failed.
    #[error("no randomness available")]
    Random,
}

/// The parts of the discovery document used.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

impl Oidc {
    /// A relying party for `issuer` (e.g. `https://login.microsoftonline.com/{tenant}/v2.0`)
    /// as client `client_id`, called back at `redirect_uri` (exactly as registered). `client`
    /// should come from [`crate::destination::client`].
    pub fn new(
        client: reqwest::Client,
        issuer: &str,
        client_id: &str,
        client_secret: Secret,
        redirect_uri: &str,
    ) -> Self {
        Self {
            client,
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            client_secret,
            redirect_uri: redirect_uri.to_string(),
            timeout: TIMEOUT,
            discovery: Mutex::new(None),
            jwks: Mutex::new(None),
            forced: Mutex::new(None),
        }
    }

    /// The same relying party with another per-request timeout (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where to send the browser to sign in (scope `openid email profile`, response type
    /// `code`, PKCE S256), with fresh random `state`, `nonce` and verifier.
    pub async fn begin(&self) -> Result<Login, OidcError> {
        let discovery = self.discovery().await?;
        let state = random_token()?;
        let nonce = random_token()?;
        let verifier = random_token()?;
        let mut url = reqwest::Url::parse(&discovery.authorization_endpoint).map_err(|e| {
            OidcError::Provider(format!("the authorization endpoint is not a URL: {e}"))
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid email profile")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Login {
            url: url.into(),
            state,
            nonce,
            verifier,
        })
    }

    /// Swaps `code` (from the callback) for tokens at the token endpoint, with the `verifier`
    /// and `nonce` that [`Oidc::begin`] gave, and checks the id_token (see
    /// [`verify_id_token`]).
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let discovery = self.discovery().await?;
        let id_token = self.exchange(&discovery, code, verifier).await?;
        let expected = Expected {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            nonce: nonce.to_string(),
        };
        let now = chrono::Utc::now().timestamp();
        let jwks = self.jwks(&discovery.jwks_uri, false).await?;
        let claims = match verify_id_token(&id_token, &jwks, &expected, now) {
            // The provider may have rolled its keys since the set was fetched: fetch it once
            // more before giving up on the key.
            Err(OidcError::UnknownKey(_)) => {
                let jwks = self.jwks(&discovery.jwks_uri, true).await?;
                verify_id_token(&id_token, &jwks, &expected, now)?
            }
            other => other?,
        };
        Ok(identity(claims))
    }

    /// The discovery document, fetched at most once an hour; its issuer must be the
    /// configured one (OpenID Connect Discovery §4.3), or tokens could name any issuer.
    async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        // The lock is taken and let go in a plain function: a guard held over an `.await`
        // would make the future not `Send`.
        if let Some(discovery) = self.cached_discovery() {
            return Ok(discovery);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|e| {
            OidcError::Provider(format!("the discovery document is not usable: {e}"))
        })?;
        if !same_issuer(&discovery.issuer, &self.issuer) {
            return Err(OidcError::Provider(format!(
                "the discovery document names issuer {:?}, not the configured {:?}",
                discovery.issuer, self.issuer
            )));
        }
        let discovery = Arc::new(discovery);
        *lock(&self.discovery) = Some((Instant::now(), discovery.clone()));
        Ok(discovery)
    }

    /// The key set at `uri`, from the cache unless `refresh` (or it is old or from another URI).
    async fn jwks(&self, uri: &str, refresh: bool) -> Result<Arc<Jwks>, OidcError> {
        if let Some(jwks) = self.cached_jwks(uri) {
            // A token naming an unknown key forces a fetch, but only once a minute: anyone
            // can send such a token, and each would otherwise cost a request to the provider.
            let mut forced = lock(&self.forced);
            let throttled = forced.is_some_and(|at| at.elapsed() < FORCED_REFRESH_EVERY);
            if !refresh || throttled {
                return Ok(jwks);
            }
            *forced = Some(Instant::now());
        }
        let jwks = Arc::new(Jwks::parse(&self.get(uri).await?)?);
        *lock(&self.jwks) = Some((Instant::now(), uri.to_string(), jwks.clone()));
        Ok(jwks)
    }

    fn cached_discovery(&self) -> Option<Arc<Discovery>> {
        let cached = lock(&self.discovery);
        let (at, discovery) = cached.as_ref()?;
        (at.elapsed() < DISCOVERY_FOR).then(|| discovery.clone())
    }

    fn cached_jwks(&self, uri: &str) -> Option<Arc<Jwks>> {
        let cached = lock(&self.jwks);
        let (at, from, jwks) = cached.as_ref()?;
        (from == uri && at.elapsed() < JWKS_FOR).then(|| jwks.clone())
    }

    /// POSTs the code to the token endpoint; gives back the id_token.
    async fn exchange(
        &self,
        discovery: &Discovery,
        code: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        // RFC 6749 allows one client authentication method per request. The secret goes in
        // the form (client_secret_post, which Entra takes) unless the provider lists only
        // HTTP Basic.
        let basic = discovery
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                !m.iter().any(|m| m == "client_secret_post")
                    && m.iter().any(|m| m == "client_secret_basic")
            });
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("client_id", &self.client_id),
            ("code_verifier", verifier),
        ];
        if !basic {
            form.push(("client_secret", self.client_secret.expose()));
        }
        let mut request = self
            .client
            .post(&discovery.token_endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(form_encode(&form));
        if basic {
            // RFC 6749 §2.3.1: both parts form-encoded before the Basic encoding.
            let credentials = format!(
                "{}:{}",
                form_encode(&[("", &self.client_id)]).trim_start_matches('='),
                form_encode(&[("", self.client_secret.expose())]).trim_start_matches('=')
            );
            request = request.header(
                AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(credentials)),
            );
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(&e, self.timeout))?;
        let status = response.status().as_u16();
        let body = super::transport::read_capped(response, ANSWER_BYTES)
            .await
            .map_err(|e| unreachable(&e, self.timeout))?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let mut error = answer
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| status_text(status));
            if let Some(description) = answer.get("error_description").and_then(Value::as_str) {
                error.push_str(": ");
                error.extend(description.chars().take(300));
            }
            return Err(OidcError::Refused { status, error });
        }
        answer
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(OidcError::NoIdToken)
    }

    /// GETs a provider document.
    async fn get(&self, url: &str) -> Result<Vec<u8>, OidcError> {
        let response = self
            .client
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| unreachable(&e, self.timeout))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(OidcError::Unreachable(format!(
                "{url} answered {status} {}",
                status_text(status)
            )));
        }
        super::transport::read_capped(response, ANSWER_BYTES)
            .await
            .map_err(|e| unreachable(&e, self.timeout))
    }
}

/// Checks an id_token and gives back its claims: the header's `alg` is RS256 or ES256, a key in
/// `jwks` with the header's `kid` (or the only suitable key, when the token names none)
/// verifies the signature, `iss` is the expected issuer, `aud` contains the client (with `azp`
/// naming it when present or when there are several audiences), `exp` is after `now_secs`
/// and `iat` not after it (each with 60 s of leeway), `nonce` is the expected one and `sub` is
/// there. Pure, so every check is unit-tested.
pub fn verify_id_token(
    jwt: &str,
    jwks: &Jwks,
    expected: &Expected,
    now_secs: i64,
) -> Result<Claims, OidcError> {
    let mut parts = jwt.trim().split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed("not three dot-separated parts".into()));
    };
    let header: Value = decode_json(header_b64, "header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = match alg {
        "RS256" => Alg::Rs256,
        "ES256" => Alg::Es256,
        other => return Err(OidcError::Algorithm(other.to_string())),
    };
    let kid = header.get("kid").and_then(Value::as_str);
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| OidcError::Malformed("the signature is not base64url".into()))?;
    let key = find_key(jwks, alg, kid)?;
    let signed = &jwt.trim().as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    verify_signature(key, alg, signed, &signature)?;

    // Only now, with the signature good, are the claims worth reading.
    let payload: Value = decode_json(payload_b64, "payload")?;
    let text = |key: &str| {
        payload
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let issuer = text("iss").ok_or(OidcError::MissingClaim("iss"))?;
    if !same_issuer(&issuer, &expected.issuer) {
        return Err(OidcError::Issuer(issuer));
    }
    let audience: Vec<String> = match payload.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => return Err(OidcError::MissingClaim("aud")),
    };
    if !audience.contains(&expected.client_id) {
        return Err(OidcError::Audience);
    }
    let azp = text("azp");
    if (audience.len() > 1 || azp.is_some()) && azp.as_deref() != Some(&expected.client_id) {
        return Err(OidcError::Audience);
    }
    let expires = number(&payload, "exp").ok_or(OidcError::MissingClaim("exp"))?;
    if now_secs >= expires.saturating_add(LEEWAY_SECS) {
        return Err(OidcError::Expired);
    }
    let issued = number(&payload, "iat").ok_or(OidcError::MissingClaim("iat"))?;
    if issued > now_secs.saturating_add(LEEWAY_SECS) {
        return Err(OidcError::NotYetValid);
    }
    let nonce = text("nonce").ok_or(OidcError::Nonce)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        nonce.as_bytes(),
        expected.nonce.as_bytes(),
    )) {
        return Err(OidcError::Nonce);
    }
    let subject = text("sub").ok_or(OidcError::MissingClaim("sub"))?;
    Ok(Claims {
        issuer,
        subject,
        audience,
        expires,
        issued,
        email: text("email"),
        // Entra ID sends no `email_verified`; its optional claim `xms_edov` ("email domain
        // owner verified") says the same.
        email_verified: ["email_verified", "xms_edov"].iter().find_map(|k| {
            payload.get(*k).and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                // Some providers send the boolean as a string.
                Value::String(s) => s.parse().ok(),
                _ => None,
            })
        }),
        name: text("name"),
    })
}

/// The signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

/// The key that should have signed: the one with the token's `kid` if it names one (it must
/// suit the algorithm), else the only key that suits it.
fn find_key<'a>(jwks: &'a Jwks, alg: Alg, kid: Option<&str>) -> Result<&'a Jwk, OidcError> {
    let suits = |k: &&Jwk| {
        let (kty, name) = match alg {
            Alg::Rs256 => ("RSA", "RS256"),
            Alg::Es256 => ("EC", "ES256"),
        };
        k.kty == kty
            && k.alg.as_deref().is_none_or(|a| a == name)
            && k.use_.as_deref().is_none_or(|u| u == "sig")
    };
    let unknown = || OidcError::UnknownKey(kid.unwrap_or("").to_string());
    match kid {
        Some(kid) => jwks
            .keys
            .iter()
            .filter(suits)
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(unknown),
        None => {
            let mut suitable = jwks.keys.iter().filter(suits);
            match (suitable.next(), suitable.next()) {
                (Some(only), None) => Ok(only),
                _ => Err(unknown()),
            }
        }
    }
}

fn verify_signature(key: &Jwk, alg: Alg, signed: &[u8], sig: &[u8]) -> Result<(), OidcError> {
    let member = |value: &Option<String>, name: &str| {
        let value = value
            .as_deref()
            .ok_or_else(|| OidcError::Provider(format!("a key has no {name:?}")))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| OidcError::Provider(format!("a key's {name:?} is not base64url")))
    };
    let verified = match alg {
        Alg::Rs256 => {
            let n = member(&key.n, "n")?;
            let e = member(&key.e, "e")?;
            // Below 2048 bits is refused by the algorithm itself.
            RsaPublicKeyComponents { n: &n, e: &e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                signed,
                sig,
            )
        }
        Alg::Es256 => {
            if key.crv.as_deref() != Some("P-256") {
                return Err(OidcError::Provider("an EC key is not on P-256".into()));
            }
            let x = member(&key.x, "x")?;
            let y = member(&key.y, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(OidcError::Provider("a P-256 key has the wrong size".into()));
            }
            // The uncompressed point ring expects: 0x04 ‖ x ‖ y.
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // JWS ES256 signatures are r ‖ s, the "fixed" form.
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point).verify(signed, sig)
        }
    };
    verified.map_err(|_| OidcError::Signature)
}

/// Who the claims describe. Policies decide by email, so only an email the provider says it
/// verified counts: `preferred_username` and `upn` can be changed by their owner (and an
/// unverified `email` can be anything), so neither stands in for one.
fn identity(claims: Claims) -> Identity {
    let email = claims
        .email
        .clone()
        .filter(|e| claims.email_verified == Some(true) && e.contains('@') && !e.contains('#'));
    Identity {
        subject: claims.subject,
        email,
        name: claims.name,
        issuer: claims.issuer,
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, OidcError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcError::Malformed(format!("the {what} is not base64url")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| OidcError::Malformed(format!("the {what} is not JSON")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(OidcError::Malformed(format!("the {what} is not an object")))
    }
}

/// A NumericDate claim; a fractional one (allowed by RFC 7519) is cut to whole seconds.
fn number(payload: &Value, key: &str) -> Option<i64> {
    let value = payload.get(key)?;
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// 32 random bytes, base64url.
fn random_token() -> Result<String, OidcError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OidcError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The PKCE S256 challenge of `verifier`: base64url(SHA-256(verifier)).
fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// `application/x-www-form-urlencoded` (the WHATWG serializer: alphanumerics and `*-._` as
/// they are, space as `+`, every other byte `%XX`).
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str, out: &mut String| {
        for b in text.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    };
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(name, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cache is still a valid cache.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

/// A transport failure in words.
fn unreachable(e: &reqwest::Error, timeout: Duration) -> OidcError {
    OidcError::Unreachable(super::transport::describe(
        e,
        timeout,
        "the sign-in provider",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    const ISSUER: &str = "https://login.example.com/tenant/v2.0";
    const NOW: i64 = 1_700_000_000;
    const RSA_KEY: &[u8] = include_bytes!("../../tests/fixtures/oidc/rsa-test-key.pk8");

    struct Keys {
        rsa: RsaKeyPair,
        ec: EcdsaKeyPair,
        jwks: Jwks,
    }

    fn keys() -> Keys {
        let rng = ring::rand::SystemRandom::new();
        let rsa = RsaKeyPair::from_pkcs8(RSA_KEY).unwrap();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let point = ec.public_key().as_ref();
        let jwks = Jwks::parse(
            json!({"keys": [
                {"kty": "RSA", "kid": "rsa-1", "use": "sig",
                 "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)},
                {"kty": "EC", "kid": "ec-1", "crv": "P-256", "alg": "ES256",
                 "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        Keys { rsa, ec, jwks }
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "sub": "sub-123", "aud": "client-1", "exp": NOW + 600,
               "iat": NOW - 5, "nonce": "n-1", "email": "ana@example.com", "name": "Ana"})
    }

    fn expected() -> Expected {
        Expected {
            issuer: format!("{ISSUER}/"),
            client_id: "client-1".into(),
            nonce: "n-1".into(),
        }
    }

    fn sign(keys: &Keys, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match header["alg"].as_str() {
            Some("RS256") => {
                let mut sig = vec![0; keys.rsa.public().modulus_len()];
                keys.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                sig
            }
            Some("ES256") => keys
                .ec
                .sign(&rng, input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            _ => Vec::new(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn rs256(keys: &Keys, claims: &Value) -> String {
        sign(
            keys,
            json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}),
            claims,
        )
    }

    fn check(keys: &Keys, jwt: &str) -> Result<Claims, OidcError> {
        verify_id_token(jwt, &keys.jwks, &expected(), NOW)
    }

    fn with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn a_valid_rs256_token_passes() {
        let keys = keys();
        let claims = check(&keys, &rs256(&keys, &claims())).unwrap();
        assert_eq!(claims.subject, "sub-123");
        assert_eq!(claims.issuer, ISSUER);
        assert_eq!(claims.audience, ["client-1"]);
        assert_eq!(claims.email.as_deref(), Some("ana@example.com"));
        assert_eq!(claims.expires, NOW + 600);
    }

    #[test]
    fn a_valid_es256_token_passes() {
        let keys = keys();
        let jwt = sign(&keys, json!({"alg": "ES256", "kid": "ec-1"}), &claims());
        assert_eq!(check(&keys, &jwt).unwrap().subject, "sub-123");
    }

    #[test]
    fn a_token_without_kid_uses_the_only_suitable_key() {
        let keys = keys();
        let jwt = sign(&keys, json!({"alg": "ES256"}), &claims());
        assert!(check(&keys, &jwt).is_ok());
        let two_rsa = Jwks {
            keys: vec![keys.jwks.keys[0].clone(), keys.jwks.keys[0].clone()],
        };
        let jwt = sign(&keys, json!({"alg": "RS256"}), &claims());
        assert_eq!(
            verify_id_token(&jwt, &two_rsa, &expected(), NOW),
            Err(OidcError::UnknownKey(String::new()))
        );
    }

    #[test]
    fn a_wrong_signature_fails() {
        let keys = keys();
        let jwt = rs256(&keys, &claims());
        // Same header and signature over other claims.
        let other = rs256(&keys, &with(json!({"sub": "someone-else"})));
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_eq!(check(&keys, &forged), Err(OidcError::Signature));
        // An RS256 signature presented under the EC key's kid is not a valid ES256 one.
        let swapped = sign(&keys, json!({"alg": "ES256", "kid": "ec-1"}), &claims());
        let mixed = format!("{}.{}", &swapped[..swapped.rfind('.').unwrap()], parts[2]);
        assert_eq!(check(&keys, &mixed), Err(OidcError::Signature));
    }

    #[test]
    fn an_unknown_kid_fails() {
        let keys = keys();
        let jwt = sign(&keys, json!({"alg": "RS256", "kid": "rotated"}), &claims());
        assert_eq!(
            check(&keys, &jwt),
            Err(OidcError::UnknownKey("rotated".into()))
        );
        // A kid naming a key of the other type does not match either.
        let jwt = sign(&keys, json!({"alg": "RS256", "kid": "ec-1"}), &claims());
        assert_eq!(
            check(&keys, &jwt),
            Err(OidcError::UnknownKey("ec-1".into()))
        );
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let keys = keys();
        for alg in ["none", "HS256", "RS512", ""] {
            let jwt = sign(&keys, json!({"alg": alg, "kid": "rsa-1"}), &claims());
            assert_eq!(
                check(&keys, &jwt),
                Err(OidcError::Algorithm(alg.into())),
                "{alg}"
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        assert_eq!(
            check(&keys, &unsigned),
            Err(OidcError::Algorithm("none".into()))
        );
    }

    #[test]
    fn a_wrong_issuer_fails() {
        let keys = keys();
        let jwt = rs256(
            &keys,
            &with(json!({"iss": "https://evil.example.com/tenant/v2.0"})),
        );
        assert_eq!(
            check(&keys, &jwt),
            Err(OidcError::Issuer(
                "https://evil.example.com/tenant/v2.0".into()
            ))
        );
        let jwt = rs256(&keys, &with(json!({"iss": format!("{ISSUER}/")})));
        assert!(check(&keys, &jwt).is_ok(), "a trailing slash is tolerated");
    }

    #[test]
    fn a_wrong_audience_fails() {
        let keys = keys();
        for aud in [json!("other"), json!(["other", "more"]), json!([])] {
            let jwt = rs256(&keys, &with(json!({"aud": aud})));
            assert_eq!(check(&keys, &jwt), Err(OidcError::Audience), "{aud}");
        }
        let several = with(json!({"aud": ["client-1", "api"]}));
        assert_eq!(
            check(&keys, &rs256(&keys, &several)),
            Err(OidcError::Audience)
        );
        let mut with_azp = several.clone();
        with_azp["azp"] = json!("client-1");
        assert!(check(&keys, &rs256(&keys, &with_azp)).is_ok());
        let foreign_azp = with(json!({"azp": "someone"}));
        assert_eq!(
            check(&keys, &rs256(&keys, &foreign_azp)),
            Err(OidcError::Audience)
        );
        let missing = with(json!({"aud": null}));
        assert_eq!(
            check(&keys, &rs256(&keys, &missing)),
            Err(OidcError::MissingClaim("aud"))
        );
    }

    #[test]
    fn an_expired_token_fails_after_the_leeway() {
        let keys = keys();
        let jwt = rs256(&keys, &with(json!({"exp": NOW - 30})));
        assert!(check(&keys, &jwt).is_ok(), "within the leeway");
        let jwt = rs256(&keys, &with(json!({"exp": NOW - 61})));
        assert_eq!(check(&keys, &jwt), Err(OidcError::Expired));
        let jwt = rs256(&keys, &with(json!({"exp": null})));
        assert_eq!(check(&keys, &jwt), Err(OidcError::MissingClaim("exp")));
    }

    #[test]
    fn a_token_from_the_future_fails() {
        let keys = keys();
        let jwt = rs256(&keys, &with(json!({"iat": NOW + 3600})));
        assert_eq!(check(&keys, &jwt), Err(OidcError::NotYetValid));
        let jwt = rs256(&keys, &with(json!({"iat": (NOW + 30) as f64 + 0.5})));
        assert!(check(&keys, &jwt).is_ok(), "within the leeway, fractional");
    }

    #[test]
    fn a_wrong_or_missing_nonce_fails() {
        let keys = keys();
        let jwt = rs256(&keys, &with(json!({"nonce": "n-2"})));
        assert_eq!(check(&keys, &jwt), Err(OidcError::Nonce));
        let jwt = rs256(&keys, &with(json!({"nonce": null})));
        assert_eq!(check(&keys, &jwt), Err(OidcError::Nonce));
    }

    #[test]
    fn malformed_tokens_fail_cleanly() {
        let keys = keys();
        for jwt in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.e30"] {
            assert!(
                matches!(
                    check(&keys, jwt),
                    Err(OidcError::Malformed(_) | OidcError::Algorithm(_))
                ),
                "{jwt}"
            );
        }
        let no_sub = rs256(&keys, &with(json!({"sub": null})));
        assert_eq!(check(&keys, &no_sub), Err(OidcError::MissingClaim("sub")));
    }

    #[test]
    fn the_identity_takes_only_a_verified_email() {
        let base = Claims {
            issuer: ISSUER.into(),
            subject: "s".into(),
            audience: vec![],
            expires: 0,
            issued: 0,
            email: Some("a@x.com".into()),
            email_verified: Some(true),
            name: Some("A".into()),
        };
        assert_eq!(identity(base.clone()).email.as_deref(), Some("a@x.com"));
        let unverified = Claims {
            email_verified: Some(false),
            ..base.clone()
        };
        assert_eq!(identity(unverified).email, None);
        let unsaid = Claims {
            email_verified: None,
            ..base.clone()
        };
        assert_eq!(identity(unsaid).email, None, "usernames never stand in");
        let guest = Claims {
            email: Some("x_y#EXT#@tenant.onmicrosoft.com".into()),
            ..base.clone()
        };
        assert_eq!(identity(guest).email, None);
        let none = Claims {
            email: None,
            ..base
        };
        assert_eq!(identity(none).email, None);
    }

    #[test]
    fn pkce_and_forms_follow_the_rfcs() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(
            form_encode(&[("a", "x y&z=é"), ("code_verifier", "A-_.~")]),
            "a=x+y%26z%3D%C3%A9&code_verifier=A-_.%7E"
        );
        let t = random_token().unwrap();
        assert_eq!(t.len(), 43);
        assert_ne!(t, random_token().unwrap());
    }

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_futures_are_send_so_handlers_can_await_them() {
        let oidc = Oidc::new(
            crate::destination::client(),
            ISSUER,
            "c",
            Secret::new("s"),
            "https://x/cb",
        );
        assert_send(&oidc.begin());
        assert_send(&oidc.finish("code", "verifier", "nonce"));
        let slack = super::super::slack_api::SlackApi::new(
            crate::destination::client(),
            "https://slack.com/api",
            Secret::new("xoxb-1"),
        );
        assert_send(&slack.user("U1"));
        assert_send(&slack.usergroup_members("S1"));
        assert_send(&slack.respond("https://x", &Value::Null));
        let token = Secret::new("xoxb-2");
        assert_send(&slack.chat_update("https://x", &token, "C", "1", &Value::Null));
        let bk = super::super::buildkite::Buildkite::new(
            crate::destination::client(),
            "https://api.buildkite.com/v2",
            "acme",
            Secret::new("t"),
        );
        assert_send(&bk.retry_failed("p", 1));
        assert_send(&bk.unblock("p", 1, None, None, &serde_json::Map::new()));
        assert_send(&bk.rebuild("p", 1));
    }

    #[test]
    fn the_client_secret_never_shows() {
        let oidc = Oidc::new(
            crate::destination::client(),
            ISSUER,
            "client-1",
            Secret::new("very-secret-client-value"),
            "https://kb.example.com/callback",
        );
        assert!(!format!("{oidc:?}").contains("very-secret-client-value"));
    }
}
