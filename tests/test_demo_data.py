"""The demo set: 1,000 PNGs built from Debian's dataset-fashion-mnist (not committed)."""

import hashlib
import importlib.util

import pytest
from PIL import Image

from tests.conftest import REPO


def load_builder():
    spec = importlib.util.spec_from_file_location("make_demo_set", REPO / "data" / "make_demo_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builder_makes_the_demo_set(tmp_path):
    builder = load_builder()
    if not (builder.SOURCE / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed in {builder.SOURCE}")
    licence = (REPO / "data" / "LICENSE.fashion-mnist").read_text()
    assert "Copyright 2017 Zalando SE" in licence and "Permission is hereby granted" in licence
    out = builder.build(tmp_path / "fashion-mnist-demo")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1000
    assert sorted({f.parent.name for f in files}) == ["ankle-boot", "bag", "coat", "dress", "pullover", "sandal",
                                                      "shirt", "sneaker", "t-shirt", "trouser"]
    # the same bytes as the demo set every README figure was measured on
    expected = {"ankle-boot/ankle-boot_000.png": "e1239e8e08d17e8b75752e017e62ed7060a0866b6dab3e3f1debaf5ad7316e1b",
                "ankle-boot/ankle-boot_001.png": "2ec4b3d4a1ef129e85a0a6b450c67ff3fb3b195e5a3b978e8fce5abde971550b",
                "bag/bag_000.png": "442d82fd1ac5526da62c7a80a803ae888b88bd03655df66c563235ac5606b937",
                "sandal/sandal_007.png": "9ce4ae18069d868b1516f9c45fd52835f65c8b4e190376bdc9393833a19693e2"}
    for name, sha in expected.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    with Image.open(files[0]) as image:
        assert image.size == (28, 28) and image.mode == "L"
    assert builder.build(out) == out  # a second call keeps what is there
