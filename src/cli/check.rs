//! `kitebridge check`: everything `serve` would refuse, found without serving.

use crate::config::Config;
use crate::render::{Body, Renderer, TemplateData, TemplateKind, samples};
use crate::server::check_route_templates;
use chrono::Utc;
use std::path::Path;
use std::process::ExitCode;

/// Runs the check and prints one line per problem.
pub fn run(path: &Path) -> ExitCode {
    let Some(config) = super::load(path) else {
        return ExitCode::FAILURE;
    };
    match problems(&config) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Every problem with templates, or a one-line summary when there is none.
pub fn problems(config: &Config) -> Result<String, Vec<String>> {
    let renderer = Renderer::new(config.templates_dir.as_deref(), config.people.clone())?;
    let mut problems = check_route_templates(config, &renderer);
    let samples = samples::events();
    let mut rendered = 0;
    for kind in TemplateKind::ALL {
        for name in renderer.names(kind) {
            let family_or_event = |e: &crate::event::Event| e.name() == name || e.family() == name;
            let chosen: Vec<_> = if samples.iter().any(|(_, e)| family_or_event(e)) {
                samples.iter().filter(|(_, e)| family_or_event(e)).collect()
            } else {
                samples.iter().collect()
            };
            // A digest renders many events at once: try it on all the samples together.
            let digest = (name == "digest").then(|| {
                let all: Vec<_> = samples.iter().map(|(_, e)| e.clone()).collect();
                TemplateData::group(&all, Utc::now())
            });
            for (sample, event) in chosen {
                let data = match &digest {
                    Some(_) => TemplateData::group(std::slice::from_ref(event), Utc::now()),
                    None => TemplateData::new(event, Utc::now()),
                };
                let result = renderer
                    .render(kind, &name, &data)
                    .map_err(|e| e.to_string())
                    .and_then(|body| shape(kind, &body));
                match result {
                    Ok(()) => rendered += 1,
                    Err(e) => problems.push(format!(
                        "{} (sample {sample}): {e}",
                        renderer.origin(kind, &name)
                    )),
                }
            }
            if let Some(data) = &digest {
                match renderer
                    .render(kind, &name, data)
                    .map_err(|e| e.to_string())
                    .and_then(|b| shape(kind, &b))
                {
                    Ok(()) => rendered += 1,
                    Err(e) => problems.push(format!(
                        "{} (all samples as one digest): {e}",
                        renderer.origin(kind, &name)
                    )),
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let disabled: Vec<&str> = config
        .destinations
        .iter()
        .filter(|d| !d.enabled())
        .map(|d| d.name.as_str())
        .collect();
    let disabled = if disabled.is_empty() {
        String::new()
    } else {
        format!(
            " ({} disabled, url empty: {})",
            disabled.len(),
            disabled.join(", ")
        )
    };
    Ok(format!(
        "{}: ok: {} destinations{disabled}, {} routes, {rendered} template renderings of {} sample events",
        config.path.display(),
        config.destinations.len(),
        config.routes.len(),
        samples.len(),
    ))
}

/// The envelope each destination needs.
fn shape(kind: TemplateKind, body: &Body) -> Result<(), String> {
    let Body::Json(v) = body else { return Ok(()) };
    match kind {
        TemplateKind::Slack => {
            let has_content = ["text", "blocks", "attachments"]
                .iter()
                .any(|k| v.get(*k).is_some());
            if has_content {
                Ok(())
            } else {
                Err("a Slack body needs text, blocks or attachments".into())
            }
        }
        TemplateKind::Teams => {
            let card = &v["attachments"][0];
            let ok = v["type"] == "message"
                && card["contentType"] == "application/vnd.microsoft.card.adaptive"
                && card["content"]["type"] == "AdaptiveCard"
                && card["content"]["body"].is_array();
            if ok {
                Ok(())
            } else {
                Err("a Teams body must be {\"type\":\"message\",\"attachments\":[{\"contentType\":\"application/vnd.microsoft.card.adaptive\",\"content\":{\"type\":\"AdaptiveCard\",\"body\":[…]}}]}".into())
            }
        }
        TemplateKind::Console => Ok(()),
    }
}
