//! Everything `serve`, a reload and `check` verify before a config goes live: the config is
//! already valid TOML with sound values; here the templates compile, every route's template
//! exists for each of its destinations, and every template renders valid bodies for the
//! built-in sample events.

use crate::config::Config;
use crate::destination::DestinationKind;
use crate::render::{Renderer, TemplateData, TemplateKind, samples};
use chrono::Utc;

/// A config that passed, with its compiled templates.
pub struct Validated {
    /// The templates, ready to render.
    pub renderer: Renderer,
    /// A one-line summary for `check`.
    pub summary: String,
}

/// Compiles and tries everything; one line per problem, naming file, route or template.
pub fn validate(config: &Config) -> Result<Validated, Vec<String>> {
    let renderer = Renderer::new(config.templates_dir.as_deref(), config.people.clone())?;
    let summary = check_renderer(config, &renderer)?;
    Ok(Validated { renderer, summary })
}

/// Checks that every route's explicit template exists for the kind of each of its
/// destinations; one line per problem.
fn check_route_templates(config: &Config, renderer: &Renderer) -> Vec<String> {
    let mut problems = Vec::new();
    for route in &config.routes {
        let Some(template) = &route.template else {
            continue;
        };
        for dest in route.to.iter().filter_map(|d| config.destination(d)) {
            let kind = dest.kind.template_kind();
            if !renderer.has(kind, template) || template.starts_with('_') {
                problems.push(format!(
                    "{}: route {:?}: no {kind} template named {template:?} (for destination {:?})",
                    config.path.display(),
                    route.name,
                    dest.name
                ));
            }
        }
    }
    problems
}

/// Every problem with `renderer`'s templates for `config`, or a one-line summary when there is
/// none (the template studio checks a template this way before saving it).
pub fn check_renderer(config: &Config, renderer: &Renderer) -> Result<String, Vec<String>> {
    let mut problems = check_route_templates(config, renderer);
    let samples = samples::events();
    let mut rendered = 0;
    for kind in TemplateKind::ALL {
        // Checked as the first destination kind that uses them renders and limits them (the
        // kinds sharing templates share their limits too).
        let Some(destination) = DestinationKind::rendered_by(kind) else {
            continue;
        };
        for name in renderer.names(kind) {
            let check = |data: &TemplateData| {
                destination
                    .render(renderer, &name, data)
                    .map_err(|e| e.to_string())
                    .and_then(|body| {
                        destination
                            .check_body(&body)
                            .map_err(|e| format!("{}: {e}", renderer.origin(kind, &name)))
                    })
            };
            // The samples of the template's event or family; all of them for other names.
            let mut chosen: Vec<_> = samples
                .iter()
                .filter(|(_, e)| e.name() == name || e.family() == name)
                .collect();
            if chosen.is_empty() {
                chosen = samples.iter().collect();
            }
            let is_digest = name == "digest";
            // One line per template: its first failing sample, and how many failed.
            let mut failed: Vec<(&str, String)> = Vec::new();
            for (sample, event) in chosen {
                let data = if is_digest {
                    TemplateData::group(std::slice::from_ref(event), Utc::now())
                } else {
                    TemplateData::new(event, Utc::now())
                };
                match check(&data) {
                    Ok(()) => rendered += 1,
                    Err(e) => failed.push((sample, e)),
                }
            }
            if let Some((sample, e)) = failed.first() {
                let more = match failed.len() {
                    1 => String::new(),
                    n => format!(" (and {} more samples)", n - 1),
                };
                problems.push(format!("{e} [sample {sample}{more}]"));
            }
            // A digest renders many events at once: try it on all the samples together.
            if is_digest {
                let all: Vec<_> = samples.iter().map(|(_, e)| e.clone()).collect();
                match check(&TemplateData::group(&all, Utc::now())) {
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
    let disabled: Vec<String> = config
        .destinations
        .iter()
        .filter_map(|d| Some(format!("{}: {}", d.name, d.disabled_reason()?)))
        .collect();
    let disabled = if disabled.is_empty() {
        String::new()
    } else {
        format!(" ({} disabled; {})", disabled.len(), disabled.join(", "))
    };
    Ok(format!(
        "{}: ok: {} destinations{disabled}, {} routes, {rendered} template renderings of {} sample events",
        config.path.display(),
        config.destinations.len(),
        config.routes.len(),
        samples.len(),
    ))
}
