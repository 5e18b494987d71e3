//! `kitebridge render`: a dry run of routing and rendering for one payload.

use super::RenderFormat;
use crate::event::{Event, VerifiedBody};
use crate::mute::Muted;
use crate::queue::{MutedMessage, plan};
use crate::render::TemplateData;
use crate::routing::Router;
use crate::store::NewDelivery;
use chrono::Utc;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

/// Routes and renders `payload`, printing the bodies (and with `explain`, why each route
/// matched or not).
pub fn run(
    config_path: &Path,
    payload: &Path,
    event_name: Option<&str>,
    format: RenderFormat,
    explain: bool,
) -> ExitCode {
    let Some(config) = super::load(config_path) else {
        return ExitCode::FAILURE;
    };
    let Some(renderer) = super::renderer(&config) else {
        return ExitCode::FAILURE;
    };
    let bytes = match std::fs::read(payload) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", payload.display());
            return ExitCode::FAILURE;
        }
    };
    let now = Utc::now();
    let body = VerifiedBody::trusted(bytes);
    let event = match Event::parse(&body, event_name, now) {
        Ok(e) => e,
        // `--event` overrides the body's name rather than having to agree with it.
        Err(crate::event::EventError::HeaderMismatch { .. }) => {
            match Event::parse(&body, None, now) {
                Ok(e) => {
                    Event::from_value(event_name.unwrap_or_default(), e.payload().clone(), now)
                }
                Err(e) => {
                    eprintln!("{}: {e}", payload.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", payload.display());
            return ExitCode::FAILURE;
        }
    };
    // No store is read in a dry run: a finished build is taken as the first of its branch.
    let mut event = event;
    let transition = crate::transition::outcome(&event)
        .and_then(|b| crate::transition::next(None, &b))
        .map(|(t, _)| t);
    event.set_transition(transition);
    let router = Router::new(config.routes.clone());
    let routes = router.route(&event);
    let explained = explain.then(|| router.explain(&event));
    let enabled = |name: &str| config.destination(name).is_some_and(|d| d.enabled());
    let planned = plan(&routes, &event, enabled);
    let disabled: Vec<NewDelivery> = plan(&routes, &event, |d| !enabled(d)).deliveries;
    let mut failed = false;
    let mut out = Vec::new();
    for p in &planned.deliveries {
        let dest = config
            .destination(&p.destination)
            .expect("planned destinations exist");
        // The buttons as the service would show them (with a random nonce: nothing is stored).
        let mut data = TemplateData::new(&event, now);
        data.set_actions(&config.queue.buttons.for_event(
            &event,
            &p.route,
            &p.destination,
            dest.kind.template_kind(),
        ));
        match dest
            .kind
            .render_event(&renderer, p.template.as_deref(), &event, &data)
        {
            Ok(r) => out.push((p, dest.kind, r.template, r.body)),
            Err(e) => {
                eprintln!("route {:?} → {}: {e}", p.route, p.destination);
                failed = true;
            }
        }
    }
    match format {
        RenderFormat::Json => {
            let array: Vec<_> = out
                .iter()
                .map(|(p, kind, _, body)| {
                    json!({"route": p.route, "destination": p.destination, "kind": kind.as_str(), "body": body.to_value()})
                })
                .collect();
            // With --explain an object, so the bodies keep their shape beside the reasons.
            let out = match &explained {
                Some(routes) => json!({"routes": routes, "bodies": array}),
                None => serde_json::Value::Array(array),
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("JSON serialises")
            );
        }
        RenderFormat::Text => {
            for e in explained.iter().flatten() {
                let mark = if e.matched { "✓" } else { "✗" };
                println!("{mark} route {:?}: {}", e.route, e.reason);
            }
            if explained.is_some() {
                println!();
            }
            if routes.is_empty() {
                println!("no route matches {}", event.name());
            }
            for (p, kind, template, body) in &out {
                println!(
                    "route {:?} → {} ({kind}, template {template})",
                    p.route, p.destination
                );
                match body.to_value() {
                    serde_json::Value::String(text) => println!("{text}\n"),
                    v => println!(
                        "{}\n",
                        serde_json::to_string_pretty(&v).expect("JSON serialises")
                    ),
                }
            }
            for p in &disabled {
                let reason = config
                    .destination(&p.destination)
                    .and_then(|d| d.disabled_reason())
                    .unwrap_or_default();
                println!(
                    "route {:?} → {}: not sent, destination disabled ({reason})",
                    p.route, p.destination
                );
            }
            for MutedMessage {
                route,
                destination: dest,
                muted,
            } in &planned.muted
            {
                match muted {
                    Muted::Drop(window) => {
                        println!("route {route:?} → {dest}: muted by {window:?}: dropped")
                    }
                    Muted::Hold(window, until) => println!(
                        "route {route:?} → {dest}: muted by {window:?}: held until {}",
                        until.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                }
            }
            if let Some(t) = event.transition() {
                println!(
                    "(dry run: no build history is read, so this build counts as the first of its branch: {})",
                    t.kind.as_str()
                );
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
