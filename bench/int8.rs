//! mobilenet_v2_int8 beside mobilenet_v2 (bench/RESULTS.md, "mobilenet_v2_int8"): the raw forward of fp32 and
//! int8 in each format on one thread, in one process, interleaved round by round; medians of the rounds.
//!
//! cargo run --release --example int8 -- [rounds] [seconds-per-case] [torchscript-int8.pt]
//!
//! The optional TorchScript file is the x86-engine candidate that bench/int8_torchscript.py builds.

use std::path::PathBuf;

use ember::formats::ModelFormat;

#[path = "forward.rs"]
mod forward;
#[path = "stats.rs"]
mod stats;

use forward::{batch_of, compare, load_file};

fn main() -> anyhow::Result<()> {
    let (forward::Args { rounds, seconds, extra: torchscript_int8 }, _no_grad) = forward::setup()?;
    let models = PathBuf::from("models");
    let mut loaded = vec![
        load_file("onnx fp32", &models.join("mobilenet_v2/1/model.onnx"), ModelFormat::Onnx, true)?,
        load_file("onnx int8", &models.join("mobilenet_v2_int8/1/model.onnx"), ModelFormat::Onnx, true)?,
    ];
    let mut ratios = vec![(1, 0)];
    if let Some(path) = &torchscript_int8 {
        let fp32 = models.join("mobilenet_v2/1/model.pt");
        loaded.push(load_file("torchscript fp32", &fp32, ModelFormat::TorchScript, true)?);
        loaded.push(load_file("torchscript x86 int8", path, ModelFormat::TorchScript, true)?);
        ratios.extend([(3, 2), (1, 3)]);
    }
    println!("## mobilenet_v2 fp32 and int8, one thread, {rounds} rounds of {seconds}s per case");
    let cases: Vec<(String, Vec<_>, f64)> =
        [1, 4, 8].into_iter().map(|b| (format!("batch {b}"), vec![batch_of(b, &[3, 224, 224])], b as f64)).collect();
    compare("mobilenet_v2, images", "images", &loaded, &cases, rounds, seconds, &ratios)
}
