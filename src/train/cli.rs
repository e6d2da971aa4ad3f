//! `ember train` and `ember eval`: the flags, and running them in the foreground with Ctrl-C cancelling.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{evaluate, train, Cancel, ConsoleProgress, DataSource, TrainJob, TrainSettings};
use crate::engine::device;
use crate::flags::RepoArgs;
use crate::model_toml::DeviceChoice;

/// A model version of a repository.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The model (a folder of the repository).
    #[arg(long)]
    pub model: String,
    /// Its version (default: the one served: pinned, else the highest not held).
    #[arg(long)]
    pub version: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model to start from.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Publish as version 1 of a new model with this name instead of the next version of --model.
    #[arg(long)]
    pub into: Option<String>,
    /// Save the new version without serving it (marked `held = true` in its version.toml) until it is pinned
    /// with `version = N` in model.toml.
    #[arg(long)]
    pub hold: bool,
    #[command(flatten)]
    pub data: DataArgs,
    /// auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub settings: TrainSettings,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// Image folder (<dir>/<label>/*.jpg|png), IDX images file (*-images-idx3-ubyte[.gz], labels beside it),
    /// CSV or JSONL of `text` and `label`, or a text file / folder of .txt files for text generation.
    #[arg(long)]
    pub data: PathBuf,
    /// A file naming the label values 0, 1, ... of IDX data, one per line.
    #[arg(long)]
    pub label_names: Option<PathBuf>,
}

impl DataArgs {
    fn source(&self) -> anyhow::Result<DataSource> {
        let class_names = match &self.label_names {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            }
            None => None,
        };
        Ok(DataSource { path: self.data.clone(), class_names })
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model to measure.
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Intra-op threads; 0 = libtorch's default.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Text generation: bytes per window (the state carries across windows).
    #[arg(long, default_value_t = 128)]
    pub sequence_length: usize,
}

/// Cancels `cancel` on SIGINT or SIGTERM, so the run stops at its next step and removes what it staged.
fn cancel_on_signal(cancel: Cancel) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(crate::shutdown::shutdown_signal());
            cancel.cancel();
        }
    });
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let job = TrainJob {
        repo: args.model.repo.model_repo,
        model: args.model.model,
        version: args.model.version,
        into: args.into,
        hold: args.hold,
        data: args.data.source()?,
        settings: args.settings,
        device: device::resolve(args.device, DeviceChoice::Auto).map_err(anyhow::Error::msg)?,
    };
    let cancel = Cancel::default();
    cancel_on_signal(cancel.clone());
    let trained = train(&job, &ConsoleProgress::default(), &cancel)?;
    println!("{}", serde_json::to_string_pretty(&trained.metrics)?);
    println!("published {} version {} in {}", trained.model, trained.version, trained.dir.display());
    Ok(())
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let settings = TrainSettings {
        batch_size: args.batch_size,
        threads: args.threads,
        sequence_length: args.sequence_length,
        ..TrainSettings::default()
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    let device = device::resolve(args.device, DeviceChoice::Auto).map_err(anyhow::Error::msg)?;
    let model = &args.model;
    let (version, evaluation) =
        evaluate(&model.repo.model_repo, &model.model, model.version, &args.data.source()?, &settings, device)?;
    let report =
        serde_json::json!({"model": model.model, "version": version, "data": args.data.data, "evaluation": evaluation});
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
