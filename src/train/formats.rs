//! A fine-tuned version in the formats of the version it started from, so that it serves as fast as that one.
//!
//! Training runs the TorchScript module (model.pt); the other files are made from it before the version is
//! published:
//! - `model.onnx`: the base version's graph with the trained parameters and buffers written into its
//!   initializers by name (the exports keep the state dict's names, src/engine/onnx/graph.rs), a new label count
//!   carried into its output shapes, then run beside the trained TorchScript module on the same inputs and kept
//!   only if it answers the same;
//! - `model.pt2`: an AOTInductor package needs PyTorch's compiler, which a serving process does not have; the
//!   version is published without it.
//!
//! A format that cannot be carried is left out with the reason, in the run's notes, metrics.json and the job's
//! status; the version still serves in the formats it has.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::publish::Staging;
use super::Progress;
use crate::engine::onnx::{self, graph, OnnxModel, Port};
use crate::engine::{signature_check, InferenceModule};
use crate::formats::ModelFormat;
use crate::signature::{Signature, TensorSpec};

/// What became of one format of the base version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatNote {
    pub format: &'static str,
    pub file: &'static str,
    /// Whether the new version has a file in this format.
    pub written: bool,
    pub note: String,
}

/// The most an output of the rewritten graph may differ from the TorchScript module's: absolute, plus relative to
/// the output's largest value (float rounding of fused batch norms and reordered sums).
const ABSOLUTE_TOLERANCE: f64 = 1e-4;
const RELATIVE_TOLERANCE: f64 = 1e-3;

/// Writes into `staging` (which holds the trained model.pt) the formats of `base_dir` that can be carried, and
/// says what became of each. `signature` is the new version's (its labels and image size may differ from the
/// base's): a graph that does not fit it is not carried.
pub fn carry(base_dir: &Path, staging: &Staging, signature: &Signature, progress: &dyn Progress) -> Vec<FormatNote> {
    let present = ModelFormat::present_in(base_dir);
    let note = |format: ModelFormat, written: bool, note: String| FormatNote {
        format: format.name(),
        file: format.file_name(),
        written,
        note,
    };
    let mut notes = vec![note(ModelFormat::TorchScript, true, "trained".into())];
    if present.contains(&ModelFormat::Onnx) {
        let base = base_dir.join(ModelFormat::Onnx.file_name());
        notes.push(match onnx_with_trained_weights(&base, staging, signature) {
            Ok(how) => note(ModelFormat::Onnx, true, how),
            Err(why) => note(
                ModelFormat::Onnx,
                false,
                format!("not carried, the version is published without model.onnx and serves another format: {why}"),
            ),
        });
    }
    if present.contains(&ModelFormat::Aoti) {
        notes.push(note(
            ModelFormat::Aoti,
            false,
            "not carried: an AOTInductor package is compiled by PyTorch's Python toolchain, which ember does not run; \
             the version is published without model.pt2 (compile one from its model.pt with \
             torch._inductor.aoti_compile_and_package to serve it as a package)"
                .into(),
        ));
    }
    for carried in &notes[1..] {
        progress.note(&format!("{}: {}", carried.file, carried.note));
    }
    notes
}

/// `base` with the trained module's parameters and buffers, written into `staging` as model.onnx once it answers
/// as the module does; the error says why it was not.
fn onnx_with_trained_weights(base: &Path, staging: &Staging, signature: &Signature) -> Result<String, String> {
    let trained_path = staging.path(ModelFormat::TorchScript.file_name());
    let trained = InferenceModule::load(&trained_path, Device::Cpu, false)?;
    let weights = onnx_weights(&trained.named_tensors()?)?;
    let model = graph::read(base)?;
    let rewritten = graph::with_weights(model, &weights).map_err(|e| format!("{}: {e}", base.display()))?;
    let path = staging.path(ModelFormat::Onnx.file_name());
    std::fs::write(&path, &rewritten.model).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let checked = OnnxModel::load(&path, Device::Cpu, 1, true)
        .and_then(|onnx| {
            signature_check::ports_fit("inputs", onnx.inputs(), &signature.inputs)?;
            signature_check::ports_fit("outputs", onnx.outputs(), &signature.outputs)?;
            answers_alike(&onnx, &trained, &signature.inputs)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
    let resized = if rewritten.resized.is_empty() {
        String::new()
    } else {
        format!(", {} resized to the new labels", rewritten.resized.join(", "))
    };
    Ok(format!(
        "the base version's graph with the {} trained tensors{resized}; it answers as the trained model.pt ({checked})",
        rewritten.replaced
    ))
}

/// The module's tensors as ONNX initializers. Batch norms' step counters (`num_batches_tracked`) are training
/// state that no exported graph keeps.
fn onnx_weights(named: &[(String, Tensor)]) -> Result<HashMap<String, graph::Weights>, String> {
    let mut weights = HashMap::new();
    for (name, tensor) in named.iter().filter(|(name, _)| !name.ends_with("num_batches_tracked")) {
        let data_type = onnx::element_type(tensor.kind()).ok_or_else(|| {
            format!("parameter `{name}` is {:?}, which ember does not write into ONNX", tensor.kind())
        })?;
        let contiguous = tensor.f_contiguous().map_err(|e| e.to_string())?;
        let length = contiguous.numel() * contiguous.kind().elt_size_in_bytes();
        // SAFETY: a contiguous CPU tensor's `length` bytes, copied out while it is alive (little-endian, as ONNX's
        // raw_data is, on every machine ember builds for).
        let bytes = if length == 0 {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::copy_from_slice(unsafe {
                std::slice::from_raw_parts(contiguous.data_ptr() as *const u8, length)
            })
        };
        weights.insert(name.clone(), graph::Weights { data_type, dims: contiguous.size(), bytes });
    }
    Ok(weights)
}

/// Runs both on the same inputs (shaped as the task feeds them, `expected`) and compares every output; returns
/// how close they were.
fn answers_alike(onnx: &OnnxModel, trained: &InferenceModule, expected: &[TensorSpec]) -> Result<String, String> {
    tch::manual_seed(0);
    let sizes = probe_sizes(onnx.inputs());
    let inputs: Vec<Tensor> = onnx
        .inputs()
        .iter()
        .zip(expected.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(port, spec)| probe(port, spec, &sizes))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let (got, want) = tch::no_grad(|| (onnx.run(&refs), trained.forward(&refs)));
    let (got, want) = (got?, want?);
    if got.len() != want.len() {
        return Err(format!("the graph gives {} outputs and model.pt {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for ((g, w), port) in got.iter().zip(&want).zip(onnx.outputs()) {
        if g.size() != w.size() {
            return Err(format!(
                "output `{}` has shape {:?} in the graph and {:?} in model.pt",
                port.name,
                g.size(),
                w.size()
            ));
        }
        let (g, w) = (g.to_kind(Kind::Double), w.to_kind(Kind::Double));
        let difference = if g.numel() == 0 { 0.0 } else { (&g - &w).abs().max().double_value(&[]) };
        let scale = if w.numel() == 0 { 0.0 } else { w.abs().max().double_value(&[]) };
        // NaN in either output fails too.
        let within = difference <= ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * scale;
        if !within {
            return Err(format!(
                "output `{}` differs from model.pt's by up to {difference:.2e} (largest value {scale:.2e})",
                port.name
            ));
        }
        worst = worst.max(difference);
    }
    Ok(format!("outputs within {worst:.1e} on {} probe input(s)", inputs.len()))
}

/// The size a probe gives each symbolic dimension: 2 for one that is some input's first (the batch), 32 for
/// any other (tokens, height, width).
fn probe_sizes(ports: &[Port]) -> HashMap<String, i64> {
    let mut sizes = HashMap::new();
    for port in ports {
        for (index, symbol) in port.symbols.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let size = if index == 0 { 2 } else { 32 };
            let entry = sizes.entry(symbol.clone()).or_insert(size);
            *entry = (*entry).min(size);
        }
    }
    sizes
}

/// An input shaped as the task feeds it where its signature fixes a dimension (a classifier's image size), else
/// as the graph declares it, else by `sizes`; floats in 0..1 (images, states), masks of ones, token ids below
/// 64 (every vocabulary ember serves has more).
fn probe(port: &Port, spec: Option<&TensorSpec>, sizes: &HashMap<String, i64>) -> Result<Tensor, String> {
    let kind = port.kind.clone().map_err(|e| format!("input `{}`: {e}", port.name))?;
    let shape: Vec<i64> = (0..port.shape.len())
        .map(|i| {
            let fixed = spec.and_then(|s| s.shape.get(i)).copied().filter(|&d| d >= 0);
            let declared = Some(port.shape[i]).filter(|&d| d >= 0);
            let symbol = port.symbols.get(i).and_then(|s| sizes.get(s)).copied();
            fixed.or(declared).or(symbol).unwrap_or(if i == 0 { 2 } else { 32 })
        })
        .collect();
    signature_check::allocatable(&format!("input `{}`", port.name), &shape)?;
    let options = (kind, Device::Cpu);
    Ok(match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Tensor::rand(shape.as_slice(), options),
        _ if port.name.contains("mask") => Tensor::ones(shape.as_slice(), options),
        Kind::Bool => Tensor::ones(shape.as_slice(), options),
        _ => Tensor::randint(64, shape.as_slice(), options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_inputs_follow_the_graph_and_are_bounded_before_allocation() {
        let port = |shape: &[i64], symbols: &[&str]| Port {
            name: "state".into(),
            kind: Ok(Kind::Float),
            shape: shape.to_vec(),
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
        };
        let ids = Port { name: "input_ids".into(), kind: Ok(Kind::Int64), ..port(&[-1, -1], &["batch", "tokens"]) };
        let state = port(&[1, -1, 512], &["", "batch", ""]);
        let sizes = probe_sizes(&[ids.clone(), state.clone()]);
        assert_eq!(probe(&ids, None, &sizes).unwrap().size(), [2, 32]);
        assert_eq!(probe(&state, None, &sizes).unwrap().size(), [1, 2, 512], "the batch is the ids' batch");
        let huge = port(&[1, -1, 1 << 40], &["", "batch", ""]);
        let err = probe(&huge, None, &sizes).unwrap_err();
        assert!(err.contains("input `state`") && err.contains("1099511627776"), "{err}");
    }
}
