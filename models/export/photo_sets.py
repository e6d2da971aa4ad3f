"""The photo sets of photo_sets.txt (mobilenet_v2_int8's gate and calibration), resolved to files.

Debian photos are unpacked by fetch_media.sh under .venv/sources/media/<package>/, the npm photos are the style
exports' (.venv/sources/media/stdlib/), and pip: photos are files of packages installed in the venv (found without
importing them: matplotlib is installed without its dependencies).
"""

import hashlib
import importlib.util
from pathlib import Path
from typing import Dict, List, NamedTuple

from common import SOURCES

MANIFEST = Path(__file__).resolve().parent / "photo_sets.txt"
MEDIA = SOURCES / "media"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the Python package {name} is not installed in the venv: run `make setup`")
    return Path(spec.submodule_search_locations[0])


def source_root(source: str) -> Path:
    kind, _, name = source.partition(":")
    if kind in ("deb", "npm"):
        return MEDIA / name
    if kind == "pip":
        return package_dir(name)
    raise SystemExit(f"{MANIFEST}: unknown source {source!r} (deb:, npm: or pip:)")


class Photo(NamedTuple):
    label: str  # "source/path", as the manifest names it
    path: Path
    sha256: str


def load() -> Dict[str, List[Photo]]:
    """set name -> its photos, in the manifest's order. Exits if a file is missing or if the same photo (by
    content) is in two sets."""
    sets: Dict[str, List[Photo]] = {}
    for number, line in enumerate(MANIFEST.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            raise SystemExit(f"{MANIFEST}:{number}: expected `set source path`, got {line!r}")
        name, source, member = fields
        path = source_root(source) / member
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `make setup` (models/export/fetch_media.sh fetches it)")
        sets.setdefault(name, []).append(Photo(f"{source}/{member}", path, sha256(path)))
    owner: Dict[str, str] = {}
    for name, photos in sets.items():
        for photo in photos:
            if owner.setdefault(photo.sha256, name) != name:
                raise SystemExit(f"{photo.label} is in both the {owner[photo.sha256]} and the {name} set")
    return sets


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
