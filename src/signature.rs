//! The model-level tensor contract, for the Open Inference Protocol (KServe v2) and for `tensor` models'
//! model.toml: the protocol's datatypes, what a model takes and returns (its signature) and how large a request
//! may make each input. A leaf: config, tasks, the registry and http all speak it.

use std::fmt;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The protocol's tensor datatypes that ember serves (not BYTES, BF16 or the unsigned types libtorch lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
}

impl DataType {
    pub const ALL: [DataType; 9] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// A protocol datatype name; anything else is an error that lists the supported ones.
    pub fn parse(name: &str) -> Result<DataType, String> {
        DataType::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            let supported: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
            format!("datatype `{name}` is not supported; use one of {}", supported.join(", "))
        })
    }

    pub fn kind(self) -> Kind {
        match self {
            DataType::Bool => Kind::Bool,
            DataType::Uint8 => Kind::Uint8,
            DataType::Int8 => Kind::Int8,
            DataType::Int16 => Kind::Int16,
            DataType::Int32 => Kind::Int,
            DataType::Int64 => Kind::Int64,
            DataType::Fp16 => Kind::Half,
            DataType::Fp32 => Kind::Float,
            DataType::Fp64 => Kind::Double,
        }
    }

    /// Bytes per element in the binary tensor data extension (little-endian, BOOL one byte).
    pub fn byte_size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Fp16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
    }

    /// The values an integer datatype holds.
    pub fn integer_range(self) -> Option<(i64, i64)> {
        match self {
            DataType::Uint8 => Some((0, u8::MAX.into())),
            DataType::Int8 => Some((i8::MIN.into(), i8::MAX.into())),
            DataType::Int16 => Some((i16::MIN.into(), i16::MAX.into())),
            DataType::Int32 => Some((i32::MIN.into(), i32::MAX.into())),
            DataType::Int64 => Some((i64::MIN, i64::MAX)),
            DataType::Bool | DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One input or output of a model: its name, datatype and shape, -1 for a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.to_string(), datatype, shape: shape.to_vec() }
    }

    /// Whether `shape` fits this spec: the same rank, and every fixed dimension equal.
    pub fn accepts(&self, shape: &[i64]) -> bool {
        shape.len() == self.shape.len() && self.shape.iter().zip(shape).all(|(&want, &got)| want == -1 || want == got)
    }
}

/// What a model takes and returns, in the order of its forward's arguments and results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// How large a request may make each input (one entry per input): a client chooses every `-1` dimension,
    /// and with it the work and memory of the forward pass.
    pub bounds: Vec<InputBounds>,
}

impl Signature {
    /// Token ids of the input named `name` must lie in `0..size` (the model's embedding table; on CUDA an id
    /// outside it is a device-side assert that breaks the whole context).
    pub fn bound_token_ids(&mut self, name: &str, size: usize, what: &str) {
        if let Some(index) = self.inputs.iter().position(|input| input.name == name) {
            let max = i64::try_from(size).unwrap_or(i64::MAX).saturating_sub(1);
            self.bounds[index].values = Some(ValueRange { min: 0, max, what: what.to_string() });
        }
    }
}

/// A limit and the setting that sets it, named in the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub max: i64,
    pub setting: String,
}

impl Limit {
    pub fn new(max: usize, setting: &str) -> Limit {
        Limit { max: i64::try_from(max).unwrap_or(i64::MAX), setting: setting.to_string() }
    }
}

/// The integer values an input may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRange {
    pub min: i64,
    pub max: i64,
    /// What the range is, e.g. "the tokenizer's vocabulary".
    pub what: String,
}

/// What a request may make of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputBounds {
    /// The largest size of each dimension (`None`: fixed by the spec, or bounded only by the body's size).
    pub dims: Vec<Option<Limit>>,
    /// The most elements in all.
    pub elements: Option<Limit>,
    pub values: Option<ValueRange>,
}

impl InputBounds {
    pub fn dims(dims: Vec<Option<Limit>>) -> InputBounds {
        InputBounds { dims, ..InputBounds::default() }
    }

    /// A shape within the limits, or why not (naming the dimension, its size, the limit and its setting).
    pub fn check_shape(&self, shape: &[i64]) -> Result<(), String> {
        for (index, (size, limit)) in shape.iter().zip(&self.dims).enumerate() {
            if let Some(limit) = limit.as_ref().filter(|limit| *size > limit.max) {
                return Err(format!(
                    "dimension {index} of shape {shape:?} is {size}; the limit is {} ({})",
                    limit.max, limit.setting
                ));
            }
        }
        if let Some(limit) = &self.elements {
            let elements = shape.iter().try_fold(1i64, |n, &d| n.checked_mul(d)).unwrap_or(i64::MAX);
            if elements > limit.max {
                return Err(format!(
                    "shape {shape:?} holds {elements} elements; the limit is {} ({})",
                    limit.max, limit.setting
                ));
            }
        }
        Ok(())
    }

    /// Integer values inside their range, or why not (naming the first value outside it).
    pub fn check_values(&self, tensor: &Tensor) -> Result<(), String> {
        let Some(range) = &self.values else { return Ok(()) };
        if tensor.numel() == 0 {
            return Ok(());
        }
        let outside = tensor.lt(range.min).logical_or(&tensor.gt(range.max));
        if !bool::try_from(outside.any()).unwrap_or(false) {
            return Ok(());
        }
        let first = tensor.reshape([-1]).masked_select(&outside.reshape([-1])).int64_value(&[0]);
        Err(format!("value {first} is outside {}..={} ({})", range.min, range.max, range.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, DataType::Fp32, shape)
    }

    #[test]
    fn datatypes_round_trip_by_name_and_unknown_ones_list_the_supported() {
        for datatype in DataType::ALL {
            assert_eq!(DataType::parse(datatype.name()), Ok(datatype));
            assert_eq!(serde_json::to_value(datatype).unwrap(), datatype.name());
        }
        let err = DataType::parse("BYTES").unwrap_err();
        assert!(err.contains("`BYTES`") && err.contains("FP16") && err.contains("BOOL"), "{err}");
    }

    #[test]
    fn shapes_fit_when_rank_and_fixed_dimensions_agree() {
        let image = spec("image", &[-1, 3, 224, 224]);
        assert!(image.accepts(&[2, 3, 224, 224]));
        assert!(!image.accepts(&[2, 3, 224]));
        assert!(!image.accepts(&[2, 1, 224, 224]));
    }
}
