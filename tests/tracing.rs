//! OpenTelemetry traces against a real OTLP/HTTP receiver (tests/otlp/receiver.py decodes the protobuf with the
//! OpenTelemetry project's own definitions): the client's trace continues through ember's spans, each stage of a
//! request is a child span, probes make none, and a collector that is down costs requests nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, free_port, image_infer_request, photo, root, EmberProcess, TempRepo};
use serde_json::Value;

/// The receiver as a child process; the spans it printed, one JSON object each.
struct Collector {
    child: Child,
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let mut child = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/otlp/receiver.py"))
            .arg(&port_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the venv's python runs");
        let stdout = child.stdout.take().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&spans);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(serde_json::from_str(&line).expect("a span as JSON"));
            }
        });
        let started = Instant::now();
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                if !port.is_empty() {
                    break port;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Collector { child, url: format!("http://127.0.0.1:{port}"), spans }
    }

    /// The spans of `trace_id`, once there are at least `count` (waits up to 30 s: ember exports every 0.5 s).
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let spans: Vec<Value> =
                self.spans.lock().unwrap().iter().filter(|s| s["trace_id"] == trace_id).cloned().collect();
            if spans.len() >= count || started.elapsed() > Duration::from_secs(30) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_s_stages_are_spans_of_the_client_s_trace() {
    let collector = Collector::start();
    let repo = TempRepo::of("mobilenet_v2", &[]);
    let ember = EmberProcess::serve(repo.path(), &["--otlp-endpoint", &collector.url]);
    ember.wait_ready().await;
    let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    // A grey image: zeros after normalisation.
    let (body, header_length) = image_infer_request(&vec![0u8; 3 * 224 * 224 * 4]);
    let answer = client()
        .post(format!("{}/v2/models/mobilenet_v2/infer", ember.base))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header_length.to_string())
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let traceresponse = answer.headers()["traceresponse"].to_str().unwrap().to_string();
    assert!(traceresponse.starts_with(&format!("00-{trace_id}-")), "{traceresponse}");
    assert!(answer.headers().contains_key("x-request-id"));
    // Probes and scrapes: no spans.
    for path in ["/health/ready", "/health/live", "/metrics", "/v2/health/ready"] {
        assert_eq!(client().get(format!("{}{path}", ember.base)).send().await.unwrap().status(), 200, "{path}");
    }

    let spans = collector.trace(trace_id, 5).await;
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name}: {spans:?}"));
    let request = named("request");
    assert_eq!(request["parent_span_id"], client_span, "the client's span is the parent: {request}");
    assert_eq!(request["service"], "ember");
    assert_eq!(request["attributes"]["uri"], "/v2/models/mobilenet_v2/infer");
    assert_eq!(request["attributes"]["status"], 200);
    assert!(traceresponse.contains(request["span_id"].as_str().unwrap()), "{traceresponse} names the request span");
    for stage in ["decode", "queue_wait", "batch_forward", "encode"] {
        let span = named(stage);
        assert_eq!(span["parent_span_id"], request["span_id"], "{stage} is a child of the request: {span}");
        assert!(span["start"].as_u64() >= request["start"].as_u64(), "{stage} starts inside the request");
    }
    assert_eq!(named("batch_forward")["attributes"]["batch_size"], 1);
    // Let a scrape's spans (if there were any) reach the receiver, then look for them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = collector.spans.lock().unwrap().clone();
    let probes: Vec<&Value> = all
        .iter()
        .filter(|s| s["attributes"]["uri"].as_str().is_some_and(|u| u.contains("health") || u == "/metrics"))
        .collect();
    assert!(probes.is_empty(), "probes made spans: {probes:?}");
    assert!(all.iter().all(|s| s["trace_id"] == trace_id), "only the traced request made spans: {all:?}");
}

/// With the collector's port closed, every request is answered as without tracing, and the spans that could not
/// be sent are counted, not kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_fails_no_request_and_its_spans_are_counted() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let repo = TempRepo::of("mobilenet_v2", &[]);
    let ember = EmberProcess::serve(repo.path(), &["--otlp-endpoint", &endpoint]);
    ember.wait_ready().await;
    for _ in 0..20 {
        let answer = client()
            .post(format!("{}/v1/classify", ember.base))
            .header("content-type", "image/png")
            .body(photo("chelsea.png"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let started = Instant::now();
    let dropped = loop {
        let text = client().get(format!("{}/metrics", ember.base)).send().await.unwrap().text().await.unwrap();
        let dropped: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"ember_trace_spans_dropped_total{reason="export_failed"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        // 20 requests of 4 spans each (request, decode, queue_wait, batch_forward).
        if dropped >= 80.0 || started.elapsed() > Duration::from_secs(30) {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dropped >= 80.0, "dropped spans counted: {dropped}");
}
