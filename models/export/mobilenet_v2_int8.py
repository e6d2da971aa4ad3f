"""Builds the default `mobilenet_v2_int8` model: mobilenet_v2's fp32 ONNX graph quantized to int8 (ONNX
Runtime's post-training static quantization, QDQ format), written only if it passes the gate.

Writes (relative to the repository root given as the first argument):
  models/mobilenet_v2_int8/1/model.onnx    int8 weights (per channel) and uint8 activations, QuantizeLinear /
                                           DequantizeLinear pairs that ONNX Runtime fuses into integer kernels
  models/mobilenet_v2_int8/1/metrics.json  the gate's measurements, per photo, and the held-out set's files

Why ONNX: here the int8 graph runs faster in ONNX Runtime than libtorch's x86 quantized TorchScript does
(bench/int8.py, bench/RESULTS.md "mobilenet_v2_int8"), and mobilenet_v2's fp32 model serves as ONNX too.

The gate measures what a user relies on, on photo_sets.txt's held-out photos (at least MIN_HELD_OUT), against
the fp32 model.onnx that mobilenet_v2 serves:
  - int8's top-1 is among fp32's top 5 on at least TOP5_CONTAINMENT of the photos;
  - on the photos where fp32 is sure (its top-1 probability at least CONFIDENT_MARGIN above its second; at
    least MIN_CONFIDENT of them), int8's top-1 equals fp32's on at least CONFIDENT_AGREEMENT.
The whole set's top-1 agreement, the mean top-5 overlap and the mean KL divergence are recorded, not gated:
fp32 is unsure on many of these photos, and there int8 often ranks its top two the other way round.

Calibration runs on the calibration set (which the manifest keeps apart from the held-out one), each photo
centre-cropped as served and in AUGMENTED_CROPS random crops and flips (seeded), with ONNX Runtime's percentile
calibration (the 99.999th percentile of each activation, so rare outliers do not stretch its range): of the
recipes measured it was the one that passed the gate (bench/RESULTS.md).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime import quantization
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image
from torchvision import transforms
from torchvision.models._meta import _IMAGENET_CATEGORIES

import formats
import photo_sets
from common import now, publish_version
from mobilenet_v2 import MEAN, STD, preprocessing

MIN_HELD_OUT = 80
TOP5_CONTAINMENT = 0.95
CONFIDENT_MARGIN = 0.3
MIN_CONFIDENT = 25
CONFIDENT_AGREEMENT = 0.95
AUGMENTED_CROPS = 4
PERCENTILE = 99.999


class Calibration(quantization.CalibrationDataReader):
    """Feeds the calibration images one at a time, as a served request would."""

    def __init__(self, images: torch.Tensor):
        self.images = iter(images)

    def get_next(self):
        image = next(self.images, None)
        return None if image is None else {"image": image.unsqueeze(0).numpy()}


def calibration_images(photos) -> torch.Tensor:
    served = preprocessing()
    augment = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.25, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    torch.manual_seed(0)
    images = []
    for photo in photos:
        rgb = Image.open(photo.path).convert("RGB")
        images.append(served(rgb))
        images.extend(augment(rgb) for _ in range(AUGMENTED_CROPS))
    return torch.stack(images)


def quantize(fp32: Path, out: Path, calibration: torch.Tensor) -> float:
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        # Batch norms folded into the convolutions and shapes inferred first, so that each convolution is
        # quantized once, with its batch norm.
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared), str(out), Calibration(calibration),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": PERCENTILE})
    return time.time() - started


def probabilities(session: onnxruntime.InferenceSession, images: torch.Tensor) -> torch.Tensor:
    logits = [formats.run_onnx(session, images[i:i + 16])[0] for i in range(0, len(images), 16)]
    return torch.cat(logits).softmax(-1)


def gate(fp32: torch.Tensor, int8: torch.Tensor, photos, labels) -> dict:
    """The gate's measurements; `passed` says whether every part of it holds."""
    fp32_top5, int8_top5 = fp32.topk(5).indices, int8.topk(5).indices
    fp32_top1, int8_top1 = fp32_top5[:, 0], int8_top5[:, 0]
    two = fp32.topk(2).values
    margin = two[:, 0] - two[:, 1]
    confident = margin >= CONFIDENT_MARGIN
    in_top5 = (fp32_top5 == int8_top1[:, None]).any(-1)
    agree = int8_top1 == fp32_top1
    kl = (fp32 * (fp32.clamp_min(1e-12).log() - int8.clamp_min(1e-12).log())).sum(-1)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(fp32_top5, int8_top5)]
    confident_agreement = float(agree[confident].float().mean()) if confident.any() else 0.0
    parts = {
        "held_out_photos": {"value": len(photos), "at_least": MIN_HELD_OUT, "passed": len(photos) >= MIN_HELD_OUT},
        "int8_top1_in_fp32_top5": {"value": round(float(in_top5.float().mean()), 4), "at_least": TOP5_CONTAINMENT,
                                   "passed": float(in_top5.float().mean()) >= TOP5_CONTAINMENT},
        "confident_photos": {"value": int(confident.sum()), "at_least": MIN_CONFIDENT,
                             "margin": CONFIDENT_MARGIN, "passed": int(confident.sum()) >= MIN_CONFIDENT},
        "confident_top1_agreement": {"value": round(confident_agreement, 4), "at_least": CONFIDENT_AGREEMENT,
                                     "passed": confident_agreement >= CONFIDENT_AGREEMENT},
    }
    per_photo = [{
        "photo": photo.label, "sha256": photo.sha256,
        "fp32_top1": labels[int(fp32_top1[i])], "fp32_margin": round(float(margin[i]), 4),
        "int8_top1": labels[int(int8_top1[i])], "top1_equal": bool(agree[i]), "in_fp32_top5": bool(in_top5[i]),
        "top5_overlap": overlap[i], "kl": round(float(kl[i]), 5),
    } for i, photo in enumerate(photos)]
    return {
        "passed": all(part["passed"] for part in parts.values()),
        "parts": parts,
        "recorded": {
            "top1_agreement": round(float(agree.float().mean()), 4),
            "top1_agreement_where_fp32_unsure": round(float(agree[~confident].float().mean()), 4)
            if (~confident).any() else None,
            "mean_top5_overlap": round(float(np.mean(overlap)), 4),
            "mean_kl_divergence": round(float(kl.mean()), 5),
        },
        "photos": per_photo,
    }


def describe(result: dict) -> str:
    parts = "; ".join(f"{name} {part['value']} (at least {part['at_least']})"
                      for name, part in result["parts"].items())
    recorded = ", ".join(f"{name} {value}" for name, value in result["recorded"].items())
    return f"{parts}; recorded: {recorded}"


def main(root: Path) -> None:
    labels_file = root / "models" / "mobilenet_v2_int8" / "labels.txt"
    labels = labels_file.read_text().splitlines()
    if labels != list(_IMAGENET_CATEGORIES):
        sys.exit(f"{labels_file} differs from torchvision's ImageNet class list")
    fp32_path = root / "models" / "mobilenet_v2" / "1" / "model.onnx"
    if not fp32_path.is_file():
        sys.exit(f"{fp32_path} is missing: export mobilenet_v2 first (models/export/mobilenet_v2.py)")

    sets = photo_sets.load()
    held_out, calibration = sets["held-out"], sets["calibration"]
    served = preprocessing()
    images = torch.stack([served(Image.open(photo.path).convert("RGB")) for photo in held_out])
    fp32 = probabilities(formats.onnx_session(fp32_path), images)

    def write(staging: Path) -> dict:
        model = staging / "model.onnx"
        seconds = quantize(fp32_path, model, calibration_images(calibration))
        graph = onnx.load(str(model))
        onnx.checker.check_model(graph)
        int8 = probabilities(formats.onnx_session(model), images)
        result = gate(fp32, int8, held_out, labels)
        print(f"mobilenet_v2_int8 gate: {describe(result)}")
        if not result["passed"]:
            sys.exit("mobilenet_v2_int8 fails the gate: refusing to write it")
        return {
            "model": "mobilenet_v2_int8",
            "task": "image-classification",
            "source": f"models/mobilenet_v2/1/model.onnx (sha256 {photo_sets.sha256(fp32_path)}), quantized",
            "quantization": {
                "method": "ONNX Runtime post-training static quantization, QDQ format",
                "weights": "int8, per output channel, symmetric",
                "activations": "uint8, per tensor",
                "calibration": f"percentile {PERCENTILE}",
                "calibration_images": len(calibration) * (1 + AUGMENTED_CROPS),
                "calibration_photos": [photo.label for photo in calibration],
                "onnxruntime": onnxruntime.__version__,
                "seconds": round(seconds, 1),
                "quantized_nodes": sum(node.op_type == "QuantizeLinear" for node in graph.graph.node),
                "file_bytes": model.stat().st_size,
                "fp32_file_bytes": fp32_path.stat().st_size,
            },
            "gate": result,
            "exported_at": now(),
        }

    publish_version(root, "mobilenet_v2_int8", 1, write)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
