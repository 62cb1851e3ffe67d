"""The CLI's head start (featx.extract.head_start): images decoded by forked processes while torch loads
give the very bytes and rows the extractor makes itself, and anything it cannot prove equal is
not used."""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import pytest
from conftest import TINY, make_class_folder
from PIL import Image
from test_cli_startup import heavy_modules_after

from featx.extract.head_start import _MEMO_FILE, head_start, remember_preprocess, remembered_preprocess
from featx.io.cache import cache_dir
from featx.io.decode import decode_image
from featx.preprocess.config import Preprocess
from featx.preprocess.pil import draft_request, plain_views
from featx.preprocess.views import image_views
from featx.store import FeatureStore

PRE = Preprocess(resize_size=64, crop_size=56, interpolation="bicubic", mean=(0.5, 0.25, 0.75), std=(0.2, 0.2, 0.2))
EXTRACT = {k: v for k, v in TINY.items() if k != "workers"}  # the head start is for the CPU plan (workers=None)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))


def jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["crop", "full", "pad"])
@pytest.mark.parametrize("tta", [1, 2])
def test_torch_free_views_are_the_extractors_bytes(mode, tta):
    pre = PRE.with_resize(mode)
    for size, seed in (((640, 480), 0), ((90, 300), 1), ((1600, 1200), 2)):  # 1600 px: a JPEG draft scale
        data = jpeg(*size, seed)
        made = [image_views(decode_image(data, draft_size=lambda s: draft_request(s, pre, tta)), pre, tta).numpy(),
                plain_views(decode_image(data, draft_size=lambda s: draft_request(s, pre, tta)), pre, tta)]
        assert made[0].dtype == made[1].dtype == np.uint8
        assert made[0].shape == made[1].shape == (tta, 3, 56, 56)
        assert np.array_equal(made[0], made[1])


def test_the_head_start_imports_no_heavy_library(tmp_path):
    folder = make_class_folder(tmp_path / "images", per_class=2)
    code = ("from featx.extract.head_start import head_start, remember_preprocess\n"
            f"remember_preprocess('resnet18', 64, 'crop', {PRE.to_dict()!r})\n"
            f"h = head_start([{str(folder)!r}], model='resnet18', image_size=64, processes=1)\n"
            "import time\n"
            "while h.pending(): time.sleep(0.01)\n"
            "assert len(h.take(h.preprocess, 1)) == 4\n")
    assert heavy_modules_after(code) == []


def test_preprocessing_is_remembered_per_model_size_and_resize():
    assert remembered_preprocess("resnet18", 64, "crop") is None
    remember_preprocess("resnet18", 64, "crop", PRE.to_dict())
    remember_preprocess("resnet18", 64, "pad", PRE.with_resize("pad").to_dict())
    assert Preprocess.from_dict(remembered_preprocess("resnet18", 64, "crop")) == PRE
    assert remembered_preprocess("resnet18", 64, "pad")["resize"] == "pad"
    assert remembered_preprocess("resnet18", None, "crop") is None
    (cache_dir() / _MEMO_FILE).write_text("{not json")  # a damaged memo only costs the head start
    assert remembered_preprocess("resnet18", 64, "crop") is None


def wait_until_decoded(head, timeout=60.0):
    deadline = time.monotonic() + timeout
    while head.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not head.pending()


def folder_with_bad_files(root):
    folder = make_class_folder(root / "images", per_class=5)
    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "dogs" / "empty.png").write_bytes(b"")
    (folder / "dogs" / "big.jpg").write_bytes(jpeg(900, 700, 3))
    return folder


def read(store_path):
    store = FeatureStore.open(store_path)
    return store.features(), store.meta[["path", "sha256", "status", "error"]], store.manifest


def test_features_and_rows_with_a_head_start_equal_the_normal_run(tmp_path, caplog):
    from featx.extract.job import extract

    folder = folder_with_bad_files(tmp_path)
    extract(folder, tmp_path / "plain", **EXTRACT)  # also records the preprocessing for the next head start
    head = head_start([folder], model="resnet18", image_size=64)
    assert head is not None and len(head.records) == 13
    wait_until_decoded(head)
    with caplog.at_level(logging.INFO, logger="featx.extract.head_start"), head:
        extract([folder], tmp_path / "early", head_start=head, **EXTRACT)
    assert "head start: 11 of 13 images decoded" in caplog.text  # the two bad files are left to the extractor
    (plain, plain_meta, plain_manifest), (early, early_meta,
                                          early_manifest) = read(tmp_path / "plain"), read(tmp_path / "early")
    assert np.array_equal(plain, early, equal_nan=True)
    assert plain_meta.equals(early_meta)
    assert sorted(set(plain_meta["status"])) == ["empty", "ok",
                                                 "truncated"] and (plain_meta["status"] == "ok").sum() == 11
    assert plain_manifest["config"] == early_manifest["config"]


def test_another_preprocessing_than_the_recorded_one_is_not_used(tmp_path, caplog):
    from featx.extract.job import extract

    folder = make_class_folder(tmp_path / "images", per_class=3)
    extract(folder, tmp_path / "plain", **EXTRACT)
    wrong = remembered_preprocess("resnet18", 64, "crop") | {"interpolation": "nearest"}  # e.g. timm changed it
    remember_preprocess("resnet18", 64, "crop", wrong)
    head = head_start([folder], model="resnet18", image_size=64)
    wait_until_decoded(head)
    with caplog.at_level(logging.INFO, logger="featx.extract.head_start"), head:
        extract([folder], tmp_path / "early", head_start=head, **EXTRACT)
    assert "head start not used" in caplog.text
    assert np.array_equal(read(tmp_path / "plain")[0], read(tmp_path / "early")[0])
    assert remembered_preprocess("resnet18", 64, "crop") != wrong  # the run recorded the right one again


@pytest.mark.parametrize("change", [{"engine": "ray"}, {"workers": 2}, {"tta": 3}, {"decode": "torch"},
                                   {"device": "cuda"}, {"model": "resnet34"}])
def test_no_head_start_where_it_cannot_be_proven_equal(tmp_path, change):
    folder = make_class_folder(tmp_path / "images", per_class=1)
    remember_preprocess("resnet18", 64, "crop", PRE.to_dict())
    base = {"model": "resnet18", "image_size": 64, "processes": 1}
    assert head_start([folder], **(base | change)) is None
    with head_start([folder], **base) as head:
        assert head is not None


def test_the_cli_uses_the_head_start_and_writes_the_same_store(tmp_path, caplog):
    from typer.testing import CliRunner

    from featx.cli import app

    folder = folder_with_bad_files(tmp_path)
    args = ["--model", "resnet18", "--weights", "random", "--image-size", "64", "--batch-size", "4"]
    runner = CliRunner()
    first = runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "a"), *args])
    assert first.exit_code == 0, first.output
    assert json.loads((cache_dir() / _MEMO_FILE).read_text())  # the first run recorded the preprocessing
    with caplog.at_level(logging.INFO, logger="featx.extract.head_start"):
        second = runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "b"), *args])
    assert second.exit_code == 0, second.output
    assert "of 13 images decoded while the network loaded" in caplog.text
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    assert np.array_equal(a[0], b[0], equal_nan=True) and a[1].equals(b[1])
    assert (a[1]["status"] != "ok").sum() == 2


def test_openmp_spins_briefly_unless_the_user_chose(tmp_path, monkeypatch):
    """The head start (library code) leaves the environment alone; the entry point that starts it
    sets GOMP_SPINCOUNT through featx.runtime, keeping a value the user chose."""
    import os

    from featx.runtime import spin_briefly

    folder = make_class_folder(tmp_path / "images", per_class=1)
    remember_preprocess("resnet18", 64, "crop", PRE.to_dict())
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    with head_start([folder], model="resnet18", image_size=64, processes=1):
        assert "GOMP_SPINCOUNT" not in os.environ
    spin_briefly()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    spin_briefly()
    assert os.environ["GOMP_SPINCOUNT"] == "300000"
    monkeypatch.setenv("FEATX_HEAD_START", "0")
    assert head_start([folder], model="resnet18", image_size=64, processes=1) is None
