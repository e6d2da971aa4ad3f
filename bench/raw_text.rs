//! The baselines ember's text numbers are compared against: the text models run in a plain loop, in process,
//! with no HTTP and no queue, loaded the way ember loads them (frozen and optimised for inference).
//!
//! cargo run --release --example raw_text -- sentiment [seconds]
//!     sentences/s of the sentiment model on the benchmark's sentence (tokenised by ember's tokenizer): batch 1
//!     in one loop of 2 threads, and batch 1 and 16 (the served max_batch_size) in 2 loops x 1 thread side by
//!     side (ember's worker layout).
//! cargo run --release --example raw_text -- generate [tokens]
//!     tokens/s of the shakespeare model's step loop (forward of one token with the carried state, then
//!     sampling), at batch 1 and 16, 1 thread; the ceiling for ember's generation throughput.

use std::path::Path;
use std::time::Instant;

use ember::engine::InferenceModule;
use ember::model_toml::TextPreprocessing;
use ember::tasks::generate::{Sampler, SamplingParams, VOCABULARY};
use ember::tasks::sentiment::TextClassifier;
use tch::{Device, Kind, Tensor};

pub const SENTENCE: &str = "A gripping, beautifully acted film that I would happily watch again.";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let _no_grad = tch::no_grad_guard();
    match args.get(1).map(String::as_str) {
        Some("sentiment") => sentiment(args.get(2).map_or(Ok(10.0), |s| s.parse())?, optimize(&args)),
        Some("generate") => generate(args.get(2).map_or(Ok(500), |s| s.parse())?, optimize(&args)),
        _ => anyhow::bail!(
            "usage: raw_text sentiment [seconds] [optimized|plain] | raw_text generate [tokens] [optimized|plain]"
        ),
    }
}

/// The third argument `plain` loads the module without freeze + optimize_for_inference, for comparison.
fn optimize(args: &[String]) -> bool {
    args.get(3).is_none_or(|mode| mode != "plain")
}

fn sentiment(seconds: f64, optimize: bool) -> anyhow::Result<()> {
    let labels = vec!["negative".to_string(), "positive".to_string()];
    let text = TextPreprocessing { max_tokens: 128, window_stride: None, max_windows: 1 };
    let classifier = TextClassifier::load(Path::new("models/sentiment/tokenizer.json"), labels, &text)
        .map_err(anyhow::Error::msg)?;
    let ids = classifier.tokenize(SENTENCE)?.ids().to_vec();
    println!("sentiment: {:?} ({} tokens), {seconds}s per case, optimized: {optimize}", SENTENCE, ids.len());
    // (batch, loops, threads per loop): batch 1 on both cores in one loop is what a lone request gets (its
    // worker borrows the idle worker's thread); the rest is ember's layout of 2 workers x 1 thread.
    for (batch, loops, threads) in [(1usize, 1usize, 2i32), (1, 2, 1), (16, 2, 1)] {
        let handles: Vec<_> = (0..loops)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || -> anyhow::Result<f64> {
                    let _no_grad = tch::no_grad_guard();
                    tch::set_num_threads(threads);
                    let model = InferenceModule::load(Path::new("models/sentiment/1/model.pt"), Device::Cpu, optimize)
                        .map_err(anyhow::Error::msg)?;
                    let row = Tensor::from_slice(&ids).view([1, -1]);
                    let input = row.repeat([batch as i64, 1]);
                    let mask = input.ones_like();
                    let run = || -> anyhow::Result<()> {
                        let logits = model.forward_one(&[&input, &mask]).map_err(anyhow::Error::msg)?;
                        let _ = Vec::<f32>::try_from(logits.softmax(-1, Kind::Float).view([-1]))?;
                        Ok(())
                    };
                    run()?; // warm-up
                    let started = Instant::now();
                    let mut sentences = 0;
                    while started.elapsed().as_secs_f64() < seconds {
                        run()?;
                        sentences += batch;
                    }
                    Ok(sentences as f64 / started.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut total = 0.0;
        for handle in handles {
            total += handle.join().map_err(|_| anyhow::anyhow!("loop panicked"))??;
        }
        println!("batch {batch:>2}, {loops} loop(s) x {threads} thread(s): {total:.1} sentences/s");
    }
    Ok(())
}

fn generate(tokens: usize, optimize: bool) -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let model = InferenceModule::load(Path::new("models/shakespeare/1/model.pt"), Device::Cpu, optimize)
        .map_err(anyhow::Error::msg)?;
    println!("generate: {tokens} tokens per sequence after an 8-byte prompt, 1 thread, sampling at temperature 0.8, optimized: {optimize}");
    for batch in [1usize, 16] {
        let prompt =
            Tensor::from_slice(b"ROMEO.\n\n".map(i64::from).as_slice()).view([1, -1]).repeat([batch as i64, 1]);
        let mut samplers: Vec<Sampler> = (0..batch)
            .map(|i| Sampler::new(SamplingParams { temperature: 0.8, top_k: 0, top_p: 1.0, seed: i as u64 }))
            .collect();
        let started = Instant::now();
        let outputs =
            model.forward(&[&prompt, &Tensor::zeros([0], (Kind::Float, Device::Cpu))]).map_err(anyhow::Error::msg)?;
        let (mut logits, mut state) = (outputs[0].select(1, -1), outputs[1].shallow_clone());
        for _ in 0..tokens {
            let rows = Vec::<f32>::try_from(logits.contiguous().view([-1]))?;
            let next: Vec<i64> =
                samplers.iter_mut().zip(rows.chunks(VOCABULARY)).map(|(s, row)| s.sample(row) as i64).collect();
            let ids = Tensor::from_slice(&next).view([batch as i64, 1]);
            let outputs = model.forward(&[&ids, &state]).map_err(anyhow::Error::msg)?;
            logits = outputs[0].select(1, -1);
            state = outputs[1].shallow_clone();
        }
        let rate = (tokens * batch) as f64 / started.elapsed().as_secs_f64();
        println!("batch {batch:>2}: {rate:.0} tokens/s in all, {:.0} per sequence", rate / batch as f64);
    }
    Ok(())
}
