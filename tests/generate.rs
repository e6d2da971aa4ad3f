//! Text generation over real HTTP with the real `shakespeare` model: seeds, stop sequences, streaming,
//! continuous batching, cancellation and validation.

mod common;

use std::time::{Duration, Instant};

use common::{client, error_of, run_python_check, TempRepo, TestServer};
use serde_json::{json, Value};

async fn shakespeare_server(overrides: &[(&str, &str)]) -> (TempRepo, TestServer) {
    let repo = TempRepo::of("shakespeare", overrides);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    (repo, server)
}

async fn generate(server: &TestServer, body: Value) -> reqwest::Response {
    server.post_body("/v1/generate", "application/json", body.to_string()).await
}

async fn generate_ok(server: &TestServer, body: Value) -> Value {
    let response = generate(server, body.clone()).await;
    assert_eq!(response.status(), 200, "{body}");
    response.json().await.unwrap()
}

/// A `text/event-stream` body as (event, data) pairs.
fn parse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start().to_string()).unwrap_or_default()
            };
            (field("event:"), serde_json::from_str(&field("data:")).expect("event data is JSON"))
        })
        .collect()
}

#[tokio::test]
async fn a_seed_reproduces_the_text_and_max_tokens_ends_it() {
    let (_repo, server) = shakespeare_server(&[]).await;
    let body =
        json!({"prompt": "ROMEO.\n", "max_tokens": 120, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 42});
    let first = generate_ok(&server, body.clone()).await;
    let second = generate_ok(&server, body.clone()).await;
    assert_eq!(first["text"], second["text"]);
    assert_eq!((first["finish_reason"].as_str(), first["tokens"].as_u64()), (Some("length"), Some(120)));
    assert_eq!(first["text"].as_str().unwrap().len(), 120, "ASCII output: one character per token");
    assert_eq!((first["model"].as_str(), first["seed"].as_u64()), (Some("shakespeare"), Some(42)));
    let other = generate_ok(&server, json!({"prompt": "ROMEO.\n", "max_tokens": 120, "seed": 43})).await;
    assert_ne!(first["text"], other["text"]);
    // Without a seed the server draws one and reports it; sending it back reproduces the text.
    let drawn = generate_ok(&server, json!({"prompt": "ROMEO.\n", "max_tokens": 60})).await;
    let seed = drawn["seed"].as_u64().unwrap();
    let again = generate_ok(&server, json!({"prompt": "ROMEO.\n", "max_tokens": 60, "seed": seed})).await;
    assert_eq!(drawn["text"], again["text"]);

    // The model learned what a play looks like: after a scene heading come speaker headings and verse lines.
    let body = json!({"prompt": "ACT I.\n\nScene I. A street.\n\n", "max_tokens": 400, "temperature": 0.7, "seed": 1});
    let scene = generate_ok(&server, body).await;
    let text = scene["text"].as_str().unwrap();
    let speakers = text.lines().filter(|l| l.len() < 20 && l.ends_with('.') && l.starts_with(char::is_uppercase));
    assert!(speakers.count() >= 2, "{text}");
    assert!(text.lines().filter(|l| l.len() > 20).count() >= 3, "{text}");
    // Greedy decoding (temperature 0) is deterministic without a seed.
    let greedy = json!({"prompt": "KING.\n", "max_tokens": 50, "temperature": 0});
    assert_eq!(generate_ok(&server, greedy.clone()).await["text"], generate_ok(&server, greedy).await["text"]);
}

#[tokio::test]
async fn a_stop_sequence_ends_the_text() {
    let (_repo, server) = shakespeare_server(&[]).await;
    let body = json!({"prompt": "KING.\nWhat say you", "max_tokens": 500, "seed": 7, "stop": ["\n", "zzz"]});
    let result = generate_ok(&server, body).await;
    let text = result["text"].as_str().unwrap();
    assert_eq!(result["finish_reason"], "stop", "{result}");
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
    assert_eq!(result["tokens"].as_u64().unwrap() as usize, text.len());
}

#[tokio::test]
async fn a_stream_delivers_the_same_text_as_the_plain_answer() {
    let (_repo, server) = shakespeare_server(&[]).await;
    let body = json!({"prompt": "HAMLET.\n", "max_tokens": 80, "seed": 5, "stop": ["\n\n"]});
    let plain = generate_ok(&server, body.clone()).await;
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let response = generate(&server, streamed_body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = parse_events(&response.text().await.unwrap());
    let (last_name, done) = events.last().unwrap();
    assert_eq!(last_name, "done");
    let tokens: Vec<&Value> = events.iter().filter(|(name, _)| name == "token").map(|(_, data)| data).collect();
    assert_eq!(tokens.len() + 1, events.len(), "only token events before done");
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, plain["text"].as_str().unwrap());
    assert_eq!(done["tokens"], plain["tokens"]);
    assert_eq!(done["finish_reason"], plain["finish_reason"]);
}

#[tokio::test]
async fn a_dropped_stream_frees_its_slot() {
    // One slot: the second request can only run once the first stream's sequence is gone.
    let (_repo, server) = shakespeare_server(&[("max_batch_size", "1")]).await;
    let body = json!({"prompt": "LEAR.\n", "max_tokens": 2000, "stream": true, "seed": 1});
    let mut response = generate(&server, body).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first event");
    assert!(String::from_utf8_lossy(&first).contains("event: token"));
    drop(response);

    let started = Instant::now();
    let next = generate_ok(&server, json!({"prompt": "FOOL.\n", "max_tokens": 20, "seed": 2})).await;
    assert_eq!(next["tokens"], 20);
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    let generated = server.metric(r#"ember_generated_tokens_total{model="shakespeare"}"#).await.unwrap();
    assert!(generated < 1000.0, "the dropped stream went on generating: {generated} tokens");
    // The gauge is updated right after the step that finished the last sequence.
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.metric(r#"ember_active_sequences{model="shakespeare"}"#).await != Some(0.0) {
        assert!(Instant::now() < deadline, "sequences still active after every caller got its answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sequences_advance_together_and_a_new_one_joins_without_waiting() {
    // 2,000 tokens took 0.2-0.3 s here, about when the short ones arrived (a race that failed 5 times in 16): the
    // long sequence is 10 times longer, so it is still generating whatever the machine's speed.
    let (_repo, server) = shakespeare_server(&[("max_tokens_limit", "20000")]).await;
    let long = tokio::spawn({
        let url = server.url("/v1/generate");
        async move {
            let body = json!({"prompt": "PROSPERO.\n", "max_tokens": 20000, "seed": 3});
            let response = client().post(url).json(&body).send().await.unwrap();
            (Instant::now(), response.json::<Value>().await.unwrap())
        }
    });
    // Let the long sequence start, then send short ones: they finish long before it does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shorts = (0..4).map(|i| generate_ok(&server, json!({"prompt": "ARIEL.\n", "max_tokens": 10, "seed": i})));
    let results = futures_util::future::join_all(shorts).await;
    let shorts_done = Instant::now();
    assert!(results.iter().all(|r| r["tokens"] == 10));
    let (long_done, long_result) = long.await.unwrap();
    assert_eq!(long_result["tokens"], 20000);
    assert!(shorts_done < long_done, "the short requests waited for the long one");
    let steps = server.metric(r#"ember_batch_size_count{model="shakespeare"}"#).await.unwrap();
    let sequence_steps = server.metric(r#"ember_batch_size_sum{model="shakespeare"}"#).await.unwrap();
    assert!(sequence_steps > steps, "no step advanced more than one sequence");
    let tokens = server.metric(r#"ember_generated_tokens_total{model="shakespeare"}"#).await.unwrap();
    assert_eq!(tokens, 20040.0);
}

#[tokio::test]
async fn bad_requests_get_errors_that_name_the_field_and_range() {
    let (_repo, server) = shakespeare_server(&[]).await;
    let cases = [
        (json!({}), "missing field `prompt`"),
        (json!({"prompt": ""}), "prompt must not be empty"),
        (json!({"prompt": "a", "max_tokens": 2001}), "max_tokens must be between 1 and 2000, got 2001"),
        (json!({"prompt": "a", "temperature": -0.5}), "temperature must be between 0 and 5, got -0.5"),
        (json!({"prompt": "a", "top_k": 257}), "top_k must be between 0 (off) and 256, got 257"),
        (json!({"prompt": "a", "top_p": 1.5}), "top_p must be greater than 0 and at most 1, got 1.5"),
        (json!({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}), "stop holds at most 4 sequences"),
        (json!({"prompt": "a", "stream": "yes"}), "stream: invalid type"),
        (json!({"prompt": "a", "seed": -1}), "seed: invalid value"),
        (json!({"prompt": "a", "n": 2}), "unknown field `n`"),
        (json!({"prompt": "x".repeat(4097)}), "at most 4096"),
    ];
    for (body, message) in cases {
        let (status, kind, error) = error_of(generate(&server, body.clone()).await).await;
        assert_eq!((status, kind.as_str()), (422, "validation"), "{body}: {error}");
        assert!(error.contains(message), "{body}: {error}");
    }
    let (status, _, _) = error_of(server.post_body("/v1/generate", "text/plain", "To be").await).await;
    assert_eq!(status, 415);
    // A stream that cannot start answers with a status, not an event stream.
    let (status, _, _) = error_of(generate(&server, json!({"prompt": "", "stream": true})).await).await;
    assert_eq!(status, 422);
}

/// A prompt longer than `generation.prefill_budget_tokens` runs through the model in chunks, between the running
/// sequences' steps; the model's state carries from one chunk to the next, so the text is the one a prefill of
/// the whole prompt gives.
#[tokio::test]
async fn a_long_prompt_prefilled_in_chunks_gives_the_same_text() {
    let (_whole_repo, whole) = shakespeare_server(&[("prefill_budget_tokens", "4096")]).await;
    let (_chunked_repo, chunked) = shakespeare_server(&[("prefill_budget_tokens", "7")]).await;
    let prompt = "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\
        Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n\
        That thou her maid art far more fair than she.\n\nJULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\n";
    let body = json!({"prompt": prompt, "max_tokens": 80, "temperature": 0});
    let (expected, chunked) = (generate_ok(&whole, body.clone()).await, generate_ok(&chunked, body).await);
    assert_eq!(expected["text"], chunked["text"]);
    assert_eq!(chunked["tokens"].as_u64(), Some(80));
}

/// tests/openai/client_check.py with the `openai` Python client (installed in the venv by the setup): the model
/// list, completions streamed and not with the same text /v1/generate gives for the same seed, usage, stop, echo,
/// and the errors as the client's own exception classes.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_client_completes_as_v1_generate_does() {
    let repo = TempRepo::of("shakespeare", &[]);
    repo.add("iris", &[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    run_python_check("tests/openai/client_check.py", vec![server.base.clone()], "openai client checks passed").await;
}

/// `/v1/completions` answers errors in OpenAI's shape, with ember's `error_type` as the code, even before the body
/// is parsed.
#[tokio::test]
async fn completions_errors_have_openai_s_shape() {
    let (_repo, server) = shakespeare_server(&[]).await;
    let cases = [
        ("application/json", "{", 400, "bad_request", "invalid_request_error"),
        ("text/plain", "hi", 415, "unsupported_media_type", "invalid_request_error"),
        ("application/json", r#"{"model": "nope", "prompt": "x"}"#, 404, "not_found", "invalid_request_error"),
        (
            "application/json",
            r#"{"model": "shakespeare", "prompt": "x", "best_of": 3}"#,
            422,
            "validation",
            "invalid_request_error",
        ),
        (
            "application/json",
            r#"{"model": "shakespeare", "prompt": ["a", "b"]}"#,
            422,
            "validation",
            "invalid_request_error",
        ),
    ];
    for (content_type, body, status, code, kind) in cases {
        let response = server.post_body("/v1/completions", content_type, body.to_string()).await;
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], kind, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
}
