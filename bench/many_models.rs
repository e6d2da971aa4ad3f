//! Many models under one memory budget (bench/RESULTS.md, "Many models"): a release `ember serve` of a
//! repository of on-demand classifiers (bench/many_models.sh builds it and starts the server), driven over
//! loopback in three phases:
//!
//! 1. cold loads: the first request of a few mobilenet_v2 copies, one at a time, on a server with nothing loaded;
//! 2. a loaded model's latency while others load: 4 clients on one model, alone and then beside a client that
//!    asks the others in turn (each of its requests a load), the p99s side by side;
//! 3. Zipf: CLIENTS clients draw models from a Zipf distribution (s = 1.1) for SECONDS: hit rate, p50/p99 of
//!    hits and of loads, loads and evictions per minute, peak RSS against (RSS with no model + budget) x 1.15.
//!
//! A request that waited for its model's load is told by its answer's `Server-Timing: load` header.
//!
//! target/release/examples/many_models BASE PID BUDGET_BYTES SECONDS CLIENTS MODEL...   (bench/many_models.sh)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::rng::Rng;

const ZIPF_S: f64 = 1.1;
const PHOTO: &str = "tests/data/images/chelsea.png";
const REVIEW: &str = r#"{"text": "A moving, beautifully acted film; I would watch it again."}"#;

/// One answer: which model, how long, its status, and whether it waited for a load.
struct Sample {
    model: usize,
    seconds: f64,
    status: u16,
    loaded: bool,
}

struct Bench {
    base: String,
    pid: u32,
    models: Vec<String>,
    client: reqwest::Client,
    photo: Vec<u8>,
}

impl Bench {
    /// One request to model `index`: classify for an image model, sentiment for a text one (by its name).
    async fn ask(&self, index: usize) -> Sample {
        let name = &self.models[index];
        let request = if name.starts_with("sentiment") {
            let url = format!("{}/v1/models/{name}/sentiment", self.base);
            self.client.post(url).header("content-type", "application/json").body(REVIEW)
        } else {
            let url = format!("{}/v1/models/{name}/classify", self.base);
            self.client.post(url).header("content-type", "image/png").body(self.photo.clone())
        };
        let started = Instant::now();
        let (status, loaded) = match request.send().await {
            Ok(answer) => {
                let loaded = answer.headers().get("server-timing").is_some_and(|t| t.as_bytes().starts_with(b"load"));
                let status = answer.status().as_u16();
                let _ = answer.bytes().await;
                (status, loaded)
            }
            Err(e) => {
                eprintln!("no answer from {name}: {e:#}");
                (0, false)
            }
        };
        Sample { model: index, seconds: started.elapsed().as_secs_f64(), status, loaded }
    }

    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib: Option<f64> =
            status.lines().find_map(|l| l.strip_prefix(field)?.trim().split(' ').next()?.parse().ok());
        kib.unwrap_or(0.0) / 1024.0
    }

    /// The sum of the series `name{model=...}` over every model, from /metrics.
    async fn metric_sum(&self, name: &str) -> f64 {
        let text = match self.client.get(format!("{}/metrics", self.base)).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let prefix = format!("{name}{{");
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `resident_bytes` of every model loaded now, by name.
    async fn costs(&self) -> BTreeMap<String, u64> {
        let Ok(answer) = self.client.get(format!("{}/v1/models", self.base)).send().await else {
            return BTreeMap::new();
        };
        let models: serde_json::Value = answer.json().await.unwrap_or_default();
        let models = models["models"].as_array().cloned().unwrap_or_default();
        models.iter().filter_map(|m| Some((m["name"].as_str()?.to_string(), m["resident_bytes"].as_u64()?))).collect()
    }

    /// `clients` loops asking `pick()`'s models until `seconds` pass; every answer.
    async fn drive(
        self: &Arc<Self>,
        clients: usize,
        seconds: f64,
        pick: impl Fn(&mut Rng) -> usize + Clone + Send + 'static,
    ) -> Vec<Sample> {
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let loops = (0..clients).map(|client| {
            let (bench, pick) = (Arc::clone(self), pick.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(0x5eed + client as u64);
                let mut samples = Vec::new();
                while Instant::now() < until {
                    samples.push(bench.ask(pick(&mut rng)).await);
                }
                samples
            })
        });
        futures_util::future::join_all(loops).await.into_iter().flat_map(Result::unwrap).collect()
    }
}

/// Milliseconds: the nearest-rank `q` quantile of `seconds`, or "-" when there are none.
fn quantile_ms(seconds: &mut [f64], q: f64) -> String {
    if seconds.is_empty() {
        return "-".into();
    }
    seconds.sort_by(f64::total_cmp);
    let rank = ((q * seconds.len() as f64).ceil() as usize).clamp(1, seconds.len());
    format!("{:.1}", seconds[rank - 1] * 1000.0)
}

/// The statuses of `samples` other than 200, with their counts ("none" when all were 200).
fn failures(samples: &[Sample]) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.status != 200) {
        *counts.entry(sample.status).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} x {}", if *status == 0 { "no answer".into() } else { status.to_string() }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Zipf's cumulative weights over `n` ranks.
fn zipf_cumulative(n: usize) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|rank| 1.0 / (rank as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .scan(0.0, |sum, w| {
            *sum += w / total;
            Some(*sum)
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() > 5, "usage: many_models BASE PID BUDGET_BYTES SECONDS CLIENTS MODEL...");
    let (budget_mib, seconds, clients) =
        (args[2].parse::<f64>()? / 1048576.0, args[3].parse::<f64>()?, args[4].parse()?);
    let bench = Arc::new(Bench {
        base: args[0].clone(),
        pid: args[1].parse()?,
        models: args[5..].to_vec(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            // ember closes a keep-alive connection idle for 10 s: drop it first, never send on a closing one.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        photo: std::fs::read(PHOTO)?,
    });
    let idle_rss = bench.memory_mib("VmRSS:");
    println!(
        "{} on-demand models, budget {budget_mib:.0} MiB; RSS with no model loaded {idle_rss:.0} MiB\n",
        bench.models.len()
    );

    // 1. Cold loads of mobilenet_v2 copies, each on its first request.
    let mobilenets: Vec<usize> =
        (0..bench.models.len()).filter(|&i| !bench.models[i].starts_with("sentiment")).collect();
    let mut cold = Vec::new();
    for &index in mobilenets.iter().take(5) {
        let sample = bench.ask(index).await;
        anyhow::ensure!(
            sample.status == 200 && sample.loaded,
            "{}: a first request answered {}",
            bench.models[index],
            sample.status
        );
        cold.push(sample.seconds);
    }
    println!("Cold load of mobilenet_v2 on first use (the whole first request, {} copies one after another): median {} ms, slowest {} ms\n",
        cold.len(), quantile_ms(&mut cold.clone(), 0.5), quantile_ms(&mut cold, 1.0));

    // 2. One loaded model's latency alone, then while another client's every request is a load.
    let hot = mobilenets[0];
    let _ = bench.ask(hot).await;
    let phase = seconds.min(60.0) / 2.0;
    let mut alone: Vec<f64> = bench.drive(4, phase, move |_| hot).await.iter().map(|s| s.seconds).collect();
    let others: Vec<usize> = (0..bench.models.len()).filter(|&i| i != hot).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (bench, stop, others) = (Arc::clone(&bench), Arc::clone(&stop), others.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for index in others.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                samples.push(bench.ask(*index).await);
            }
            samples
        })
    };
    let beside = bench.drive(4, phase, move |_| hot).await;
    stop.store(true, Ordering::SeqCst);
    let loads = loader.await?;
    let mut beside_seconds: Vec<f64> = beside.iter().map(|s| s.seconds).collect();
    let (p99_alone, p99_beside) = (quantile_ms(&mut alone, 0.99), quantile_ms(&mut beside_seconds, 0.99));
    let ratio = p99_beside.parse::<f64>().unwrap_or(f64::NAN) / p99_alone.parse::<f64>().unwrap_or(f64::NAN);
    println!("A loaded model ({}) at 4 clients for {phase:.0} s each:\n", bench.models[hot]);
    println!("| run | requests | p50 ms | p99 ms | loads of other models meanwhile | not 200 |");
    println!("|---|---|---|---|---|---|");
    println!("| alone | {} | {} | {p99_alone} | 0 | - |", alone.len(), quantile_ms(&mut alone, 0.5));
    println!(
        "| beside a client whose every request is a load | {} | {} | {p99_beside} | {} | {} |\n",
        beside.len(),
        quantile_ms(&mut beside_seconds, 0.5),
        loads.iter().filter(|s| s.loaded).count(),
        failures(&beside)
    );
    println!("p99 beside loads / alone: {ratio:.2}x\n");

    // 3. Zipf over every model; ranks by a fixed shuffle, so that both kinds of model are among the popular ones.
    let mut ranks: Vec<usize> = (0..bench.models.len()).collect();
    let mut shuffle = Rng::new(11);
    for i in (1..ranks.len()).rev() {
        ranks.swap(i, (shuffle.next_u64() % (i as u64 + 1)) as usize);
    }
    let cumulative = Arc::new(zipf_cumulative(ranks.len()));
    let ranks = Arc::new(ranks);
    let (loads_before, evictions_before) =
        (bench.metric_sum("ember_model_loads_total").await, bench.metric_sum("ember_model_evictions_total").await);
    // The last cost seen of each model, polled while the phase runs.
    let sampler = {
        let bench = Arc::clone(&bench);
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            while Instant::now() < until {
                seen.extend(bench.costs().await);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            seen
        })
    };
    let zipf = bench
        .drive(clients, seconds, move |rng| {
            let draw = rng.next_f64();
            ranks[cumulative.partition_point(|&c| c < draw).min(ranks.len() - 1)]
        })
        .await;
    let costs = sampler.await?;
    let minutes = seconds / 60.0;
    let loads = (bench.metric_sum("ember_model_loads_total").await - loads_before) / minutes;
    let evictions = (bench.metric_sum("ember_model_evictions_total").await - evictions_before) / minutes;
    let answered: Vec<&Sample> = zipf.iter().filter(|s| s.status == 200).collect();
    let mut hits: Vec<f64> = answered.iter().filter(|s| !s.loaded).map(|s| s.seconds).collect();
    let mut misses: Vec<f64> = answered.iter().filter(|s| s.loaded).map(|s| s.seconds).collect();
    let peak = bench.memory_mib("VmHWM:");
    let bound = (idle_rss + budget_mib) * 1.15;
    let models_asked = zipf.iter().map(|s| s.model).collect::<std::collections::BTreeSet<_>>().len();
    println!(
        "Zipf (s = {ZIPF_S}) over {} models, {clients} clients, {seconds:.0} s ({models_asked} models asked):\n",
        bench.models.len()
    );
    println!("| requests | hit rate | hits p50 / p99 ms | loads p50 / p99 ms | loads / min | evictions / min | not 200 | peak RSS | bound |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1}% | {} / {} | {} / {} | {loads:.1} | {evictions:.1} | {} | {peak:.0} MiB | {bound:.0} MiB |\n",
        zipf.len(),
        100.0 * hits.len() as f64 / answered.len().max(1) as f64,
        quantile_ms(&mut hits.clone(), 0.5),
        quantile_ms(&mut hits, 0.99),
        quantile_ms(&mut misses.clone(), 0.5),
        quantile_ms(&mut misses, 0.99),
        failures(&zipf),
    );
    let mean = |prefix: bool| {
        let picked: Vec<u64> =
            costs.iter().filter(|(n, _)| n.starts_with("sentiment") == prefix).map(|(_, b)| *b).collect();
        picked.iter().sum::<u64>() as f64 / picked.len().max(1) as f64 / 1048576.0
    };
    println!("Measured costs (resident_bytes, the last seen of each model): mobilenet_v2 copies {:.0} MiB on average, sentiment copies {:.0} MiB; {} models seen loaded", mean(false), mean(true), costs.len());
    Ok(())
}
