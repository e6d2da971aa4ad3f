//! The Open Inference Protocol (KServe v2) over real HTTP: NVIDIA's own Python client against every kind of model,
//! the same numbers as the REST routes through the same batches, and tensor models declared in model.toml.

mod common;

use std::time::Duration;

use common::{
    client, error_of, free_port, image_infer_request, models_dir, photo, run_python_check, TempRepo, TestServer,
};
use ember::model_toml::ImagePreprocessing;
use ember::tasks::image;
use serde_json::{json, Value};

const TOKEN: &str = "kserve-admin-token";

/// tests/kserve/client_check.py with tritonclient[http] (installed in the venv by the setup): metadata, JSON and
/// binary inference of a tensor model, a classifier, a text classifier and a generator, the 400s, and the
/// repository extension with and without the admin token.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_triton_client_works_with_json_and_binary_tensors() {
    let repo = TempRepo::of("iris", &[]);
    for model in ["mobilenet_v2", "sentiment", "shakespeare"] {
        repo.add(model, &[]);
    }
    let server = TestServer::start_ready(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]).await;
    let address = server.base.trim_start_matches("http://").to_string();
    let args = vec![address, TOKEN.to_string(), models_dir().to_str().unwrap().to_string()];
    run_python_check("tests/kserve/client_check.py", args, "tritonclient checks passed").await;
}

/// tests/kserve/grpc_client_check.py with tritonclient[grpc] against the gRPC port: the same checks over
/// `inference.GRPCInferenceService` (raw and typed tensor contents, deadlines, status codes, the repository calls
/// with and without the token), and every answer compared with what the HTTP client gets for the same request.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_triton_grpc_client_gets_the_answers_http_gives() {
    let repo = TempRepo::of("iris", &[]);
    for model in ["mobilenet_v2", "sentiment", "shakespeare"] {
        repo.add(model, &[]);
    }
    let port = free_port().to_string();
    let flags = ["--admin-token", TOKEN, "--watch-interval-ms", "0", "--grpc-port", &port];
    let server = TestServer::start_ready(repo.path(), &flags).await;
    let grpc = server.grpc.clone().expect("gRPC is on");
    let http = server.base.trim_start_matches("http://").to_string();
    let args = vec![grpc, TOKEN.to_string(), models_dir().to_str().unwrap().to_string(), "--http".into(), http];
    run_python_check("tests/kserve/grpc_client_check.py", args, "tritonclient grpc checks passed").await;
    // The calls were counted under their RPC, with the model that answered.
    let infer = r#"ember_requests_total{model="iris",route="/inference.GRPCInferenceService/ModelInfer",status="200"}"#;
    assert!(server.metric(infer).await.is_some_and(|n| n > 0.0), "no metric {infer}");
}

fn preprocessing() -> ImagePreprocessing {
    ImagePreprocessing { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
}

/// chelsea.png preprocessed exactly as /v1/classify does it, as the bytes of an FP32 [1, 3, 224, 224] tensor.
fn chelsea_tensor_bytes() -> Vec<u8> {
    let decoded = image::decode(&photo("chelsea.png"), image::ImageLimits::TRAINING).unwrap();
    let tensor = image::to_normalized_tensor(decoded, &preprocessing()).unwrap();
    let values = Vec::<f32>::try_from(tensor.reshape([-1])).unwrap();
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// v2 requests of a task model join the REST requests' queue and batches, and give the same numbers: the softmax
/// of the v2 logits is the /v1/classify scores of the same photo.
#[tokio::test(flavor = "multi_thread")]
async fn v2_and_rest_requests_share_the_batcher_and_agree() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let batches_before = server.metric(r#"ember_batch_size_count{model="mobilenet_v2"}"#).await.unwrap();
    let (body, header_length) = image_infer_request(&chelsea_tensor_bytes());
    let mut calls = Vec::new();
    for _ in 0..8 {
        let v2 = client()
            .post(server.url("/v2/models/mobilenet_v2/infer"))
            .header("inference-header-content-length", header_length)
            .body(body.clone())
            .send();
        let rest = client()
            .post(server.url("/v1/classify?top_k=3"))
            .header("content-type", "image/png")
            .body(photo("chelsea.png"))
            .send();
        calls.push(tokio::spawn(async move { (v2.await.unwrap(), rest.await.unwrap()) }));
    }
    let mut answers = Vec::new();
    for call in calls {
        let (v2, rest) = call.await.unwrap();
        assert_eq!((v2.status().as_u16(), rest.status().as_u16()), (200, 200));
        assert_eq!(v2.headers()["content-type"], "application/octet-stream");
        let length: usize = v2.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
        let bytes = v2.bytes().await.unwrap();
        let header: Value = serde_json::from_slice(&bytes[..length]).unwrap();
        assert_eq!(header["outputs"][0]["shape"], json!([1, 1000]));
        assert_eq!(header["model_version"], "1");
        let logits: Vec<f32> = bytes[length..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        answers.push((softmax(&logits), rest.json::<Value>().await.unwrap()));
    }
    for (probabilities, rest) in answers {
        for prediction in rest["predictions"].as_array().unwrap() {
            let index = prediction["index"].as_u64().unwrap() as usize;
            let score = prediction["score"].as_f64().unwrap() as f32;
            assert!(
                (probabilities[index] - score).abs() < 1e-4,
                "{}: v2 {} vs REST {score}",
                prediction["label"],
                probabilities[index]
            );
        }
    }
    let batches = server.metric(r#"ember_batch_size_count{model="mobilenet_v2"}"#).await.unwrap() - batches_before;
    assert!(batches < 16.0, "16 concurrent requests (8 v2, 8 REST) ran in {batches} batches: v2 requests did not join");
}

/// A tensor model whose model.toml declares outputs the model does not return fails to load, saying so (an ONNX
/// graph when its declared outputs are read, TorchScript at warm-up); one with bad declarations is refused naming
/// the key; and a tensor model has no REST route.
#[tokio::test(flavor = "multi_thread")]
async fn tensor_models_are_checked_against_their_declarations() {
    let repo = TempRepo::of("iris", &[]);
    let toml_path = repo.path().join("iris/model.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let one_output = toml.split("[[outputs]]\nname = \"species\"").next().unwrap().to_string();
    for (format, expected) in [
        ("onnx", "the graph has 2 outputs (`probabilities` FP32 [-1, 3], `species` INT64 [-1]); the task needs 1"),
        ("torchscript", "returns 2 tensors but model.toml declares 1 outputs"),
    ] {
        std::fs::write(&toml_path, one_output.replace("format = \"auto\"", &format!("format = \"{format}\""))).unwrap();
        let server = TestServer::start(repo.path(), &[]);
        let state = loop {
            let model: Value = reqwest::get(server.url("/v1/models/iris")).await.unwrap().json().await.unwrap();
            if model["state"] != "loading" {
                break model;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(state["state"], "failed", "{state}");
        let error = state["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{format}: {state}");
        let (status, _, message) = error_of(reqwest::get(server.url("/v2/models/iris/ready")).await.unwrap()).await;
        assert_eq!(status, 503, "{message}");
        server.stop();
    }

    std::fs::write(&toml_path, toml.replace("shape = [-1, 4]", "shape = [4]")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--port", "0", "--grpc-port", "0", "--model-repo", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("inputs[0].shape must start with -1"), "{stderr}");
}

/// Without an admin token the repository extension is off (404), as the admin API is.
#[tokio::test(flavor = "multi_thread")]
async fn the_repository_extension_needs_the_admin_api() {
    let repo = TempRepo::of("iris", &[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let response = client().post(server.url("/v2/repository/index")).send().await.unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, 404);
    assert!(message.contains("admin API is off"), "{message}");
    let response = client()
        .post(server.url("/v2/models/iris/infer"))
        .json(&json!({"inputs": [{"name": "measurements", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outputs"][1]["name"], "species");
    assert_eq!(body["outputs"][1]["data"], json!([0]));
    let (status, _, message) =
        error_of(server.post_body("/v1/models/iris/classify", "image/png", photo("chelsea.png")).await).await;
    assert_eq!(status, 400, "a tensor model has no REST route: {message}");
}

/// The gRPC port takes at most `--max-connections` connections, as the HTTP port does: a further client waits in
/// the listen backlog (its HTTP/2 preface is not even read) until a connection closes.
#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_port_serves_at_most_max_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let repo = TempRepo::of("iris", &[]);
    let port = free_port().to_string();
    let server = TestServer::start_ready(repo.path(), &["--max-connections", "2", "--grpc-port", &port]).await;
    let address = server.grpc.clone().unwrap();
    // The client's connection preface and an empty SETTINGS frame; a server that serves the connection answers
    // with its own SETTINGS frame (type 4).
    let open = || async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        stream
    };
    let served = |mut stream: tokio::net::TcpStream, wait: u64| async move {
        let mut header = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(wait), stream.read_exact(&mut header)).await;
        (read.is_ok_and(|r| r.is_ok()) && header[3] == 4, stream)
    };
    let (first, first_stream) = served(open().await, 5).await;
    let (second, _second_stream) = served(open().await, 5).await;
    assert!(first && second, "the first two connections are served");
    let third = open().await;
    let (third_served, third) = served(third, 1).await;
    assert!(!third_served, "a third connection waits while two are open");
    drop(first_stream);
    let (third_served, _third) = served(third, 5).await;
    assert!(third_served, "the third connection is served once one closed");
}

/// Hostile gRPC calls, each refused before anything is sized by what it claims, and the server answers the next
/// call: a message over --max-body-bytes (tonic reads only its length prefix), and a shape claiming 2^40 rows
/// with 16 bytes of data, raw or typed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_grpc_calls_are_refused_by_what_they_claim() {
    use ember::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use ember::grpc::proto::model_infer_request::InferInputTensor;
    use ember::grpc::proto::{InferTensorContents, ModelInferRequest};
    use tonic::Code;

    let repo = TempRepo::of("iris", &[]);
    let port = free_port().to_string();
    let server = TestServer::start_ready(repo.path(), &["--max-body-bytes", "4096", "--grpc-port", &port]).await;
    let address = format!("http://{}", server.grpc.clone().unwrap());
    let channel = tonic::transport::Endpoint::from_shared(address).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let request = |shape: Vec<i64>, raw: Option<Vec<u8>>, contents: Option<InferTensorContents>| ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "measurements".into(),
            datatype: "FP32".into(),
            shape,
            contents,
            ..Default::default()
        }],
        raw_input_contents: raw.into_iter().map(Into::into).collect(),
        ..Default::default()
    };
    let refused = |result: Result<tonic::Response<_>, tonic::Status>| result.expect_err("refused");

    let too_large = refused(client.model_infer(request(vec![256, 4], Some(vec![0; 4096]), None)).await);
    assert_eq!(too_large.code(), Code::OutOfRange, "{too_large:?}");
    assert!(too_large.message().contains("4096"), "{too_large:?}");

    let flower = [5.1f32, 3.5, 1.4, 0.2];
    let raw: Vec<u8> = flower.iter().flat_map(|v| v.to_le_bytes()).collect();
    let claimed = refused(client.model_infer(request(vec![1 << 40, 4], Some(raw.clone()), None)).await);
    assert_eq!(claimed.code(), Code::ResourceExhausted, "{claimed:?}");
    assert!(claimed.message().contains("batching.max_request_rows"), "{claimed:?}");
    let typed = InferTensorContents { fp32_contents: flower.to_vec(), ..Default::default() };
    let claimed = refused(client.model_infer(request(vec![1 << 40, 4], None, Some(typed.clone()))).await);
    assert_eq!(claimed.code(), Code::ResourceExhausted, "{claimed:?}");
    let wide = refused(client.model_infer(request(vec![1, 1 << 40], None, Some(typed.clone()))).await);
    assert_eq!(wide.code(), Code::InvalidArgument, "{wide:?}");

    let answer = client.model_infer(request(vec![1, 4], Some(raw), None)).await.expect("answered").into_inner();
    assert_eq!(answer.raw_output_contents.len(), 2, "both outputs come back raw");
}
