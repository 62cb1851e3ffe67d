"""Maintainers only: rebuild data/fashion-mnist-demo.tar.gz from the Debian package
`dataset-fashion-mnist` (MIT). Users never run this: the archive is committed, and
`data/unpack_demo_set.py` (run by `make demo` / `make test`) unpacks it.

Takes the first 100 images of each class from the test split (t10k), writes them as PNG files in
one folder per class, and packs them reproducibly (sorted names, fixed owner and time, gzip without
a timestamp), so the same Debian files always give the same archive bytes. Prints its sha256, which
goes into unpack_demo_set.ARCHIVE_SHA256.
"""

import gzip
import hashlib
import io
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
ARCHIVE = Path(__file__).parent / "fashion-mnist-demo.tar.gz"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
PER_CLASS = 100
MTIME = 1503619200  # 2017-08-25, the Fashion-MNIST release


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def build_images(out: Path) -> None:
    images = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz", 8)
    for class_id, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, index in enumerate(np.flatnonzero(labels == class_id)[:PER_CLASS]):
            Image.fromarray(images[index], mode="L").save(folder / f"{name}_{n:03d}.png", optimize=True)


def pack(folder: Path, archive: Path) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*.png")):
            info = tar.gettarinfo(path, arcname=f"fashion-mnist-demo/{path.relative_to(folder).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime, info.mode = MTIME, 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    with archive.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(buffer.getvalue())
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def main() -> None:
    if not (SOURCE / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found in {SOURCE}; install it with `apt-get install dataset-fashion-mnist` "
                 "(Debian/Ubuntu), then run this script again")
    with tempfile.TemporaryDirectory() as tmp:
        build_images(Path(tmp))
        sha = pack(Path(tmp), ARCHIVE)
    print(f"{ARCHIVE} ({ARCHIVE.stat().st_size:,} bytes), sha256 {sha}")


if __name__ == "__main__":
    main()
