//! `POST /v1/models/{name}/generate` and `POST /v1/generate`: a prompt in, generated text out, either as one JSON
//! answer or, with `"stream": true`, as server-sent events (`token` per token, then `done` or `error`).
//!
//! `Sequence` is what every generation route shares (this one and OpenAI's `/v1/completions`): admission to the
//! model's scheduler, one deadline, collecting the whole answer or streaming its events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::extract::{JsonBody, JsonShape, Serving, TaskRoute};
use super::wrong_backend;
use crate::engine::EngineError;
use crate::model_toml::TaskKind;
use crate::registry::Loaded;
use crate::rng::fresh_seed;
use crate::service::{ApiError, AppState};
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

pub async fn generate(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<Generation>,
    JsonBody(body): JsonBody<GenerateRequest>,
) -> Result<Response, ApiError> {
    let stream = body.stream;
    let mut sequence = Sequence::start(&state, name, &loaded, body)?;
    if stream {
        let first = sequence.first_event().await?;
        let origin = sequence.origin().clone();
        let events = sequence.events_from(first).map(move |event| Ok::<_, Infallible>(to_sse(event, &origin)));
        Ok(Sse::new(events).into_response())
    } else {
        let Finished { origin, text, tokens, finish_reason } = sequence.collect().await?;
        let Origin { model, version, seed, .. } = origin;
        Ok(Json(GenerateResponse { model, version, text, tokens, finish_reason, seed }).into_response())
    }
}

/// The sequence ended without `Done` or `Error`: its scheduler stopped.
pub(super) fn lost(model: &str) -> ApiError {
    ApiError::from(EngineError::WorkerLost { model: model.to_string() })
}

/// What a response needs to know about the sequence besides its events.
#[derive(Clone, Debug)]
pub struct Origin {
    pub model: String,
    pub version: u64,
    pub seed: u64,
    /// The prompt's length in tokens (bytes).
    pub prompt_tokens: usize,
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

/// A whole answer.
pub struct Finished {
    pub origin: Origin,
    pub text: String,
    pub tokens: usize,
    pub finish_reason: FinishReason,
}

/// One generation request admitted to its model's scheduler. Dropping it (a timeout, a client that went away)
/// cancels the sequence at its next step.
pub struct Sequence {
    events: UnboundedReceiver<GenerationEvent>,
    origin: Origin,
    deadline: Deadline,
    /// The version generating, held until the sequence's last event: a model with a stream open is busy, and
    /// is not evicted under it (`--model-memory-budget`).
    serving: Arc<Loaded>,
}

impl Sequence {
    /// Validates `body` against the model's limits and submits it, with one deadline for all of it: waiting to
    /// join, and the whole answer (or a stream's first token).
    pub fn start(
        state: &AppState,
        name: String,
        loaded: &Arc<Loaded>,
        body: GenerateRequest,
    ) -> Result<Sequence, ApiError> {
        let Backend::TextGeneration(engine) = &loaded.backend else {
            return Err(wrong_backend(&name, Generation::TASK));
        };
        let request = body.validate(engine.limits(), fresh_seed())?;
        let origin = Origin {
            model: name,
            version: loaded.version,
            seed: request.sampling.seed,
            prompt_tokens: request.prompt.len(),
        };
        let timeout = state.limits.request_timeout;
        let deadline = Deadline { at: Instant::now() + timeout, timeout };
        let events = engine.submit(request, deadline.at)?;
        Ok(Sequence { events, origin, deadline, serving: Arc::clone(loaded) })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The whole text, within the deadline.
    pub async fn collect(self) -> Result<Finished, ApiError> {
        let Sequence { mut events, origin, deadline, .. } = self;
        let collect = async {
            let mut text = String::new();
            while let Some(event) = events.recv().await {
                match event {
                    GenerationEvent::Token { text: piece, .. } => text.push_str(&piece),
                    GenerationEvent::Done { finish_reason, tokens } => return Ok((text, tokens, finish_reason)),
                    GenerationEvent::Error(e) => return Err(ApiError::from(e)),
                }
            }
            Err(lost(&origin.model))
        };
        match tokio::time::timeout_at(deadline.at.into(), collect).await {
            Ok(result) => {
                let (text, tokens, finish_reason) = result?;
                Ok(Finished { origin, text, tokens, finish_reason })
            }
            Err(_) => Err(deadline.exceeded(&origin.model)),
        }
    }

    /// Waits for the first event, so that a sequence that cannot start (queue timeout, model error) still gets a
    /// proper status code before a stream answers 200.
    pub async fn first_event(&mut self) -> Result<GenerationEvent, ApiError> {
        match tokio::time::timeout_at(self.deadline.at.into(), self.events.recv()).await {
            Err(_) => Err(self.deadline.exceeded(&self.origin.model)),
            Ok(None) => Err(lost(&self.origin.model)),
            Ok(Some(GenerationEvent::Error(e))) => Err(ApiError::from(e)),
            Ok(Some(first)) => Ok(first),
        }
    }

    /// `first`, then every later event up to and including the last (`Done` or `Error`; `None` if the scheduler
    /// stopped without one). A client that disconnects drops the stream and with it the receiver, which ends the
    /// sequence at its next step.
    pub fn events_from(self, first: GenerationEvent) -> impl Stream<Item = Option<GenerationEvent>> + Send {
        // The receiver (and the version) while the sequence runs; None after its last event. A closed channel
        // reads as None.
        let rest = stream::unfold(Some((self.events, self.serving)), |running| async move {
            let (mut receiver, serving) = running?;
            let event = receiver.recv().await;
            let running = matches!(event, Some(GenerationEvent::Token { .. }));
            Some((event, running.then_some((receiver, serving))))
        });
        stream::once(async move { Some(first) }).chain(rest)
    }
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
