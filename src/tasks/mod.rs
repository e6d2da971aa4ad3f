//! One module per task: how a request becomes tensors and tensors become a response.

pub mod classify;
mod error;
pub mod generate;
pub mod image;
pub mod sentiment;
pub mod style;
pub mod style_transfer;
pub mod tensor;

use std::sync::Arc;

use anyhow::{ensure, Context};
use tch::{Device, Kind, Tensor};

use crate::engine::{EngineError, WorkerPool, WorkerSpec};
use crate::metrics::Metrics;
use crate::model_toml::TaskKind;
use crate::repository::ModelSpec;
use crate::signature::Signature;
pub use error::TaskError;
use generate::GenerationEngine;

/// A loaded model's execution backend, by task. Adding a task adds a variant here and its module above.
pub enum Backend {
    ImageClassification(WorkerPool<classify::ImageClassifier>),
    TextClassification(WorkerPool<sentiment::TextClassifier>),
    TextGeneration(GenerationEngine),
    StyleTransfer(WorkerPool<style::Stylizer>),
    StyleFeatures(WorkerPool<style_transfer::StyleOptimizer>),
    Tensor(WorkerPool<tensor::TensorModel>),
}

impl Backend {
    /// Loads and warms up `worker.path` for the task in `spec`. Blocks: call it off the async runtime.
    pub fn start(spec: &ModelSpec, worker: WorkerSpec, metrics: &Metrics) -> Result<Backend, EngineError> {
        let unsupported = |message: String| EngineError::Load { model: spec.name.clone(), message };
        let model_metrics = metrics.for_model(&spec.name);
        match spec.config.task {
            TaskKind::ImageClassification => {
                let (Some(labels), Some(preprocessing)) = (&spec.labels, &spec.config.image) else {
                    return Err(unsupported("image classification needs labels.txt and an [image] table".into()));
                };
                let task = classify::ImageClassifier {
                    labels: Arc::new(labels.clone()),
                    preprocessing: preprocessing.clone(),
                };
                Ok(Backend::ImageClassification(WorkerPool::start(worker, task, model_metrics)?))
            }
            TaskKind::TextClassification => {
                let (Some(labels), Some(text)) = (&spec.labels, &spec.config.text) else {
                    return Err(unsupported("text classification needs labels.txt and a [text] table".into()));
                };
                let task = sentiment::TextClassifier::load(&spec.tokenizer_file(), labels.clone(), text)
                    .map_err(unsupported)?;
                Ok(Backend::TextClassification(WorkerPool::start(worker, task, model_metrics)?))
            }
            TaskKind::TextGeneration => Ok(Backend::TextGeneration(GenerationEngine::start(
                worker,
                spec.config.generation.clone(),
                model_metrics,
                metrics.for_generation(&spec.name),
            )?)),
            TaskKind::StyleTransfer => Ok(Backend::StyleTransfer(WorkerPool::start(
                worker,
                style::Stylizer { config: spec.config.stylize.clone() },
                model_metrics,
            )?)),
            TaskKind::StyleFeatures => Ok(Backend::StyleFeatures(WorkerPool::start(
                worker,
                style_transfer::StyleOptimizer { config: spec.config.optimization.clone() },
                model_metrics,
            )?)),
            TaskKind::Tensor => Ok(Backend::Tensor(WorkerPool::start(
                worker,
                tensor::TensorModel { signature: tensor::signature(spec) },
                model_metrics,
            )?)),
        }
    }

    /// Runs one request of model-level tensors (Open Inference Protocol) through the model's own queue and
    /// batches; inputs and outputs in the model's signature order, on the CPU.
    pub async fn infer_tensors(
        &self,
        inputs: Vec<Tensor>,
        timeout: std::time::Duration,
    ) -> Result<Vec<Tensor>, EngineError> {
        match self {
            Backend::ImageClassification(pool) => pool.infer_tensors(inputs, timeout).await,
            Backend::TextClassification(pool) => pool.infer_tensors(inputs, timeout).await,
            Backend::TextGeneration(engine) => engine.infer_tensors(inputs, timeout).await,
            Backend::StyleTransfer(pool) => pool.infer_tensors(inputs, timeout).await,
            Backend::StyleFeatures(pool) => pool.infer_tensors(inputs, timeout).await,
            Backend::Tensor(pool) => pool.infer_tensors(inputs, timeout).await,
        }
    }

    /// The model-level tensors of `spec` as this backend serves them: a text classifier's token ids are bounded
    /// by its tokenizer's vocabulary, which only the loaded tokenizer knows.
    pub fn signature(&self, spec: &ModelSpec) -> Signature {
        let mut signature = tensor::signature(spec);
        if let Backend::TextClassification(pool) = self {
            signature.bound_token_ids("input_ids", pool.task().vocabulary_size(), "the tokenizer's vocabulary");
        }
        signature
    }

    /// Finishes queued requests and stops the workers. Blocks.
    pub fn shutdown(&self) {
        match self {
            Backend::ImageClassification(pool) => pool.shutdown(),
            Backend::TextClassification(pool) => pool.shutdown(),
            Backend::TextGeneration(engine) => engine.shutdown(),
            Backend::StyleTransfer(pool) => pool.shutdown(),
            Backend::StyleFeatures(pool) => pool.shutdown(),
            Backend::Tensor(pool) => pool.shutdown(),
        }
    }
}

/// A request's integer parameter, or `default` when absent, if it lies in `min..=max`; else a 422 that names the
/// parameter, the range and the value.
pub fn integer_in_range(
    name: &str,
    value: Option<i64>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, TaskError> {
    let value = value.unwrap_or(default as i64);
    usize::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| TaskError::Invalid(format!("{name} must be between {min} and {max}, got {value}")))
}

/// A request's number parameter, or `default` when absent, if it lies in `min..=max`; else a 422 as above.
pub fn number_in_range(name: &str, value: Option<f64>, default: f64, min: f64, max: f64) -> Result<f64, TaskError> {
    let value = value.unwrap_or(default);
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(TaskError::Invalid(format!("{name} must be between {min} and {max}, got {value}")))
    }
}

/// A classifier's `[batch, labels]` logits as one row of softmax probabilities per input, on the CPU.
fn softmax_rows(logits: &Tensor, batch: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let size = logits.size();
    ensure!(
        // A row of no scores would also leave nothing to split the rows by.
        size.len() == 2 && size[0] == batch as i64 && size[1] > 0,
        "the model returned a tensor of shape {size:?}; expected [batch, labels] with batch {batch}"
    );
    let probabilities = logits.f_softmax(-1, Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let flat = Vec::<f32>::try_from(probabilities.view([-1])).context("copying the scores out")?;
    Ok(flat.chunks(size[1] as usize).map(<[f32]>::to_vec).collect())
}

/// A classifier must give one score per line of labels.txt.
fn check_label_count(scores: &[f32], labels: &[String]) -> Result<(), String> {
    if scores.len() == labels.len() {
        Ok(())
    } else {
        Err(format!("the model gives {} scores but labels.txt has {} labels", scores.len(), labels.len()))
    }
}
