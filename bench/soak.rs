//! The reliability suite (bench/RESULTS.md, "Reliability"): a release `ember serve` with every default model in
//! a copy of the repository, driven over loopback through four phases, each with its pass condition:
//!
//! 1. overload: classify at 3x the measured capacity (open loop) answers only 200 and 429, no 5xx and no
//!    connection error, and a lone request right after is as fast as before;
//! 2. half-open connections: 1,000 clients that send half a request line and stall leave normal requests
//!    answered within 1 s;
//! 3. mixed traffic for SOAK_SECONDS (600): classify, sentiment, generate (a third of the streams dropped
//!    mid-way), stylize, v2 infer and a fine-tuning job give no failure, and RSS levels off (the mean of the last
//!    third of the run within 5% of the middle third's);
//! 4. SIGTERM under load: every request already sent is answered and the process exits 0.
//!
//! cargo build --release --bin ember --example soak && target/release/examples/soak [PORT]   (bench/soak.sh)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const TOKEN: &str = "soak-admin-token";

/// Outcomes by kind: an HTTP status ("200", "429", ...) or "connection error: ...".
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, usize>>);

impl Tally {
    fn add(&self, outcome: String) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }

    fn record(&self, result: &reqwest::Result<reqwest::Response>) {
        self.add(match result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(e) => format!("connection error: {}", error_kind(e)),
        });
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }

    /// Outcomes other than those `allowed`.
    fn failures(&self, allowed: &[&str]) -> usize {
        self.counts().iter().filter(|(k, _)| !allowed.contains(&k.as_str())).map(|(_, n)| n).sum()
    }
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// Where the server answers, its process (for RSS) and its log.
#[derive(Clone)]
struct Server {
    base: String,
    pid: u32,
    log: PathBuf,
}

impl Server {
    fn start(repo: &Path, port: u16, log: PathBuf) -> anyhow::Result<(Child, Server)> {
        let child = Command::new("target/release/ember")
            .args(["serve", "--port", &port.to_string(), "--grpc-port", "0", "--model-repo"])
            .arg(repo)
            .args(["--admin-token", TOKEN, "--watch-interval-ms", "1000"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let server = Server { base: format!("http://127.0.0.1:{port}"), pid: child.id(), log };
        Ok((child, server))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().split(' ').next()?.parse().ok());
        kib.unwrap_or(0.0) / 1024.0
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if client.get(self.url("/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("not ready after 120 s; see {}", self.log.display())
    }
}

/// The requests of the mixed traffic, each a closure over the shared client.
struct Requests {
    client: reqwest::Client,
    server: Server,
    photo: Vec<u8>,
}

impl Requests {
    fn classify(&self) -> reqwest::RequestBuilder {
        self.client.post(self.server.url("/v1/classify")).header("content-type", "image/png").body(self.photo.clone())
    }

    fn sentiment(&self) -> reqwest::RequestBuilder {
        let texts = ["A wonderful, moving film.", "Dull and far too long; I left early."];
        self.client.post(self.server.url("/v1/sentiment")).json(&json!({"texts": texts}))
    }

    fn generate(&self, seed: u64, stream: bool) -> reqwest::RequestBuilder {
        let body = json!({"prompt": "ROMEO:", "max_tokens": 60, "seed": seed, "stream": stream});
        self.client.post(self.server.url("/v1/generate")).json(&body)
    }

    fn stylize(&self) -> reqwest::RequestBuilder {
        let url = self.server.url("/v1/stylize?style=starry_night&max_size=256");
        self.client.post(url).header("content-type", "image/png").body(self.photo.clone())
    }

    fn infer(&self) -> reqwest::RequestBuilder {
        let body = json!({"inputs": [{"name": "measurements", "shape": [2, 4], "datatype": "FP32",
                                      "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]});
        self.client.post(self.server.url("/v2/models/iris/infer")).json(&body)
    }
}

/// Classify requests per second that 4 closed-loop clients get over `seconds`.
async fn capacity(requests: &Arc<Requests>, seconds: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients = (0..4).map(|_| {
        let requests = Arc::clone(requests);
        tokio::spawn(async move {
            let mut done = 0usize;
            while Instant::now() < deadline {
                if requests.classify().send().await.is_ok_and(|r| r.status() == 200) {
                    done += 1;
                }
            }
            done
        })
    });
    let done: usize = futures_util::future::join_all(clients).await.into_iter().map(|r| r.unwrap_or(0)).sum();
    done as f64 / seconds as f64
}

/// Median latency of `n` lone classify requests, one after another.
async fn lone_latency_ms(requests: &Requests, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let _ = requests.classify().send().await.and_then(|r| r.error_for_status());
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

async fn overload(requests: &Arc<Requests>, report: &mut String) -> bool {
    let rate = capacity(requests, 10).await;
    let before = lone_latency_ms(requests, 20).await;
    let tally = Arc::new(Tally::default());
    let offered = 3.0 * rate;
    let interval = Duration::from_secs_f64(1.0 / offered);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ticker = tokio::time::interval(interval);
    let mut inflight = Vec::new();
    while Instant::now() < deadline {
        ticker.tick().await;
        let (requests, tally) = (Arc::clone(requests), Arc::clone(&tally));
        inflight.push(tokio::spawn(async move { tally.record(&requests.classify().send().await) }));
    }
    futures_util::future::join_all(inflight).await;
    let after = lone_latency_ms(requests, 20).await;
    let failures = tally.failures(&["200", "429"]);
    let recovered = after < 2.0 * before + 20.0;
    let _ = writeln!(
        report,
        "| overload: classify at 3x capacity ({rate:.1} req/s measured, {offered:.1} offered) for 20 s | {:?}; lone \
         request {before:.1} ms before, {after:.1} ms right after | {} |",
        tally.counts(),
        pass(failures == 0 && recovered)
    );
    failures == 0 && recovered
}

async fn half_open(requests: &Arc<Requests>, server: &Server, report: &mut String) -> bool {
    let address = server.base.trim_start_matches("http://").to_string();
    // Connecting on loopback is quick: plain blocking sockets, off the runtime's turn.
    let opened = tokio::task::block_in_place(|| {
        (0..1000)
            .map(|_| {
                let mut stream = std::net::TcpStream::connect(&address)?;
                stream.write_all(b"POST /v1/classify HTTP/1.1\r\nHo")?;
                Ok(stream)
            })
            .collect::<std::io::Result<Vec<_>>>()
    });
    let held = match opened {
        Ok(held) => held,
        Err(e) => {
            let _ = writeln!(report, "| half-open connections | could not open them: {e} | FAIL |");
            return false;
        }
    };
    let mut worst = Duration::ZERO;
    let mut failed = 0;
    for _ in 0..20 {
        let started = Instant::now();
        if !requests.classify().send().await.is_ok_and(|r| r.status() == 200) {
            failed += 1;
        }
        worst = worst.max(started.elapsed());
    }
    drop(held);
    let ok = failed == 0 && worst < Duration::from_secs(1);
    let _ = writeln!(
        report,
        "| 1,000 half-open connections held | 20 classify requests meanwhile: slowest {:.0} ms, {failed} failed | {} |",
        worst.as_secs_f64() * 1000.0,
        pass(ok)
    );
    ok
}

/// Starts a fine-tuning job of the generation model on a public-domain text (the README) and returns its id.
async fn start_fine_tune(requests: &Requests) -> anyhow::Result<u64> {
    let text = std::fs::read("README.md")?;
    let form = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(text).file_name("corpus.txt"))
        .text("settings", r#"{"epochs": 2, "sequence_length": 64, "batch_size": 8}"#)
        .text("publish", "false");
    let response = requests
        .client
        .post(requests.server.url("/admin/models/shakespeare/fine-tune"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json::<serde_json::Value>().await?["id"].as_u64().unwrap_or(0))
}

async fn mixed(requests: &Arc<Requests>, seconds: u64, report: &mut String) -> anyhow::Result<bool> {
    let job = start_fine_tune(requests).await?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (server, stop, samples) = (requests.server.clone(), Arc::clone(&stop), Arc::clone(&samples));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                samples.lock().unwrap().push(server.rss_mib());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (requests, tally, stop) = (Arc::clone(requests), Arc::clone(&tally), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut turn = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    turn += 1;
                    match (client + turn as usize) % 6 {
                        0 => tally.record(&requests.classify().send().await),
                        1 => tally.record(&requests.sentiment().send().await),
                        2 => tally.record(&requests.stylize().send().await),
                        3 => tally.record(&requests.infer().send().await),
                        4 => tally.record(&requests.generate(turn, false).send().await),
                        _ => {
                            // A stream whose client goes away after a few events, every third time.
                            let result = requests.generate(turn, true).send().await;
                            tally.record(&result);
                            if let Ok(mut response) = result {
                                let drop_after = if turn.is_multiple_of(3) { 3 } else { usize::MAX };
                                let mut chunks = 0;
                                while chunks < drop_after && matches!(response.chunk().await, Ok(Some(_))) {
                                    chunks += 1;
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::SeqCst);
    futures_util::future::join_all(clients).await;
    let _ = sampler.await;
    let job_state = requests
        .client
        .get(requests.server.url(&format!("/admin/jobs/{job}")))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["state"]
        .clone();
    let samples = samples.lock().unwrap().clone();
    let third = samples.len() / 3;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let (middle, last) = (mean(&samples[third..2 * third]), mean(&samples[2 * third..]));
    let growth = (last - middle) / middle * 100.0;
    let failures = tally.failures(&["200", "429"]);
    let job_ok = matches!(job_state.as_str(), Some("succeeded" | "running"));
    let ok = failures == 0 && growth.abs() <= 5.0 && job_ok;
    let _ = writeln!(
        report,
        "| mixed traffic for {seconds} s, 8 clients (classify, sentiment, stylize, v2 iris, generate, streams a third \
         of which drop after 3 chunks) and a fine-tuning job | {:?}; job {job_state}; RSS middle third {middle:.0} \
         MiB, last third {last:.0} MiB ({growth:+.1}%), peak {:.0} MiB | {} |",
        tally.counts(),
        samples.iter().copied().fold(0.0, f64::max),
        pass(ok)
    );
    Ok(ok)
}

async fn sigterm_under_load(requests: &Arc<Requests>, server: &mut Child, report: &mut String) -> bool {
    let tally = Arc::new(Tally::default());
    let inflight: Vec<_> = (0..16)
        .map(|_| {
            let (requests, tally) = (Arc::clone(requests), Arc::clone(&tally));
            tokio::spawn(async move { tally.record(&requests.classify().send().await) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // SAFETY: kill(2) sends a signal to the child we started.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    futures_util::future::join_all(inflight).await;
    let status = tokio::task::block_in_place(|| server.wait());
    let exited_0 = status.as_ref().is_ok_and(|s| s.success());
    let ok = tally.failures(&["200"]) == 0 && exited_0;
    let _ = writeln!(
        report,
        "| SIGTERM with 16 classify requests in flight | {:?}; exit status {:?} | {} |",
        tally.counts(),
        status.map(|s| s.code()),
        pass(ok)
    );
    ok
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "FAIL"
    }
}

/// A copy of the repository's model folders (versions linked, not copied), so that the fine-tuning job's
/// version lands there and not in models/.
fn repository_copy(into: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir("models")? {
        let model = entry?.path();
        if !model.join("model.toml").is_file() {
            continue;
        }
        let target = into.join(model.file_name().unwrap_or_default());
        std::fs::create_dir_all(&target)?;
        for file in std::fs::read_dir(&model)? {
            let file = file?.path();
            let name = file.file_name().unwrap_or_default();
            if file.is_dir() {
                std::os::unix::fs::symlink(std::fs::canonicalize(&file)?, target.join(name))?;
            } else {
                std::fs::copy(&file, target.join(name))?;
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args().nth(1).map_or(Ok(18090), |p| p.parse())?;
    let seconds: u64 = std::env::var("SOAK_SECONDS").map_or(Ok(600), |s| s.parse())?;
    ember::fd_limit::raise(); // this process holds 1,000 connections in phase 2
    let work = tempfile::tempdir()?;
    let repo = work.path().join("models");
    repository_copy(&repo)?;
    let (mut child, server) = Server::start(&repo, port, work.path().join("server.log"))?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(64).build()?;
    let ready = server.wait_ready(&client).await?;
    let mut report = format!(
        "Every default model, ready after {:.1} s, idle RSS {:.0} MiB.\n\n| phase | outcomes | |\n|---|---|---|\n",
        ready.as_secs_f64(),
        server.rss_mib()
    );
    let photo = std::fs::read("tests/data/images/chelsea.png")?;
    let requests = Arc::new(Requests { client, server: server.clone(), photo });
    let mut ok = overload(&requests, &mut report).await;
    ok &= half_open(&requests, &server, &mut report).await;
    ok &= mixed(&requests, seconds, &mut report).await?;
    ok &= sigterm_under_load(&requests, &mut child, &mut report).await;
    print!("{report}");
    let errors = std::fs::read_to_string(&server.log)?.lines().filter(|l| l.contains("ERROR")).count();
    println!("\nserver log: {errors} ERROR lines");
    anyhow::ensure!(ok, "a phase failed (server log: {})", server.log.display());
    Ok(())
}
