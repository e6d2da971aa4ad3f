//! Finding the model (and version) a request is for, loading it first if it is an on-demand model not in
//! memory, and refusing with the message that says why it cannot answer: a 404 that lists the models there
//! are, a 503 that says what to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::AppState;
use crate::model_toml::TaskKind;
use crate::registry::{Loaded, ModelEntry, ModelState};
use crate::tasks::image::{self, Probe};

impl AppState {
    /// The named model, or a 404 that lists the models there are.
    pub fn model(&self, name: &str) -> Result<Arc<ModelEntry>, ApiError> {
        self.registry.get(name).ok_or_else(|| {
            ApiError::not_found(format!("model `{name}` does not exist; models: {}", self.registry.names().join(", ")))
        })
    }

    /// The named model's loaded version, if the model exists, does `task` and is ready (an on-demand model
    /// loaded first, within `--request-timeout-ms`); it counts as used now.
    pub async fn ready_model(&self, name: &str, task: TaskKind) -> Result<Arc<Loaded>, ApiError> {
        let entry = self.model(name)?;
        let actual = entry.spec().config.task;
        if actual != task {
            return Err(ApiError::bad_request(format!(
                "model `{name}` is a {actual} model; this route needs a {task} model"
            )));
        }
        let loaded = self.loaded_or_on_demand(&entry, self.limits.request_timeout).await?;
        loaded.touch();
        Ok(loaded)
    }

    /// The version `entry` serves; an on-demand model not in memory is loaded first, waiting at most `timeout`.
    async fn loaded_or_on_demand(&self, entry: &Arc<ModelEntry>, timeout: Duration) -> Result<Arc<Loaded>, ApiError> {
        if self.registry.is_on_demand(entry) {
            let started = entry.loaded().is_none().then(Instant::now);
            let loaded = self.registry.on_demand(entry, timeout).await?;
            if let Some(started) = started {
                super::load_wait::record(started.elapsed());
            }
            return Ok(loaded);
        }
        serving(&entry.name, entry.state())
    }

    /// The model behind a task's short route.
    pub fn default_model(&self, task: TaskKind) -> Result<String, ApiError> {
        self.registry.default_for(task).map(str::to_string).ok_or_else(|| {
            ApiError::not_found(format!("no model serves {task}: set `default = true` in one such model's model.toml"))
        })
    }

    /// The loaded version of `name` (which must be `version`, if given), an on-demand model loaded first
    /// within `timeout`. 404 for a model or version that does not exist; 503 for one that is loading, failed,
    /// unloaded, or (a version on disk) not the one served.
    pub async fn served(&self, name: &str, version: Option<u64>, timeout: Duration) -> Result<Arc<Loaded>, ApiError> {
        let entry = self.model(name)?;
        self.check_version(&entry, version)?;
        let loaded = self.loaded_or_on_demand(&entry, timeout).await?;
        check_serves(name, &loaded, version)?;
        Ok(loaded)
    }

    /// The version `name` serves now (which must be `version`, if given), without loading anything: `served`'s
    /// answers, except that an on-demand model not in memory answers `None` (it is available: a request loads it).
    pub fn served_now(&self, name: &str, version: Option<u64>) -> Result<Option<Arc<Loaded>>, ApiError> {
        let entry = self.model(name)?;
        self.check_version(&entry, version)?;
        let state = entry.state();
        let loaded = match state {
            ModelState::Ready(loaded) => loaded,
            ModelState::Unloaded if self.registry.is_on_demand(&entry) => return Ok(None),
            other => return serving(name, other).map(Some),
        };
        check_serves(name, &loaded, version)?;
        Ok(Some(loaded))
    }

    /// A 404 when the model has no `version` on disk.
    fn check_version(&self, entry: &ModelEntry, version: Option<u64>) -> Result<(), ApiError> {
        let versions = &entry.spec().versions;
        match version.filter(|v| !versions.contains(v)) {
            Some(version) => Err(ApiError::not_found(format!(
                "model `{}` has no version {version}; versions: {versions:?}",
                entry.name
            ))),
            None => Ok(()),
        }
    }

    /// Reads an uploaded image's header and checks it against the image limits (no pixel is decoded yet).
    pub fn probe_image(&self, bytes: &[u8]) -> Result<Probe, ApiError> {
        Ok(image::probe(bytes, self.limits.image)?)
    }
}

/// A 503 when the version asked for is on disk but not the one served.
fn check_serves(name: &str, loaded: &Loaded, version: Option<u64>) -> Result<(), ApiError> {
    match version {
        Some(version) if loaded.version != version => Err(ApiError::unavailable(format!(
            "model `{name}` serves version {}, not version {version}",
            loaded.version
        ))),
        _ => Ok(()),
    }
}

/// The loaded version of a model in `state`, or a 503 that says why it does not answer and what to do.
fn serving(name: &str, state: ModelState) -> Result<Arc<Loaded>, ApiError> {
    match state {
        ModelState::Ready(loaded) => Ok(loaded),
        ModelState::Loading => Err(ApiError::unavailable(format!(
            "model `{name}` is still loading; retry when GET /health/ready answers 200"
        ))),
        ModelState::Failed(message) => {
            Err(ApiError::unavailable(format!("model `{name}` is not available: {message}")))
        }
        ModelState::Unloaded => Err(ApiError::unavailable(format!(
            "model `{name}` is unloaded; an operator can serve it again with POST /admin/models/{name}/load"
        ))),
    }
}

/// A number a client names something by (a model version, a job id) as it came: a path segment, a message
/// field. It must be a positive integer.
pub fn positive_integer(what: &str, text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{what} `{text}` is not a positive integer")))
}

/// A version that may be left out (a gRPC message's empty field): `None` means the one served.
pub fn optional_version(version: &str) -> Result<Option<u64>, ApiError> {
    if version.is_empty() {
        Ok(None)
    } else {
        positive_integer("model version", version).map(Some)
    }
}
