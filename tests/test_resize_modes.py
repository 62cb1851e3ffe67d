"""The resize mode travels with the features: recorded in the store, reused by predict and search,
and old stores (no mode recorded) read as crop. Also: how the cores are shared while extracting."""

import numpy as np
import pytest
import torch
from PIL import Image

from featx.errors import InputError
from featx.extract.extractor import Extractor, decode_plan, extractor_from_config
from featx.extract.job import extract
from featx.learn.classify import train_shallow
from featx.learn.predict import predict
from tests.conftest import TINY, make_class_folder


def test_resize_mode_is_recorded_and_travels_to_predict(tmp_path):
    images = make_class_folder(tmp_path / "images", size=(72, 40))
    pad = extract(images, tmp_path / "pad", resize="pad", **TINY)
    crop = extract(images, tmp_path / "crop", **TINY)
    assert pad.config["preprocess"]["resize"] == "pad" and crop.config["preprocess"]["resize"] == "crop"
    assert not np.allclose(pad.features(), crop.features(), atol=1e-3)  # the mode changes the input
    rebuilt = extractor_from_config(pad.config, workers=0)
    assert rebuilt.backbone.preprocess.resize == "pad"
    features, _ = rebuilt.features_of(list(pad.meta["path"]))
    np.testing.assert_allclose(features["flatten"], pad.features(), rtol=1e-4, atol=1e-5)
    model = train_shallow(pad, cv=2, learning_curve=False)
    result = predict(model, images, workers=0)  # refuses features of another mode: this must not raise
    assert (result["status"] == "ok").all() and set(result["predicted"]) <= {"cats", "dogs"}


def test_a_store_without_a_recorded_mode_reads_as_crop(tmp_path):
    store = extract(make_class_folder(tmp_path / "images", per_class=2), tmp_path / "s", **TINY)
    config = dict(store.config, preprocess={k: v for k, v in store.config["preprocess"].items() if k != "resize"})
    assert extractor_from_config(config, workers=0).backbone.preprocess.resize == "crop"


def test_device_decoding_follows_the_resize_mode(tmp_path):
    folder = tmp_path / "jpegs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        base = np.kron(rng.integers(0, 255, (10, 20, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 160 x 80
        Image.fromarray(base).save(folder / f"{i}.jpg", quality=95)
    pil = extract(tmp_path / "jpegs", tmp_path / "pil", decode="pil", resize="pad", **TINY)
    on_device = extract(tmp_path / "jpegs", tmp_path / "torch", decode="torch", resize="pad", **TINY)
    a, b = pil.features(), on_device.features()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.95, cosine
    crop = extract(tmp_path / "jpegs", tmp_path / "crop", decode="torch", **TINY).features()
    assert not np.allclose(crop, b, atol=1e-3)


def test_threaded_decoding_gives_the_serial_features_in_order(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=7)
    options = {k: v for k, v in TINY.items() if k not in ("workers", "progress")}
    serial = Extractor(**options, workers=0)
    threaded = Extractor(**options, workers=None)
    assert decode_plan(threaded.device, None).threads >= 1
    paths = sorted(str(p) for p in images.rglob("*.png")) + [str(tmp_path / "missing.png")]
    a, meta_a = serial.features_of(paths)
    b, meta_b = threaded.features_of(paths)
    assert meta_a["status"].tolist() == meta_b["status"].tolist() and meta_b["status"].iloc[-1] == "missing"
    np.testing.assert_array_equal(a["flatten"], b["flatten"])


def test_decode_plan_shares_the_cores():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plan = decode_plan(cpu, None, cores=2)  # CPU: decode and forward take turns, each on every core
    assert (plan.processes, plan.threads, plan.torch_threads) == (0, 2, 2)
    assert decode_plan(cuda, None, cores=16).processes == 8  # GPU: the CPU only decodes
    assert decode_plan(cuda, None, cores=2).processes == 1
    assert decode_plan(cpu, 3, cores=2).processes == 3  # an explicit --workers is obeyed
    assert decode_plan(cpu, 0, cores=2).processes == 0


def test_bf16_on_a_cpu_gives_nearly_the_float32_features(tmp_path, monkeypatch):
    import importlib

    fx = importlib.import_module("featx.extract.extractor")  # the module (featx.extract is the function)

    images = make_class_folder(tmp_path / "images", per_class=3)
    options = {k: v for k, v in TINY.items() if k != "progress"}
    if not fx.cpu_bf16_supported(torch.device("cpu")):
        with pytest.raises(InputError, match="--amp bf16 needs a CUDA device, or --amp bf16 a CPU with native"):
            Extractor(**options, device="cpu", amp="bf16")
        monkeypatch.setattr(fx, "cpu_bf16_supported", lambda device: True)  # the autocast path still runs
    paths = sorted(str(p) for p in images.rglob("*.png"))
    exact, _ = Extractor(**options, device="cpu").features_of(paths)
    half, _ = Extractor(**options, device="cpu", amp="bf16").features_of(paths)
    a, b = exact["flatten"], half["flatten"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)  # bf16 really ran, and stayed close
