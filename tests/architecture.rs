//! The module graph stays acyclic: no two modules under the same parent import each other,
//! directly or round a longer circle. Layers then read in one direction (config above
//! destination above render above event), and each part can be understood by reading down.
//!
//! Read from the sources: every `crate::…`, `super::…` and `self::…` path outside comments and
//! test modules is an edge from the file's module to the module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs` and `main.rs` the root.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without comments and without the trailing `#[cfg(test)] mod tests`, in ASCII
/// (other characters become spaces: paths are ASCII, and byte offsets are then safe).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .map(|c| if c.is_ascii() { c } else { ' ' })
        .collect()
}

/// The first segment of each path in a `{a, b::c, d as e}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0, 0);
    let bytes = group.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                heads.push(group[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    heads.push(group[start..].to_string());
    heads
        .iter()
        .map(|h| {
            h.trim()
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|h| !h.is_empty())
        .collect()
}

/// Every module path `code` (in module `here`) refers to, as far as two segments deep.
fn references(here: &ModPath, code: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let starts_word = i == 0 || !ident(bytes[i - 1]) && bytes[i - 1] != b':';
        let root = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|r| rest.starts_with(r));
        let Some(root) = root.filter(|_| starts_word) else {
            i += 1;
            continue;
        };
        let mut base: ModPath = match root {
            "crate::" => Vec::new(),
            "self::" => here.clone(),
            _ => here[..here.len().saturating_sub(1)].to_vec(),
        };
        let mut j = i + root.len();
        while code[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        // Up to two named segments, then perhaps a `{…}` group.
        let mut path = base;
        for _ in 0..2 {
            if code[j..].starts_with('{') {
                let end = j + matching_brace(&code[j..]);
                for head in group_heads(&code[j + 1..end]) {
                    let mut p = path.clone();
                    p.push(head);
                    out.push(p);
                }
                break;
            }
            let len = code[j..].bytes().take_while(|&c| ident(c)).count();
            if len == 0 {
                break;
            }
            path.push(code[j..j + len].to_string());
            j += len;
            if code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        out.push(path);
        i = j.max(i + 1);
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// Every cycle in `edges`, each as the list of its nodes.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    found.push(cycle);
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, found),
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
    }
    let (mut state, mut found) = (BTreeMap::new(), Vec::new());
    for node in edges.keys() {
        if !state.contains_key(node) {
            visit(node, edges, &mut state, &mut Vec::new(), &mut found);
        }
    }
    found
}

#[test]
fn no_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(&src, f)).collect();
    // For each parent module: edges between its children.
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let here = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for target in references(&here, &code(&text)) {
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= here.len() || common >= target.len() {
                continue; // a module and its own parent or child
            }
            let parent = here[..common].to_vec();
            let (from, to) = (&here[common], &target[common]);
            let mut sibling = parent.clone();
            sibling.push(to.clone());
            if !modules.contains(&sibling) {
                continue; // an item of the parent (re-exported there), not a module
            }
            graphs
                .entry(parent)
                .or_default()
                .entry(from.clone())
                .or_default()
                .insert(to.clone());
        }
    }
    assert!(
        graphs.get(&Vec::new()).is_some_and(|g| g.len() > 10),
        "the top-level modules were read: {graphs:?}"
    );
    let mut problems = Vec::new();
    for (parent, edges) in &graphs {
        for cycle in cycles(edges) {
            let at = if parent.is_empty() {
                "crate".to_string()
            } else {
                parent.join("::")
            };
            problems.push(format!("{at}: {}", cycle.join(" → ")));
        }
    }
    assert!(
        problems.is_empty(),
        "modules that import each other:\n{}",
        problems.join("\n")
    );
}

/// The reader above finds what it should (so a pass means something).
#[test]
fn the_reader_finds_paths_and_groups() {
    let here: ModPath = vec!["queue".into(), "worker".into()];
    let found = references(
        &here,
        "use super::{attempt::Done, cluster::{Hold, Report}};\nuse crate::destination::{self, Limits};\nlet x = crate::store::now_ms();",
    );
    let shown: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    for want in [
        "queue::attempt",
        "queue::cluster",
        "destination::self",
        "destination::Limits",
        "store::now_ms",
    ] {
        assert!(shown.contains(&want.to_string()), "{want} in {shown:?}");
    }
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&edges).len(), 1);
}
