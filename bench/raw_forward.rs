//! The baseline ember's HTTP numbers are compared against: the same TorchScript model run in a plain loop,
//! in process, with no HTTP, no queue and no decoding. The module is loaded the way ember loads it
//! (frozen and optimised for inference, unless `plain` is given).
//!
//! cargo run --release --example raw_forward -- [model.pt] [jpeg] [seconds-per-case] [optimized|plain]
//!
//! Prints, per batch size 1, 2, 4 and 8: images/s of one loop with 2 intra-op threads, and of two loops side
//! by side with 1 thread each (ember's default worker layout); then the median latency of one decode +
//! preprocess + forward of the JPEG at batch 1 on one thread, the floor for ember's latency at concurrency 1;
//! then the median forward time with the input in channels-last memory order against contiguous NCHW (what
//! ember's preprocessing makes), the two interleaved on one thread so that a noisy machine affects both alike;
//! and, first of all while the process is cold, what warm-up saves: the first and the second forward of a
//! freshly loaded module at each batch size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember::engine::InferenceModule;
use ember::model_toml::{ImagePreprocessing, ModelToml};
use ember::tasks::image;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = PathBuf::from(args.get(1).map_or("models/mobilenet_v2/1/model.pt", String::as_str));
    let jpeg_path = PathBuf::from(args.get(2).map_or("tests/data/images/china.jpg", String::as_str));
    let seconds: f64 = args.get(3).map_or(Ok(5.0), |s| s.parse())?;
    let optimize = args.get(4).is_none_or(|mode| mode != "plain");
    let preprocessing = preprocessing_of(&model_path)?;
    let _no_grad = tch::no_grad_guard();
    // First, while nothing has run yet in this process (oneDNN caches its kernels per shape process-wide).
    first_use_costs(&model_path, optimize)?;

    println!(
        "model {} (optimized: {optimize})  image {}  {seconds}s per case",
        model_path.display(),
        jpeg_path.display()
    );
    println!("batch  1 loop x 2 threads (img/s)  2 loops x 1 thread (img/s)");
    for batch in [1, 2, 4, 8] {
        let one_loop = throughput(&model_path, optimize, batch, 1, 2, seconds)?;
        let two_loops = throughput(&model_path, optimize, batch, 2, 1, seconds)?;
        println!("{batch:>5}  {one_loop:>27.1}  {two_loops:>26.1}");
    }

    tch::set_num_threads(1);
    let model = InferenceModule::load(&model_path, Device::Cpu, optimize).map_err(anyhow::Error::msg)?;
    for batch in [1, 4] {
        let [channels_last, nchw] = layout_medians(&model, batch, seconds)?;
        println!(
            "forward, batch {batch}, 1 thread, interleaved: channels-last input median {channels_last:.2} ms, NCHW {nchw:.2} ms ({:.2}x)",
            nchw / channels_last
        );
    }
    let jpeg = std::fs::read(&jpeg_path)?;
    let (mut total, mut decode, mut preprocess) = (Vec::new(), Vec::new(), Vec::new());
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until || total.len() < 20 {
        let started = Instant::now();
        let decoded = image::decode(&jpeg, image::ImageLimits { max_pixels: u64::MAX, max_aspect: u32::MAX })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let decoded_at = Instant::now();
        let input =
            image::to_normalized_tensor(decoded, &preprocessing).map_err(|e| anyhow::anyhow!("{e}"))?.unsqueeze(0);
        let preprocessed_at = Instant::now();
        let _ = model.forward_one(&[&input]).map_err(anyhow::Error::msg)?.softmax(-1, Kind::Float);
        total.push(started.elapsed());
        decode.push(decoded_at - started);
        preprocess.push(preprocessed_at - decoded_at);
    }
    println!(
        "decode + preprocess + forward, batch 1, 1 thread: median {:.2} ms over {} runs (decode {:.2} ms, resize+crop+normalise {:.2} ms)",
        median_ms(&mut total),
        total.len(),
        median_ms(&mut decode),
        median_ms(&mut preprocess)
    );
    Ok(())
}

/// Images/s of `loops` threads each running forward passes of `batch` images with `threads` intra-op threads.
fn throughput(
    path: &Path,
    optimize: bool,
    batch: i64,
    loops: usize,
    threads: i32,
    seconds: f64,
) -> anyhow::Result<f64> {
    let handles: Vec<_> = (0..loops)
        .map(|_| {
            let path = path.to_path_buf();
            std::thread::spawn(move || -> anyhow::Result<(usize, Duration)> {
                let _no_grad = tch::no_grad_guard();
                tch::set_num_threads(threads);
                let model = InferenceModule::load(&path, Device::Cpu, optimize).map_err(anyhow::Error::msg)?;
                let input = Tensor::rand([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
                for _ in 0..3 {
                    let _ = model.forward_one(&[&input]).map_err(anyhow::Error::msg)?;
                    // warm-up
                }
                let started = Instant::now();
                let mut images = 0;
                while started.elapsed().as_secs_f64() < seconds {
                    let _ = model.forward_one(&[&input]).map_err(anyhow::Error::msg)?.softmax(-1, Kind::Float);
                    images += batch as usize;
                }
                Ok((images, started.elapsed()))
            })
        })
        .collect();
    let mut total = 0.0;
    for handle in handles {
        let (images, elapsed) = handle.join().map_err(|_| anyhow::anyhow!("loop panicked"))??;
        total += images as f64 / elapsed.as_secs_f64();
    }
    Ok(total)
}

/// The first forward at each batch size of a module loaded without warm-up, against the second: what a request
/// pays when warm-up skipped its batch size (one thread, then two).
fn first_use_costs(path: &Path, optimize: bool) -> anyhow::Result<()> {
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        let model = InferenceModule::load(path, Device::Cpu, optimize).map_err(anyhow::Error::msg)?;
        let mut costs = Vec::new();
        for batch in [1, 2, 3, 4] {
            let input = Tensor::rand([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
            let run = || -> anyhow::Result<f64> {
                let started = Instant::now();
                let _ = model.forward_one(&[&input]).map_err(anyhow::Error::msg)?;
                Ok(started.elapsed().as_secs_f64() * 1e3)
            };
            let (first, second) = (run()?, run()?);
            costs.push(format!("batch {batch}: {first:.1} then {second:.1} ms"));
        }
        println!("fresh module, {threads} thread(s), first then second forward: {}", costs.join(", "));
    }
    tch::set_num_threads(1);
    Ok(())
}

/// Median forward times (ms) of a channels-last and a contiguous NCHW input of the same values, alternating.
fn layout_medians(model: &InferenceModule, batch: i64, seconds: f64) -> anyhow::Result<[f64; 2]> {
    let nchw = Tensor::rand([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    let channels_last = nchw.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    let inputs = [channels_last, nchw];
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    for round in 0.. {
        if round >= 10 && Instant::now() >= until {
            break;
        }
        for (input, samples) in inputs.iter().zip(times.iter_mut()) {
            let started = Instant::now();
            let _ = model.forward_one(&[input]).map_err(anyhow::Error::msg)?;
            if round >= 3 {
                samples.push(started.elapsed()); // the first rounds are warm-up
            }
        }
    }
    let [mut a, mut b] = times;
    Ok([median_ms(&mut a), median_ms(&mut b)])
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// The `[image]` table of the model's own model.toml (`<model>/<version>/model.pt` -> `<model>/model.toml`), so the
/// benchmark preprocesses exactly as the server does.
fn preprocessing_of(model_path: &Path) -> anyhow::Result<ImagePreprocessing> {
    let toml_path = model_path.parent().and_then(Path::parent).map(|dir| dir.join("model.toml"));
    let toml_path =
        toml_path.ok_or_else(|| anyhow::anyhow!("{} is not <model>/<version>/model.pt", model_path.display()))?;
    let config: ModelToml = toml::from_str(&std::fs::read_to_string(&toml_path)?)?;
    config.image.ok_or_else(|| anyhow::anyhow!("{} has no [image] table", toml_path.display()))
}
