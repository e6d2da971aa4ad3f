//! `--model-memory-budget`: what the loaded models may take together, and making room under it by unloading the
//! least recently used idle on-demand models.
//!
//! What a model takes is what its load measured (`Loaded::resident_bytes`). A load reserves an estimate of its
//! cost before it starts (the version it replaces, else what the model measured the last time it loaded, else a
//! guess from its files' size) and the measurement replaces the estimate once it is installed. A version being
//! swapped in and a model a fine-tuning job trains count too, so the budget holds while they run.
//!
//! Eviction is a hot swap to nothing: only a version no request holds (nothing queued, running or streaming: no
//! `Arc<Loaded>` besides the registry's) is taken out, under the entry's lock, so no request can take it after
//! the check; its workers are joined and its memory given back before the load that needed the room starts.
//! When the idle ones do not free enough, the load waits (up to half the request deadline) for busy ones to
//! drain; it is refused (503) at once only when what is never evicted leaves no room.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{LoadReason, Loaded, ModelEntry, ModelState, Registry};
use crate::engine::EngineError;
use crate::formats::ModelFormat;
use crate::repository::ModelSpec;

/// A model never loaded is reserved twice its files' size (the weights and their prepacked copy) and this much
/// for its warm-up's buffers; its load then measures the real cost. MobileNetV2 (a 14 MB file) measures about
/// 90 MiB, the sentiment model (90 MB) about 150 MiB.
const WARM_UP_ESTIMATE: u64 = 64 << 20;

/// How long a client refused for lack of room waits before it retries: about one load or one slow request.
const NO_ROOM_RETRY_SECS: u64 = 1;

/// How often a load waiting for room looks again whether a busy model has become idle: a request takes tens of
/// milliseconds, a load hundreds.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// The budget and the bytes reserved under it by loads in progress and fine-tuning jobs.
pub struct MemoryBudget {
    pub limit: u64,
    /// How long a load waits for busy models to drain when evicting the idle ones leaves too little room (less
    /// than the request deadline, so that its requests get the refusal before they time out).
    room_wait: Duration,
    /// Held while a load's room is found (evicting as needed) and reserved, so that two loads never count the
    /// same free bytes.
    reserved: Mutex<u64>,
}

/// Bytes held under the budget until dropped.
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *self.budget.lock() -= self.bytes;
    }
}

impl MemoryBudget {
    pub fn new(limit: u64, room_wait: Duration) -> MemoryBudget {
        MemoryBudget { limit, room_wait, reserved: Mutex::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `bytes` more, under the lock `reserved` is.
    fn reserve(self: &Arc<Self>, reserved: &mut u64, bytes: u64) -> Reservation {
        *reserved += bytes;
        Reservation { budget: Arc::clone(self), bytes }
    }
}

/// A model a fine-tuning job trains: it is not evicted, and its cost is held under the budget, until dropped.
pub struct JobHold {
    entry: Arc<ModelEntry>,
    _reservation: Option<Reservation>,
}

impl Drop for JobHold {
    fn drop(&mut self) {
        self.entry.job_holds.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes as an operator reads them in a message.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

impl Registry {
    /// Whether `entry` loads on its first request and may be evicted: only under a budget.
    pub fn is_on_demand(&self, entry: &ModelEntry) -> bool {
        self.budget.is_some() && entry.asks_on_demand()
    }

    /// What the loaded versions take, by their measurements.
    fn resident_total(&self) -> u64 {
        self.entries().iter().filter_map(|entry| entry.loaded()).map(|loaded| loaded.resident_bytes).sum()
    }

    /// Room for a load of `version` of `entry` (in place of `serving`, if any), evicting idle on-demand models
    /// as needed; `None` without a budget. A swap counts the new version beside the old one until it replaces it.
    /// Start-up loads reserve nothing: they run before any on-demand load, and what they measured together is
    /// held to the budget when the last one ends (`start_over_budget`), not an estimate of it.
    pub(super) fn room_for(
        &self,
        entry: &ModelEntry,
        spec: &ModelSpec,
        version: u64,
        serving: Option<&Loaded>,
        reason: LoadReason,
    ) -> Result<Option<Reservation>, EngineError> {
        let Some(budget) = self.budget.as_ref().filter(|_| reason != LoadReason::Start) else { return Ok(None) };
        let needed = match serving {
            Some(loaded) => loaded.resident_bytes,
            None => match entry.cost.load(Ordering::SeqCst) {
                0 => 2 * model_file_bytes(spec, version) + WARM_UP_ESTIMATE,
                measured => measured,
            },
        };
        let why = |used| {
            let (needed, limit, used) = (mib(needed), mib(budget.limit), mib(used));
            format!(
                "to make room for `{}` (about {needed}) under --model-memory-budget {limit}: {used} in use",
                entry.name
            )
        };
        // Busy models (requests queued, running or streaming) drain within the wait; what can never be evicted
        // (start models, models being fine-tuned) is not waited for.
        let waited_enough = Instant::now() + budget.room_wait;
        loop {
            let mut reserved = budget.lock();
            let used = match self.evict_until_fits(budget.limit, *reserved, &entry.name, needed, &why) {
                Ok(()) => return Ok(Some(budget.reserve(&mut reserved, needed))),
                Err(used) => used,
            };
            if self.never_evicted_total(&entry.name) + needed > budget.limit || Instant::now() >= waited_enough {
                return Err(self.no_room(entry, needed, used, budget.limit));
            }
            drop(reserved);
            std::thread::sleep(ROOM_POLL);
        }
    }

    /// What the loaded models that eviction never takes hold (start models, models being fine-tuned, and `keep`,
    /// the model making room).
    fn never_evicted_total(&self, keep: &str) -> u64 {
        let held = |entry: &ModelEntry| {
            entry.name == keep || !self.is_on_demand(entry) || entry.job_holds.load(Ordering::SeqCst) > 0
        };
        let loaded = self.entries().into_iter().filter(|entry| held(entry)).filter_map(|entry| entry.loaded());
        loaded.map(|loaded| loaded.resident_bytes).sum()
    }

    /// After a load is installed and measured: while the loaded models take more than the budget (the estimate
    /// was low), idle on-demand models are evicted; if none is, the log says by how much the budget is over.
    pub(super) fn settle(&self, entry: &ModelEntry) {
        let Some(budget) = &self.budget else { return };
        let reserved = budget.lock();
        let why = |used| {
            let (used, limit) = (mib(used), mib(budget.limit));
            format!(
                "`{}` measured more than its estimate: {used} in use, over --model-memory-budget {limit}",
                entry.name
            )
        };
        if let Err(used) = self.evict_until_fits(budget.limit, *reserved, &entry.name, 0, &why) {
            let (in_use, limit) = (mib(used), mib(budget.limit));
            tracing::warn!(model = %entry.name, used, budget = budget.limit,
                "the loaded models take {in_use}, more than --model-memory-budget {limit}, and none is idle to unload");
        }
    }

    /// Evicts idle on-demand models other than `keep`, least recently used first, until `needed` more bytes fit
    /// beside the loaded versions and `reserved`; if they still do not when none is left to evict, the bytes in
    /// use then. `why` says, from the bytes in use, why each eviction happens (its log line).
    fn evict_until_fits(
        &self,
        limit: u64,
        reserved: u64,
        keep: &str,
        needed: u64,
        why: &dyn Fn(u64) -> String,
    ) -> Result<(), u64> {
        loop {
            let used = self.resident_total() + reserved;
            if used + needed <= limit {
                return Ok(());
            }
            if !self.evict_one(keep, &why(used)) {
                return Err(used);
            }
        }
    }

    /// Unloads the least recently used on-demand model (other than `keep`) that nothing holds; false if none.
    fn evict_one(&self, keep: &str, why: &str) -> bool {
        let mut candidates: Vec<(u64, Arc<ModelEntry>)> = self
            .entries()
            .into_iter()
            .filter(|entry| entry.name != keep && entry.job_holds.load(Ordering::SeqCst) == 0)
            .filter(|entry| self.is_on_demand(entry))
            .filter_map(|entry| entry.loaded().map(|loaded| (loaded.recency_ms(), entry)))
            .collect();
        candidates.sort_by_key(|(recency, _)| *recency);
        for (_, entry) in candidates {
            // A model loading, swapping or unloading is busy: not a candidate now.
            let Ok(_changing) = entry.changing.try_lock() else { continue };
            if let Some(loaded) = entry.take_if_idle() {
                self.retire_evicted(&entry, loaded, why);
                return true;
            }
        }
        false
    }

    /// Stops an evicted version's workers (its queue is empty) and gives its memory back before the next load.
    fn retire_evicted(&self, entry: &ModelEntry, loaded: Arc<Loaded>, why: &str) {
        self.forget_serving_metrics(&entry.name, &loaded);
        self.metrics.model_evictions.with_label_values(&[&entry.name]).inc();
        let idle_seconds = loaded.idle_seconds();
        tracing::info!(model = %entry.name, version = loaded.version, resident_bytes = loaded.resident_bytes,
            idle_seconds, "model evicted {why}; it was the least recently used idle on-demand model, and loads again on its next request");
        loaded.backend.shutdown();
        drop(loaded);
        crate::engine::give_back_freed_memory();
    }

    fn no_room(&self, entry: &ModelEntry, needed: u64, used: u64, limit: u64) -> EngineError {
        let busy: Vec<String> = self
            .entries()
            .iter()
            .filter(|other| other.name != entry.name && other.loaded().is_some())
            .map(|other| {
                let why = if !self.is_on_demand(other) {
                    "loaded at start"
                } else if other.job_holds.load(Ordering::SeqCst) > 0 {
                    "being fine-tuned"
                } else {
                    "busy"
                };
                format!("{} {why}", other.name)
            })
            .collect();
        let (name, budget, needs) = (&entry.name, mib(limit), mib(needed));
        let message = if needed > limit {
            format!("no room for model `{name}` under --model-memory-budget {budget}: it needs about {needs}, more than the whole budget; raise the budget")
        } else {
            let holders = if busy.is_empty() { "by loads in progress".to_string() } else { busy.join(", ") };
            format!(
                "no room for model `{name}` under --model-memory-budget {budget}: it needs about {needs} and {} are \
                 in use ({holders}); retry shortly, or raise the budget",
                mib(used)
            )
        };
        tracing::warn!(model = %entry.name, needed, used, budget = limit, "{message}");
        EngineError::NoRoom { model: entry.name.clone(), message, retry_after_secs: NO_ROOM_RETRY_SECS }
    }

    /// Keeps `model` loaded and its cost under the budget while a fine-tuning job trains it (the job loads its
    /// own copy of the weights). Over the budget, the job still runs and the log says so: a job is not refused
    /// for serving's sake, and on-demand loads wait for room until it ends.
    pub fn hold_for_job(&self, model: &str) -> Option<JobHold> {
        let entry = self.get(model)?;
        entry.job_holds.fetch_add(1, Ordering::SeqCst);
        let reservation = self.budget.as_ref().map(|budget| {
            let bytes = entry.loaded().map_or(entry.cost.load(Ordering::SeqCst), |loaded| loaded.resident_bytes);
            let mut reserved = budget.lock();
            let why = |_| format!("for a fine-tuning job of `{model}` (about {})", mib(bytes));
            if self.evict_until_fits(budget.limit, *reserved, model, bytes, &why).is_err() {
                let limit = mib(budget.limit);
                tracing::warn!(model, bytes, "a fine-tuning job takes the budget over --model-memory-budget {limit}");
            }
            budget.reserve(&mut reserved, bytes)
        });
        Some(JobHold { entry, _reservation: reservation })
    }

    /// At the end of start-up: the error naming the budget and what the models loaded at start need, if they
    /// need more.
    pub(super) fn start_over_budget(&self) -> Option<String> {
        let budget = self.budget.as_ref()?;
        let costs: Vec<(String, u64)> = self
            .entries()
            .iter()
            .filter_map(|entry| entry.loaded().map(|loaded| (entry.name.clone(), loaded.resident_bytes)))
            .collect();
        let total: u64 = costs.iter().map(|(_, bytes)| bytes).sum();
        (total > budget.limit).then(|| {
            let each: Vec<String> = costs.iter().map(|(name, bytes)| format!("{name} {}", mib(*bytes))).collect();
            format!(
                "the models loaded at start need {} ({}), more than --model-memory-budget {}: raise the budget, or \
                 set `[serving] load = \"on-demand\"` in the model.toml of those that may wait for their first request",
                mib(total),
                each.join(", "),
                mib(budget.limit)
            )
        })
    }
}

impl ModelEntry {
    /// The version serving, if any.
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        self.state().loaded().cloned()
    }

    /// Whether model.toml says `[serving] load = "on-demand"` (which takes effect under a budget only).
    pub fn asks_on_demand(&self) -> bool {
        self.spec().config.serving.load == crate::model_toml::LoadPolicy::OnDemand
    }

    /// Takes the serving version out (the model becomes `unloaded`) if no request holds it; under the state's
    /// write lock, so that none can take it after the check.
    fn take_if_idle(&self) -> Option<Arc<Loaded>> {
        let mut taken = None;
        self.update(|current| match std::mem::replace(&mut current.state, ModelState::Unloaded) {
            ModelState::Ready(loaded) if Arc::strong_count(&loaded) == 1 => taken = Some(loaded),
            other => current.state = other,
        });
        taken
    }
}

/// The size of the file `version` would serve from (its largest, when `format = "auto"` may pick any), and of
/// its tokenizer.
fn model_file_bytes(spec: &ModelSpec, version: u64) -> u64 {
    let size = |format: ModelFormat| file_size(&spec.model_file(version, format));
    let largest = spec.servable_formats(version).into_iter().map(size).max().unwrap_or(0);
    largest + file_size(&spec.dir.join("tokenizer.json"))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
