//! Loading an on-demand model on its first request: one load shared by every request that arrives meanwhile,
//! each waiting within its own deadline, and a back-off after a failed load so that requests do not retry it
//! one after another.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{LoadReason, Loaded, ModelEntry, Registry};
use crate::engine::EngineError;

/// The first retry after a failed load waits this long; each further failure doubles it, up to `MAX_BACK_OFF`.
const FIRST_BACK_OFF: Duration = Duration::from_secs(1);
const MAX_BACK_OFF: Duration = Duration::from_secs(60);

/// How one on-demand load ended, for every request that waited for it.
type Outcome = Option<Result<(), EngineError>>;

/// An entry's on-demand loading: the load in progress, if any, and the back-off after failed ones.
#[derive(Default)]
pub struct DemandSlot {
    load: Option<watch::Receiver<Outcome>>,
    /// Failed loads in a row.
    failures: u32,
    /// Until when a failed load is not retried, and its error.
    backing_off: Option<(Instant, String)>,
}

/// A request counted among those waiting for a load, against the model's `batching.queue_capacity`.
struct Waiting<'a>(&'a ModelEntry);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ModelEntry {
    fn demand_slot(&self) -> MutexGuard<'_, DemandSlot> {
        self.demand.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registry {
    /// The serving version of an on-demand model, loading it first if it is not in memory. Waits at most
    /// `timeout` (then `LoadWaitExceeded`; the load goes on); more waiting requests than the model's queue holds
    /// are refused at once (`QueueFull`), as its queue would.
    pub async fn on_demand(
        self: &Arc<Self>,
        entry: &Arc<ModelEntry>,
        timeout: Duration,
    ) -> Result<Arc<Loaded>, EngineError> {
        if let Some(loaded) = entry.loaded() {
            return Ok(loaded);
        }
        let capacity = entry.spec().config.batching.queue_capacity;
        if entry.waiting.fetch_add(1, Ordering::SeqCst) >= capacity {
            entry.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::queue_full(&entry.name, capacity));
        }
        let _waiting = Waiting(entry);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            if let Some(loaded) = entry.loaded() {
                break Ok(loaded);
            }
            let mut load = match self.join_or_start_load(entry) {
                Ok(load) => load,
                Err(e) => break Err(e),
            };
            let ended = tokio::time::timeout_at(deadline, load.wait_for(Option::is_some)).await;
            let outcome = match ended {
                Ok(Ok(outcome)) => outcome.clone(),
                Ok(Err(_)) => Some(Err(EngineError::Stopped { model: entry.name.clone() })),
                Err(_) => Some(Err(EngineError::LoadWaitExceeded { model: entry.name.clone(), timeout })),
            };
            // Loaded: the loop takes it (or, evicted already, loads it again).
            if let Some(Err(e)) = outcome {
                break Err(e);
            }
        };
        self.metrics.model_load_wait.with_label_values(&[&entry.name]).observe(started.elapsed().as_secs_f64());
        result
    }

    /// The load in progress, or a new one on a thread of its own; refused within a back-off.
    fn join_or_start_load(self: &Arc<Self>, entry: &Arc<ModelEntry>) -> Result<watch::Receiver<Outcome>, EngineError> {
        let mut slot = entry.demand_slot();
        if let Some(load) = &slot.load {
            return Ok(load.clone());
        }
        if let Some((until, message)) = &slot.backing_off {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                let retry_after_secs = left.as_secs_f64().ceil() as u64;
                return Err(EngineError::LoadBackingOff {
                    model: entry.name.clone(),
                    message: message.clone(),
                    retry_after_secs,
                });
            }
        }
        let (done, load) = watch::channel(None);
        slot.load = Some(load.clone());
        drop(slot);
        // The load's thread runs at a lower priority; the threads it starts to serve must not inherit it.
        crate::engine::priority::start_serving_spawner();
        let (registry, thread_entry) = (Arc::clone(self), Arc::clone(entry));
        let spawned = std::thread::Builder::new()
            .name(format!("ember-demand-{}", entry.name))
            .spawn(move || registry.load_on_demand(&thread_entry, done));
        if let Err(e) = spawned {
            entry.demand_slot().load = None;
            return Err(EngineError::Load {
                model: entry.name.clone(),
                message: format!("cannot start a loading thread: {e}"),
            });
        }
        Ok(load)
    }

    /// Runs one on-demand load and tells every waiting request how it ended. Start-up loads go first: their
    /// costs are what an on-demand load must fit beside.
    fn load_on_demand(&self, entry: &ModelEntry, done: watch::Sender<Outcome>) {
        self.wait_for_start_up();
        // Other models are serving: this load takes what CPU they leave (engine::priority).
        crate::engine::priority::lower_for_loading();
        let outcome = crate::engine::catch_panic(|| self.reload_entry(entry, true, LoadReason::Demand))
            .unwrap_or_else(|panic| Err(EngineError::Load { model: entry.name.clone(), message: panic }));
        let mut slot = entry.demand_slot();
        slot.load = None;
        match &outcome {
            Ok(_) | Err(EngineError::NoRoom { .. }) | Err(EngineError::Stopped { .. }) => {
                slot.failures = 0;
                slot.backing_off = None;
            }
            Err(e) => {
                let back_off = FIRST_BACK_OFF.saturating_mul(1 << slot.failures.min(6)).min(MAX_BACK_OFF);
                slot.failures += 1;
                let message = match e {
                    EngineError::Load { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                slot.backing_off = Some((Instant::now() + back_off, message));
                tracing::warn!(model = %entry.name, seconds = back_off.as_secs(), failures = slot.failures,
                    "on-demand load failed; requests are refused with its error until the next try");
            }
        }
        let _ = done.send(Some(outcome.map(|_| ())));
    }
}
