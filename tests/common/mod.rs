//! Shared by the integration tests: a real ember server on a free port, the real default model, the sample
//! photos the setup copied from scikit-image and scikit-learn, and the Python side's reference outputs.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember::flags::ServeConfig;
use ember::server::Server;
use serde::Deserialize;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models_dir() -> PathBuf {
    root().join("models")
}

pub fn photo(name: &str) -> Vec<u8> {
    let path = root().join("tests/data/images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make models` first)", path.display()))
}

/// One photo as torchvision preprocessed and classified it (models/export/mobilenet_v2.py).
#[derive(Deserialize)]
pub struct Reference {
    pub file: String,
    pub top5: Vec<String>,
    pub expected_any_of: Vec<String>,
    pub probs: Vec<f32>,
}

pub fn references() -> Vec<Reference> {
    let path = root().join("tests/data/mobilenet_v2_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make models`)", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

pub fn content_type_of(photo: &str) -> &'static str {
    if photo.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

/// A temporary model repository holding some of the default models, each with some model.toml lines replaced
/// (`key = value`) and its version folder linked to the one the setup built.
pub struct TempRepo {
    pub dir: TempDir,
}

impl TempRepo {
    pub fn mobilenet(overrides: &[(&str, &str)]) -> TempRepo {
        TempRepo::of("mobilenet_v2", overrides)
    }

    pub fn of(model: &str, overrides: &[(&str, &str)]) -> TempRepo {
        let repo = TempRepo { dir: tempfile::tempdir().expect("temp dir") };
        repo.add(model, overrides);
        repo
    }

    /// Adds default model `model`: its model.toml (with `overrides`), labels and tokenizer, and version 1.
    pub fn add(&self, model: &str, overrides: &[(&str, &str)]) -> &TempRepo {
        self.add_as(model, model, overrides)
    }

    /// Adds default model `model` under the name `name` (a second copy, served in another format, say): with
    /// `default = false` unless `overrides` say otherwise.
    pub fn add_as(&self, model: &str, name: &str, overrides: &[(&str, &str)]) -> &TempRepo {
        let source = models_dir().join(model);
        let target = self.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        for file in ["labels.txt", "tokenizer.json"] {
            if source.join(file).exists() {
                std::fs::copy(source.join(file), target.join(file)).unwrap();
            }
        }
        std::os::unix::fs::symlink(source.join("1"), target.join("1")).unwrap();
        let mut toml = std::fs::read_to_string(source.join("model.toml")).unwrap();
        if name != model {
            toml = toml.replace("default = true", "default = false");
        }
        for (key, value) in overrides {
            let prefix = format!("{key} = ");
            let line = toml
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no `{key}` in {model}/model.toml"));
            toml = toml.replace(line, &format!("{key} = {value}"));
        }
        std::fs::write(target.join("model.toml"), toml).unwrap();
        self
    }

    /// Marks model `name` `[serving] load = "on-demand"`: under --model-memory-budget, loaded on first use.
    pub fn on_demand(&self, name: &str) -> &TempRepo {
        let toml = self.path().join(name).join("model.toml");
        let text = std::fs::read_to_string(&toml).unwrap() + "\n[serving]\nload = \"on-demand\"\n";
        std::fs::write(toml, text).unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An ember server running in this process on its own runtime, on 127.0.0.1 and a free port.
pub struct TestServer {
    pub base: String,
    /// `host:port` of the gRPC service, when the flags gave it a port (tests serve gRPC only when they ask).
    pub grpc: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A port no one listens on now, for a flag that has no "pick one" value (`--grpc-port 0` turns gRPC off).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestServer {
    /// Starts serving `repo`; models load in the background (see `wait_ready`).
    pub fn start(repo: &Path, flags: &[&str]) -> TestServer {
        let mut all_flags = vec!["--port", "0", "--model-repo", repo.to_str().unwrap()];
        if !flags.contains(&"--grpc-port") {
            all_flags.extend(["--grpc-port", "0"]);
        }
        all_flags.extend_from_slice(flags);
        let config = ServeConfig::from_flags(all_flags).expect("valid flags");
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let server = Server::bind(&config).await.expect("server binds");
                address_tx.send((server.local_addr(), server.grpc_addr())).unwrap();
                server
                    .serve(async {
                        let _ = shutdown_rx.await;
                    })
                    .await
                    .expect("server runs");
            });
        });
        let (address, grpc) = address_rx.recv_timeout(Duration::from_secs(30)).expect("server bound");
        TestServer {
            base: format!("http://{address}"),
            grpc: grpc.map(|address| address.to_string()),
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub async fn start_ready(repo: &Path, flags: &[&str]) -> TestServer {
        let server = TestServer::start(repo, flags);
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_ready(&self) {
        wait_ready(&self.base).await
    }

    /// POSTs a sample photo as raw bytes to `path`.
    pub async fn post_image(&self, path: &str, photo_name: &str) -> reqwest::Response {
        self.post_body(path, content_type_of(photo_name), photo(photo_name)).await
    }

    /// POSTs `body` with `content_type` to `path`.
    pub async fn post_body(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let request = client().post(self.url(path)).header("content-type", content_type).body(body);
        request.send().await.expect("request sent")
    }

    /// The value of one sample of the Prometheus text, e.g. `ember_batch_size_count{model="mobilenet_v2"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_at(&self.base, series).await
    }

    /// Stops the server gracefully and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Polls `{base}/health/ready` until it answers 200 (at most 120 s), failing fast when a model failed to load.
pub async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = reqwest::get(format!("{base}/health/ready")).await.expect("server answers");
        if response.status() == 200 {
            return;
        }
        let body = response.text().await.unwrap_or_default();
        assert!(!body.contains("failed"), "a model failed to load: {body}");
        assert!(Instant::now() < deadline, "not ready after 120s: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Status, `error_type` and message of an error response.
/// POST /admin/models/{model}/fine-tune with `archive` as the `data` part (named `file_name`) and the admin
/// `token`, no settings.
pub async fn submit_fine_tune(
    server: &TestServer,
    token: &str,
    model: &str,
    archive: Vec<u8>,
    file_name: &str,
) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(archive).file_name(file_name.to_string()));
    client()
        .post(server.url(&format!("/admin/models/{model}/fine-tune")))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    let kind = body["error_type"].as_str().unwrap_or_default().to_string();
    let message = body["error"].as_str().unwrap_or_default().to_string();
    (status, kind, message)
}

/// Polls GET /admin/jobs/{id} (with the admin `token`) until `done` holds for the job, for up to 3 minutes.
pub async fn job_until(
    server: &TestServer,
    token: &str,
    id: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let response = client().get(server.url(&format!("/admin/jobs/{id}"))).bearer_auth(token).send().await;
        let job: serde_json::Value = response.expect("server answers").json().await.expect("a job is JSON");
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never got there: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// (METHOD, path) of every operation in openapi.yaml (paths at two spaces of indent, methods at four).
pub fn documented() -> BTreeSet<(String, String)> {
    let spec = std::fs::read_to_string(root().join("openapi.yaml")).unwrap();
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in spec.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            path = None;
        } else if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')).filter(|_| in_paths) {
            path = Some(format!("/{p}"));
        } else if let (Some(p), Some(method)) = (&path, line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))) {
            if METHODS.contains(&method) {
                operations.insert((method.to_uppercase(), p.clone()));
            }
        }
    }
    operations
}

/// Runs a Python check script of tests/ with the venv's python (where the setup installed the real clients),
/// off the async runtime; fails the test with its output unless it exits 0 and prints `success`.
pub async fn run_python_check(script: &str, args: Vec<String>, success: &str) {
    let script = root().join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(root().join(".venv/bin/python"))
            .arg(&script)
            .args(&args)
            .output()
            .expect("the venv's python runs")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(success), "{stdout}\n{stderr}");
}

/// `ember serve --port 0` as its own process (what a process-wide setting such as tracing needs), killed when
/// dropped.
pub struct EmberProcess {
    pub child: std::process::Child,
    pub base: String,
    /// Every line it has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for EmberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample of the Prometheus text of the server at `base`.
pub async fn metric_at(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl EmberProcess {
    /// Starts serving `repo` with `flags` (gRPC off unless they give `--grpc-port`) and reads the chosen port from
    /// its log.
    pub fn serve(repo: &Path, flags: &[&str]) -> EmberProcess {
        use std::io::{BufRead, BufReader};
        let grpc_off: &[&str] = if flags.contains(&"--grpc-port") { &[] } else { &["--grpc-port", "0"] };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["serve", "--port", "0"])
            .args(grpc_off)
            .arg("--model-repo")
            .arg(repo)
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                // `listening on http://ADDRESS` (or https:// with TLS)
                if let Some(url) = line.split("listening on ").nth(1).filter(|url| url.starts_with("http")) {
                    let _ = tx.send(url.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(60)).expect("ember logs its address");
        EmberProcess { child, base, log }
    }

    pub async fn wait_ready(&self) {
        wait_ready(&self.base).await
    }

    /// Waits up to `within` for a logged line that contains every one of `words`.
    pub async fn wait_for_log(&self, words: &[&str], within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let found = self.log.lock().unwrap().iter().find(|line| words.iter().all(|w| line.contains(w))).cloned();
            match found {
                Some(line) => return line,
                None if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                None => panic!("no log line with {words:?} within {within:?}"),
            }
        }
    }

    /// A memory figure of the process from /proc/PID/status, in bytes: `VmRSS` (now) or `VmHWM` (its peak).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).expect("a VmRSS line");
        line.trim().trim_end_matches(" kB").parse::<u64>().unwrap() * 1024
    }
}

/// A binary Open Inference Protocol request for an image classifier: the JSON header (one FP32 [1, 3, 224, 224]
/// `image`, `logits` asked for as binary), then the tensor's little-endian bytes; and the header's length.
pub fn image_infer_request(tensor: &[u8]) -> (Vec<u8>, usize) {
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
    }))
    .unwrap();
    let length = header.len();
    ([header, tensor.to_vec()].concat(), length)
}
