//! The layering rule of docs/ARCHITECTURE.md, checked: a module of the library imports only
//! from modules of lower layers (test modules aside), so no two modules depend on each other.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, lowest first. A module may use its own items and those of lower layers.
const LAYERS: &[&[&str]] = &[
    &["time", "privacy", "failpoint", "metrics"],
    &["model", "event"],
    &["config"],
    &["mapping"],
    &["fhir", "anomaly"],
    &["kafka"],
    &["sources", "sinks"],
    &["lake", "gateway"],
    &["dataflow"],
    &[
        "debugger",
        "bench",
        "bench_alerts",
        "bench_peer",
        "bench_gateway",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a file without comments and without its test module (which may reach up to
/// build what it checks).
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for path in all {
        let rel = path.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("name")
            .trim_end_matches(".rs");
        // The binary (main.rs, cli/) sits above every layer; lib.rs only declares modules.
        if matches!(top, "main" | "cli" | "lib") {
            continue;
        }
        let own = layer_of(top).unwrap_or_else(|| {
            panic!(
                "src/{} is in no layer: add its module to LAYERS and to docs/ARCHITECTURE.md",
                rel.display()
            )
        });
        let text = code(&std::fs::read_to_string(&path).expect("read"));
        for (i, _) in text.match_indices("crate::") {
            let used: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used == top || used.is_empty() {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                _ => wrong
                    .entry(format!("src/{}", rel.display()))
                    .or_default()
                    .push(used),
            }
        }
        checked += 1;
    }
    assert!(checked > 50, "the source tree was found ({checked} files)");
    assert!(
        wrong.is_empty(),
        "imports from the same or a higher layer (docs/ARCHITECTURE.md, \"Layers\"): {wrong:#?}"
    );
}
