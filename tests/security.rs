//! At the door: TLS on the HTTP port (a test CA made here, with rcgen), API keys and per-client rate limits,
//! against a real `ember serve` on a real port serving the iris model, with real clients (reqwest over rustls,
//! curl over OpenSSL, Python's requests, tritonclient[grpc] and openai) and `ember-probe`, the image's HEALTHCHECK.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, metric_at, run_python_check, EmberProcess, TempRepo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::{json, Value};

/// A CA that signs the certificates of one test.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, written as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        TestCa { cert: params.self_signed(&key).unwrap(), key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 (a server's) or for a client, written under `dir`.
    fn issue(&self, dir: &Path, name: &str, purpose: ExtendedKeyUsagePurpose, expired: bool) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

fn https_client(ca: &TestCa) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Waits until `base` is ready, asked with `client` (which trusts the server's CA).
async fn wait_ready_over(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/health/ready")).send().await.map(|answer| answer.status());
        if matches!(ready, Ok(reqwest::StatusCode::OK)) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready over TLS: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn flowers() -> Value {
    json!({"inputs": [{"name": "measurements", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
}

fn tls_flags(server: &Issued) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec!["--tls-cert".into(), path(&server.cert), "--tls-key".into(), path(&server.key)]
}

fn serve(repo: &TempRepo, flags: &[String]) -> EmberProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    EmberProcess::serve(repo.path(), &flags)
}

/// `ember serve` that must not start: its exit status and what it printed.
fn refused_start(repo: &TempRepo, flags: &[String]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--port", "0", "--grpc-port", "0", "--model-repo"])
        .arg(repo.path())
        .args(flags)
        .output()
        .unwrap();
    assert!(!output.status.success(), "ember started with {flags:?}");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Connects and reads until the server closes the connection or `within` passes: what it sent.
fn read_until_closed(address: &str, send: &[u8], within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    stream.write_all(send).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (answer, started.elapsed())
}

/// `ember-probe` (the image's HEALTHCHECK; probe/, built by `make build` beside ember) of the server at `base`,
/// with `args` and the variables `env` (none of the test's own EMBER_*): whether it said healthy, and what it
/// printed.
fn probe(base: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let port = base.rsplit(':').next().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_ember")).with_file_name("ember-probe");
    assert!(binary.exists(), "{} is missing: `make build` (cargo build --release -p ember-probe)", binary.display());
    let mut command = std::process::Command::new(binary);
    command.args(["--port", port]).args(args);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("EMBER_")) {
        command.env_remove(name);
    }
    let output = command.envs(env.iter().copied()).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plain_http_and_stalled_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ember test CA");
    let server_cert = ca.issue(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth, false);
    let repo = TempRepo::of("iris", &[]);
    let mut flags = tls_flags(&server_cert);
    flags.extend(["--header-read-timeout-ms".to_string(), "1000".to_string()]);
    let server = serve(&repo, &flags);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let base = server.base.replace("127.0.0.1", "localhost");
    let client = https_client(&ca);
    wait_ready_over(&client, &base).await;
    let answer = client.post(format!("{base}/v2/models/iris/infer")).json(&flowers()).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);

    // curl, over OpenSSL: TLS 1.2 and 1.3 are served, 1.1 is not.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let curl = |extra: &[&str]| {
        let mut command = std::process::Command::new("curl");
        command.args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", "--cacert"]);
        command.arg(&ca_file).args(extra).arg(format!("{base}/health/live"));
        command.output().unwrap()
    };
    for version in [["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3", "--tls-max", "1.3"]] {
        let output = curl(&version);
        assert_eq!(String::from_utf8_lossy(&output.stdout), "200 0", "{version:?}: {output:?}");
    }
    let old = curl(&["--tlsv1.1", "--tls-max", "1.1"]);
    assert!(!old.status.success(), "TLS 1.1 was served: {old:?}");

    // A plain-HTTP request to the TLS port: told what to do, in plain text.
    let address = server.base.trim_start_matches("https://").to_string();
    let (answer, _) =
        read_until_closed(&address, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("speaks HTTPS"), "{answer}");
    // A connection that never starts its handshake is closed after the header timeout (1 s here).
    let (answer, took) = read_until_closed(&address, b"", Duration::from_secs(10));
    assert!(answer.is_empty() && took < Duration::from_secs(5), "closed after {took:?}: {answer:?}");
    // One that starts it and stalls, too.
    let (_, took) = read_until_closed(&address, &[22, 3, 1, 0, 200, 1], Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "a stalled handshake held its connection {took:?}");
    let failures = |reason: &str| {
        let series = format!("ember_tls_handshake_failures_total{{port=\"http\",reason=\"{reason}\"}}");
        let (client, base) = (client.clone(), base.clone());
        async move {
            let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            text.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
        }
    };
    assert_eq!(failures("plain_http").await, 1.0);
    assert_eq!(failures("timeout").await, 2.0);
    assert_eq!(failures("protocol").await, 1.0, "curl's TLS 1.1");

    // The probe speaks TLS when told to, or when the image's EMBER_TLS_CERT (serve's) is set; a plain one is told
    // why it was refused.
    let (healthy, said) = probe(&server.base, &["--tls-cert", "not-read.pem"], &[]);
    assert!(healthy && said.starts_with("HTTP/1.1 200"), "{said}");
    let cert = server_cert.cert.display().to_string();
    let (healthy, said) = probe(&server.base, &[], &[("EMBER_TLS_CERT", &cert)]);
    assert!(healthy, "{said}");
    let (healthy, said) = probe(&server.base, &[], &[]);
    assert!(!healthy && said.contains("answered HTTP/1.1 400") && said.contains("speaks HTTPS"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_serves_new_connections_while_open_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (first_ca, second_ca) = (TestCa::new("first CA"), TestCa::new("second CA"));
    let live = first_ca.issue(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth, false);
    let repo = TempRepo::of("iris", &[]);
    let server = serve(&repo, &tls_flags(&live));
    let base = server.base.replace("127.0.0.1", "localhost");
    let before = https_client(&first_ca);
    wait_ready_over(&before, &base).await;

    // cert-manager's rotation: new files in place, from another CA.
    let rotated = second_ca.issue(dir.path(), "rotated", ExtendedKeyUsagePurpose::ServerAuth, false);
    std::fs::rename(&rotated.key, &live.key).unwrap();
    std::fs::rename(&rotated.cert, &live.cert).unwrap();
    server.wait_for_log(&["TLS certificate reloaded"], Duration::from_secs(10)).await;
    let after = https_client(&second_ca);
    let answer = after.post(format!("{base}/v2/models/iris/infer")).json(&flowers()).send().await.unwrap();
    assert_eq!(answer.status(), 200, "a new connection gets the new certificate");
    let open = before.post(format!("{base}/v2/models/iris/infer")).json(&flowers()).send().await.unwrap();
    assert_eq!(open.status(), 200, "the connection opened before the rotation goes on");
    assert!(https_client(&first_ca).get(format!("{base}/health/live")).send().await.is_err(), "the old one is gone");

    // A half-written rotation (a key that is not the certificate's) leaves the good one in force.
    let stray = second_ca.issue(dir.path(), "stray", ExtendedKeyUsagePurpose::ServerAuth, false);
    std::fs::rename(&stray.key, &live.key).unwrap();
    server.wait_for_log(&["do not make a usable", "does not fit"], Duration::from_secs(10)).await;
    let still = https_client(&second_ca).get(format!("{base}/health/live")).send().await.unwrap();
    assert_eq!(still.status(), 200);
    let failures = metric_at_tls(&after, &base, "ember_tls_reload_failures_total").await;
    assert_eq!(failures, Some(1.0));
}

async fn metric_at_tls(client: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_a_client_without_a_certificate_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ember test CA");
    let server_cert = ca.issue(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth, false);
    let client_cert = ca.issue(dir.path(), "client", ExtendedKeyUsagePurpose::ClientAuth, false);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let repo = TempRepo::of("iris", &[]);
    let mut flags = tls_flags(&server_cert);
    flags.extend(["--tls-client-ca".to_string(), ca_file.display().to_string()]);
    let server = serve(&repo, &flags);
    let base = server.base.replace("127.0.0.1", "localhost");
    let pem = [std::fs::read(&client_cert.cert).unwrap(), std::fs::read(&client_cert.key).unwrap()].concat();
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let with_certificate = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    wait_ready_over(&with_certificate, &base).await;
    let refused = https_client(&ca).get(format!("{base}/health/live")).send().await;
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");

    // The probe presents the certificate it is given (what kubelet's httpGet cannot), and is refused without.
    let (cert, key) = (client_cert.cert.display().to_string(), client_cert.key.display().to_string());
    let tls = ["--tls-cert", "not-read.pem"];
    let (healthy, said) =
        probe(&server.base, &tls, &[("EMBER_PROBE_CLIENT_CERT", &cert), ("EMBER_PROBE_CLIENT_KEY", &key)]);
    assert!(healthy, "{said}");
    let (healthy, said) = probe(&server.base, &tls, &[]);
    assert!(!healthy && said.contains("no answer from https://"), "{said}");
    let series = "ember_tls_handshake_failures_total{port=\"http\",reason=\"client_certificate\"}";
    assert_eq!(metric_at_tls(&with_certificate, &base, series).await, Some(2.0), "reqwest's and the probe's");
}

#[test]
fn unusable_tls_files_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ember test CA");
    let good = ca.issue(dir.path(), "good", ExtendedKeyUsagePurpose::ServerAuth, false);
    let other = ca.issue(dir.path(), "other", ExtendedKeyUsagePurpose::ServerAuth, false);
    let expired = ca.issue(dir.path(), "expired", ExtendedKeyUsagePurpose::ServerAuth, true);
    let repo = TempRepo::of("iris", &[]);
    let flags = |cert: &Path, key: &Path| tls_flags(&Issued { cert: cert.to_path_buf(), key: key.to_path_buf() });

    let mismatched = refused_start(&repo, &flags(&good.cert, &other.key));
    assert!(
        mismatched.contains(&other.key.display().to_string()) && mismatched.contains("does not fit"),
        "{mismatched}"
    );
    let stale = refused_start(&repo, &flags(&expired.cert, &expired.key));
    assert!(stale.contains(&expired.cert.display().to_string()) && stale.contains("expired on"), "{stale}");
    let missing = dir.path().join("missing.crt");
    let unreadable = refused_start(&repo, &flags(&missing, &good.key));
    assert!(
        unreadable.contains("cannot read the TLS certificate") && unreadable.contains("missing.crt"),
        "{unreadable}"
    );
    let not_pem = refused_start(&repo, &flags(&good.key, &good.key));
    assert!(not_pem.contains("holds no PEM certificate"), "{not_pem}");
    let alone = refused_start(&repo, &["--tls-cert".to_string(), good.cert.display().to_string()]);
    assert!(alone.contains("--tls-key"), "{alone}");
}

const KEY_OPS: &str = "ops-0123456789abcdef0123456789";
const KEY_BATCH: &str = "batch-0123456789abcdef012345678";

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_guard_the_inference_routes_and_follow_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // A comment, a blank line, a named key, and one with its own rate limit (1/s, burst 2).
    std::fs::write(&keys, format!("# keys of the tests\n\nops:{KEY_OPS}\n  \nbatch:{KEY_BATCH}:1:2\n")).unwrap();
    let repo = TempRepo::of("iris", &[]);
    let server = serve(&repo, &["--api-keys-file".to_string(), keys.display().to_string()]);
    server.wait_ready().await;
    let client = common::client();
    let infer = |key: Option<&str>| {
        let request = client.post(format!("{}/v2/models/iris/infer", server.base)).json(&flowers());
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        request.send()
    };
    let missing = infer(None).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"ember\"");
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error_type"], "unauthorized", "{body}");
    assert!(body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
    let near_miss = &KEY_OPS[..KEY_OPS.len() - 1];
    for wrong in [near_miss, "Basic abc", "wrong-key-wrong-key-wrong"] {
        let answer = infer(Some(wrong)).await.unwrap();
        assert_eq!(answer.status(), 401, "{wrong}");
        let text = answer.text().await.unwrap();
        assert!(!text.contains(near_miss), "the answer shows no key: {text}");
    }
    assert_eq!(infer(Some(KEY_OPS)).await.unwrap().status(), 200);
    // OpenAI's shape on its route.
    let completion =
        client.post(format!("{}/v1/completions", server.base)).json(&json!({"model": "iris", "prompt": "x"}));
    let body: Value = completion.send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (body["error"]["type"].as_str(), body["error"]["code"].as_str()),
        (Some("authentication_error"), Some("unauthorized")),
        "{body}"
    );
    // The operator's routes stay open.
    for path in ["/health/ready", "/metrics", "/openapi.yaml", "/docs", "/v2/health/live"] {
        let answer = client.get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }

    // 1,000 wrong keys: each refused, and the right one still served.
    let guesses: Vec<String> = (0..1000).map(|i| format!("guess-{i:04}-0123456789abcdef")).collect();
    for chunk in guesses.chunks(50) {
        let answers = futures_util::future::join_all(chunk.iter().map(|guess| infer(Some(guess)))).await;
        assert!(answers.into_iter().all(|answer| answer.unwrap().status() == 401));
    }
    assert_eq!(infer(Some(KEY_OPS)).await.unwrap().status(), 200);
    let invalid = metric_at(&server.base, "ember_api_key_refusals_total{reason=\"invalid\"}").await;
    assert_eq!(invalid, Some(1003.0), "3 wrong keys, then 1,000");

    // A key's own rate limit: a burst of 2, then 429 with Retry-After, counted under the key's name.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(infer(Some(KEY_BATCH)).await.unwrap().status().as_u16());
    }
    let third = infer(Some(KEY_BATCH)).await.unwrap();
    statuses.push(third.status().as_u16());
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error_type"], "rate_limited", "{body}");
    assert!(body["error"].as_str().unwrap().contains("key `batch`"), "{body}");
    assert_eq!(metric_at(&server.base, "ember_rate_limited_total{client=\"batch\"}").await, Some(1.0));
    assert_eq!(infer(Some(KEY_OPS)).await.unwrap().status(), 200, "another key has its own bucket");

    // The file is edited: the new key works and the removed one does not, within a few seconds.
    let replaced = "ops-fedcba9876543210fedcba9876";
    std::fs::write(&keys, format!("ops:{replaced}\n")).unwrap();
    server.wait_for_log(&["API keys reloaded"], Duration::from_secs(10)).await;
    assert_eq!(infer(Some(replaced)).await.unwrap().status(), 200);
    assert_eq!(infer(Some(KEY_OPS)).await.unwrap().status(), 401);
    // The file turns unreadable: the last good keys stay in force, and the log says so.
    std::fs::remove_file(&keys).unwrap();
    server
        .wait_for_log(&["cannot read the API keys file", "last good keys stay in force"], Duration::from_secs(10))
        .await;
    assert_eq!(infer(Some(replaced)).await.unwrap().status(), 200);
    let logged = server.log.lock().unwrap().join("\n");
    for key in [KEY_OPS, KEY_BATCH, replaced, near_miss] {
        assert!(!logged.contains(key), "a key reached the log");
    }
}

#[test]
fn a_keys_file_with_a_bad_line_stops_the_start_naming_the_line_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("ops:{KEY_OPS}\nbatch:has a space 0123456789abcdef\n")).unwrap();
    let repo = TempRepo::of("iris", &[]);
    let output = refused_start(&repo, &["--api-keys-file".to_string(), keys.display().to_string()]);
    assert!(output.contains("line 2") && output.contains("space"), "{output}");
    assert!(!output.contains("has a space") && !output.contains(KEY_OPS), "the error shows no key: {output}");
}

/// Per-address limits without keys: 10,000 client addresses (127.0.x.y) over the loopback keep at most
/// `--rate-limit-clients` buckets, and a client over its rate is refused before its body is read.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_client_addresses_keeps_the_rate_limiter_bounded() {
    let repo = TempRepo::of("iris", &[]);
    let flags = ["--rate-limit", "5:5", "--rate-limit-clients", "256"].map(String::from);
    let server = serve(&repo, &flags);
    server.wait_ready().await;
    let rss_before = server.memory("VmRSS");
    let port: u16 = server.base.rsplit(':').next().unwrap().parse().unwrap();
    let started = Instant::now();
    let addresses: Vec<IpAddr> =
        (0..10_000u32).map(|n| IpAddr::V4(Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8))).collect();
    for chunk in addresses.chunks(64) {
        let asks = chunk.iter().map(|address| {
            let client = reqwest::Client::builder().local_address(*address).build().unwrap();
            let url = format!("http://127.0.0.1:{port}/v1/models");
            async move { client.get(url).send().await.map(|a| a.status().as_u16()) }
        });
        for status in futures_util::future::join_all(asks).await {
            assert_eq!(status.unwrap(), 200);
        }
    }
    let took = started.elapsed();
    let tracked = metric_at(&server.base, "ember_rate_limit_clients").await.unwrap();
    assert!(tracked <= 256.0, "{tracked} clients tracked");
    let grown = server.memory("VmRSS").saturating_sub(rss_before);
    assert!(grown < 32 << 20, "10,000 addresses in {took:?} grew the RSS by {} MiB", grown >> 20);

    // One address over its rate: 429 with Retry-After, before its (never sent) body is read.
    let address = format!("127.0.0.1:{port}");
    for _ in 0..5 {
        let _ = common::client().get(format!("http://{address}/v1/models")).send().await.unwrap();
    }
    let request = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let (answer, took) = read_until_closed(&address, request, Duration::from_secs(10));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("retry-after") && answer.contains("rate_limited"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert!(metric_at(&server.base, "ember_rate_limited_total{client=\"address\"}").await.unwrap() >= 1.0);
}

/// `--protect-ops` closes the operator's routes too; the probe sends a key from its environment.
#[tokio::test(flavor = "multi_thread")]
async fn protect_ops_puts_the_operator_routes_behind_the_keys_and_the_probe_sends_one() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("ops:{KEY_OPS}\n")).unwrap();
    let repo = TempRepo::of("iris", &[]);
    let server = serve(&repo, &["--api-keys-file".to_string(), keys.display().to_string(), "--protect-ops".into()]);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {KEY_OPS}").parse().unwrap());
    let with_key = reqwest::Client::builder().default_headers(headers).build().unwrap();
    wait_ready_over(&with_key, &server.base).await;
    for path in ["/health/ready", "/health/live", "/metrics", "/docs", "/openapi.yaml", "/v2/health/ready"] {
        let open = common::client().get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(open.status(), 401, "{path} without a key");
        let keyed = with_key.get(format!("{}{path}", server.base)).send().await.unwrap();
        assert_eq!(keyed.status(), 200, "{path} with the key");
    }
    let (healthy, said) = probe(&server.base, &[], &[]);
    assert!(!healthy && said.contains("answered HTTP/1.1 401"), "{said}");
    let (healthy, said) = probe(&server.base, &[], &[("EMBER_PROBE_API_KEY", KEY_OPS)]);
    assert!(healthy, "{said}");
    assert!(!said.contains(KEY_OPS));
}

/// Python's clients over TLS with a key (tests/security/clients_check.py): requests on v2 HTTP, tritonclient[grpc]
/// with ssl=True on the gRPC port, the openai client on /v1, each verifying the server against the test CA.
#[tokio::test(flavor = "multi_thread")]
async fn python_clients_reach_both_ports_over_tls_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ember test CA");
    let server_cert = ca.issue(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth, false);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("python:{KEY_OPS}\n")).unwrap();
    let repo = TempRepo::of("iris", &[]);
    repo.add("shakespeare", &[]);
    let grpc_port = free_port().to_string();
    let mut flags = tls_flags(&server_cert);
    flags.extend(["--grpc-port".into(), grpc_port.clone(), "--api-keys-file".into(), keys.display().to_string()]);
    let server = serve(&repo, &flags);
    let base = server.base.replace("127.0.0.1", "localhost");
    wait_ready_over(&https_client(&ca), &base).await;
    let args = vec![base, format!("localhost:{grpc_port}"), ca_file.display().to_string(), KEY_OPS.to_string()];
    run_python_check("tests/security/clients_check.py", args, "python TLS client checks passed").await;
}
