//! The Open Inference Protocol's infer bodies, both ways: JSON (`inputs[{name, shape, datatype, data}]`), and the
//! binary tensor data extension the official clients use by default, where the body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by each binary tensor's raw little-endian bytes, in order.
//!
//! This is the framing; the checks are the service layer's (`service::tensors`, shared with gRPC): requests are
//! checked against the model's signature before they reach the queue, and a wrong name, datatype, shape or element
//! count is a 400 that names the input.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

use crate::service::tensors::{
    check_answer_size, checked_elements, checked_input, classification_unsupported, input_index, output_error,
    output_index, output_tensor, raw_bytes, raw_tensor, WantedOutput,
};
use crate::service::ApiError;
use crate::signature::{DataType, Signature, TensorSpec};
#[cfg(test)]
use crate::signature::{InputBounds, Limit, ValueRange};

/// The header that says how long the JSON part of a binary body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RequestInput>,
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A request checked against the model's signature.
pub struct Decoded {
    pub id: Option<String>,
    /// One tensor per signature input, in signature order, on the CPU.
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<WantedOutput>,
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// Reads an infer body: all JSON, or (with `header_length`) a JSON header followed by binary tensor data.
pub fn decode(body: &[u8], header_length: Option<usize>, signature: &Signature) -> Result<Decoded, ApiError> {
    let (json, mut binary) = match header_length {
        Some(length) if length > body.len() => {
            return Err(bad(format!("{HEADER_LENGTH} is {length} but the body has only {} bytes", body.len())))
        }
        Some(length) => body.split_at(length),
        None => (body, &[][..]),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let request: InferRequest = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| bad(format!("the infer request is not valid JSON for the protocol: {e}")))?;

    let mut inputs: Vec<Option<Tensor>> = signature.inputs.iter().map(|_| None).collect();
    for input in &request.inputs {
        let index = input_index(signature, &input.name)?;
        if inputs[index].is_some() {
            return Err(bad(format!("input `{}` is given twice", input.name)));
        }
        let tensor = checked_input(signature, index, &input.shape, |spec| decode_input(input, spec, &mut binary))?;
        inputs[index] = Some(tensor);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the inputs' binary_data_size; each binary input must say its size",
            binary.len()
        )));
    }
    let inputs = inputs
        .into_iter()
        .zip(&signature.inputs)
        .map(|(tensor, spec)| tensor.ok_or_else(|| bad(format!("input `{}` is missing", spec.name))))
        .collect::<Result<_, _>>()?;
    let outputs = wanted_outputs(&request, signature)?;
    Ok(Decoded { id: request.id, inputs, outputs })
}

/// A boolean parameter, absent = `None`; any other type is an error naming it.
fn flag(parameters: &Map<String, Value>, name: &str) -> Result<Option<bool>, String> {
    match parameters.get(name) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(format!("parameter {name} must be true or false, got {other}")),
    }
}

fn wanted_outputs(request: &InferRequest, signature: &Signature) -> Result<Vec<WantedOutput>, ApiError> {
    let all_binary = flag(&request.parameters, "binary_data_output").map_err(bad)?.unwrap_or(false);
    let Some(requested) = &request.outputs else {
        return Ok((0..signature.outputs.len()).map(|index| WantedOutput { index, binary: all_binary }).collect());
    };
    let mut wanted: Vec<WantedOutput> = Vec::with_capacity(requested.len());
    for output in requested {
        let index = output_index(signature, &output.name)?;
        if wanted.iter().any(|w| w.index == index) {
            return Err(bad(format!("output `{}` is asked for twice", output.name)));
        }
        if output.parameters.contains_key("classification") {
            return Err(classification_unsupported(&output.name));
        }
        let binary = flag(&output.parameters, "binary_data")
            .map_err(|message| bad(format!("output `{}`: {message}", output.name)))?
            .unwrap_or(all_binary);
        wanted.push(WantedOutput { index, binary });
    }
    Ok(wanted)
}

/// One input of an HTTP request as a tensor of the model's datatype and the request's shape, from its JSON data
/// or its share of the binary data. Errors do not repeat the input's name.
fn decode_input(input: &RequestInput, spec: &TensorSpec, binary: &mut &[u8]) -> Result<Tensor, String> {
    let (datatype, elements) = checked_elements(&input.datatype, &input.shape, spec)?;
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(size) => Some(size.as_u64().ok_or_else(|| format!("binary_data_size must be a byte count, got {size}"))?),
    };
    let tensor = match (binary_size, &input.data) {
        (Some(_), Some(_)) => return Err("has both data and binary_data_size; send one".into()),
        (None, None) => return Err("has no data (and no binary_data_size)".into()),
        (Some(size), None) => {
            let expected = elements.saturating_mul(datatype.byte_size());
            if size as usize != expected {
                return Err(format!(
                    "binary_data_size is {size} bytes but shape {:?} of {datatype} needs {expected} ({elements} elements of {} bytes)",
                    input.shape,
                    datatype.byte_size()
                ));
            }
            if binary.len() < expected {
                return Err(format!(
                    "binary_data_size is {size} bytes but only {} bytes of binary data are left",
                    binary.len()
                ));
            }
            let (bytes, rest) = binary.split_at(expected);
            *binary = rest;
            raw_tensor(bytes, &input.shape, datatype, elements)?
        }
        (None, Some(data)) => {
            // Not `with_capacity(elements)`: the shape is the client's word, the values are what it sent.
            let mut values = Vec::new();
            flatten(data, &mut values);
            if values.len() != elements {
                return Err(format!(
                    "data holds {} values but shape {:?} has {elements} elements",
                    values.len(),
                    input.shape
                ));
            }
            json_tensor(&values, datatype)?.f_view(input.shape.as_slice()).map_err(|e| e.to_string())?
        }
    };
    Ok(tensor)
}

/// The leaves of `data` in row-major order: the protocol allows a flat array or arrays nested like the shape.
fn flatten<'a>(data: &'a Value, into: &mut Vec<&'a Value>) {
    match data {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, into)),
        leaf => into.push(leaf),
    }
}

fn json_tensor(values: &[&Value], datatype: DataType) -> Result<Tensor, String> {
    let tensor = if datatype == DataType::Bool {
        Tensor::from_slice(&elements(values, "true or false", Value::as_bool)?)
    } else if let Some((min, max)) = datatype.integer_range() {
        let what = format!("an integer in {min}..={max} ({datatype})");
        Tensor::from_slice(&elements(values, &what, |v| v.as_i64().filter(|n| (min..=max).contains(n)))?)
    } else if datatype == DataType::Fp64 {
        Tensor::from_slice(&elements(values, "a number", Value::as_f64)?)
    } else {
        Tensor::from_slice(&elements(values, "a number", |v| v.as_f64().map(|n| n as f32))?)
    };
    tensor.f_to_kind(datatype.kind()).map_err(|e| e.to_string())
}

/// Every value read by `read`, or an error naming the first element it cannot read and what it should be.
fn elements<T>(values: &[&Value], what: &str, read: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>, String> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| read(value).ok_or_else(|| format!("element {index} is {value}, not {what}")))
        .collect()
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<ResponseOutput<'a>>,
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'a str,
    datatype: DataType,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TensorData>,
}

/// Who answers: the model, its version and the request's id.
pub struct Answer<'a> {
    pub model: &'a str,
    pub version: u64,
    pub id: Option<&'a str>,
}

/// An encoded answer: the body, and the length of its JSON part when binary data follows it.
pub struct Encoded {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

/// Encodes the wanted outputs (each converted to the signature's datatype) as JSON, binary data appended for
/// the outputs that asked for it; an answer over `max_bytes` is refused.
pub fn encode(
    answer: Answer<'_>,
    signature: &Signature,
    outputs: &[Tensor],
    wanted: &[WantedOutput],
    max_bytes: usize,
) -> Result<Encoded, ApiError> {
    check_answer_size(signature, outputs, wanted, max_bytes)?;
    let Answer { model, version, id } = answer;
    let mut binary = BytesMut::new();
    let mut entries = Vec::with_capacity(wanted.len());
    for choice in wanted {
        let spec = &signature.outputs[choice.index];
        let tensor = output_tensor(&outputs[choice.index], spec)?;
        let shape = tensor.size();
        let (parameters, data) = if choice.binary {
            let bytes = raw_bytes(&tensor, spec.datatype)?;
            binary.extend_from_slice(&bytes);
            (Some(serde_json::json!({"binary_data_size": bytes.len()})), None)
        } else {
            (None, Some(json_data(&tensor, spec.datatype).map_err(output_error)?))
        };
        entries.push(ResponseOutput { name: &spec.name, datatype: spec.datatype, shape, parameters, data });
    }
    let response = InferResponse { model_name: model, model_version: version.to_string(), id, outputs: entries };
    let json = serde_json::to_vec(&response).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))?;
    if binary.is_empty() && !wanted.iter().any(|w| w.binary) {
        return Ok(Encoded { body: json.into(), header_length: None });
    }
    let mut body = BytesMut::with_capacity(json.len() + binary.len());
    body.put_slice(&json);
    body.put_slice(&binary);
    Ok(Encoded { body: body.freeze(), header_length: Some(json.len()) })
}

/// A tensor's elements, typed so that FP32 and FP16 are written with f32's shortest digits (through a `Value`
/// they would become f64 and print 0.9999785423278809 for 0.99997854).
#[derive(Serialize)]
#[serde(untagged)]
enum TensorData {
    Bool(Vec<bool>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Integer(Vec<i64>),
}

/// A tensor's elements as a flat JSON array. Non-finite floats have no JSON form and become null.
fn json_data(tensor: &Tensor, datatype: DataType) -> Result<TensorData, tch::TchError> {
    let flat = tensor.f_reshape([-1])?;
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(Vec::try_from(&flat)?),
        DataType::Fp16 | DataType::Fp32 => TensorData::Float(Vec::try_from(&flat.f_to_kind(Kind::Float)?)?),
        DataType::Fp64 => TensorData::Double(Vec::try_from(&flat)?),
        _ => TensorData::Integer(Vec::try_from(&flat.f_to_kind(Kind::Int64)?)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ErrorKind;

    fn who(id: Option<&str>) -> Answer<'_> {
        Answer { model: "m", version: 1, id }
    }

    #[test]
    fn client_chosen_dimensions_and_ids_are_bounded_before_running() {
        let mut sig = signature(DataType::Int64, &[-1, -1]);
        let limit = |max, setting: &str| Some(Limit { max, setting: setting.into() });
        sig.bounds[0] = InputBounds {
            dims: vec![limit(2, "batching.max_request_rows"), limit(8, "text.max_tokens")],
            elements: limit(10, "generation.max_prompt_tokens"),
            values: Some(ValueRange { min: 0, max: 255, what: "the byte vocabulary".into() }),
        };
        let body = |shape: &[i64], data: Value| json_body("INT64", shape, data);
        assert!(decode(&body(&[2, 5], serde_json::json!(vec![0; 10])), None, &sig).is_ok());
        // The shape is refused before the data is even counted (the claim says 2^40 rows, the data holds 2).
        match decode(&body(&[1 << 40, 1], serde_json::json!([1, 2])), None, &sig) {
            Err(ApiError { kind: ErrorKind::PayloadTooLarge, message: m, .. }) => {
                assert!(m.contains("input `x`") && m.contains("batching.max_request_rows"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        match decode(&body(&[1, 9], serde_json::json!(vec![0; 9])), None, &sig) {
            Err(ApiError { kind: ErrorKind::PayloadTooLarge, message: m, .. }) => {
                assert!(m.contains("dimension 1") && m.contains("is 9") && m.contains("text.max_tokens"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        match decode(&body(&[2, 6], serde_json::json!(vec![0; 12])), None, &sig) {
            Err(ApiError { kind: ErrorKind::PayloadTooLarge, message: m, .. }) => {
                assert!(m.contains("12 elements") && m.contains("limit is 10"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        for bad_id in [256, -1] {
            match decode(&body(&[1, 2], serde_json::json!([7, bad_id])), None, &sig) {
                Err(ApiError { kind: ErrorKind::Validation, message: m, .. }) => {
                    assert!(m.contains(&format!("value {bad_id}")) && m.contains("0..=255"), "{m}")
                }
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn an_answer_over_the_limit_is_refused_before_it_is_written() {
        let sig = signature(DataType::Fp32, &[-1]);
        let outputs = [Tensor::zeros([1000], (Kind::Float, tch::Device::Cpu))];
        let json = [WantedOutput { index: 0, binary: false }];
        let binary = [WantedOutput { index: 0, binary: true }];
        assert!(matches!(
            encode(who(None), &sig, &outputs, &json, 4000),
            Err(ApiError { kind: ErrorKind::PayloadTooLarge, .. })
        ));
        assert!(encode(who(None), &sig, &outputs, &binary, 4000).is_ok());
        assert!(encode(who(None), &sig, &outputs, &json, 21_000).is_ok());
    }

    fn signature(datatype: DataType, shape: &[i64]) -> Signature {
        let spec = |name: &str| TensorSpec { name: name.into(), datatype, shape: shape.to_vec() };
        Signature { inputs: vec![spec("x")], outputs: vec![spec("y")], bounds: vec![InputBounds::default()] }
    }

    fn json_body(datatype: &str, shape: &[i64], data: Value) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}),
        )
        .unwrap()
    }

    fn error(result: Result<Decoded, ApiError>) -> String {
        match result {
            Ok(_) => panic!("decoded"),
            Err(e) => {
                assert_eq!(e.status(), 400, "{e}");
                e.to_string()
            }
        }
    }

    /// Every datatype survives JSON in and out, and binary in and out, with its values.
    #[test]
    fn every_datatype_round_trips_through_json_and_binary() {
        for datatype in DataType::ALL {
            let data: Value = match datatype {
                DataType::Bool => serde_json::json!([true, false, true, true, false, false]),
                DataType::Uint8 => serde_json::json!([0, 1, 2, 3, 254, 255]),
                d if d.is_float() => serde_json::json!([0.5, -1.25, 2.0, 3.0, 4.5, -0.125]),
                _ => serde_json::json!([0, -1, 2, -3, 100, -100]),
            };
            let sig = signature(datatype, &[-1, 3]);
            let decoded = decode(&json_body(datatype.name(), &[2, 3], data.clone()), None, &sig).unwrap();
            assert_eq!(decoded.inputs[0].kind(), datatype.kind(), "{datatype}");
            assert_eq!(decoded.inputs[0].size(), [2, 3]);

            let wanted = [WantedOutput { index: 0, binary: false }];
            let encoded = encode(who(Some("r1")), &sig, &decoded.inputs, &wanted, usize::MAX).unwrap();
            assert_eq!(encoded.header_length, None);
            let answer: Value = serde_json::from_slice(&encoded.body).unwrap();
            assert_eq!(answer["outputs"][0]["data"], data, "{datatype}");
            assert_eq!(answer["outputs"][0]["shape"], serde_json::json!([2, 3]));
            assert_eq!(answer["id"], "r1");

            let wanted = [WantedOutput { index: 0, binary: true }];
            let encoded = encode(who(None), &sig, &decoded.inputs, &wanted, usize::MAX).unwrap();
            let length = encoded.header_length.unwrap();
            let header: Value = serde_json::from_slice(&encoded.body[..length]).unwrap();
            let size = 6 * datatype.byte_size();
            assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], size);
            assert_eq!(encoded.body.len(), length + size);

            // The binary answer, sent back as a binary request, decodes to the same values.
            let request = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "x", "shape": [2, 3],
                "datatype": datatype.name(), "parameters": {"binary_data_size": size}}]}))
            .unwrap();
            let mut body = request.clone();
            body.extend_from_slice(&encoded.body[length..]);
            let again = decode(&body, Some(request.len()), &sig).unwrap();
            assert!(again.inputs[0].equal(&decoded.inputs[0]), "{datatype}");
        }
    }

    #[test]
    fn fp32_answers_are_written_with_f32_digits() {
        let sig = signature(DataType::Fp32, &[-1]);
        let outputs = [Tensor::from_slice(&[0.1f32, 0.99997854])];
        let encoded =
            encode(who(None), &sig, &outputs, &[WantedOutput { index: 0, binary: false }], usize::MAX).unwrap();
        let text = String::from_utf8(encoded.body.to_vec()).unwrap();
        assert!(text.contains(r#""data":[0.1,0.99997854]"#), "{text}");
    }

    #[test]
    fn nested_data_is_read_in_row_major_order() {
        let sig = signature(DataType::Int32, &[-1, 2]);
        let decoded = decode(&json_body("INT32", &[2, 2], serde_json::json!([[1, 2], [3, 4]])), None, &sig).unwrap();
        assert_eq!(Vec::<i32>::try_from(decoded.inputs[0].reshape([-1])).unwrap(), [1, 2, 3, 4]);
    }

    #[test]
    fn mismatches_are_400s_naming_the_input() {
        let sig = signature(DataType::Fp32, &[-1, 3]);
        let err = error(decode(&json_body("FP64", &[1, 3], serde_json::json!([1, 2, 3])), None, &sig));
        assert!(err.contains("input `x`") && err.contains("FP64") && err.contains("FP32"), "{err}");
        let err = error(decode(&json_body("FP32", &[1, 4], serde_json::json!([1, 2, 3, 4])), None, &sig));
        assert!(err.contains("input `x`") && err.contains("[1, 4]") && err.contains("[-1, 3]"), "{err}");
        let err = error(decode(&json_body("FP32", &[2, 3], serde_json::json!([1, 2, 3])), None, &sig));
        assert!(err.contains("input `x`") && err.contains("3 values") && err.contains("6 elements"), "{err}");
        let err = error(decode(&json_body("FP32", &[1, 3], serde_json::json!([1, "a", 3])), None, &sig));
        assert!(err.contains("element 1") && err.contains("not a number"), "{err}");
        let err = error(decode(&json_body("BYTES", &[1, 3], serde_json::json!(["a", "b", "c"])), None, &sig));
        assert!(err.contains("`BYTES` is not supported"), "{err}");
        let int8 = signature(DataType::Int8, &[-1]);
        let err = error(decode(&json_body("INT8", &[2], serde_json::json!([1, 300])), None, &int8));
        assert!(err.contains("element 1 is 300") && err.contains("-128..=127"), "{err}");

        let wrong_name = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "z", "shape": [1, 3],
            "datatype": "FP32", "data": [1, 2, 3]}]}))
        .unwrap();
        let err = error(decode(&wrong_name, None, &sig));
        assert!(err.contains("no input `z`") && err.contains("its inputs: x"), "{err}");
        let err = error(decode(br#"{"inputs": []}"#, None, &sig));
        assert!(err.contains("input `x` is missing"), "{err}");
        let huge = json_body("FP32", &[1 << 40, 3], serde_json::json!([1, 2, 3]));
        let err = error(decode(&huge, None, &sig));
        assert!(err.contains("3 values"), "a huge claimed shape is refused, not allocated: {err}");
        let err = error(decode(br#"{"inputs": 3}"#, None, &sig));
        assert!(err.contains("inputs"), "{err}");
    }

    #[test]
    fn binary_sizes_must_add_up() {
        let sig = signature(DataType::Fp32, &[-1, 2]);
        let header = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2],
            "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}))
        .unwrap();
        let mut short = header.clone();
        short.extend_from_slice(&[0; 4]);
        let err = error(decode(&short, Some(header.len()), &sig));
        assert!(err.contains("input `x`") && err.contains("only 4 bytes"), "{err}");
        let mut long = header.clone();
        long.extend_from_slice(&[0; 12]);
        let err = error(decode(&long, Some(header.len()), &sig));
        assert!(err.contains("4 bytes of binary data"), "{err}");
        let err = error(decode(&header, Some(header.len() + 1), &sig));
        assert!(err.contains(HEADER_LENGTH), "{err}");
        let wrong_size =
            String::from_utf8(header.clone()).unwrap().replace("\"binary_data_size\":8", "\"binary_data_size\":12");
        let err = error(decode(wrong_size.as_bytes(), Some(wrong_size.len()), &sig));
        assert!(err.contains("binary_data_size is 12") && err.contains("needs 8"), "{err}");
    }

    #[test]
    fn outputs_can_be_chosen_and_made_binary() {
        let sig = signature(DataType::Fp32, &[-1]);
        let body = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "parameters": {"binary_data_output": true}}"#;
        let decoded = decode(body, None, &sig).unwrap();
        assert!(decoded.outputs.len() == 1 && decoded.outputs[0].binary);
        let body = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "nope"}]}"#;
        let err = error(decode(body, None, &sig));
        assert!(err.contains("no output `nope`") && err.contains("its outputs: y"), "{err}");
    }
}
