//! ARCHITECTURE.md's layers, held against the code: every `crate::X` path
//! in a module's files names a module on a lower layer (or its own), and
//! only `commands` (and `demo`, for `scenes`) reach behind the demo's
//! boundary.

use std::collections::BTreeMap;
use std::path::Path;

/// Module -> layer, from the "## Layers" list of ARCHITECTURE.md.
fn layers(repo: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(repo.join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a Layers section");
    let mut out = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let Some(rest) = line.strip_prefix("- ") else {
            continue;
        };
        let Some((n, modules)) = rest.split_once(':') else {
            continue;
        };
        let Ok(n) = n.trim().parse::<usize>() else {
            continue;
        };
        for m in modules.split(',') {
            out.insert(m.trim().trim_matches('`').to_string(), n);
        }
    }
    out
}

/// The modules each top-level module's files name as `crate::X`.
fn imports(src: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(src) {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                out.entry(module.clone())
                    .or_default()
                    .push((name, rel.display().to_string()));
            }
        }
    }
    out
}

#[test]
fn no_import_runs_back_up_a_layer() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers = layers(repo);
    assert!(layers.len() >= 30, "{layers:?}");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (module, used) in imports(&repo.join("src")) {
        checked += used.len();
        let Some(&own) = layers.get(&module) else {
            wrong.push(format!("{module}: not on any layer in ARCHITECTURE.md"));
            continue;
        };
        for (name, file) in used {
            let Some(&theirs) = layers.get(&name) else {
                wrong.push(format!("{file}: crate::{name} is not on any layer"));
                continue;
            };
            if theirs > own {
                wrong.push(format!(
                    "{file}: {module} (layer {own}) imports {name} (layer {theirs})"
                ));
            }
            let behind = ["scenes", "demo", "fuzzing"].contains(&name.as_str());
            let allowed = module == "commands" || (module == "demo" && name == "scenes");
            if behind && !allowed {
                wrong.push(format!(
                    "{file}: {module} reaches behind the demo's boundary ({name})"
                ));
            }
        }
    }
    assert!(checked >= 200, "only {checked} crate:: paths found");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The command files of src/commands/ and what each names as `super::X`
/// (or `crate::commands::X`).
fn command_imports(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for prefix in ["super::", "crate::commands::"] {
            for (i, _) in text.match_indices(prefix) {
                let name: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((file.clone(), name));
                }
            }
        }
    }
    out
}

/// What commands do alike lives in `context` and `shared`; a command never
/// calls another command's file.
fn commands_calling_commands(dir: &Path) -> Vec<String> {
    const SHARED: [&str; 2] = ["context", "shared"];
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    command_imports(dir)
        .into_iter()
        .filter(|(file, name)| {
            file != "mod"
                && !SHARED.contains(&file.as_str())
                && !SHARED.contains(&name.as_str())
                && names.contains(name)
        })
        .map(|(file, name)| format!("src/commands/{file}.rs calls the `{name}` command"))
        .collect()
}

#[test]
fn commands_never_call_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
    let imports = command_imports(&dir);
    assert!(
        imports.len() >= 15,
        "only {} super:: paths found",
        imports.len()
    );
    let wrong = commands_calling_commands(&dir);
    assert!(wrong.is_empty(), "{wrong:#?}");
    // A planted call is caught.
    let planted = tempfile::tempdir().unwrap();
    std::fs::write(planted.path().join("shared.rs"), "pub fn merge() {}").unwrap();
    std::fs::write(planted.path().join("report.rs"), "fn run() {}").unwrap();
    std::fs::write(
        planted.path().join("build.rs"),
        "use super::shared::merge;\nfn run() { super::report::run() }",
    )
    .unwrap();
    assert_eq!(
        commands_calling_commands(planted.path()),
        vec!["src/commands/build.rs calls the `report` command"]
    );
}

/// Every word a command prints goes through the printer (results to
/// stdout, notes to stderr unless `--quiet`): no `println!` and friends in
/// src/commands/.
#[test]
fn commands_print_through_the_printer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if ["println!", "eprintln!", "print!(", "eprint!("]
                .iter()
                .any(|m| line.contains(m))
            {
                wrong.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `(lines, file, name)` of every function in `src` longer than `limit`
/// lines, from its `fn` line to the closing brace at its indentation.
fn long_functions(src: &Path, limit: usize) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let indent = line.len() - body.len();
            let Some(at) = body.find("fn ") else { continue };
            let head = &body[..at];
            let words = [
                "pub ",
                "pub(crate) ",
                "pub(super) ",
                "unsafe ",
                "const ",
                "async ",
            ];
            if !(head.is_empty() || words.iter().any(|w| head.starts_with(w)))
                || head.contains("//")
            {
                continue;
            }
            let name: String = body[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The body opens on this line or a later one; skip declarations.
            let Some(open) = (i..lines.len()).find(|&j| {
                let l = lines[j].trim_end();
                l.ends_with('{') || l.ends_with(';')
            }) else {
                continue;
            };
            if !lines[open].trim_end().ends_with('{') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) {
                if end - i + 1 > limit {
                    let file = entry
                        .path()
                        .strip_prefix(src)
                        .unwrap()
                        .display()
                        .to_string();
                    out.push((end - i + 1, file, name));
                }
            }
        }
    }
    out.sort();
    out
}

/// No function in src/ is over 100 lines but the data tables: the model
/// registry and the pickle allow-list.
#[test]
fn no_function_is_over_a_hundred_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tables = ["registry", "pickle_globals"];
    let long: Vec<_> = long_functions(&src, 100)
        .into_iter()
        .filter(|(_, _, name)| !tables.contains(&name.as_str()))
        .collect();
    assert!(long.is_empty(), "{long:#?}");
    // The tables are found, so the scan sees long functions at all.
    let found = long_functions(&src, 100);
    assert!(
        tables.iter().all(|t| found.iter().any(|(_, _, n)| n == t)),
        "{found:?}"
    );
}
