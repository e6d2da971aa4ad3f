//! Generation under a burst of long prompts: RUNNING streams generate (short prompt, many tokens); once each has
//! its first tokens, BURST requests with prompts of PROMPT_BYTES bytes (one token per byte) arrive at once.
//! Prints, per round: how long the running streams waited between two tokens while the burst was prefilled (the
//! median over streams of each stream's longest gap, and the longest of all), their tokens/s over the burst, and
//! the burst requests' time to first token (median and longest); then the medians over the rounds.
//!
//! cargo run --release --example gen_burst -- http://127.0.0.1:8080 RUNNING BURST PROMPT_BYTES ROUNDS

mod stats;

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use serde_json::json;
use stats::median;
use tokio::sync::mpsc;

/// Token arrival times of one stream.
async fn stream_tokens(
    client: reqwest::Client,
    url: String,
    prompt: String,
    tokens: usize,
    seed: u64,
    first: Option<mpsc::Sender<()>>,
) -> anyhow::Result<Vec<Instant>> {
    let body = json!({"prompt": prompt, "max_tokens": tokens, "seed": seed, "stream": true});
    let mut response = client.post(&url).json(&body).send().await?.error_for_status()?;
    let (mut buffer, mut arrivals, mut first) = (String::new(), Vec::new(), first);
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            if buffer[..end].starts_with("event: token") {
                arrivals.push(Instant::now());
                if arrivals.len() == 5 {
                    if let Some(first) = first.take() {
                        let _ = first.send(()).await;
                    }
                }
            }
            buffer.drain(..end + 2);
        }
    }
    anyhow::ensure!(arrivals.len() == tokens, "stream {seed}: {} tokens, expected {tokens}", arrivals.len());
    Ok(arrivals)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// A prompt of `bytes` bytes of play-like text, different per request.
fn long_prompt(bytes: usize, seed: usize) -> String {
    let line = format!("KING {seed}.\nWhat say you to this, my lord, and what of the night?\n");
    line.repeat(bytes / line.len() + 1)[..bytes].to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map_or("http://127.0.0.1:8080", String::as_str);
    let running: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let burst: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let prompt_bytes: usize = args.get(4).map_or(Ok(4000), |s| s.parse())?;
    let rounds: usize = args.get(5).map_or(Ok(3), |s| s.parse())?;
    let url = format!("{base}/v1/generate");
    let client = reqwest::Client::new();
    let (mut median_gaps, mut worst_gaps, mut rates, mut ttfts, mut worst_ttfts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (first_tx, mut first_rx) = mpsc::channel(running);
        // Long enough to still run when the burst is through.
        let streams: Vec<_> = (0..running)
            .map(|i| {
                let seed = (round * running + i) as u64;
                let run =
                    stream_tokens(client.clone(), url.clone(), "ROMEO.\n".into(), 600, seed, Some(first_tx.clone()));
                tokio::spawn(run)
            })
            .collect();
        for _ in 0..running {
            first_rx.recv().await;
        }
        let burst_started = Instant::now();
        let burst_runs = (0..burst).map(|i| {
            let prompt = long_prompt(prompt_bytes, round * burst + i);
            stream_tokens(client.clone(), url.clone(), prompt, 4, (1000 + i) as u64, None)
        });
        let burst_arrivals = try_join_all(burst_runs).await?;
        let burst_ended = Instant::now();
        let mut running_arrivals = Vec::new();
        for stream in streams {
            running_arrivals.push(stream.await??);
        }
        let mut stream_gaps = Vec::new();
        let mut tokens_during = 0;
        for arrivals in &running_arrivals {
            let during: Vec<Instant> =
                arrivals.iter().copied().filter(|t| *t >= burst_started && *t <= burst_ended).collect();
            tokens_during += during.len();
            let gap = arrivals
                .windows(2)
                .filter(|w| w[1] >= burst_started && w[0] <= burst_ended)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or(Duration::ZERO);
            stream_gaps.push(gap.as_secs_f64() * 1000.0);
        }
        let burst_seconds = burst_ended.duration_since(burst_started).as_secs_f64();
        let rate = tokens_during as f64 / running as f64 / burst_seconds;
        let mut firsts: Vec<f64> =
            burst_arrivals.iter().map(|a| a[0].duration_since(burst_started).as_secs_f64() * 1000.0).collect();
        let (gap, worst_gap, ttft, worst_ttft) =
            (median(&mut stream_gaps), max(&stream_gaps), median(&mut firsts), max(&firsts));
        println!(
            "round {round}: {running} running streams, {burst} prompts of {prompt_bytes} bytes: longest gap between two tokens {gap:.0} ms (median stream), {worst_gap:.0} ms (worst); {rate:.1} tokens/s per running stream during the burst ({burst_seconds:.2} s); burst first token {ttft:.0} ms (median), {worst_ttft:.0} ms (last)"
        );
        median_gaps.push(gap);
        worst_gaps.push(worst_gap);
        rates.push(rate);
        ttfts.push(ttft);
        worst_ttfts.push(worst_ttft);
    }
    println!(
        "median over {rounds} rounds: longest gap {:.0} ms (median stream), {:.0} ms (worst); {:.1} tokens/s per running stream during the burst; burst first token {:.0} ms (median), {:.0} ms (last)",
        median(&mut median_gaps),
        median(&mut worst_gaps),
        median(&mut rates),
        median(&mut ttfts),
        median(&mut worst_ttfts)
    );
    Ok(())
}
