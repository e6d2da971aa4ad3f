//! The settings of a fine-tuning run: the flags of `ember train`, and the same fields as the JSON `settings` part
//! of `POST /admin/models/{name}/fine-tune`. Every one has a default, so `{}` is a valid request.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate; the default depends on the optimiser (sgd 0.01, adam and rmsprop 0.001).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// How the learning rate changes over the run.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Momentum of sgd and rmsprop (adam uses its own betas).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Fraction of the data held out to validate each epoch (0 < x < 1).
    #[arg(long, default_value_t = 0.1)]
    pub validation_split: f64,
    /// Seed of the split, the shuffling and the new head's initial weights: the same seed, data and settings
    /// give the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the validation metric has not improved for this many epochs (the best epoch is kept).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Stop after this many minutes of training and keep the best validated state so far.
    #[arg(long)]
    pub time_limit_minutes: Option<f64>,
    /// Intra-op threads for training; 0 = libtorch's default (every core) for `ember train`.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Image and text classification: train only the new output layer, not the network under it.
    #[arg(long)]
    #[serde(default)]
    pub freeze_backbone: bool,
    /// Image tasks: train (and then serve this version) at this side in pixels, instead of the model's crop.
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Text generation: bytes per training sequence.
    #[arg(long, default_value_t = 128)]
    pub sequence_length: usize,
    /// Style transfer: weight of the style distance against the content loss.
    #[arg(long, default_value_t = 10.0)]
    pub style_weight: f64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 3,
            batch_size: 32,
            learning_rate: None,
            schedule: Schedule::Cosine,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            validation_split: 0.1,
            seed: 0,
            patience: None,
            time_limit_minutes: None,
            threads: 0,
            freeze_backbone: false,
            image_size: None,
            sequence_length: 128,
            style_weight: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Rmsprop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay from the peak to zero over the run.
    Cosine,
    /// A tenth of the rate for the last third of the epochs.
    Step,
}

impl TrainSettings {
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(match self.optimizer {
            OptimizerKind::Sgd => 0.01,
            OptimizerKind::Adam | OptimizerKind::Rmsprop => 0.001,
        })
    }

    /// Every value in range, or a message naming the setting, its range and the value.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, message: String| if ok { Ok(()) } else { Err(message) };
        check((1..=1000).contains(&self.epochs), format!("epochs must be between 1 and 1000, got {}", self.epochs))?;
        check(
            (1..=4096).contains(&self.batch_size),
            format!("batch_size must be between 1 and 4096, got {}", self.batch_size),
        )?;
        let lr = self.learning_rate();
        check(lr > 0.0 && lr <= 10.0, format!("learning_rate must be above 0 and at most 10, got {lr}"))?;
        check((0.0..1.0).contains(&self.momentum), format!("momentum must be in [0, 1), got {}", self.momentum))?;
        check(
            (0.0..=1.0).contains(&self.weight_decay),
            format!("weight_decay must be between 0 and 1, got {}", self.weight_decay),
        )?;
        check(
            self.validation_split > 0.0 && self.validation_split < 1.0,
            format!("validation_split must be between 0 and 1 (exclusive), got {}", self.validation_split),
        )?;
        if let Some(patience) = self.patience {
            check(patience >= 1, "patience must be at least 1 epoch, got 0".to_string())?;
        }
        if let Some(minutes) = self.time_limit_minutes {
            check(minutes > 0.0, format!("time_limit_minutes must be above 0, got {minutes}"))?;
        }
        check(self.threads <= 256, format!("threads must be at most 256, got {}", self.threads))?;
        if let Some(size) = self.image_size {
            check((16..=1024).contains(&size), format!("image_size must be between 16 and 1024, got {size}"))?;
        }
        check(
            (8..=4096).contains(&self.sequence_length),
            format!("sequence_length must be between 8 and 4096, got {}", self.sequence_length),
        )?;
        check(
            self.style_weight > 0.0 && self.style_weight <= 1e6,
            format!("style_weight must be above 0 and at most 1e6, got {}", self.style_weight),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_settings_take_the_cli_defaults_and_reject_unknown_fields() {
        let settings: TrainSettings = serde_json::from_str(r#"{"epochs": 2, "optimizer": "sgd"}"#).unwrap();
        assert_eq!((settings.epochs, settings.batch_size, settings.learning_rate()), (2, 32, 0.01));
        let err = serde_json::from_str::<TrainSettings>(r#"{"epoch": 2}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `epoch`"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_setting() {
        let settings = TrainSettings { validation_split: 1.0, ..TrainSettings::default() };
        assert!(settings.validate().unwrap_err().contains("validation_split"));
        let settings = TrainSettings { learning_rate: Some(-1.0), ..TrainSettings::default() };
        assert!(settings.validate().unwrap_err().contains("learning_rate"));
        assert!(TrainSettings::default().validate().is_ok());
    }
}
