//! The optimisation method of style transfer (Gatys et al. 2016, the seed's algorithm): start from the content
//! photo and follow, with Adam, the gradient with respect to the pixels of a content loss and a style loss, both
//! measured by the feature network (`style_features`). It runs with autograd on the feature model's own worker.
//!
//! The feature network returns `(content, style_1, .., style_k)` maps (models/export/style.py). The content loss
//! is the mean squared difference of the content maps; the style loss is, per style map, the squared difference
//! of Gram matrices relative to the style image's own, summed (so every layer counts about the same); a small
//! total-variation term keeps the pixels from high-frequency noise.

use std::sync::Weak;
use std::time::Instant;

use anyhow::{ensure, Context};
use serde::Deserialize;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::image::OutputFormat;
use super::{integer_in_range, number_in_range};
use crate::engine::{BatchTask, InferenceModule};
use crate::model_toml::OptimizationConfig;
use crate::tasks::TaskError;

/// The smallest working size: below it the deepest style maps are a pixel or two.
const MIN_SIZE: u32 = 32;
const WARMUP_SIDE: i64 = 64;
/// Largest style or content weight a request may give.
const MAX_WEIGHT: f64 = 1e6;

/// A style-transfer request's optimisation parameters, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizationParams {
    steps: Option<i64>,
    size: Option<i64>,
    style_weight: Option<f64>,
    content_weight: Option<f64>,
    pub format: Option<OutputFormat>,
}

/// The parameters, validated against the model's caps.
#[derive(Debug, Clone, Copy)]
pub struct OptimizationSettings {
    pub steps: usize,
    /// Longer side of the content and style images while optimising.
    pub size: u32,
    pub style_weight: f64,
    pub content_weight: f64,
    pub tv_weight: f64,
    pub learning_rate: f64,
}

impl OptimizationParams {
    pub fn validate(&self, config: &OptimizationConfig) -> Result<OptimizationSettings, TaskError> {
        let steps = integer_in_range("steps", self.steps, config.default_steps, 1, config.max_steps)?;
        let size = integer_in_range(
            "size",
            self.size,
            config.default_size as usize,
            MIN_SIZE as usize,
            config.max_size as usize,
        )?;
        let weight =
            |name: &str, value: Option<f64>, default: f64| number_in_range(name, value, default, 0.0, MAX_WEIGHT);
        let style_weight = weight("style_weight", self.style_weight, config.default_style_weight)?;
        let content_weight = weight("content_weight", self.content_weight, config.default_content_weight)?;
        if style_weight == 0.0 && content_weight == 0.0 {
            return Err(TaskError::Invalid("style_weight and content_weight cannot both be 0".into()));
        }
        Ok(OptimizationSettings {
            steps,
            size: size as u32,
            style_weight,
            content_weight,
            tv_weight: config.tv_weight,
            learning_rate: config.learning_rate,
        })
    }
}

/// One optimisation: the images as `[3, H, W]` in 0..1, already scaled to the working size.
pub struct OptimizationJob {
    pub content: Tensor,
    pub style: Tensor,
    pub settings: OptimizationSettings,
    /// Alive while the caller waits; once it is gone (disconnected or timed out) the optimisation stops at the
    /// next step instead of spending seconds on an answer nobody reads. None: nobody to wait for (warm-up).
    pub caller: Option<Weak<()>>,
}

impl OptimizationJob {
    fn abandoned(&self) -> bool {
        self.caller.as_ref().is_some_and(|caller| caller.strong_count() == 0)
    }
}

pub struct OptimizationResult {
    /// `[3, H, W]` in 0..1 on the CPU: the content image's working size.
    pub image: Tensor,
    pub steps: usize,
    pub seconds: f64,
}

/// Runs optimisations on the style-features model's worker (one at a time: max_batch_size is 1).
pub struct StyleOptimizer {
    pub config: OptimizationConfig,
}

impl StyleOptimizer {
    fn optimize(
        &self,
        model: &InferenceModule,
        device: Device,
        job: OptimizationJob,
    ) -> anyhow::Result<OptimizationResult> {
        let started = Instant::now();
        let s = job.settings;
        let content = job.content.f_unsqueeze(0)?.f_to_device(device)?;
        let style = job.style.f_unsqueeze(0)?.f_to_device(device)?;
        let content_target = features(model, &content)?.swap_remove(0);
        let style_targets = features(model, &style)?.iter().skip(1).map(gram).collect::<Result<Vec<_>, _>>()?;

        // The pool's worker threads run without gradients; the optimisation needs them for the pixels only
        // (the feature network's parameters were saved with requires_grad off).
        tch::with_grad(|| {
            let store = nn::VarStore::new(device);
            let mut image = store.root().var_copy("image", &content);
            let mut optimizer = nn::Adam::default().build(&store, s.learning_rate)?;
            let mut steps = 0;
            while steps < s.steps && !job.abandoned() {
                let maps = features(model, &image)?;
                let content_loss = maps[0].f_mse_loss(&content_target, Reduction::Mean)?;
                let mut style_loss = Tensor::zeros([], (Kind::Float, device));
                for (map, target) in maps[1..].iter().zip(&style_targets) {
                    style_loss += relative_gram_distance(map, target)?;
                }
                let loss = content_loss * s.content_weight
                    + style_loss * s.style_weight
                    + total_variation(&image)? * s.tv_weight;
                optimizer.backward_step(&loss);
                tch::no_grad(|| image.f_clamp_(0.0, 1.0).map(drop)).context("clamping the pixels")?;
                steps += 1;
            }
            let image = image.detach().f_squeeze_dim(0)?.f_to_device(Device::Cpu)?;
            Ok(OptimizationResult { image, steps, seconds: started.elapsed().as_secs_f64() })
        })
    }
}

fn features(model: &InferenceModule, image: &Tensor) -> anyhow::Result<Vec<Tensor>> {
    let maps = model.forward(&[image]).map_err(anyhow::Error::msg)?;
    ensure!(
        maps.len() >= 2 && maps.iter().all(|m| m.dim() == 4),
        "the feature network returned {} tensors; expected (content, style maps...), each [N, C, H, W]",
        maps.len()
    );
    Ok(maps)
}

/// Channel correlations averaged over positions: `[N, C, C]`.
pub(crate) fn gram(features: &Tensor) -> Result<Tensor, tch::TchError> {
    let (n, c, h, w) = features.size4()?;
    let flat = features.f_reshape([n, c, h * w])?;
    Ok(flat.f_matmul(&flat.f_transpose(1, 2)?)? / (h * w) as f64)
}

pub(crate) fn relative_gram_distance(features: &Tensor, target: &Tensor) -> Result<Tensor, tch::TchError> {
    let difference = gram(features)?.f_sub(target)?;
    Ok(difference.f_square()?.f_sum(Kind::Float)? / target.f_square()?.f_sum(Kind::Float)?)
}

pub(crate) fn total_variation(image: &Tensor) -> Result<Tensor, tch::TchError> {
    let (_, _, h, w) = image.size4()?;
    let vertical = (image.f_narrow(2, 1, h - 1)? - image.f_narrow(2, 0, h - 1)?).f_abs()?.f_mean(Kind::Float)?;
    let horizontal = (image.f_narrow(3, 1, w - 1)? - image.f_narrow(3, 0, w - 1)?).f_abs()?.f_mean(Kind::Float)?;
    Ok(vertical + horizontal)
}

impl BatchTask for StyleOptimizer {
    type Input = OptimizationJob;
    type Output = OptimizationResult;

    fn run_batch(
        &self,
        model: &InferenceModule,
        device: Device,
        inputs: Vec<OptimizationJob>,
    ) -> anyhow::Result<Vec<OptimizationResult>> {
        inputs.into_iter().map(|job| self.optimize(model, device, job)).collect()
    }

    fn warmup_input(&self) -> OptimizationJob {
        let image = |value: f64| Tensor::full([3, WARMUP_SIDE, WARMUP_SIDE], value, (Kind::Float, Device::Cpu));
        OptimizationJob {
            content: image(0.25),
            style: image(0.75),
            settings: OptimizationSettings {
                steps: 2,
                size: WARMUP_SIDE as u32,
                style_weight: 1.0,
                content_weight: 1.0,
                tv_weight: 1.0,
                learning_rate: 0.01,
            },
            caller: None,
        }
    }

    fn check_output(&self, output: &OptimizationResult) -> Result<(), String> {
        let expected = [3, WARMUP_SIDE, WARMUP_SIDE];
        if output.image.size() == expected && output.steps == 2 {
            Ok(())
        } else {
            Err(format!("the optimisation returned an image of shape {:?}; expected {expected:?}", output.image.size()))
        }
    }
}
