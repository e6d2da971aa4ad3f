"""The default models in the formats beside TorchScript: ONNX (model.onnx, served by ONNX Runtime) and an
AOTInductor package (model.pt2), each checked against the TorchScript module's answers before it is written.

ONNX graphs keep the state dict's parameter names as initializer names and are not constant-folded
(`optimize=False`): ONNX Runtime folds batch norms into convolutions itself when it loads the graph (measured as
fast as a folded export, bench/RESULTS.md), and a fine-tune can write its trained parameters into a copy of the
graph by name (src/train/formats.rs). Every graph is one file (no external data).
"""

import os
import time
import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import onnx
import onnxruntime
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
            program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return time.time() - started


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
