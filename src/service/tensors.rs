//! The Open Inference Protocol's tensor checks and conversions, the same whichever transport carries them: an
//! input is found by name, its datatype and shape checked against the model's signature and its bounds before any
//! value is read (the shape is the client's word and sizes the work), its values after; raw little-endian bytes
//! become a tensor and an output tensor becomes them; an answer over `--max-response-bytes` is refused before it
//! is written. Errors name the input or output.

use tch::Tensor;

use super::error::ApiError;
use crate::signature::{DataType, Signature, TensorSpec};

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// An output the caller wants: its position in the signature, and whether its data comes back binary.
pub struct WantedOutput {
    pub index: usize,
    pub binary: bool,
}

/// The position of the tensor called `name` among `specs` (a signature's inputs or outputs, `what` says which),
/// or a 400 that lists them.
fn position(specs: &[TensorSpec], what: &str, name: &str) -> Result<usize, ApiError> {
    specs.iter().position(|spec| spec.name == name).ok_or_else(|| {
        let names = specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        bad(format!("the model has no {what} `{name}`; its {what}s: {names}"))
    })
}

/// The position of the input called `name` in the signature, or a 400 that lists the inputs.
pub fn input_index(signature: &Signature, name: &str) -> Result<usize, ApiError> {
    position(&signature.inputs, "input", name)
}

/// The position of the output called `name` in the signature, or a 400 that lists the outputs.
pub fn output_index(signature: &Signature, name: &str) -> Result<usize, ApiError> {
    position(&signature.outputs, "output", name)
}

/// The 400 for an output that asks for Triton's classification extension.
pub fn classification_unsupported(name: &str) -> ApiError {
    bad(format!("output `{name}`: the classification extension is not supported; ask for the logits"))
}

/// Input `index` as `read` makes it from the request, within the model's bounds: the shape (the client's word,
/// which sizes the work) is checked before any value is read, the values after. Errors name the input.
pub fn checked_input(
    signature: &Signature,
    index: usize,
    shape: &[i64],
    read: impl FnOnce(&TensorSpec) -> Result<Tensor, String>,
) -> Result<Tensor, ApiError> {
    let (spec, bounds) = (&signature.inputs[index], &signature.bounds[index]);
    let name = &spec.name;
    bounds.check_shape(shape).map_err(|message| ApiError::payload_too_large(format!("input `{name}`: {message}")))?;
    let tensor = read(spec).map_err(|message| bad(format!("input `{name}`: {message}")))?;
    bounds.check_values(&tensor).map_err(|message| ApiError::validation(format!("input `{name}`: {message}")))?;
    Ok(tensor)
}

/// The datatype and the number of elements of an input the model accepts with this datatype and shape.
pub fn checked_elements(datatype: &str, shape: &[i64], spec: &TensorSpec) -> Result<(DataType, usize), String> {
    let datatype = DataType::parse(datatype)?;
    if datatype != spec.datatype {
        return Err(format!("datatype {datatype} does not match the model's {}", spec.datatype));
    }
    if let Some(dim) = shape.iter().find(|&&d| d < 0) {
        return Err(format!("shape {shape:?} has a negative dimension {dim}"));
    }
    if !spec.accepts(shape) {
        return Err(format!("shape {shape:?} does not match the model's {:?} (-1: any size)", spec.shape));
    }
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))?;
    Ok((datatype, elements))
}

/// A tensor from little-endian, row-major bytes, which must be exactly what the shape needs.
pub fn raw_tensor(bytes: &[u8], shape: &[i64], datatype: DataType, elements: usize) -> Result<Tensor, String> {
    let expected = elements.saturating_mul(datatype.byte_size());
    if bytes.len() != expected {
        return Err(format!(
            "holds {} bytes but shape {shape:?} of {datatype} needs {expected} ({elements} elements of {} bytes)",
            bytes.len(),
            datatype.byte_size()
        ));
    }
    // A bool is one byte, 0 or 1; any other byte would be a bool libtorch's kernels are not defined for.
    if datatype == DataType::Bool {
        if let Some(position) = bytes.iter().position(|&b| b > 1) {
            let byte = bytes[position];
            return Err(format!("BOOL element {position} is byte {byte}; binary BOOL data is 0 or 1"));
        }
    }
    Tensor::f_from_data_size(bytes, shape, datatype.kind()).map_err(|e| e.to_string())
}

/// The most bytes one element takes in an answer written as text (a JSON array: `-1.2345678e-38,`; an i64 takes
/// 21), or in a typed list of a protobuf message, which takes fewer.
pub const TEXT_BYTES_PER_ELEMENT: usize = 21;

/// Refuses an answer that would be larger than `max_bytes`, before any of it is written.
pub fn check_answer_size(
    signature: &Signature,
    outputs: &[Tensor],
    wanted: &[WantedOutput],
    max_bytes: usize,
) -> Result<(), ApiError> {
    let bytes = wanted.iter().fold(0usize, |total, choice| {
        let per_element =
            if choice.binary { signature.outputs[choice.index].datatype.byte_size() } else { TEXT_BYTES_PER_ELEMENT };
        total.saturating_add(outputs[choice.index].numel().saturating_mul(per_element))
    });
    if bytes > max_bytes {
        return Err(ApiError::payload_too_large(format!(
            "the answer would take up to {bytes} bytes; the limit is {max_bytes} (--max-response-bytes): send fewer \
             rows, ask for fewer outputs, or ask for binary data"
        )));
    }
    Ok(())
}

/// An output the model returned that cannot be read as its signature says: a bug in the model or in ember.
pub fn output_error(e: tch::TchError) -> ApiError {
    ApiError::internal(format!("reading the model's outputs: {e}"))
}

/// A model's output in its signature's datatype, contiguous, ready to be copied out.
pub fn output_tensor(output: &Tensor, spec: &TensorSpec) -> Result<Tensor, ApiError> {
    output.f_to_kind(spec.datatype.kind()).and_then(|t| t.f_contiguous()).map_err(output_error)
}

/// An output tensor's elements as little-endian, row-major bytes (from `output_tensor`).
pub fn raw_bytes(tensor: &Tensor, datatype: DataType) -> Result<Vec<u8>, ApiError> {
    let mut bytes = vec![0; tensor.numel() * datatype.byte_size()];
    tensor.f_copy_data_u8(&mut bytes, tensor.numel()).map_err(output_error)?;
    Ok(bytes)
}
