//! OpenAI-compatible text completions: `POST /v1/completions` on any text-generation model, so that the `openai`
//! clients (and the tools built on them) work against ember with `base_url = "http://host:8080/v1"`.
//!
//! The request is translated into ember's own `GenerateRequest` and runs through the same scheduler, limits and
//! deadline as `/v1/generate`: the same seed gives the same text on both routes. What differs is only the shape:
//! OpenAI's body and defaults (`max_tokens` 16, `temperature` 1), its streaming chunks ending in `data: [DONE]`,
//! and its error shape. `GET /v1/models` answers OpenAI's list shape beside ember's (see `v1.rs`).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::error::ErrorShape;
use super::extract::{JsonBody, JsonShape, MetricsLabel};
use super::generate::{Finished, Origin, Sequence};
use super::REQUEST_ID;
use crate::model_toml::TaskKind;
use crate::service::{ApiError, AppState};
use crate::tasks::generate::{FinishReason, GenerateRequest, GenerationEvent};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/completions", post(completions))
}

/// OpenAI's default completion length (ember's own route uses the model's `default_max_tokens`).
const DEFAULT_MAX_TOKENS: i64 = 16;
/// OpenAI's default temperature.
const DEFAULT_TEMPERATURE: f64 = 1.0;

/// The body of `POST /v1/completions`, as OpenAI documents it. Fields ember cannot honour are accepted only at
/// the value that means "off", so that a client never gets an answer computed differently from what it asked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    model: String,
    prompt: Prompt,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// Not OpenAI's, but vLLM's and TGI's: keep only the k most probable tokens.
    top_k: Option<i64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    echo: bool,
    n: Option<i64>,
    best_of: Option<i64>,
    logprobs: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    suffix: Option<String>,
    /// An end-user id for abuse tracking at OpenAI; ember has no use for it.
    #[allow(dead_code)]
    user: Option<String>,
}

impl JsonShape for CompletionRequest {
    const SHAPE: &'static str = r#"{"model": "shakespeare", "prompt": "...", "max_tokens": 16}"#;
}

/// A prompt: one text, or a list holding exactly one text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    /// Token ids, which OpenAI also accepts; refused with a message that says so (the value is not read).
    Other(#[allow(dead_code)] serde_json::Value),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the handler needs besides ember's own request.
struct Translated {
    model: String,
    request: GenerateRequest,
    echo: Option<String>,
    include_usage: bool,
}

impl CompletionRequest {
    /// ember's request for the same completion, or a 422 that names the field ember cannot honour.
    fn translate(self) -> Result<Translated, ApiError> {
        let invalid = |message: String| Err(ApiError::validation(message));
        let prompt = match self.prompt {
            Prompt::Text(text) => text,
            Prompt::Texts(mut texts) if texts.len() == 1 => texts.remove(0),
            Prompt::Texts(texts) => {
                return invalid(format!(
                    "prompt holds {} texts; ember completes one prompt per request: send one text",
                    texts.len()
                ))
            }
            Prompt::Other(_) => return invalid("prompt must be a text (token ids are not accepted)".into()),
        };
        let must_be_off = [
            ("n", self.n.is_some_and(|n| n != 1), "1 (one completion per request)"),
            ("best_of", self.best_of.is_some_and(|n| n != 1), "1"),
            ("logprobs", self.logprobs.is_some(), "null (ember does not return log probabilities)"),
            ("presence_penalty", self.presence_penalty.is_some_and(|p| p != 0.0), "0"),
            ("frequency_penalty", self.frequency_penalty.is_some_and(|p| p != 0.0), "0"),
            ("logit_bias", self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()), "empty"),
            ("suffix", self.suffix.as_ref().is_some_and(|s| !s.is_empty()), "empty (no insertion)"),
        ];
        if let Some((field, _, allowed)) = must_be_off.iter().find(|(_, set, _)| *set) {
            return invalid(format!("{field} must be {allowed} on ember"));
        }
        if self.stream_options.is_some() && !self.stream {
            return invalid("stream_options is only allowed with stream: true".into());
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        let echo = self.echo.then(|| prompt.clone());
        let request = GenerateRequest {
            prompt,
            max_tokens: Some(self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
            temperature: Some(self.temperature.unwrap_or(DEFAULT_TEMPERATURE)),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop,
            stream: self.stream,
        };
        let include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(Translated { model: self.model, request, echo, include_usage })
    }
}

#[derive(Serialize)]
struct Choice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

impl Usage {
    fn of(origin: &Origin, completion_tokens: usize) -> Usage {
        let prompt_tokens = origin.prompt_tokens;
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// One completion object (the whole answer) or chunk (one piece of a stream): OpenAI uses the same shape.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    system_fingerprint: &'a str,
    /// ember's addition: the seed used, so that a request without one can be reproduced.
    seed: u64,
}

/// The fields every object of one answer shares.
struct Header {
    id: String,
    created: u64,
    origin: Origin,
    /// ember's version and the model version that answered.
    fingerprint: String,
}

impl Header {
    fn new(id: String, created: u64, origin: Origin) -> Header {
        let fingerprint = format!("ember-{}-v{}", env!("CARGO_PKG_VERSION"), origin.version);
        Header { id, created, origin, fingerprint }
    }

    fn completion<'a>(&'a self, choices: Vec<Choice<'a>>, usage: Option<Usage>) -> Completion<'a> {
        Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.origin.model,
            choices,
            usage,
            system_fingerprint: &self.fingerprint,
            seed: self.origin.seed,
        }
    }

    fn chunk(&self, text: &str, finish_reason: Option<FinishReason>) -> Event {
        let choice = Choice { text, index: 0, logprobs: None, finish_reason };
        data_event(&self.completion(vec![choice], None))
    }
}

fn data_event(data: &impl Serialize) -> Event {
    // Serialising these plain structs cannot fail.
    Event::default().data(serde_json::to_string(data).unwrap_or_default())
}

async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    label: MetricsLabel,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Response {
    match complete(state, headers, label, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_as(ErrorShape::OpenAi),
    }
}

async fn complete(
    state: AppState,
    headers: HeaderMap,
    label: MetricsLabel,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(body) = body?;
    let Translated { model, request, echo, include_usage } = body.translate()?;
    label.set(&state, &model);
    let loaded = state.ready_model(&model, TaskKind::TextGeneration).await?;
    let stream = request.stream;
    let mut sequence = Sequence::start(&state, model, &loaded, request)?;
    // The request id ties the completion to ember's log lines.
    let request_id = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    let id = format!("cmpl-{request_id}");
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if !stream {
        let Finished { origin, text, tokens, finish_reason } = sequence.collect().await?;
        let header = Header::new(id, created, origin);
        let text = match echo {
            Some(prompt) => prompt + &text,
            None => text,
        };
        let choice = Choice { text: &text, index: 0, logprobs: None, finish_reason: Some(finish_reason) };
        let usage = Usage::of(&header.origin, tokens);
        return Ok(Json(header.completion(vec![choice], Some(usage))).into_response());
    }
    let first = sequence.first_event().await?;
    let header = Header::new(id, created, sequence.origin().clone());
    let echoed = echo.map(|prompt| header.chunk(&prompt, None));
    let events =
        sequence.events_from(first).flat_map(move |event| stream::iter(to_chunks(event, &header, include_usage)));
    let done = stream::once(async { Event::default().data("[DONE]") });
    let all = stream::iter(echoed).chain(events).chain(done).map(Ok::<_, Infallible>);
    Ok(Sse::new(all).into_response())
}

/// The chunks one generation event becomes: a token's text; at the end a chunk with the finish reason (and one
/// with the usage when asked); an error as OpenAI streams it, `data: {"error": {...}}`.
fn to_chunks(event: Option<GenerationEvent>, header: &Header, include_usage: bool) -> Vec<Event> {
    match event {
        Some(GenerationEvent::Token { text, .. }) => vec![header.chunk(&text, None)],
        Some(GenerationEvent::Done { finish_reason, tokens }) => {
            let mut chunks = vec![header.chunk("", Some(finish_reason))];
            if include_usage {
                chunks.push(data_event(&header.completion(Vec::new(), Some(Usage::of(&header.origin, tokens)))));
            }
            chunks
        }
        Some(GenerationEvent::Error(e)) => vec![error_event(ApiError::from(e))],
        None => vec![error_event(super::generate::lost(&header.origin.model))],
    }
}

fn error_event(error: ApiError) -> Event {
    data_event(&error.event_body_as(ErrorShape::OpenAi))
}

/// A model as OpenAI's `GET /v1/models` lists it; ember's own model objects carry the same four fields.
#[derive(Debug, Clone, Serialize)]
pub struct OpenAiModel {
    pub id: String,
    pub object: &'static str,
    /// When the version on offer was made (its folder's modification time), in Unix seconds.
    pub created: u64,
    pub owned_by: &'static str,
}

impl OpenAiModel {
    pub fn new(id: String, created: u64) -> OpenAiModel {
        OpenAiModel { id, object: "model", created, owned_by: "ember" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: serde_json::Value) -> Result<Translated, ApiError> {
        serde_json::from_value::<CompletionRequest>(body).unwrap().translate()
    }

    #[test]
    fn openai_s_defaults_and_shapes_become_ember_s_request() {
        let t = translate(serde_json::json!({"model": "m", "prompt": ["Hi"], "stop": "\n"})).unwrap();
        assert_eq!((t.model.as_str(), t.request.prompt.as_str()), ("m", "Hi"));
        assert_eq!((t.request.max_tokens, t.request.temperature), (Some(16), Some(1.0)));
        assert_eq!(t.request.stop, ["\n"]);
        assert!(t.echo.is_none() && !t.include_usage);
        let t = translate(serde_json::json!({"model": "m", "prompt": "Hi", "echo": true, "stream": true,
            "stream_options": {"include_usage": true}, "n": 1, "logit_bias": {}, "presence_penalty": 0}))
        .unwrap();
        assert_eq!(t.echo.as_deref(), Some("Hi"));
        assert!(t.include_usage && t.request.stream);
    }

    #[test]
    fn what_ember_cannot_honour_is_refused_naming_the_field() {
        let refused = |body: serde_json::Value, field: &str| {
            let message = translate(body).err().expect("refused").message;
            assert!(message.starts_with(field), "{message}");
        };
        refused(serde_json::json!({"model": "m", "prompt": "x", "n": 2}), "n must be 1");
        refused(serde_json::json!({"model": "m", "prompt": "x", "logprobs": 1}), "logprobs");
        refused(serde_json::json!({"model": "m", "prompt": "x", "frequency_penalty": 0.5}), "frequency_penalty");
        refused(serde_json::json!({"model": "m", "prompt": "x", "suffix": "end"}), "suffix");
        refused(serde_json::json!({"model": "m", "prompt": ["a", "b"]}), "prompt holds 2 texts");
        refused(serde_json::json!({"model": "m", "prompt": [1, 2]}), "prompt must be a text");
        refused(serde_json::json!({"model": "m", "prompt": "x", "stream_options": {}}), "stream_options");
    }
}
