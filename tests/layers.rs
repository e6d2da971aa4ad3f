//! The dependency rule of ARCHITECTURE.md, checked on the source: each top-level module of the library may use
//! only modules of a lower layer, so the module graph has no circles and `engine` never learns about tasks or
//! HTTP. Reads `crate::` and `super::` paths in src/; needs no model and no libtorch.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of src/lib.rs, lowest layer first. A module may use the modules of the layers before
/// its own, never one of its own layer or above.
const LAYERS: &[&[&str]] = &[
    // leaves: know nothing of ember
    &["cpus", "fd_limit", "formats", "metrics", "reference", "rng", "shutdown", "signature"],
    // the configuration (flags, model.toml) and the repository of model folders
    &["config", "malloc_arenas"],
    &["repository", "telemetry"],
    // running TorchScript modules: workers, queues, batching, devices
    &["engine"],
    // what each task does with a request and a module
    &["tasks"],
    // the loaded models and their swaps; fine-tuning
    &["registry", "train"],
    // background fine-tuning jobs
    &["jobs"],
    // routes, bodies, errors as statuses
    &["http"],
    // the gRPC front end over the HTTP layer's state and protocol functions
    &["grpc"],
    // the process: start-up, the `info` report
    &["server", "info"],
    // test-only
    &["fuzz"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module path of a file under src/: src/a/b.rs and src/a/b/mod.rs are `a::b`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    if file != "mod.rs" {
        parts.push(file.trim_end_matches(".rs").to_string());
    }
    parts
}

/// The top-level modules a file names: `crate::x` anywhere, and `use super::…` lines that climb to the crate root.
fn used_top_modules(source: &str, module: &[String]) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let identifier =
        |rest: &str| rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_string();
    for (index, _) in source.match_indices("crate::") {
        let preceded_by_ident = source[..index].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !preceded_by_ident {
            used.insert(identifier(&source[index + "crate::".len()..]));
        }
    }
    // Only the file's own `use` lines: inside an inline module (`mod tests`) `super::` means the file itself.
    for line in source.lines().filter(|line| line.starts_with("use super::")) {
        let mut rest = line.trim_start_matches("use ");
        let mut depth = module.len();
        while let Some(after) = rest.strip_prefix("super::") {
            rest = after;
            depth = depth.saturating_sub(1);
        }
        if depth == 0 {
            used.insert(identifier(rest));
        }
    }
    used.retain(|m| !m.is_empty() && m != "self");
    used
}

#[test]
fn each_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = module_path(relative);
        let Some(top) = module.first().cloned() else { continue };
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own_layer) = layer_of(&top) else {
            violations.push(format!("src/{top}: a top-level module that LAYERS in tests/layers.rs does not place"));
            continue;
        };
        let source = fs::read_to_string(&file).unwrap();
        for used in used_top_modules(&source, &module) {
            if used == top {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own_layer => {}
                Some(_) => violations
                    .push(format!("{} uses `{used}`, which is not in a lower layer than `{top}`", relative.display())),
                None => violations.push(format!("{} uses `{used}`, which LAYERS does not place", relative.display())),
            }
        }
    }
    assert!(violations.is_empty(), "dependencies that break the layers:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_both_kinds_of_path() {
    let module = vec!["http".to_string(), "v2".to_string(), "codec".to_string()];
    let source = "use crate::tasks::Backend;\nuse super::super::admin::load;\nuse super::super::super::engine::x;\n\
        mod tests {\n    use super::super::super::jobs::y;\n}";
    let used = used_top_modules(source, &module);
    assert_eq!(used, BTreeSet::from(["engine".to_string(), "tasks".to_string()]));
}
