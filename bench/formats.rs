//! The formats side by side, in one process on one thread (bench/RESULTS.md, "Model formats"): every default
//! model that has an ONNX graph (and mobilenet_v2's AOTInductor package) run in a plain loop, no HTTP and no
//! queue, the formats interleaved round by round so that a noisy machine affects them alike; medians of the
//! rounds. Then where a classification request's time goes (decode, resize + crop + normalise, forward), for
//! the 640-pixel sample photo and for a 4000-pixel one, with the JPEG decoded whole and at a DCT scale.
//!
//! cargo run --release --example formats -- [rounds] [seconds-per-case] [extra-mobilenet.onnx]
//!
//! The optional ONNX file is measured beside model.onnx (bench/formats.sh passes a constant-folded export, to
//! show that ONNX Runtime folds the batch norms of the unfolded one as well at load).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember::formats::ModelFormat;
use ember::model_toml::ImagePreprocessing;
use ember::tasks::image::{self, DecodeSize, ImageLimits};
use tch::{Device, Kind, Tensor};

#[path = "forward.rs"]
mod forward;
#[path = "stats.rs"]
mod stats;

use forward::{batch_of, compare, load_file, Loaded};

/// Version folder `dir`'s file of `format`, labelled with the format's name.
fn load(dir: &Path, format: ModelFormat, optimize: bool) -> anyhow::Result<Loaded> {
    load_file(format.name(), &dir.join(format.file_name()), format, optimize)
}

fn main() -> anyhow::Result<()> {
    let (forward::Args { rounds, seconds, extra: extra_onnx }, _no_grad) = forward::setup()?;
    let models = PathBuf::from("models");
    println!("## Formats, one thread, {rounds} rounds of {seconds}s per case");

    let mobilenet = models.join("mobilenet_v2/1");
    let mut formats: Vec<Loaded> = [ModelFormat::TorchScript, ModelFormat::Onnx, ModelFormat::Aoti]
        .into_iter()
        .map(|f| load(&mobilenet, f, true))
        .collect::<Result<_, _>>()?;
    if let Some(path) = &extra_onnx {
        formats.push(load_file("onnx (folded export)", path, ModelFormat::Onnx, true)?);
    }
    let cases: Vec<(String, Vec<Tensor>, f64)> =
        [1, 4, 8].into_iter().map(|b| (format!("batch {b}"), vec![batch_of(b, &[3, 224, 224])], b as f64)).collect();
    compare("mobilenet_v2, images", "images", &formats, &cases, rounds, seconds, &[(1, 0)])?;
    request_split(&formats[..3])?;
    drop(formats);

    let sentiment = models.join("sentiment/1");
    let text_models = [load(&sentiment, ModelFormat::TorchScript, true)?, load(&sentiment, ModelFormat::Onnx, true)?];
    let text_cases: Vec<(String, Vec<Tensor>, f64)> = [(1, 32), (8, 32), (1, 128)]
        .into_iter()
        .map(|(batch, tokens)| {
            let ids = Tensor::randint(1000, [batch, tokens], (Kind::Int64, Device::Cpu)) + 1000;
            let mask = Tensor::ones([batch, tokens], (Kind::Int64, Device::Cpu));
            (format!("batch {batch}, {tokens} tokens"), vec![ids, mask], batch as f64)
        })
        .collect();
    compare("sentiment, texts", "texts", &text_models, &text_cases, rounds, seconds, &[(1, 0)])?;
    drop(text_models);

    let shakespeare = models.join("shakespeare/1");
    let generation =
        [load(&shakespeare, ModelFormat::TorchScript, true)?, load(&shakespeare, ModelFormat::Onnx, true)?];
    let generation_cases: Vec<(String, Vec<Tensor>, f64)> = [(1, 1, "step"), (8, 1, "step"), (1, 128, "prefill")]
        .into_iter()
        .map(|(batch, tokens, what)| {
            let ids = Tensor::randint(256, [batch, tokens], (Kind::Int64, Device::Cpu));
            let state = Tensor::zeros([1, batch, 512], (Kind::Float, Device::Cpu));
            (format!("{what}, batch {batch}, {tokens} token(s)"), vec![ids, state], (batch * tokens) as f64)
        })
        .collect();
    compare("shakespeare, tokens", "tokens", &generation, &generation_cases, rounds, seconds, &[(1, 0)])?;
    drop(generation);

    let style = models.join("style_starry_night/1");
    // As served: TorchScript plain (model.toml's optimize = false), ONNX fully optimised.
    let styles = [load(&style, ModelFormat::TorchScript, false)?, load(&style, ModelFormat::Onnx, true)?];
    let style_cases = vec![
        ("256 x 192".to_string(), vec![batch_of(1, &[3, 192, 256])], 1.0),
        ("512 x 384".to_string(), vec![batch_of(1, &[3, 384, 512])], 1.0),
    ];
    compare("style_starry_night, images", "images", &styles, &style_cases, rounds, seconds, &[(1, 0)])
}

/// Where one classification request's time goes, per format, at batch 1 on one thread: decode, resize, crop and
/// normalise, forward (medians of 30 runs), for the sample photo and a 4000-pixel one, the JPEG decoded whole and
/// (ember's default) at the largest DCT scale that still covers the resize.
fn request_split(formats: &[Loaded]) -> anyhow::Result<()> {
    let prep = ImagePreprocessing { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    let sample = std::fs::read("tests/data/images/china.jpg")?;
    let large = upscaled_jpeg(&sample, 4000)?;
    let limits = ImageLimits { max_pixels: u64::MAX, max_aspect: u32::MAX };
    println!("\nmobilenet_v2, one request at batch 1, 1 thread: median ms of 30 runs\n");
    println!("| photo | decode | format | decode ms | resize+crop+normalise ms | forward ms | decode+resize share |");
    println!("|---|---|---|---|---|---|---|");
    for (photo, bytes) in [("china.jpg 640x427", &sample), ("4000x2669 JPEG", &large)] {
        for (how, size) in [("whole", DecodeSize::Full), ("DCT-scaled", DecodeSize::ShorterAtLeast(prep.resize))] {
            for loaded in formats {
                let (mut decode, mut resize, mut forward) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..30 {
                    let started = Instant::now();
                    let probed = image::probe(bytes, limits).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let decoded = image::decode_probed_for(bytes, probed, size).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let decoded_at = Instant::now();
                    let input = image::to_normalized_tensor(decoded, &prep).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let resized_at = Instant::now();
                    let _ = loaded.module.forward_one(&[&input.unsqueeze(0)]).map_err(anyhow::Error::msg)?;
                    decode.push(ms(decoded_at - started));
                    resize.push(ms(resized_at - decoded_at));
                    forward.push(ms(resized_at.elapsed()));
                }
                let (d, r, f) = (stats::median(&mut decode), stats::median(&mut resize), stats::median(&mut forward));
                println!(
                    "| {photo} | {how} | {} | {d:.2} | {r:.2} | {f:.2} | {:.0}% |",
                    loaded.label,
                    100.0 * (d + r) / (d + r + f)
                );
            }
        }
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The sample photo scaled up to `longer` pixels and saved as a JPEG of quality 90: a camera-sized upload.
fn upscaled_jpeg(jpeg: &[u8], longer: u32) -> anyhow::Result<Vec<u8>> {
    let limits = ImageLimits { max_pixels: u64::MAX, max_aspect: u32::MAX };
    let rgb = image::decode(jpeg, limits).map_err(|e| anyhow::anyhow!("{e}"))?.into_rgb8();
    let (width, height) = rgb.dimensions();
    let shorter = (u64::from(longer) * u64::from(height.min(width)) / u64::from(width.max(height))) as u32;
    let (w, h) = if width >= height { (longer, shorter) } else { (shorter, longer) };
    let large = ::image::imageops::resize(&rgb, w, h, ::image::imageops::FilterType::Triangle);
    image::encode(&large, ember::tasks::image::OutputFormat::Jpeg).map_err(|e| anyhow::anyhow!("{e}"))
}
