"""Build data/fashion-mnist-demo from the Debian package `dataset-fashion-mnist` (MIT).

Takes the first 100 images of each class from the test split (t10k) and writes them as PNG files
in one folder per class. `make demo` and `make test` run it (installing the package with apt-get
when it is missing); the images are not committed. A `.complete` marker is written last.
"""

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).parent / "fashion-mnist-demo"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
PER_CLASS = 100


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def main() -> None:
    if not (SOURCE / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found in {SOURCE}; install it with `apt-get install dataset-fashion-mnist` "
                 "(Debian/Ubuntu), then run this script again")
    images = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz", 8)
    for class_id, name in enumerate(CLASSES):
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(np.flatnonzero(labels == class_id)[:PER_CLASS]):
            Image.fromarray(images[index], mode="L").save(folder / f"{name}_{n:03d}.png", optimize=True)
    (OUT / ".complete").write_text(f"{PER_CLASS * len(CLASSES)} images\n")


if __name__ == "__main__":
    main()
