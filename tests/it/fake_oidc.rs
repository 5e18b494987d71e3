//! A fake OpenID Connect provider on 127.0.0.1, shaped like Microsoft Entra ID (an issuer with
//! a path): discovery, `/authorize` (signs the set user in at once and redirects back),
//! `/token` (checks the client, the code and PKCE; answers an RS256 id_token signed with
//! `tests/fixtures/oidc/rsa-test-key.pk8`, `kid` "test") and `/jwks`.
//!
//! ```ignore
//! let idp = FakeOidc::start("client-1").await;
//! idp.sign_in_as("ana@example.com", "Ana Example");
//! let oidc = Oidc::new(client(), &idp.issuer(), "client-1", Secret::new(idp.secret()), REDIRECT);
//! let login = oidc.begin().await?;
//! let code = idp.authorize(&login.url).await;  // GET it, read the code from Location
//! let who = oidc.finish(&code, &login.verifier, &login.nonce).await?;
//! ```
#![allow(dead_code)]

pub use crate::fake_buildkite::Recorded;
use crate::fake_buildkite::parse_form;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The path part of the issuer, as Entra's `/{tenant}/v2.0`.
const ISSUER_PATH: &str = "/tenant-1/v2.0";

/// The client secret it accepts.
const SECRET: &str = "fake-oidc-client-secret";

/// The test RSA key (PKCS#8 DER), committed as a fixture; it protects nothing.
pub fn rsa_test_key() -> RsaKeyPair {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/oidc/rsa-test-key.pk8"
    );
    RsaKeyPair::from_pkcs8(&std::fs::read(path).unwrap()).unwrap()
}

/// A code handed out by `/authorize`, until `/token` takes it.
#[derive(Debug, Clone)]
struct Grant {
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
    email: String,
    name: String,
}

struct OidcState {
    issuer: String,
    client_id: String,
    rsa: RsaKeyPair,
    /// A P-256 key served and used only after [`FakeOidc::use_es256`].
    ec: EcdsaKeyPair,
    es256: Mutex<bool>,
    user: Mutex<(String, String)>,
    extra_claims: Mutex<serde_json::Map<String, Value>>,
    codes: Mutex<HashMap<String, Grant>>,
    requests: Mutex<Vec<Recorded>>,
}

/// The fake provider. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct FakeOidc {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<OidcState>,
}

impl FakeOidc {
    /// Starts on a random port, for client `client_id`; the user signed in is
    /// `ana@example.com` / "Ana Example" until [`FakeOidc::sign_in_as`].
    pub async fn start(client_id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let state = Arc::new(OidcState {
            issuer: format!("http://{addr}{ISSUER_PATH}"),
            client_id: client_id.to_string(),
            rsa: rsa_test_key(),
            ec: EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            es256: Mutex::new(false),
            user: Mutex::new(("ana@example.com".into(), "Ana Example".into())),
            extra_claims: Mutex::new(serde_json::Map::new()),
            codes: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route(
                &format!("{ISSUER_PATH}/.well-known/openid-configuration"),
                axum::routing::get(discovery),
            )
            .route(
                &format!("{ISSUER_PATH}/{{*rest}}"),
                axum::routing::any(endpoint),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    /// The issuer: `http://127.0.0.1:PORT/tenant-1/v2.0`.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// The client secret `/token` accepts.
    pub fn secret(&self) -> &'static str {
        SECRET
    }

    /// Who `/authorize` signs in from now on (the id_token's `email`, `name`,
    /// `preferred_username`; `sub` is derived from the email).
    pub fn sign_in_as(&self, email: &str, name: &str) {
        *self.state.user.lock().unwrap() = (email.to_string(), name.to_string());
    }

    /// Claims merged into every id_token from now on (a `null` value removes the claim), to
    /// test the relying party's checks end to end: `json!({"aud": "someone-else"})`.
    pub fn override_claims(&self, claims: Value) {
        let mut extra = self.state.extra_claims.lock().unwrap();
        for (k, v) in claims.as_object().expect("claims are an object") {
            extra.insert(k.clone(), v.clone());
        }
    }

    /// From now on, sign id_tokens with a P-256 key (`ES256`, `kid` "test-ec") that the key
    /// set only then starts listing: a relying party with the old set cached must fetch it
    /// again.
    pub fn use_es256(&self) {
        *self.state.es256.lock().unwrap() = true;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests whose path ends with `suffix` (`"/token"`, `"/jwks"`,
    /// `"openid-configuration"`).
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    /// Plays the browser: GETs `authorize_url` without following the redirect and gives back
    /// the `code` from its `Location` (panics unless the answer is a redirect carrying one).
    pub async fn authorize(&self, authorize_url: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let answer = client.get(authorize_url).send().await.unwrap();
        assert_eq!(answer.status(), 302, "{:?}", answer.text().await);
        let location = answer.headers()["location"].to_str().unwrap().to_string();
        let url = reqwest::Url::parse(&location).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    }
}

fn record(
    state: &OidcState,
    method: Method,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) {
    state.requests.lock().unwrap().push(Recorded {
        method,
        path: path.to_string(),
        query: query.unwrap_or_default(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
}

async fn discovery(State(state): State<Arc<OidcState>>, headers: HeaderMap) -> Response {
    record(
        &state,
        Method::GET,
        &format!("{ISSUER_PATH}/.well-known/openid-configuration"),
        None,
        &headers,
        &Bytes::new(),
    );
    let i = &state.issuer;
    axum::Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "scopes_supported": ["openid", "email", "profile"]
    }))
    .into_response()
}

async fn endpoint(
    State(state): State<Arc<OidcState>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("{ISSUER_PATH}/{rest}");
    record(
        &state,
        method.clone(),
        &path,
        query.clone(),
        &headers,
        &body,
    );
    match (method.as_str(), rest.as_str()) {
        ("GET", "authorize") => authorize(&state, &parse_form(query.as_deref().unwrap_or(""))),
        ("POST", "token") => token(
            &state,
            &headers,
            &parse_form(&String::from_utf8_lossy(&body)),
        ),
        ("GET", "jwks") => jwks(&state),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn bad(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn authorize(state: &OidcState, q: &HashMap<String, String>) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if get("client_id") != state.client_id {
        return bad("unauthorized_client", "unknown client_id");
    }
    if get("response_type") != "code" {
        return bad("unsupported_response_type", "only code");
    }
    if !get("scope").split(' ').any(|s| s == "openid") {
        return bad("invalid_scope", "openid is required");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").is_empty() {
        return bad("invalid_request", "PKCE S256 is required");
    }
    let redirect = get("redirect_uri");
    let Ok(mut back) = reqwest::Url::parse(redirect) else {
        return bad("invalid_request", "redirect_uri is not a URL");
    };
    let code = URL_SAFE_NO_PAD.encode(fastrand::u128(..).to_be_bytes());
    let (email, name) = state.user.lock().unwrap().clone();
    state.codes.lock().unwrap().insert(
        code.clone(),
        Grant {
            nonce: q.get("nonce").cloned(),
            challenge: get("code_challenge").to_string(),
            redirect_uri: redirect.to_string(),
            email,
            name,
        },
    );
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", get("state"));
    (StatusCode::FOUND, [("location", back.to_string())]).into_response()
}

fn token(state: &OidcState, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    // client_secret_post or client_secret_basic (not both).
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (client_id, secret) = match &basic {
        Some(pair) => {
            let (id, secret) = pair.split_once(':').unwrap_or((pair, ""));
            (id.to_string(), secret.to_string())
        }
        None => (
            get("client_id").to_string(),
            get("client_secret").to_string(),
        ),
    };
    if client_id != state.client_id || secret != SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": "invalid_client", "error_description": "bad client credentials"}),
            ),
        )
            .into_response();
    }
    if get("grant_type") != "authorization_code" {
        return bad("unsupported_grant_type", "only authorization_code");
    }
    // A code works once, used or not.
    let Some(grant) = state.codes.lock().unwrap().remove(get("code")) else {
        return bad("invalid_grant", "unknown or used code");
    };
    if get("redirect_uri") != grant.redirect_uri {
        return bad(
            "invalid_grant",
            "redirect_uri differs from the authorization request",
        );
    }
    let verifier = get("code_verifier");
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if verifier.len() < 43 || challenge != grant.challenge {
        return bad("invalid_grant", "PKCE verification failed");
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": state.issuer,
        "sub": format!("sub-{}", grant.email.replace('@', "-at-")),
        "aud": state.client_id,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "email": grant.email,
        "email_verified": true,
        "preferred_username": grant.email,
        "name": grant.name,
        "tid": "tenant-1",
    });
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    for (k, v) in state.extra_claims.lock().unwrap().iter() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let id_token = sign(state, &claims);
    axum::Json(json!({
        "token_type": "Bearer",
        "scope": "openid email profile",
        "expires_in": 3600,
        "access_token": "fake-access-token",
        "id_token": id_token,
    }))
    .into_response()
}

/// The id_token: RS256 with `kid` "test", or ES256 with "test-ec" after `use_es256`.
fn sign(state: &OidcState, claims: &Value) -> String {
    let es256 = *state.es256.lock().unwrap();
    let header = if es256 {
        json!({"alg": "ES256", "kid": "test-ec", "typ": "JWT"})
    } else {
        json!({"alg": "RS256", "kid": "test", "typ": "JWT"})
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = if es256 {
        state
            .ec
            .sign(&rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    } else {
        let mut sig = vec![0; state.rsa.public().modulus_len()];
        state
            .rsa
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        sig
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn jwks(state: &OidcState) -> Response {
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(state.rsa.public());
    let mut keys = vec![json!({
        "kty": "RSA", "use": "sig", "kid": "test",
        "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e),
    })];
    if *state.es256.lock().unwrap() {
        let point = state.ec.public_key().as_ref();
        keys.push(json!({
            "kty": "EC", "use": "sig", "kid": "test-ec", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }));
    }
    axum::Json(json!({"keys": keys})).into_response()
}
