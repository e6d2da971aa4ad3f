//! Sentiment over real HTTP with the real `sentiment` model, and the Rust tokenizer against the Python one.

mod common;

use common::{error_of, root, TempRepo, TestServer};
use ember::model_toml::TextPreprocessing;
use ember::tasks::sentiment::TextClassifier;
use serde_json::{json, Value};

#[test]
fn the_rust_tokenizer_gives_the_python_ids_and_windows() {
    let path = root().join("tests/data/sentiment_tokens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make models`)", path.display()));
    let reference: Value = serde_json::from_str(&text).unwrap();
    let config: TextPreprocessing = serde_json::from_value(reference["text"].clone()).unwrap();
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let tokenizer_file = root().join("models/sentiment/tokenizer.json");
    let classifier = TextClassifier::load(&tokenizer_file, labels.clone(), &config).unwrap();
    let truncating = TextPreprocessing { window_stride: None, ..config.clone() };
    let truncating = TextClassifier::load(&tokenizer_file, labels, &truncating).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<Vec<i64>> = serde_json::from_value(case["windows"].clone()).unwrap();
        let windows: Vec<Vec<i64>> = classifier.windows(text).unwrap().iter().map(|w| w.ids().to_vec()).collect();
        assert_eq!(windows, expected, "windows of {text:?}");
        // Truncation reads the first window, as fine-tuning does.
        assert_eq!(truncating.windows(text).unwrap().len(), 1);
        assert_eq!(truncating.tokenize(text).unwrap().ids(), &expected[0][..], "{text:?}");
        assert!(windows.iter().all(|w| w.len() <= config.max_tokens));
    }
    // The long cases fill their windows and run to several.
    assert!(cases.iter().any(|c| c["windows"].as_array().unwrap().len() >= 3));
    assert!(cases.iter().any(|c| c["windows"][0].as_array().unwrap().len() == config.max_tokens));
}

async fn sentiment_server() -> (TempRepo, TestServer) {
    let repo = TempRepo::of("sentiment", &[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    (repo, server)
}

async fn post_json(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    server.post_body(path, "application/json", body.to_string()).await
}

#[tokio::test]
async fn known_sentences_get_the_right_label() {
    let (_repo, server) = sentiment_server().await;
    let positive = [
        "A gripping, beautifully acted film that I would happily watch again.",
        "The best comedy of the year: sharp, warm and very funny.",
        "What a wonderful, moving story.",
    ];
    let negative = [
        "A tedious, badly written mess that wastes a talented cast.",
        "Boring from start to finish; I walked out after an hour.",
        "The worst movie I have seen in years.",
    ];
    let texts: Vec<&str> = positive.iter().chain(&negative).copied().collect();
    let response = post_json(&server, "/v1/sentiment", json!({ "texts": texts })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "sentiment");
    assert_eq!(body["version"], 1);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), texts.len());
    for (text, result) in texts.iter().zip(results) {
        let expected = if positive.contains(text) { "positive" } else { "negative" };
        assert_eq!(result["label"], expected, "{text}: {result}");
        let (neg, pos) =
            (result["scores"]["negative"].as_f64().unwrap(), result["scores"]["positive"].as_f64().unwrap());
        assert!((neg + pos - 1.0).abs() < 1e-4 && result["score"].as_f64().unwrap() >= 0.5, "{result}");
        assert_eq!(result["windows"], 1, "a sentence fits one window: {result}");
    }

    // One text, on the named route.
    let response = post_json(&server, "/v1/models/sentiment/sentiment", json!({ "text": negative[0] })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["label"], "negative");
}

#[tokio::test]
async fn padding_beside_a_longer_text_does_not_change_a_score_and_callers_share_batches() {
    let (_repo, server) = sentiment_server().await;
    let short = "Not bad at all.";
    let alone = post_json(&server, "/v1/sentiment", json!({ "text": short })).await.json::<Value>().await.unwrap();
    let long = "An ambitious film whose many subplots, flashbacks and characters never quite come together, \
                though the photography is often lovely and the lead performance is committed.";
    let together =
        post_json(&server, "/v1/sentiment", json!({ "texts": [long, short] })).await.json::<Value>().await.unwrap();
    let score = |body: &Value, i: usize| body["results"][i]["scores"]["positive"].as_f64().unwrap();
    assert!((score(&alone, 0) - score(&together, 1)).abs() < 1e-4, "{alone} vs {together}");

    // Concurrent callers: their texts run in shared batches.
    let requests = (0..24).map(|i| {
        let server = &server;
        async move {
            let text = format!("Review number {i}: a fine and pleasant film.");
            post_json(server, "/v1/sentiment", json!({ "text": text })).await.status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let batches = server.metric(r#"ember_batch_size_count{model="sentiment"}"#).await.unwrap();
    let texts = server.metric(r#"ember_batch_size_sum{model="sentiment"}"#).await.unwrap();
    assert!(texts > batches, "{texts} texts ran in {batches} batches: none was shared");
}

/// Movie-review sentences of the held-out split joined by label into texts of 600-1,500 characters (written by
/// the export with its own windows and pooled probabilities): ember reads each whole and gives the same scores.
#[tokio::test]
async fn long_texts_are_read_as_windows_and_pooled_as_the_export_measured() {
    let path = root().join("tests/data/sentiment_long_texts.json");
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap();
    assert_eq!(cases.len(), 16);
    let (_repo, server) = sentiment_server().await;
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let response = post_json(&server, "/v1/sentiment", json!({ "texts": texts })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let mut right = 0;
    for (case, result) in cases.iter().zip(body["results"].as_array().unwrap()) {
        assert_eq!(result["windows"], case["windows"], "{result}");
        assert!(case["windows"].as_u64().unwrap() >= 2, "{}", case["text"]);
        let positive = |v: &Value| v["scores"]["positive"].as_f64().unwrap();
        assert!((positive(result) - positive(case)).abs() < 2e-3, "ember {result} vs the export {}", case["scores"]);
        right += usize::from(result["label"] == case["label"]);
    }
    assert!(right >= 14, "{right} of 16 long texts labelled right");
}

/// A text's windows are bounded per text (`[text] max_windows`) and per request (the queue's capacity), before
/// any of them runs.
#[tokio::test]
async fn texts_that_need_too_many_windows_are_refused_by_name() {
    let (_repo, server) = sentiment_server().await;
    let batches = || server.metric(r#"ember_batch_size_count{model="sentiment"}"#);
    let before = batches().await;
    // 4,999 one-token words: 52 windows of 126 text tokens 96 apart, over the model's 32.
    let dense = "a ".repeat(4_999);
    let (status, kind, error) = error_of(post_json(&server, "/v1/sentiment", json!({ "text": dense })).await).await;
    assert_eq!((status, kind.as_str()), (413, "payload_too_large"), "{error}");
    assert!(error.contains("text: ") && error.contains("52 windows") && error.contains("text.max_windows"), "{error}");

    // 64 texts of 500 tokens: 5 windows each, 320 together, over the queue's 256.
    let texts = vec!["good ".repeat(500); 64];
    let (status, _, error) = error_of(post_json(&server, "/v1/sentiment", json!({ "texts": texts })).await).await;
    assert_eq!(status, 413, "{error}");
    assert!(error.contains("320 windows") && error.contains("batching.queue_capacity"), "{error}");
    assert_eq!(batches().await, before, "a refused request ran");

    // The longest text a request may send, in words, still fits: about 2,000 tokens, 21 windows.
    let words = "the film is good ".repeat(10_000 / 17);
    let response = post_json(&server, "/v1/sentiment", json!({ "text": words })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["results"][0]["windows"].as_u64().unwrap() > 16, "{body}");
}

#[tokio::test]
async fn bad_requests_get_errors_that_name_the_problem() {
    let (_repo, server) = sentiment_server().await;
    let long_text = "a".repeat(10_001);
    let too_many: Vec<String> = (0..65).map(|i| format!("text {i}")).collect();
    let cases = [
        (json!({}), 422, "the body needs `text`"),
        (json!({"text": "a", "texts": ["b"]}), 422, "not both"),
        (json!({"texts": []}), 422, "at least one text"),
        (json!({"texts": too_many}), 422, "at most 64"),
        (json!({"text": long_text}), 422, "the limit is 10000"),
        (json!({"texts": ["fine", "  "]}), 422, "texts[1] is empty"),
        (json!({"text": 5}), 422, "text: invalid type"),
        (json!({"text": "a", "top_k": 1}), 422, "unknown field `top_k`"),
    ];
    for (body, status, message) in cases {
        let (actual, kind, error) = error_of(post_json(&server, "/v1/sentiment", body.clone()).await).await;
        assert_eq!(actual, status, "{body}: {error}");
        assert_eq!(kind, "validation");
        assert!(error.contains(message), "{body}: {error}");
    }
    let (status, kind, _) = error_of(server.post_body("/v1/sentiment", "text/plain", "great film").await).await;
    assert_eq!((status, kind.as_str()), (415, "unsupported_media_type"));
    let (status, kind, _) = error_of(server.post_body("/v1/sentiment", "application/json", "{\"text\": ").await).await;
    assert_eq!((status, kind.as_str()), (400, "bad_request"));
    let (status, _, error) =
        error_of(post_json(&server, "/v1/models/nope/sentiment", json!({"text": "a"})).await).await;
    assert_eq!(status, 404, "{error}");
}
