"""The committed demo archive: 1,000 PNGs, unpacked with the standard library only."""

import hashlib
import importlib.util

from PIL import Image

from tests.conftest import REPO


def load_unpacker():
    spec = importlib.util.spec_from_file_location("unpack_demo_set", REPO / "data" / "unpack_demo_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_archive_unpacks_to_the_demo_set(tmp_path):
    unpacker = load_unpacker()
    licence = (REPO / "data" / "LICENSE.fashion-mnist").read_text()
    assert "Copyright 2017 Zalando SE" in licence and "Permission is hereby granted" in licence
    assert unpacker.ARCHIVE.stat().st_size < 600_000
    out = unpacker.unpack(tmp_path / "fashion-mnist-demo")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1000
    assert sorted({f.parent.name for f in files}) == ["ankle-boot", "bag", "coat", "dress", "pullover", "sandal",
                                                      "shirt", "sneaker", "t-shirt", "trouser"]
    # the same bytes as the set built from Debian's dataset-fashion-mnist by the former generator
    expected = {"ankle-boot/ankle-boot_000.png": "e1239e8e08d17e8b75752e017e62ed7060a0866b6dab3e3f1debaf5ad7316e1b",
                "ankle-boot/ankle-boot_001.png": "2ec4b3d4a1ef129e85a0a6b450c67ff3fb3b195e5a3b978e8fce5abde971550b",
                "bag/bag_000.png": "442d82fd1ac5526da62c7a80a803ae888b88bd03655df66c563235ac5606b937",
                "sandal/sandal_007.png": "9ce4ae18069d868b1516f9c45fd52835f65c8b4e190376bdc9393833a19693e2"}
    for name, sha in expected.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    with Image.open(files[0]) as image:
        assert image.size == (28, 28) and image.mode == "L"
    assert unpacker.unpack(out) == out  # a second call keeps what is there
