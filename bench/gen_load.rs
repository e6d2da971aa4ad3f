//! Load client for text generation: STREAMS concurrent streamed generations of TOKENS tokens each (different
//! seeds, max_tokens = TOKENS, no stop sequence), ROUNDS times. Prints per round the aggregate tokens/s, the
//! median per-stream tokens/s and the median time to first token, then the medians over the rounds.
//!
//! cargo run --release --example gen_load -- http://127.0.0.1:8080 STREAMS TOKENS ROUNDS

mod stats;

use std::time::{Duration, Instant};

use serde_json::json;
use stats::median;

struct StreamResult {
    first_token: Duration,
    tokens: usize,
    elapsed: Duration,
}

async fn one_stream(client: &reqwest::Client, url: &str, tokens: usize, seed: u64) -> anyhow::Result<StreamResult> {
    let body = json!({"prompt": "ROMEO.\n\n", "max_tokens": tokens, "seed": seed, "stream": true});
    let started = Instant::now();
    let mut response = client.post(url).json(&body).send().await?.error_for_status()?;
    let (mut buffer, mut counted, mut first_token) = (String::new(), 0, None);
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        // Count complete events only; keep a partial one for the next chunk.
        while let Some(end) = buffer.find("\n\n") {
            if buffer[..end].starts_with("event: token") {
                counted += 1;
                first_token.get_or_insert_with(|| started.elapsed());
            }
            buffer.drain(..end + 2);
        }
    }
    anyhow::ensure!(counted == tokens, "stream {seed} delivered {counted} tokens, expected {tokens}");
    Ok(StreamResult { first_token: first_token.unwrap_or_default(), tokens: counted, elapsed: started.elapsed() })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map_or("http://127.0.0.1:8080", String::as_str);
    let streams: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(500), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(3), |s| s.parse())?;
    let url = format!("{base}/v1/generate");
    let client = reqwest::Client::new();
    let (mut aggregates, mut per_stream_rates, mut first_tokens) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let runs = (0..streams).map(|i| one_stream(&client, &url, tokens, (round * streams + i) as u64));
        let results: Vec<StreamResult> = futures_util::future::try_join_all(runs).await?;
        let aggregate = results.iter().map(|r| r.tokens).sum::<usize>() as f64 / started.elapsed().as_secs_f64();
        let mut rates: Vec<f64> = results.iter().map(|r| r.tokens as f64 / r.elapsed.as_secs_f64()).collect();
        let mut firsts: Vec<f64> = results.iter().map(|r| r.first_token.as_secs_f64() * 1000.0).collect();
        let (rate, first) = (median(&mut rates), median(&mut firsts));
        println!(
            "round {round}: {streams} streams x {tokens} tokens: {aggregate:.0} tokens/s in all, {rate:.0} per stream (median), first token {first:.1} ms (median)"
        );
        aggregates.push(aggregate);
        per_stream_rates.push(rate);
        first_tokens.push(first);
    }
    println!(
        "median over {rounds} rounds: {:.0} tokens/s in all, {:.0} per stream, first token {:.1} ms",
        median(&mut aggregates),
        median(&mut per_stream_rates),
        median(&mut first_tokens)
    );
    Ok(())
}
