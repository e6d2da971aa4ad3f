//! `ModelInferRequest` to checked input tensors and output tensors to `ModelInferResponse`: the protobuf framing
//! of the service layer's tensor checks (`service::tensors`), which the JSON and binary bodies of /v2 use too.
//!
//! Inputs come as `raw_input_contents` (one entry per input, in order: what tritonclient sends) or as typed
//! `contents` (the list that matches the datatype). Outputs go back raw (`raw_output_contents`, what the
//! clients read), or typed when the request sets the parameter `binary_data_output` to false.

use bytes::Bytes;
use tch::{Kind, Tensor};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::service::tensors::{
    check_answer_size, checked_elements, checked_input, classification_unsupported, input_index, output_error,
    output_index, output_tensor, raw_bytes, raw_tensor, WantedOutput,
};
use crate::service::ApiError;
use crate::signature::{DataType, Signature};

/// A request's inputs in signature order, and the outputs it wants.
pub struct Decoded {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<WantedOutput>,
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

pub fn decode(request: &ModelInferRequest, signature: &Signature) -> Result<Decoded, ApiError> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents holds {} entries for {} inputs; send one per input, in the inputs' order",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs: Vec<Option<Tensor>> = signature.inputs.iter().map(|_| None).collect();
    for (position, input) in request.inputs.iter().enumerate() {
        let index = input_index(signature, &input.name)?;
        if inputs[index].is_some() {
            return Err(bad(format!("input `{}` is given twice", input.name)));
        }
        let tensor = checked_input(signature, index, &input.shape, |spec| {
            let (datatype, elements) = checked_elements(&input.datatype, &input.shape, spec)?;
            match raw.get(position) {
                Some(_) if has_contents(input) => Err("has both contents and raw_input_contents; send one".to_string()),
                Some(bytes) => raw_tensor(bytes, &input.shape, datatype, elements)
                    .map_err(|message| format!("raw_input_contents[{position}] {message}")),
                None => match &input.contents {
                    Some(contents) => typed_tensor(contents, datatype, elements)?
                        .f_view(input.shape.as_slice())
                        .map_err(|e| e.to_string()),
                    None => Err("has no data (neither contents nor raw_input_contents)".to_string()),
                },
            }
        })?;
        inputs[index] = Some(tensor);
    }
    let inputs = inputs
        .into_iter()
        .zip(&signature.inputs)
        .map(|(tensor, spec)| tensor.ok_or_else(|| bad(format!("input `{}` is missing", spec.name))))
        .collect::<Result<_, _>>()?;
    Ok(Decoded { inputs, outputs: wanted_outputs(request, signature)? })
}

fn has_contents(input: &InferInputTensor) -> bool {
    input.contents.as_ref().is_some_and(|c| *c != InferTensorContents::default())
}

/// Whether outputs go back raw: yes, unless the request's `binary_data_output` is false.
pub fn raw_outputs(request: &ModelInferRequest) -> Result<bool, ApiError> {
    match request.parameters.get("binary_data_output") {
        None => Ok(true),
        Some(InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(raw)) }) => Ok(*raw),
        Some(_) => Err(bad("parameter binary_data_output must be a bool_param".into())),
    }
}

fn wanted_outputs(request: &ModelInferRequest, signature: &Signature) -> Result<Vec<WantedOutput>, ApiError> {
    let binary = raw_outputs(request)?;
    if request.outputs.is_empty() {
        return Ok((0..signature.outputs.len()).map(|index| WantedOutput { index, binary }).collect());
    }
    let mut wanted: Vec<WantedOutput> = Vec::with_capacity(request.outputs.len());
    for output in &request.outputs {
        let index = output_index(signature, &output.name)?;
        if wanted.iter().any(|w| w.index == index) {
            return Err(bad(format!("output `{}` is asked for twice", output.name)));
        }
        if output.parameters.contains_key("classification") {
            return Err(classification_unsupported(&output.name));
        }
        wanted.push(WantedOutput { index, binary });
    }
    Ok(wanted)
}

/// An input from the typed list that matches its datatype (the protocol's mapping: INT8 to INT32 in
/// `int_contents`, UINT8 in `uint_contents`, ...). FP16 has no list: it comes raw.
fn typed_tensor(contents: &InferTensorContents, datatype: DataType, elements: usize) -> Result<Tensor, String> {
    let counted = |field: &str, len: usize| {
        if len == elements {
            Ok(())
        } else {
            Err(format!("contents.{field} holds {len} values but the shape has {elements} elements ({datatype})"))
        }
    };
    let in_range = |values: &mut dyn Iterator<Item = i64>| match datatype.integer_range() {
        None => Ok(()),
        Some((min, max)) => match values.enumerate().find(|(_, v)| !(min..=max).contains(v)) {
            Some((index, value)) => {
                Err(format!("element {index} is {value}, not an integer in {min}..={max} ({datatype})"))
            }
            None => Ok(()),
        },
    };
    let tensor = match datatype {
        DataType::Bool => {
            counted("bool_contents", contents.bool_contents.len())?;
            Tensor::from_slice(&contents.bool_contents)
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            counted("int_contents", contents.int_contents.len())?;
            in_range(&mut contents.int_contents.iter().map(|&v| i64::from(v)))?;
            Tensor::from_slice(&contents.int_contents)
        }
        DataType::Int64 => {
            counted("int64_contents", contents.int64_contents.len())?;
            Tensor::from_slice(&contents.int64_contents)
        }
        DataType::Uint8 => {
            counted("uint_contents", contents.uint_contents.len())?;
            in_range(&mut contents.uint_contents.iter().map(|&v| i64::from(v)))?;
            let values: Vec<i64> = contents.uint_contents.iter().map(|&v| i64::from(v)).collect();
            Tensor::from_slice(&values)
        }
        DataType::Fp32 => {
            counted("fp32_contents", contents.fp32_contents.len())?;
            Tensor::from_slice(&contents.fp32_contents)
        }
        DataType::Fp64 => {
            counted("fp64_contents", contents.fp64_contents.len())?;
            Tensor::from_slice(&contents.fp64_contents)
        }
        DataType::Fp16 => return Err("FP16 has no typed contents list; send it as raw_input_contents".into()),
    };
    tensor.f_to_kind(datatype.kind()).map_err(|e| e.to_string())
}

/// The answer's outputs, and their raw contents when they go back raw (then `contents` is left empty).
pub struct Encoded {
    pub outputs: Vec<InferOutputTensor>,
    pub raw: Vec<Bytes>,
}

pub fn encode(
    signature: &Signature,
    outputs: &[Tensor],
    wanted: &[WantedOutput],
    max_bytes: usize,
) -> Result<Encoded, ApiError> {
    check_answer_size(signature, outputs, wanted, max_bytes)?;
    let mut encoded = Encoded { outputs: Vec::with_capacity(wanted.len()), raw: Vec::new() };
    for choice in wanted {
        let spec = &signature.outputs[choice.index];
        let tensor = output_tensor(&outputs[choice.index], spec)?;
        let contents = if choice.binary {
            encoded.raw.push(Bytes::from(raw_bytes(&tensor, spec.datatype)?));
            None
        } else {
            Some(typed_contents(&tensor, spec.datatype)?)
        };
        encoded.outputs.push(InferOutputTensor {
            name: spec.name.clone(),
            datatype: spec.datatype.name().to_string(),
            shape: tensor.size(),
            parameters: Default::default(),
            contents,
        });
    }
    Ok(encoded)
}

/// An output's elements in the typed list of its datatype (FP16 in `fp32_contents`, the nearest list).
fn typed_contents(tensor: &Tensor, datatype: DataType) -> Result<InferTensorContents, ApiError> {
    let flat = tensor.f_reshape([-1]).map_err(output_error)?;
    let mut contents = InferTensorContents::default();
    match datatype {
        DataType::Bool => contents.bool_contents = Vec::try_from(&flat).map_err(output_error)?,
        DataType::Uint8 => {
            let values: Vec<i64> =
                Vec::try_from(&flat.f_to_kind(Kind::Int64).map_err(output_error)?).map_err(output_error)?;
            contents.uint_contents = values.into_iter().map(|v| v as u32).collect();
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            contents.int_contents =
                Vec::try_from(&flat.f_to_kind(Kind::Int).map_err(output_error)?).map_err(output_error)?
        }
        DataType::Int64 => contents.int64_contents = Vec::try_from(&flat).map_err(output_error)?,
        DataType::Fp16 | DataType::Fp32 => {
            contents.fp32_contents =
                Vec::try_from(&flat.f_to_kind(Kind::Float).map_err(output_error)?).map_err(output_error)?
        }
        DataType::Fp64 => contents.fp64_contents = Vec::try_from(&flat).map_err(output_error)?,
    }
    Ok(contents)
}
