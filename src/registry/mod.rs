//! The models the server knows, their load state, which version each serves, and hot swaps between versions.
//!
//! A swap loads and warms the new version beside the old one, then replaces the `Arc<Loaded>` under one lock.
//! Requests hold the `Arc` of the version they started on, so they finish there; the old version's workers drain
//! their queue and stop when its last request lets go. A version that fails to load is reported and the old one
//! keeps serving.

mod budget;
mod demand;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, TryLockError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tch::Device;
use tokio::sync::watch;

use budget::MemoryBudget;
pub use budget::{mib, JobHold};
use demand::DemandSlot;

use crate::engine::{device, format_usable, onnx, retired, EngineError, LoadGate, StandIn, WorkerSpec};
use crate::formats::ModelFormat;
use crate::metrics::Metrics;
use crate::model_toml::{DeviceChoice, TaskKind};
use crate::repository::{self, ModelSpec, Repository};
use crate::signature::Signature;
use crate::tasks::Backend;

/// A model version that is loaded, warmed up and taking requests.
pub struct Loaded {
    pub version: u64,
    pub device: Device,
    /// Which of the version's files serves.
    pub format: ModelFormat,
    pub backend: Backend,
    /// The version's model-level tensors, for the Open Inference Protocol.
    pub signature: Signature,
    /// What the version costs: the process's resident memory grew by this much from before its load to after
    /// its warm-up (exact when loads run one at a time, `--max-concurrent-loads 1`).
    pub resident_bytes: u64,
    /// When a request last took this version, in Unix milliseconds; 0 until one does.
    last_used: AtomicU64,
    /// When this version was installed, in Unix milliseconds.
    loaded_at: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Loaded {
    /// Records that a request is using this version now.
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// When this version was last used or, if no request has used it yet, installed (Unix milliseconds): what
    /// least-recently-used eviction orders by, so that a version just loaded for a request is not the first out.
    pub fn recency_ms(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed).max(self.loaded_at)
    }

    /// Seconds since `recency_ms`.
    pub fn idle_seconds(&self) -> u64 {
        now_ms().saturating_sub(self.recency_ms()) / 1000
    }

    /// When a request last used this version, in Unix milliseconds, if one has.
    pub fn last_used_ms(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }
}

/// Why a model version was loaded, the `reason` of `ember_model_loads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadReason {
    /// At start-up (the version a model folder names, or the older one it falls back to).
    Start,
    /// The repository changed: a new version, a pin, a new model folder, a fine-tune published.
    Swap,
    /// An operator asked: the admin API's load or reload, the Open Inference Protocol's repository load.
    Admin,
    /// The first request of an on-demand model that was not in memory (`--model-memory-budget`).
    Demand,
}

impl LoadReason {
    pub fn name(self) -> &'static str {
        match self {
            LoadReason::Start => "start",
            LoadReason::Swap => "swap",
            LoadReason::Admin => "admin",
            LoadReason::Demand => "demand",
        }
    }
}

#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<Loaded>),
    Failed(String),
    /// Not in memory: taken out of service by `POST /admin/models/{name}/unload`, or an on-demand model not
    /// loaded yet or evicted (its next request loads it).
    Unloaded,
}

impl ModelState {
    pub fn name(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready(_) => "ready",
            ModelState::Failed(_) => "failed",
            ModelState::Unloaded => "unloaded",
        }
    }

    /// The version serving, if any.
    pub fn loaded(&self) -> Option<&Arc<Loaded>> {
        match self {
            ModelState::Ready(loaded) => Some(loaded),
            _ => None,
        }
    }
}

/// What the server holds of one model, replaced whole on every change.
#[derive(Clone)]
pub struct Current {
    /// model.toml, the versions on disk, and the labels of the version served.
    pub spec: Arc<ModelSpec>,
    pub state: ModelState,
    /// Why the last load of another version (or the last re-read of model.toml) failed while this state stayed.
    pub last_error: Option<String>,
    /// The version that failed to load: the repository watcher does not retry it (an admin reload does).
    failed_version: Option<u64>,
}

pub struct ModelEntry {
    pub name: String,
    pub dir: PathBuf,
    current: RwLock<Current>,
    /// Held while this model loads, swaps or unloads, so that those never interleave.
    changing: Mutex<()>,
    /// Set while the start-up load of a model found at start-up has not finished: readiness waits for these
    /// only. A model that fails later, or a folder added later, never takes a serving replica out.
    starting: AtomicBool,
    /// An on-demand model's load in progress and back-off (`demand`).
    demand: Mutex<DemandSlot>,
    /// Requests waiting for an on-demand load, held to `batching.queue_capacity`.
    waiting: AtomicUsize,
    /// What the model's last load measured (`Loaded::resident_bytes`), kept after it is unloaded: the estimate
    /// its next load reserves under the budget; 0 until it has loaded once.
    cost: AtomicU64,
    /// Fine-tuning jobs training this model now: it is not evicted meanwhile.
    job_holds: AtomicUsize,
}

impl ModelEntry {
    fn new(spec: ModelSpec, starting: bool) -> ModelEntry {
        let current = Current {
            spec: Arc::new(spec.clone()),
            state: ModelState::Loading,
            last_error: None,
            failed_version: None,
        };
        ModelEntry {
            name: spec.name,
            dir: spec.dir,
            current: RwLock::new(current),
            changing: Mutex::new(()),
            starting: AtomicBool::new(starting),
            demand: Mutex::default(),
            waiting: AtomicUsize::new(0),
            cost: AtomicU64::new(0),
            job_holds: AtomicUsize::new(0),
        }
    }

    pub fn current(&self) -> Current {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn state(&self) -> ModelState {
        self.current().state
    }

    pub fn spec(&self) -> Arc<ModelSpec> {
        self.current().spec
    }

    fn update(&self, change: impl FnOnce(&mut Current)) {
        change(&mut self.current.write().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The labels of `ember_model_info` for a loaded version: model, version, device, format.
fn model_info_labels(name: &str, loaded: &Loaded) -> [String; 4] {
    [name.to_string(), loaded.version.to_string(), device::name(loaded.device), loaded.format.name().to_string()]
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// Now serving `version` (`previous` before it, if any).
    Swapped { version: u64, previous: Option<u64> },
    /// Already serving the version the repository names.
    Unchanged { version: u64 },
}

pub struct Registry {
    root: PathBuf,
    defaults: HashMap<TaskKind, String>,
    entries: RwLock<BTreeMap<String, Arc<ModelEntry>>>,
    server_device: DeviceChoice,
    metrics: Arc<Metrics>,
    /// Set by `shutdown`: no model starts loading after it.
    stopping: AtomicBool,
    /// Modules that stand in for every model's TorchScript (HTTP-contract tests only; see `with_stand_ins`).
    stand_ins: Option<Box<StandInMaker>>,
    /// Bounds the loads running at once and measures what each costs (`--max-concurrent-loads`).
    loads: LoadGate,
    /// `--model-memory-budget`: with one, on-demand models load on first use and are evicted to make room.
    budget: Option<Arc<MemoryBudget>>,
    /// Start-up loads not finished yet; on-demand loads wait for them (`wait_for_start_up`).
    start_up_left: Mutex<usize>,
    start_up_done: Condvar,
    /// Set when the server cannot go on serving as configured (the models loaded at start exceed the budget).
    fatal: watch::Sender<Option<String>>,
}

/// Makes the stand-in module of a model (`Registry::with_stand_ins`).
type StandInMaker = dyn Fn(&ModelSpec) -> StandIn + Send + Sync;

impl Registry {
    /// Every model of the repository, all in state `Loading` until `load_all` finishes them.
    pub fn new(repository: Repository, server_device: DeviceChoice, metrics: Arc<Metrics>) -> Registry {
        let entries = repository
            .models
            .into_iter()
            .map(|spec| (spec.name.clone(), Arc::new(ModelEntry::new(spec, true))))
            .collect();
        Registry {
            root: repository.root,
            defaults: repository.defaults,
            entries: RwLock::new(entries),
            server_device,
            metrics,
            stopping: AtomicBool::new(false),
            stand_ins: None,
            loads: LoadGate::new(usize::MAX),
            budget: None,
            start_up_left: Mutex::new(0),
            start_up_done: Condvar::new(),
            fatal: watch::channel(None).0,
        }
    }

    /// The loaded models may take at most `bytes` together (`--model-memory-budget`): models whose model.toml
    /// says `[serving] load = "on-demand"` are not loaded at start but on their first request, and are evicted
    /// when idle to make room; a load waits at most `room_wait` for busy ones to drain. Call before `load_all`.
    pub fn with_memory_budget(mut self, bytes: u64, room_wait: Duration) -> Registry {
        self.budget = Some(Arc::new(MemoryBudget::new(bytes, room_wait)));
        self.metrics.model_memory_budget_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        for entry in self.entries() {
            if self.is_on_demand(&entry) {
                entry.starting.store(false, Ordering::SeqCst);
                entry.update(|current| current.state = ModelState::Unloaded);
            }
        }
        self
    }

    /// Receives the reason the server must stop, if it must (the models loaded at start exceed the budget).
    pub fn fatal_errors(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Blocks until every start-up load has finished.
    fn wait_for_start_up(&self) {
        let mut left = self.start_up_left.lock().unwrap_or_else(PoisonError::into_inner);
        while *left > 0 {
            left = self.start_up_done.wait(left).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// One start-up load finished; after the last, the models loaded at start are held to the budget.
    fn start_up_load_finished(&self) {
        let mut left = self.start_up_left.lock().unwrap_or_else(PoisonError::into_inner);
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some(error) = self.start_over_budget() {
                tracing::error!("{error}");
                self.fatal.send_replace(Some(error));
            }
            self.start_up_done.notify_all();
        }
    }

    /// At most `limit` model loads run at once (`--max-concurrent-loads`); without it, any number. Call before
    /// `load_all`.
    pub fn with_load_limit(mut self, limit: usize) -> Registry {
        self.loads = LoadGate::new(limit);
        self
    }

    /// Polls the repository every `interval` on a thread of its own, until the registry shuts down or is dropped.
    /// Every model runs the module `stand_in` makes for it instead of its model.pt: for tests of the HTTP contract
    /// that need no model files (tests/contract.rs). Call before `load_all`.
    pub fn with_stand_ins(mut self, stand_in: impl Fn(&ModelSpec) -> StandIn + Send + Sync + 'static) -> Registry {
        self.stand_ins = Some(Box::new(stand_in));
        self
    }

    pub fn watch_repository(self: &Arc<Self>, interval: Duration) {
        let registry: Weak<Registry> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("ember-watch".into()).spawn(move || loop {
            std::thread::sleep(interval);
            match registry.upgrade() {
                Some(registry) if !registry.stopping.load(Ordering::SeqCst) => registry.poll_repository(),
                _ => break,
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the repository watcher: new versions need POST /admin/models/{{name}}/reload");
        }
    }

    /// Loads every model loaded at start on its own thread; returns at once. Readiness follows the states.
    pub fn load_all(self: &Arc<Self>) {
        let at_start: Vec<_> = self.entries().into_iter().filter(|e| e.starting.load(Ordering::SeqCst)).collect();
        *self.start_up_left.lock().unwrap_or_else(PoisonError::into_inner) = at_start.len();
        for entry in at_start {
            // Under a budget an on-demand model is not among these: here it asks for what needs a budget.
            if entry.asks_on_demand() {
                tracing::warn!(model = %entry.name, "`[serving] load = \"on-demand\"` takes effect only with --model-memory-budget; loading the model at start");
            }
            let registry = Arc::clone(self);
            let name = format!("ember-load-{}", entry.name);
            let thread_entry = Arc::clone(&entry);
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                if registry.reload_entry(&thread_entry, true, LoadReason::Start).is_err() {
                    registry.fall_back(&thread_entry);
                }
                // Before the model stops holding readiness back: a start-up over the budget never turns ready.
                registry.start_up_load_finished();
                thread_entry.starting.store(false, Ordering::SeqCst);
                // Loading until every version was tried; a model none of whose versions loads is failed now.
                thread_entry.update(|current| {
                    if matches!(current.state, ModelState::Loading) {
                        let reason = current.last_error.clone().unwrap_or_else(|| "no version loads".into());
                        current.state = ModelState::Failed(reason);
                    }
                });
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, model = %entry.name, "cannot start a model-loading thread");
                self.start_up_load_finished();
                entry.starting.store(false, Ordering::SeqCst);
            }
        }
    }

    /// At start-up, when the version a model names fails to load: serves the newest older version that loads
    /// (unless model.toml pins one: the operator chose it), and says so beside the model. A swap later on keeps
    /// the version serving instead (`keep_serving`).
    fn fall_back(&self, entry: &ModelEntry) {
        let _changing = entry.changing.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(spec) = repository::read_model(&entry.dir) else { return };
        let (Some(newest), None) = (spec.served_version(), spec.config.version) else { return };
        let reason = entry.current().last_error.unwrap_or_default();
        let older = spec.versions.iter().rev().copied().filter(|v| *v < newest && !spec.held.contains(v));
        for version in older {
            let started = Instant::now();
            match self.start_backend(&spec, version) {
                Ok(loaded) => {
                    let note = format!(
                        "version {newest} failed to load ({reason}); serving version {version}, the newest that loads"
                    );
                    tracing::warn!(model = %entry.name, version, failed = newest, "{note}");
                    self.install(entry, &entry.current(), spec, loaded, started, LoadReason::Start);
                    entry.update(|current| {
                        current.last_error = Some(note);
                        current.failed_version = Some(newest);
                    });
                    return;
                }
                Err(e) => {
                    self.metrics.model_load_failures.with_label_values(&[&entry.name]).inc();
                    tracing::error!(model = %entry.name, version, error = %e, "an older version failed to load too");
                }
            }
        }
    }

    /// Re-reads the model's folder and serves the version it names (pinned, else the highest), loading it beside
    /// the one serving and swapping when warm. Without `force`, a version already served or one that already
    /// failed is left alone. Blocks for the load: call it off the async runtime.
    pub fn reload(&self, name: &str, force: bool, reason: LoadReason) -> Result<Reloaded, EngineError> {
        let entry = match self.get(name) {
            Some(entry) => entry,
            None => self.add_from_disk(name)?,
        };
        self.reload_entry(&entry, force, reason)
    }

    fn reload_entry(&self, entry: &ModelEntry, force: bool, reason: LoadReason) -> Result<Reloaded, EngineError> {
        let _changing = entry.changing.lock().unwrap_or_else(|e| e.into_inner());
        let load_error = |message: String| EngineError::Load { model: entry.name.clone(), message };
        let before = entry.current();
        let spec = match repository::read_model(&entry.dir) {
            Ok(spec) => spec,
            Err(e) => return Err(self.keep_serving(entry, &before, None, load_error(e.to_string()))),
        };
        let Some(version) = spec.served_version() else {
            let message = format!(
                "{} has no version folder with a model file (model.pt, model.onnx or model.pt2; run the setup: make models)",
                entry.dir.display()
            );
            return Err(self.keep_serving(entry, &before, None, load_error(message)));
        };
        let serving = before.state.loaded().map(|loaded| loaded.version);
        let unchanged = serving == Some(version) || before.failed_version == Some(version);
        // An on-demand load finds the model loaded when another path (an admin load) got there first.
        if (!force && unchanged) || (reason == LoadReason::Demand && serving.is_some()) {
            return Ok(Reloaded::Unchanged { version: serving.unwrap_or(version) });
        }
        let room = match self.room_for(entry, &spec, version, before.state.loaded().map(Arc::as_ref), reason) {
            Ok(room) => room,
            Err(e) => {
                entry.update(|current| current.last_error = Some(e.to_string()));
                return Err(e);
            }
        };
        if reason == LoadReason::Demand {
            entry.update(|current| current.state = ModelState::Loading);
        }
        let started = Instant::now();
        match self.start_backend(&spec, version) {
            Ok(loaded) => {
                self.install(entry, &before, spec, loaded, started, reason);
                drop(room);
                self.settle(entry);
                Ok(Reloaded::Swapped { version, previous: serving })
            }
            Err(e) => Err(self.keep_serving(entry, &before, Some(version), e)),
        }
    }

    /// Serves a loaded version in place of what `before` served.
    fn install(
        &self,
        entry: &ModelEntry,
        before: &Current,
        spec: ModelSpec,
        loaded: Loaded,
        started: Instant,
        reason: LoadReason,
    ) {
        let (version, device, format) = (loaded.version, device::name(loaded.device), loaded.format);
        let resident_bytes = loaded.resident_bytes;
        entry.cost.store(resident_bytes, Ordering::SeqCst);
        let previous = match &before.state {
            ModelState::Ready(old) => {
                self.forget_model_info(&entry.name, old);
                Some(old.version)
            }
            _ => None,
        };
        self.metrics.model_info.with_label_values(&model_info_labels(&entry.name, &loaded)).set(1);
        self.metrics.model_loads.with_label_values(&[&entry.name, reason.name()]).inc();
        self.metrics.model_resident_bytes.with_label_values(&[&entry.name]).set(resident_bytes as i64);
        tracing::info!(model = %entry.name, version, ?previous, %device, %format, resident_bytes,
            reason = reason.name(), seconds = started.elapsed().as_secs_f64(), "model ready");
        entry.update(|current| {
            *current = Current {
                spec: Arc::new(spec),
                state: ModelState::Ready(Arc::new(loaded)),
                last_error: None,
                failed_version: None,
            }
        });
    }

    /// Records a failed load: a model still serving an older version keeps it (the error is reported beside it);
    /// one that was not serving is `Failed`.
    fn keep_serving(
        &self,
        entry: &ModelEntry,
        before: &Current,
        version: Option<u64>,
        error: EngineError,
    ) -> EngineError {
        let detailed = error.to_string();
        // What GET /v1/models and /health/ready show anyone: paths inside the repository, not the server's.
        let message = detailed.replace(&format!("{}/", self.root.display()), "");
        if before.last_error.as_deref() != Some(message.as_str()) {
            tracing::error!(model = %entry.name, error = %detailed, "model failed to load");
        }
        if version.is_some() {
            self.metrics.model_load_failures.with_label_values(&[&entry.name]).inc();
        }
        let starting = entry.starting.load(Ordering::SeqCst);
        entry.update(|current| {
            current.last_error = Some(message.clone());
            current.failed_version = version.or(current.failed_version);
            // At start-up an older version may still load (`fall_back`): the model stays `loading` till then.
            if !starting && !matches!(current.state, ModelState::Ready(_)) {
                current.state = ModelState::Failed(message.clone());
            }
        });
        error
    }

    fn start_backend(&self, spec: &ModelSpec, version: u64) -> Result<Loaded, EngineError> {
        // Nothing starts once shutdown began: it could not be stopped (see `shutdown`).
        if self.stopping.load(Ordering::SeqCst) {
            return Err(EngineError::Stopped { model: spec.name.clone() });
        }
        let load_error = |message: String| EngineError::Load { model: spec.name.clone(), message };
        let spec = spec.at_version(version).map_err(|e| load_error(e.to_string()))?;
        let device = device::resolve(spec.config.device, self.server_device).map_err(load_error)?;
        let format = spec
            .config
            .format
            .resolve(&spec.servable_formats(version), device != Device::Cpu, |format| {
                format_usable(format, &spec.model_file(version, format), device)
            })
            .map_err(|e| load_error(format!("{}: {e}", spec.version_dir(version).display())))?;
        let signature = crate::tasks::tensor::signature(&spec);
        let worker = WorkerSpec {
            model: spec.name.clone(),
            path: spec.model_file(version, format),
            format,
            device,
            task_inputs: signature.inputs,
            task_outputs: signature.outputs,
            optimize: spec.config.optimize,
            batching: spec.config.batching.clone(),
            sizing: spec.config.sizing(),
            stand_in: self.stand_ins.as_ref().map(|stand_in| stand_in(&spec)),
        };
        // ONNX Runtime's library is opened once per process, by the first ONNX model: not that model's cost.
        let place = self.loads.enter(|| {
            if format == ModelFormat::Onnx {
                let _ = onnx::runtime::environment();
            }
        });
        let backend = Backend::start(&spec, worker, &self.metrics)?;
        let resident_bytes = place.resident_growth();
        drop(place);
        let signature = backend.signature(&spec);
        Ok(Loaded {
            version,
            device,
            format,
            backend,
            signature,
            resident_bytes,
            last_used: AtomicU64::new(0),
            loaded_at: now_ms(),
        })
    }

    /// A model folder that appeared after startup (or was named to the admin API) joins the registry.
    fn add_from_disk(&self, name: &str) -> Result<Arc<ModelEntry>, EngineError> {
        let not_found = |message: String| EngineError::NotFound { model: name.to_string(), message };
        repository::check_model_name(name).map_err(not_found)?;
        let dir = self.root.join(name);
        if !dir.join("model.toml").is_file() {
            return Err(not_found(format!("{} holds no model.toml", dir.display())));
        }
        let spec = repository::read_model(&dir)
            .map_err(|e| EngineError::Load { model: name.to_string(), message: e.to_string() })?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(entries.entry(name.to_string()).or_insert_with(|| Arc::new(ModelEntry::new(spec, false)))))
    }

    /// Takes a model out of service; its in-flight requests finish first.
    pub fn unload(&self, name: &str) -> Result<(), EngineError> {
        let entry = self.get(name).ok_or_else(|| EngineError::NotFound {
            model: name.to_string(),
            message: format!("model `{name}` is not loaded"),
        })?;
        let _changing = entry.changing.lock().unwrap_or_else(|e| e.into_inner());
        if let ModelState::Ready(old) = entry.state() {
            self.forget_serving_metrics(name, &old);
        }
        entry.update(|current| current.state = ModelState::Unloaded);
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Drops `ember_model_info` of a version that no longer serves.
    fn forget_model_info(&self, name: &str, old: &Loaded) {
        let _ = self.metrics.model_info.remove_label_values(&model_info_labels(name, old));
    }

    /// Drops the series of a model that no longer serves any version (unloaded or evicted).
    fn forget_serving_metrics(&self, name: &str, old: &Loaded) {
        self.forget_model_info(name, old);
        let _ = self.metrics.model_resident_bytes.remove_label_values(&[name]);
    }

    /// Looks at the repository once: a model whose folder now names another version (a new one, or a pin in
    /// model.toml) swaps to it, and a new model folder is loaded. Models busy loading are skipped this time.
    pub fn poll_repository(&self) {
        for entry in self.entries() {
            // An on-demand model not in memory loads on its next request, which reads its folder afresh.
            let state = entry.state();
            let out_of_memory = state.loaded().is_none() && self.is_on_demand(&entry);
            if matches!(state, ModelState::Unloaded) || out_of_memory || entry.changing.try_lock().is_err() {
                continue;
            }
            let _ = self.reload_entry(&entry, false, LoadReason::Swap);
        }
        let Ok(dirs) = std::fs::read_dir(&self.root) else { return };
        for dir in dirs.filter_map(|d| d.ok().map(|d| d.path())) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !name.starts_with('.') && dir.join("model.toml").is_file() && self.get(&name).is_none() {
                match self.add_from_disk(&name) {
                    Ok(entry) if self.is_on_demand(&entry) => {
                        entry.update(|current| current.state = ModelState::Unloaded);
                        tracing::info!(model = %name, "new model folder found; on demand, it loads on its first request");
                    }
                    Ok(entry) => {
                        tracing::info!(model = %name, "new model folder found");
                        let _ = self.reload_entry(&entry, true, LoadReason::Swap);
                    }
                    // Tried again at every poll: its model.toml may be half written.
                    Err(_) => {}
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// The model that answers a task's short route (as chosen at startup).
    pub fn default_for(&self, task: TaskKind) -> Option<&str> {
        self.defaults.get(&task).map(String::as_str)
    }

    /// Models the replica waits for before it is ready, with their state; empty when it is ready.
    ///
    /// Readiness says whether this replica should take traffic. It waits for the start-up load of every model
    /// found at start-up (a model none of whose versions loads is then reported, not waited for); after that,
    /// every model that was serving still serves (a failed swap keeps the old version; an unload is on purpose),
    /// and a model that fails later or a folder added later is reported in GET /v1/models, on
    /// /v2/models/{name}/ready, in ember_model_load_failures_total and in the log, without taking the replica out.
    pub fn not_ready(&self) -> Vec<(String, ModelState)> {
        self.entries()
            .into_iter()
            .filter(|entry| entry.starting.load(Ordering::SeqCst))
            .map(|entry| (entry.name.clone(), entry.state()))
            .collect()
    }

    /// Finishes every queued request and stops every worker, those of versions swapped out included. Blocks,
    /// also until the loads in progress finish: a process that exits while a thread loads a module tears libtorch
    /// down beneath it (SIGSEGV, heap corruption). Loads do not start after this (`start_backend`).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for entry in self.entries() {
            // Every load holds `changing` from before it checks `stopping` until its backend is installed.
            let _changing = match entry.changing.try_lock() {
                Ok(changing) => changing,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    tracing::info!(model = %entry.name, "waiting for the model's load in progress before stopping");
                    entry.changing.lock().unwrap_or_else(|e| e.into_inner())
                }
            };
            if let ModelState::Ready(loaded) = entry.state() {
                loaded.backend.shutdown();
            }
        }
        retired::join_all();
    }
}
