//! Text generation: request validation, sampling (temperature, top-k, top-p, seeded), stop sequences and
//! turning byte tokens back into text. The scheduler that advances sequences is `scheduler`.
//!
//! Tokens are bytes (vocabulary 256): any prompt can be encoded, and the default model was trained on ASCII text,
//! where a byte is a character.

mod admission;
mod scheduler;

pub use scheduler::{GenerationEngine, GenerationEvent};

use serde::{Deserialize, Serialize};

use crate::model_toml::GenerationConfig;
use crate::rng::Rng;
use crate::tasks::TaskError;

pub const VOCABULARY: usize = 256;
pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_STOP_BYTES: usize = 64;
const MAX_TEMPERATURE: f64 = 5.0;

/// The body of `POST /v1/generate`, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub stream: bool,
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most probable token (greedy); higher flattens the distribution.
    pub temperature: f64,
    /// Keep only the k most probable tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most probable tokens whose probabilities sum to at least p; 1 keeps all.
    pub top_p: f64,
    pub seed: u64,
}

/// A validated generation request, ready for the scheduler.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u8>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<Vec<u8>>,
}

pub const DEFAULT_TEMPERATURE: f64 = 0.8;

impl GenerateRequest {
    /// Checks every field against its range; errors name the field, the allowed range and the value.
    /// A request without a seed gets `fallback_seed`, which the response reports so the output can be reproduced.
    pub fn validate(self, limits: &GenerationConfig, fallback_seed: u64) -> Result<GenerationRequest, TaskError> {
        let invalid = |message: String| Err(TaskError::Invalid(message));
        if self.prompt.is_empty() {
            return invalid("prompt must not be empty".into());
        }
        if self.prompt.len() > limits.max_prompt_tokens {
            return invalid(format!(
                "prompt is {} tokens (bytes) long; this model takes at most {} (generation.max_prompt_tokens)",
                self.prompt.len(),
                limits.max_prompt_tokens
            ));
        }
        let max_tokens = self.max_tokens.unwrap_or(limits.default_max_tokens as i64);
        if !(1..=limits.max_tokens_limit as i64).contains(&max_tokens) {
            return invalid(format!("max_tokens must be between 1 and {}, got {max_tokens}", limits.max_tokens_limit));
        }
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=MAX_TEMPERATURE).contains(&temperature) {
            return invalid(format!("temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}"));
        }
        let top_k = self.top_k.unwrap_or(0);
        if !(0..=VOCABULARY as i64).contains(&top_k) {
            return invalid(format!("top_k must be between 0 (off) and {VOCABULARY}, got {top_k}"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return invalid(format!("top_p must be greater than 0 and at most 1, got {top_p}"));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return invalid(format!("stop holds at most {MAX_STOP_SEQUENCES} sequences, got {}", self.stop.len()));
        }
        if let Some((i, s)) = self.stop.iter().enumerate().find(|(_, s)| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return invalid(format!("stop[{i}] must be 1 to {MAX_STOP_BYTES} bytes long, got {}", s.len()));
        }
        Ok(GenerationRequest {
            prompt: self.prompt.into_bytes(),
            max_tokens: max_tokens as usize,
            sampling: SamplingParams {
                temperature,
                top_k: top_k as usize,
                top_p,
                seed: self.seed.unwrap_or(fallback_seed),
            },
            stop: self.stop.into_iter().map(String::into_bytes).collect(),
        })
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// The text ended with one of the stop sequences.
    Stop,
}

/// Picks a sequence's next token from its logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { rng: Rng::new(params.seed), params }
    }

    pub fn sample(&mut self, logits: &[f32]) -> usize {
        let greedy = || (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0);
        if self.params.temperature == 0.0 {
            return greedy();
        }
        // Candidates, most probable first.
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.params.top_k > 0 {
            order.truncate(self.params.top_k);
        }
        let top = logits[order[0]] as f64;
        let mut weights: Vec<f64> =
            order.iter().map(|&i| ((logits[i] as f64 - top) / self.params.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    cumulative += w / total;
                    cumulative >= self.params.top_p
                })
                .map_or(weights.len(), |last| last + 1);
            weights.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        if !total.is_finite() || total <= 0.0 {
            return greedy();
        }
        let mut target = self.rng.next_f64() * total;
        for (&token, &weight) in order.iter().zip(&weights) {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        order[order.len() - 1]
    }
}

/// The generated bytes of one sequence, turned into text as they arrive: a multi-byte UTF-8 character is
/// released with its last byte; bytes that can never form one become U+FFFD. An unfinished character at the
/// very end is left out.
#[derive(Debug, Default)]
pub struct TextDecoder {
    generated: Vec<u8>,
    /// Bytes of an unfinished character.
    pending: Vec<u8>,
}

impl TextDecoder {
    /// Adds one token; returns the text it completes (empty while a character is unfinished).
    pub fn push(&mut self, token: u8) -> String {
        self.generated.push(token);
        self.pending.push(token);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(complete) => {
                    text.push_str(complete);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An unfinished character: wait for its next byte.
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whether the generated bytes end with one of `stop`.
    pub fn ends_with_any(&self, stop: &[Vec<u8>]) -> bool {
        stop.iter().any(|s| self.generated.ends_with(s))
    }

    pub fn len(&self) -> usize {
        self.generated.len()
    }

    pub fn is_empty(&self) -> bool {
        self.generated.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed }
    }

    #[test]
    fn zero_temperature_is_greedy() {
        let mut sampler = Sampler::new(params(0.0, 0, 1.0, 1));
        assert_eq!(sampler.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_another_seed_does_not() {
        let logits: Vec<f32> = (0..VOCABULARY).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut sampler = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..64).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_most_probable_tokens() {
        let logits = [5.0, 4.0, 0.0, -3.0];
        let mut top_k = Sampler::new(params(5.0, 2, 1.0, 3));
        assert!((0..500).map(|_| top_k.sample(&logits)).all(|t| t < 2));
        // softmax: about 0.72, 0.27, 0.005, 0.0002; p = 0.9 keeps the first two only.
        let mut top_p = Sampler::new(params(1.0, 0, 0.9, 3));
        let drawn: Vec<usize> = (0..500).map(|_| top_p.sample(&logits)).collect();
        assert!(drawn.iter().all(|&t| t < 2) && drawn.contains(&1), "{drawn:?}");
    }

    #[test]
    fn sampling_follows_the_probabilities() {
        // ln 3 apart: token 0 should come up three times as often as token 1.
        let logits = [3f32.ln(), 0.0];
        let mut sampler = Sampler::new(params(1.0, 0, 1.0, 11));
        let zeros = (0..20_000).filter(|_| sampler.sample(&logits) == 0).count();
        assert!((14_500..15_500).contains(&zeros), "{zeros}");
    }

    #[test]
    fn the_decoder_releases_whole_characters_and_replaces_invalid_bytes() {
        let mut decoder = TextDecoder::default();
        let pieces: Vec<String> = "aé€".bytes().map(|b| decoder.push(b)).collect();
        assert_eq!(pieces, ["a", "", "é", "", "", "€"]);
        assert_eq!(decoder.push(0xFF), "\u{FFFD}");
        assert_eq!(decoder.push(0xE2), "");
        assert_eq!(decoder.push(b'x'), "\u{FFFD}x");
    }

    #[test]
    fn stop_sequences_match_the_end_of_the_generated_bytes() {
        let mut decoder = TextDecoder::default();
        let stop = vec![b"\n\n".to_vec(), b"END".to_vec()];
        for b in b"ab\nE" {
            decoder.push(*b);
            assert!(!decoder.ends_with_any(&stop));
        }
        decoder.push(b'N');
        decoder.push(b'D');
        assert!(decoder.ends_with_any(&stop));
    }

    fn limits() -> GenerationConfig {
        GenerationConfig {
            default_max_tokens: 10,
            max_tokens_limit: 100,
            max_prompt_tokens: 20,
            ..GenerationConfig::default()
        }
    }

    fn request(json: &str) -> Result<GenerationRequest, String> {
        let parsed: GenerateRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        parsed.validate(&limits(), 99).map_err(|e| e.to_string())
    }

    #[test]
    fn validation_names_the_field_and_the_range() {
        let ok = request(r#"{"prompt": "To be"}"#).unwrap();
        assert_eq!((ok.max_tokens, ok.sampling.seed, ok.sampling.temperature), (10, 99, DEFAULT_TEMPERATURE));
        for (body, expected) in [
            (r#"{"prompt": ""}"#, "prompt must not be empty"),
            (r#"{"prompt": "aaaaaaaaaaaaaaaaaaaaa"}"#, "prompt is 21 tokens"),
            (r#"{"prompt": "a", "max_tokens": 101}"#, "max_tokens must be between 1 and 100, got 101"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, "max_tokens must be between 1 and 100, got 0"),
            (r#"{"prompt": "a", "temperature": -1}"#, "temperature must be between 0 and 5, got -1"),
            (r#"{"prompt": "a", "top_k": 300}"#, "top_k must be between 0 (off) and 256, got 300"),
            (r#"{"prompt": "a", "top_p": 0}"#, "top_p must be greater than 0 and at most 1, got 0"),
            (r#"{"prompt": "a", "stop": ["a","b","c","d","e"]}"#, "stop holds at most 4 sequences, got 5"),
            (r#"{"prompt": "a", "stop": [""]}"#, "stop[0] must be 1 to 64 bytes long, got 0"),
        ] {
            let error = request(body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }
}
