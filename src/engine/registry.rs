//! The models the server knows, their load state, and which model answers each task's short route.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tch::Device;

use super::{device, EngineError, WorkerSpec};
use crate::config::DeviceChoice;
use crate::metrics::Metrics;
use crate::repository::{ModelSpec, Repository};
use crate::tasks::{Backend, TaskKind};

/// A model version that is loaded, warmed up and taking requests.
pub struct Loaded {
    pub version: u64,
    pub device: Device,
    pub backend: Backend,
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<Loaded>),
    Failed(String),
}

impl ModelState {
    pub fn name(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready(_) => "ready",
            ModelState::Failed(_) => "failed",
        }
    }
}

pub struct ModelEntry {
    pub spec: ModelSpec,
    state: RwLock<ModelState>,
}

impl ModelEntry {
    pub fn state(&self) -> ModelState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, state: ModelState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

pub struct Registry {
    repository: Repository,
    entries: BTreeMap<String, Arc<ModelEntry>>,
    server_device: DeviceChoice,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// Every model of the repository, all in state `Loading` until `load_all` finishes them.
    pub fn new(repository: Repository, server_device: DeviceChoice, metrics: Arc<Metrics>) -> Registry {
        let entries = repository
            .models
            .iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Arc::new(ModelEntry { spec: spec.clone(), state: RwLock::new(ModelState::Loading) }),
                )
            })
            .collect();
        Registry { repository, entries, server_device, metrics }
    }

    /// Loads every model on its own thread; returns at once. Readiness follows the states.
    pub fn load_all(self: &Arc<Self>) {
        for entry in self.entries.values() {
            let registry = Arc::clone(self);
            let entry = Arc::clone(entry);
            let name = format!("ember-load-{}", entry.spec.name);
            let spawned = std::thread::Builder::new().name(name).spawn(move || registry.load(&entry));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a model-loading thread");
            }
        }
    }

    fn load(&self, entry: &ModelEntry) {
        let spec = &entry.spec;
        let started = Instant::now();
        match self.start_backend(spec) {
            Ok(loaded) => {
                let device = device::name(loaded.device);
                self.metrics.model_info.with_label_values(&[&spec.name, &loaded.version.to_string(), &device]).set(1);
                tracing::info!(model = %spec.name, version = loaded.version, %device, seconds = started.elapsed().as_secs_f64(), "model ready");
                entry.set_state(ModelState::Ready(Arc::new(loaded)));
            }
            Err(e) => {
                tracing::error!(model = %spec.name, error = %e, "model failed to load");
                entry.set_state(ModelState::Failed(e.to_string()));
            }
        }
    }

    fn start_backend(&self, spec: &ModelSpec) -> Result<Loaded, EngineError> {
        let load_error = |message: String| EngineError::Load { model: spec.name.clone(), message };
        let version = spec.served_version().ok_or_else(|| {
            load_error(format!(
                "{} has no version folder with a model.pt (run the setup: make models)",
                spec.dir.display()
            ))
        })?;
        let device = device::resolve(spec.config.device, self.server_device).map_err(load_error)?;
        let worker = WorkerSpec {
            model: spec.name.clone(),
            path: spec.model_file(version),
            device,
            optimize: spec.config.optimize,
            batching: spec.config.batching.clone(),
        };
        let backend = Backend::start(spec, worker, &self.metrics)?;
        Ok(Loaded { version, device, backend })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.entries.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// The model that answers a task's short route.
    pub fn default_for(&self, task: TaskKind) -> Option<&str> {
        self.repository.defaults.get(&task).map(String::as_str)
    }

    /// Models that are not ready yet, with their state; empty when the server is ready.
    pub fn not_ready(&self) -> Vec<(String, ModelState)> {
        self.entries
            .values()
            .map(|entry| (entry.spec.name.clone(), entry.state()))
            .filter(|(_, state)| !matches!(state, ModelState::Ready(_)))
            .collect()
    }

    /// Finishes every queued request and stops every worker. Blocks.
    pub fn shutdown(&self) {
        for entry in self.entries.values() {
            if let ModelState::Ready(loaded) = entry.state() {
                loaded.backend.shutdown();
            }
        }
    }
}
