"""One image → network input contract: `featx extract`, predict's extractor and `POST /v1/embed`
give the same vectors for the same file, in every resize mode, on the images that used to differ
(12-megapixel JPEGs, where the JPEG draft scale matters), a 16-bit PNG, a greyscale JPEG and an
EXIF-rotated JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

# a 224-pixel view: the size at which a 12 MP JPEG's draft scale differs with and without margin
EXTRACTOR = dict(model="resnet18", weights="random", image_size=224, workers=0, batch_size=4, progress=False,
                 device="cpu")


def _textured(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like RGB array: smooth gradients plus fine grain (the grain is what a blurry
    DCT-domain downscale loses)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / (97 + 13 * c) + y / (71 + 7 * c)) for c in range(3)], axis=-1)
    grain = rng.normal(0, 40, (height, width, 3)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def _write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for seed in (1, 2):  # 12 MP JPEGs
        path = folder / f"photo_{seed}.jpg"
        Image.fromarray(_textured(4000, 3000, seed)).save(path, "JPEG", quality=92)
        files.append(path)
    rotated = folder / "rotated.jpg"  # EXIF orientation 6: stored landscape, shown portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_textured(1200, 800, 3)).save(rotated, "JPEG", quality=90, exif=exif)
    files.append(rotated)
    grey = folder / "grey.jpg"
    Image.fromarray(_textured(900, 700, 4)[..., 0], "L").save(grey, "JPEG", quality=90)
    files.append(grey)
    sixteen = folder / "sixteen.png"
    levels = (np.random.default_rng(5).integers(300, 4000, (500, 640))).astype(np.uint16)  # a 12-bit sensor
    Image.fromarray(levels).save(sixteen)  # mode I;16
    files.append(sixteen)
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return _write_images(tmp_path_factory.mktemp("contract") / "images")


@pytest.mark.parametrize("resize", ["crop", "full", "pad"])
def test_extract_predict_and_served_vectors_are_equal(images, tmp_path, resize):
    from featx.extract.extractor import extractor_from_config
    from featx.extract.job import extract
    from featx.options import ServeOptions
    from featx.retrieval.index import build_index
    from featx.serve.app import create_app

    store = extract([str(p) for p in images], tmp_path / "store", resize=resize, **EXTRACTOR)
    assert store.summary()["failed"] == 0
    stored = np.asarray(store.features())
    rows = {Path(p).name: i for i, p in enumerate(store.paths)}

    predict_extractor = extractor_from_config(store.config, device="cpu", workers=0)  # what `featx predict` runs
    features, meta = predict_extractor.features_of([str(p) for p in images])
    predicted = features[store.config["layers"][0]]
    assert list(meta["status"]) == ["ok"] * len(images)

    build_index(store, kind="flat").save(tmp_path / "index")  # the service embeds with an artifact's extractor
    app = create_app(ServeOptions(indexes={"i": str(tmp_path / "index")}, device="cpu"))
    with TestClient(app) as client:
        served = []
        for path in images:
            response = client.post("/v1/embed", data={"artifact": "i"},
                                   files=[("files", (path.name, path.read_bytes(), "application/octet-stream"))])
            assert response.status_code == 200, response.text
            served.append(response.json()["vectors"][0])
    served = np.asarray(served, dtype=np.float32)

    for i, path in enumerate(images):
        row = stored[rows[path.name]]
        assert np.abs(predicted[i] - row).max() <= 1e-5, f"predict differs from the store for {path.name}"
        assert np.abs(served[i] - row).max() <= 1e-5, f"serve differs from the store for {path.name} ({resize})"


def test_the_served_decode_keeps_the_draft_margin():
    """The bug this contract fixed: the service decoded 12 MP JPEGs at a smaller JPEG draft scale
    than extraction did. Both now ask `decode_for_network` for the pixels."""
    from featx.backbones import load_backbone
    from featx.preprocess.contract import network_input
    from featx.preprocess.pil import decode_for_network

    pre = load_backbone("resnet18", "random", 224).preprocess
    buffer = io.BytesIO()
    Image.fromarray(_textured(4000, 3000, 7)).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    image = decode_for_network(data, pre, tta=1)
    assert min(image.size) >= 1.5 * pre.resize_size  # decoded with the margin, not at 1/8 scale (375 px)
    views = network_input(data, pre, tta=2)
    assert views.shape == (2, 3, 224, 224) and views.dtype.is_floating_point is False


def test_a_bad_file_raises_its_decode_error_with_either_decoder():
    """A truncated JPEG is a DecodeError with its code from both decoders, never a value returned."""
    from featx.backbones import load_backbone
    from featx.io.decode import DecodeError
    from featx.preprocess.contract import network_input

    pre = load_backbone("resnet18", "random", 64).preprocess
    buffer = io.BytesIO()
    Image.fromarray(_textured(300, 200, 9)).save(buffer, "JPEG", quality=90)
    truncated = buffer.getvalue()[:len(buffer.getvalue()) // 2]  # the header is whole: a plain JPEG
    for decoder in ("pil", "torch"):
        with pytest.raises(DecodeError) as info:
            network_input(truncated, pre, tta=1, decoder=decoder)
        assert info.value.code in ("truncated", "decode_error"), decoder
