"""Build data/fashion-mnist-demo/ (1,000 PNGs) from Debian's `dataset-fashion-mnist` (MIT licence in
LICENSE.fashion-mnist). `make demo` and `make test` run it; the images are not committed.

Takes the first 100 images of each class from the test split (t10k) and writes them as PNG files,
one folder per class. The images are built in a staging folder and a `.complete` marker is written
last, so an interrupted build is redone."""

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent / "fashion-mnist-demo"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
PER_CLASS = 100


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def build(out: Path = OUT, source: Path = SOURCE) -> Path:
    marker = out / ".complete"
    if marker.is_file():
        return out
    if not (source / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found in {source}; install it with `apt-get install dataset-fashion-mnist` "
                 "(Debian/Ubuntu), then run this script again")
    images = read_idx(source / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz", 8)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for class_id, name in enumerate(CLASSES):
        folder = staging / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(np.flatnonzero(labels == class_id)[:PER_CLASS]):
            Image.fromarray(images[index], mode="L").save(folder / f"{name}_{n:03d}.png", optimize=True)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    marker.write_text(f"{PER_CLASS * len(CLASSES)} images from {source}\n")
    return out


if __name__ == "__main__":
    print(f"demo images in {build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)}")
