//! Model execution: worker threads that run models (TorchScript, ONNX through ONNX Runtime, AOTInductor
//! packages), the per-model queue and batcher feeding them, and device and format choice. It knows nothing of
//! tasks: a task plugs in through `BatchTask`.
//!
//! Tokio never runs a forward pass: handlers push a job onto a model's queue and await its oneshot.

pub mod aoti;
pub mod batcher;
pub mod cuda;
pub mod device;
pub mod fault;
mod forward;
pub mod load_gate;
pub mod module;
pub mod onnx;
pub mod pool;
pub mod priority;
pub mod retired;
pub mod signature_check;

use std::time::Duration;

use crate::formats::ModelFormat;
use onnx::OnnxModel;

pub use fault::{catch_panic, panic_message, torch_error_summary};
pub use forward::forward_batched;
pub use load_gate::{give_back_freed_memory, resident_bytes, LoadGate};
pub use module::{InferenceModule, StandIn, StandInForward};
pub use pool::{BatchTask, WorkerPool, WorkerSpec};

/// What can go wrong between queueing a request and getting its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("model `{model}` is overloaded: its queue holds {capacity} waiting requests (batching.queue_capacity); retry after {retry_after_secs}s")]
    QueueFull { model: String, capacity: usize, retry_after_secs: u64 },
    /// One request of more entries than the whole queue holds: it is queued all or none, so it would never fit.
    #[error("the request needs {entries} places in model `{model}`'s queue together; it holds at most {capacity} (batching.queue_capacity): send less per request")]
    LargerThanQueue { model: String, entries: usize, capacity: usize },
    #[error("model `{model}` did not answer within {}ms (--request-timeout-ms)", timeout.as_millis())]
    DeadlineExceeded { model: String, timeout: Duration },
    #[error("model `{model}` is shutting down")]
    Stopped { model: String },
    #[error("inference failed in model `{model}`: {message}")]
    Inference { model: String, message: String },
    /// The model could not run a request's own tensors (Open Inference Protocol): the caller's shapes or values.
    #[error("model `{model}` cannot run these inputs: {message}")]
    Rejected { model: String, message: String },
    #[error("a worker of model `{model}` stopped without answering")]
    WorkerLost { model: String },
    #[error("model `{model}` failed to load: {message}")]
    Load { model: String, message: String },
    #[error("{message}")]
    NotFound { model: String, message: String },
    /// Under `--model-memory-budget`, a load that does not fit even after unloading every idle on-demand model.
    #[error("{message}")]
    NoRoom { model: String, message: String, retry_after_secs: u64 },
    /// An on-demand model whose last load failed, within its back-off: not retried by every request.
    #[error("model `{model}` failed to load: {message}; the next try is in {retry_after_secs}s")]
    LoadBackingOff { model: String, message: String, retry_after_secs: u64 },
    /// A request waited its whole deadline for an on-demand model's load (which goes on).
    #[error("model `{model}` is still loading on demand after {}ms (--request-timeout-ms); its load goes on: retry shortly", timeout.as_millis())]
    LoadWaitExceeded { model: String, timeout: Duration },
}

impl EngineError {
    /// A full queue. Retry-After: a second is several batches (or many generation steps) of any model this
    /// engine is meant for.
    pub fn queue_full(model: &str, capacity: usize) -> EngineError {
        EngineError::QueueFull { model: model.to_string(), capacity, retry_after_secs: 1 }
    }
}

impl WorkerSpec {
    /// Loads this worker's copy of the model in its format; the error names the file and the one-line reason.
    /// An ONNX graph's declared inputs are checked against what the task feeds it.
    pub fn load_module(&self) -> Result<InferenceModule, String> {
        if let Some(stand_in) = &self.stand_in {
            return Ok(InferenceModule::stand_in(stand_in.clone()));
        }
        let path = &self.path;
        match self.format {
            ModelFormat::TorchScript => InferenceModule::load(path, self.device, self.optimize)
                .map_err(|e| format!("cannot load {}: {}", path.display(), torch_error_summary(&e))),
            ModelFormat::Onnx => {
                let model = OnnxModel::load(path, self.device, self.sizing.intra_op_threads, self.optimize)?;
                signature_check::ports_fit("inputs", model.inputs(), &self.task_inputs)
                    .and_then(|()| signature_check::ports_fit("outputs", model.outputs(), &self.task_outputs))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(InferenceModule::from_onnx(model, self.optimize))
            }
            // One model instance per worker that calls the shared package at once.
            ModelFormat::Aoti => {
                let runners = if self.batching.share_weights { self.sizing.workers } else { 1 };
                InferenceModule::aoti(path, self.device, runners)
            }
        }
    }
}

/// Whether a version's file in `format` can run on `device` here (for `format = "auto"`, which passes over one
/// that cannot); the error says why not. Reads only an AOTInductor package's metadata.
pub fn format_usable(format: ModelFormat, path: &std::path::Path, device: tch::Device) -> Result<(), String> {
    match format {
        ModelFormat::TorchScript => Ok(()),
        ModelFormat::Onnx => onnx::runs_on(device),
        ModelFormat::Aoti => aoti::inspect(path)?.runs_on(device, path),
    }
}

/// Runs a worker thread's `load`, tells the thread that started it how it went (on `ready`), and gives back the
/// module to serve with, or `None` if the worker should exit. A panic in the load (task code warming the model up)
/// fails the load with its message, as it does on a pool's loading thread, instead of ending the thread unheard.
pub fn load_reporting(
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    load: impl FnOnce() -> Result<InferenceModule, String>,
) -> Option<InferenceModule> {
    match catch_panic(load).and_then(|loaded| loaded) {
        Ok(model) => {
            let _ = ready.send(Ok(()));
            Some(model)
        }
        Err(message) => {
            let _ = ready.send(Err(message));
            None
        }
    }
}
