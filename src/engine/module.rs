//! A model prepared for inference, in whichever format its version holds: a TorchScript module (loaded, in eval
//! mode, and unless turned off frozen and optimised with `torch::jit::optimize_for_inference` through the C++
//! shim in csrc/inference_module.cpp), an ONNX graph in an ONNX Runtime session (`onnx`), or an AOTInductor
//! package (`aoti`). Every task calls `forward` with libtorch tensors and gets libtorch tensors back, whatever
//! the format.
//!
//! Why not tch's `CModule`: tch cannot freeze or optimise a module, and on CPU that optimisation (batch norms
//! folded, weights prepacked for oneDNN) makes MobileNetV2 about 1.7x faster per core. The prepacked weights
//! cannot be saved, so the export cannot do it ahead of time.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use tch::{Device, Tensor};

use super::aoti::AotiPackage;
use super::onnx::OnnxModel;
use crate::formats::ModelFormat;

extern "C" {
    fn ember_module_load(path: *const c_char, device: c_int, optimize: c_int, error: *mut *mut c_char) -> *mut c_void;
    fn ember_module_forward(
        module: *mut c_void,
        inputs: *const *mut c_void,
        n_inputs: usize,
        outputs: *mut *mut c_void,
        max_outputs: usize,
        error: *mut *mut c_char,
    ) -> i64;
    fn ember_module_free(module: *mut c_void);
    fn ember_module_named_tensors(
        module: *mut c_void,
        context: *mut c_void,
        visit: extern "C" fn(*mut c_void, *const c_char, *const c_void),
        error: *mut *mut c_char,
    ) -> i64;
    fn ember_message_free(message: *mut c_char);
}

pub struct InferenceModule {
    inner: Inner,
}

enum Inner {
    TorchScript { raw: NonNull<c_void>, optimized: bool },
    Onnx { model: OnnxModel, optimized: bool },
    Aoti(AotiPackage),
    StandIn(StandIn),
}

/// Computes a module's outputs from its inputs without TorchScript: the test double that lets HTTP-contract
/// tests (tests/contract.rs) run the whole server without model files. What a model decides is never tested
/// through one.
#[derive(Clone)]
pub struct StandIn(pub Arc<StandInForward>);

/// A stand-in's forward: the inputs in, the outputs or why not out.
pub type StandInForward = dyn Fn(&[&Tensor]) -> Result<Vec<Tensor>, String> + Send + Sync;

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StandIn")
    }
}

// SAFETY: a torch::jit::Module may move between threads, and its forward may run from several threads at
// once: the graph executor guards its plan cache with a mutex, each call runs in its own interpreter state, and
// nothing here mutates the module after loading (parameters are frozen constants, or read-only without
// gradients). A pool's workers share one module this way (tests/classify.rs checks the answers under load).
unsafe impl Send for InferenceModule {}
unsafe impl Sync for InferenceModule {}

/// Most outputs a model's forward may return (a tuple's elements).
const MAX_OUTPUTS: usize = 16;

/// Calls a shim function that reports failure as (null or -1, malloc'd message); `succeeded` tells them apart.
pub(super) fn checked<R>(
    call: impl FnOnce(*mut *mut c_char) -> R,
    succeeded: impl FnOnce(&R) -> bool,
) -> Result<R, String> {
    let mut error: *mut c_char = std::ptr::null_mut();
    let result = call(&mut error);
    if succeeded(&result) {
        return Ok(result);
    }
    Err(take_message(error))
}

/// The message a shim function reported (and frees it).
pub(super) fn take_message(error: *mut c_char) -> String {
    if error.is_null() {
        return "libtorch failed without a message".into();
    }
    // SAFETY: the shim wrote a NUL-terminated malloc'd string; it is freed right after copying.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { ember_message_free(error) };
    message
}

/// Runs a shim call that takes tensors and writes at most `max` new ones, `call(inputs, count, outputs, max,
/// error) -> count or -1`, over `inputs`, and takes ownership of the tensors it returns.
pub(super) fn call_returning_tensors(
    inputs: &[&Tensor],
    call: impl FnOnce(*const *mut c_void, usize, *mut *mut c_void, usize, *mut *mut c_char) -> i64,
) -> Result<Vec<Tensor>, String> {
    let input_ptrs: Vec<*mut c_void> = inputs.iter().map(|t| t.as_ptr() as *mut c_void).collect();
    let mut output_ptrs = [std::ptr::null_mut::<c_void>(); MAX_OUTPUTS];
    // SAFETY (of the shim calls this wraps): the input tensors are only read and outlive the call; the shim
    // writes at most MAX_OUTPUTS new heap at::Tensor pointers, which Tensor::from_ptr takes ownership of.
    let count = checked(
        |error| call(input_ptrs.as_ptr(), input_ptrs.len(), output_ptrs.as_mut_ptr(), MAX_OUTPUTS, error),
        |count| *count >= 0,
    )?;
    Ok(output_ptrs[..count as usize]
        .iter()
        .map(|&ptr| unsafe { Tensor::from_ptr(ptr as *mut torch_sys::C_tensor) })
        .collect())
}

/// A path as the shim takes it.
pub(super) fn shim_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "the path contains a NUL byte".to_string())
}

/// A device as the shim takes it: -1 for the CPU, N for cuda:N.
pub(super) fn shim_device(device: Device) -> Result<c_int, String> {
    match device {
        Device::Cpu => Ok(-1),
        Device::Cuda(index) => Ok(index as c_int),
        other => Err(format!("device {other:?} is not supported")),
    }
}

impl InferenceModule {
    /// Loads `path` onto `device`. With `optimize`, tries freeze + optimize_for_inference and falls back to
    /// the plain module (with a warning) if libtorch cannot optimise this model.
    pub fn load(path: &Path, device: Device, optimize: bool) -> Result<InferenceModule, String> {
        let (c_path, device_index) = (shim_path(path)?, shim_device(device)?);
        // SAFETY: c_path outlives the call; the shim does not keep it.
        let load = |optimize: bool| {
            checked(
                |error| unsafe { ember_module_load(c_path.as_ptr(), device_index, optimize.into(), error) },
                |raw| !raw.is_null(),
            )
            .map(|raw| NonNull::new(raw).expect("checked for null"))
        };
        if optimize {
            match load(true) {
                Ok(raw) => return Ok(InferenceModule { inner: Inner::TorchScript { raw, optimized: true } }),
                Err(message) => tracing::warn!(
                    path = %path.display(),
                    error = %super::fault::torch_error_summary(&message),
                    "optimize_for_inference failed; serving the model unoptimised (set `optimize = false` in model.toml to skip the attempt)"
                ),
            }
        }
        Ok(InferenceModule { inner: Inner::TorchScript { raw: load(false)?, optimized: false } })
    }

    pub fn stand_in(stand_in: StandIn) -> InferenceModule {
        InferenceModule { inner: Inner::StandIn(stand_in) }
    }

    /// An ONNX graph opened in ONNX Runtime (see `onnx`), optimised by it or not.
    pub fn from_onnx(model: OnnxModel, optimized: bool) -> InferenceModule {
        InferenceModule { inner: Inner::Onnx { model, optimized } }
    }

    /// Loads the AOTInductor package `path` with `runners` model instances (see `aoti`).
    pub fn aoti(path: &Path, device: Device, runners: usize) -> Result<InferenceModule, String> {
        Ok(InferenceModule { inner: Inner::Aoti(AotiPackage::load(path, device, runners)?) })
    }

    /// Whether the model was optimised at load (TorchScript: freeze + optimize_for_inference; ONNX: ONNX
    /// Runtime's graph optimisations). An AOTInductor package was optimised when it was compiled.
    pub fn is_optimized(&self) -> bool {
        match &self.inner {
            Inner::TorchScript { optimized, .. } | Inner::Onnx { optimized, .. } => *optimized,
            Inner::Aoti(_) => true,
            Inner::StandIn(_) => false,
        }
    }

    /// The format this module runs (a stand-in counts as TorchScript, which it replaces).
    pub fn format(&self) -> ModelFormat {
        match &self.inner {
            Inner::TorchScript { .. } | Inner::StandIn(_) => ModelFormat::TorchScript,
            Inner::Onnx { .. } => ModelFormat::Onnx,
            Inner::Aoti(_) => ModelFormat::Aoti,
        }
    }

    /// The shape the model declares for input `index`, -1 for a dimension of any size: known for an ONNX graph,
    /// `None` for formats that declare none.
    pub fn declared_input_shape(&self, index: usize) -> Option<Vec<i64>> {
        match &self.inner {
            Inner::Onnx { model, .. } => model.inputs().get(index).map(|port| port.shape.clone()),
            _ => None,
        }
    }

    /// Runs `forward(inputs...)`; returns its tensor, or the elements of its tuple of tensors (an ONNX graph's
    /// or a package's outputs, in order).
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
        let raw = match &self.inner {
            Inner::TorchScript { raw, .. } => raw,
            Inner::Onnx { model, .. } => return model.run(inputs),
            Inner::Aoti(package) => return package.run(inputs),
            Inner::StandIn(stand_in) => return (stand_in.0)(inputs),
        };
        // SAFETY: the module is alive for &self.
        call_returning_tensors(inputs, |inputs, n, outputs, max, error| unsafe {
            ember_module_forward(raw.as_ptr(), inputs, n, outputs, max, error)
        })
    }

    /// Every parameter and buffer of a TorchScript module, named as in its state dict (`features.0.1.running_mean`),
    /// on the CPU: what a fine-tune writes into a copy of an ONNX graph. Errors for other formats.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>, String> {
        let Inner::TorchScript { raw, optimized: false } = &self.inner else {
            return Err("only an unoptimised TorchScript module has its parameters by name".into());
        };
        extern "C" fn collect(context: *mut c_void, name: *const c_char, tensor: *const c_void) {
            // SAFETY: `context` is the Vec below, `name` a NUL-terminated string and `tensor` an at::Tensor, both
            // valid for this call; the tensor is shallow-copied (sharing its storage), not taken.
            let found = unsafe { &mut *context.cast::<Vec<(String, Tensor)>>() };
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            let borrowed = std::mem::ManuallyDrop::new(unsafe { Tensor::from_ptr(tensor as *mut torch_sys::C_tensor) });
            found.push((name, borrowed.shallow_clone()));
        }
        let mut found: Vec<(String, Tensor)> = Vec::new();
        // SAFETY: the module lives for &self; `collect` gets `found` as its context for the call's duration.
        checked(
            |error| unsafe {
                ember_module_named_tensors(
                    raw.as_ptr(),
                    (&mut found as *mut Vec<(String, Tensor)>).cast(),
                    collect,
                    error,
                )
            },
            |count| *count >= 0,
        )?;
        found.into_iter().map(|(name, t)| Ok((name, t.f_to_device(Device::Cpu).map_err(|e| e.to_string())?))).collect()
    }

    /// Runs a model whose forward returns exactly one tensor.
    pub fn forward_one(&self, inputs: &[&Tensor]) -> Result<Tensor, String> {
        let mut outputs = self.forward(inputs)?;
        match outputs.len() {
            1 => Ok(outputs.remove(0)),
            n => Err(format!("the model's forward returned {n} tensors; expected one")),
        }
    }
}

impl Drop for InferenceModule {
    fn drop(&mut self) {
        if let Inner::TorchScript { raw, .. } = &self.inner {
            // SAFETY: raw came from ember_module_load and is freed exactly once.
            unsafe { ember_module_free(raw.as_ptr()) }
        }
    }
}
