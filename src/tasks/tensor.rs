//! Task `tensor`, and every model's model-level tensors: the signature each task gives its module, for the Open
//! Inference Protocol (KServe v2). Models of task `tensor` declare their tensors in model.toml and are served only
//! over v2.

use tch::{Device, Tensor};

use super::generate::VOCABULARY;
use crate::engine::{forward_batched, BatchTask, InferenceModule};
use crate::model_toml::TaskKind;
use crate::repository::ModelSpec;
use crate::signature::{DataType, InputBounds, Limit, Signature, TensorSpec, ValueRange};

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
