"""The default models in the formats beside TorchScript: ONNX (model.onnx, served by ONNX Runtime) and an
AOTInductor package (model.pt2), each checked against the TorchScript module's answers before it is written.

ONNX graphs keep the state dict's parameter names as initializer names: the exporter's own optimisation
(`optimize=True`) is off, because it folds batch norms into the convolutions' weights and a fine-tune could no
longer write its trained parameters into a copy of the graph by name (src/train/formats.rs). Only the constant
computations that read no parameter's values are folded (onnxscript's fold_constants, `keeps_parameters`):
without that, each convolution's zero bias is computed at run time from the weight's shape, which stops ONNX
Runtime from folding the batch norm that follows into it, and the graph ran at a third of the speed
(bench/RESULTS.md). Folded so, ONNX Runtime fuses the batch norms
itself at load, and the graph runs as fast as the exporter's fully optimised one. Every graph is one file (no
external data).
"""

import os
import time
import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import onnx
import onnxruntime
import onnxscript.optimizer
import torch

# The batch dimension of every export; its upper bound is only torch.export's range for the symbol.
BATCH = torch.export.Dim("batch", min=1, max=4096)


def export_onnx(module: torch.nn.Module, example: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str], dynamic: Sequence[Dict[int, object]], recurrent: bool = False) -> float:
    """Writes `module` as one ONNX file; returns the seconds it took. `dynamic` gives each input's dynamic
    dimensions (index -> torch.export.Dim, or a name for a recurrent model).

    torch.onnx's default exporter (built on torch.export) is used wherever it keeps the graph general. For a
    recurrent model it unrolls the recurrence over the example's length, fixing the token count, so those
    (`recurrent`) go through the TorchScript-based exporter, which emits ONNX's own GRU/LSTM operators."""
    started = time.time()
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if recurrent:
            axes = {name: {i: str(d) for i, d in dims.items()} for name, dims in zip(input_names, dynamic)}
            axes.update({name: {0: "batch"} for name in output_names})
            torch.onnx.export(module, example, str(path), input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=axes, dynamo=False,
                              do_constant_folding=False, opset_version=17)
        else:
            program = torch.onnx.export(module, example, input_names=list(input_names),
                                        output_names=list(output_names), dynamic_shapes=tuple(dynamic),
                                        dynamo=True, optimize=False, verbose=False)
            parameters = set(module.state_dict())
            onnxscript.optimizer.fold_constants(program.model, should_fold=keeps_parameters(parameters))
            onnxscript.optimizer.remove_unused_nodes(program.model)
            program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return time.time() - started


def keeps_parameters(parameters: set):
    """A fold_constants rule: a node that reads a parameter's values (a linear layer's weight transposed, an
    embedding row taken) is not folded, so the parameter stays an initializer under its own name; one that only
    reads its shape or type (Shape, CastLike's second input) may be."""
    def should_fold(node):
        reads_values = [value for index, value in enumerate(node.inputs)
                        if value is not None and not (node.op_type == "Shape" or (node.op_type == "CastLike" and index == 1))]
        return False if any(value.name in parameters for value in reads_values) else None
    return should_fold


def onnx_session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("EMBER_EXPORT_THREADS", "2"))
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: onnxruntime.InferenceSession, *inputs: torch.Tensor) -> list:
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def export_aoti(module: torch.nn.Module, example: tuple, dynamic: Sequence[Dict[int, object]], path: Path) -> float:
    """Compiles `module` for this machine's CPU into an AOTInductor package (freezing on: weights folded into
    the compiled graph, as optimize_for_inference does for TorchScript); returns the seconds it took."""
    started = time.time()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), example, dynamic_shapes=tuple(dynamic))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})
    return time.time() - started


def load_aoti(path: Path):
    return torch._inductor.aoti_load_package(str(path))


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
