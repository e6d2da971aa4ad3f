//! Links ember against the libtorch that torch-sys found (the PyTorch wheel in the project's venv).
//!
//! torch-sys leaves the rpath to libtorch undone for a binary: without it `ember` would need LD_LIBRARY_PATH.
//! libtorch_cuda is deliberately not linked (nothing in ember references a CUDA symbol, so `--as-needed` drops
//! it): src/engine/cuda.rs opens it at run time when a model can use a GPU, and CPU-only serving does not map
//! the CUDA libraries (about 250 MiB resident).
//!
//! It also compiles csrc/inference_module.cpp, the small C++ shim for what tch does not wrap.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys did not publish a path (e.g. a docs build): nothing to add.
        return;
    };
    let lib_dir = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    compile_inference_module(lib_dir);
    println!("cargo:rustc-env=EMBER_LIBTORCH_DIR={}", lib_dir.display());
    println!("cargo:rustc-env=EMBER_LIBTORCH_VERSION={}", libtorch_version(lib_dir));
}

/// csrc/inference_module.cpp: freeze + optimize_for_inference, which tch does not expose.
fn compile_inference_module(lib_dir: &Path) {
    println!("cargo:rerun-if-changed=csrc/inference_module.cpp");
    let include = lib_dir.join("..").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        // PyTorch wheels since 2.7 are built with the C++11 ABI only (torch._C._GLIBCXX_USE_CXX11_ABI is True).
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/inference_module.cpp")
        .compile("ember_inference_module");
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
