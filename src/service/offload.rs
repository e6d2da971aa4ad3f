//! CPU work of a request (decoding, resizing, tokenising, encoding: milliseconds) on tokio's blocking pool, off
//! the async workers, with its trace span; image decodes within the decode-memory budget.

use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::tasks::image::Probe;

/// Runs `work` on the blocking pool; `what` names the work in the error if it panics.
pub async fn off_runtime<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let finished = tokio::task::spawn_blocking(work).await;
    finished.map_err(|e| ApiError::internal(format!("{what} stopped: {e}")))?.map_err(Into::into)
}

/// `off_runtime` for reading a request (parsing, decoding, preprocessing, tokenising), traced as `decode`.
pub async fn decoding<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(what, work).instrument(tracing::info_span!("decode", what)).await
}

/// `off_runtime` for writing an answer (image or tensor encoding), traced as `encode`.
pub async fn encoding<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(what, work).instrument(tracing::info_span!("encode", what)).await
}

/// Decodes and preprocesses images on the blocking pool within `--max-decode-bytes`: what the `probes`' images
/// may take is reserved before `work` starts and released when it returns.
pub async fn decode_images<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    state: &AppState,
    probes: &[Probe],
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let bytes = probes.iter().fold(0u64, |sum, probe| sum.saturating_add(probe.decode_bytes()));
    let reservation = state.decode_memory.reserve(bytes, state.limits.request_timeout).await?;
    state.metrics.decode_reserved_bytes.set(state.decode_memory.reserved_bytes() as i64);
    let result = decoding("image preprocessing", move || {
        let _reservation = reservation;
        work()
    })
    .await;
    state.metrics.decode_reserved_bytes.set(state.decode_memory.reserved_bytes() as i64);
    result
}
