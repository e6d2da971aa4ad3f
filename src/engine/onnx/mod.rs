//! ONNX models, run by ONNX Runtime on the CPU: one session per loaded version, shared by the version's workers.
//!
//! The session's `Run` is called directly through ONNX Runtime's C API. ONNX Runtime documents `Run` as safe to
//! call from several threads on one session (the CPU execution provider keeps no per-call state on the session),
//! which is how a pool's workers share one copy of the weights, as they share one TorchScript module. (The `ort`
//! crate's `Session::run` takes `&mut self` as a precaution for other execution providers; ember registers none.)
//!
//! Tensors cross without a copy: a contiguous CPU input is handed to ONNX Runtime as a view of its memory, and
//! each output becomes a libtorch tensor over ONNX Runtime's buffer, released when libtorch drops it.
//!
//! Threads: the session's intra-op pool has the worker's own thread count, and with one thread ONNX Runtime runs
//! every kernel on the calling worker (no pool at all). Pool threads never spin while waiting
//! (`allow_spinning = 0`): a spinning pool keeps a core busy after every request.

pub mod graph;
pub mod runtime;

use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::ptr::{self, NonNull};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::sys::{ONNXTensorElementDataType as OnnxType, OrtStatus, OrtValue};
use ort::value::{TensorElementType, ValueType};
use ort::AsPointer;
use tch::{Device, Kind, Tensor};

use crate::signature::DataType;

extern "C" {
    fn ember_tensor_from_blob(
        data: *mut c_void,
        sizes: *const i64,
        ndim: usize,
        scalar_type: i32,
        context: *mut c_void,
        release: extern "C" fn(*mut c_void),
        error: *mut *mut std::ffi::c_char,
    ) -> *mut c_void;
}

/// An input or output of the graph as the session declares it.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    /// The element type, when it is one ember can pass (see `kind_of`).
    pub kind: Result<Kind, String>,
    /// Dimensions, -1 for a symbolic one.
    pub shape: Vec<i64>,
    /// Each dimension's symbol (`batch`, `tokens`; empty for a fixed or unnamed one): dimensions of one symbol
    /// have one size in a call.
    pub symbols: Vec<String>,
}

impl Port {
    /// `FP32 [-1, 3, 224, 224]`, for messages.
    pub fn describe(&self) -> String {
        let kind = match &self.kind {
            Ok(kind) => DataType::ALL
                .iter()
                .find(|d| d.kind() == *kind)
                .map_or_else(|| format!("{kind:?}"), |d| d.name().to_string()),
            Err(name) => name.clone(),
        };
        format!("{kind} {:?}", self.shape)
    }
}

pub struct OnnxModel {
    session: Session,
    /// Where inputs live (the CPU), described once for every run.
    memory: CpuMemory,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    input_names: Vec<CString>,
    output_names: Vec<CString>,
}

// SAFETY: see the module documentation: one session's Run may be called from several threads at once, and
// nothing here changes after loading.
unsafe impl Send for OnnxModel {}
unsafe impl Sync for OnnxModel {}

impl OnnxModel {
    /// Checks `path` (its external data stays in its folder), then opens it in a session with `threads` intra-op
    /// threads and, with `optimize`, every graph optimisation (batch norms folded into convolutions, operators
    /// fused, layouts chosen for this CPU); without, the basic ones (constants and batch norms folded, redundant
    /// nodes removed). The error names the file and what is wrong with it.
    pub fn load(path: &Path, device: Device, threads: usize, optimize: bool) -> Result<OnnxModel, String> {
        runs_on(device).map_err(|e| format!("{}: {e}", path.display()))?;
        let version_dir = path.parent().unwrap_or(Path::new("."));
        let model = graph::read(path)?;
        graph::check_external_data(&model, version_dir).map_err(|e| format!("{}: {e}", path.display()))?;
        drop(model);
        let environment = runtime::environment()?;
        let level = if optimize { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Level1 };
        let opened = Session::builder(environment)
            .and_then(|b| b.with_optimization_level(level).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| b.with_parallel_execution(false).map_err(Into::into))
            .and_then(|b| b.with_config_entry("session.intra_op.allow_spinning", "0").map_err(Into::into))
            .and_then(|b| b.with_config_entry("session.inter_op.allow_spinning", "0").map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(path));
        let session = opened.map_err(|e: ort::Error| format!("ONNX Runtime cannot open {}: {e}", path.display()))?;
        let inputs: Vec<Port> = session.inputs().iter().map(|o| port(o.name(), o.dtype())).collect();
        let outputs: Vec<Port> = session.outputs().iter().map(|o| port(o.name(), o.dtype())).collect();
        let names = |ports: &[Port]| -> Result<Vec<CString>, String> {
            ports
                .iter()
                .map(|p| CString::new(p.name.as_str()).map_err(|_| format!("`{}` holds a NUL byte", p.name)))
                .collect()
        };
        let (input_names, output_names) = (names(&inputs)?, names(&outputs)?);
        Ok(OnnxModel { session, memory: CpuMemory::new()?, inputs, outputs, input_names, output_names })
    }

    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// Runs the graph on `inputs` (in the graph's input order, on the CPU); returns its outputs in order.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
        if inputs.len() != self.inputs.len() {
            return Err(format!("the graph takes {} inputs; got {}", self.inputs.len(), inputs.len()));
        }
        // Contiguous CPU tensors of the declared kinds; a view of each is what ONNX Runtime reads.
        let mut owned = Vec::with_capacity(inputs.len());
        for (tensor, port) in inputs.iter().zip(&self.inputs) {
            let kind = port.kind.clone().map_err(|e| format!("input `{}`: {e}", port.name))?;
            if tensor.kind() != kind {
                return Err(format!("input `{}` takes {}; got {:?}", port.name, port.describe(), tensor.kind()));
            }
            owned.push(tensor.f_to_device(Device::Cpu).and_then(|t| t.f_contiguous()).map_err(|e| e.to_string())?);
        }
        let values = owned.iter().map(|t| InputValue::new(t, &self.memory)).collect::<Result<Vec<_>, _>>()?;
        let value_ptrs: Vec<*const OrtValue> = values.iter().map(|v| v.0.as_ptr() as *const OrtValue).collect();
        let input_names: Vec<*const std::ffi::c_char> = self.input_names.iter().map(|n| n.as_ptr()).collect();
        let output_names: Vec<*const std::ffi::c_char> = self.output_names.iter().map(|n| n.as_ptr()).collect();
        let mut outputs: Vec<*mut OrtValue> = vec![ptr::null_mut(); output_names.len()];
        // SAFETY: the session lives for &self; names, input values and the tensors under them outlive the call;
        // `outputs` has room for every output name, and ONNX Runtime fills each with a value we then own.
        let status = unsafe {
            (ort::api().Run)(
                self.session.ptr().cast_mut(),
                ptr::null(),
                input_names.as_ptr(),
                value_ptrs.as_ptr(),
                value_ptrs.len(),
                output_names.as_ptr(),
                output_names.len(),
                outputs.as_mut_ptr(),
            )
        };
        let outputs: Vec<OwnedValue> = outputs.into_iter().filter_map(NonNull::new).map(OwnedValue).collect();
        checked(status.0)?;
        drop(values);
        outputs.into_iter().zip(&self.outputs).map(|(value, port)| value.into_tensor(&port.name)).collect()
    }
}

/// Whether this build's ONNX Runtime can run a model on `device`: the CPU only (PyPI's onnxruntime wheel has no
/// CUDA execution provider).
pub fn runs_on(device: Device) -> Result<(), String> {
    if device == Device::Cpu {
        Ok(())
    } else {
        Err("this build of ONNX Runtime (PyPI's onnxruntime) runs on the CPU only; set device = \"cpu\" in \
             model.toml, or serve another format on the GPU (format = \"torchscript\")"
            .into())
    }
}

fn port(name: &str, dtype: &ValueType) -> Port {
    match dtype {
        ValueType::Tensor { ty, shape, dimension_symbols } => Port {
            name: name.to_string(),
            kind: kind_of(*ty),
            shape: shape.iter().copied().collect(),
            symbols: dimension_symbols.iter().cloned().collect(),
        },
        other => Port {
            name: name.to_string(),
            kind: Err(format!("{other:?} (not a tensor)")),
            shape: vec![],
            symbols: vec![],
        },
    }
}

/// The element types ember passes between libtorch and ONNX Runtime: libtorch's kind, ONNX's element type, and
/// the kind's c10::ScalarType number (what the shim's from_blob takes).
const PASSED: [(Kind, OnnxType, i32); 10] = [
    (Kind::Uint8, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 0),
    (Kind::Int8, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1),
    (Kind::Int16, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, 2),
    (Kind::Int, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 3),
    (Kind::Int64, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 4),
    (Kind::Half, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, 5),
    (Kind::Float, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 6),
    (Kind::Double, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 7),
    (Kind::Bool, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 11),
    (Kind::BFloat16, OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, 15),
];

fn passed_kind(kind: Kind) -> Option<(Kind, OnnxType, i32)> {
    PASSED.into_iter().find(|(k, _, _)| *k == kind)
}

fn passed_onnx(onnx: OnnxType) -> Option<(Kind, OnnxType, i32)> {
    PASSED.into_iter().find(|(_, o, _)| *o == onnx)
}

/// ONNX's element type number (`TensorProto.DataType`, which ONNX Runtime's element types follow) of a libtorch
/// kind ember passes.
pub fn element_type(kind: Kind) -> Option<i32> {
    passed_kind(kind).map(|(_, onnx, _)| onnx as i32)
}

/// The libtorch kind of an ONNX element type ember can pass, or why not.
fn kind_of(ty: TensorElementType) -> Result<Kind, String> {
    passed_onnx(ty.into())
        .map(|(kind, _, _)| kind)
        .ok_or_else(|| format!("element type {ty:?}, which ember does not pass"))
}

/// Turns an ONNX Runtime status into a result (and frees it).
fn checked(status: *mut OrtStatus) -> Result<(), String> {
    if status.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status holds a NUL-terminated message until it is released, right after the copy.
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status)) }.to_string_lossy().into_owned();
    unsafe { (api.ReleaseStatus)(status) };
    Err(message)
}

/// ONNX Runtime's description of CPU memory of its default allocator, which every input value names.
struct CpuMemory(NonNull<ort::sys::OrtMemoryInfo>);

// SAFETY: an immutable description, only read after it is made.
unsafe impl Send for CpuMemory {}
unsafe impl Sync for CpuMemory {}

impl CpuMemory {
    fn new() -> Result<CpuMemory, String> {
        let mut info = ptr::null_mut();
        // SAFETY: creates a new memory info, owned by the CpuMemory and released on drop.
        checked(
            unsafe {
                (ort::api().CreateCpuMemoryInfo)(
                    ort::sys::OrtAllocatorType::OrtArenaAllocator,
                    ort::sys::OrtMemType::OrtMemTypeDefault,
                    &mut info,
                )
            }
            .0,
        )?;
        NonNull::new(info).map(CpuMemory).ok_or_else(|| "ONNX Runtime made no memory info".to_string())
    }
}

impl Drop for CpuMemory {
    fn drop(&mut self) {
        // SAFETY: made by CreateCpuMemoryInfo, released once.
        unsafe { (ort::api().ReleaseMemoryInfo)(self.0.as_ptr()) }
    }
}

/// An input value: ONNX Runtime's view of a contiguous CPU tensor's memory, which must outlive it.
struct InputValue(NonNull<OrtValue>);

impl InputValue {
    fn new(tensor: &Tensor, memory: &CpuMemory) -> Result<InputValue, String> {
        let (_, onnx, _) =
            passed_kind(tensor.kind()).ok_or_else(|| format!("ember cannot pass {:?} tensors", tensor.kind()))?;
        let shape = tensor.size();
        let bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        let api = ort::api();
        let mut value = ptr::null_mut();
        // A tensor of no elements may have no data pointer; ONNX Runtime reads nothing from it then.
        let data = if bytes == 0 { ptr::NonNull::<u8>::dangling().as_ptr().cast() } else { tensor.data_ptr() };
        // SAFETY: `data` points at `bytes` bytes of the contiguous tensor, which the caller keeps alive and
        // unchanged while the value exists; ONNX Runtime does not own or free it.
        let status = unsafe {
            (api.CreateTensorWithDataAsOrtValue)(
                memory.0.as_ptr(),
                data,
                bytes,
                shape.as_ptr(),
                shape.len(),
                onnx,
                &mut value,
            )
        };
        checked(status.0)?;
        NonNull::new(value).map(InputValue).ok_or_else(|| "ONNX Runtime made no input value".to_string())
    }
}

impl Drop for InputValue {
    fn drop(&mut self) {
        // SAFETY: created by CreateTensorWithDataAsOrtValue, released once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

/// An output value ONNX Runtime allocated and handed to us.
struct OwnedValue(NonNull<OrtValue>);

// SAFETY: an OrtValue may be released from any thread.
unsafe impl Send for OwnedValue {}

impl Drop for OwnedValue {
    fn drop(&mut self) {
        // SAFETY: owned since Run returned it; released once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

extern "C" fn release_owned_value(context: *mut c_void) {
    // SAFETY: `context` is the Box<OwnedValue> leaked by `into_tensor`, handed back exactly once by libtorch.
    drop(unsafe { Box::from_raw(context.cast::<OwnedValue>()) });
}

impl OwnedValue {
    fn type_and_shape(&self) -> Result<(OnnxType, Vec<i64>), String> {
        let api = ort::api();
        let mut info = ptr::null_mut();
        // SAFETY: the info describes the live value and is released before returning.
        checked(unsafe { (api.GetTensorTypeAndShape)(self.0.as_ptr(), &mut info) }.0)?;
        let mut onnx = OnnxType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        let mut count = 0;
        let mut read = || -> Result<Vec<i64>, String> {
            checked(unsafe { (api.GetTensorElementType)(info, &mut onnx) }.0)?;
            checked(unsafe { (api.GetDimensionsCount)(info, &mut count) }.0)?;
            let mut dims = vec![0i64; count];
            checked(unsafe { (api.GetDimensions)(info, dims.as_mut_ptr(), count) }.0)?;
            Ok(dims)
        };
        let dims = read();
        unsafe { (api.ReleaseTensorTypeAndShapeInfo)(info) };
        Ok((onnx, dims?))
    }

    /// A libtorch tensor over the value's memory (no copy); the value is released when the tensor is dropped.
    fn into_tensor(self, name: &str) -> Result<Tensor, String> {
        let api = ort::api();
        let (onnx, shape) = self.type_and_shape().map_err(|e| format!("output `{name}` is not a tensor: {e}"))?;
        let (kind, _, scalar_type) = passed_onnx(onnx)
            .ok_or_else(|| format!("output `{name}` is of element type {onnx:?}, which ember does not pass"))?;
        if shape.contains(&0) {
            return Ok(Tensor::empty(shape.as_slice(), (kind, Device::Cpu)));
        }
        let mut data = ptr::null_mut();
        // SAFETY: the value's buffer, valid until the value is released.
        checked(unsafe { (api.GetTensorMutableData)(self.0.as_ptr(), &mut data) }.0)?;
        let context = Box::into_raw(Box::new(self)).cast::<c_void>();
        let mut error = ptr::null_mut();
        // SAFETY: `data` is the value's dense row-major buffer of `shape`; libtorch calls release_owned_value with
        // `context` once it no longer uses it. On failure it did not take the context, which is reclaimed here.
        let raw = unsafe {
            ember_tensor_from_blob(
                data,
                shape.as_ptr(),
                shape.len(),
                scalar_type,
                context,
                release_owned_value,
                &mut error,
            )
        };
        if raw.is_null() {
            release_owned_value(context);
            return Err(super::module::take_message(error));
        }
        Ok(unsafe { Tensor::from_ptr(raw as *mut torch_sys::C_tensor) })
    }
}
