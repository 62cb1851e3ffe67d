"""Unpack the committed demo images (data/fashion-mnist-demo.tar.gz, 1,000 Fashion-MNIST PNGs,
MIT licence in LICENSE.fashion-mnist) into data/fashion-mnist-demo/. Standard library only, no
root, any OS: `make demo` and `make test` run it; `python data/unpack_demo_set.py [OUT]` works too.

The archive's sha256 is checked first, and each member must be a plain .png file inside the
output folder. A `.complete` marker (with the archive's sha256) is written last, so an interrupted unpack,
or one from an older archive, is redone."""

import hashlib
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHIVE = HERE / "fashion-mnist-demo.tar.gz"
ARCHIVE_SHA256 = "24cd6069978400a1f65a919888290fd0cde8d67278284c4749fecd81910e1923"
IMAGES = 1000


def unpack(out: Path = HERE / "fashion-mnist-demo") -> Path:
    marker = out / ".complete"
    if marker.is_file() and ARCHIVE_SHA256 in marker.read_text():
        return out  # unpacked from this very archive
    sha = hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()
    if sha != ARCHIVE_SHA256:
        sys.exit(f"{ARCHIVE} has sha256 {sha}, expected {ARCHIVE_SHA256}: the file is damaged; "
                 "restore it with `git checkout -- data/fashion-mnist-demo.tar.gz`")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    count = 0
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or parts[0] != "fashion-mnist-demo" or ".." in parts or not member.name.endswith(".png"):
                sys.exit(f"{ARCHIVE}: unexpected member '{member.name}'; restore the archive from git")
            target = staging.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            count += 1
    if count != IMAGES:
        sys.exit(f"{ARCHIVE} holds {count} images, expected {IMAGES}; restore the archive from git")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    marker.write_text(f"{count} images from archive sha256 {ARCHIVE_SHA256}\n")
    return out


if __name__ == "__main__":
    folder = unpack(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "fashion-mnist-demo")
    print(f"demo images in {folder}")
