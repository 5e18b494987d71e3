//! The process-wide rustls crypto provider, shared by the HTTP client, the TLS listener and
//! the PostgreSQL connections.

use std::sync::Once;

/// Makes ring the process-wide rustls crypto provider, once.
pub fn install_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
