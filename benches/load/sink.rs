//! The recording sink: a stand-in chat service that answers 200 and notes when each message
//! (identified by the build number in its text) arrived.

use axum::body::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Arrival times by message id.
#[derive(Clone, Default)]
pub struct Sink {
    arrivals: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// The build number the generator made unique: the first `#<digits>` in a body that is one of
/// its numbers (a colour such as `#2EB67D` may come first, as the body's keys come in key
/// order).
pub fn id_in(body: &[u8]) -> Option<u64> {
    body.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'#')
        .find_map(|(at, _)| {
            let digits = body[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let number: u64 = std::str::from_utf8(&body[at + 1..at + 1 + digits])
                .ok()?
                .parse()
                .ok()?;
            // The generator numbers builds from 1,000,000,000 up.
            number.checked_sub(1_000_000_000)
        })
}

impl Sink {
    /// Serves on a random port; returns its address.
    pub async fn start(&self) -> SocketAddr {
        let me = self.clone();
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let me = me.clone();
            async move {
                let now = Instant::now();
                if let Some(id) = id_in(&body) {
                    me.arrivals.lock().unwrap().entry(id).or_insert(now);
                }
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// When message `id` arrived.
    pub fn arrival(&self, id: u64) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(&id).copied()
    }

    /// How many distinct messages arrived.
    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}
