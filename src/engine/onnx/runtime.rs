//! ONNX Runtime itself: its library, opened once and only when a model needs it, and the one environment every
//! session is made in.
//!
//! ember is not linked against libonnxruntime (the `ort` crate's `load-dynamic`): a repository without ONNX
//! models never maps it, so it costs them no memory. The library is PyPI's `onnxruntime` wheel's
//! `libonnxruntime.so.*`, found in this order:
//! 1. `EMBER_ONNXRUNTIME_LIBRARY`, a path to the library (an operator's own build);
//! 2. beside the libtorch this process mapped (a dist folder's or the image's `lib/`, where `make dist` puts it);
//! 3. the wheel the build found in the venv (build.rs records its path).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The environment variable naming the library to load.
pub const LIBRARY_VARIABLE: &str = "EMBER_ONNXRUNTIME_LIBRARY";

struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The environment sessions are made in, opening ONNX Runtime on first use; the error says what was tried.
pub fn environment() -> Result<&'static Environment, String> {
    RUNTIME.get_or_init(open).as_ref().map(|runtime| &runtime.environment).map_err(Clone::clone)
}

/// Where ONNX Runtime was loaded from, once a model needed it.
pub fn loaded_from() -> Option<&'static Path> {
    RUNTIME.get().and_then(|r| r.as_ref().ok()).map(|runtime| runtime.library.as_path())
}

/// Where ONNX Runtime would be loaded from (for `ember info`), without loading it.
pub fn library() -> Option<PathBuf> {
    candidates().into_iter().find(|path| path.is_file())
}

fn candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os(LIBRARY_VARIABLE).filter(|p| !p.is_empty()) {
        // An operator's choice is the only one: falling back past it would hide their mistake.
        return vec![PathBuf::from(path)];
    }
    let mut found = Vec::new();
    if let Some(dir) = crate::engine::cuda::libtorch_dir() {
        found.extend(versioned_libraries(&dir));
    }
    let built_with = env!("EMBER_ONNXRUNTIME_BUILD_LIBRARY");
    if !built_with.is_empty() {
        found.push(PathBuf::from(built_with));
    }
    found
}

/// `libonnxruntime.so` or `libonnxruntime.so.<version>` in `dir`, the plain name first.
fn versioned_libraries(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|name| {
                name == "libonnxruntime.so"
                    || name
                        .strip_prefix("libonnxruntime.so.")
                        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
        .collect();
    names.sort();
    names
}

fn open() -> Result<Runtime, String> {
    let candidates = candidates();
    let Some(library) = candidates.iter().find(|path| path.is_file()).cloned() else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "ONNX Runtime's library was not found (tried {}; set {LIBRARY_VARIABLE} to a libonnxruntime.so, or \
             run `make setup`, which installs PyPI's onnxruntime wheel)",
            if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
        ));
    };
    let builder =
        ort::init_from(&library).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
    let environment = builder
        .with_name("ember")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("ONNX Runtime from {} cannot start: {e}", library.display()))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    Ok(Runtime { library, environment })
}
