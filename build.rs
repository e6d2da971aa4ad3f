//! Links ember against the libtorch that torch-sys found (the PyTorch wheel in the project's venv).
//!
//! Two things torch-sys leaves undone for a binary:
//! * an rpath to libtorch, so `ember` runs without LD_LIBRARY_PATH;
//! * a hard dependency on libtorch_cuda. Nothing in ember references a CUDA symbol directly, so the
//!   linker's default `--as-needed` drops the library and CUDA silently disappears at run time.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys did not publish a path (e.g. a docs build): nothing to add.
        return;
    };
    let lib_dir = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=EMBER_LIBTORCH_DIR={}", lib_dir.display());
    println!("cargo:rustc-env=EMBER_LIBTORCH_VERSION={}", libtorch_version(lib_dir));
}

/// The PyTorch wheel records its version in torch/version.py (`__version__ = '2.11.0+cu130'`).
fn libtorch_version(lib_dir: &Path) -> String {
    let version_py = lib_dir.join("..").join("version.py");
    std::fs::read_to_string(version_py)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
