//! The HTTP(S) accept loop and its graceful end.
//!
//! When told to stop, it closes the listener first, then gives connections accepted just
//! before a moment to send their request, and only then asks every connection to finish: a
//! connection that was accepted but whose request had not been read yet would otherwise be
//! closed unanswered, which under socket activation (where the next process picks up what
//! waits in the queue) is the difference between a slow answer and a lost webhook.

use axum::extract::ConnectInfo;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tower::ServiceExt;

/// Headers (with the request line) larger than this are refused with 431: Buildkite's are a
/// few hundred bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long connections accepted just before the listener closed get to send their request
/// before every connection is asked to finish.
const SETTLE: Duration = Duration::from_millis(500);

/// How connections are served.
pub struct Serving {
    /// How long a client may take to send its headers (and its TLS handshake).
    pub read_timeout: Duration,
    /// TLS, when the service terminates it itself.
    pub tls: Option<TlsAcceptor>,
}

/// A rustls acceptor for a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(cert, &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| bad(key, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// HTTP/1.1 only, here and in the delivery client: Buildkite, the proxies in front, the
// browser and every destination speak it, and HTTP/2 cost 1.4 MB of binary and 1 MiB of idle
// RSS (docs/performance.md) for connections that never asked for it.
fn builder(read_timeout: Duration) -> Builder {
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
}

/// Serves `app` on `listener` until `stop` resolves with how long open connections get to
/// finish; then closes the listener, lets the connections accepted just before settle, and
/// gives all of them that long.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    serving: Serving,
    stop: impl Future<Output = Duration>,
) {
    let builder = Arc::new(builder(serving.read_timeout));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    let deadline = loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            deadline = &mut stop => break deadline,
        };
        let app = app
            .clone()
            .map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let service = hyper_util::service::TowerToHyperService::new(app);
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), serving.tls.clone());
        let handshake = serving.read_timeout;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let io = match tls {
                None => Either::Left(stream),
                // A client that stalls its handshake holds nothing for long.
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Either::Right(stream),
                        _ => return,
                    }
                }
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let _ = watcher.watch(conn).await;
        });
    };
    drop(listener);
    tokio::time::sleep(SETTLE).await;
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "connections still open at the deadline are closed"
        );
    }
}
