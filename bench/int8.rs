//! mobilenet_v2_int8 beside mobilenet_v2 (bench/RESULTS.md, "mobilenet_v2_int8"): the raw forward of fp32 and
//! int8 in each format on one thread, in one process, interleaved round by round; medians of the rounds.
//!
//! cargo run --release --example int8 -- [rounds] [seconds-per-case] [torchscript-int8.pt]
//!
//! The optional TorchScript file is the x86-engine candidate that bench/int8_torchscript.py builds.

use std::path::PathBuf;

use ember::engine::InferenceModule;
use ember::formats::ModelFormat;
use tch::Device;

#[path = "forward.rs"]
mod forward;
#[path = "stats.rs"]
mod stats;

use forward::{batch_of, compare, load, Loaded};

fn labelled(mut loaded: Loaded, label: &str) -> Loaded {
    loaded.label = label.to_string();
    loaded
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let seconds: f64 = args.get(2).map_or(Ok(1.0), |s| s.parse())?;
    let torchscript_int8 = args.get(3).map(PathBuf::from);
    let _no_grad = tch::no_grad_guard();
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let models = PathBuf::from("models");
    let mut loaded = vec![
        labelled(load(&models.join("mobilenet_v2/1"), ModelFormat::Onnx, true)?, "onnx fp32"),
        labelled(load(&models.join("mobilenet_v2_int8/1"), ModelFormat::Onnx, true)?, "onnx int8"),
    ];
    let mut ratios = vec![(1, 0)];
    if let Some(path) = &torchscript_int8 {
        loaded
            .push(labelled(load(&models.join("mobilenet_v2/1"), ModelFormat::TorchScript, true)?, "torchscript fp32"));
        let module = InferenceModule::load(path, Device::Cpu, true).map_err(anyhow::Error::msg)?;
        loaded.push(Loaded { label: "torchscript x86 int8".into(), module });
        ratios.extend([(3, 2), (1, 3)]);
    }
    println!("## mobilenet_v2 fp32 and int8, one thread, {rounds} rounds of {seconds}s per case");
    let cases: Vec<(String, Vec<_>, f64)> =
        [1, 4, 8].into_iter().map(|b| (format!("batch {b}"), vec![batch_of(b, &[3, 224, 224])], b as f64)).collect();
    compare("mobilenet_v2, images", "images", &loaded, &cases, rounds, seconds, &ratios)
}
