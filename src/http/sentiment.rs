//! `POST /v1/models/{name}/sentiment` and `POST /v1/sentiment`: one text or a list of texts in, a label and the
//! score of every label per text out. A text longer than the model's window runs as several windows; the windows
//! of all callers are batched together by the model's pool.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, JsonShape, Serving, TaskRoute};
use super::wrong_backend;
use crate::engine::EngineError;
use crate::model_toml::TaskKind;
use crate::service::offload::decoding;
use crate::service::{ApiError, AppState};
use crate::tasks::sentiment::{Classification, TokenizedText};
use crate::tasks::Backend;
use crate::tasks::TaskError;

/// Most texts in one request.
pub const MAX_TEXTS: usize = 64;
/// Longest text, in bytes of UTF-8 (about 2,500 tokens of English; model.toml `[text] max_windows` may refuse
/// it sooner).
pub const MAX_TEXT_BYTES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SentimentParams {
    text: Option<String>,
    texts: Option<Vec<String>>,
}

impl JsonShape for SentimentParams {
    const SHAPE: &'static str = r#"{"text": "..."} or {"texts": ["...", ...]}"#;
}

pub struct Sentiment;

impl TaskRoute for Sentiment {
    const TASK: TaskKind = TaskKind::TextClassification;
}

#[derive(Serialize)]
pub(super) struct SentimentResponse {
    model: String,
    version: u64,
    results: Vec<TextResult>,
}

#[derive(Serialize)]
struct TextResult {
    #[serde(flatten)]
    classification: Classification,
    /// How many windows of the model's `[text] max_tokens` the text was read as (1 for a text that fits).
    windows: usize,
}

pub async fn sentiment(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<Sentiment>,
    JsonBody(params): JsonBody<SentimentParams>,
) -> Result<Json<SentimentResponse>, ApiError> {
    let Backend::TextClassification(pool) = &loaded.backend else {
        return Err(wrong_backend(&name, Sentiment::TASK));
    };
    let Texts { texts, from_list } = validate(params)?;

    pool.check_room()?;
    let tokenizer = pool.task().clone();
    // Tokenising up to MAX_TEXTS long texts takes milliseconds: keep it off the async workers.
    let windows = decoding("tokenisation", move || {
        (texts.iter().enumerate())
            .map(|(i, text)| {
                tokenizer.windows(text).map_err(|e| e.map_message(|m| format!("{}: {m}", field_name(from_list, i))))
            })
            .collect::<Result<Vec<Vec<TokenizedText>>, TaskError>>()
    })
    .await?;
    let counts: Vec<usize> = windows.iter().map(Vec::len).collect();
    let rows = (pool.infer_all(windows.into_iter().flatten().collect(), state.limits.request_timeout).await).map_err(
        |error| match error {
            // Said in the request's own terms: a place in the queue is a window here.
            EngineError::LargerThanQueue { entries, capacity, .. } => ApiError::payload_too_large(format!(
                "the texts need {entries} windows of {} tokens together; the model queues at most {capacity} \
                 (batching.queue_capacity): send fewer or shorter texts per request",
                pool.task().max_tokens
            )),
            other => other.into(),
        },
    )?;
    let mut rows = rows.into_iter();
    let results = (counts.into_iter())
        .map(|count| {
            let pooled = pool.task().pool(&rows.by_ref().take(count).collect::<Vec<_>>());
            TextResult { classification: pool.task().classification(&pooled), windows: count }
        })
        .collect();
    Ok(Json(SentimentResponse { model: name, version: loaded.version, results }))
}

/// The request's texts, and whether they came as the list `texts` (which names them in errors).
struct Texts {
    texts: Vec<String>,
    from_list: bool,
}

/// How an error names the request's `i`-th text.
fn field_name(from_list: bool, i: usize) -> String {
    if from_list {
        format!("texts[{i}]")
    } else {
        "text".to_string()
    }
}

/// Exactly one of `text` and `texts`; 1 to MAX_TEXTS texts, each non-blank and at most MAX_TEXT_BYTES.
fn validate(params: SentimentParams) -> Result<Texts, ApiError> {
    let invalid = |message: String| Err(ApiError::validation(message));
    let (texts, from_list) = match (params.text, params.texts) {
        (Some(text), None) => (vec![text], false),
        (None, Some(texts)) => (texts, true),
        (Some(_), Some(_)) => return invalid("send either `text` or `texts`, not both".into()),
        (None, None) => return invalid(r#"the body needs `text` (a string) or `texts` (a list of strings)"#.into()),
    };
    if texts.is_empty() {
        return invalid("texts must hold at least one text".into());
    }
    if texts.len() > MAX_TEXTS {
        return invalid(format!("texts holds {} texts; at most {MAX_TEXTS} are allowed per request", texts.len()));
    }
    let name = |i: usize| field_name(from_list, i);
    for (i, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            return invalid(format!("{} is empty", name(i)));
        }
        if text.len() > MAX_TEXT_BYTES {
            return invalid(format!("{} is {} bytes long; the limit is {MAX_TEXT_BYTES}", name(i), text.len()));
        }
    }
    Ok(Texts { texts, from_list })
}
