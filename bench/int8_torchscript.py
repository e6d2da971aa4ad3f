"""The other int8 candidate of bench/int8.sh: mobilenet_v2 quantized for libtorch's x86 quantized engine and
saved as TorchScript, calibrated on the same images and put through the same gate as mobilenet_v2_int8.

    .venv/bin/python bench/int8_torchscript.py OUT.pt

torchvision's quantizable MobileNetV2 (eager mode: Conv+BN+ReLU fused, which turns ReLU6 into ReLU), the x86
default qconfig (per-channel int8 weights, histogram-observed uint8 activations). Prints the gate's measurements;
writes OUT.pt whether or not it passes, so that its speed can be measured beside the ONNX one.
"""

import sys
import warnings
from pathlib import Path

import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "export"))
import formats  # noqa: E402
import mobilenet_v2_int8 as int8  # noqa: E402
import photo_sets  # noqa: E402
from mobilenet_v2 import WEIGHTS, preprocessing  # noqa: E402


def main(out: Path) -> None:
    warnings.simplefilter("ignore")
    torch.backends.quantized.engine = "x86"
    model = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=False)
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    model.eval().fuse_model(is_qat=False)
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    sets = photo_sets.load()
    with torch.no_grad():
        calibration = int8.calibration_images(sets["calibration"])
        for start in range(0, len(calibration), 16):
            model(calibration[start:start + 16])
    torch.ao.quantization.convert(model, inplace=True)
    scripted = torch.jit.script(model)
    scripted.save(str(out))

    held_out = sets["held-out"]
    served = preprocessing()
    images = torch.stack([served(Image.open(photo.path).convert("RGB")) for photo in held_out])
    root = Path(__file__).resolve().parents[1]
    fp32 = int8.probabilities(formats.onnx_session(root / "models" / "mobilenet_v2" / "1" / "model.onnx"), images)
    with torch.no_grad():
        quantized = torch.cat([scripted(images[i:i + 16]) for i in range(0, len(images), 16)]).softmax(-1)
    result = int8.gate(fp32, quantized, held_out, [str(i) for i in range(1000)])
    print(f"TorchScript x86 int8 gate {'passed' if result['passed'] else 'FAILED'}: {int8.describe(result)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
