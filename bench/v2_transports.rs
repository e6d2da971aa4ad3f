//! The Open Inference Protocol over HTTP and over gRPC, side by side on one server, from one client written the
//! same way for both: HTTP with binary tensor data (what tritonclient[http] sends by default) and gRPC with
//! `raw_input_contents` (what tritonclient[grpc] sends), outputs binary / raw on both. bench/grpc.sh runs it.
//!
//!   v2_transports HTTP_ADDRESS GRPC_ADDRESS SECONDS CONCURRENCY[,CONCURRENCY...] MODEL INPUT SHAPE TENSOR_FILE
//!
//! SHAPE is comma-separated (1,3,224,224); TENSOR_FILE holds the FP32 input's little-endian bytes. Prints one
//! Markdown row per transport and concurrency: requests/s, p50 and p99 latency in ms, errors.

mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use ember::grpc::proto::model_infer_request::InferInputTensor;
use ember::grpc::proto::ModelInferRequest;
use stats::median;

struct Case {
    model: String,
    input: String,
    shape: Vec<i64>,
    tensor: bytes::Bytes,
}

/// One request's latency, or `None` for an error.
type Sample = Option<Duration>;

async fn http_loop(
    client: reqwest::Client,
    url: String,
    body: bytes::Bytes,
    header: usize,
    until: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let sent = client
            .post(&url)
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header.to_string())
            .body(body.clone())
            .send()
            .await;
        let ok = match sent {
            Ok(answer) if answer.status() == 200 => answer.bytes().await.is_ok(),
            _ => false,
        };
        samples.push(ok.then(|| started.elapsed()));
    }
    samples
}

async fn grpc_loop(
    mut client: GrpcInferenceServiceClient<tonic::transport::Channel>,
    request: ModelInferRequest,
    until: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let ok = client.model_infer(request.clone()).await.is_ok_and(|r| !r.get_ref().raw_output_contents.is_empty());
        samples.push(ok.then(|| started.elapsed()));
    }
    samples
}

fn row(transport: &str, concurrency: usize, seconds: f64, samples: Vec<Sample>) {
    let errors = samples.iter().filter(|s| s.is_none()).count();
    let mut ms: Vec<f64> = samples.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        println!("| {transport} | {concurrency} | 0 | - | - | {errors} |");
        return;
    }
    let p50 = median(&mut ms);
    let p99 = ms[((ms.len() as f64 * 0.99) as usize).min(ms.len() - 1)];
    println!("| {transport} | {concurrency} | {:.1} | {p50:.1} | {p99:.1} | {errors} |", ms.len() as f64 / seconds);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, http, grpc, seconds, concurrencies, model, input, shape, tensor_file] = args.as_slice() else {
        panic!("usage: v2_transports HTTP GRPC SECONDS C1,C2 MODEL INPUT SHAPE TENSOR_FILE");
    };
    let seconds: f64 = seconds.parse().expect("seconds");
    let case = Arc::new(Case {
        model: model.clone(),
        input: input.clone(),
        shape: shape.split(',').map(|d| d.parse().expect("a dimension")).collect(),
        tensor: std::fs::read(tensor_file).expect("the tensor file").into(),
    });
    // HTTP: the JSON header, then the tensor's bytes.
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": case.input, "shape": case.shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": case.tensor.len()}}],
        "parameters": {"binary_data_output": true}
    }))
    .unwrap();
    let http_body = bytes::Bytes::from([header.clone(), case.tensor.to_vec()].concat());
    let url = format!("http://{http}/v2/models/{}/infer", case.model);
    let grpc_request = ModelInferRequest {
        model_name: case.model.clone(),
        inputs: vec![InferInputTensor {
            name: case.input.clone(),
            datatype: "FP32".into(),
            shape: case.shape.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![case.tensor.clone()],
        ..Default::default()
    };
    println!("| transport | concurrency | requests/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for concurrency in concurrencies.split(',').map(|c| c.parse::<usize>().expect("a concurrency")) {
        // HTTP/1.1 keeps one connection per concurrent client; gRPC multiplexes them over one HTTP/2 connection,
        // as tritonclient does.
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(http_loop(client.clone(), url.clone(), http_body.clone(), header.len(), until)))
            .collect();
        let samples = futures_util::future::join_all(tasks).await.into_iter().flat_map(Result::unwrap).collect();
        row("HTTP /v2 binary", concurrency, seconds, samples);

        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        let client = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> =
            (0..concurrency).map(|_| tokio::spawn(grpc_loop(client.clone(), grpc_request.clone(), until))).collect();
        let samples = futures_util::future::join_all(tasks).await.into_iter().flat_map(Result::unwrap).collect();
        row("gRPC raw", concurrency, seconds, samples);
    }
}
