//! Model-level tensors, for the Open Inference Protocol (KServe v2): the protocol's datatypes, what each model
//! takes and returns (its signature), and running requests of raw tensors through a module in batches.
//!
//! Task models are described by their task (a classifier takes the preprocessed image batch and returns logits);
//! models of task `tensor` declare their tensors in model.toml and are served only over v2.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::generate::VOCABULARY;
use super::TaskKind;
use crate::engine::{BatchTask, InferenceModule};
use crate::repository::ModelSpec;

/// The protocol's tensor datatypes that ember serves (not BYTES, BF16 or the unsigned types libtorch lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
}

impl DataType {
    pub const ALL: [DataType; 9] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// A protocol datatype name; anything else is an error that lists the supported ones.
    pub fn parse(name: &str) -> Result<DataType, String> {
        DataType::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            let supported: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
            format!("datatype `{name}` is not supported; use one of {}", supported.join(", "))
        })
    }

    pub fn kind(self) -> Kind {
        match self {
            DataType::Bool => Kind::Bool,
            DataType::Uint8 => Kind::Uint8,
            DataType::Int8 => Kind::Int8,
            DataType::Int16 => Kind::Int16,
            DataType::Int32 => Kind::Int,
            DataType::Int64 => Kind::Int64,
            DataType::Fp16 => Kind::Half,
            DataType::Fp32 => Kind::Float,
            DataType::Fp64 => Kind::Double,
        }
    }

    /// Bytes per element in the binary tensor data extension (little-endian, BOOL one byte).
    pub fn byte_size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Fp16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
    }

    /// The values an integer datatype holds.
    pub fn integer_range(self) -> Option<(i64, i64)> {
        match self {
            DataType::Uint8 => Some((0, u8::MAX.into())),
            DataType::Int8 => Some((i8::MIN.into(), i8::MAX.into())),
            DataType::Int16 => Some((i16::MIN.into(), i16::MAX.into())),
            DataType::Int32 => Some((i32::MIN.into(), i32::MAX.into())),
            DataType::Int64 => Some((i64::MIN, i64::MAX)),
            DataType::Bool | DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One input or output of a model: its name, datatype and shape, -1 for a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    fn new(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.to_string(), datatype, shape: shape.to_vec() }
    }

    /// Whether `shape` fits this spec: the same rank, and every fixed dimension equal.
    pub fn accepts(&self, shape: &[i64]) -> bool {
        shape.len() == self.shape.len() && self.shape.iter().zip(shape).all(|(&want, &got)| want == -1 || want == got)
    }
}

/// What a model takes and returns, in the order of its forward's arguments and results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// How large a request may make each input (one entry per input): a client chooses every `-1` dimension,
    /// and with it the work and memory of the forward pass.
    pub bounds: Vec<InputBounds>,
}

impl Signature {
    /// Token ids of the input named `name` must lie in `0..size` (the model's embedding table; on CUDA an id
    /// outside it is a device-side assert that breaks the whole context).
    pub fn bound_token_ids(&mut self, name: &str, size: usize, what: &str) {
        if let Some(index) = self.inputs.iter().position(|input| input.name == name) {
            let max = i64::try_from(size).unwrap_or(i64::MAX).saturating_sub(1);
            self.bounds[index].values = Some(ValueRange { min: 0, max, what: what.to_string() });
        }
    }
}

/// A limit and the setting that sets it, named in the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub max: i64,
    pub setting: String,
}

impl Limit {
    fn new(max: usize, setting: &str) -> Limit {
        Limit { max: i64::try_from(max).unwrap_or(i64::MAX), setting: setting.to_string() }
    }
}

/// The integer values an input may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRange {
    pub min: i64,
    pub max: i64,
    /// What the range is, e.g. "the tokenizer's vocabulary".
    pub what: String,
}

/// What a request may make of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputBounds {
    /// The largest size of each dimension (`None`: fixed by the spec, or bounded only by the body's size).
    pub dims: Vec<Option<Limit>>,
    /// The most elements in all.
    pub elements: Option<Limit>,
    pub values: Option<ValueRange>,
}

impl InputBounds {
    fn dims(dims: Vec<Option<Limit>>) -> InputBounds {
        InputBounds { dims, ..InputBounds::default() }
    }

    /// A shape within the limits, or why not (naming the dimension, its size, the limit and its setting).
    pub fn check_shape(&self, shape: &[i64]) -> Result<(), String> {
        for (index, (size, limit)) in shape.iter().zip(&self.dims).enumerate() {
            if let Some(limit) = limit.as_ref().filter(|limit| *size > limit.max) {
                return Err(format!(
                    "dimension {index} of shape {shape:?} is {size}; the limit is {} ({})",
                    limit.max, limit.setting
                ));
            }
        }
        if let Some(limit) = &self.elements {
            let elements = shape.iter().try_fold(1i64, |n, &d| n.checked_mul(d)).unwrap_or(i64::MAX);
            if elements > limit.max {
                return Err(format!(
                    "shape {shape:?} holds {elements} elements; the limit is {} ({})",
                    limit.max, limit.setting
                ));
            }
        }
        Ok(())
    }

    /// Integer values inside their range, or why not (naming the first value outside it).
    pub fn check_values(&self, tensor: &Tensor) -> Result<(), String> {
        let Some(range) = &self.values else { return Ok(()) };
        if tensor.numel() == 0 {
            return Ok(());
        }
        let outside = tensor.lt(range.min).logical_or(&tensor.gt(range.max));
        if !bool::try_from(outside.any()).unwrap_or(false) {
            return Ok(());
        }
        let first = tensor.reshape([-1]).masked_select(&outside.reshape([-1])).int64_value(&[0]);
        Err(format!("value {first} is outside {}..={} ({})", range.min, range.max, range.what))
    }
}

/// Channels of an RGB image tensor `[batch, 3, height, width]`, values 0..1 unless normalised.
const RGB: i64 = 3;
/// The outputs of the style-features network (models/export/style.py): one content map, then the style maps.
const STYLE_FEATURE_OUTPUTS: [&str; 5] = ["content", "style_1", "style_2", "style_3", "style_4"];

/// The model-level tensors of `spec` (read at the version being served: its labels and image size), and how
/// large a request may make them.
pub fn signature(spec: &ModelSpec) -> Signature {
    use DataType::{Fp32, Int64};
    let config = &spec.config;
    let labels = spec.labels.as_ref().map_or(-1, |l| l.len() as i64);
    let image_batch = [-1, RGB, -1, -1];
    let rows = || Some(Limit::new(config.batching.max_request_rows, "batching.max_request_rows"));
    let image_bounds = |side: u32, setting: &str| {
        let side = || Some(Limit::new(side as usize, setting));
        InputBounds::dims(vec![rows(), None, side(), side()])
    };
    let (inputs, outputs, bounds) = match config.task {
        TaskKind::ImageClassification => {
            let crop = config.image.as_ref().map_or(-1, |i| i64::from(i.crop));
            (
                vec![TensorSpec::new("image", Fp32, &[-1, RGB, crop, crop])],
                vec![TensorSpec::new("logits", Fp32, &[-1, labels])],
                vec![InputBounds::dims(vec![rows()])],
            )
        }
        TaskKind::TextClassification => {
            let tokens = config.text.as_ref().map_or(0, |t| t.max_tokens);
            let sequence = || InputBounds::dims(vec![rows(), Some(Limit::new(tokens, "text.max_tokens"))]);
            (
                vec![
                    TensorSpec::new("input_ids", Int64, &[-1, -1]),
                    TensorSpec::new("attention_mask", Int64, &[-1, -1]),
                ],
                vec![TensorSpec::new("logits", Fp32, &[-1, labels])],
                vec![sequence(), sequence()],
            )
        }
        // The state's batch is its dimension 1; an all-zero state starts new sequences. One request may run as
        // many tokens as one prompt: that is what it costs the engine's thread, between everyone's steps.
        TaskKind::TextGeneration => {
            let prompt = Limit::new(config.generation.max_prompt_tokens, "generation.max_prompt_tokens");
            let input_ids = InputBounds {
                dims: vec![rows(), Some(prompt.clone())],
                elements: Some(prompt),
                values: Some(ValueRange { min: 0, max: VOCABULARY as i64 - 1, what: "the byte vocabulary".into() }),
            };
            (
                vec![TensorSpec::new("input_ids", Int64, &[-1, -1]), TensorSpec::new("state", Fp32, &[-1, -1, -1])],
                vec![
                    TensorSpec::new("logits", Fp32, &[-1, -1, VOCABULARY as i64]),
                    TensorSpec::new("state", Fp32, &[-1, -1, -1]),
                ],
                vec![input_ids, InputBounds::dims(vec![None, rows()])],
            )
        }
        TaskKind::StyleTransfer => (
            vec![TensorSpec::new("image", Fp32, &image_batch)],
            vec![TensorSpec::new("stylized", Fp32, &image_batch)],
            vec![image_bounds(config.stylize.max_size_limit, "stylize.max_size_limit")],
        ),
        TaskKind::StyleFeatures => (
            vec![TensorSpec::new("image", Fp32, &image_batch)],
            STYLE_FEATURE_OUTPUTS.iter().map(|name| TensorSpec::new(name, Fp32, &[-1, -1, -1, -1])).collect(),
            vec![image_bounds(config.optimization.max_size, "optimization.max_size")],
        ),
        // A declared model bounds its batch dimension; its other `-1` dimensions only by the body's size.
        TaskKind::Tensor => {
            let bounds = config
                .inputs
                .iter()
                .map(|input| InputBounds::dims(vec![if input.shape.first() == Some(&-1) { rows() } else { None }]))
                .collect();
            (config.inputs.clone(), config.outputs.clone(), bounds)
        }
    };
    Signature { inputs, outputs, bounds }
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

/// What requests must share to run as one forward pass: each input's shape past dimension 0, and its kind.
type JoinKey = Vec<(Vec<i64>, Kind)>;

/// Runs requests of raw tensors (each one request's inputs, in signature order) through `model`, and returns
/// each request's outputs on the CPU, or why the model could not run them.
///
/// Requests whose inputs have equal shapes past dimension 0 and equal kinds are joined along dimension 0 into one
/// forward pass (the batching the REST routes get); outputs are split back by rows. A model whose outputs are not
/// batched that way runs such requests one at a time instead.
pub fn forward_batched(
    model: &InferenceModule,
    device: Device,
    requests: Vec<Vec<Tensor>>,
) -> Vec<Result<Vec<Tensor>, String>> {
    let mut results: Vec<Option<Result<Vec<Tensor>, String>>> = requests.iter().map(|_| None).collect();
    let mut groups: Vec<(JoinKey, Vec<usize>)> = Vec::new();
    for (index, inputs) in requests.iter().enumerate() {
        let key: JoinKey = inputs.iter().map(|t| (t.size().get(1..).unwrap_or_default().to_vec(), t.kind())).collect();
        let joinable = inputs.iter().all(|t| t.dim() > 0);
        match groups.iter_mut().find(|(k, _)| joinable && *k == key) {
            Some((_, members)) => members.push(index),
            None => groups.push((key, vec![index])),
        }
    }
    for (_, members) in groups {
        let joined = if members.len() > 1 { forward_joined(model, device, &requests, &members) } else { None };
        match joined {
            Some(outputs) => {
                for (index, output) in members.into_iter().zip(outputs) {
                    results[index] = Some(Ok(output));
                }
            }
            None => {
                for index in members {
                    results[index] = Some(forward_to_cpu(model, device, &requests[index]));
                }
            }
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err("the request was not run".into()))).collect()
}

/// One forward pass over the `members` requests joined along dimension 0; `None` when that fails or the outputs
/// are not batched along dimension 0 (the caller then runs them one at a time, so one bad request fails alone).
fn forward_joined(
    model: &InferenceModule,
    device: Device,
    requests: &[Vec<Tensor>],
    members: &[usize],
) -> Option<Vec<Vec<Tensor>>> {
    let rows: Vec<i64> = members.iter().map(|&i| requests[i][0].size()[0]).collect();
    let total: i64 = rows.iter().sum();
    let inputs: Vec<Tensor> = (0..requests[members[0]].len())
        .map(|position| Tensor::f_cat(&members.iter().map(|&i| &requests[i][position]).collect::<Vec<_>>(), 0))
        .collect::<Result<_, _>>()
        .ok()?;
    let outputs = forward_to_cpu(model, device, &inputs).ok()?;
    if !outputs.iter().all(|o| o.dim() > 0 && o.size()[0] == total) {
        return None;
    }
    let mut split: Vec<Vec<Tensor>> = members.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        let mut start = 0;
        for (member, &count) in split.iter_mut().zip(&rows) {
            member.push(output.narrow(0, start, count));
            start += count;
        }
    }
    Some(split)
}

fn forward_to_cpu(model: &InferenceModule, device: Device, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let on_device: Vec<Tensor> =
        inputs.iter().map(|t| t.f_to_device(device)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let outputs = model
        .forward(&on_device.iter().collect::<Vec<_>>())
        .map_err(|e| crate::engine::pool::torch_error_summary(&e))?;
    outputs.into_iter().map(|o| o.f_to_device(Device::Cpu).map_err(|e| e.to_string())).collect()
}

/// A model of task `tensor`: it takes and returns the tensors its model.toml declares.
pub struct TensorModel {
    pub signature: Signature,
}

impl BatchTask for TensorModel {
    type Input = Vec<Tensor>;
    type Output = Vec<Tensor>;

    fn run_batch(
        &self,
        model: &InferenceModule,
        device: Device,
        inputs: Vec<Vec<Tensor>>,
    ) -> anyhow::Result<Vec<Vec<Tensor>>> {
        forward_batched(model, device, inputs).into_iter().map(|r| r.map_err(anyhow::Error::msg)).collect()
    }

    /// Zeros of every declared input, one row where a dimension may be any size.
    fn warmup_input(&self) -> Vec<Tensor> {
        self.signature
            .inputs
            .iter()
            .map(|input| {
                let shape: Vec<i64> = input.shape.iter().map(|&d| d.max(1)).collect();
                Tensor::zeros(shape.as_slice(), (input.datatype.kind(), Device::Cpu))
            })
            .collect()
    }

    /// The model returns as many tensors as model.toml declares outputs, each of the declared rank and fixed sizes.
    fn check_output(&self, outputs: &Vec<Tensor>) -> Result<(), String> {
        let declared = &self.signature.outputs;
        if outputs.len() != declared.len() {
            return Err(format!(
                "the model returns {} tensors but model.toml declares {} outputs",
                outputs.len(),
                declared.len()
            ));
        }
        for (spec, output) in declared.iter().zip(outputs) {
            let mut shape = output.size();
            // Warm-up runs one row; a batched first dimension may read as any size.
            if spec.shape.first() == Some(&-1) && !shape.is_empty() {
                shape[0] = -1;
            }
            if !spec.accepts(&shape) {
                return Err(format!(
                    "output `{}` has shape {:?}, but model.toml declares {:?}",
                    spec.name,
                    output.size(),
                    spec.shape
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, DataType::Fp32, shape)
    }

    #[test]
    fn datatypes_round_trip_by_name_and_unknown_ones_list_the_supported() {
        for datatype in DataType::ALL {
            assert_eq!(DataType::parse(datatype.name()), Ok(datatype));
            assert_eq!(serde_json::to_value(datatype).unwrap(), datatype.name());
        }
        let err = DataType::parse("BYTES").unwrap_err();
        assert!(err.contains("`BYTES`") && err.contains("FP16") && err.contains("BOOL"), "{err}");
    }

    #[test]
    fn shapes_fit_when_rank_and_fixed_dimensions_agree() {
        let image = spec("image", &[-1, 3, 224, 224]);
        assert!(image.accepts(&[2, 3, 224, 224]));
        assert!(!image.accepts(&[2, 3, 224]));
        assert!(!image.accepts(&[2, 1, 224, 224]));
    }

    #[test]
    fn declared_tensors_are_checked() {
        let tensor = TaskKind::Tensor;
        assert!(validate_declared(tensor, &[spec("x", &[-1, 4])], &[spec("y", &[-1])], 8).is_ok());
        let err = validate_declared(tensor, &[], &[spec("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("[[inputs]]"), "{err}");
        let err = validate_declared(tensor, &[spec("x", &[-1]), spec("x", &[-1])], &[spec("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("inputs[1].name `x`"), "{err}");
        let err = validate_declared(tensor, &[spec("x", &[-1, 0])], &[spec("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("inputs[0].shape") && err.contains("got 0"), "{err}");
        let err = validate_declared(tensor, &[spec("x", &[4])], &[spec("y", &[-1])], 8).unwrap_err();
        assert!(err.contains("must start with -1"), "{err}");
        assert!(validate_declared(tensor, &[spec("x", &[4])], &[spec("y", &[2])], 1).is_ok());
        let err = validate_declared(TaskKind::ImageClassification, &[spec("x", &[-1])], &[], 8).unwrap_err();
        assert!(err.contains("only by `tensor` models"), "{err}");
    }
}
