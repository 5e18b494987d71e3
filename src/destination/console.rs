//! `kind = "console"`: prints messages to standard output, for trying kitebridge out and for
//! local development.

use super::{
    BuildEnv, Context, Destination, DestinationConfig, DestinationKind, Kind, Limits, Outcome,
    SendFuture, UrlRule,
};
use crate::render::{Body, TemplateKind, truncate};
use std::io::Write;
use std::sync::Arc;

/// Characters of one printed message.
pub const MAX_CHARS: usize = 16_000;

/// The kind.
#[derive(Debug)]
pub struct ConsoleKind;

impl Kind for ConsoleKind {
    fn name(&self) -> &'static str {
        "console"
    }

    fn template_kind(&self) -> TemplateKind {
        TemplateKind::Console
    }

    fn default_limits(&self) -> Limits {
        Limits {
            rate: None,
            burst: 1,
            concurrency: 1,
        }
    }

    fn url(&self) -> UrlRule {
        UrlRule::Refused
    }

    fn disabled_reason(&self, _: &DestinationConfig) -> Option<&'static str> {
        None
    }

    fn fit(&self, body: &mut Body) -> Result<(), String> {
        if let Body::Text(text) = body {
            *text = truncate(text, MAX_CHARS);
        }
        Ok(())
    }

    fn check_body(&self, _: &Body) -> Result<(), String> {
        Ok(())
    }

    fn build(&self, config: &DestinationConfig, _: &BuildEnv) -> Option<Arc<dyn Destination>> {
        Some(Arc::new(Console {
            name: config.name.clone(),
            kind: config.kind,
        }))
    }
}

/// Prints each message to stdout.
#[derive(Debug)]
struct Console {
    name: String,
    kind: DestinationKind,
}

impl Destination for Console {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        self.kind
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
