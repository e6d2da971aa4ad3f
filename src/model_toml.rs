//! The `model.toml` schema: what a model folder says about its model (its task, batching, preprocessing, device,
//! format, declared tensors). Read by `repository`; the server's own flags are `flags`'.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::cpus::{self, Sizing, Threads};
use crate::formats::{FormatChoice, ModelFormat};
use crate::signature::TensorSpec;

/// Which device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The server's `--device`; when that is auto too, the first CUDA device if there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device `{other}`: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `models/<name>/model.toml`. Unknown keys are rejected so that a typo never silently falls back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelToml {
    pub task: TaskKind,
    /// This model answers its task's short route (e.g. `POST /v1/classify`).
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub device: DeviceChoice,
    /// Which file of a version serves: `auto` (the fastest present for the device), `torchscript` (model.pt),
    /// `onnx` (model.onnx, through ONNX Runtime) or `aoti` (model.pt2, an AOTInductor package).
    #[serde(default)]
    pub format: FormatChoice,
    /// Serve this version instead of the highest one.
    pub version: Option<u64>,
    #[serde(default)]
    pub description: String,
    /// Freeze the module and run libtorch's optimize_for_inference when loading it (batch norms folded into
    /// convolutions, weights prepacked for oneDNN on CPU); for ONNX, ONNX Runtime's full graph optimisation.
    /// Turn off for a model whose ops it mishandles.
    #[serde(default = "default_true")]
    pub optimize: bool,
    /// The fp32 model this one's int8 weights were quantized from. Fine-tuning refuses a quantized model and
    /// names this one instead: ember trains float weights only.
    pub quantized_from: Option<String>,
    #[serde(default)]
    pub batching: BatchingConfig,
    /// When the model loads (with `--model-memory-budget` only).
    #[serde(default)]
    pub serving: ServingConfig,
    /// Image preprocessing, for image tasks.
    pub image: Option<ImagePreprocessing>,
    /// Tokenisation, for text classification.
    pub text: Option<TextPreprocessing>,
    /// Decoding limits, for text generation.
    #[serde(default)]
    pub generation: GenerationConfig,
    /// Output sizes, for style-transfer (fast style) models.
    #[serde(default)]
    pub stylize: StylizeConfig,
    /// The optimisation method's defaults and caps, for the style-features model.
    #[serde(default)]
    pub optimization: OptimizationConfig,
    /// A `tensor` model's inputs (`[[inputs]]`: name, datatype, shape), in its forward's argument order.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// A `tensor` model's outputs (`[[outputs]]`), in the order its forward returns them.
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
}

fn default_true() -> bool {
    true
}

/// `[serving]`: when a model is in memory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    #[serde(default)]
    pub load: LoadPolicy,
}

/// When a model loads, under `--model-memory-budget` (without one, every model loads at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadPolicy {
    /// At start-up; readiness waits for it, and it is never evicted.
    #[default]
    Start,
    /// On its first request; unloaded again when the budget needs room and it is idle and least recently used.
    OnDemand,
}

impl LoadPolicy {
    pub fn name(self) -> &'static str {
        match self {
            LoadPolicy::Start => "start",
            LoadPolicy::OnDemand => "on-demand",
        }
    }
}

/// How requests are queued, batched and executed.
///
/// The defaults come from measurement on a 2-core machine (bench/RESULTS.md): two single-threaded workers
/// side by side beat one worker with two threads, and batches of up to 4 help a little more, while bigger
/// batches do not.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Largest batch one forward pass runs.
    pub max_batch_size: usize,
    /// How long the oldest queued request may wait for the batch to fill; 0 runs whatever is queued
    /// as soon as a worker is free, so batches grow only under load.
    pub max_delay_ms: u64,
    /// Requests waiting beyond this many are refused at once with 429.
    pub queue_capacity: usize,
    /// Worker threads taking batches from the model's queue: a number, or "auto" (one per CPU this process may
    /// use; see `cpus`).
    pub workers: Threads,
    /// Intra-op threads of each worker: a number, or "auto" (the CPUs shared out among the workers).
    pub intra_op_threads: Threads,
    /// The workers share one copy of the module's weights (its forward runs from several threads at once);
    /// false gives each worker its own copy (more memory and start-up time, for a model that is not safe to
    /// share).
    pub share_weights: bool,
    /// A worker running alone (the others idle, nothing queued) uses the idle workers' threads too, which
    /// lowers latency at low load without oversubscribing the cores under load.
    pub borrow_idle_threads: bool,
    /// Forward passes each worker runs (at every batch size up to max_batch_size) before the model is ready.
    pub warmup_runs: usize,
    /// The most rows (the batch dimension) one Open Inference Protocol request may send: its tensors' first
    /// dimension is the client's choice, and with it the cost of the forward pass it joins.
    pub max_request_rows: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 4,
            max_delay_ms: 0,
            queue_capacity: 128,
            workers: Threads::Auto,
            intra_op_threads: Threads::Auto,
            share_weights: true,
            borrow_idle_threads: true,
            warmup_runs: 1,
            max_request_rows: 64,
        }
    }
}

/// torchvision-style preprocessing: resize the shorter side, centre crop, normalise.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocessing {
    /// Length the shorter side is resized to (torchvision `Resize(n)`).
    pub resize: u32,
    /// Side of the square centre crop (torchvision `CenterCrop(n)`).
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// How texts become token ids (the tokenizer itself is `tokenizer.json` beside model.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPreprocessing {
    /// Longest token sequence the model sees at once (one window), special tokens included.
    pub max_tokens: usize,
    /// A longer text is read as overlapping windows whose starts are this many text tokens apart, and their
    /// outputs are pooled into one answer. Absent: a longer text is truncated to its first window.
    #[serde(default)]
    pub window_stride: Option<usize>,
    /// The most windows one text may take; a longer text is refused (413), naming this limit. It bounds the
    /// rows one text adds to the batches.
    #[serde(default = "default_max_windows")]
    pub max_windows: usize,
}

fn default_max_windows() -> usize {
    16
}

/// What a text-generation request may ask for. `batching.max_batch_size` is the number of sequences that
/// advance together; `batching.queue_capacity` the number waiting to join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// `max_tokens` of a request that names none.
    pub default_max_tokens: usize,
    /// The largest `max_tokens` a request may ask for (the server-side cap).
    pub max_tokens_limit: usize,
    /// The longest prompt, in tokens.
    pub max_prompt_tokens: usize,
    /// Prompt tokens run per scheduler iteration, between two steps of the running sequences: bounds how long a
    /// burst of long prompts holds up everyone's next token (longer prompts run in chunks).
    pub prefill_budget_tokens: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            default_max_tokens: 200,
            max_tokens_limit: 2000,
            max_prompt_tokens: 4096,
            prefill_budget_tokens: 256,
        }
    }
}

/// What a stylize request may ask for. Cost grows with the pixels, so the size is capped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StylizeConfig {
    /// The longer side of the output when a request names no `max_size` (larger images are scaled down).
    pub default_max_size: u32,
    /// The largest `max_size` a request may ask for.
    pub max_size_limit: u32,
}

impl Default for StylizeConfig {
    fn default() -> Self {
        StylizeConfig { default_max_size: 512, max_size_limit: 1024 }
    }
}

/// `POST /v1/style-transfer`: the defaults and caps of the optimisation, which costs seconds per image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizationConfig {
    pub default_steps: usize,
    pub max_steps: usize,
    /// The longer side of the content image (and of the style image) the optimisation works at.
    pub default_size: u32,
    pub max_size: u32,
    pub default_style_weight: f64,
    pub default_content_weight: f64,
    /// Weight of the total-variation term, which keeps the optimised pixels from high-frequency noise.
    pub tv_weight: f64,
    /// Adam's step size on pixels in 0..1.
    pub learning_rate: f64,
    /// Time one request may spend queued and optimising, in milliseconds (the server's --request-timeout-ms is
    /// for one-pass requests and would cut most optimisations short).
    pub timeout_ms: u64,
}

impl Default for OptimizationConfig {
    fn default() -> Self {
        OptimizationConfig {
            default_steps: 100,
            max_steps: 500,
            default_size: 256,
            max_size: 512,
            default_style_weight: 10.0,
            default_content_weight: 1.0,
            tv_weight: 1.0,
            learning_rate: 0.03,
            timeout_ms: 120_000,
        }
    }
}

impl ModelToml {
    /// Checks values serde cannot: ranges and relations between keys. Errors name the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.batching;
        check_range("batching.max_batch_size", b.max_batch_size, 1, 1024)?;
        check_range("batching.queue_capacity", b.queue_capacity, 1, 1_000_000)?;
        if let Threads::Fixed(workers) = b.workers {
            check_range("batching.workers", workers, 1, cpus::MAX_WORKERS)?;
        }
        if let Threads::Fixed(threads) = b.intra_op_threads {
            check_range("batching.intra_op_threads", threads, 1, 256)?;
        }
        check_range("batching.warmup_runs", b.warmup_runs, 0, 1000)?;
        check_range("batching.max_request_rows", b.max_request_rows, 1, 1_000_000)?;
        check_range("batching.max_delay_ms", b.max_delay_ms as usize, 0, 10_000)?;
        if let Some(image) = &self.image {
            check_range("image.crop", image.crop as usize, 1, 4096)?;
            check_range("image.resize", image.resize as usize, image.crop as usize, 8192)?;
            if let Some(s) = image.std.iter().find(|s| **s <= 0.0 || !s.is_finite()) {
                return Err(format!("image.std must be positive and finite, got {s}"));
            }
        }
        validate_declared(self.task, &self.inputs, &self.outputs, b.max_batch_size)?;
        if self.quantized_from.as_ref().is_some_and(|fp32| fp32.trim().is_empty()) {
            return Err("quantized_from must name the fp32 model the weights were quantized from".into());
        }
        if self.version == Some(0) {
            return Err("version must be a positive integer, got 0".into());
        }
        if self.task.needs_image_preprocessing() && self.image.is_none() {
            return Err(format!("task `{}` needs an [image] table (resize, crop, mean, std)", self.task));
        }
        match (&self.text, self.task) {
            (None, TaskKind::TextClassification) => {
                return Err(format!("task `{}` needs a [text] table (max_tokens)", self.task))
            }
            (Some(text), _) => {
                check_range("text.max_tokens", text.max_tokens, 2, 8192)?;
                if let Some(stride) = text.window_stride {
                    check_range("text.window_stride", stride, 1, text.max_tokens)?;
                }
                check_range("text.max_windows", text.max_windows, 1, 1024)?;
            }
            (None, _) => {}
        }
        let g = &self.generation;
        check_range("generation.max_tokens_limit", g.max_tokens_limit, 1, 1_000_000)?;
        check_range("generation.default_max_tokens", g.default_max_tokens, 1, g.max_tokens_limit)?;
        check_range("generation.max_prompt_tokens", g.max_prompt_tokens, 1, 1_000_000)?;
        check_range("generation.prefill_budget_tokens", g.prefill_budget_tokens, 1, 1_000_000)?;
        let st = &self.stylize;
        check_range("stylize.max_size_limit", st.max_size_limit as usize, 16, 8192)?;
        check_range("stylize.default_max_size", st.default_max_size as usize, 16, st.max_size_limit as usize)?;
        let o = &self.optimization;
        check_range("optimization.max_steps", o.max_steps, 1, 100_000)?;
        check_range("optimization.default_steps", o.default_steps, 1, o.max_steps)?;
        check_range("optimization.max_size", o.max_size as usize, 32, 4096)?;
        check_range("optimization.default_size", o.default_size as usize, 32, o.max_size as usize)?;
        check_range("optimization.timeout_ms", o.timeout_ms as usize, 1, 86_400_000)?;
        for (key, value) in [
            ("optimization.default_style_weight", o.default_style_weight),
            ("optimization.default_content_weight", o.default_content_weight),
            ("optimization.tv_weight", o.tv_weight),
            ("optimization.learning_rate", o.learning_rate),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{key} must be a finite number >= 0, got {value}"));
            }
        }
        if self.task.runs_backward()
            && !matches!(self.format, FormatChoice::Auto | FormatChoice::Only(ModelFormat::TorchScript))
        {
            return Err(format!(
                "format must be \"torchscript\" (or \"auto\") for a {} model: its route runs backward passes, which only \
                 TorchScript serves; got \"{}\"",
                self.task, self.format
            ));
        }
        if self.task == TaskKind::StyleFeatures && b.max_batch_size != 1 {
            return Err(format!(
                "batching.max_batch_size must be 1 for a style-features model (each optimisation runs alone), got {}",
                b.max_batch_size
            ));
        }
        if self.task == TaskKind::TextGeneration && !matches!(b.workers, Threads::Auto | Threads::Fixed(1)) {
            return Err(format!(
                "batching.workers must be 1 or \"auto\" for a text-generation model (one thread advances all its \
                 sequences together), got {}",
                b.workers
            ));
        }
        Ok(())
    }

    /// The workers and threads this model runs with on this machine (`auto` resolved on its CPUs).
    pub fn sizing(&self) -> Sizing {
        let b = &self.batching;
        Sizing::of(b.workers, b.intra_op_threads, cpus::available(), self.task == TaskKind::TextGeneration)
    }
}

fn check_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} must be between {min} and {max}, got {value}"))
    }
}

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

    /// Tasks whose route runs gradients back through the model (the optimisation method): served from TorchScript
    /// only, whatever other files a version holds.
    pub fn runs_backward(self) -> bool {
        matches!(self, TaskKind::StyleFeatures)
    }

    /// Tasks whose models need a `tokenizer.json` beside model.toml.
    pub fn needs_tokenizer(self) -> bool {
        matches!(self, TaskKind::TextClassification)
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

/// Checks the `[[inputs]]` / `[[outputs]]` of a model.toml: only `tensor` models declare them, and those must;
/// names are unique; dimensions are -1 or positive; a model that batches requests has -1 as its first dimension.
pub fn validate_declared(
    task: TaskKind,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    max_batch_size: usize,
) -> Result<(), String> {
    if task != TaskKind::Tensor {
        return match inputs.is_empty() && outputs.is_empty() {
            true => Ok(()),
            false => Err(format!("inputs and outputs are declared only by `tensor` models; a {task} model's tensors follow from its task")),
        };
    }
    for (what, specs) in [("inputs", inputs), ("outputs", outputs)] {
        if specs.is_empty() {
            return Err(format!(
                "a tensor model declares its {what}: add [[{what}]] tables with name, datatype and shape"
            ));
        }
        let mut seen = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            let at = format!("{what}[{index}]");
            if spec.name.is_empty() {
                return Err(format!("{at}.name must not be empty"));
            }
            if let Some(first) = seen.insert(spec.name.as_str(), index) {
                return Err(format!("{at}.name `{}` is also {what}[{first}].name", spec.name));
            }
            if let Some(dim) = spec.shape.iter().find(|&&d| d == 0 || d < -1) {
                return Err(format!("{at}.shape: dimensions are -1 (any size) or positive, got {dim}"));
            }
            if max_batch_size > 1 && spec.shape.first() != Some(&-1) {
                return Err(format!(
                    "{at}.shape must start with -1, the batch dimension, since batching.max_batch_size is {max_batch_size} (requests are joined along it); got {:?}",
                    spec.shape
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_tensors_are_checked() {
        let task = TaskKind::Tensor;
        assert!(validate_declared(task, &[tensor("x", &[-1, 4])], &[tensor("y", &[-1])], 8).is_ok());
        let err = validate_declared(task, &[], &[tensor("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("[[inputs]]"), "{err}");
        let err =
            validate_declared(task, &[tensor("x", &[-1]), tensor("x", &[-1])], &[tensor("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("inputs[1].name `x`"), "{err}");
        let err = validate_declared(task, &[tensor("x", &[-1, 0])], &[tensor("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("inputs[0].shape") && err.contains("got 0"), "{err}");
        let err = validate_declared(task, &[tensor("x", &[4])], &[tensor("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("must start with -1"), "{err}");
        assert!(validate_declared(task, &[tensor("x", &[4])], &[tensor("y", &[2])], 1).is_ok());
        let err = validate_declared(TaskKind::ImageClassification, &[tensor("x", &[-1])], &[], 8).unwrap_err();
        assert!(err.contains("only by `tensor` models"), "{err}");
    }

    fn tensor(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, crate::signature::DataType::Fp32, shape)
    }
}
