//! `ember info`: what this build of ember sees: libtorch, devices, threads, models.

use std::fmt::Write as _;
use std::path::Path;

use crate::engine::{cuda, onnx};
use crate::repository::Repository;

/// A human-readable report; never fails (a broken repository is reported, not raised).
pub fn report(model_repo: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ember {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "libtorch {} at {}", env!("EMBER_LIBTORCH_VERSION"), loaded_libtorch_dir());
    // What `ember serve --device auto` does here: load libtorch_cuda only if the NVIDIA driver sees a GPU.
    cuda::auto_finds_gpu();
    let cuda_devices = cuda::device_count();
    let _ = writeln!(out, "devices: cpu{}", (0..cuda_devices).map(|i| format!(", cuda:{i}")).collect::<String>());
    let _ = match cuda::loaded_from() {
        Some(library) => writeln!(
            out,
            "cuda: loaded from {} devices={} cudnn={}",
            library.display(),
            cuda_devices,
            tch::Cuda::cudnn_is_available()
        ),
        None => writeln!(out, "cuda: not loaded (no NVIDIA driver sees a GPU; libtorch_cuda is opened only for one)"),
    };
    let _ = match (onnx::runtime::loaded_from(), onnx::runtime::library()) {
        (Some(library), _) => writeln!(out, "onnxruntime: loaded from {}", library.display()),
        (None, Some(library)) => {
            writeln!(out, "onnxruntime: {} (opened when an ONNX model loads)", library.display())
        }
        (None, None) => writeln!(
            out,
            "onnxruntime: not found (ONNX models cannot load; set {} or run make setup)",
            onnx::runtime::LIBRARY_VARIABLE
        ),
    };
    let _ = writeln!(
        out,
        "threads: intra-op={} inter-op={} (cores: {}); openmp={} mkl={} mkldnn={} (libtorch's defaults: each \
         model's workers set their own, below)",
        tch::get_num_threads(),
        tch::get_num_interop_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tch::utils::has_openmp(),
        tch::utils::has_mkl(),
        tch::utils::has_mkldnn(),
    );
    let _ = writeln!(out, "{}", crate::malloc_arenas::describe());
    let _ = writeln!(out, "memory limit: {}", crate::memory_limit::describe(crate::memory_limit::cgroup_limit()));
    let _ = match crate::fd_limit::raise() {
        Some(files) => writeln!(
            out,
            "open files: soft limit {} (ember serve raises it to the hard limit {}), room for {} connections",
            files.before,
            files.hard,
            files.connections()
        ),
        None => writeln!(out, "open files: limit unknown"),
    };
    let _ = writeln!(out, "model repository: {}", model_repo.display());
    match Repository::scan(model_repo) {
        Ok(repo) if repo.models.is_empty() => {
            let _ = writeln!(out, "  (no models: no */model.toml)");
        }
        Ok(repo) => {
            for model in &repo.models {
                let served = model.served_version().map_or("none (run the setup)".to_string(), |v| {
                    let files: Vec<&str> = model.formats(v).iter().map(|f| f.name()).collect();
                    format!(
                        "{v} as {} (of {}; format {})",
                        model.expected_format(v),
                        files.join(", "),
                        model.config.format
                    )
                });
                let default = if repo.defaults.get(&model.config.task) == Some(&model.name) { ", default" } else { "" };
                let sizing = model.config.sizing();
                let _ = writeln!(
                    out,
                    "  {} ({}{default}): versions {:?}, serves {served}, device {}, workers {} x {} thread(s), max batch {}",
                    model.name,
                    model.config.task,
                    model.versions,
                    model.config.device,
                    sizing.workers,
                    sizing.intra_op_threads,
                    model.config.batching.max_batch_size,
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

/// The folder of the libtorch_cpu.so this process mapped (a dist folder's lib/, or the venv the build linked);
/// the build's own folder when /proc cannot tell.
fn loaded_libtorch_dir() -> String {
    cuda::libtorch_dir().map_or_else(|| env!("EMBER_LIBTORCH_DIR").to_string(), |dir| dir.display().to_string())
}
