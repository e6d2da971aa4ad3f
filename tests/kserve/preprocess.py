"""A photo as MobileNetV2's FP32 [1, 3, 224, 224] input, preprocessed as torchvision does it (Resize 256,
CenterCrop 224, Normalize): what a Triton or KServe client sends. Used by the tritonclient checks beside it and by
the benchmarks that send tensors (bench/v2.sh, bench/grpc.sh). As a script it writes the tensor's little-endian
bytes:

    python tests/kserve/preprocess.py PHOTO OUT.f32
"""

import sys

import numpy as np
from PIL import Image


def preprocessed(photo):
    image = Image.open(photo).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    normalized = (pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return normalized.transpose(2, 0, 1)[None].astype("<f4")


if __name__ == "__main__":
    preprocessed(sys.argv[1]).tofile(sys.argv[2])
