//! Serving behaviour under load and at the edges, each test on a server with its own settings:
//! batching across callers, admission control, deadlines, readiness, body limits.

mod common;

use std::time::{Duration, Instant};

use common::{error_of, TempRepo, TestServer};
use serde_json::Value;

/// 32 callers at once are all answered correctly, and the batcher actually combined requests.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_all_answered_and_batched() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let requests = (0..32).map(|i| {
        let photo = if i % 2 == 0 { "chelsea.png" } else { "coffee.png" };
        let server = &server;
        async move { (photo, server.post_image("/v1/classify?top_k=1", photo).await.json::<Value>().await.unwrap()) }
    });
    for (photo, body) in futures_util::future::join_all(requests).await {
        let top1 = body["predictions"][0]["label"].as_str().unwrap_or_default().to_string();
        let expected = if photo == "chelsea.png" { "Egyptian cat" } else { "espresso" };
        assert_eq!(top1, expected, "{photo}: {body}");
    }
    let batches = server.metric("ember_batch_size_count{model=\"mobilenet_v2\"}").await.unwrap();
    let singles = server.metric("ember_batch_size_bucket{model=\"mobilenet_v2\",le=\"1\"}").await.unwrap();
    let images = server.metric("ember_batch_size_sum{model=\"mobilenet_v2\"}").await.unwrap();
    assert_eq!(images, 32.0);
    assert!(batches > singles, "no batch larger than one: {batches} batches, {singles} of size 1");
    assert!(batches < 32.0, "32 requests took {batches} batches");
}

/// A full queue answers 429 with Retry-After at once; nothing hangs; the admitted requests succeed.
#[tokio::test(flavor = "multi_thread")]
async fn overloaded_queue_answers_429_quickly() {
    let repo = TempRepo::mobilenet(&[("workers", "1"), ("max_batch_size", "1"), ("queue_capacity", "2")]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let requests = (0..24).map(|_| {
        let server = &server;
        async move {
            let started = Instant::now();
            let response = server.post_image("/v1/classify", "china.jpg").await;
            (response, started.elapsed())
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(requests).await;
    assert!(started.elapsed() < Duration::from_secs(30), "the burst took {:?}", started.elapsed());
    let (mut ok, mut refused) = (0, 0);
    for (response, elapsed) in results {
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(response.headers()["retry-after"], "1");
                assert!(elapsed < Duration::from_secs(2), "a 429 took {elapsed:?}");
                let (_, kind, message) = error_of(response).await;
                assert_eq!(kind, "overloaded");
                assert!(message.contains("queue_capacity"), "{message}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "24 simultaneous requests never filled a queue of 2");
    assert!(ok >= 3, "only {ok} requests were served");
}

/// A request that cannot be answered within --request-timeout-ms gets a 504, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn request_past_its_deadline_answers_504() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &["--request-timeout-ms", "1"]).await;
    let (status, kind, message) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
    assert!(message.contains("--request-timeout-ms"), "{message}");
}

/// Until every worker has loaded and warmed up the model, readiness is 503 and requests get 503.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_503_until_warm_up_finishes() {
    // Many warm-up passes stretch the warm-up to a second or more, so the window is observable.
    let repo = TempRepo::mobilenet(&[("workers", "1"), ("max_batch_size", "1"), ("warmup_runs", "60")]);
    let server = TestServer::start(repo.path(), &[]);
    let live = reqwest::get(server.url("/health/live")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness answers while models load");
    let (status, kind, message) = error_of(reqwest::get(server.url("/health/ready")).await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (503, "unavailable"));
    assert!(message.contains("mobilenet_v2") && message.contains("loading"), "{message}");
    let (status, _, message) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!(status, 503, "{message}");
    let model: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
    assert_eq!(model["state"], "loading");
    // The same over the Open Inference Protocol (KServe v2).
    let status = |path: &'static str| {
        let url = server.url(path);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v2/health/live").await, 200);
    assert_eq!(status("/v2/health/ready").await, 503);
    assert_eq!(status("/v2/models/mobilenet_v2/ready").await, 503);

    server.wait_ready().await;
    assert_eq!(server.post_image("/v1/classify", "chelsea.png").await.status(), 200);
    assert_eq!(status("/v2/health/ready").await, 200);
    let ready: Value = reqwest::get(server.url("/v2/models/mobilenet_v2/ready")).await.unwrap().json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"name": "mobilenet_v2", "version": "1", "ready": true}));
    assert_eq!(status("/v2/models/mobilenet_v2/versions/1/ready").await, 200);
    assert_eq!(status("/v2/models/mobilenet_v2/versions/7/ready").await, 404);
    assert_eq!(status("/v2/models/nothing/ready").await, 404);
    let metadata: Value = reqwest::get(server.url("/v2")).await.unwrap().json().await.unwrap();
    assert_eq!(metadata["name"], "ember");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_answers_413() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &["--max-body-bytes", "100000"]).await;
    // coffee.png is 466 kB; china.jpg (197 kB) streamed without Content-Length checks the running count too.
    let (status, kind, message) = error_of(server.post_image("/v1/classify", "coffee.png").await).await;
    assert_eq!((status, kind.as_str()), (413, "payload_too_large"));
    assert!(message.contains("100000") && message.contains("--max-body-bytes"), "{message}");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        common::photo("china.jpg").chunks(16384).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    assert_eq!(error_of(server.post_body("/v1/classify", "image/jpeg", streamed).await).await.0, 413);
    // A body under the limit still goes through.
    let mut small = Vec::new();
    image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .write_to(&mut std::io::Cursor::new(&mut small), image::ImageFormat::Jpeg)
        .unwrap();
    assert!(small.len() < 100_000);
    assert_eq!(server.post_body("/v1/classify", "image/jpeg", small).await.status(), 200);
}

/// A model whose files are broken is reported by name; it has no version that loads, so the replica does not
/// wait for it (readiness: every model with a loadable version serves).
#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_fails_to_load_is_reported() {
    let repo = tempfile::tempdir().unwrap();
    let model = repo.path().join("broken");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(
        model.join("model.toml"),
        std::fs::read_to_string(common::models_dir().join("mobilenet_v2/model.toml")).unwrap(),
    )
    .unwrap();
    std::fs::copy(common::models_dir().join("mobilenet_v2/labels.txt"), model.join("labels.txt")).unwrap();
    std::fs::write(model.join("1/model.pt"), b"this is not TorchScript").unwrap();
    let server = TestServer::start(repo.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info: Value = reqwest::get(server.url("/v1/models/broken")).await.unwrap().json().await.unwrap();
        if info["state"] != "loading" || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info["state"], "failed");
    assert!(info["error"].as_str().unwrap().contains("model.pt"), "{info}");
    assert_eq!(reqwest::get(server.url("/health/ready")).await.unwrap().status(), 200);
    let (status, kind, _) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!((status, kind.as_str()), (503, "unavailable"));
}
