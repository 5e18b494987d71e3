//! `SignatureHeader::parse` on arbitrary text, then `Credentials::check_signature`.
//!
//! Input: the header, a newline, then the body it claims to sign. Parsing never panics and
//! only ever reports a malformed header; a parsed signature verifies exactly when it is the
//! HMAC of the body under one of the tokens, and never outside the replay window.

#![no_main]

use kitebridge::auth::{AuthError, AuthMode, Credentials, Presented, SignatureHeader, sign};
use kitebridge::secret::Secret;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;

/// The published test vector's secret, and a previous token still accepted during rotation.
const TOKENS: [&str; 2] = ["29b1ff5779c76bd48ba6705eb99ff970", "previous-token"];
const WINDOW: i64 = 300;

static CREDS: LazyLock<Credentials> = LazyLock::new(|| Credentials {
    tokens: TOKENS.iter().map(|t| Secret::new(*t)).collect(),
    mode: AuthMode::Auto,
    replay_window: Duration::from_secs(WINDOW as u64),
});

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let sig = match SignatureHeader::parse(&header) {
        Ok(sig) => sig,
        Err(AuthError::MalformedSignature(_)) => return,
        Err(e) => panic!("parse reported {e:?} for {header:?}"),
    };
    assert!(sig.timestamp >= 0, "negative timestamp from {header:?}");
    assert_eq!(
        CREDS.presented(Some("token"), Some(&header)),
        Ok(Presented::Signature(sig.clone()))
    );

    // The canonical form of what was parsed parses to the same thing.
    let hex: String = sig.digest.iter().map(|b| format!("{b:02x}")).collect();
    let canonical = format!("timestamp={},signature={hex}", sig.timestamp);
    assert_eq!(SignatureHeader::parse(&canonical).as_ref(), Ok(&sig));

    // At its own time: valid exactly when it is one token's signature of this body.
    let genuine = TOKENS.iter().any(|t| {
        SignatureHeader::parse(&sign(t, sig.timestamp, body)).map(|s| s.digest) == Ok(sig.digest)
    });
    let want = if genuine {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    };
    assert_eq!(CREDS.check_signature(&sig, body, sig.timestamp), want);
    assert_eq!(
        CREDS.check_signature(&sig, body, sig.timestamp.saturating_add(WINDOW)),
        want
    );

    // Outside the window: stale, whatever the digest.
    for now in [
        sig.timestamp - WINDOW - 1,
        sig.timestamp.saturating_add(WINDOW + 1),
        i64::MIN,
    ] {
        if now.abs_diff(sig.timestamp) > WINDOW as u64 {
            assert_eq!(
                CREDS.check_signature(&sig, body, now),
                Err(AuthError::Stale)
            );
        }
    }
});
