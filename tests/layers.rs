//! The layering rule of docs/ARCHITECTURE.md, checked: a module of the library imports only
//! from modules of lower layers (test modules aside), so no two modules depend on each other.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, lowest first. A module may use its own items and those of lower layers.
const LAYERS: &[&[&str]] = &[
    &["time", "privacy", "failpoint", "metrics"],
    &["model", "event", "hl7"],
    &["config"],
    &["mapping"],
    &["fhir", "anomaly"],
    &["kafka"],
    &["sources", "sinks", "board"],
    &["lake", "gateway"],
    &["dataflow"],
    &["debugger", "bench"],
    &["web"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a file without comments and without the items under `#[cfg(test)]` (test
/// modules may reach up to build what they check): each such item is cut to its matching
/// brace, so production code after a test module is still checked.
fn code(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let item = &rest[i..];
        // The item ends at the `;` before any brace, or at the brace matching its first.
        let end = match (item.find('{'), item.find(';')) {
            (Some(b), Some(semi)) if semi < b => semi + 1,
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (j, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(semi)) => semi + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The top modules a `crate::` path names: `crate::a::b` names `a`; `crate::{a::x, b}`
/// names `a` and `b`.
fn used_after(text: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 1usize;
        let mut names = Vec::new();
        let mut start = 0;
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        names.push(ident(&group[start..j]));
                        break;
                    }
                }
                ',' if depth == 1 => {
                    names.push(ident(&group[start..j]));
                    start = j + 1;
                }
                _ => {}
            }
        }
        names.into_iter().filter(|n| !n.is_empty()).collect()
    } else {
        vec![ident(text)]
    }
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
            for used in used_after(&text[i + 7..]) {
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
        }
        checked += 1;
    }
    assert!(checked > 50, "the source tree was found ({checked} files)");
    assert!(
        wrong.is_empty(),
        "imports from the same or a higher layer (docs/ARCHITECTURE.md, \"Layers\"): {wrong:#?}"
    );
}

#[test]
fn the_check_sees_production_code_after_a_test_module_and_grouped_imports() {
    let text = "use crate::time;\n#[cfg(test)]\nmod tests {\n    use crate::dataflow;\n    fn f() { if x { } }\n}\nfn later() { crate::sinks::x(); }\n";
    let c = code(text);
    assert!(
        c.contains("crate::sinks") && !c.contains("crate::dataflow"),
        "{c}"
    );
    assert_eq!(
        used_after("{model::Measurement, anomaly::{rules, judge}, time};"),
        vec!["model", "anomaly", "time"]
    );
}
