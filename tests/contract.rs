//! The HTTP contract without model files: `router(state)` driven in-process with `tower::ServiceExt::oneshot`,
//! over a repository of the default models' model.toml files whose modules are stand-ins (`StandIn`) that return
//! well-shaped tensors. These tests check statuses, error bodies, limits, content types and parameter
//! validation; what a model decides is tested with real models elsewhere (classify.rs, sentiment.rs, ...).
//! No TorchScript is loaded, so they run in seconds (`make test-fast`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use ember::engine::{StandIn, StandInForward};
use ember::flags::ServeConfig;
use ember::http::router;
use ember::metrics::Metrics;
use ember::model_toml::TaskKind;
use ember::registry::Registry;
use ember::repository::{ModelSpec, Repository};
use ember::service::AppState;
use serde_json::{json, Value};
use tch::{Kind, Tensor};
use tower::ServiceExt;

/// The default models whose model.toml, labels and tokenizer are in git; each gets an empty version 1.
const MODELS: [&str; 5] = ["mobilenet_v2", "sentiment", "shakespeare", "style_graffiti", "iris"];

/// Well-shaped outputs for each task's inputs. The classifiers favour their last label; generation favours 'a'.
fn stand_in(spec: &ModelSpec) -> StandIn {
    let labels = spec.labels.as_ref().map_or(1, |labels| labels.len() as i64);
    let forward: Arc<StandInForward> = match spec.config.task {
        TaskKind::ImageClassification | TaskKind::TextClassification => Arc::new(move |inputs| {
            let batch = inputs[0].size()[0];
            Ok(vec![Tensor::arange(labels, (Kind::Float, tch::Device::Cpu)).repeat([batch, 1])])
        }),
        TaskKind::TextGeneration => Arc::new(|inputs| {
            let (batch, steps) = (inputs[0].size()[0], inputs[0].size()[1]);
            let logits = Tensor::zeros([batch, steps, 256], (Kind::Float, tch::Device::Cpu));
            let _ = logits.narrow(2, i64::from(b'a'), 1).fill_(10.0);
            Ok(vec![logits, Tensor::zeros([1, batch, 4], (Kind::Float, tch::Device::Cpu))])
        }),
        TaskKind::StyleTransfer => Arc::new(|inputs| Ok(vec![inputs[0].shallow_clone()])),
        TaskKind::Tensor => Arc::new(|inputs| {
            let batch = inputs[0].size()[0];
            let probabilities = Tensor::full([batch, 3], 1.0 / 3.0, (Kind::Float, tch::Device::Cpu));
            Ok(vec![probabilities, Tensor::zeros([batch], (Kind::Int64, tch::Device::Cpu))])
        }),
        TaskKind::StyleFeatures => Arc::new(|_| Err("no stand-in for the style-features network".into())),
    };
    StandIn(forward)
}

/// A repository of the default models' configuration, with empty model files.
fn repository(dir: &Path) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for model in MODELS {
        let target = dir.join(model);
        std::fs::create_dir_all(target.join("1")).unwrap();
        std::fs::write(target.join("1/model.pt"), b"").unwrap();
        for file in ["model.toml", "labels.txt", "tokenizer.json"] {
            if models.join(model).join(file).exists() {
                std::fs::copy(models.join(model).join(file), target.join(file)).unwrap();
            }
        }
    }
}

struct Contract {
    app: Router,
    _repo: tempfile::TempDir,
}

impl Contract {
    async fn start(flags: &[&str]) -> Contract {
        Contract::start_with(flags, stand_in).await
    }

    async fn start_with(flags: &[&str], stand_in: fn(&ModelSpec) -> StandIn) -> Contract {
        let repo = tempfile::tempdir().unwrap();
        repository(repo.path());
        let mut all = vec!["--model-repo", repo.path().to_str().unwrap()];
        all.extend_from_slice(flags);
        let config = ServeConfig::from_flags(all).unwrap();
        let metrics = Arc::new(Metrics::new());
        let repository = Repository::scan(repo.path()).unwrap();
        let registry =
            Arc::new(Registry::new(repository, config.device, Arc::clone(&metrics)).with_stand_ins(stand_in));
        registry.load_all();
        let app = router(AppState::new(&config, registry, metrics).unwrap());
        let contract = Contract { app, _repo: repo };
        for _ in 0..200 {
            if contract.get("/health/ready").await.0 == StatusCode::OK {
                return contract;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the stand-in models did not turn ready: {:?}", contract.get("/health/ready").await);
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 24).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, content_type: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = Request::post(path).header(header::CONTENT_TYPE, content_type).body(body.into()).unwrap();
        self.send(request).await
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post(path, "application/json", body.to_string()).await
    }
}

/// A small PNG: the image routes decode and preprocess it for real.
fn png() -> Vec<u8> {
    png_of(&image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128])))
}

fn png_of(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn error_of(answer: &(StatusCode, Value)) -> (u16, &str, &str) {
    let (status, body) = answer;
    (status.as_u16(), body["error_type"].as_str().unwrap_or(""), body["error"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn task_routes_answer_by_name_and_on_the_short_route() {
    let api = Contract::start(&[]).await;
    for path in ["/v1/models/mobilenet_v2/classify", "/v1/classify"] {
        let (status, body) = api.post(path, "image/png", png()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["model"], "mobilenet_v2");
        assert_eq!(body["predictions"].as_array().unwrap().len(), 5, "{body}");
    }
    for path in ["/v1/models/sentiment/sentiment", "/v1/sentiment"] {
        let (status, body) = api.post_json(path, json!({"texts": ["a fine day", "awful"]})).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["results"].as_array().unwrap().len(), 2, "{body}");
    }
    let (status, body) =
        api.post_json("/v1/generate", json!({"prompt": "KING.\n", "max_tokens": 5, "temperature": 0})).await;
    assert_eq!((status, body["text"].as_str()), (StatusCode::OK, Some("aaaaa")), "{body}");
    // OpenAI's shape of the same completion, and of an error.
    let completion = json!({"model": "shakespeare", "prompt": "KING.\n", "max_tokens": 5, "temperature": 0});
    let (status, body) = api.post_json("/v1/completions", completion).await;
    assert_eq!((status, body["choices"][0]["text"].as_str()), (StatusCode::OK, Some("aaaaa")), "{body}");
    assert_eq!(
        (body["object"].as_str(), body["usage"]["completion_tokens"].as_u64()),
        (Some("text_completion"), Some(5))
    );
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    let (status, body) = api.post_json("/v1/completions", json!({"model": "iris", "prompt": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = api.get("/v1/models").await;
    let ids: Vec<&str> = body["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!((status, body["object"].as_str(), ids.len()), (StatusCode::OK, Some("list"), 5), "{body}");
    let (status, _) = api.post("/v1/stylize?style=graffiti", "image/png", png()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn errors_name_the_problem_with_their_status_and_type() {
    let api = Contract::start(&[]).await;
    let cases: Vec<((StatusCode, Value), u16, &str, &str)> = vec![
        (
            api.post("/v1/models/nope/classify", "image/png", png()).await,
            404,
            "not_found",
            "model `nope` does not exist",
        ),
        (
            api.post("/v1/models/sentiment/classify", "image/png", png()).await,
            400,
            "bad_request",
            "is a text-classification model",
        ),
        (
            api.post("/v1/classify", "text/plain", "hello").await,
            415,
            "unsupported_media_type",
            "Content-Type `text/plain`",
        ),
        (api.post("/v1/classify", "image/png", Vec::new()).await, 400, "bad_request", "the image is empty"),
        (api.post("/v1/classify", "image/png", b"not a png".to_vec()).await, 400, "bad_request", "image"),
        (
            api.post("/v1/classify?top_k=0", "image/png", png()).await,
            422,
            "validation",
            "top_k must be between 1 and 1000, got 0",
        ),
        (api.post("/v1/classify?topk=3", "image/png", png()).await, 422, "validation", "unknown field `topk`"),
        (api.post("/v1/sentiment", "application/json", "{\"text\": ").await, 400, "bad_request", "not valid JSON"),
        (api.post_json("/v1/sentiment", json!([1])).await, 422, "validation", "must be an object"),
        (api.post_json("/v1/sentiment", json!({"texts": []})).await, 422, "validation", "at least one text"),
        (api.post_json("/v1/sentiment", json!({"text": "a", "texts": ["b"]})).await, 422, "validation", "not both"),
        (api.post_json("/v1/generate", json!({"prompt": "x", "max_tokens": 0})).await, 422, "validation", "max_tokens"),
        (api.post_json("/v1/stylize", json!({})).await, 422, "validation", "image: required field is missing"),
        (
            api.post("/v1/stylize?style=cubism", "image/png", png()).await,
            404,
            "not_found",
            "style `cubism` does not exist",
        ),
        (
            api.post("/v1/models/style_graffiti/stylize?style=graffiti", "image/png", png()).await,
            422,
            "validation",
            "only POST /v1/stylize takes it",
        ),
        (
            api.post("/v1/style-transfer", "multipart/form-data; boundary=x", "--x--").await,
            404,
            "not_found",
            "no model serves style-features",
        ),
        (api.get("/v1/models/nope").await, 404, "not_found", "does not exist"),
        (api.get("/no/such/route").await, 404, "not_found", "no route for GET /no/such/route"),
        (
            api.send(Request::delete("/v1/classify").body(Body::empty()).unwrap()).await,
            405,
            "method_not_allowed",
            "DELETE is not allowed",
        ),
        (api.get("/admin/jobs").await, 404, "not_found", "the admin API is off"),
    ];
    for (answer, status, error_type, message) in &cases {
        let (got_status, got_type, got_message) = error_of(answer);
        assert_eq!((got_status, got_type), (*status, *error_type), "{answer:?}");
        assert!(got_message.contains(message), "{message:?} not in {got_message:?}");
    }
}

#[tokio::test]
async fn limits_refuse_what_is_too_large() {
    let api = Contract::start(&["--max-body-bytes", "1000", "--max-image-pixels", "1000"]).await;
    let (status, body) = api.post("/v1/classify", "image/png", vec![0u8; 2000]).await;
    assert_eq!(error_of(&(status, body.clone())).0, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-body-bytes"), "{body}");
    let (status, body) = api.post("/v1/classify", "image/png", png_of(&image::RgbImage::new(40, 40))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-image-pixels"), "{body}");
    let long = "a".repeat(10_001);
    let (status, body) = api.post_json("/v1/sentiment", json!({"text": long})).await;
    assert_eq!((status, body["error_type"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
}

#[tokio::test]
async fn the_open_inference_protocol_routes_check_their_requests() {
    let api = Contract::start(&[]).await;
    let (status, body) = api.get("/v2/models/iris").await;
    assert_eq!((status, body["inputs"][0]["name"].as_str()), (StatusCode::OK, Some("measurements")), "{body}");
    let infer = |inputs: Value| json!({ "inputs": inputs });
    let good =
        infer(json!([{"name": "measurements", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]));
    let (status, body) = api.post_json("/v2/models/iris/infer", good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 2, "{body}");
    let cases = [
        (infer(json!([{"name": "measurements", "datatype": "BYTES", "shape": [1, 4], "data": [1, 2, 3, 4]}])), "BYTES"),
        (infer(json!([{"name": "measurements", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}])), "shape"),
        (infer(json!([{"name": "other", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}])), "measurements"),
    ];
    for (request, named) in cases {
        let (status, body) = api.post_json("/v2/models/iris/infer", request).await;
        assert!(status.is_client_error(), "{status} {body}");
        assert!(body["error"].as_str().unwrap().contains(named), "{named:?} not in {body}");
    }
    let (status, body) = api.get("/v2/models/iris/versions/0/ready").await;
    assert_eq!(error_of(&(status, body.clone())).0, 400, "{body}");
    let (status, body) = api.get("/v2/models/iris/versions/7/ready").await;
    assert_eq!(error_of(&(status, body.clone())).0, 404, "{body}");
}

/// A classifier that fails on bright images (libtorch's error text in its message); warm-up's zeros pass.
fn failing_on_bright_images(spec: &ModelSpec) -> StandIn {
    if spec.config.task != TaskKind::ImageClassification {
        return stand_in(spec);
    }
    StandIn(Arc::new(|inputs| {
        if inputs[0].mean(Kind::Float).double_value(&[]) > 1.0 {
            return Err("RuntimeError: boom at /opt/libtorch/secret.cpp:12".into());
        }
        Ok(vec![Tensor::zeros([inputs[0].size()[0], 1000], (Kind::Float, tch::Device::Cpu))])
    }))
}

#[tokio::test]
async fn a_model_failure_is_a_500_that_names_the_request_id_and_not_the_details() {
    let api = Contract::start_with(&[], failing_on_bright_images).await;
    let white = png_of(&image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255])));
    let request = Request::post("/v1/classify")
        .header(header::CONTENT_TYPE, "image/png")
        .header("x-request-id", "contract-500")
        .body(Body::from(white))
        .unwrap();
    let answer = api.send(request).await;
    let (status, error_type, message) = error_of(&answer);
    assert_eq!((status, error_type), (500, "internal"), "{answer:?}");
    assert!(message.contains("request id contract-500") && !message.contains("secret.cpp"), "{message}");
    // The same model still answers what it can.
    assert_eq!(api.post("/v1/classify", "image/png", png()).await.0, StatusCode::OK);
}

/// Every operation of openapi.yaml, sent a photo with the admin token: routed (neither the fallback's 404 nor a
/// 405), never a 500, and every refusal a JSON error body with an error_type (OpenAI's shape on its route) (a 503 too: the operations run in
/// path order, so /admin/models/iris/unload comes before /v2/models/iris/...).
#[tokio::test]
async fn every_documented_operation_is_routed_and_refuses_in_json() {
    let api = Contract::start(&["--admin-token", "contract-token"]).await;
    for (method, path) in common::documented() {
        let path = path.replace("{name}", "iris").replace("{version}", "1").replace("{id}", "1");
        let request = Request::builder()
            .method(method.as_str())
            .uri(&path)
            .header(header::AUTHORIZATION, "Bearer contract-token")
            .header(header::CONTENT_TYPE, "image/png")
            .body(Body::from(png()))
            .unwrap();
        let response = api.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 24).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no route for"),
            "{method} {path}: {status}"
        );
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}: {text}");
        if status.is_client_error() || status.is_server_error() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let ember_shape = body["error_type"].is_string() && body["error"].is_string();
            // The OpenAI-compatible route answers OpenAI's shape, ember's error_type as the code.
            let openai_shape = path == "/v1/completions" && body["error"]["code"].is_string();
            assert!(ember_shape || openai_shape, "{method} {path}: {status} {text}");
        }
    }
}

/// An answer given before its request's body was read closes the connection and says so: hyper does not reuse
/// it, and a client that took it for reusable would fail its next request on it, half-sent.
#[tokio::test]
async fn an_answer_before_the_body_is_read_says_connection_close() {
    let api = Contract::start(&[]).await;
    let post = |path: &str| {
        let request = Request::post(path).header(header::CONTENT_TYPE, "image/png").body(Body::from(png()));
        api.app.clone().oneshot(request.unwrap())
    };
    let refused = post("/v1/models/no_such_model/classify").await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert_eq!(refused.headers().get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"close"[..]));
    let served = post("/v1/models/mobilenet_v2/classify").await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.headers().get(header::CONNECTION).is_none(), "a request read whole keeps its connection");
    let listed = api.app.clone().oneshot(Request::get("/v1/models").body(Body::empty()).unwrap()).await.unwrap();
    assert!(listed.headers().get(header::CONNECTION).is_none(), "a request without a body keeps its connection");
}

/// The `model` label of the request metrics comes from the extractors: a model that exists, named by the path or
/// picked as the short route's default. Names a client invents never become labels (a client could otherwise
/// grow the metrics without bound by asking for a thousand models).
#[tokio::test]
async fn request_metrics_label_only_models_that_exist() {
    let api = Contract::start(&[]).await;
    for i in 0..50 {
        let name = format!("invented-{i}");
        api.post(&format!("/v1/models/{name}/classify"), "image/png", png()).await;
        api.get(&format!("/v2/models/{name}/ready")).await;
        api.get(&format!("/v1/models/{name}")).await;
    }
    api.post("/v1/classify", "image/png", png()).await;
    api.get("/v2/models/iris/ready").await;
    let response = api.app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(to_bytes(response.into_body(), 1 << 24).await.unwrap().to_vec()).unwrap();
    assert!(!text.contains("invented-"), "{text}");
    let requests = |model: &str, route: &str| {
        let series = format!("ember_requests_total{{model=\"{model}\",route=\"{route}\",status=\"200\"}} 1");
        text.lines().any(|line| line == series)
    };
    assert!(requests("mobilenet_v2", "/v1/classify"), "{text}");
    assert!(requests("iris", "/v2/models/{name}/ready"), "{text}");
}
