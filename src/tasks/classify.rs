//! Image classification: an image becomes a normalised tensor; the model's logits become the top k labels.

use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Tensor};

use super::{check_label_count, image, softmax_rows};
use crate::engine::{BatchTask, InferenceModule};
use crate::model_toml::ImagePreprocessing;
use crate::tasks::TaskError;

pub const DEFAULT_TOP_K: i64 = 5;

#[derive(Clone)]
pub struct ImageClassifier {
    pub labels: Arc<Vec<String>>,
    pub preprocessing: ImagePreprocessing,
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub score: f32,
}

impl ImageClassifier {
    /// Decodes and preprocesses one image whose header `probe` checked. CPU work: call it off the async runtime.
    /// A JPEG is decoded no larger than the resize needs (`image::DecodeSize`).
    pub fn prepare(&self, bytes: &[u8], probe: image::Probe) -> Result<Tensor, TaskError> {
        let size = image::DecodeSize::ShorterAtLeast(self.preprocessing.resize);
        let decoded = image::decode_probed_for(bytes, probe, size)?;
        image::to_normalized_tensor(decoded, &self.preprocessing)
    }

    /// `top_k` must lie in 1..=number of labels; absent, it is 5 or the number of labels if fewer (a model
    /// fine-tuned onto two classes answers with both).
    pub fn validate_top_k(&self, top_k: Option<i64>) -> Result<usize, TaskError> {
        let classes = self.labels.len();
        let top_k = top_k.unwrap_or(DEFAULT_TOP_K.min(classes as i64));
        usize::try_from(top_k)
            .ok()
            .filter(|k| (1..=classes).contains(k))
            .ok_or_else(|| TaskError::Invalid(format!("top_k must be between 1 and {classes}, got {top_k}")))
    }

    /// The `top_k` most probable labels, most probable first.
    pub fn top_k(&self, probabilities: &[f32], top_k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        let by_score_desc = |a: &usize, b: &usize| probabilities[*b].total_cmp(&probabilities[*a]);
        let k = top_k.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by(k, by_score_desc);
            order.truncate(k);
        }
        order.sort_by(by_score_desc);
        order
            .into_iter()
            .map(|index| Prediction { label: self.labels[index].clone(), index, score: probabilities[index] })
            .collect()
    }
}

impl BatchTask for ImageClassifier {
    type Input = Tensor;
    /// Softmax probabilities, one per label.
    type Output = Vec<f32>;

    fn run_batch(&self, model: &InferenceModule, device: Device, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Vec<f32>>> {
        let batch = Tensor::f_stack(&inputs, 0)?.f_to_device(device)?;
        let logits = model.forward_one(&[&batch]).map_err(anyhow::Error::msg)?;
        softmax_rows(&logits, inputs.len())
    }

    fn warmup_input(&self) -> Tensor {
        image::blank_input(&self.preprocessing)
    }

    fn check_output(&self, output: &Vec<f32>) -> Result<(), String> {
        check_label_count(output, &self.labels)
    }
}
