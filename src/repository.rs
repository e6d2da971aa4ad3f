//! The model repository on disk: `<repo>/<name>/model.toml`, `labels.txt`, and `<version>/model.pt` (or
//! `model.onnx`, `model.pt2`: see `formats`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::formats::ModelFormat;
use crate::model_toml::{ModelToml, TaskKind};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The OS error is part of the message and not a `source`: a chain printed whole (`{:#}`) would say it twice.
    #[error("cannot read the model repository {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One model as found on disk.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub dir: PathBuf,
    pub config: ModelToml,
    /// Every version directory holding a model file (model.pt, model.onnx or model.pt2), ascending.
    pub versions: Vec<u64>,
    /// Class names in index order, for classification tasks.
    pub labels: Option<Vec<String>>,
    /// Versions saved with `held = true` (fine-tunes not published).
    pub held: Vec<u64>,
}

/// The Hugging Face tokenizers file of a text model, beside its model.toml.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

impl ModelSpec {
    /// The version to serve: the pinned one, else the highest that is not held.
    pub fn served_version(&self) -> Option<u64> {
        self.config.version.or_else(|| self.versions.iter().rev().find(|v| !self.held.contains(v)).copied())
    }

    pub fn version_dir(&self, version: u64) -> PathBuf {
        self.dir.join(version.to_string())
    }

    /// The file of `version` in `format` (which may not exist).
    pub fn model_file(&self, version: u64, format: ModelFormat) -> PathBuf {
        self.version_dir(version).join(format.file_name())
    }

    /// The formats `version` holds a file of.
    pub fn formats(&self, version: u64) -> Vec<ModelFormat> {
        ModelFormat::present_in(&self.version_dir(version))
    }

    /// The formats `version` can serve from: its files, less those its task cannot run on (a route that runs
    /// backward passes is served from TorchScript only).
    pub fn servable_formats(&self, version: u64) -> Vec<ModelFormat> {
        let mut formats = self.formats(version);
        if self.config.task.runs_backward() {
            formats.retain(|format| *format == ModelFormat::TorchScript);
        }
        formats
    }

    /// The format that would serve `version` on the CPU, told without loading anything (for a version not
    /// loaded: `ember info`, metadata); TorchScript when none would.
    pub fn expected_format(&self, version: u64) -> ModelFormat {
        let servable = self.servable_formats(version);
        self.config.format.resolve(&servable, false, |_| Ok(())).unwrap_or(ModelFormat::TorchScript)
    }

    pub fn tokenizer_file(&self) -> PathBuf {
        self.dir.join(TOKENIZER_FILE)
    }

    /// This model as `version` sees it: a version folder may carry its own `labels.txt` (a fine-tune onto new
    /// classes) and a `version.toml` whose `[image]` replaces the model's (a fine-tune at another image size).
    pub fn at_version(&self, version: u64) -> Result<ModelSpec, RepoError> {
        let dir = self.dir.join(version.to_string());
        let mut spec = self.clone();
        let labels_file = dir.join("labels.txt");
        if self.labels.is_some() && labels_file.is_file() {
            spec.labels = Some(read_labels(&labels_file)?);
        }
        let overrides_file = dir.join(VERSION_TOML);
        if overrides_file.is_file() {
            let text = std::fs::read_to_string(&overrides_file).map_err(|e| invalid(&overrides_file, e.to_string()))?;
            let overrides: VersionToml =
                toml::from_str(&text).map_err(|e| invalid(&overrides_file, e.message().to_string()))?;
            if let Some(image) = overrides.image {
                spec.config.image = Some(image);
                // The same checks as model.toml's: std = 0 or resize < crop would feed the model NaNs or
                // misaligned inputs.
                spec.config.validate().map_err(|message| invalid(&overrides_file, message))?;
            }
        }
        Ok(spec)
    }
}

/// `<version>/version.toml`: what a version changes of its model's model.toml.
pub const VERSION_TOML: &str = "version.toml";

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionToml {
    /// Image preprocessing this version was trained with.
    pub image: Option<crate::model_toml::ImagePreprocessing>,
    /// Saved but not published: never served unless pinned (`version = N` in model.toml).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Whether a version folder says `held = true` (an unreadable version.toml is reported when the version loads).
fn is_held(version_dir: &Path) -> bool {
    std::fs::read_to_string(version_dir.join(VERSION_TOML))
        .ok()
        .and_then(|text| toml::from_str::<VersionToml>(&text).ok())
        .is_some_and(|v| v.held)
}

/// Model names become folder names and URL segments.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if name.is_empty() || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(format!("model name `{name}`: use only letters, digits, '_', '-' and '.', not starting with '.'"));
    }
    Ok(())
}

/// Everything in the repository, plus which model answers each task's short route.
#[derive(Debug, Clone)]
pub struct Repository {
    pub root: PathBuf,
    pub models: Vec<ModelSpec>,
    pub defaults: HashMap<TaskKind, String>,
}

impl Repository {
    /// Reads every `<root>/*/model.toml`. Folders without one (such as `export/`) are not models.
    /// Any invalid model fails the whole scan: serving half a repository by accident is worse than not starting.
    pub fn scan(root: &Path) -> Result<Repository, RepoError> {
        let io_error = |error| RepoError::Io { path: root.to_path_buf(), error };
        let mut models = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io_error)? {
            let dir = entry.map_err(io_error)?.path();
            // Hidden folders are not models: `ember train --into` stages a new model in one until it is whole.
            let hidden = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if !hidden && dir.join("model.toml").is_file() {
                models.push(read_model(&dir)?);
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let defaults = pick_defaults(root, &models)?;
        Ok(Repository { root: root.to_path_buf(), models, defaults })
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> RepoError {
    RepoError::Invalid { path: path.to_path_buf(), message: message.into() }
}

/// One model folder: model.toml validated, its versions, and its model-level labels. A version's own labels and
/// preprocessing are read by `at_version` when that version is opened, not on every scan.
pub fn read_model(dir: &Path) -> Result<ModelSpec, RepoError> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    check_model_name(&name).map_err(|message| invalid(dir, message))?;
    let toml_path = dir.join("model.toml");
    let text = std::fs::read_to_string(&toml_path).map_err(|e| invalid(&toml_path, e.to_string()))?;
    let config: ModelToml = toml::from_str(&text).map_err(|e| invalid(&toml_path, e.message().to_string()))?;
    config.validate().map_err(|message| invalid(&toml_path, message))?;

    let versions = list_versions(dir)?;
    if let Some(pinned) = config.version {
        if !versions.contains(&pinned) {
            return Err(invalid(
                &toml_path,
                format!(
                    "version = {pinned} is pinned but {}/{pinned}/ holds no model file (model.pt, model.onnx or model.pt2)",
                    dir.display()
                ),
            ));
        }
    }
    if config.task.needs_tokenizer() && !dir.join(TOKENIZER_FILE).is_file() {
        return Err(invalid(
            dir,
            format!("task `{}` needs a {TOKENIZER_FILE} (a Hugging Face tokenizers file)", config.task),
        ));
    }
    let labels = if config.task.needs_labels() { Some(read_labels(&dir.join("labels.txt"))?) } else { None };
    let held = versions.iter().copied().filter(|v| is_held(&dir.join(v.to_string()))).collect();
    Ok(ModelSpec { name, dir: dir.to_path_buf(), config, versions, labels, held })
}

/// Version folders are positive integers holding a model file of any format; anything else (a `.partial`
/// folder being written, a README) is not a version.
fn list_versions(dir: &Path) -> Result<Vec<u64>, RepoError> {
    let entries = std::fs::read_dir(dir).map_err(|error| RepoError::Io { path: dir.to_path_buf(), error })?;
    let mut versions: Vec<u64> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u64>().ok().filter(|v| *v > 0))
        .filter(|version| !ModelFormat::present_in(&dir.join(version.to_string())).is_empty())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

fn read_labels(path: &Path) -> Result<Vec<String>, RepoError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(path, format!("{e} (classification models need one label per line)")))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if let Some(line) = labels.iter().position(|l| l.is_empty()) {
        return Err(invalid(path, format!("line {} is empty: every class needs a name", line + 1)));
    }
    if labels.is_empty() {
        return Err(invalid(path, "no labels"));
    }
    Ok(labels)
}

fn pick_defaults(root: &Path, models: &[ModelSpec]) -> Result<HashMap<TaskKind, String>, RepoError> {
    let mut defaults: HashMap<TaskKind, String> = HashMap::new();
    for model in models.iter().filter(|m| m.config.default) {
        if let Some(other) = defaults.insert(model.config.task, model.name.clone()) {
            return Err(invalid(
                root,
                format!("both `{other}` and `{}` say default = true for task {}", model.name, model.config.task),
            ));
        }
    }
    // A task served by exactly one model needs no explicit default.
    for model in models {
        let task = model.config.task;
        if !defaults.contains_key(&task) && models.iter().filter(|m| m.config.task == task).count() == 1 {
            defaults.insert(task, model.name.clone());
        }
    }
    Ok(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(root: &Path, name: &str, toml: &str, versions: &[&str]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.toml"), toml).unwrap();
        std::fs::write(dir.join("labels.txt"), "cat\ndog\n").unwrap();
        for v in versions {
            std::fs::create_dir_all(dir.join(v)).unwrap();
            std::fs::write(dir.join(v).join("model.pt"), b"not read by scan").unwrap();
        }
    }

    const CLASSIFIER: &str = "task = \"image-classification\"\n[image]\nresize = 256\ncrop = 224\nmean = [0.5, 0.5, 0.5]\nstd = [0.2, 0.2, 0.2]\n";

    #[test]
    fn highest_integer_version_is_served_and_other_folders_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "pets", CLASSIFIER, &["1", "10", "2", ".3.partial", "abc", "0"]);
        std::fs::create_dir_all(root.path().join("pets/11")).unwrap(); // no model file: not a version
        std::fs::create_dir_all(root.path().join("pets/12")).unwrap();
        std::fs::write(root.path().join("pets/12/model.onnx"), b"").unwrap(); // an ONNX file alone is a version
        let repo = Repository::scan(root.path()).unwrap();
        let pets = &repo.models[0];
        assert_eq!(pets.versions, vec![1, 2, 10, 12]);
        assert_eq!(pets.served_version(), Some(12));
        assert_eq!(pets.formats(12), vec![ModelFormat::Onnx]);
        assert_eq!(pets.formats(10), vec![ModelFormat::TorchScript]);
        assert_eq!(pets.labels.as_deref(), Some(&["cat".to_string(), "dog".to_string()][..]));
        assert_eq!(repo.defaults.get(&TaskKind::ImageClassification).map(String::as_str), Some("pets"));
    }

    #[test]
    fn pinned_version_wins_and_must_exist() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "pets", &format!("version = 1\n{CLASSIFIER}"), &["1", "2"]);
        assert_eq!(Repository::scan(root.path()).unwrap().models[0].served_version(), Some(1));
        write_model(root.path(), "pets", &format!("version = 7\n{CLASSIFIER}"), &["1", "2"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("model.toml") && err.contains("version = 7"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_naming_file_and_key() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "pets", &CLASSIFIER.replace("[image]", "max_batch = 3\n[image]"), &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("pets/model.toml") && err.contains("max_batch"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "pets", &format!("{CLASSIFIER}[batching]\nmax_batch_size = 0\n"), &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("batching.max_batch_size") && err.contains("got 0"), "{err}");

        write_model(root.path(), "pets", &CLASSIFIER.replace("image-classification", "juggling"), &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("juggling"), "{err}");

        write_model(root.path(), "pets", &format!("device = \"tpu\"\n{CLASSIFIER}"), &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");

        let features = "task = \"style-features\"\n[batching]\nmax_batch_size = 2\n";
        write_model(root.path(), "pets", features, &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("batching.max_batch_size must be 1 for a style-features model"), "{err}");

        let features = "task = \"style-features\"\n[optimization]\ndefault_steps = 900\n";
        write_model(root.path(), "pets", features, &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("optimization.default_steps must be between 1 and 500, got 900"), "{err}");
    }

    #[test]
    fn two_defaults_for_one_task_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "a", &format!("default = true\n{CLASSIFIER}"), &["1"]);
        write_model(root.path(), "b", &format!("default = true\n{CLASSIFIER}"), &["1"]);
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
    }

    #[test]
    fn missing_labels_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        write_model(root.path(), "pets", CLASSIFIER, &["1"]);
        std::fs::remove_file(root.path().join("pets/labels.txt")).unwrap();
        let err = Repository::scan(root.path()).unwrap_err().to_string();
        assert!(err.contains("labels.txt"), "{err}");
    }
}
