//! A load balancer for tests, as operators run one in front of replicas: it checks each
//! backend's `/readyz` every 100 ms (2 s timeout; out after two failed checks in a row, in
//! after one good one) and sends each request to the next ready backend; a request it cannot
//! hand to a backend is answered 502.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often backends are checked.
pub const HEALTH_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Pool {
    /// (backend, taking traffic, failed checks in a row)
    backends: Mutex<Vec<(SocketAddr, bool, u32)>>,
    next: AtomicUsize,
}

#[derive(Clone)]
pub struct Balancer {
    pub addr: SocketAddr,
    pool: Arc<Pool>,
}

async fn forward(
    State((pool, client)): State<(Arc<Pool>, reqwest::Client)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ready: Vec<SocketAddr> = pool
        .backends
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, ok, _)| *ok)
        .map(|(a, _, _)| *a)
        .collect();
    if ready.is_empty() {
        return (StatusCode::BAD_GATEWAY, "no ready backend").into_response();
    }
    let to = ready[pool.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = client
        .request(method, format!("http://{to}{path}"))
        .body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            (status, body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("backend {to}: {e:?}")).into_response(),
    }
}

impl Balancer {
    pub async fn start() -> Self {
        kitebridge::crypto::install_provider();
        let pool = Arc::new(Pool::default());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state((pool.clone(), client.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let checked = pool.clone();
        tokio::spawn(async move {
            loop {
                let backends: Vec<SocketAddr> = checked
                    .backends
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(a, _, _)| *a)
                    .collect();
                for b in backends {
                    let got = client
                        .get(format!("http://{b}/readyz"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    let ready = matches!(&got, Ok(r) if r.status() == 200);
                    for entry in checked.backends.lock().unwrap().iter_mut() {
                        if entry.0 == b {
                            entry.2 = if ready { 0 } else { entry.2 + 1 };
                            entry.1 = ready || (entry.1 && entry.2 < 2);
                        }
                    }
                }
                tokio::time::sleep(HEALTH_EVERY).await;
            }
        });
        Self { addr, pool }
    }

    /// Adds a backend; it takes traffic once it answers `/readyz` with 200.
    pub fn add(&self, backend: SocketAddr) {
        self.pool.backends.lock().unwrap().push((backend, false, 0));
    }

    /// Removes a backend.
    pub fn remove(&self, backend: SocketAddr) {
        self.pool
            .backends
            .lock()
            .unwrap()
            .retain(|(a, _, _)| *a != backend);
    }

    /// Waits (up to 30 s: checks wait for a store write, slow on a busy machine) until
    /// `backend` is ready.
    pub async fn until_ready(&self, backend: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .pool
                .backends
                .lock()
                .unwrap()
                .iter()
                .any(|(a, ok, _)| *a == backend && *ok);
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
