"""Sample photos shared by the exports, the tests and the benchmarks.

They come from registry packages installed in the venv (scikit-image, scikit-learn), never from a URL.
Each photo names the ImageNet classes a sensible classifier puts in its top 5.
"""

from pathlib import Path

import skimage
import sklearn

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"

# file name in tests/data/images -> (source path, ImageNet classes of which one must be in the top 5)
PHOTOS = {
    "chelsea.png": (SKIMAGE_DATA / "chelsea.png", ["tabby", "tiger cat", "Egyptian cat"]),
    "coffee.png": (SKIMAGE_DATA / "coffee.png", ["cup", "espresso", "coffee mug"]),
    "rocket.jpg": (SKIMAGE_DATA / "rocket.jpg", ["missile", "projectile", "space shuttle"]),
    "motorcycle.png": (SKIMAGE_DATA / "motorcycle_left.png", ["moped", "motor scooter"]),
    "china.jpg": (SKLEARN_IMAGES / "china.jpg", ["palace", "pagoda", "monastery", "church", "bell cote"]),
}
