//! A graph that declares its tensors (ONNX) is checked at load against what its task feeds it and reads back, so
//! a model exported for another task fails its load naming the tensor, instead of failing every request; and
//! what ember allocates from a graph's declared sizes is bounded, since a model file is an input like any other.

use super::onnx::Port;
use crate::signature::TensorSpec;

/// Each of `ports` (the graph's `what`: inputs or outputs) must match `expected` in position, element type and
/// rank, and in every dimension both fix. An empty `expected` (a task that declares nothing) checks nothing.
pub fn ports_fit(what: &str, ports: &[Port], expected: &[TensorSpec]) -> Result<(), String> {
    if expected.is_empty() {
        return Ok(());
    }
    let list = |specs: &[TensorSpec]| {
        specs.iter().map(|s| format!("`{}` {} {:?}", s.name, s.datatype, s.shape)).collect::<Vec<_>>().join(", ")
    };
    if ports.len() != expected.len() {
        let declared: Vec<String> = ports.iter().map(|p| format!("`{}` {}", p.name, p.describe())).collect();
        return Err(format!(
            "the graph has {} {what} ({}); the task needs {} ({})",
            ports.len(),
            declared.join(", "),
            expected.len(),
            list(expected)
        ));
    }
    for (index, (port, spec)) in ports.iter().zip(expected).enumerate() {
        let kind_fits = port.kind.as_ref().is_ok_and(|kind| *kind == spec.datatype.kind());
        let rank_fits = port.shape.len() == spec.shape.len();
        let dims_fit = port.shape.iter().zip(&spec.shape).all(|(&have, &want)| have < 0 || want < 0 || have == want);
        if !(kind_fits && rank_fits && dims_fit) {
            return Err(format!(
                "the graph's {what} {index} `{}` is {}; the task needs `{}` {} {:?} there (-1: any size)",
                port.name,
                port.describe(),
                spec.name,
                spec.datatype,
                spec.shape
            ));
        }
    }
    Ok(())
}

/// The most elements of a tensor whose size comes from a graph's declared dimensions (a generation model's zero
/// state, the probe inputs that check a fine-tune's graph): 2^28, 1 GiB of f32.
pub const MAX_DECLARED_ELEMENTS: i64 = 1 << 28;

/// Refuses a tensor of `shape` made from `what`'s declared sizes before anything is allocated for it.
pub fn allocatable(what: &str, shape: &[i64]) -> Result<(), String> {
    let elements = shape.iter().try_fold(1i64, |product, &d| product.checked_mul(d.max(0)));
    match elements {
        Some(elements) if elements <= MAX_DECLARED_ELEMENTS => Ok(()),
        _ => Err(format!(
            "{what} declares a tensor of shape {shape:?}, more than the {MAX_DECLARED_ELEMENTS} elements ember makes \
             from a graph's declared sizes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;
    use crate::signature::DataType;

    fn port(name: &str, kind: Kind, shape: &[i64]) -> Port {
        Port { name: name.into(), kind: Ok(kind), shape: shape.to_vec(), symbols: vec![String::new(); shape.len()] }
    }

    #[test]
    fn a_graph_fits_where_its_dimensions_are_free_or_equal() {
        let image = [TensorSpec::new("image", DataType::Fp32, &[-1, 3, 224, 224])];
        assert!(ports_fit("inputs", &[port("input", Kind::Float, &[-1, 3, 224, 224])], &image).is_ok());
        assert!(ports_fit("inputs", &[port("input", Kind::Float, &[1, 3, -1, -1])], &image).is_ok());
        let err = ports_fit("inputs", &[port("input", Kind::Float, &[-1, 3, 299, 299])], &image).unwrap_err();
        assert!(
            err.contains("inputs 0 `input` is FP32 [-1, 3, 299, 299]")
                && err.contains("`image` FP32 [-1, 3, 224, 224]"),
            "{err}"
        );
        let err = ports_fit("inputs", &[port("ids", Kind::Int64, &[-1, -1])], &image).unwrap_err();
        assert!(err.contains("INT64 [-1, -1]"), "{err}");
        let two = [port("a", Kind::Float, &[-1]), port("b", Kind::Float, &[-1])];
        let err = ports_fit("inputs", &two, &image).unwrap_err();
        assert!(err.contains("has 2 inputs") && err.contains("needs 1"), "{err}");
        assert!(ports_fit("outputs", &two, &[]).is_ok());
    }

    #[test]
    fn tensors_sized_by_a_graph_are_bounded_before_allocation() {
        assert!(allocatable("the state", &[1, 32, 512]).is_ok());
        let err = allocatable("the state", &[1, 1, 1 << 40]).unwrap_err();
        assert!(err.contains("[1, 1, 1099511627776]"), "{err}");
        assert!(allocatable("the state", &[i64::MAX, i64::MAX, 2]).is_err(), "the product overflows");
    }
}
