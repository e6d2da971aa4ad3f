//! The Open Inference Protocol (KServe v2), whichever transport carries it: the server's and a model's metadata,
//! and running checked input tensors through a model's queue and batches. The tensor checks and conversions
//! are `tensors`'; reading the JSON and binary bodies (http) or the protobuf messages (grpc) is the front ends'.

use std::time::Duration;

use tch::Tensor;

use super::error::ApiError;
use super::AppState;
use crate::model_toml::TaskKind;
use crate::registry::Loaded;
use crate::signature::Signature;
use crate::tasks::tensor;

/// What the server metadata says (`GET /v2`, `ServerMetadata`).
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    /// The protocol extensions ember implements.
    pub extensions: &'static [&'static str],
}

pub const SERVER_METADATA: ServerMetadata = ServerMetadata {
    name: "ember",
    version: env!("CARGO_PKG_VERSION"),
    extensions: &["binary_tensor_data", "model_repository"],
};

/// What model metadata says, whichever protocol carries it.
pub struct Metadata {
    pub versions: Vec<u64>,
    pub task: TaskKind,
    pub signature: Signature,
    /// The format serving the version, in Triton's platform names (`onnxruntime_onnx`, ...).
    pub platform: &'static str,
}

/// The versions, task and tensors of `version` of a model (default: the one served, else the one that would
/// be); 404 for a model or version that does not exist.
pub fn metadata(state: &AppState, name: &str, version: Option<u64>) -> Result<Metadata, ApiError> {
    let spec = state.model(name)?.spec();
    let version = match version.or_else(|| spec.served_version()) {
        Some(version) if spec.versions.contains(&version) => version,
        other => {
            return Err(ApiError::not_found(format!(
                "model `{name}` has no version {}; versions: {:?}",
                other.map_or("to serve".to_string(), |v| v.to_string()),
                spec.versions
            )))
        }
    };
    // The loaded version's signature is in memory; another version's is read from its folder (its labels and
    // image size may differ from the model's: a fine-tune).
    let (signature, format) = match state.served_now(name, Some(version)) {
        Ok(Some(loaded)) => (loaded.signature.clone(), loaded.format),
        _ => (
            tensor::signature(&spec.at_version(version).map_err(|e| ApiError::unavailable(e.to_string()))?),
            spec.expected_format(version),
        ),
    };
    Ok(Metadata { versions: spec.versions.clone(), task: spec.config.task, signature, platform: format.platform() })
}

/// Runs checked inputs through the model's queue and batches within `timeout` (the version counts as used); the
/// outputs are the signature's.
pub async fn run(name: &str, loaded: &Loaded, inputs: Vec<Tensor>, timeout: Duration) -> Result<Vec<Tensor>, ApiError> {
    loaded.touch();
    let outputs = loaded.backend.infer_tensors(inputs, timeout).await?;
    let expected = loaded.signature.outputs.len();
    if outputs.len() != expected {
        return Err(ApiError::internal(format!(
            "model `{name}` returned {} tensors; its signature has {expected} outputs",
            outputs.len()
        )));
    }
    Ok(outputs)
}
