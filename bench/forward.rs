//! Forward passes side by side, shared by the raw-forward benchmarks (formats.rs, int8.rs): a model loaded to
//! run on one thread, its passes per second, and a table of cases with the models interleaved round by round so
//! that a noisy machine affects them alike.
//! A benchmark includes it as `#[path = "forward.rs"] mod forward;`, beside `#[path = "stats.rs"] mod stats;`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ember::engine::onnx::OnnxModel;
use ember::engine::InferenceModule;
use ember::formats::ModelFormat;
use tch::{Device, Kind, Tensor};

// The including benchmark declares `mod stats` (stats.rs) beside this module.
use super::stats;

/// A model in one format, ready to run on one thread.
pub struct Loaded {
    pub label: String,
    pub module: InferenceModule,
}

/// What a raw-forward benchmark's command line says: `[rounds] [seconds-per-case] [extra-file]`.
pub struct Args {
    pub rounds: usize,
    pub seconds: f64,
    pub extra: Option<PathBuf>,
}

/// Reads the command line and sets libtorch up as every raw-forward benchmark runs: no autograd, one thread,
/// seeded. The guard must live as long as the benchmark.
pub fn setup() -> anyhow::Result<(Args, tch::NoGradGuard)> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let seconds: f64 = args.get(2).map_or(Ok(1.0), |s| s.parse())?;
    let guard = tch::no_grad_guard();
    tch::set_num_threads(1);
    tch::manual_seed(0);
    Ok((Args { rounds, seconds, extra: args.get(3).map(PathBuf::from) }, guard))
}

/// The model file `path` of `format`, labelled `label` in the tables.
pub fn load_file(label: &str, path: &Path, format: ModelFormat, optimize: bool) -> anyhow::Result<Loaded> {
    let module = match format {
        ModelFormat::TorchScript => InferenceModule::load(path, Device::Cpu, optimize),
        ModelFormat::Onnx => OnnxModel::load(path, Device::Cpu, 1, true).map(|m| InferenceModule::from_onnx(m, true)),
        ModelFormat::Aoti => InferenceModule::aoti(path, Device::Cpu, 1),
    }
    .map_err(anyhow::Error::msg)?;
    Ok(Loaded { label: label.to_string(), module })
}

/// Forward passes per second of `inputs` over `seconds` (at least 3 passes).
fn rate(module: &InferenceModule, inputs: &[Tensor], seconds: f64) -> anyhow::Result<f64> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    module.forward(&refs).map_err(anyhow::Error::msg)?; // the shape's first use is not measured
    let (started, mut passes) = (Instant::now(), 0u32);
    while started.elapsed().as_secs_f64() < seconds || passes < 3 {
        module.forward(&refs).map_err(anyhow::Error::msg)?;
        passes += 1;
    }
    Ok(f64::from(passes) / started.elapsed().as_secs_f64())
}

/// Prints a table of `rows x units per second` for each case, the models interleaved in each round, with a
/// column per `(numerator, denominator)` pair of `ratios` (indexes into `models`).
pub fn compare(
    title: &str,
    unit: &str,
    models: &[Loaded],
    cases: &[(String, Vec<Tensor>, f64)],
    rounds: usize,
    seconds: f64,
    ratios: &[(usize, usize)],
) -> anyhow::Result<()> {
    let mut samples = vec![vec![Vec::new(); models.len()]; cases.len()];
    for round in 0..rounds {
        for (case, (_, inputs, _)) in cases.iter().enumerate() {
            // Alternate the order between rounds, so that no format always runs right after another.
            let order: Vec<usize> =
                if round % 2 == 0 { (0..models.len()).collect() } else { (0..models.len()).rev().collect() };
            for index in order {
                samples[case][index].push(rate(&models[index].module, inputs, seconds)?);
            }
        }
    }
    println!("\n{title} ({unit}/s, 1 thread, median of {rounds} rounds)\n");
    let header: Vec<&str> = models.iter().map(|m| m.label.as_str()).collect();
    let ratio_names: Vec<String> = ratios.iter().map(|&(a, b)| format!("{} / {}", header[a], header[b])).collect();
    println!("| case | {} | {} |", header.join(" | "), ratio_names.join(" | "));
    println!("|---|{}{}", "---|".repeat(models.len()), "---|".repeat(ratios.len()));
    for ((name, _, units), per_model) in cases.iter().zip(&mut samples) {
        let medians: Vec<f64> = per_model.iter_mut().map(|s| stats::median(s) * units).collect();
        let cells: Vec<String> = medians.iter().map(|m| format!("{m:.1}")).collect();
        let ratio_cells: Vec<String> =
            ratios.iter().map(|&(a, b)| format!("{:.2}x", medians[a] / medians[b])).collect();
        println!("| {name} | {} | {} |", cells.join(" | "), ratio_cells.join(" | "));
    }
    Ok(())
}

pub fn batch_of(batch: i64, shape: &[i64]) -> Tensor {
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    Tensor::rand(dims.as_slice(), (Kind::Float, Device::Cpu))
}
