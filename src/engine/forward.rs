//! Running requests of raw tensors (the Open Inference Protocol's) through a module in batches.

use tch::{Device, Kind, Tensor};

use super::fault::torch_error_summary;
use super::module::InferenceModule;

/// What requests must share to run as one forward pass: each input's shape past dimension 0, and its kind.
type JoinKey = Vec<(Vec<i64>, Kind)>;

/// Runs requests of raw tensors (each one request's inputs, in signature order) through `model`, and returns
/// each request's outputs on the CPU, or why the model could not run them.
///
/// Requests whose inputs have equal shapes past dimension 0 and equal kinds are joined along dimension 0 into one
/// forward pass (the batching the REST routes get); outputs are split back by rows. A model whose outputs are not
/// batched that way runs such requests one at a time instead.
pub fn forward_batched(
    model: &InferenceModule,
    device: Device,
    requests: Vec<Vec<Tensor>>,
) -> Vec<Result<Vec<Tensor>, String>> {
    let mut results: Vec<Option<Result<Vec<Tensor>, String>>> = requests.iter().map(|_| None).collect();
    let mut groups: Vec<(JoinKey, Vec<usize>)> = Vec::new();
    for (index, inputs) in requests.iter().enumerate() {
        let key: JoinKey = inputs.iter().map(|t| (t.size().get(1..).unwrap_or_default().to_vec(), t.kind())).collect();
        let joinable = inputs.iter().all(|t| t.dim() > 0);
        match groups.iter_mut().find(|(k, _)| joinable && *k == key) {
            Some((_, members)) => members.push(index),
            None => groups.push((key, vec![index])),
        }
    }
    for (_, members) in groups {
        let joined = if members.len() > 1 { forward_joined(model, device, &requests, &members) } else { None };
        match joined {
            Some(outputs) => {
                for (index, output) in members.into_iter().zip(outputs) {
                    results[index] = Some(Ok(output));
                }
            }
            None => {
                for index in members {
                    results[index] = Some(forward_to_cpu(model, device, &requests[index]));
                }
            }
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err("the request was not run".into()))).collect()
}

/// One forward pass over the `members` requests joined along dimension 0; `None` when that fails or the outputs
/// are not batched along dimension 0 (the caller then runs them one at a time, so one bad request fails alone).
fn forward_joined(
    model: &InferenceModule,
    device: Device,
    requests: &[Vec<Tensor>],
    members: &[usize],
) -> Option<Vec<Vec<Tensor>>> {
    let rows: Vec<i64> = members.iter().map(|&i| requests[i][0].size()[0]).collect();
    let total: i64 = rows.iter().sum();
    let inputs: Vec<Tensor> = (0..requests[members[0]].len())
        .map(|position| Tensor::f_cat(&members.iter().map(|&i| &requests[i][position]).collect::<Vec<_>>(), 0))
        .collect::<Result<_, _>>()
        .ok()?;
    let outputs = forward_to_cpu(model, device, &inputs).ok()?;
    if !outputs.iter().all(|o| o.dim() > 0 && o.size()[0] == total) {
        return None;
    }
    let mut split: Vec<Vec<Tensor>> = members.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        let mut start = 0;
        for (member, &count) in split.iter_mut().zip(&rows) {
            member.push(output.narrow(0, start, count));
            start += count;
        }
    }
    Some(split)
}

fn forward_to_cpu(model: &InferenceModule, device: Device, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let on_device: Vec<Tensor> =
        inputs.iter().map(|t| t.f_to_device(device)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let outputs = model.forward(&on_device.iter().collect::<Vec<_>>()).map_err(|e| torch_error_summary(&e))?;
    outputs.into_iter().map(|o| o.f_to_device(Device::Cpu).map_err(|e| e.to_string())).collect()
}
