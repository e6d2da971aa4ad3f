//! Training a fast style network: a new style from a painting and a folder of content photos, starting from a
//! served style network and judged by the repository's style-features model, with the losses of
//! models/export/style.py (content on the first feature map, the style distance of Gram matrices, total
//! variation, and the 32x32 luminance that keeps the photo's composition).
//!
//! Data: `<dir>/style.<jpg|png|...>` (the painting) and `<dir>/content/*.jpg|png` (the photos).

use std::path::{Path, PathBuf};

use ::image::RgbImage;
use tch::{Device, Kind, Reduction, Tensor};

use super::data;
use super::driver::Objective;
use super::model::TrainableModel;
use super::progress::Evaluation;
use super::TrainError;
use crate::model_toml::ImagePreprocessing;
use crate::rng::Rng;
use crate::tasks::image;
use crate::tasks::style_transfer::{gram, relative_gram_distance, total_variation};

/// The weights models/export/style.py trained the default styles with (content weight 1, style from the settings).
const TV_WEIGHT: f64 = 1.0;
const LUMINANCE_WEIGHT: f64 = 300.0;
/// Random crops per content photo in one epoch.
const CROPS_PER_PHOTO: usize = 8;

pub struct StyleData {
    pub style: RgbImage,
    pub photos: Vec<RgbImage>,
}

/// Reads `<dir>/style.*` and `<dir>/content/*`.
pub fn style_folder(dir: &Path) -> Result<StyleData, TrainError> {
    let bad = |message: String| TrainError::Dataset(message);
    if !dir.is_dir() {
        return Err(bad(format!(
            "{} is not a folder: expected <dir>/style.jpg and <dir>/content/*.jpg",
            dir.display()
        )));
    }
    let styles: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_stem().is_some_and(|s| s == "style"))
        .collect();
    let style_file = match styles.as_slice() {
        [one] => one,
        [] => {
            return Err(bad(format!("{} has no style image: put the painting at style.jpg (or .png)", dir.display())))
        }
        _ => return Err(bad(format!("{} has several style.* files: keep one", dir.display()))),
    };
    let content = dir.join("content");
    let files = data::image_files(&content)
        .map_err(|_| bad(format!("{} is missing: put the content photos there", content.display())))?;
    if files.len() < 2 {
        return Err(bad(format!(
            "{} holds {} photo(s): at least 2 are needed (one is held out to validate)",
            content.display(),
            files.len()
        )));
    }
    let style = data::decode_file(style_file)?.into_rgb8();
    let photos = files.iter().map(|f| data::decode_file(f).map(|i| i.into_rgb8())).collect::<Result<_, _>>()?;
    Ok(StyleData { style, photos })
}

/// `[1, 3, H, W]` in 0..1.
fn unit_batch(images: &[RgbImage], device: Device) -> Tensor {
    Tensor::stack(&images.iter().map(image::to_unit_tensor).collect::<Vec<_>>(), 0).to_device(device)
}

/// An image scaled so that its shorter side is `side` and cropped square in the middle.
fn square(photo: &RgbImage, side: u32) -> Result<RgbImage, TrainError> {
    let prep = ImagePreprocessing { resize: side, crop: side, mean: [0.0; 3], std: [1.0; 3] };
    image::resize_and_crop(photo.clone().into(), &prep).map_err(|e| TrainError::Dataset(e.to_string()))
}

/// `[N, 1, 32, 32]`: luminance averaged down to 32 x 32, the composition without the texture.
fn coarse_luminance(images: &Tensor) -> Tensor {
    let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).view([1, 3, 1, 1]).to_device(images.device());
    (images * weights).sum_dim_intlist(1, true, Kind::Float).adaptive_avg_pool2d([32, 32])
}

/// Pearson correlation of two images' coarse luminance: is the photo still recognisable?
fn luminance_correlation(a: &Tensor, b: &Tensor) -> f64 {
    let centred = |t: &Tensor| {
        let flat = coarse_luminance(t).view([-1]);
        &flat - flat.mean(Kind::Float)
    };
    let (a, b) = (centred(a), centred(b));
    ((&a * &b).sum(Kind::Float) / (a.norm() * b.norm())).double_value(&[])
}

pub struct StyleObjective {
    pub features: TrainableModel,
    pub targets: Vec<Tensor>,
    pub train: Vec<RgbImage>,
    pub validation: Vec<RgbImage>,
    pub side: u32,
    pub style_weight: f64,
    pub device: Device,
    pub rng: Rng,
}

impl StyleObjective {
    /// Holds out about `validation_split` of the photos (at least one) and computes the painting's Gram targets.
    pub fn new(
        features: TrainableModel,
        data: StyleData,
        side: u32,
        style_weight: f64,
        validation_split: f64,
        seed: u64,
        device: Device,
    ) -> Result<StyleObjective, TrainError> {
        let (train, validation) = data::split(data.photos.len(), validation_split, seed)?;
        let pick = |indices: &[usize]| indices.iter().map(|&i| data.photos[i].clone()).collect();
        let style = unit_batch(&[data.style], device);
        let targets = tch::no_grad(|| -> Result<Vec<Tensor>, TrainError> {
            let maps = feature_maps(&features, &style)?;
            maps[1..].iter().map(|m| Ok(gram(m)?)).collect()
        })?;
        Ok(StyleObjective {
            features,
            targets,
            train: pick(&train),
            validation: pick(&validation),
            side,
            style_weight,
            device,
            rng: Rng::new(seed),
        })
    }

    /// A random square of 40-100% of a random photo's shorter side at `side` px, mirrored half the time.
    fn random_crop(&mut self) -> Result<RgbImage, TrainError> {
        let photo = &self.train[(self.rng.next_u64() % self.train.len() as u64) as usize];
        let shorter = photo.width().min(photo.height());
        let crop = ((f64::from(shorter) * (0.4 + 0.6 * self.rng.next_f64())) as u32).max(16);
        let left = (self.rng.next_u64() % u64::from(photo.width() - crop + 1)) as u32;
        let top = (self.rng.next_u64() % u64::from(photo.height() - crop + 1)) as u32;
        let mut cropped = square(&::image::imageops::crop_imm(photo, left, top, crop, crop).to_image(), self.side)?;
        if self.rng.next_u64().is_multiple_of(2) {
            cropped = ::image::imageops::flip_horizontal(&cropped);
        }
        Ok(cropped)
    }

    /// Mean style distance of `images` ([N, 3, H, W] in 0..1) to the painting.
    fn style_distance(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        let maps = feature_maps(&self.features, images)?;
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for (map, target) in maps[1..].iter().zip(&self.targets) {
            total += relative_gram_distance(map, target)?;
        }
        Ok(total / images.size()[0] as f64)
    }

    /// Style distance relative to the unstyled photos' (1.0 = no style at all, lower is more of the painting),
    /// and the luminance correlation with the photos, on the held-out photos.
    pub fn measure(&self, network: &TrainableModel, photos: &[RgbImage]) -> Result<Evaluation, TrainError> {
        let (mut ratio, mut correlation) = (0.0, 0.0);
        for photo in photos {
            let photo = unit_batch(&[square(photo, self.side)?], self.device);
            let styled = network.forward(&[&photo])?;
            ratio += self.style_distance(&styled)?.double_value(&[]) / self.style_distance(&photo)?.double_value(&[]);
            correlation += luminance_correlation(&styled, &photo);
        }
        let n = photos.len().max(1) as f64;
        Ok(Evaluation {
            loss: ratio / n,
            accuracy: None,
            luminance_correlation: Some(correlation / n),
            examples: photos.len(),
        })
    }
}

fn feature_maps(features: &TrainableModel, images: &Tensor) -> Result<Vec<Tensor>, TrainError> {
    let maps = features.forward_tuple(&[images])?;
    if maps.len() < 2 || maps.iter().any(|m| m.dim() != 4) {
        return Err(TrainError::Model(format!(
            "the style-features model returned {} tensors; expected (content, style maps...), each [N, C, H, W]",
            maps.len()
        )));
    }
    Ok(maps)
}

impl Objective for StyleObjective {
    fn train_examples(&self) -> usize {
        (self.train.len() * CROPS_PER_PHOTO).max(32)
    }

    fn loss(&mut self, model: &TrainableModel, batch: &[usize]) -> Result<Tensor, TrainError> {
        let crops = batch.iter().map(|_| self.random_crop()).collect::<Result<Vec<_>, _>>()?;
        let photos = unit_batch(&crops, self.device);
        let styled = model.forward(&[&photos])?;
        let maps = feature_maps(&self.features, &styled)?;
        let content_target = tch::no_grad(|| feature_maps(&self.features, &photos))?.swap_remove(0);
        let content = maps[0].mse_loss(&content_target, Reduction::Mean);
        let style = self.style_distance(&styled)?;
        let luminance = coarse_luminance(&styled).mse_loss(&coarse_luminance(&photos), Reduction::Mean);
        Ok(content + style * self.style_weight + total_variation(&styled)? * TV_WEIGHT + luminance * LUMINANCE_WEIGHT)
    }

    fn validate(&mut self, model: &TrainableModel) -> Result<Evaluation, TrainError> {
        self.measure(model, &self.validation)
    }
}
