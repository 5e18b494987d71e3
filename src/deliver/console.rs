//! The `console` destination: prints messages to standard output, for trying kitebridge out
//! and for local development.

use super::{Context, Destination, DestinationKind, Outcome, SendFuture};
use crate::render::Body;
use std::io::Write;

/// Prints each message to stdout.
#[derive(Debug)]
pub struct Console {
    name: String,
}

impl Console {
    /// A console destination.
    pub fn new(name: String) -> Self {
        Self { name }
    }
}

impl Destination for Console {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        DestinationKind::Console
    }

    fn send<'a>(&'a self, body: &'a Body, _: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            let text = match body {
                Body::Text(t) => t.clone(),
                Body::Json(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
            };
            // One write per message so concurrent deliveries do not interleave.
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{text}\n").and_then(|()| out.flush()) {
                Ok(()) => Outcome::Sent { status: None },
                Err(e) => Outcome::Retry {
                    status: None,
                    after: None,
                    reason: format!("cannot write to stdout: {e}"),
                },
            }
        })
    }
}
