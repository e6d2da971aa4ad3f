//! What each task minimises: cross-entropy over labels for classifiers (images or texts), cross-entropy of the
//! next byte for text generation.

use tch::{Device, Kind, Tensor};

use super::data::{Images, Labelled};
use super::driver::Objective;
use super::model::TrainableModel;
use super::progress::Evaluation;
use super::TrainError;
use crate::model_toml::ImagePreprocessing;
use crate::tasks::sentiment::{pad_batch, TextClassifier, TokenizedText};

/// Examples a classifier reads, as the model's input tensors for a batch.
pub trait ClassifierInputs {
    fn inputs(&self, batch: &[usize], device: Device) -> Result<Vec<Tensor>, TrainError>;
}

/// 8-bit RGB images normalised as the model's preprocessing says.
pub struct ImageInputs {
    pub images: Images,
    pub mean: Tensor,
    pub std: Tensor,
}

impl ImageInputs {
    pub fn new(images: Images, prep: &ImagePreprocessing) -> ImageInputs {
        let channel = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]);
        ImageInputs { images, mean: channel(prep.mean), std: channel(prep.std) }
    }
}

impl ClassifierInputs for ImageInputs {
    fn inputs(&self, batch: &[usize], device: Device) -> Result<Vec<Tensor>, TrainError> {
        let side = self.images.side as usize;
        let size = side * side * 3;
        let mut bytes = Vec::with_capacity(batch.len() * size);
        for &i in batch {
            bytes.extend_from_slice(&self.images.pixels[i * size..(i + 1) * size]);
        }
        let hwc = Tensor::from_slice(&bytes).view([batch.len() as i64, side as i64, side as i64, 3]);
        let unit = hwc.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
        Ok(vec![((unit - &self.mean) / &self.std).to_device(device)])
    }
}

/// Texts tokenised with the model's tokenizer; a batch is padded to its longest text, with an attention mask.
pub struct TextInputs {
    pub tokens: Vec<TokenizedText>,
}

impl TextInputs {
    pub fn new(texts: &[String], tokenizer: &TextClassifier) -> Result<TextInputs, TrainError> {
        let tokens = texts
            .iter()
            .map(|t| tokenizer.tokenize(t).map_err(|e| TrainError::Dataset(format!("text `{t}`: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(TextInputs { tokens })
    }
}

impl ClassifierInputs for TextInputs {
    fn inputs(&self, batch: &[usize], device: Device) -> Result<Vec<Tensor>, TrainError> {
        let texts: Vec<TokenizedText> = batch.iter().map(|&i| self.tokens[i].clone()).collect();
        let (ids, mask) = pad_batch(&texts);
        Ok(vec![ids.to_device(device), mask.to_device(device)])
    }
}

/// Cross-entropy of a classifier over `labels`, validated by accuracy on the held-out indices.
pub struct Classification<I> {
    pub data: Labelled<I>,
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub device: Device,
    pub batch_size: usize,
}

impl<I: ClassifierInputs> Classification<I> {
    fn logits(&self, model: &TrainableModel, batch: &[usize]) -> Result<Tensor, TrainError> {
        let inputs = self.data.examples.inputs(batch, self.device)?;
        model.forward(&inputs.iter().collect::<Vec<_>>())
    }

    fn targets(&self, batch: &[usize]) -> Tensor {
        let labels: Vec<i64> = batch.iter().map(|&i| self.data.labels[i]).collect();
        Tensor::from_slice(&labels).to_device(self.device)
    }

    /// Accuracy and mean cross-entropy over `indices`.
    pub fn evaluate(&self, model: &TrainableModel, indices: &[usize]) -> Result<Evaluation, TrainError> {
        let (mut loss, mut correct) = (0.0, 0i64);
        for batch in indices.chunks(self.batch_size.max(64)) {
            let logits = self.logits(model, batch)?;
            let targets = self.targets(batch);
            check_classes(&logits, self.data.classes.len())?;
            loss += logits.cross_entropy_for_logits(&targets).double_value(&[]) * batch.len() as f64;
            correct += logits.argmax(-1, false).eq_tensor(&targets).sum(Kind::Int64).int64_value(&[]);
        }
        let n = indices.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss / n,
            accuracy: Some(correct as f64 / n),
            luminance_correlation: None,
            examples: indices.len(),
        })
    }
}

fn check_classes(logits: &Tensor, classes: usize) -> Result<(), TrainError> {
    match logits.size().as_slice() {
        [_, n] if *n == classes as i64 => Ok(()),
        shape => {
            Err(TrainError::Model(format!("the model returned logits of shape {shape:?}; expected [batch, {classes}]")))
        }
    }
}

impl<I: ClassifierInputs> Objective for Classification<I> {
    fn train_examples(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, model: &TrainableModel, batch: &[usize]) -> Result<Tensor, TrainError> {
        let indices: Vec<usize> = batch.iter().map(|&i| self.train[i]).collect();
        let logits = self.logits(model, &indices)?;
        check_classes(&logits, self.data.classes.len())?;
        Ok(logits.cross_entropy_for_logits(&self.targets(&indices)))
    }

    fn validate(&mut self, model: &TrainableModel) -> Result<Evaluation, TrainError> {
        self.evaluate(model, &self.validation)
    }
}

/// Next-byte cross-entropy of a byte-level language model with the `forward(ids, state) -> (logits, state)`
/// interface of text-generation models. Training reads random windows of the training text; validation reads
/// the held-out text from start to end in windows, carrying the state across them.
pub struct NextByte {
    pub train_text: Vec<u8>,
    pub validation_text: Vec<u8>,
    pub sequence_length: usize,
    pub device: Device,
    pub seed: u64,
    pub draws: u64,
}

impl NextByte {
    fn ids(&self, windows: &[&[u8]]) -> Tensor {
        let flat: Vec<i64> = windows.iter().flat_map(|w| w.iter().map(|&b| i64::from(b))).collect();
        Tensor::from_slice(&flat).view([windows.len() as i64, -1]).to_device(self.device)
    }

    /// Mean cross-entropy in nats per byte over `text`, predicting every byte after the first.
    pub fn evaluate(&self, model: &TrainableModel, text: &[u8]) -> Result<Evaluation, TrainError> {
        let mut state = Tensor::zeros([0], (Kind::Float, self.device));
        let (mut loss, mut predicted) = (0.0, 0usize);
        let mut start = 0;
        while start + 1 < text.len() {
            let end = (start + self.sequence_length * 8).min(text.len() - 1);
            let outputs = model.forward_tuple(&[&self.ids(&[&text[start..end]]), &state])?;
            let [logits, next_state] = <[Tensor; 2]>::try_from(outputs).map_err(|o| {
                TrainError::Model(format!("the model returned {} tensors; expected (logits, state)", o.len()))
            })?;
            let targets = self.ids(&[&text[start + 1..end + 1]]).view([-1]);
            let n = end - start;
            loss += logits.view([n as i64, -1]).cross_entropy_for_logits(&targets).double_value(&[]) * n as f64;
            predicted += n;
            state = next_state;
            start = end;
        }
        Ok(Evaluation {
            loss: loss / predicted.max(1) as f64,
            accuracy: None,
            luminance_correlation: None,
            examples: predicted,
        })
    }
}

impl Objective for NextByte {
    /// An "example" is one window; an epoch reads about as many bytes as the training text holds.
    fn train_examples(&self) -> usize {
        (self.train_text.len() / self.sequence_length).max(1)
    }

    fn loss(&mut self, model: &TrainableModel, batch: &[usize]) -> Result<Tensor, TrainError> {
        let span = self.sequence_length + 1;
        let last_start = self.train_text.len().saturating_sub(span);
        let mut rng = crate::rng::Rng::new(self.seed ^ self.draws.wrapping_mul(0x9E37_79B9));
        self.draws += 1;
        let windows: Vec<&[u8]> = batch
            .iter()
            .map(|_| {
                let start = (rng.next_u64() % (last_start as u64 + 1)) as usize;
                &self.train_text[start..start + span]
            })
            .collect();
        let ids = self.ids(&windows);
        let inputs = ids.narrow(1, 0, self.sequence_length as i64);
        let targets = ids.narrow(1, 1, self.sequence_length as i64).reshape([-1]);
        let state = Tensor::zeros([0], (Kind::Float, self.device));
        let outputs = model.forward_tuple(&[&inputs, &state])?;
        let logits =
            outputs.into_iter().next().ok_or_else(|| TrainError::Model("the model returned nothing".into()))?;
        Ok(logits.reshape([targets.size()[0], -1]).cross_entropy_for_logits(&targets))
    }

    fn validate(&mut self, model: &TrainableModel) -> Result<Evaluation, TrainError> {
        self.evaluate(model, &self.validation_text)
    }
}
