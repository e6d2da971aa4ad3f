//! Links ember against the libtorch that torch-sys found (the PyTorch wheel in the project's venv).
//!
//! torch-sys leaves the rpath to libtorch undone for a binary: without it `ember` would need LD_LIBRARY_PATH.
//! libtorch_cuda is deliberately not linked (nothing in ember references a CUDA symbol, so `--as-needed` drops
//! it): src/engine/cuda.rs opens it at run time when a model can use a GPU, and CPU-only serving does not map
//! the CUDA libraries (about 250 MiB resident).
//!
//! It also compiles the small C++ shim for what tch does not wrap (csrc/), generates the gRPC service of
//! proto/kserve_v2.proto and the ONNX model messages of proto/onnx.proto, and records where the venv's ONNX Runtime
//! library is (src/engine/onnx/runtime.rs opens it when a model needs it; it is not linked).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    compile_protocol();
    check_api_page_files();
    compile_libtorch_stub();
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys did not publish a path (e.g. a docs build): nothing to add.
        println!("cargo:rustc-env=EMBER_ONNXRUNTIME_BUILD_LIBRARY=");
        return;
    };
    let lib_dir = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    compile_shim(lib_dir);
    println!("cargo:rustc-env=EMBER_LIBTORCH_DIR={}", lib_dir.display());
    let onnxruntime = onnxruntime_library(lib_dir).map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=EMBER_ONNXRUNTIME_BUILD_LIBRARY={onnxruntime}");
    println!("cargo:rustc-env=EMBER_LIBTORCH_VERSION={}", libtorch_version(lib_dir));
}

/// proto/kserve_v2.proto: the Open Inference Protocol's gRPC service, compiled by protox: the server ember runs,
/// and a client without a transport of its own (bench/v2_transports.rs gives it one). Its `bytes` fields become
/// `bytes::Bytes`, so raw tensor contents are not copied once more.
///
/// proto/onnx.proto: ONNX's ModelProto and what it holds, with `bytes` fields as `bytes::Bytes` too, so that
/// decoding a model file read into one buffer does not copy its weights.
fn compile_protocol() {
    println!("cargo:rerun-if-changed=proto/kserve_v2.proto");
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["kserve_v2.proto", "onnx.proto"], ["proto"])
        .expect("proto/kserve_v2.proto and proto/onnx.proto compile");
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        .compile_fds(descriptors)
        .expect("the gRPC service code is generated");
}

/// Swagger UI's files, which src/http/docs.rs embeds, come from npm (the Makefile's `npm ci --prefix docs/api`
/// runs before cargo); without them the build stops here with the command that fetches them.
fn check_api_page_files() {
    let dir = Path::new("docs/api/node_modules/swagger-ui-dist");
    for file in ["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"] {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.exists() {
            panic!(
                "{} is missing: the API page at /docs embeds Swagger UI from npm. Run `make build` (or \
                 `npm ci --prefix docs/api --ignore-scripts`) once, then cargo again",
                path.display()
            );
        }
    }
}

/// csrc/: freeze + optimize_for_inference and named buffers, which tch does not expose (inference_module.cpp),
/// and AOTInductor packages (aoti_package.cpp).
fn compile_shim(lib_dir: &Path) {
    for file in ["csrc/shim.h", "csrc/inference_module.cpp", "csrc/aoti_package.cpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
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
        .file("csrc/aoti_package.cpp")
        .compile("ember_shim");
}

/// csrc/libtorch_stub.c as a shared library whose soname is libtorch.so, which src/engine/aoti.rs embeds and
/// loads before an AOTInductor package (the file says why).
fn compile_libtorch_stub() {
    println!("cargo:rerun-if-changed=csrc/libtorch_stub.c");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("libtorch_stub.so");
    let status = cc::Build::new()
        .get_compiler()
        .to_command()
        .args(["-shared", "-fPIC", "-Wl,-soname,libtorch.so", "-o"])
        .arg(&out)
        .arg("csrc/libtorch_stub.c")
        .status()
        .expect("the C compiler runs");
    assert!(status.success(), "csrc/libtorch_stub.c does not compile");
}

/// PyPI's onnxruntime wheel installed beside torch in the venv: `<site-packages>/onnxruntime/capi/
/// libonnxruntime.so.<version>` (torch's libraries are `<site-packages>/torch/lib`).
fn onnxruntime_library(torch_lib_dir: &Path) -> Option<std::path::PathBuf> {
    let capi = torch_lib_dir.parent()?.parent()?.join("onnxruntime").join("capi");
    println!("cargo:rerun-if-changed={}", capi.display());
    let mut found: Vec<_> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
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
