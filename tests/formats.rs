//! Model formats (issue 23): the default models served from model.onnx (ONNX Runtime) and mobilenet_v2 from
//! model.pt2 (AOTInductor) answer as their TorchScript model.pt does, over real HTTP, and each says which format
//! serves it; broken and hostile model files fail alone, naming the file, with the server ready and the other
//! models serving; ONNX Runtime is mapped only by a process that serves an ONNX model.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, models_dir, photo, TempRepo, TestServer};
use ember::engine::onnx::graph::proto;
use prost::Message;
use serde_json::{json, Value};

async fn get(server: &TestServer, path: &str) -> Value {
    reqwest::get(server.url(path)).await.unwrap().json().await.unwrap()
}

async fn post_json(server: &TestServer, path: &str, body: Value) -> Value {
    let response = client().post(server.url(path)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn classify(server: &TestServer, model: &str, file: &str) -> Value {
    let response = server.post_image(&format!("/v1/models/{model}/classify?top_k=5"), file).await;
    assert_eq!(response.status(), 200, "{model} {file}");
    response.json().await.unwrap()
}

/// Every copy of a model answers each request as its TorchScript copy (the first) does, the way `alike` says.
fn scores(answer: &Value) -> Vec<(String, f64)> {
    answer["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["label"].as_str().unwrap().to_string(), p["score"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_of_mobilenet_v2_answers_as_torchscript_and_says_which_it_is() {
    let repo = TempRepo::mobilenet(&[]);
    repo.add_as("mobilenet_v2", "mobilenet_v2_torchscript", &[("format", "\"torchscript\"")]);
    repo.add_as("mobilenet_v2", "mobilenet_v2_aoti", &[("format", "\"aoti\"")]);
    let server = TestServer::start_ready(repo.path(), &[]).await;

    for (model, format, platform) in [
        ("mobilenet_v2", "onnx", "onnxruntime_onnx"),
        ("mobilenet_v2_torchscript", "torchscript", "pytorch_libtorch"),
        ("mobilenet_v2_aoti", "aoti", "torch_aoti"),
    ] {
        let info = get(&server, &format!("/v1/models/{model}")).await;
        assert_eq!(info["format"], format, "{info}");
        assert_eq!(info["formats"], json!(["torchscript", "onnx", "aoti"]), "{info}");
        assert_eq!(get(&server, &format!("/v2/models/{model}")).await["platform"], platform);
        let series = format!("ember_model_info{{device=\"cpu\",format=\"{format}\",model=\"{model}\",version=\"1\"}}");
        assert_eq!(server.metric(&series).await, Some(1.0), "{series}");
    }
    for reference in common::references() {
        let want = scores(&classify(&server, "mobilenet_v2_torchscript", &reference.file).await);
        for model in ["mobilenet_v2", "mobilenet_v2_aoti"] {
            let got = scores(&classify(&server, model, &reference.file).await);
            assert_eq!(got[0].0, want[0].0, "{model} on {}: top-1", reference.file);
            for ((label, score), (_, wanted)) in got.iter().zip(&want) {
                assert!((score - wanted).abs() < 1e-4, "{model} on {}: {label} {score} vs {wanted}", reference.file);
            }
        }
    }
    // The same through the Open Inference Protocol: v2 tensors in, the same logits out.
    let image: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
    let request = json!({"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": image}]});
    let logits = |answer: Value| {
        answer["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>()
    };
    let want = logits(post_json(&server, "/v2/models/mobilenet_v2_torchscript/infer", request.clone()).await);
    for model in ["mobilenet_v2", "mobilenet_v2_aoti"] {
        let got = logits(post_json(&server, &format!("/v2/models/{model}/infer"), request.clone()).await);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-3, "{model}: logits up to {worst} from TorchScript's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_style_and_tensor_models_answer_alike_from_onnx() {
    // sentiment serves model.pt (model.toml: TorchScript is faster for it under load); its model.onnx is the copy.
    let repo = TempRepo::of("sentiment", &[]);
    repo.add_as("sentiment", "sentiment_onnx", &[("format", "\"onnx\"")]);
    repo.add("shakespeare", &[]).add_as("shakespeare", "shakespeare_torchscript", &[("format", "\"torchscript\"")]);
    repo.add("style_starry_night", &[]);
    repo.add_as("style_starry_night", "starry_torchscript", &[("format", "\"torchscript\"")]);
    repo.add("iris", &[]).add_as("iris", "iris_torchscript", &[("format", "\"torchscript\"")]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    for model in ["sentiment_onnx", "shakespeare", "style_starry_night", "iris"] {
        assert_eq!(get(&server, &format!("/v1/models/{model}")).await["format"], "onnx", "{model}");
    }
    assert_eq!(get(&server, "/v1/models/sentiment").await["format"], "torchscript");

    // The fourth text runs to several windows of 128 tokens.
    let long = vec!["the acting is wonderful but the story drags on"; 35].join(" ");
    let texts = json!({"texts": ["A gripping, beautifully acted film.", "Dull and far too long.", "Not bad at all.", long,
        "The plot twists and turns until nothing makes sense anymore, and yet I loved every minute of it."]});
    let onnx = post_json(&server, "/v1/models/sentiment_onnx/sentiment", texts.clone()).await;
    let torchscript = post_json(&server, "/v1/models/sentiment/sentiment", texts).await;
    for (got, want) in onnx["results"].as_array().unwrap().iter().zip(torchscript["results"].as_array().unwrap()) {
        assert_eq!(got["label"], want["label"]);
        assert_eq!(got["windows"], want["windows"]);
        let difference = (got["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs();
        assert!(difference < 1e-4, "{got} vs {want}");
    }

    // Temperature 0: the same bytes from the same prompt, state carried step by step in and out of the graph.
    let request = json!({"prompt": "KING LEAR.\n", "max_tokens": 120, "temperature": 0.0});
    let onnx = post_json(&server, "/v1/models/shakespeare/generate", request.clone()).await;
    let torchscript = post_json(&server, "/v1/models/shakespeare_torchscript/generate", request).await;
    assert_eq!(onnx["text"], torchscript["text"]);
    assert_eq!(onnx["tokens"], 120);

    // The style network at a size no export saw: the same picture within PNG rounding.
    let stylize = |model: &'static str| {
        let server = &server;
        async move {
            let url = format!("/v1/models/{model}/stylize?max_size=200");
            let response = server.post_image(&url, "chelsea.png").await;
            assert_eq!(response.status(), 200);
            image::load_from_memory(&response.bytes().await.unwrap()).unwrap().into_rgb8()
        }
    };
    let (got, want) = (stylize("style_starry_night").await, stylize("starry_torchscript").await);
    assert_eq!(got.dimensions(), want.dimensions());
    let squares: f64 =
        got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
    let rms = (squares / got.as_raw().len() as f64).sqrt();
    assert!(rms <= 1.0, "pixels {rms:.2} RMS (of 255) from TorchScript's");

    let flowers = json!({"inputs": [{"name": "measurements", "shape": [3, 4], "datatype": "FP32",
        "data": [5.1, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5, 5.9, 3.0, 4.2, 1.5]}]});
    let onnx = post_json(&server, "/v2/models/iris/infer", flowers.clone()).await;
    let torchscript = post_json(&server, "/v2/models/iris_torchscript/infer", flowers).await;
    assert_eq!(onnx["outputs"][1]["data"], json!([0, 2, 1]));
    assert_eq!(onnx["outputs"][1], torchscript["outputs"][1]);
}

/// A model folder `name` of mobilenet_v2's model.toml (with `format`) and labels, whose version 1 holds only
/// `file` with `bytes`.
fn broken_model(repo: &Path, name: &str, format: &str, file: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::copy(models_dir().join("mobilenet_v2/labels.txt"), dir.join("labels.txt")).unwrap();
    let toml = std::fs::read_to_string(models_dir().join("mobilenet_v2/model.toml")).unwrap();
    let toml = toml
        .replace("default = true", "default = false")
        .replace("format = \"auto\"", &format!("format = \"{format}\""));
    std::fs::write(dir.join("model.toml"), toml).unwrap();
    std::fs::write(dir.join("1").join(file), bytes).unwrap();
    dir.join("1")
}

fn tensor_info(name: &str, elem_type: i32, dims: &[i64]) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let dim = |d: i64| Dimension {
        value: Some(if d < 0 { Dim::DimParam("batch".into()) } else { Dim::DimValue(d) }),
        ..Default::default()
    };
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(proto::TensorShapeProto { dim: dims.iter().map(|&d| dim(d)).collect() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    domain: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<proto::AttributeProto>,
) -> proto::NodeProto {
    proto::NodeProto {
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: outputs.iter().map(|o| o.to_string()).collect(),
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        attribute,
        ..Default::default()
    }
}

/// A model of `nodes` (ONNX opset 17, and version 1 of every other domain they use).
fn graph_model(
    nodes: Vec<proto::NodeProto>,
    inputs: Vec<proto::ValueInfoProto>,
    outputs: Vec<proto::ValueInfoProto>,
    initializers: Vec<proto::TensorProto>,
) -> Vec<u8> {
    let mut domains: Vec<String> = nodes.iter().filter_map(|n| n.domain.clone()).filter(|d| !d.is_empty()).collect();
    domains.dedup();
    let opsets = std::iter::once((String::new(), 17)).chain(domains.into_iter().map(|d| (d, 1)));
    let model = proto::ModelProto {
        ir_version: Some(8),
        opset_import: opsets.map(|(d, v)| proto::OperatorSetIdProto { domain: Some(d), version: Some(v) }).collect(),
        graph: Some(proto::GraphProto {
            name: Some("hostile".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: initializers,
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// A one-node graph `image -> op -> logits` (`domain` for a custom operator).
fn one_node_graph(
    op: &str,
    domain: &str,
    (input, output): (proto::ValueInfoProto, proto::ValueInfoProto),
    initializers: Vec<proto::TensorProto>,
) -> Vec<u8> {
    graph_model(vec![node(op, domain, &["image"], &["logits"], vec![])], vec![input], vec![output], initializers)
}

fn int64_tensor(name: &str, values: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        data_type: Some(7),
        dims: vec![values.len() as i64],
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A float initializer whose data is external, at `location`.
fn external(location: &str) -> proto::TensorProto {
    proto::TensorProto {
        name: Some("stolen".into()),
        data_type: Some(1),
        dims: vec![4],
        data_location: Some(proto::tensor_proto::DataLocation::External as i32),
        external_data: vec![proto::StringStringEntryProto {
            key: Some("location".into()),
            value: Some(location.into()),
        }],
        ..Default::default()
    }
}

fn zip_package(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_hostile_model_files_fail_alone_naming_the_file() {
    let repo = TempRepo::mobilenet(&[]);
    let root = repo.path();
    let real = std::fs::read(models_dir().join("mobilenet_v2/1/model.onnx")).unwrap();
    // A classifier's interface, and one a text model would have (token ids).
    let image_input = || (tensor_info("image", 1, &[-1, 3, 224, 224]), tensor_info("logits", 1, &[-1, 1000]));
    let ids_input = || (tensor_info("image", 7, &[-1, -1]), tensor_info("logits", 7, &[-1, -1]));
    broken_model(root, "truncated", "onnx", "model.onnx", &real[..real.len() / 2]);
    broken_model(root, "garbage", "onnx", "model.onnx", b"\x08\x07 this is not an ONNX model at all");
    broken_model(
        root,
        "unknown_operator",
        "onnx",
        "model.onnx",
        &one_node_graph("Frobnicate", "com.example", image_input(), vec![]),
    );
    broken_model(
        root,
        "absolute_data",
        "onnx",
        "model.onnx",
        &one_node_graph("Identity", "", image_input(), vec![external("/etc/passwd")]),
    );
    let secret = root.join("secret.bin");
    std::fs::write(&secret, [7u8; 16]).unwrap();
    broken_model(
        root,
        "climbing_data",
        "onnx",
        "model.onnx",
        &one_node_graph("Identity", "", image_input(), vec![external("../../secret.bin")]),
    );
    let linked = broken_model(
        root,
        "linked_data",
        "onnx",
        "model.onnx",
        &one_node_graph("Identity", "", image_input(), vec![external("weights.bin")]),
    );
    std::os::unix::fs::symlink(&secret, linked.join("weights.bin")).unwrap();
    broken_model(root, "wrong_inputs", "onnx", "model.onnx", &one_node_graph("Identity", "", ids_input(), vec![]));
    broken_model(root, "not_a_package", "aoti", "model.pt2", b"TorchScript? No: a few bytes of junk");
    let cuda_metadata = br#"{"AOTI_DEVICE_KEY": "cuda", "AOTI_CPU_ISA": ""}"#;
    broken_model(
        root,
        "gpu_package",
        "aoti",
        "model.pt2",
        &zip_package(&[("model/data/aotinductor/model/x_metadata.json", cuda_metadata)]),
    );
    let cpu_metadata = br#"{"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": ""}"#;
    let escaping = zip_package(&[
        ("model/data/aotinductor/model/x_metadata.json", cpu_metadata),
        ("model/../../../escaped_by_ember_test.so", b"\x7fELF not really"),
    ]);
    broken_model(root, "escaping_package", "aoti", "model.pt2", &escaping);

    let server = TestServer::start(repo.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while reqwest::get(server.url("/health/ready")).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the server never turned ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (model, file, expected) in [
        ("truncated", "model.onnx", "is not an ONNX model"),
        ("garbage", "model.onnx", "is not an ONNX model"),
        ("unknown_operator", "model.onnx", "Frobnicate"),
        ("absolute_data", "model.onnx", "tensor `stolen` keeps its data at `/etc/passwd`, an absolute path"),
        ("climbing_data", "model.onnx", "which climbs out of the folder"),
        ("linked_data", "model.onnx", "through a symlink"),
        (
            "wrong_inputs",
            "model.onnx",
            "the graph's inputs 0 `image` is INT64 [-1, -1]; the task needs `image` FP32 [-1, 3, 224, 224]",
        ),
        ("not_a_package", "model.pt2", "is not an AOTInductor package: it is not a zip archive"),
        ("gpu_package", "model.pt2", "is compiled for cuda and this model runs on cpu"),
        (
            "escaping_package",
            "model.pt2",
            "refused before unpacking: its entry `model/../../../escaped_by_ember_test.so`",
        ),
    ] {
        let info = get(&server, &format!("/v1/models/{model}")).await;
        assert_eq!(info["state"], "failed", "{info}");
        let error = info["error"].as_str().unwrap();
        assert!(error.contains(&format!("{model}/1/{file}")) && error.contains(expected), "{model}: {error}");
        let (status, _, _) =
            common::error_of(server.post_image(&format!("/v1/models/{model}/classify"), "chelsea.png").await).await;
        assert_eq!(status, 503, "{model}");
    }
    // Nothing of the escaping package was written anywhere, and the good model serves.
    for place in [std::env::temp_dir(), root.to_path_buf(), root.join("escaping_package")] {
        assert!(!place.join("escaped_by_ember_test.so").exists(), "{} holds the escaped file", place.display());
    }
    assert_eq!(classify(&server, "mobilenet_v2", "chelsea.png").await["predictions"][0]["label"], "Egyptian cat");
}

/// The libraries a process has mapped, from /proc/<pid>/maps.
fn mapped(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_runtime_and_cuda_are_mapped_only_when_a_model_needs_them() {
    // TorchScript only: no ONNX Runtime in the process.
    let repo = TempRepo::of("iris", &[("format", "\"torchscript\"")]);
    let process = common::EmberProcess::serve(repo.path(), &[]);
    process.wait_ready().await;
    assert!(!mapped(process.child.id()).contains("libonnxruntime"), "a TorchScript-only server mapped ONNX Runtime");
    drop(process);
    // An ONNX model and an AOTInductor package on the CPU: ONNX Runtime, but still no libtorch_cuda (the
    // package's libtorch.so is ember's stub).
    let repo = TempRepo::of("iris", &[]);
    repo.add_as("mobilenet_v2", "mobilenet_v2_aoti", &[("format", "\"aoti\"")]);
    let process = common::EmberProcess::serve(repo.path(), &["--device", "cpu"]);
    process.wait_ready().await;
    let maps = mapped(process.child.id());
    assert!(maps.contains("libonnxruntime"), "iris serves from model.onnx");
    assert!(!maps.contains("libtorch_cuda"), "a CPU process mapped libtorch_cuda");
    let info: Value =
        reqwest::get(format!("{}/v1/models/mobilenet_v2_aoti", process.base)).await.unwrap().json().await.unwrap();
    assert_eq!(info["format"], "aoti", "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_without_model_pt_cannot_be_fine_tuned_and_says_why() {
    let repo = TempRepo::mobilenet(&[]);
    let version = broken_model(repo.path(), "onnx_only", "auto", "README", b"served from its model.onnx alone");
    std::os::unix::fs::symlink(models_dir().join("mobilenet_v2/1/model.onnx"), version.join("model.onnx")).unwrap();
    let token = "an-admin-token-for-formats";
    let server = TestServer::start_ready(repo.path(), &["--admin-token", token]).await;
    assert_eq!(get(&server, "/v1/models/onnx_only").await["format"], "onnx");
    let response = common::submit_fine_tune(&server, token, "onnx_only", vec![0u8; 16], "d.zip").await;
    let (status, kind, message) = common::error_of(response).await;
    assert_eq!((status, kind.as_str()), (422, "validation"), "{message}");
    assert!(message.contains("model `onnx_only` version 1 has no model.pt (it holds model.onnx)"), "{message}");

    let data = tempfile::tempdir().unwrap();
    for label in ["cat", "cup"] {
        std::fs::create_dir_all(data.path().join(label)).unwrap();
        std::fs::write(data.path().join(label).join("0.png"), photo("chelsea.png")).unwrap();
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["train", "--model-repo", repo.path().to_str().unwrap(), "--model", "onnx_only", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("version 1 has no model.pt (it holds model.onnx)"), "{stderr}");
}

/// A generation model's graph declares the shape of its state, from which the server makes the zero state of new
/// sequences: one that declares 2^40 values per sequence (4 TiB) fails its load naming the shape, before anything
/// is allocated, and the other models serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_state_too_large_to_allocate_fails_the_load_naming_it() {
    const FLOAT: i32 = 1;
    const INT64: i32 = 7;
    let repo = TempRepo::mobilenet(&[]);
    let dir = repo.path().join("huge_state");
    // ids [B, T] -> logits [B, T, 256] (the ids as floats, broadcast), and the state passed through.
    std::fs::create_dir_all(dir.join("1")).unwrap();
    let toml = std::fs::read_to_string(models_dir().join("shakespeare/model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), toml.replace("format = \"auto\"", "format = \"onnx\"")).unwrap();
    let to_float = proto::AttributeProto {
        name: Some("to".into()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(i64::from(FLOAT)),
        ..Default::default()
    };
    let huge = 1i64 << 40;
    let graph = graph_model(
        vec![
            node("Cast", "", &["input_ids"], &["ids"], vec![to_float]),
            node("Unsqueeze", "", &["ids", "last"], &["column"], vec![]),
            node("Expand", "", &["column", "vocabulary"], &["logits"], vec![]),
            node("Identity", "", &["state"], &["state_out"], vec![]),
        ],
        vec![tensor_info("input_ids", INT64, &[-1, -1]), tensor_info("state", FLOAT, &[1, -1, huge])],
        vec![tensor_info("logits", FLOAT, &[-1, -1, 256]), tensor_info("state_out", FLOAT, &[1, -1, huge])],
        vec![int64_tensor("last", &[2]), int64_tensor("vocabulary", &[1, 1, 256])],
    );
    std::fs::write(dir.join("1/model.onnx"), graph).unwrap();
    let server = TestServer::start(repo.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = get(&server, "/v1/models/huge_state").await;
        if info["state"] != "loading" {
            break info;
        }
        assert!(Instant::now() < deadline, "still loading: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info["state"], "failed", "{info}");
    let error = info["error"].as_str().unwrap();
    assert!(error.contains("huge_state/1/model.onnx") && error.contains("[1, 1, 1099511627776]"), "{error}");
    while reqwest::get(server.url("/health/ready")).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the server never turned ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(classify(&server, "mobilenet_v2", "chelsea.png").await["predictions"][0]["label"], "Egyptian cat");
}
