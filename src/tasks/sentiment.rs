//! Text classification (sentiment): a text becomes token ids with the model's own `tokenizer.json`; a batch is
//! padded to its longest text; the model's logits become a score per label.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use super::{check_label_count, softmax_rows};
use crate::engine::{BatchTask, InferenceModule};
use crate::tasks::TaskError;

/// Warm-up input: a sentence-sized run of some token id (any id within every vocabulary).
const WARMUP_TOKEN: i64 = 1;
const WARMUP_TOKENS: usize = 24;

#[derive(Clone)]
pub struct TextClassifier {
    tokenizer: Arc<Tokenizer>,
    pub labels: Arc<Vec<String>>,
    pub max_tokens: usize,
}

/// One text's token ids, special tokens included, truncated to the model's maximum.
#[derive(Clone)]
pub struct TokenizedText(Vec<i64>);

#[derive(Debug, Serialize)]
pub struct Classification {
    pub label: String,
    pub score: f32,
    /// Every label's probability.
    pub scores: BTreeMap<String, f32>,
}

impl TextClassifier {
    /// Token ids run from 0 to this size minus one (special tokens included).
    pub fn vocabulary_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Reads `tokenizer_file` and makes it truncate at `max_tokens` and never pad (batches pad themselves, to
    /// their longest text).
    pub fn load(tokenizer_file: &Path, labels: Vec<String>, max_tokens: usize) -> Result<TextClassifier, String> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_file)
            .map_err(|e| format!("cannot read {}: {e}", tokenizer_file.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| format!("cannot truncate at {max_tokens} tokens: {e}"))?;
        Ok(TextClassifier { tokenizer: Arc::new(tokenizer), labels: Arc::new(labels), max_tokens })
    }

    /// Token ids and attention mask as the model sees them (the mask is all ones: no padding).
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>), String> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| format!("cannot tokenise the text: {e}"))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_attention_mask().to_vec()))
    }

    pub fn tokenize(&self, text: &str) -> Result<TokenizedText, TaskError> {
        let (ids, _) = self.encode(text).map_err(TaskError::Invalid)?;
        Ok(TokenizedText(ids.into_iter().map(i64::from).collect()))
    }

    /// Names the most probable label and lists every label's probability.
    pub fn classification(&self, probabilities: &[f32]) -> Classification {
        let best = (0..probabilities.len()).max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b])).unwrap_or(0);
        Classification {
            label: self.labels[best].clone(),
            score: probabilities[best],
            scores: self.labels.iter().cloned().zip(probabilities.iter().copied()).collect(),
        }
    }
}

/// Stacks token id rows into `[batch, longest]` ids and a mask with 0 over the padding.
pub(crate) fn pad_batch(inputs: &[TokenizedText]) -> (Tensor, Tensor) {
    let longest = inputs.iter().map(|t| t.0.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; inputs.len() * longest];
    let mut mask = vec![0i64; inputs.len() * longest];
    for (row, text) in inputs.iter().enumerate() {
        let start = row * longest;
        ids[start..start + text.0.len()].copy_from_slice(&text.0);
        mask[start..start + text.0.len()].fill(1);
    }
    let shape = [inputs.len() as i64, longest as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
}

impl BatchTask for TextClassifier {
    type Input = TokenizedText;
    /// Softmax probabilities, one per label.
    type Output = Vec<f32>;

    fn run_batch(
        &self,
        model: &InferenceModule,
        device: Device,
        inputs: Vec<TokenizedText>,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let (ids, mask) = pad_batch(&inputs);
        let logits =
            model.forward_one(&[&ids.f_to_device(device)?, &mask.f_to_device(device)?]).map_err(anyhow::Error::msg)?;
        softmax_rows(&logits, inputs.len())
    }

    fn fixed_input_shape(&self) -> bool {
        false
    }

    fn warmup_input(&self) -> TokenizedText {
        // Shapes vary with every batch, so no length is "the" warm one: a sentence-sized input is enough to
        // run every kernel once.
        TokenizedText(vec![WARMUP_TOKEN; WARMUP_TOKENS.min(self.max_tokens)])
    }

    fn check_output(&self, output: &Vec<f32>) -> Result<(), String> {
        check_label_count(output, &self.labels)
    }
}
