"""Fashion-MNIST for the benchmarks that need it, read from Debian's `dataset-fashion-mnist`
(MIT; installed with apt-get as root or through sudo when missing). The demo and the tests never
need it: they use the digits that ship inside scikit-learn (data/make_demo_set.py)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
PREFIX = {"train": "train", "test": "t10k"}


def available() -> bool:
    return (SOURCE / "t10k-images-idx3-ubyte.gz").is_file()


def ensure_package() -> None:
    if available():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("installing Debian package dataset-fashion-mnist …", flush=True)
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×28×28 uint8, labels N) of the 'train' (60,000) or 'test' (10,000) split."""
    ensure_package()
    images = _read_idx(SOURCE / f"{PREFIX[split]}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return images, _read_idx(SOURCE / f"{PREFIX[split]}-labels-idx1-ubyte.gz", 8)


def write_images(folder: Path, splits: dict[str, int | None]) -> Path:
    """<folder>/<split>/<class>/*.png with the first `n` images of each class of each split (None:
    all of them), e.g. {"test": 100} is the 1,000-image set the audit figures were measured on.
    A `.complete` marker holding the request is written last, so a changed or interrupted build is redone."""
    marker = folder / ".complete"
    request = repr(sorted(splits.items()))
    if marker.is_file() and marker.read_text().strip() == request:
        return folder
    from PIL import Image

    if folder.exists():
        shutil.rmtree(folder)
    for split, per_class in splits.items():
        images, labels = load(split)
        for class_id, name in enumerate(CLASSES):
            out = folder / split / name
            out.mkdir(parents=True, exist_ok=True)
            for n, index in enumerate(np.flatnonzero(labels == class_id)[:per_class]):
                Image.fromarray(images[index], mode="L").save(out / f"{name}_{n:05d}.png")
    marker.write_text(request + "\n")
    return folder
