//! A served TorchScript model opened for training: its parameters registered with a tch `VarStore` (what tch's
//! `TrainableCModule` does, but with control over which ones train), the classifier head resized for a new label
//! set, and the optimiser over whatever trains.

use std::path::Path;

use tch::nn::{self, OptimizerConfig};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::settings::{OptimizerKind, TrainSettings};
use super::TrainError;

pub struct TrainableModel {
    pub module: CModule,
    store: nn::VarStore,
    parameters: Vec<(String, Tensor)>,
}

/// The output layer of a classifier: the last `*.weight` of shape `[classes, features]` in the module's
/// parameter order, and its `*.bias`.
struct Head {
    weight: usize,
    bias: Option<usize>,
}

impl TrainableModel {
    pub fn load(path: &Path, device: Device) -> Result<TrainableModel, TrainError> {
        let module = CModule::load_on_device(path, device)
            .map_err(|e| TrainError::Model(format!("cannot load {}: {}", path.display(), first_line(&e))))?;
        let parameters = module.named_parameters()?;
        if parameters.is_empty() {
            return Err(TrainError::Model(format!("{} has no parameters to train", path.display())));
        }
        Ok(TrainableModel { module, store: nn::VarStore::new(device), parameters })
    }

    /// Makes the classifier's output layer `classes` wide with fresh weights (as torch.nn.Linear initialises them,
    /// from `seed`).
    pub fn resize_head(&mut self, old_classes: usize, classes: usize, seed: u64) -> Result<(), TrainError> {
        let head = self.head(old_classes)?;
        let features = self.parameters[head.weight].1.size()[1];
        let bound = 1.0 / (features as f64).sqrt();
        tch::manual_seed(seed as i64);
        let options = (Kind::Float, self.parameters[head.weight].1.device());
        let weight = Tensor::empty([classes as i64, features], options).uniform_(-bound, bound);
        tch::no_grad(|| self.parameters[head.weight].1.set_data(&weight));
        if let Some(bias) = head.bias {
            let fresh = Tensor::empty([classes as i64], options).uniform_(-bound, bound);
            tch::no_grad(|| self.parameters[bias].1.set_data(&fresh));
        }
        Ok(())
    }

    fn head(&self, classes: usize) -> Result<Head, TrainError> {
        let weight = self
            .parameters
            .iter()
            .rposition(|(name, t)| name.ends_with("weight") && t.dim() == 2)
            .filter(|&i| self.parameters[i].1.size()[0] == classes as i64)
            .ok_or_else(|| {
                TrainError::Model(format!(
                    "cannot find the output layer: the last 2-D `*.weight` parameter should be [{classes}, features]"
                ))
            })?;
        let bias_name = self.parameters[weight].0.trim_end_matches("weight").to_string() + "bias";
        let bias = self.parameters.iter().position(|(name, _)| *name == bias_name);
        Ok(Head { weight, bias })
    }

    /// Registers the parameters that train (all, or only the head's with `freeze_backbone`) and builds the
    /// optimiser over them. Frozen parameters stop requiring gradients, so no backward pass is spent on them.
    pub fn optimizer(
        &mut self,
        settings: &TrainSettings,
        head_classes: Option<usize>,
    ) -> Result<nn::Optimizer, TrainError> {
        let trainable: Vec<bool> = match (settings.freeze_backbone, head_classes) {
            (true, Some(classes)) => {
                let head = self.head(classes)?;
                (0..self.parameters.len()).map(|i| i == head.weight || Some(i) == head.bias).collect()
            }
            _ => vec![true; self.parameters.len()],
        };
        let root = self.store.root();
        for ((name, tensor), trains) in self.parameters.iter_mut().zip(trainable) {
            let _ = tensor.set_requires_grad(trains);
            let _ = root.add(&name.replace('.', "_"), tensor.shallow_clone(), trains);
        }
        let lr = settings.learning_rate();
        let mut optimizer = match settings.optimizer {
            OptimizerKind::Sgd => nn::Sgd { momentum: settings.momentum, ..Default::default() }.build(&self.store, lr),
            OptimizerKind::Adam => nn::Adam::default().build(&self.store, lr),
            OptimizerKind::Rmsprop => {
                nn::RmsProp { momentum: settings.momentum, ..Default::default() }.build(&self.store, lr)
            }
        }?;
        optimizer.set_weight_decay(settings.weight_decay);
        Ok(optimizer)
    }

    pub fn trainable_count(&self) -> usize {
        self.store.trainable_variables().iter().map(Tensor::numel).sum()
    }

    pub fn set_train(&mut self, train: bool) {
        if train {
            self.module.set_train()
        } else {
            self.module.set_eval()
        }
    }

    /// `forward(inputs...)` of a model that returns one tensor.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, TrainError> {
        Ok(self.module.forward_ts(inputs)?)
    }

    /// `forward(inputs...)` of a model that returns a tuple of tensors.
    pub fn forward_tuple(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, TrainError> {
        let inputs: Vec<IValue> = inputs.iter().map(|t| IValue::Tensor(t.shallow_clone())).collect();
        match self.module.forward_is(&inputs)? {
            IValue::Tuple(items) => items
                .into_iter()
                .map(|item| match item {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(TrainError::Model(format!("the model returned a {other:?} in its tuple"))),
                })
                .collect(),
            IValue::Tensor(t) => Ok(vec![t]),
            _ => Err(TrainError::Model("the model's forward returned neither a tensor nor a tuple".into())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        Ok(self.module.save(path)?)
    }
}

/// libtorch's messages carry a C++ backtrace after the first line.
pub fn first_line(error: &dyn std::fmt::Display) -> String {
    error.to_string().lines().next().unwrap_or_default().to_string()
}
