//! One module per task: how a request becomes tensors and tensors become a response.

pub mod classify;
pub mod image;

use std::fmt;

use serde::Deserialize;

/// The task a model performs, as named by `task = "..."` in model.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    ImageClassification,
    TextClassification,
    TextGeneration,
    StyleTransfer,
    StyleFeatures,
    Tensor,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::ImageClassification => "image-classification",
            TaskKind::TextClassification => "text-classification",
            TaskKind::TextGeneration => "text-generation",
            TaskKind::StyleTransfer => "style-transfer",
            TaskKind::StyleFeatures => "style-features",
            TaskKind::Tensor => "tensor",
        }
    }

    pub fn needs_image_preprocessing(self) -> bool {
        matches!(self, TaskKind::ImageClassification)
    }

    /// Tasks whose models need a `labels.txt` beside model.toml.
    pub fn needs_labels(self) -> bool {
        matches!(self, TaskKind::ImageClassification | TaskKind::TextClassification)
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

use std::sync::Arc;

use crate::engine::{EngineError, WorkerPool, WorkerSpec};
use crate::metrics::ModelMetrics;
use crate::repository::ModelSpec;

/// A loaded model's execution backend, by task. Adding a task adds a variant here and its module above.
pub enum Backend {
    ImageClassification(WorkerPool<classify::ImageClassifier>),
}

impl Backend {
    /// Loads and warms up `worker.path` for the task in `spec`. Blocks: call it off the async runtime.
    pub fn start(spec: &ModelSpec, worker: WorkerSpec, metrics: ModelMetrics) -> Result<Backend, EngineError> {
        let unsupported = |message: String| EngineError::Load { model: spec.name.clone(), message };
        match spec.config.task {
            TaskKind::ImageClassification => {
                let (Some(labels), Some(preprocessing)) = (&spec.labels, &spec.config.image) else {
                    return Err(unsupported("image classification needs labels.txt and an [image] table".into()));
                };
                let task = classify::ImageClassifier {
                    labels: Arc::new(labels.clone()),
                    preprocessing: preprocessing.clone(),
                };
                Ok(Backend::ImageClassification(WorkerPool::start(worker, task, metrics)?))
            }
            other => Err(unsupported(format!("task `{other}` is not served by this version of ember"))),
        }
    }

    /// Finishes queued requests and stops the workers. Blocks.
    pub fn shutdown(&self) {
        match self {
            Backend::ImageClassification(pool) => pool.shutdown(),
        }
    }
}
