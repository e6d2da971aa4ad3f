"""Probe for issue 4: does optimisation-based style transfer work on MobileNetV2 features with plain Gram
matrices, or does it need the soft-max transformation of the activations that Wang et al. (CVPR 2021,
"Rethinking and Improving the Robustness of Image Style Transfer") propose for networks other than VGG?
Not part of the setup or the tests; results are in bench/RESULTS.md.

  .venv/bin/python bench/style_probe.py CONTENT STYLE [STEPS]

Uses the exported feature network's definition and losses (models/export/style.py) and the server's defaults
(Adam lr 0.03 on the pixels from the content photo, content weight 1, style weight 10, total variation 1,
256 px). The style loss's Grams are taken of the maps as they are, after a soft-max over each map's positions
(Wang et al.'s transformation), or after a soft-max over the channels at each position. Every result is
judged by the same measure, the plain-Gram style distance relative to the unstyled photo's, and by the
correlation of 32x32 luminance with the photo. Writes /tmp/style_probe_<smoothing>.png.
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "export"))
from style import FeatureNetwork, gram, load_photo, luminance_correlation, style_loss, total_variation  # noqa: E402


def smoothed(features: torch.Tensor, smoothing: str) -> torch.Tensor:
    n, c, h, w = features.shape
    if smoothing == "softmax-positions":
        return F.softmax(features.reshape(n, c, h * w), dim=-1).reshape(n, c, h, w) * (h * w) ** 0.5
    if smoothing == "softmax-channels":
        return F.softmax(features, dim=1) * c ** 0.5
    return features


def transfer(features, content, style, smoothing, steps, lr=0.03, style_weight=10.0, tv_weight=1.0):
    with torch.no_grad():
        content_target = features(content)[0]
        targets = [gram(smoothed(m, smoothing)) for m in features(style)[1:]]
    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    started = time.time()
    for _ in range(steps):
        maps = features(image)
        loss = (F.mse_loss(maps[0], content_target)
                + style_weight * style_loss([smoothed(m, smoothing) for m in maps[1:]], targets).sum()
                + tv_weight * total_variation(image))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    return image.detach(), (time.time() - started) / steps


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    features = FeatureNetwork()
    content, style = load_photo(Path(sys.argv[1]), 256), load_photo(Path(sys.argv[2]), 256)
    with torch.no_grad():
        plain_targets = [gram(m) for m in features(style)[1:]]
        unstyled = float(style_loss(list(features(content)[1:]), plain_targets))
    print(f"unstyled photo: style distance {unstyled:.3f}")
    for smoothing in ["none", "softmax-positions", "softmax-channels"]:
        image, per_step = transfer(features, content, style, smoothing, steps)
        with torch.no_grad():
            distance = float(style_loss(list(features(image)[1:]), plain_targets))
        print(f"{smoothing:18s}: style distance {distance / unstyled:.3f} of the unstyled photo's, luminance "
              f"correlation {luminance_correlation(image, content):.3f}, {per_step * 1000:.0f} ms/step", flush=True)
        torchvision.utils.save_image(image, f"/tmp/style_probe_{smoothing}.png")


if __name__ == "__main__":
    main()
