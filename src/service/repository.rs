//! What the repository serves and changing it: readiness, the index of models with their states, and loading,
//! reloading and unloading a model (the admin API's routes, the Open Inference Protocol's repository extension
//! over HTTP and gRPC).

use std::sync::Arc;

use super::error::ApiError;
use super::offload::off_runtime;
use super::AppState;
use crate::registry::{LoadReason, ModelState, Reloaded};

/// Every model that should serve is loaded and warm; else a 503 naming each one that is not, and why.
pub fn readiness(state: &AppState) -> Result<(), ApiError> {
    let waiting = state.registry.not_ready();
    if waiting.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = waiting
        .iter()
        .map(|(name, model_state)| match model_state {
            ModelState::Failed(message) => format!("`{name}` failed: {message}"),
            other => format!("`{name}` is {}", other.name()),
        })
        .collect();
    Err(ApiError::unavailable(format!("not ready: {}", reasons.join("; "))))
}

/// One model of the repository index.
pub struct IndexEntry {
    pub name: String,
    /// The version served (or that would be); empty if none.
    pub version: String,
    /// As Triton names it: READY, LOADING or UNAVAILABLE. An on-demand model not in memory is READY: a request
    /// loads it (its reason says so).
    pub state: &'static str,
    /// Why it is unavailable.
    pub reason: String,
}

/// Every model by name, or only the ready ones.
pub fn index(state: &AppState, ready_only: bool) -> Vec<IndexEntry> {
    let mut names = state.registry.names();
    names.sort();
    let mut models = Vec::with_capacity(names.len());
    for name in names {
        let Some(entry) = state.registry.get(&name) else { continue };
        let current = entry.current();
        let on_demand = state.registry.is_on_demand(&entry);
        let (status, version, reason) = match &current.state {
            ModelState::Unloaded if on_demand => {
                ("READY", current.spec.served_version(), "on demand: loads on its first request".to_string())
            }
            ModelState::Ready(loaded) => ("READY", Some(loaded.version), String::new()),
            ModelState::Loading => ("LOADING", current.spec.served_version(), String::new()),
            ModelState::Failed(message) => ("UNAVAILABLE", current.spec.served_version(), message.clone()),
            ModelState::Unloaded => ("UNAVAILABLE", current.spec.served_version(), "unloaded".to_string()),
        };
        if ready_only && status != "READY" {
            continue;
        }
        let version = version.map(|v| v.to_string()).unwrap_or_default();
        models.push(IndexEntry { name, version, state: status, reason });
    }
    models
}

/// Loads (or swaps to) what the repository names for `name`; `force` reloads even an unchanged version.
pub async fn load(state: &AppState, name: &str, force: bool) -> Result<Reloaded, ApiError> {
    // Reads and warms a model (seconds): off the async workers.
    let (registry, model) = (Arc::clone(&state.registry), name.to_string());
    off_runtime("loading the model", move || registry.reload(&model, force, LoadReason::Admin).map_err(ApiError::from))
        .await
}

/// Stops serving `name` until it is loaded again.
pub async fn unload(state: &AppState, name: &str) -> Result<(), ApiError> {
    // Waits for a load or swap of the same model to finish (seconds): off the async workers.
    let (registry, model) = (Arc::clone(&state.registry), name.to_string());
    off_runtime("unloading the model", move || registry.unload(&model).map_err(ApiError::from)).await
}
