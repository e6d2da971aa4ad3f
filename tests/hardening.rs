//! Hostile input and faults, over real HTTP on a real port with the real models: a request, a client or a broken
//! file may fail only itself, never the process, a model's queue or the replica's readiness.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{error_of, TempRepo, TestServer};
use serde_json::{json, Value};

/// A valid greyscale PNG of `width` x `height` (a few KB on the wire however many pixels it claims).
fn grey_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::GrayImage::new(width, height)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// A 1 x 1,000,000 image is 1 Mpx, under the pixel limit, but resizing its shorter side to 256 would make a
/// 256 x 256,000,000 target: it must be refused before anything is allocated for it, and the server lives on.
#[tokio::test(flavor = "multi_thread")]
async fn an_extreme_aspect_ratio_is_refused_before_resizing() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    for (width, height) in [(1, 1_000_000), (1_000_000, 1)] {
        let response = server.post_body("/v1/classify", "image/png", grey_png(width, height)).await;
        let (status, kind, message) = error_of(response).await;
        assert_eq!((status, kind.as_str()), (422, "validation"), "{message}");
        assert!(message.contains(&format!("{width}x{height}")) && message.contains("--max-image-aspect"), "{message}");
    }
    // The same goes for stylize-sized work and for a caller who lowers the limit.
    assert_eq!(server.post_image("/v1/classify", "chelsea.png").await.status(), 200);
}

/// Decodes in flight share --max-decode-bytes: with a budget smaller than one photo's decode, concurrent
/// requests take turns (each runs alone) and are all answered; the reservation is released after each.
#[tokio::test(flavor = "multi_thread")]
async fn decodes_share_a_memory_budget_and_take_turns() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &["--max-decode-bytes", "1"]).await;
    let answers = (0..8).map(|_| server.post_image("/v1/classify", "chelsea.png"));
    for response in futures_util::future::join_all(answers).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(server.metric("ember_decode_reserved_bytes").await, Some(0.0));
}

/// The Open Inference Protocol lets a client choose its dimensions; each `-1` is bounded by the model, and token
/// ids must lie in the vocabulary (on CUDA an id outside it is a device assert that breaks the whole context).
#[tokio::test(flavor = "multi_thread")]
async fn v2_dimensions_and_token_ids_are_bounded_by_the_model() {
    let repo = TempRepo::of("shakespeare", &[]);
    repo.add("iris", &[]).add("sentiment", &[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let client = common::client();
    let infer =
        |model: &str, body: Value| client.post(server.url(&format!("/v2/models/{model}/infer"))).json(&body).send();

    // 200,000 prompt tokens would hold the generation thread for half a minute.
    let ids = vec![65; 200_000];
    let state = vec![0.0; 512];
    let body = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 200_000], "datatype": "INT64", "data": ids},
        {"name": "state", "shape": [1, 1, 512], "datatype": "FP32", "data": state},
    ]});
    let started = Instant::now();
    let response = infer("shakespeare", body).await.unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("input_ids") && message.contains("200000") && message.contains("4096"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once, not after running: {:?}", started.elapsed());

    // A byte model's vocabulary is 0..=255.
    let body = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [65, 300]},
        {"name": "state", "shape": [1, 1, 512], "datatype": "FP32", "data": state},
    ]});
    let (status, _, message) = error_of(infer("shakespeare", body).await.unwrap()).await;
    assert_eq!(status, 422, "{message}");
    assert!(message.contains("input_ids") && message.contains("300") && message.contains("255"), "{message}");

    // The sentiment encoder's sequence limit is its max_tokens; its ids are its tokenizer's vocabulary.
    let body = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 1000], "datatype": "INT64", "data": vec![101; 1000]},
        {"name": "attention_mask", "shape": [1, 1000], "datatype": "INT64", "data": vec![1; 1000]},
    ]});
    let (status, _, message) = error_of(infer("sentiment", body).await.unwrap()).await;
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("input_ids") && message.contains("128"), "{message}");
    let body = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 99_999_999]},
        {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
    ]});
    let (status, _, message) = error_of(infer("sentiment", body).await.unwrap()).await;
    assert_eq!(status, 422, "{message}");
    assert!(message.contains("99999999"), "{message}");

    // Rows of a batched input are bounded by batching.max_request_rows.
    let rows = 100_000;
    let body = json!({"inputs": [
        {"name": "measurements", "shape": [rows, 4], "datatype": "FP32", "data": vec![5.0; rows * 4]},
    ]});
    let (status, _, message) = error_of(infer("iris", body).await.unwrap()).await;
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("measurements") && message.contains("max_request_rows"), "{message}");

    // And generation still answers.
    let response = client.post(server.url("/v1/generate")).json(&json!({"prompt": "ROMEO:", "max_tokens": 5})).send();
    assert_eq!(response.await.unwrap().status(), 200);
}

/// Opens a raw connection to the server.
fn connect(server: &TestServer) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Everything the server sends until it closes the connection (or the read times out, which fails the test).
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) => panic!("the server held a stalled connection open ({e}); it had sent {answer:?}"),
    }
}

/// A client that announces a body and stops sending, or never finishes its headers, is cut off after the read
/// timeouts; so are idle connections beyond the connection cap; and shutdown does not wait for them.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_clients_are_timed_out_and_never_hold_shutdown() {
    let repo = TempRepo::mobilenet(&[]);
    let flags = ["--header-read-timeout-ms", "500", "--body-read-timeout-ms", "500", "--max-connections", "8"];
    let server = TestServer::start_ready(repo.path(), &flags).await;

    let mut stalled_body = connect(&server);
    stalled_body
        .write_all(
            b"POST /v1/classify HTTP/1.1\r\nHost: ember\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n",
        )
        .unwrap();
    stalled_body.write_all(&[0u8; 1000]).unwrap();
    let answer = tokio::task::spawn_blocking(move || read_until_closed(&mut stalled_body)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-read-timeout-ms"), "{answer}");

    let mut stalled_headers = connect(&server);
    stalled_headers.write_all(b"GET /health/live HTTP/1.1\r\nHost: em").unwrap();
    let answer = tokio::task::spawn_blocking(move || read_until_closed(&mut stalled_headers)).await.unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");

    // Twice the cap of silent connections: normal requests are still answered once the silent ones time out.
    let silent: Vec<TcpStream> = (0..16).map(|_| connect(&server)).collect();
    let started = Instant::now();
    assert_eq!(common::client().get(server.url("/health/live")).send().await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let open = server.metric("ember_open_connections").await.unwrap();
    assert!(open <= 8.0, "the cap holds: {open} open");

    // A stalled upload in flight does not hold the shutdown past its timeout.
    let mut stalled = connect(&server);
    stalled
        .write_all(
            b"POST /v1/classify HTTP/1.1\r\nHost: ember\r\nContent-Type: image/png\r\nContent-Length: 99\r\n\r\n",
        )
        .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.stop();
        let _ = done_tx.send(());
    });
    assert!(done_rx.recv_timeout(Duration::from_secs(20)).is_ok(), "shutdown waited on a stalled client");
    drop((silent, stalled));
}

/// A model folder like mobilenet_v2's whose newest versions are `broken` (bytes that are not TorchScript).
fn add_broken_model(repo: &Path, name: &str, good_versions: &[u64], broken_versions: &[u64]) {
    let source = common::models_dir().join("mobilenet_v2");
    let model = repo.join(name);
    std::fs::create_dir_all(&model).unwrap();
    for file in ["model.toml", "labels.txt"] {
        std::fs::copy(source.join(file), model.join(file)).unwrap();
    }
    let toml = std::fs::read_to_string(model.join("model.toml")).unwrap().replace("default = true", "default = false");
    std::fs::write(model.join("model.toml"), toml).unwrap();
    for version in good_versions {
        std::fs::create_dir_all(model.join(version.to_string())).unwrap();
        std::os::unix::fs::symlink(source.join("1/model.pt"), model.join(format!("{version}/model.pt"))).unwrap();
    }
    for version in broken_versions {
        std::fs::create_dir_all(model.join(version.to_string())).unwrap();
        std::fs::write(model.join(format!("{version}/model.pt")), b"this is not TorchScript").unwrap();
    }
}

async fn model_info(server: &TestServer, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: Value = reqwest::get(server.url(&format!("/v1/models/{name}"))).await.unwrap().json().await.unwrap();
        // Null: a folder added while serving is not known until the repository watcher finds it.
        if !info["state"].is_null() && info["state"] != "loading" {
            return info;
        }
        assert!(Instant::now() < deadline, "{name} still loading: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One broken model never takes a serving replica out of readiness: it is reported by name (without the
/// server's paths), on v2 and in a metric; at start-up a corrupt newest version falls back to the newest that
/// loads.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_model_is_reported_without_taking_the_replica_out() {
    let repo = TempRepo::mobilenet(&[]);
    add_broken_model(repo.path(), "broken", &[], &[1]);
    add_broken_model(repo.path(), "fallback", &[1], &[2]);
    let server = TestServer::start(repo.path(), &["--watch-interval-ms", "100"]);
    let info = model_info(&server, "fallback").await;
    assert_eq!((info["state"].clone(), info["served_version"].clone()), ("ready".into(), 1.into()), "{info}");
    let error = info["error"].as_str().unwrap_or_default();
    assert!(error.contains("version 2") && error.contains("fallback/2/model.pt"), "{info}");
    let broken = model_info(&server, "broken").await;
    assert_eq!(broken["state"], "failed", "{broken}");
    let root = repo.path().display().to_string();
    for error in [broken["error"].as_str().unwrap(), error] {
        assert!(!error.contains(&root), "an unauthenticated route shows the server's paths: {error}");
    }
    server.wait_ready().await;
    assert_eq!(reqwest::get(server.url("/v2/models/broken/ready")).await.unwrap().status(), 503);
    let failures = server.metric(r#"ember_model_load_failures_total{model="broken"}"#).await;
    assert!(failures.is_some_and(|n| n >= 1.0), "{failures:?}");

    // A model folder added later that cannot load is reported, and the replica stays ready.
    add_broken_model(repo.path(), "late", &[], &[1]);
    assert_eq!(model_info(&server, "late").await["state"], "failed");
    assert_eq!(reqwest::get(server.url("/health/ready")).await.unwrap().status(), 200);
    assert_eq!(server.post_image("/v1/classify", "chelsea.png").await.status(), 200);
}

/// A classifier that returns no scores at all (shape [batch, 0], traced here from a real TorchScript graph) made
/// splitting the scores into rows panic during warm-up, on the thread that loads the model: it stayed `loading`
/// and the replica never turned ready. It fails alone, naming the shape.
#[tokio::test(flavor = "multi_thread")]
async fn a_classifier_without_scores_fails_alone() {
    let repo = TempRepo::mobilenet(&[]);
    add_broken_model(repo.path(), "scoreless", &[], &[]);
    let version = repo.path().join("scoreless/1");
    std::fs::create_dir_all(&version).unwrap();
    let example = tch::Tensor::zeros([1, 3, 224, 224], (tch::Kind::Float, tch::Device::Cpu));
    let module = tch::CModule::create_by_tracing("Scoreless", "forward", &[example], &mut |xs| {
        vec![xs[0].flatten(1, -1).narrow(1, 0, 0)]
    })
    .unwrap();
    module.save(version.join("model.pt")).unwrap();
    let server = TestServer::start(repo.path(), &[]);
    let info = model_info(&server, "scoreless").await;
    assert_eq!(info["state"], "failed", "{info}");
    assert!(info["error"].as_str().unwrap().contains("shape [1, 0]"), "{info}");
    server.wait_ready().await;
    assert_eq!(server.post_image("/v1/classify", "chelsea.png").await.status(), 200);
}

/// A version.toml goes through the same checks as model.toml: std = 0 would divide by zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_toml_with_impossible_preprocessing_is_refused() {
    let repo = TempRepo::mobilenet(&[]);
    add_broken_model(repo.path(), "odd", &[1], &[]);
    std::fs::write(
        repo.path().join("odd/1/version.toml"),
        "[image]\nresize = 256\ncrop = 224\nmean = [0.5, 0.5, 0.5]\nstd = [0.0, 0.2, 0.2]\n",
    )
    .unwrap();
    let server = TestServer::start(repo.path(), &[]);
    let info = model_info(&server, "odd").await;
    assert_eq!(info["state"], "failed", "{info}");
    assert!(info["error"].as_str().unwrap().contains("image.std"), "{info}");
}

const TOKEN: &str = "s3cret-admin-token";

/// A fine-tuning upload too small to train on is refused at once, naming the minimum; the runner survives and
/// takes the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_fine_tuning_upload_is_refused_and_the_runner_goes_on() {
    let repo = TempRepo::of("shakespeare", &[]);
    // A token file's trailing newline is not part of the token.
    let token = format!("{TOKEN}\n");
    let server = TestServer::start_ready(repo.path(), &["--admin-token", &token]).await;
    let client = common::client();
    let submit = |text: &'static [u8]| {
        let form = reqwest::multipart::Form::new()
            .part("data", reqwest::multipart::Part::bytes(text).file_name("corpus.txt"))
            .text("settings", r#"{"epochs": 1, "sequence_length": 16, "batch_size": 2, "time_limit_minutes": 1}"#);
        client.post(server.url("/admin/models/shakespeare/fine-tune")).bearer_auth(TOKEN).multipart(form).send()
    };
    for _ in 0..6 {
        let (status, kind, message) = error_of(submit(b"x").await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (422, "validation"), "{message}");
        assert!(message.contains("1 byte") && message.contains("at least"), "{message}");
    }
    let corpus: &'static [u8] = include_bytes!("../README.md");
    let response = submit(corpus).await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let job = common::job_until(&server, TOKEN, id, |job| job["state"] != "queued" && job["state"] != "running").await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        std::fs::read_dir(repo.path().join("shakespeare")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".train-")),
        "no staging folder is left behind"
    );
}
