//! Where template sources come from: the defaults compiled into the binary, and overrides from
//! the configured folder (`<dir>/<kind>/<name>.hbs`).

use super::TemplateKind;
use std::path::{Path, PathBuf};

/// One template's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Which registry it belongs to.
    pub kind: TemplateKind,
    /// Its name (the file name without `.hbs`).
    pub name: String,
    /// The Handlebars text.
    pub text: String,
    /// `built-in slack/build` or the file path, for messages.
    pub origin: String,
}

macro_rules! builtin {
    ($kind:ident, $dir:literal, [$($name:literal),* $(,)?]) => {
        [$((TemplateKind::$kind, $name, include_str!(concat!("../../templates/", $dir, "/", $name, ".hbs")))),*]
    };
}

const SLACK: [(TemplateKind, &str, &str); 10] = builtin!(
    Slack,
    "slack",
    [
        "_message",
        "build",
        "job",
        "job.activated",
        "agent",
        "cluster_token",
        "ping",
        "workflow",
        "default",
        "digest"
    ]
);
const TEAMS: [(TemplateKind, &str, &str); 10] = builtin!(
    Teams,
    "teams",
    [
        "_card",
        "build",
        "job",
        "job.activated",
        "agent",
        "cluster_token",
        "ping",
        "workflow",
        "default",
        "digest"
    ]
);
const CONSOLE: [(TemplateKind, &str, &str); 9] = builtin!(
    Console,
    "console",
    [
        "build",
        "job",
        "job.activated",
        "agent",
        "cluster_token",
        "ping",
        "workflow",
        "default",
        "digest"
    ]
);

const WEBHOOK: [(TemplateKind, &str, &str); 3] =
    builtin!(Webhook, "webhook", ["_data", "default", "digest"]);

/// The templates compiled into the binary (the repository's `templates/` folder).
pub fn builtin() -> impl Iterator<Item = Source> {
    SLACK
        .iter()
        .chain(&TEAMS)
        .chain(&CONSOLE)
        .chain(&WEBHOOK)
        .map(|(kind, name, text)| Source {
            kind: *kind,
            name: (*name).to_string(),
            text: (*text).to_string(),
            origin: format!("built-in {}/{name}", kind.as_str()),
        })
}

/// Reads `<dir>/<kind>/*.hbs`. A missing folder is no error (the defaults apply); an
/// unreadable file is.
pub fn load_dir(dir: &Path) -> (Vec<Source>, Vec<String>) {
    let (mut sources, mut problems) = (Vec::new(), Vec::new());
    for kind in TemplateKind::ALL {
        let sub = dir.join(kind.as_str());
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "hbs"))
            .collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push(Source {
                    kind,
                    name,
                    text,
                    origin: path.display().to_string(),
                }),
                Err(e) => problems.push(format!("{}: cannot read: {e}", path.display())),
            }
        }
    }
    (sources, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_templates_is_built_in_and_the_reverse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let (on_disk, problems) = load_dir(&root);
        assert!(problems.is_empty(), "{problems:?}");
        let mut disk: Vec<(String, String)> = on_disk
            .iter()
            .map(|s| (s.kind.as_str().to_string(), s.name.clone()))
            .collect();
        let mut built: Vec<(String, String)> = builtin()
            .map(|s| (s.kind.as_str().to_string(), s.name))
            .collect();
        disk.sort();
        built.sort();
        assert_eq!(disk, built);
    }
}
