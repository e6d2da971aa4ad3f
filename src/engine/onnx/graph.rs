//! ONNX model files read as data, before ONNX Runtime opens them and when fine-tuning rewrites them: the
//! messages of proto/onnx.proto, the checks on external data, and a copy of a graph with new weights.
//!
//! External data (large weights kept in files beside model.onnx) names a path that ONNX Runtime opens and maps.
//! A model file is an input like any other: one whose data sits at `/etc/shadow`, at `../../other-model/`, or
//! behind a symlink out of its version folder is refused here, with the tensor and the path named, before ONNX
//! Runtime reads a byte of it.

use std::collections::HashMap;
use std::path::{Component, Path};

use bytes::Bytes;
use prost::Message;

/// The messages generated from proto/onnx.proto by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// Reads and decodes `path`; the error says why it is not an ONNX model.
pub fn read(path: &Path) -> Result<ModelProto, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(Bytes::from(bytes)).map_err(|e| format!("{} is not an ONNX model: {e}", path.display()))
}

/// Decodes a model; its weights stay slices of `bytes`.
pub fn decode(bytes: Bytes) -> Result<ModelProto, String> {
    let model = ModelProto::decode(bytes).map_err(|e| format!("its protobuf does not decode ({e})"))?;
    if model.graph.is_none() {
        return Err("it holds no graph".into());
    }
    Ok(model)
}

/// Every tensor stored in the model, with where it sits (for messages): initializers, sparse initializers,
/// constants in node attributes, and those of subgraphs and functions, at any depth.
fn for_each_tensor<'m>(
    model: &'m ModelProto,
    visit: &mut dyn FnMut(&'m TensorProto) -> Result<(), String>,
) -> Result<(), String> {
    fn graph<'m>(
        g: &'m GraphProto,
        visit: &mut dyn FnMut(&'m TensorProto) -> Result<(), String>,
    ) -> Result<(), String> {
        g.initializer.iter().try_for_each(&mut *visit)?;
        for sparse in &g.sparse_initializer {
            sparse.values.iter().chain(sparse.indices.iter()).try_for_each(&mut *visit)?;
        }
        g.node.iter().try_for_each(|n| node(n, visit))
    }
    fn node<'m>(n: &'m NodeProto, visit: &mut dyn FnMut(&'m TensorProto) -> Result<(), String>) -> Result<(), String> {
        for attribute in &n.attribute {
            attribute.t.iter().chain(attribute.tensors.iter()).try_for_each(&mut *visit)?;
            for sparse in attribute.sparse_tensor.iter().chain(attribute.sparse_tensors.iter()) {
                sparse.values.iter().chain(sparse.indices.iter()).try_for_each(&mut *visit)?;
            }
            attribute.g.iter().chain(attribute.graphs.iter()).try_for_each(|g| graph(g, visit))?;
        }
        Ok(())
    }
    if let Some(g) = &model.graph {
        graph(g, visit)?;
    }
    model.functions.iter().flat_map(|f| f.node.iter()).try_for_each(|n| node(n, visit))
}

/// Where a tensor's external data is, if it has any (`location` of its `external_data`).
fn external_location(tensor: &TensorProto) -> Option<Result<&str, String>> {
    let external = tensor.data_location == Some(proto::tensor_proto::DataLocation::External as i32)
        || !tensor.external_data.is_empty();
    if !external {
        return None;
    }
    let location = tensor.external_data.iter().find(|e| e.key.as_deref() == Some("location"));
    Some(location.and_then(|e| e.value.as_deref()).ok_or_else(|| {
        format!("tensor `{}` keeps its data outside the model file but names no location", name_of(tensor))
    }))
}

fn name_of(tensor: &TensorProto) -> &str {
    tensor.name.as_deref().unwrap_or("(unnamed)")
}

/// Refuses external data that is not a file inside `version_dir`: an absolute path, a `..` component, or a path
/// that resolves (through symlinks) outside it, naming the tensor and the path.
pub fn check_external_data(model: &ModelProto, version_dir: &Path) -> Result<(), String> {
    let root = version_dir.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", version_dir.display()))?;
    for_each_tensor(model, &mut |tensor| {
        let Some(location) = external_location(tensor) else { return Ok(()) };
        let location = location?;
        let refuse = |why: &str| {
            Err(format!(
                "tensor `{}` keeps its data at `{location}`, {why}: external data must be a file inside the version \
                 folder {}",
                name_of(tensor),
                version_dir.display()
            ))
        };
        let relative = Path::new(location);
        if location.is_empty() || relative.is_absolute() {
            return refuse("an absolute path");
        }
        if relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return refuse("which climbs out of the folder");
        }
        match root.join(relative).canonicalize() {
            Ok(resolved) if resolved.starts_with(&root) && resolved.is_file() => Ok(()),
            Ok(resolved) if resolved.starts_with(&root) => refuse("which is not a file"),
            Ok(resolved) => refuse(&format!("which resolves to {} through a symlink", resolved.display())),
            Err(e) => refuse(&format!("which cannot be opened ({e})")),
        }
    })
}

/// A tensor to write into a graph: its ONNX element type (`TensorProto.DataType`), dimensions and little-endian
/// bytes.
pub struct Weights {
    pub data_type: i32,
    pub dims: Vec<i64>,
    pub bytes: Bytes,
}

/// What `with_weights` did.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub model: Vec<u8>,
    /// Initializers replaced.
    pub replaced: usize,
    /// Initializers whose dimensions changed (a classifier's head resized to a new label set).
    pub resized: Vec<String>,
}

/// `model` with the initializers named in `weights` replaced by them (the graph and every other initializer as
/// they were). Every name in `weights` must be an initializer of the same element type and rank. When a tensor's
/// size changes (a new label count), the graph's declared output shapes that held the old size of that dimension
/// take the new one, and the intermediate shapes the exporter recorded are dropped (ONNX Runtime infers them).
pub fn with_weights(mut model: ModelProto, weights: &HashMap<String, Weights>) -> Result<Rewritten, String> {
    let graph = model.graph.as_mut().ok_or("the model holds no graph")?;
    let mut rewritten = Rewritten::default();
    let mut changed_sizes: Vec<(i64, i64)> = Vec::new();
    for initializer in &mut graph.initializer {
        let Some(name) = initializer.name.clone() else { continue };
        let Some(new) = weights.get(&name) else { continue };
        if initializer.data_type != Some(new.data_type) {
            return Err(format!(
                "initializer `{name}` holds element type {:?} in the graph but {} in the trained model",
                initializer.data_type, new.data_type
            ));
        }
        if initializer.dims.len() != new.dims.len() {
            return Err(format!(
                "initializer `{name}` has shape {:?} in the graph but {:?} in the trained model",
                initializer.dims, new.dims
            ));
        }
        if initializer.dims != new.dims {
            rewritten.resized.push(name.clone());
            for (&old, &now) in initializer.dims.iter().zip(&new.dims) {
                if old != now && !changed_sizes.contains(&(old, now)) {
                    changed_sizes.push((old, now));
                }
            }
        }
        *initializer = TensorProto {
            name: Some(name),
            data_type: Some(new.data_type),
            dims: new.dims.clone(),
            raw_data: Some(new.bytes.clone()),
            doc_string: initializer.doc_string.take(),
            metadata_props: std::mem::take(&mut initializer.metadata_props),
            ..TensorProto::default()
        };
        rewritten.replaced += 1;
    }
    let known: Vec<&str> = graph.initializer.iter().filter_map(|i| i.name.as_deref()).collect();
    if let Some(missing) = weights.keys().find(|name| !known.contains(&name.as_str())) {
        return Err(format!(
            "the graph has no initializer `{missing}`: it was not exported with the model's parameter names"
        ));
    }
    if !changed_sizes.is_empty() {
        for output in &mut graph.output {
            for dim in output_dims(output) {
                if let Some(proto::tensor_shape_proto::dimension::Value::DimValue(value)) = &mut dim.value {
                    if let Some(&(_, now)) = changed_sizes.iter().find(|(old, _)| old == value) {
                        *value = now;
                    }
                }
            }
        }
        graph.value_info.clear();
    }
    rewritten.model = model.encode_to_vec();
    Ok(rewritten)
}

fn output_dims(output: &mut proto::ValueInfoProto) -> impl Iterator<Item = &mut proto::tensor_shape_proto::Dimension> {
    let tensor = output.r#type.as_mut().and_then(|t| match &mut t.value {
        Some(proto::type_proto::Value::TensorType(tensor)) => Some(tensor),
        _ => None,
    });
    tensor.and_then(|t| t.shape.as_mut()).into_iter().flat_map(|shape| shape.dim.iter_mut())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::StringStringEntryProto;

    fn model_with_external(location: &str) -> ModelProto {
        let tensor = TensorProto {
            name: Some("w".into()),
            data_type: Some(1),
            dims: vec![2],
            data_location: Some(proto::tensor_proto::DataLocation::External as i32),
            external_data: vec![StringStringEntryProto { key: Some("location".into()), value: Some(location.into()) }],
            ..TensorProto::default()
        };
        let graph = GraphProto { initializer: vec![tensor], ..GraphProto::default() };
        ModelProto { graph: Some(graph), ..ModelProto::default() }
    }

    #[test]
    fn external_data_must_stay_inside_the_version_folder() {
        let repo = tempfile::tempdir().unwrap();
        let version = repo.path().join("1");
        std::fs::create_dir_all(version.join("weights")).unwrap();
        std::fs::write(version.join("weights/w.bin"), [0u8; 8]).unwrap();
        std::fs::write(repo.path().join("secret"), [0u8; 8]).unwrap();
        std::os::unix::fs::symlink(repo.path().join("secret"), version.join("link.bin")).unwrap();
        std::os::unix::fs::symlink("weights/w.bin", version.join("inside.bin")).unwrap();
        assert!(check_external_data(&model_with_external("weights/w.bin"), &version).is_ok());
        assert!(check_external_data(&model_with_external("inside.bin"), &version).is_ok(), "a link that stays inside");
        for (location, why) in [
            ("/etc/passwd", "an absolute path"),
            ("../secret", "climbs out"),
            ("weights/../../secret", "climbs out"),
            ("link.bin", "through a symlink"),
            ("missing.bin", "cannot be opened"),
            ("weights", "not a file"),
        ] {
            let err = check_external_data(&model_with_external(location), &version).unwrap_err();
            assert!(err.contains("tensor `w`") && err.contains(location) && err.contains(why), "{location}: {err}");
        }
    }

    #[test]
    fn external_data_inside_a_node_attribute_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let constant = model_with_external("/etc/passwd").graph.unwrap().initializer.remove(0);
        let node = NodeProto {
            attribute: vec![proto::AttributeProto { t: Some(constant), ..proto::AttributeProto::default() }],
            ..NodeProto::default()
        };
        let subgraph = GraphProto { node: vec![node], ..GraphProto::default() };
        let outer = NodeProto {
            attribute: vec![proto::AttributeProto { g: Some(subgraph), ..proto::AttributeProto::default() }],
            ..NodeProto::default()
        };
        let model = ModelProto {
            graph: Some(GraphProto { node: vec![outer], ..GraphProto::default() }),
            ..ModelProto::default()
        };
        let err = check_external_data(&model, dir.path()).unwrap_err();
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_a_model_are_refused() {
        assert!(decode(Bytes::from_static(b"\xff\xff\xff\xff garbage")).is_err());
        let err = decode(Bytes::new()).unwrap_err();
        assert!(err.contains("no graph"), "{err}");
    }

    #[test]
    fn weights_replace_initializers_by_name_and_a_new_label_count_reaches_the_outputs() {
        let initializer = |name: &str, dims: Vec<i64>| TensorProto {
            name: Some(name.into()),
            data_type: Some(1),
            dims,
            raw_data: Some(Bytes::from_static(&[0; 8])),
            ..TensorProto::default()
        };
        let dim = |v: i64| proto::tensor_shape_proto::Dimension {
            value: Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)),
            ..Default::default()
        };
        let output = proto::ValueInfoProto {
            name: Some("logits".into()),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(proto::TensorShapeProto { dim: vec![dim(1), dim(1000)] }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = GraphProto {
            initializer: vec![initializer("head.weight", vec![1000, 2]), initializer("other", vec![2])],
            output: vec![output],
            value_info: vec![proto::ValueInfoProto::default()],
            ..GraphProto::default()
        };
        let model = ModelProto { graph: Some(graph), ..ModelProto::default() };
        let weights = HashMap::from([(
            "head.weight".to_string(),
            Weights { data_type: 1, dims: vec![3, 2], bytes: Bytes::from(vec![1; 24]) },
        )]);
        let rewritten = with_weights(model.clone(), &weights).unwrap();
        assert_eq!((rewritten.replaced, rewritten.resized.clone()), (1, vec!["head.weight".to_string()]));
        let back = decode(Bytes::from(rewritten.model)).unwrap();
        let graph = back.graph.unwrap();
        assert_eq!(graph.initializer[0].dims, vec![3, 2]);
        assert_eq!(graph.initializer[0].raw_data.as_deref(), Some(&[1u8; 24][..]));
        assert_eq!(graph.initializer[1].raw_data.as_deref(), Some(&[0u8; 8][..]), "untouched");
        assert!(graph.value_info.is_empty());
        let mut output = graph.output[0].clone();
        let dims: Vec<_> = output_dims(&mut output).map(|d| d.value.clone()).collect();
        assert_eq!(
            dims,
            vec![
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(1)),
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(3))
            ]
        );

        let unknown = HashMap::from([(
            "nope".to_string(),
            Weights { data_type: 1, dims: vec![2], bytes: Bytes::from(vec![0; 8]) },
        )]);
        assert!(with_weights(model.clone(), &unknown).unwrap_err().contains("no initializer `nope`"));
        let wrong_rank = HashMap::from([(
            "other".to_string(),
            Weights { data_type: 1, dims: vec![1, 2], bytes: Bytes::from(vec![0; 8]) },
        )]);
        assert!(with_weights(model, &wrong_rank).unwrap_err().contains("shape"));
    }
}
