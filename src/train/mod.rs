//! Fine-tuning the served TorchScript models in Rust (`ember train`, `ember eval`, and the admin API's jobs):
//! datasets, the shared training loop, each task's objective, and publishing the result as a new version.

pub mod cli;
pub mod data;
pub mod driver;
pub mod formats;
pub mod model;
pub mod objectives;
pub mod progress;
pub mod publish;
pub mod settings;
pub mod style;
pub mod upload;

use std::path::{Path, PathBuf};

use serde_json::json;
use tch::Device;

use crate::formats::ModelFormat;
use crate::model_toml::{ImagePreprocessing, TaskKind};
use crate::repository::{ModelSpec, Repository, VersionToml};
use crate::tasks::sentiment::TextClassifier;
use data::{Images, Labelled};
pub use driver::{Cancel, Fitted};
use model::TrainableModel;
use objectives::{Classification, ClassifierInputs, ImageInputs, NextByte, TextInputs};
pub use progress::{ConsoleProgress, Evaluation, Progress, Snapshot};
use publish::Staging;
pub use settings::TrainSettings;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data cannot be trained on: missing, empty, one class, unreadable, a label missing.
    #[error("{0}")]
    Dataset(String),
    #[error("{0}")]
    Settings(String),
    /// The model cannot be opened or trained (not found, wrong interface).
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Diverged(String),
    #[error("the run was cancelled")]
    Cancelled,
    /// The OS error is part of the message and not a `source`, as in `RepoError::Io`.
    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
    #[error("libtorch: {}", crate::engine::torch_error_summary(&.0.to_string()))]
    Torch(#[from] tch::TchError),
}

/// Where the data is: an image folder, an IDX images file, a CSV/JSONL file, or text files.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub path: PathBuf,
    /// Names of the label values 0, 1, ... of an IDX file (which holds only numbers).
    pub class_names: Option<Vec<String>>,
}

/// One fine-tuning run: which model and version it starts from, where the result goes, the data, the settings.
pub struct TrainJob {
    pub repo: PathBuf,
    pub model: String,
    /// The version to start from; the served one when absent.
    pub version: Option<u64>,
    /// Publish as version 1 of this new model instead of the next version of `model`.
    pub into: Option<String>,
    /// Save the version but mark it held: it is not served until pinned in model.toml.
    pub hold: bool,
    pub data: DataSource,
    pub settings: TrainSettings,
    pub device: Device,
}

#[derive(Debug, Clone)]
pub struct Trained {
    pub model: String,
    pub version: u64,
    pub dir: PathBuf,
    pub metrics: serde_json::Value,
    /// What became of each format of the base version (model.onnx carried, model.pt2 not, ...).
    pub formats: Vec<formats::FormatNote>,
}

/// A model at one version, with that version's labels and preprocessing.
fn open(repo: &Path, name: &str, version: Option<u64>) -> Result<(ModelSpec, u64), TrainError> {
    // Only this model's folder is read: another model of the repository has no say in this run.
    let dir = repo.join(name);
    if crate::repository::check_model_name(name).is_err() || !dir.join("model.toml").is_file() {
        return Err(TrainError::Model(format!("no model `{name}` in {}", repo.display())));
    }
    let spec = crate::repository::read_model(&dir).map_err(|e| TrainError::Model(e.to_string()))?;
    let version = match version.or(spec.served_version()) {
        Some(v) if spec.versions.contains(&v) => v,
        Some(v) => return Err(TrainError::Model(format!("model `{name}` has no version {v}"))),
        None => return Err(TrainError::Model(format!("model `{name}` has no version yet (run the setup)"))),
    };
    let spec = spec.at_version(version).map_err(|e| TrainError::Model(e.to_string()))?;
    Ok((spec, version))
}

/// The TorchScript file of `version`, which training runs (its gradients are libtorch's): a quantized model, or a
/// version served only as ONNX or as an AOTInductor package, cannot be trained, and says so.
pub fn torchscript_file(spec: &ModelSpec, version: u64) -> Result<PathBuf, TrainError> {
    if let Some(fp32) = &spec.config.quantized_from {
        return Err(TrainError::Model(format!(
            "model `{}` is quantized to int8 and ember does not train quantized weights: fine-tune `{fp32}`, the \
             fp32 model it was quantized from (and quantize the result, as models/export/mobilenet_v2_int8.py does)",
            spec.name
        )));
    }
    let path = spec.model_file(version, ModelFormat::TorchScript);
    if path.is_file() {
        return Ok(path);
    }
    let present: Vec<&str> = spec.formats(version).iter().map(|f| f.file_name()).collect();
    Err(TrainError::Model(format!(
        "model `{}` version {version} has no model.pt (it holds {}): fine-tuning trains the TorchScript module, so \
         export one beside it",
        spec.name,
        if present.is_empty() { "no model file".to_string() } else { present.join(", ") }
    )))
}

fn image_preprocessing(spec: &ModelSpec, image_size: Option<u32>) -> Result<ImagePreprocessing, TrainError> {
    let prep = spec.config.image.clone().ok_or_else(|| TrainError::Model("the model has no [image] table".into()))?;
    Ok(match image_size {
        Some(side) => ImagePreprocessing { resize: side, crop: side, ..prep },
        None => prep,
    })
}

fn load_images(data: &DataSource, prep: &ImagePreprocessing) -> Result<Labelled<Images>, TrainError> {
    let path = &data.path;
    if path.is_dir() {
        data::image_folder(path, prep)
    } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("images-idx3")) {
        data::idx_images(path, data.class_names.clone(), prep)
    } else if path.exists() {
        Err(TrainError::Dataset(format!(
            "{}: expected an image folder (<dir>/<label>/*.jpg|png) or an IDX file (*-images-idx3-ubyte[.gz])",
            path.display()
        )))
    } else {
        Err(TrainError::Dataset(format!("{} does not exist", path.display())))
    }
}

fn load_texts(spec: &ModelSpec, data: &DataSource) -> Result<Labelled<TextInputs>, TrainError> {
    let text = spec.config.text.as_ref().ok_or_else(|| TrainError::Model("the model has no [text] table".into()))?;
    let labels = spec.labels.clone().unwrap_or_default();
    let tokenizer = TextClassifier::load(&spec.tokenizer_file(), labels, text).map_err(TrainError::Model)?;
    let texts = data::labelled_texts(&data.path)?;
    let inputs = TextInputs::new(&texts.examples, &tokenizer)?;
    Ok(Labelled { examples: inputs, labels: texts.labels, classes: texts.classes })
}

/// Trains and publishes. The repository is untouched unless the run succeeds.
pub fn train(job: &TrainJob, progress: &dyn Progress, cancel: &Cancel) -> Result<Trained, TrainError> {
    job.settings.validate().map_err(TrainError::Settings)?;
    if job.settings.threads > 0 {
        tch::set_num_threads(job.settings.threads as i32);
    }
    let (spec, base_version) = open(&job.repo, &job.model, job.version)?;
    let path = torchscript_file(&spec, base_version)?;
    let mut model = TrainableModel::load(&path, job.device)?;
    let settings = &job.settings;
    let mut outputs = Outputs { labels: None, version: VersionToml { image: None, held: job.hold } };
    let run = Run { job, spec: &spec, progress, cancel };
    let (staging, fitted, data_summary) = match spec.config.task {
        TaskKind::ImageClassification => {
            let prep = image_preprocessing(&spec, settings.image_size)?;
            let images = load_images(&job.data, &prep)?;
            if settings.image_size.is_some() {
                outputs.version.image = Some(prep.clone());
            }
            let inputs = ImageInputs::new(images.examples, &prep);
            let data = Labelled { examples: inputs, labels: images.labels, classes: images.classes };
            classify(&run, &mut model, data, &mut outputs)?
        }
        TaskKind::TextClassification => {
            let data = load_texts(&spec, &job.data)?;
            classify(&run, &mut model, data, &mut outputs)?
        }
        TaskKind::TextGeneration => {
            let text = data::corpus(&job.data.path)?;
            let cut = text_split(text.len(), settings)
                .map_err(|message| TrainError::Dataset(format!("{}: {message}", job.data.path.display())))?;
            let mut objective = NextByte {
                train_text: text[..cut].to_vec(),
                validation_text: text[cut..].to_vec(),
                sequence_length: settings.sequence_length,
                device: job.device,
                seed: settings.seed,
                draws: 0,
            };
            let summary = json!({"training_bytes": cut, "validation_bytes": text.len() - cut});
            run.stage_and_fit(&mut model, &mut objective, &outputs, summary, None)?
        }
        TaskKind::StyleTransfer => {
            let data = style::style_folder(&job.data.path)?;
            let summary = json!({"content_photos": data.photos.len()});
            let split = settings.validation_split;
            let mut objective = style_objective(&job.repo, job.device, settings, data, split)?;
            run.stage_and_fit(&mut model, &mut objective, &outputs, summary, None)?
        }
        other => {
            return Err(TrainError::Settings(format!("ember train does not train `{other}` models")));
        }
    };
    let target = job.into.clone().unwrap_or_else(|| job.model.clone());
    let published = crate::tasks::tensor::signature(&published_spec(&spec, &outputs));
    let formats = formats::carry(&spec.version_dir(base_version), &staging, &published, progress);
    let metrics = json!({
        "task": spec.config.task,
        "trained_by": "ember train",
        "base": {"model": spec.name, "version": base_version},
        "data": {"path": job.data.path.display().to_string(), "details": data_summary},
        "device": crate::engine::device::name(job.device),
        "trainable_parameters": model.trainable_count(),
        "before": fitted.before,
        "history": fitted.history,
        "best_epoch": fitted.best_epoch,
        "validation": fitted.best,
        "stopped": fitted.stopped,
        "steps": fitted.steps,
        "training_seconds": fitted.training_seconds,
        "formats": formats,
        "settings": settings,
    });
    staging.write("metrics.json", serde_json::to_string_pretty(&metrics).expect("serialisable").as_bytes())?;
    staging.write("settings.json", serde_json::to_string_pretty(settings).expect("serialisable").as_bytes())?;
    if cancel.is_cancelled() {
        return Err(TrainError::Cancelled);
    }
    let (version, dir) = staging.publish()?;
    progress.note(&format!("published {target} version {version} ({})", dir.display()));
    Ok(Trained { model: target, version, dir, metrics, formats })
}

/// Where a text of `len` bytes is cut into training and validation parts: the validation part is
/// `validation_split` of it (at least 2 bytes), and the training part must hold one sequence plus its target.
fn text_split(len: usize, settings: &TrainSettings) -> Result<usize, String> {
    let validation = |len: usize| ((len as f64 * settings.validation_split) as usize).max(2);
    let needed = settings.sequence_length + 1;
    match len.checked_sub(validation(len)) {
        Some(cut) if cut >= needed => Ok(cut),
        _ => {
            let minimum = smallest(needed + 2, |n| n.saturating_sub(validation(n)) >= needed);
            let unit = if len == 1 { "byte" } else { "bytes" };
            Err(format!(
                "the text holds {len} {unit}; training sequences of {} bytes plus a validation part of {} need at \
                 least {minimum} bytes",
                settings.sequence_length, settings.validation_split
            ))
        }
    }
}

/// The smallest `n >= from` for which `fits` holds, for a `fits` that never turns false again as `n` grows: a
/// binary search, since a validation split near 1 (0.999999999) puts the answer trillions of bytes away.
fn smallest(from: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (from, usize::MAX);
    if !fits(high) {
        return usize::MAX;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if fits(middle) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    low
}

/// Checks, before a job is queued, what can be known of its data cheaply: a text too short to train on is
/// refused at once (an admin upload answers 422) instead of failing later in the runner.
pub fn check_data_size(task: TaskKind, data: &DataSource, settings: &TrainSettings) -> Result<(), TrainError> {
    if task == TaskKind::TextGeneration {
        let len = data::corpus_len(&data.path)?;
        text_split(len, settings).map_err(TrainError::Dataset)?;
    }
    Ok(())
}

/// Removes what interrupted runs left behind: staging folders (`.train-<pid>-<time>.partial`) in the repository
/// and its model folders, and unpacked uploads (`ember-fine-tune-<pid>-*`) in the temporary folder. A folder is
/// left alone while its process runs on this machine or anything in it changed within the last hour (a run
/// from another machine sharing the repository may still be writing it). Called once at start-up.
pub fn sweep_leftovers(repo: &Path) {
    let model_dirs = std::fs::read_dir(repo).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path());
    let places = std::iter::once(repo.to_path_buf()).chain(model_dirs.filter(|p| p.is_dir()));
    for place in places.chain(std::iter::once(std::env::temp_dir())) {
        for entry in std::fs::read_dir(&place).into_iter().flatten().filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = publish::leftover_pid(&name) else { continue };
            let path = entry.path();
            if publish::abandoned(&path, pid, std::time::Duration::from_secs(3600)) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed what an interrupted fine-tuning run left")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover of an interrupted run")
                    }
                }
            }
        }
    }
}

/// Version files beside model.pt that differ from the model-level ones.
struct Outputs {
    labels: Option<Vec<String>>,
    version: VersionToml,
}

/// The model as the new version will be served: the base with the labels and image size the run changed.
fn published_spec(spec: &ModelSpec, outputs: &Outputs) -> ModelSpec {
    let mut published = spec.clone();
    if let Some(labels) = &outputs.labels {
        published.labels = Some(labels.clone());
    }
    if let Some(image) = &outputs.version.image {
        published.config.image = Some(image.clone());
    }
    published
}

/// Opens the staging folder and writes the version's labels and overrides into it.
fn stage(job: &TrainJob, spec: &ModelSpec, outputs: &Outputs) -> Result<Staging, TrainError> {
    let staging = match &job.into {
        None => Staging::next_version(&spec.dir)?,
        Some(name) => Staging::new_model(&job.repo.join(name), &new_model_files(spec, name, outputs)?)?,
    };
    if let Some(labels) = &outputs.labels {
        staging.write("labels.txt", (labels.join("\n") + "\n").as_bytes())?;
    }
    if outputs.version.image.is_some() || outputs.version.held {
        staging.write(
            crate::repository::VERSION_TOML,
            toml::to_string(&outputs.version).expect("serialisable").as_bytes(),
        )?;
    }
    Ok(staging)
}

/// model.toml (the base's, neither default nor pinned), labels.txt and tokenizer.json for a new model.
fn new_model_files(
    spec: &ModelSpec,
    name: &str,
    outputs: &Outputs,
) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    crate::repository::check_model_name(name).map_err(TrainError::Settings)?;
    let read = |path: PathBuf| {
        std::fs::read(&path)
            .map_err(|error| TrainError::Io { context: format!("cannot read {}", path.display()), error })
    };
    let text = String::from_utf8(read(spec.dir.join("model.toml"))?).unwrap_or_default();
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| TrainError::Model(e.to_string()))?;
    table.remove("default");
    table.remove("version");
    table.insert("description".into(), format!("fine-tuned from {} by ember train", spec.name).into());
    let mut files = vec![("model.toml", toml::to_string(&table).expect("serialisable").into_bytes())];
    let labels = outputs.labels.clone().or_else(|| spec.labels.clone());
    if let Some(labels) = labels {
        files.push(("labels.txt", (labels.join("\n") + "\n").into_bytes()));
    }
    if spec.config.task.needs_tokenizer() {
        files.push(("tokenizer.json", read(spec.tokenizer_file())?));
    }
    Ok(files)
}

/// One `train` call's context, for the steps every task shares.
struct Run<'a> {
    job: &'a TrainJob,
    spec: &'a ModelSpec,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
}

impl Run<'_> {
    /// Stages the version folder, builds the optimiser over what trains (the head only for a frozen backbone of
    /// a `head_classes` classifier), and runs the training loop into the staged model.pt.
    fn stage_and_fit(
        &self,
        model: &mut TrainableModel,
        objective: &mut dyn driver::Objective,
        outputs: &Outputs,
        summary: serde_json::Value,
        head_classes: Option<usize>,
    ) -> Result<(Staging, Fitted, serde_json::Value), TrainError> {
        let settings = &self.job.settings;
        let staging = stage(self.job, self.spec, outputs)?;
        let mut optimizer = model.optimizer(settings, head_classes)?;
        self.progress.note(&format!(
            "training on {} ({summary}); {} parameters train",
            self.job.data.path.display(),
            model.trainable_count()
        ));
        let best_path = staging.path("model.pt");
        let fitted = driver::fit(model, &mut optimizer, objective, settings, self.progress, self.cancel, &best_path)?;
        Ok((staging, fitted, summary))
    }
}

/// Side of the square crops a style network trains on (as models/export/style.py), unless `image_size` says.
const DEFAULT_STYLE_SIDE: u32 = 192;

/// The repository's style-features model, which judges style networks.
fn features_model(repo: &Path, device: Device) -> Result<TrainableModel, TrainError> {
    let repository = Repository::scan(repo).map_err(|e| TrainError::Model(e.to_string()))?;
    let spec = repository.models.iter().find(|m| m.config.task == TaskKind::StyleFeatures).ok_or_else(|| {
        TrainError::Model(format!("training a style needs a style-features model in {}", repo.display()))
    })?;
    let version = spec.served_version().ok_or_else(|| TrainError::Model(format!("{} has no version", spec.name)))?;
    let mut features = TrainableModel::load(&torchscript_file(spec, version)?, device)?;
    features.set_train(false); // batch norms on their running statistics; only the style network trains
    Ok(features)
}

fn style_objective(
    repo: &Path,
    device: Device,
    settings: &TrainSettings,
    data: style::StyleData,
    validation_split: f64,
) -> Result<style::StyleObjective, TrainError> {
    style::StyleObjective::new(
        features_model(repo, device)?,
        data,
        settings.image_size.unwrap_or(DEFAULT_STYLE_SIDE),
        settings.style_weight,
        validation_split,
        settings.seed,
        device,
    )
}

/// Shared by image and text classification: fit the labels (keeping the head when the data's label set is the
/// model's, else a new head), split, train.
fn classify<I: ClassifierInputs>(
    run: &Run,
    model: &mut TrainableModel,
    mut data: Labelled<I>,
    outputs: &mut Outputs,
) -> Result<(Staging, Fitted, serde_json::Value), TrainError> {
    let (job, spec) = (run.job, run.spec);
    let settings = &job.settings;
    data.check_trainable(&job.data.path.display().to_string())?;
    let old_labels = spec.labels.clone().unwrap_or_default();
    let same_label_set = {
        let (mut a, mut b) = (data.classes.clone(), old_labels.clone());
        a.sort();
        b.sort();
        a == b
    };
    if same_label_set {
        data.relabel(&old_labels)?;
    } else {
        model.resize_head(old_labels.len(), data.classes.len(), settings.seed)?;
        outputs.labels = Some(data.classes.clone());
    }
    let (train, validation) = data::split(data.labels.len(), settings.validation_split, settings.seed)?;
    let summary = json!({
        "classes": data.classes,
        "new_head": !same_label_set,
        "training_examples": train.len(),
        "validation_examples": validation.len(),
    });
    let classes = data.classes.len();
    let mut objective = Classification { data, train, validation, device: job.device, batch_size: settings.batch_size };
    run.stage_and_fit(model, &mut objective, outputs, summary, Some(classes))
}

/// `ember eval`: the same measure as validation, over a whole dataset, for any version.
pub fn evaluate(
    repo: &Path,
    name: &str,
    version: Option<u64>,
    data: &DataSource,
    settings: &TrainSettings,
    device: Device,
) -> Result<(u64, Evaluation), TrainError> {
    if settings.threads > 0 {
        tch::set_num_threads(settings.threads as i32);
    }
    let (spec, version) = open(repo, name, version)?;
    let mut model = TrainableModel::load(&torchscript_file(&spec, version)?, device)?;
    model.set_train(false);
    let labels = spec.labels.clone().unwrap_or_default();
    let all = |n: usize| (0..n).collect::<Vec<_>>();
    let evaluation = tch::no_grad(|| match spec.config.task {
        TaskKind::ImageClassification => {
            let prep = image_preprocessing(&spec, None)?;
            let images = load_images(data, &prep)?;
            let inputs = ImageInputs::new(images.examples, &prep);
            let mut data = Labelled { examples: inputs, labels: images.labels, classes: images.classes };
            data.relabel(&labels)?;
            let n = data.labels.len();
            Classification { data, train: vec![], validation: vec![], device, batch_size: settings.batch_size }
                .evaluate(&model, &all(n))
        }
        TaskKind::TextClassification => {
            let mut data = load_texts(&spec, data)?;
            data.relabel(&labels)?;
            let n = data.labels.len();
            Classification { data, train: vec![], validation: vec![], device, batch_size: settings.batch_size }
                .evaluate(&model, &all(n))
        }
        TaskKind::TextGeneration => {
            let text = data::corpus(&data.path)?;
            let objective = NextByte {
                train_text: vec![],
                validation_text: vec![],
                sequence_length: settings.sequence_length,
                device,
                seed: 0,
                draws: 0,
            };
            objective.evaluate(&model, &text)
        }
        TaskKind::StyleTransfer => {
            let data = style::style_folder(&data.path)?;
            let photos = data.photos.clone();
            style_objective(repo, device, settings, data, 0.5)?.measure(&model, &photos)
        }
        other => Err(TrainError::Settings(format!("ember eval does not measure `{other}` models"))),
    })?;
    Ok((version, evaluation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_too_short_is_refused_naming_the_minimum_and_the_minimum_trains() {
        let settings = TrainSettings { sequence_length: 16, validation_split: 0.1, ..TrainSettings::default() };
        for len in [0, 1, 2, 17, 18] {
            let err = text_split(len, &settings).unwrap_err();
            assert!(err.contains(&format!("holds {len} byte")) && err.contains("at least 19 bytes"), "{err}");
        }
        assert_eq!(text_split(19, &settings), Ok(17));
        assert_eq!(text_split(1000, &settings), Ok(900));
    }

    /// A split a hair under 1 (valid settings, sent by an admin) puts the minimum trillions of bytes away; it is
    /// computed at once, not counted up to (that held the upload's thread for hours).
    #[test]
    fn the_minimum_for_a_split_near_one_is_found_without_counting_to_it() {
        let settings =
            TrainSettings { sequence_length: 4096, validation_split: 0.999_999_999, ..TrainSettings::default() };
        let err = text_split(1, &settings).unwrap_err();
        let minimum: u64 = err.split("at least ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!((4_000_000_000_000..5_000_000_000_000).contains(&minimum), "{err}");
        assert_eq!(smallest(5, |n| n >= 1_000_000_000_000), 1_000_000_000_000);
        assert_eq!(smallest(5, |_| true), 5);
    }
}
