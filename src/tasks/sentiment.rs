//! Text classification (sentiment): a text becomes token ids with the model's own `tokenizer.json`; a text
//! longer than the model's window is read as overlapping windows (model.toml `[text] window_stride`), each run
//! as a row of its own, and the rows' probabilities are pooled into one answer; a batch is padded to its
//! longest row; the model's logits become a score per label.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{check_label_count, softmax_rows};
use crate::engine::{BatchTask, InferenceModule};
use crate::model_toml::TextPreprocessing;
use crate::tasks::TaskError;

/// Warm-up input: a sentence-sized run of some token id (any id within every vocabulary).
const WARMUP_TOKEN: i64 = 1;
const WARMUP_TOKENS: usize = 24;

#[derive(Clone)]
pub struct TextClassifier {
    /// Never truncates nor pads: `windows` cuts the text, batches pad themselves to their longest row.
    tokenizer: Arc<Tokenizer>,
    pub labels: Arc<Vec<String>>,
    /// One window: the most tokens the model reads at once, special tokens included.
    pub max_tokens: usize,
    /// The text's own tokens in one window: `max_tokens` less the framing.
    window_text_tokens: usize,
    framing: Framing,
    long_texts: LongTexts,
}

/// The special tokens the tokenizer puts around every text (`[CLS]` and `[SEP]` for BERT's): every window gets
/// them too, so each one looks to the model like a text of its own.
#[derive(Clone)]
struct Framing {
    prefix: Vec<i64>,
    suffix: Vec<i64>,
}

/// What becomes of a text longer than one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongTexts {
    /// Only its first window is read.
    Truncate,
    /// Windows start `stride` content tokens apart and the last one ends where the text ends; a text that needs
    /// more than `max_windows` is refused.
    Windows { stride: usize, max_windows: usize },
}

/// One row of the model's input: token ids, special tokens included, at most `max_tokens`.
#[derive(Clone)]
pub struct TokenizedText(Vec<i64>);

impl TokenizedText {
    pub fn ids(&self) -> &[i64] {
        &self.0
    }
}

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

    /// Reads `tokenizer_file`, learns the special tokens it frames a text with, and checks that a window holds
    /// them and that windows overlap rather than skip tokens.
    pub fn load(
        tokenizer_file: &Path,
        labels: Vec<String>,
        text: &TextPreprocessing,
    ) -> Result<TextClassifier, String> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_file)
            .map_err(|e| format!("cannot read {}: {e}", tokenizer_file.display()))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| format!("cannot turn the tokenizer's truncation off: {e}"))?;
        let framing = Framing::of(&tokenizer)?;
        let max_tokens = text.max_tokens;
        let framed = framing.prefix.len() + framing.suffix.len();
        if framed > max_tokens {
            return Err(format!(
                "text.max_tokens is {max_tokens}, too few for the tokenizer's {framed} special tokens"
            ));
        }
        let window_text_tokens = max_tokens - framed;
        let long_texts = match text.window_stride {
            None => LongTexts::Truncate,
            Some(stride) if stride > window_text_tokens => {
                return Err(format!(
                    "text.window_stride is {stride}, more than the {window_text_tokens} text tokens of a window \
                     (text.max_tokens {max_tokens} less {framed} special tokens): windows would skip tokens"
                ))
            }
            Some(stride) => LongTexts::Windows { stride, max_windows: text.max_windows },
        };
        Ok(TextClassifier {
            tokenizer: Arc::new(tokenizer),
            labels: Arc::new(labels),
            max_tokens,
            window_text_tokens,
            framing,
            long_texts,
        })
    }

    pub fn long_texts(&self) -> LongTexts {
        self.long_texts
    }

    /// The text's windows: one for a text that fits, several overlapping ones for a longer text (only the first
    /// when the model truncates). A text that needs more than `max_windows` is refused before any window is
    /// built.
    pub fn windows(&self, text: &str) -> Result<Vec<TokenizedText>, TaskError> {
        let content = self.text_tokens(text)?;
        let size = self.window_text_tokens;
        let starts = match self.long_texts {
            _ if content.len() <= size => vec![0],
            LongTexts::Truncate => vec![0],
            LongTexts::Windows { stride, max_windows } => {
                let last = content.len() - size;
                let count = last.div_ceil(stride) + 1;
                if count > max_windows {
                    return Err(TaskError::TooLarge(format!(
                        "the text is {} tokens long and needs {count} windows of {} tokens; this model reads at \
                         most {max_windows} windows per text (text.max_windows)",
                        content.len(),
                        self.max_tokens
                    )));
                }
                (0..last).step_by(stride).chain([last]).collect()
            }
        };
        Ok(starts
            .into_iter()
            .map(|start| self.framing.frame(&content[start..content.len().min(start + size)]))
            .collect())
    }

    /// The text's first window (what fine-tuning reads: its texts are sentences).
    pub fn tokenize(&self, text: &str) -> Result<TokenizedText, TaskError> {
        let content = self.text_tokens(text)?;
        Ok(self.framing.frame(&content[..content.len().min(self.window_text_tokens)]))
    }

    /// The text's own token ids, without the framing.
    fn text_tokens(&self, text: &str) -> Result<Vec<i64>, TaskError> {
        let encoding = (self.tokenizer.encode(text, false))
            .map_err(|e| TaskError::Invalid(format!("cannot tokenise the text: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Pools the probabilities of one text's windows into the text's own: their mean (measured against the
    /// mean of logits and a learnt weighting in models/export/experiments/sentiment_windows.py).
    pub fn pool(&self, windows: &[Vec<f32>]) -> Vec<f32> {
        let mut pooled = vec![0.0; self.labels.len()];
        for probabilities in windows {
            for (sum, p) in pooled.iter_mut().zip(probabilities) {
                *sum += p / windows.len() as f32;
            }
        }
        pooled
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

impl Framing {
    /// Compares a probe text tokenised with and without special tokens: what comes before and after the text's
    /// own ids is the framing.
    fn of(tokenizer: &Tokenizer) -> Result<Framing, String> {
        const PROBE: &str = "probe";
        let encode = |special| {
            tokenizer
                .encode(PROBE, special)
                .map(|e| e.get_ids().iter().map(|&id| i64::from(id)).collect::<Vec<i64>>())
                .map_err(|e| format!("the tokenizer cannot tokenise {PROBE:?}: {e}"))
        };
        let (framed, bare) = (encode(true)?, encode(false)?);
        let at = (0..=framed.len().saturating_sub(bare.len())).find(|&at| framed[at..].starts_with(&bare)).ok_or(
            "the tokenizer's special tokens do not frame a text (its ids change with them): cannot cut \
                    windows",
        )?;
        Ok(Framing { prefix: framed[..at].to_vec(), suffix: framed[at + bare.len()..].to_vec() })
    }

    fn frame(&self, content: &[i64]) -> TokenizedText {
        TokenizedText([&self.prefix[..], content, &self.suffix[..]].concat())
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn classifier(
        max_tokens: usize,
        window_stride: Option<usize>,
        max_windows: usize,
    ) -> Result<TextClassifier, String> {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/sentiment/tokenizer.json");
        let text = TextPreprocessing { max_tokens, window_stride, max_windows };
        TextClassifier::load(&file, vec!["negative".into(), "positive".into()], &text)
    }

    #[test]
    fn windows_overlap_by_the_stride_and_the_last_ends_with_the_text() {
        // 10 one-token words in windows of 4 text tokens (6 less [CLS] and [SEP]) 3 apart: starts 0, 3, 6.
        let words = "a b c d e f g h i j";
        let windows = classifier(6, Some(3), 8).unwrap().windows(words).unwrap();
        let tokenizer = classifier(12, None, 1).unwrap();
        let whole = tokenizer.windows(words).unwrap().remove(0).0;
        let (cls, sep, text) = (whole[0], whole[11], &whole[1..11]);
        let expected: Vec<Vec<i64>> = [0, 3, 6].iter().map(|&s| [&[cls], &text[s..s + 4], &[sep]].concat()).collect();
        assert_eq!(windows.iter().map(|w| w.0.clone()).collect::<Vec<_>>(), expected);
        // Truncation keeps the first window only.
        assert_eq!(classifier(6, None, 8).unwrap().windows(words).unwrap().len(), 1);
    }

    #[test]
    fn a_text_over_max_windows_is_refused_and_a_bad_stride_is_refused_at_load() {
        let error = classifier(6, Some(3), 2).unwrap().windows("a b c d e f g h i j").err().unwrap();
        assert!(
            matches!(&error, TaskError::TooLarge(m) if m.contains("needs 3 windows") && m.contains("text.max_windows"))
        );
        let error = classifier(6, Some(5), 8).err().unwrap();
        assert!(error.contains("text.window_stride is 5") && error.contains("skip tokens"), "{error}");
        assert!(classifier(2, Some(1), 8).is_err(), "a window of [CLS] and [SEP] only has no room for text");
    }

    #[test]
    fn pooling_averages_the_windows_probabilities() {
        let pooled = classifier(6, Some(3), 8).unwrap().pool(&[vec![0.9, 0.1], vec![0.3, 0.7]]);
        assert!((pooled[0] - 0.6).abs() < 1e-6 && (pooled[1] - 0.4).abs() < 1e-6, "{pooled:?}");
    }
}
