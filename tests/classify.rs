//! Image classification over real HTTP against the real MobileNetV2: what a user calling /v1/classify sees.

mod common;

use base64::Engine as _;
use common::{client, error_of, photo, references, TestServer};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

static SERVER: OnceCell<TestServer> = OnceCell::const_new();

/// One server for the tests of this file that do not need their own settings.
async fn server() -> &'static TestServer {
    SERVER.get_or_init(|| async { TestServer::start_ready(&common::models_dir(), &[]).await }).await
}

fn labels(body: &Value) -> Vec<String> {
    body["predictions"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_photos_get_a_sensible_top5() {
    let server = server().await;
    for reference in references() {
        let response = server.post_image("/v1/classify", &reference.file).await;
        assert_eq!(response.status(), 200, "{}", reference.file);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], "mobilenet_v2");
        assert_eq!(body["version"], 1);
        let top5 = labels(&body);
        assert_eq!(top5.len(), 5);
        assert!(
            reference.expected_any_of.iter().any(|label| top5.contains(label)),
            "{}: top 5 {top5:?} has none of {:?}",
            reference.file,
            reference.expected_any_of
        );
        let scores: Vec<f64> =
            body["predictions"].as_array().unwrap().iter().map(|p| p["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores not sorted: {scores:?}");
    }
}

/// Rust decoding + resize + crop + normalisation against torchvision's Resize(256), CenterCrop(224), Normalize.
#[tokio::test(flavor = "multi_thread")]
async fn preprocessing_matches_torchvision_on_the_sample_photos() {
    let server = server().await;
    for reference in references() {
        let response = server.post_image("/v1/models/mobilenet_v2/classify?top_k=1000", &reference.file).await;
        let body: Value = response.json().await.unwrap();
        let mut probs = vec![0f32; 1000];
        for p in body["predictions"].as_array().unwrap() {
            probs[p["index"].as_u64().unwrap() as usize] = p["score"].as_f64().unwrap() as f32;
        }
        assert_eq!(labels(&body)[0], reference.top5[0], "{}: top-1 differs from torchvision", reference.file);
        let max_diff = probs.iter().zip(&reference.probs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{}: largest softmax difference {max_diff:.5}", reference.file);
        assert!(max_diff <= 0.02, "{}: largest softmax difference {max_diff} > 0.02", reference.file);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_json_and_raw_bodies_give_the_same_answer() {
    let server = server().await;
    let bytes = photo("chelsea.png");
    let raw: Value = server.post_image("/v1/classify?top_k=3", "chelsea.png").await.json().await.unwrap();

    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(bytes.clone()).file_name("chelsea.png"))
        .text("top_k", "3");
    let multipart: Value =
        client().post(server.url("/v1/classify")).multipart(form).send().await.unwrap().json().await.unwrap();

    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let json_body: Value = client()
        .post(server.url("/v1/classify"))
        .json(&json!({"image": encoded, "top_k": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(labels(&raw).len(), 3);
    assert_eq!(labels(&raw), labels(&multipart));
    assert_eq!(labels(&raw), labels(&json_body));
}

/// Every bad input gets its documented status and error_type, with a message naming the problem.
#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_their_documented_errors() {
    let server = server().await;
    let jpeg = photo("china.jpg");
    let post = |path: &str| client().post(server.url(path));
    let post_jpeg = |path: &str| post(path).header("content-type", "image/jpeg").body(jpeg.clone());
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, &str)> = vec![
        ("no content type", post("/v1/classify").body(jpeg.clone()), 415, "unsupported_media_type", "no Content-Type"),
        (
            "text body",
            post("/v1/classify").header("content-type", "text/plain").body("a cat"),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            "corrupt image",
            post("/v1/classify").header("content-type", "image/jpeg").body(vec![0xFFu8, 0xD8, 0xFF, 0, 1, 2, 3]),
            400,
            "bad_request",
            "corrupt",
        ),
        (
            "truncated jpeg",
            post("/v1/classify").header("content-type", "image/jpeg").body(jpeg[..jpeg.len() / 3].to_vec()),
            400,
            "bad_request",
            "Jpeg",
        ),
        (
            "not an image",
            post("/v1/classify").header("content-type", "image/png").body("hello"),
            400,
            "bad_request",
            "supported format",
        ),
        ("empty body", post("/v1/classify").header("content-type", "image/png").body(""), 400, "bad_request", "empty"),
        ("top_k zero", post_jpeg("/v1/classify?top_k=0"), 422, "validation", "top_k must be between 1 and 1000, got 0"),
        (
            "top_k too big",
            post_jpeg("/v1/classify?top_k=1001"),
            422,
            "validation",
            "top_k must be between 1 and 1000, got 1001",
        ),
        ("top_k negative", post_jpeg("/v1/classify?top_k=-3"), 422, "validation", "got -3"),
        ("top_k not a number", post_jpeg("/v1/classify?top_k=many"), 422, "validation", "top_k"),
        ("unknown parameter", post_jpeg("/v1/classify?topk=3"), 422, "validation", "unknown field `topk`"),
        (
            "invalid JSON",
            post("/v1/classify").header("content-type", "application/json").body("{\"image\": "),
            400,
            "bad_request",
            "not valid JSON",
        ),
        ("JSON without image", post("/v1/classify").json(&json!({"top_k": 2})), 422, "validation", "image"),
        ("JSON bad base64", post("/v1/classify").json(&json!({"image": "not base64!"})), 422, "validation", "base64"),
        (
            "JSON top_k string",
            post("/v1/classify").json(&json!({"image": "aGk=", "top_k": "2"})),
            422,
            "validation",
            "top_k",
        ),
        (
            "multipart without image",
            post("/v1/classify").multipart(reqwest::multipart::Form::new().text("top_k", "2")),
            400,
            "bad_request",
            "no field `image`",
        ),
        ("unknown model", post_jpeg("/v1/models/resnet9000/classify"), 404, "not_found", "resnet9000"),
        ("unknown route", post_jpeg("/v1/clasify"), 404, "not_found", "/v1/clasify"),
        ("wrong method", client().get(server.url("/v1/classify")), 405, "method_not_allowed", "GET"),
    ];
    for (name, request, status, kind, needle) in cases {
        let (got_status, got_kind, message) = error_of(request.send().await.unwrap()).await;
        assert_eq!((got_status, got_kind.as_str()), (status, kind), "{name}: {message}");
        assert!(message.contains(needle), "{name}: `{message}` does not mention `{needle}`");
    }
}

/// A PNG that is small on the wire but 49 megapixels decoded is refused before it is decoded.
#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_is_refused() {
    let server = server().await;
    let mut bomb = Vec::new();
    image::GrayImage::new(7000, 7000).write_to(&mut std::io::Cursor::new(&mut bomb), image::ImageFormat::Png).unwrap();
    assert!(bomb.len() < 1 << 20, "the bomb should be small: {} bytes", bomb.len());
    let (status, kind, message) = error_of(server.post_body("/v1/classify", "image/png", bomb).await).await;
    assert_eq!((status, kind.as_str()), (413, "payload_too_large"), "{message}");
    assert!(message.contains("7000x7000") && message.contains("--max-image-pixels"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_listed_with_their_state() {
    let server = server().await;
    let list: Value = reqwest::get(server.url("/v1/models")).await.unwrap().json().await.unwrap();
    let models = list["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "listed by name: {names:?}");
    let model = models.iter().find(|m| m["name"] == "mobilenet_v2").expect("mobilenet_v2 is listed");
    assert_eq!(model["task"], "image-classification");
    assert_eq!(model["state"], "ready");
    assert_eq!(model["served_version"], 1);
    assert_eq!(model["device"], "cpu");
    assert_eq!(model["default"], true);
    assert_eq!(model["batching"]["max_batch_size"], 4);

    let one: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
    assert_eq!(&one, model);
    let (status, kind, message) = error_of(reqwest::get(server.url("/v1/models/nope")).await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    assert!(message.contains("mobilenet_v2"), "the 404 lists the models there are: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_use_the_documented_names() {
    let server = server().await;
    assert_eq!(server.post_image("/v1/models/mobilenet_v2/classify", "rocket.jpg").await.status(), 200);
    assert_eq!(server.post_image("/v1/models/no_such_model/classify", "rocket.jpg").await.status(), 404);
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!text.contains("no_such_model"), "client-chosen names must not become metric labels");
    for series in [
        "ember_requests_total{model=\"mobilenet_v2\",route=\"/v1/models/{name}/classify\",status=\"200\"}",
        "ember_request_duration_seconds_bucket{model=\"mobilenet_v2\",route=\"/v1/models/{name}/classify\"",
        "ember_queue_duration_seconds_count{model=\"mobilenet_v2\"}",
        "ember_inference_duration_seconds_count{model=\"mobilenet_v2\"}",
        "ember_batch_size_count{model=\"mobilenet_v2\"}",
        "ember_queue_depth{model=\"mobilenet_v2\"}",
        "ember_model_info{device=\"cpu\",format=\"onnx\",model=\"mobilenet_v2\",version=\"1\"} 1",
        // One load per version: its two workers share the module.
        "ember_model_load_duration_seconds_count{model=\"mobilenet_v2\"} 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(series), "/metrics lacks {series}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id() {
    let server = server().await;
    let response = client().get(server.url("/health/live")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let response = server.post_image("/v1/classify", "coffee.png").await;
    assert!(!response.headers()["x-request-id"].is_empty());
}

/// A pool's workers share one copy of the weights, so its forward runs on several threads at once. Under load
/// (8 workers, 96 requests at once, one photo per forward so that batch composition cannot change the numbers,
/// one thread per forward) every answer is exactly what a single worker answers.
#[tokio::test(flavor = "multi_thread")]
async fn workers_sharing_one_module_answer_as_one_worker_does() {
    let settings = |workers| {
        common::TempRepo::mobilenet(&[
            ("workers", workers),
            ("intra_op_threads", "1"),
            ("max_batch_size", "1"),
            ("borrow_idle_threads", "false"),
        ])
    };
    let (one_repo, many_repo) = (settings("1"), settings("8"));
    let one = TestServer::start_ready(one_repo.path(), &[]).await;
    let many = TestServer::start_ready(many_repo.path(), &[]).await;
    let info: Value = client().get(many.url("/v1/models/mobilenet_v2")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (info["batching"]["workers"].as_u64(), info["batching"]["share_weights"].as_bool()),
        (Some(8), Some(true))
    );

    let path = "/v1/classify?top_k=1000";
    let mut expected = std::collections::HashMap::new();
    for reference in references() {
        let body: Value = one.post_image(path, &reference.file).await.json().await.unwrap();
        expected.insert(reference.file.clone(), body["predictions"].clone());
    }
    let files: Vec<String> = expected.keys().cloned().collect();
    let many = std::sync::Arc::new(many);
    let requests: Vec<_> = (0..96)
        .map(|i| {
            let (many, file) = (std::sync::Arc::clone(&many), files[i % files.len()].clone());
            tokio::spawn(async move {
                let response = many.post_image(path, &file).await;
                assert_eq!(response.status(), 200, "{file}");
                (file, response.json::<Value>().await.unwrap()["predictions"].clone())
            })
        })
        .collect();
    for request in requests {
        let (file, predictions) = request.await.unwrap();
        assert!(predictions == expected[&file], "{file}: the shared module answered differently under load");
    }
}
