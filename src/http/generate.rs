//! `POST /v1/models/{name}/generate` and `POST /v1/generate`: a prompt in, generated text out, either as one JSON
//! answer or, with `"stream": true`, as server-sent events (`token` per token, then `done` or `error`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::extract::{JsonBody, JsonShape, Serving, TaskRoute};
use super::{wrong_backend, AppState};
use crate::config::TaskKind;
use crate::engine::EngineError;
use crate::tasks::generate::{FinishReason, GenerateRequest, GenerationEvent};
use crate::tasks::Backend;

pub struct Generation;

impl TaskRoute for Generation {
    const TASK: TaskKind = TaskKind::TextGeneration;
}

impl JsonShape for GenerateRequest {
    const SHAPE: &'static str = r#"{"prompt": "...", "max_tokens": 200, "stream": false}"#;
}

#[derive(Serialize)]
struct GenerateResponse {
    model: String,
    version: u64,
    text: String,
    tokens: usize,
    finish_reason: FinishReason,
    /// The seed used (the request's, or one the server drew), so the output can be reproduced.
    seed: u64,
}

#[derive(Serialize)]
struct TokenEvent<'a> {
    id: u8,
    text: &'a str,
}

#[derive(Serialize)]
struct DoneEvent<'a> {
    model: &'a str,
    version: u64,
    tokens: usize,
    finish_reason: FinishReason,
    seed: u64,
}

/// What the response needs to know about the sequence besides its events.
#[derive(Clone)]
struct Origin {
    model: String,
    version: u64,
    seed: u64,
}

pub async fn generate(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<Generation>,
    JsonBody(body): JsonBody<GenerateRequest>,
) -> Result<Response, ApiError> {
    let Backend::TextGeneration(engine) = &loaded.backend else {
        return Err(wrong_backend(&name, Generation::TASK));
    };
    let stream = body.stream;
    let request = body.validate(engine.limits(), fresh_seed())?;
    let origin = Origin { model: name, version: loaded.version, seed: request.sampling.seed };
    // One deadline for all of it: waiting to join, and the whole answer (or a stream's first token).
    let timeout = state.limits.request_timeout;
    let deadline = Deadline { at: Instant::now() + timeout, timeout };
    let events = engine.submit(request, deadline.at)?;
    if stream {
        stream_events(events, origin, deadline).await
    } else {
        collect_events(events, origin, deadline).await
    }
}

/// A seed for a request that names none: different per request, reported back in the response.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The sequence ended without `Done` or `Error`: its scheduler stopped.
fn lost(model: &str) -> ApiError {
    ApiError::from(EngineError::WorkerLost { model: model.to_string() })
}

/// When the request must be answered, and the timeout it came from (for the error message).
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn exceeded(self, model: &str) -> ApiError {
        ApiError::from(EngineError::DeadlineExceeded { model: model.to_string(), timeout: self.timeout })
    }
}

async fn collect_events(
    mut events: UnboundedReceiver<GenerationEvent>,
    origin: Origin,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let collect = async {
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::Token { text: piece, .. } => text.push_str(&piece),
                GenerationEvent::Done { finish_reason, tokens } => {
                    let Origin { model, version, seed } = origin.clone();
                    return Ok(GenerateResponse { model, version, text, tokens, finish_reason, seed });
                }
                GenerationEvent::Error(e) => return Err(ApiError::from(e)),
            }
        }
        Err(lost(&origin.model))
    };
    // Dropping `events` on timeout cancels the sequence at its next step.
    match tokio::time::timeout_at(deadline.at.into(), collect).await {
        Ok(result) => Ok(Json(result?).into_response()),
        Err(_) => Err(deadline.exceeded(&origin.model)),
    }
}

/// Waits for the first event, so that a sequence that cannot start (queue timeout, model error) still gets a
/// proper status code; then streams. A client that disconnects drops the stream and with it the receiver,
/// which ends the sequence at its next step.
async fn stream_events(
    mut events: UnboundedReceiver<GenerationEvent>,
    origin: Origin,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let first = match tokio::time::timeout_at(deadline.at.into(), events.recv()).await {
        Err(_) => return Err(deadline.exceeded(&origin.model)),
        Ok(None) => return Err(lost(&origin.model)),
        Ok(Some(GenerationEvent::Error(e))) => return Err(ApiError::from(e)),
        Ok(Some(first)) => first,
    };
    Ok(Sse::new(sse_stream(first, events, origin)).into_response())
}

fn sse_stream(
    first: GenerationEvent,
    events: UnboundedReceiver<GenerationEvent>,
    origin: Origin,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The receiver while the sequence runs; None after its last event. A closed channel reads as None.
    let rest = stream::unfold(Some(events), |receiver| async move {
        let mut receiver = receiver?;
        let event = receiver.recv().await;
        let running = matches!(event, Some(GenerationEvent::Token { .. }));
        Some((event, running.then_some(receiver)))
    });
    stream::once(async move { Some(first) }).chain(rest).map(move |event| Ok(to_sse(event, &origin)))
}

fn to_sse(event: Option<GenerationEvent>, origin: &Origin) -> Event {
    match event {
        Some(GenerationEvent::Token { id, text }) => json_event("token", &TokenEvent { id, text: &text }),
        Some(GenerationEvent::Done { finish_reason, tokens }) => json_event(
            "done",
            &DoneEvent { model: &origin.model, version: origin.version, tokens, finish_reason, seed: origin.seed },
        ),
        Some(GenerationEvent::Error(e)) => json_event("error", &ApiError::from(e).event_body()),
        None => json_event("error", &lost(&origin.model).event_body()),
    }
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    // Serialising these plain structs cannot fail.
    Event::default().event(name).data(serde_json::to_string(data).unwrap_or_default())
}
