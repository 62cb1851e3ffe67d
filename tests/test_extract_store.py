import json
import shutil

import numpy as np
import pytest

from featx.errors import ConfigMismatchError, InputError, StoreError
from featx.extract.job import extract
from featx.store import FeatureStore, StoreWriter
from tests.conftest import TINY, make_class_folder


def test_store_rows_labels_and_files(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "store", shard_size=5, **TINY)
    assert len(store) == 12 and store.complete
    assert sorted(set(store.labels)) == ["cats", "dogs"]
    features = store.features()
    assert features.shape == (12, 512) and features.dtype == np.float32 and np.isfinite(features).all()
    assert len(store.manifest["shards"]) == 3  # 5 + 5 + 2 rows
    assert store.verify() == []
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["config"]["backbone"] == "resnet18" and manifest["config"]["layers"] == [
        "flatten", "layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "pixels"]  # final first, stage ends, pixels
    assert (tmp_path / "store" / "meta.parquet").is_file()


def test_bad_files_become_rows_and_good_ones_are_kept(image_folder, tmp_path):
    (image_folder / "cats" / "zero.jpg").write_bytes(b"")
    (image_folder / "cats" / "text.jpg").write_text("not an image")
    store = extract(image_folder, tmp_path / "store", **TINY)
    meta = store.meta.set_index(store.meta["path"].str.rsplit("/", n=1).str[-1])
    assert meta.loc["zero.jpg", "status"] == "empty" and meta.loc["text.jpg", "status"] == "not_image"
    assert "0 bytes" in meta.loc["zero.jpg", "error"]
    assert store.ok.sum() == 12 and np.isnan(store.features()[~store.ok]).all()
    # a freshly opened store reads only the status column for `ok`: the same rows
    reopened = FeatureStore.open(tmp_path / "store")
    assert np.array_equal(reopened.ok, (store.meta["status"] == "ok").to_numpy()) and reopened._meta is None


def test_multiple_layers_and_pooling(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "s", layers=["layer3", "flatten"], pool="avgmax", **TINY)
    assert store.layers == ["layer3", "flatten"]
    assert store.features("layer3").shape == (12, 512)  # 256 channels, avg + max


def test_resume_after_crash_equals_clean_run(image_folder, tmp_path, monkeypatch):
    clean = extract(image_folder, tmp_path / "clean", shard_size=4, **TINY)
    original_commit = StoreWriter.commit_shard
    commits = {"n": 0}

    def crash_after_two(self, *args, **kwargs):
        if commits["n"] == 2:
            # leave the debris of a kill: an orphan temporary file and a shard file the manifest does not list
            (self.path / "features" / "flatten" / ".tmp-000002.npy.x").write_bytes(b"partial")
            raise KeyboardInterrupt("simulated kill")
        commits["n"] += 1
        return original_commit(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "commit_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(image_folder, tmp_path / "resumed", shard_size=4, **TINY)
    partial = FeatureStore.open(tmp_path / "resumed")
    assert partial.missing_ranges() == [(8, 12)] and not partial.complete
    monkeypatch.setattr(StoreWriter, "commit_shard", original_commit)
    resumed = extract(image_folder, tmp_path / "resumed", shard_size=4, **TINY)
    assert resumed.meta[["path", "label", "status"]].equals(clean.meta[["path", "label", "status"]])
    np.testing.assert_array_equal(resumed.features(), clean.features())
    assert not list((tmp_path / "resumed").rglob(".tmp-*"))


def test_rerun_of_finished_store_does_nothing(image_folder, tmp_path):
    first = extract(image_folder, tmp_path / "s", **TINY)
    stamp = first.manifest["shards"][0]["features"]["flatten"]["sha256"]
    again = extract(image_folder, tmp_path / "s", **TINY)
    assert len(again) == 12 and again.manifest["shards"][0]["features"]["flatten"]["sha256"] == stamp


def test_other_config_is_refused_unless_overwrite(image_folder, tmp_path):
    extract(image_folder, tmp_path / "s", **TINY)
    with pytest.raises(ConfigMismatchError, match=r"pool: stored 'avg', requested 'max'.*--overwrite"):
        extract(image_folder, tmp_path / "s", pool="max", **TINY)
    assert extract(image_folder, tmp_path / "s", pool="max", overwrite=True, **TINY).config["pool"] == "max"


def test_new_inputs_are_added_and_append_keeps_absent_rows(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "s", **TINY)
    before = store.features().copy()
    extra = tmp_path / "more"
    make_class_folder(extra, per_class=2, seed=99)
    shutil.copy(image_folder / "cats" / "cats_00.png", extra / "cats" / "duplicate.png")  # a real second copy
    grown = extract([image_folder, extra], tmp_path / "s", **TINY)
    assert grown.manifest["last_run"]["line"] == "5 new"
    assert len(grown) == 17 and grown.verify() == []
    grown_features = grown.features().copy()
    np.testing.assert_array_equal(grown.features()[:12], before)  # the old rows were not re-extracted
    # --append: the given inputs are added, rows absent from them stay while their files exist
    kept = extract([extra], tmp_path / "s", append=True, **TINY)
    assert len(kept) == 17 and kept.manifest["last_run"]["line"] == "no changes"
    # without --append the inputs are the truth: the folder's rows are removed and compacted away
    only_extra = extract([extra], tmp_path / "s", **TINY)
    assert only_extra.manifest["last_run"]["line"] == "12 removed"
    assert len(only_extra) == 5 and list(only_extra.meta["row_id"]) == list(range(5))
    np.testing.assert_array_equal(only_extra.features(), grown_features[12:])


def test_verify_detects_corruption(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "s", **TINY)
    shard = tmp_path / "s" / store.manifest["shards"][0]["features"]["flatten"]["path"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("sha256 mismatch" in p for p in FeatureStore.open(tmp_path / "s").verify())


def test_tta_views_are_averaged(image_folder, tmp_path):
    one = extract(image_folder, tmp_path / "a", **TINY).features()
    two = extract(image_folder, tmp_path / "b", tta=2, **TINY).features()
    assert one.shape == two.shape and not np.allclose(one, two)
    # the stored vector is the mean of the per-view vectors, and view 0 is the plain center crop
    from featx.extract.extractor import Extractor

    options = {k: v for k, v in TINY.items() if k not in ("model", "progress")}
    paths = FeatureStore.open(tmp_path / "b").paths.tolist()
    views, _ = Extractor(TINY["model"], tta=2, per_view=True, **options).features_of(paths)
    views = views["flatten"]
    assert views.shape == (len(paths), 2, two.shape[1]) and not np.allclose(views[:, 0], views[:, 1])
    np.testing.assert_allclose(two, views.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, views[:, 0], rtol=1e-5, atol=1e-6)
    flipped, _ = Extractor(TINY["model"], tta=1, **options).features_of([_mirror(p, tmp_path) for p in paths[:2]])
    # view 1 is the mirror image (up to resampling rounding: mirroring before the crop is not bit-identical)
    assert np.abs(flipped["flatten"] - views[:2, 1]).max() < np.abs(views[:2, 0] - views[:2, 1]).max() / 10
    with pytest.raises(InputError, match=r"--tta 11 is out of range"):
        extract(image_folder, tmp_path / "c", tta=11, **TINY)


def test_bad_options_are_clear(image_folder, tmp_path):
    with pytest.raises(InputError, match="--amp fp16 needs a CUDA device"):
        extract(image_folder, tmp_path / "x", amp="fp16", device="cpu", **TINY)
    with pytest.raises(InputError, match="unknown --device 'tpu'"):
        extract(image_folder, tmp_path / "x", device="tpu", **TINY)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(InputError, match=r"not empty and is not a featx store \(found 1 entry: other.txt\)"):
        extract(image_folder, tmp_path / "full", **TINY)


def test_open_non_store_is_clear(tmp_path):
    with pytest.raises(StoreError, match=r"not a feature store.*featx extract"):
        FeatureStore.open(tmp_path)


def test_torch_decode_path_matches_pillow_and_keeps_bad_files(tmp_path):
    """--decode torch (nvJPEG on CUDA; here torchvision's CPU decoder) gives the same features up to
    resampling differences, falls back to Pillow for non-plain JPEGs, and reports broken ones."""
    import io

    from PIL import Image

    folder = tmp_path / "jpegs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        base = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # smooth blocks
        Image.fromarray(base).save(folder / f"{i}.jpg", quality=95)
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(cmyk, "JPEG")
    (folder / "cmyk.jpg").write_bytes(cmyk.getvalue())
    good = (folder / "0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    pil = extract(tmp_path / "jpegs", tmp_path / "pil", decode="pil", **TINY)
    torch_ = extract(tmp_path / "jpegs", tmp_path / "torch", decode="torch", **TINY)
    assert torch_.config["preprocess"]["implementation"] != pil.config["preprocess"]["implementation"]
    status = dict(zip(torch_.meta["path"].str.rsplit("/", n=1).str[-1], torch_.meta["status"]))
    assert status["cmyk.jpg"] == "ok" and status["truncated.jpg"] in ("truncated", "decode_error")
    a, b = pil.features()[pil.ok], torch_.features()[torch_.ok]
    assert len(a) == len(b) == 6
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.95, cosine


def _mirror(path: str, folder) -> str:
    from PIL import Image, ImageOps

    out = folder / ("mirror-" + path.rsplit("/", 1)[-1])
    ImageOps.mirror(Image.open(path)).save(out)
    return str(out)
def test_atomic_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    """Setting the umask, even for an instant, races with other threads creating files (the
    service writes job stores while serving); writes must only read it."""
    import os

    from featx.io import atomic

    def forbidden(_mask):
        raise AssertionError("os.umask called during a write")

    monkeypatch.setattr(os, "umask", forbidden)
    atomic.write_bytes(tmp_path / "x.bin", b"data")
    assert (tmp_path / "x.bin").read_bytes() == b"data"
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~atomic._umask()
