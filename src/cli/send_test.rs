//! `kitebridge send-test`: one real message to one destination, to prove the URL works.

use crate::destination::{self, BuildEnv, Context, Outcome, Rendered};
use crate::event::Event;
use crate::render::{TemplateData, samples};
use crate::store::Schema;
use chrono::Utc;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Sends a connection test (or a named sample event) and reports the answer.
pub fn run(config_path: &Path, name: &str, sample: Option<&str>) -> ExitCode {
    let Some(config) = super::load(config_path) else {
        return ExitCode::FAILURE;
    };
    let Some(dest_config) = config.destination(name) else {
        let known: Vec<&str> = config
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        eprintln!(
            "{}: no destination named {name:?} (known: {})",
            config.path.display(),
            known.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let Some(renderer) = super::renderer(&config) else {
        return ExitCode::FAILURE;
    };
    let event = match sample {
        Some(s) => match samples::event(s) {
            Some(e) => e,
            None => {
                let names: Vec<&str> = samples::SAMPLES.iter().map(|(n, _)| *n).collect();
                eprintln!("no sample named {s:?} (samples: {})", names.join(", "));
                return ExitCode::FAILURE;
            }
        },
        None => Event::from_value(
            "ping",
            json!({"event": "ping", "organization": {"name": "(kitebridge send-test)"},
                   "sender": {"name": "kitebridge send-test"}}),
            Utc::now(),
        ),
    };
    if let Some(reason) = dest_config.disabled_reason() {
        eprintln!("destination {name:?} is disabled: {reason} (is its environment variable set?)");
        return ExitCode::FAILURE;
    }
    // A Slack app keeps message ids in the store; a test message needs none, but shares it.
    // A local store may be created as `serve` would; a shared one is used only as it is.
    let rt = super::runtime();
    let schema = if config.storage.shared() {
        Schema::Check
    } else {
        Schema::Migrate
    };
    let store = match rt.block_on(config.storage.open(schema)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", config.storage.shown());
            return ExitCode::FAILURE;
        }
    };
    let env = BuildEnv {
        client: destination::client(),
        store: Some(store),
    };
    let Some(dest) = dest_config.build(&env) else {
        eprintln!("destination {name:?} cannot be built");
        return ExitCode::FAILURE;
    };
    let data = TemplateData::new(&event, Utc::now());
    let Rendered { template, body } = match dest_config
        .kind
        .render_event(&renderer, None, &event, &data)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let context = Context {
        event_name: event.name().to_string(),
        ..Context::default()
    };
    let outcome = rt.block_on(dest.send(&body, &context));
    let ms = started.elapsed().as_millis();
    let status = outcome
        .status()
        .map(|s| format!("HTTP {s}, "))
        .unwrap_or_default();
    match outcome {
        Outcome::Sent { .. } => {
            println!("{name}: sent ({status}{ms} ms, template {template})");
            ExitCode::SUCCESS
        }
        Outcome::Retry { reason, .. } => {
            eprintln!("{name}: not sent, temporary failure ({status}{ms} ms): {reason}");
            ExitCode::FAILURE
        }
        Outcome::Permanent { reason, .. } => {
            eprintln!("{name}: not sent, refused ({status}{ms} ms): {reason}");
            ExitCode::FAILURE
        }
    }
}
