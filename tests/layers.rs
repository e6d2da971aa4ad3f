//! The dependency rule of ARCHITECTURE.md, checked on the source: each top-level module of the library may use
//! only modules of a lower layer, so the module graph has no circles, `engine` never learns about tasks or
//! HTTP, and the two front ends (`http`, `grpc`) share one layer: each reaches the service layer below, never
//! the other. Reads `crate::` and `super::` paths in src/; needs no model and no libtorch.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of src/lib.rs, lowest layer first. A module may use the modules of the layers before
/// its own, never one of its own layer or above.
const LAYERS: &[&[&str]] = &[
    // leaves: know nothing of ember
    &["cpus", "fd_limit", "formats", "memory_limit", "metrics", "reference", "rng", "shutdown", "signature", "watched"],
    // the model.toml schema
    &["model_toml", "malloc_arenas"],
    // the repository of model folders; logging and tracing; the door: TLS, API keys, rate limits
    &["repository", "telemetry", "tls", "access"],
    // the server's flags
    &["flags"],
    // running models: workers, queues, batching, devices
    &["engine"],
    // what each task does with a request and a module
    &["tasks"],
    // the loaded models and their swaps; fine-tuning
    &["registry", "train"],
    // background fine-tuning jobs
    &["jobs"],
    // what every front end does: the shared state, finding models, the protocol's checks, errors as kinds
    &["service"],
    // the front ends, side by side: neither may use the other
    &["http", "grpc"],
    // the process: start-up, the `info` report
    &["server", "info"],
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

/// Every file of src/: its path relative to src/, and its text.
fn src_files() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .map(|file| (file.strip_prefix(&src).unwrap().to_path_buf(), fs::read_to_string(file).unwrap()))
        .collect()
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

/// What breaks the layers in one file of src/ (`relative` to src/).
fn violations_in(relative: &Path, source: &str) -> Vec<String> {
    let module = module_path(relative);
    let Some(top) = module.first().cloned() else { return Vec::new() };
    if top == "lib" || top == "main" {
        return Vec::new();
    }
    let Some(own_layer) = layer_of(&top) else {
        return vec![format!("src/{top}: a top-level module that LAYERS in tests/layers.rs does not place")];
    };
    let mut violations = Vec::new();
    for used in used_top_modules(source, &module) {
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
    violations
}

#[test]
fn each_module_uses_only_lower_layers() {
    let violations: Vec<String> =
        src_files().iter().flat_map(|(relative, source)| violations_in(relative, source)).collect();
    assert!(violations.is_empty(), "dependencies that break the layers:\n{}", violations.join("\n"));
}

#[test]
fn a_front_end_that_uses_the_other_is_refused() {
    let grpc = violations_in(Path::new("grpc/service.rs"), "use crate::http::error::ApiError;\n");
    assert_eq!(grpc, ["grpc/service.rs uses `http`, which is not in a lower layer than `grpc`"]);
    let http = violations_in(Path::new("http/v2/mod.rs"), "use super::super::super::grpc::proto;\n");
    assert_eq!(http, ["http/v2/mod.rs uses `grpc`, which is not in a lower layer than `http`"]);
    assert!(violations_in(Path::new("grpc/service.rs"), "use crate::service::ApiError;\n").is_empty());
    let service = violations_in(Path::new("service/mod.rs"), "use crate::http::body::read_limited;\n");
    assert_eq!(service, ["service/mod.rs uses `http`, which is not in a lower layer than `service`"]);
}

#[test]
fn the_checker_sees_both_kinds_of_path() {
    let module = vec!["http".to_string(), "v2".to_string(), "codec".to_string()];
    let source = "use crate::tasks::Backend;\nuse super::super::admin::load;\nuse super::super::super::engine::x;\n\
        mod tests {\n    use super::super::super::jobs::y;\n}";
    let used = used_top_modules(source, &module);
    assert_eq!(used, BTreeSet::from(["engine".to_string(), "tasks".to_string()]));
}

/// The sibling modules (files of one folder of src/, not its mod.rs) that a file uses: `use super::x` lines, and
/// `crate::<its parent>::x` anywhere.
fn used_siblings(source: &str, module: &[String], siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module[..module.len() - 1].join("::");
    let mut used = BTreeSet::new();
    let identifier =
        |rest: &str| rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_string();
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("use super::") {
            used.insert(identifier(rest.trim_start_matches('{')));
            // `use super::{a, b::C}`: every name the braces open with.
            if let Some(list) = rest.strip_prefix('{') {
                used.extend(list.split(',').map(|item| identifier(item.trim())));
            }
        }
    }
    let qualified = format!("crate::{parent}::");
    for (index, _) in source.match_indices(&qualified) {
        used.insert(identifier(&source[index + qualified.len()..]));
    }
    used.retain(|name| siblings.contains(name) && Some(name) != module.last());
    used
}

/// A circle among the sibling files of one folder (`a` uses `b`, `b` uses `a`, directly or through others)
/// makes neither readable alone; the files of a folder form a graph without circles, as the top-level modules do.
#[test]
fn the_files_of_a_folder_use_each_other_without_circles() {
    // folder's module path -> file's module name -> the siblings it uses
    let mut graphs: std::collections::BTreeMap<String, Graph> = Default::default();
    let mut siblings_of: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let mut modules = Vec::new();
    for (relative, source) in src_files() {
        let module = module_path(&relative);
        if module.len() < 2 || relative.file_name().is_some_and(|name| name == "mod.rs") {
            continue;
        }
        let folder = module[..module.len() - 1].join("::");
        siblings_of.entry(folder.clone()).or_default().insert(module.last().unwrap().clone());
        modules.push((folder, module, source));
    }
    for (folder, module, source) in modules {
        let used = used_siblings(&source, &module, &siblings_of[&folder]);
        graphs.entry(folder).or_default().insert(module.last().unwrap().clone(), used);
    }
    let circles: Vec<String> = graphs.iter().flat_map(|(folder, graph)| circles_in(folder, graph)).collect();
    assert!(circles.is_empty(), "files of one folder that use each other in a circle:\n{}", circles.join("\n"));
}

type Graph = std::collections::BTreeMap<String, BTreeSet<String>>;

/// Each circle through a node of `graph` (a folder's files and the siblings each uses), as `folder: a -> b -> a`.
fn circles_in(folder: &str, graph: &Graph) -> Vec<String> {
    let mut circles = Vec::new();
    for start in graph.keys() {
        // Depth-first from `start`, looking for a path back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    circles.push(format!("{folder}: {} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    circles
}

#[test]
fn the_circle_checker_sees_a_circle_between_two_files() {
    let module = |file: &str| vec!["tasks".to_string(), file.to_string()];
    let siblings = BTreeSet::from(["image".to_string(), "style".to_string(), "classify".to_string()]);
    // What tasks/image.rs and tasks/style.rs once said of each other.
    let image =
        used_siblings("use super::style::OutputFormat;\nuse crate::tasks::TaskError;\n", &module("image"), &siblings);
    let style = used_siblings("use super::{image as pixels, number_in_range};\n", &module("style"), &siblings);
    let classify = used_siblings("use crate::tasks::image::probe;\n", &module("classify"), &siblings);
    let graph = Graph::from([("image".into(), image), ("style".into(), style), ("classify".into(), classify)]);
    let circles = circles_in("tasks", &graph);
    assert_eq!(circles, ["tasks: image -> style -> image", "tasks: style -> image -> style"]);
}
