//! Fast style transfer: an image becomes a `[3, H, W]` tensor in 0..1 (scaled down to `max_size`), one forward
//! pass of a style network restyles it, and the result is blended with the original and encoded.

use tch::{Device, Kind, Tensor};

use super::image::{self as pixels, OutputFormat};
use super::{integer_in_range, number_in_range};
use crate::engine::{BatchTask, InferenceModule};
use crate::model_toml::StylizeConfig;
use crate::tasks::TaskError;

/// The side of the square images the workers warm up with.
const WARMUP_SIDE: i64 = 256;
/// Smaller images are refused: the networks pad by up to 4 pixels and downsample by 4.
pub const MIN_SIDE: u32 = 16;

/// A stylize request's parameters, validated.
#[derive(Debug, Clone, Copy)]
pub struct StylizeParams {
    pub strength: f64,
    pub max_size: u32,
    pub format: OutputFormat,
}

impl StylizeParams {
    pub fn validate(
        strength: Option<f64>,
        max_size: Option<i64>,
        format: Option<OutputFormat>,
        config: &StylizeConfig,
    ) -> Result<StylizeParams, TaskError> {
        let strength = number_in_range("strength", strength, 1.0, 0.0, 1.0)?;
        let max_size = integer_in_range(
            "max_size",
            max_size,
            config.default_max_size as usize,
            MIN_SIDE as usize,
            config.max_size_limit as usize,
        )?;
        Ok(StylizeParams { strength, max_size: max_size as u32, format: format.unwrap_or_default() })
    }
}

/// Runs a style network on batches of images; images of one size share a forward pass.
#[derive(Clone)]
pub struct Stylizer {
    pub config: StylizeConfig,
}

impl Stylizer {
    /// Decodes an image whose header `probe` checked and scales it so that its longer side is at most `max_size`. CPU work: call it off the
    /// async runtime. The tensor is both the network's input and the original that `finish` blends with.
    pub fn prepare(bytes: &[u8], probe: pixels::Probe, max_size: u32) -> Result<Tensor, TaskError> {
        let image = pixels::decode_probed_for(bytes, probe, pixels::DecodeSize::LongerAtLeast(max_size))?;
        let rgb = pixels::fit_within(image, max_size)?;
        let (width, height) = rgb.dimensions();
        if width.min(height) < MIN_SIDE {
            return Err(TaskError::Invalid(format!(
                "the image is {width}x{height} after scaling to max_size {max_size}; both sides must be at least {MIN_SIDE} pixels"
            )));
        }
        Ok(pixels::to_unit_tensor(&rgb))
    }

    /// `original + strength * (styled - original)`, encoded. CPU work: call it off the async runtime.
    pub fn finish(original: &Tensor, styled: &Tensor, params: StylizeParams) -> Result<Vec<u8>, TaskError> {
        let blended =
            if params.strength >= 1.0 { styled.shallow_clone() } else { original.lerp(styled, params.strength) };
        pixels::encode(&pixels::from_unit_tensor(&blended)?, params.format)
    }
}

impl BatchTask for Stylizer {
    /// `[3, H, W]` in 0..1.
    type Input = Tensor;
    /// `[3, H, W]` in 0..1, on the CPU.
    type Output = Tensor;

    fn run_batch(&self, model: &InferenceModule, device: Device, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let mut outputs: Vec<Option<Tensor>> = inputs.iter().map(|_| None).collect();
        for group in same_size_groups(&inputs) {
            let members: Vec<&Tensor> = group.iter().map(|&i| &inputs[i]).collect();
            let batch = Tensor::f_stack(&members, 0)?.f_to_device(device)?;
            let styled = model.forward_one(&[&batch]).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                styled.size() == batch.size(),
                "the style network returned shape {:?} for input {:?}; it must keep the input's shape",
                styled.size(),
                batch.size()
            );
            let styled = styled.f_clamp(0.0, 1.0)?.f_to_device(Device::Cpu)?;
            for (row, &index) in group.iter().enumerate() {
                outputs[index] = Some(styled.get(row as i64));
            }
        }
        outputs.into_iter().map(|o| o.ok_or_else(|| anyhow::anyhow!("an image was left out of every group"))).collect()
    }

    fn fixed_input_shape(&self) -> bool {
        false
    }

    fn warmup_input(&self) -> Tensor {
        Tensor::full([3, WARMUP_SIDE, WARMUP_SIDE], 0.5, (Kind::Float, Device::Cpu))
    }

    fn check_output(&self, output: &Tensor) -> Result<(), String> {
        let expected = [3, WARMUP_SIDE, WARMUP_SIDE];
        if output.size() == expected {
            Ok(())
        } else {
            Err(format!("the style network returned shape {:?} for an input of {expected:?}", output.size()))
        }
    }
}

/// Indices of `inputs` grouped by image size, each group in arrival order: a forward pass needs one shape.
fn same_size_groups(inputs: &[Tensor]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<i64>, Vec<usize>)> = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        let size = input.size();
        match groups.iter_mut().find(|(group_size, _)| *group_size == size) {
            Some((_, members)) => members.push(index),
            None => groups.push((size, vec![index])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_grouped_by_size_in_arrival_order() {
        let image = |h: i64, w: i64| Tensor::zeros([3, h, w], (Kind::Float, Device::Cpu));
        let inputs = [image(32, 48), image(64, 64), image(32, 48), image(64, 64), image(16, 16)];
        assert_eq!(same_size_groups(&inputs), vec![vec![0, 2], vec![1, 3], vec![4]]);
    }

    #[test]
    fn parameters_are_checked_against_the_model_limits() {
        let config = StylizeConfig { default_max_size: 512, max_size_limit: 1024 };
        let params = StylizeParams::validate(None, None, None, &config).unwrap();
        assert_eq!((params.strength, params.max_size, params.format), (1.0, 512, OutputFormat::Png));
        for (strength, max_size, field) in
            [(Some(1.5), None, "strength"), (None, Some(2048), "max_size"), (None, Some(8), "max_size")]
        {
            let err = StylizeParams::validate(strength, max_size, None, &config).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }
}
