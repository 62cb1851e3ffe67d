"""Build data/digits-demo/ (1,000 PNGs, 100 per class) from the handwritten digits that ship inside
scikit-learn (`sklearn.datasets.load_digits`: the UCI "Optical Recognition of Handwritten Digits"
test set, CC BY 4.0). scikit-learn is one of featx's own dependencies, so this needs no root, no
network and no particular operating system. `make demo` and `make test` run it; the images are not
committed.

Each image is the original 8×8 grid of ink levels 0…16, scaled to 0…255 and saved as a greyscale
PNG, the first 100 of each digit in the data set's order, one folder per class (`zero` … `nine`).
The images are built in a staging folder and a `.complete` marker is written last, so an
interrupted build is redone."""

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "digits-demo"
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PER_CLASS = 100
MAX_INK = 16  # load_digits counts ink in 4×4 blocks of a 32×32 bitmap: 0…16


def build(out: Path = OUT) -> Path:
    marker = out / ".complete"
    if marker.is_file():
        return out
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / MAX_INK)).astype(np.uint8)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for class_id, name in enumerate(CLASSES):
        folder = staging / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(np.flatnonzero(digits.target == class_id)[:PER_CLASS]):
            Image.fromarray(pixels[index], mode="L").save(folder / f"{name}_{n:03d}.png")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    marker.write_text(f"{PER_CLASS * len(CLASSES)} images from sklearn.datasets.load_digits\n")
    return out


if __name__ == "__main__":
    print(f"demo images in {build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)}")
