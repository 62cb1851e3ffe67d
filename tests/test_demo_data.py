"""The demo set: 1,000 PNGs built from the digits that ship inside scikit-learn (not committed)."""

import hashlib
import importlib.util

import numpy as np
from PIL import Image

from tests.conftest import REPO


def load_builder():
    spec = importlib.util.spec_from_file_location("make_demo_set", REPO / "data" / "make_demo_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pixels_sha256(path) -> str:
    with Image.open(path) as image:
        assert image.size == (8, 8) and image.mode == "L"
        return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def test_builder_makes_the_demo_set_from_scikit_learn_alone(tmp_path):
    builder = load_builder()
    out = builder.build(tmp_path / "digits-demo")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1000
    assert sorted({f.parent.name for f in files}) == sorted(builder.CLASSES)
    assert all(len(list((out / name).glob("*.png"))) == 100 for name in builder.CLASSES)
    # the same pixels as the demo set every README figure was measured on (PNG bytes may differ
    # between zlib versions; the decoded pixels may not)
    expected = {"zero/zero_000.png": "e9b8ed7f45c052afa19be55cd65d081d8895023c3131024642a3e41e2db7a9bc",
                "three/three_000.png": "04f52fbecb37b854ea19295cd856e8e9080797c3c33d69f953b36e641e409644",
                "nine/nine_099.png": "8a40505bb0f0c2abb145a2746b9e19146c131b0c3e3eb1b96b5c2d6f33d5186d"}
    for name, sha in expected.items():
        assert pixels_sha256(out / name) == sha, name
    zero = np.asarray(Image.open(out / "zero" / "zero_000.png"))
    levels = {round(k * 255 / 16) for k in range(17)}  # ink levels 0…16 scaled to 0…255
    assert zero.min() == 0 and set(np.unique(zero).tolist()) <= levels
    assert not (tmp_path / "digits-demo.partial").exists()
    assert builder.build(out) == out  # a second call keeps what is there
