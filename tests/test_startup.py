"""What `featx extract` pays before its first image: no avoidable import, no repeated check."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_class_folder

import featx.backbones.lean_graph as lean_graph
from featx.extract.extractor import Extractor

OPTIONS = dict(weights="random", image_size=64, workers=0, batch_size=8, device="cpu")


def _checks(folder) -> dict:
    return json.loads((folder / "lean-graph-checks.json").read_text())


def test_a_remembered_lean_check_skips_the_probe_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    paths = sorted(str(p) for p in make_class_folder(tmp_path / "images", per_class=3).rglob("*.png"))
    first = Extractor("resnet18", **OPTIONS)
    assert first.tap.folded > 0
    (record,) = _checks(tmp_path / "cache").values()
    assert record["shapes"]["flatten"] == [512] and set(record["shapes"]) == set(first.network_layers)
    assert record["difference"] <= lean_graph.FOLD_TOLERANCE

    def no_probe(*_):
        raise AssertionError("the lean graph was checked again")

    monkeypatch.setattr(lean_graph, "max_relative_difference", no_probe)
    again = Extractor("resnet18", **OPTIONS)
    assert again.tap.folded == first.tap.folded and again.pooled_dims == first.pooled_dims
    assert again.layer_formats == first.layer_formats
    a, b = first.features_of(paths)[0], again.features_of(paths)[0]
    np.testing.assert_array_equal(a[first.layers[0]], b[again.layers[0]])
    # other weights are another key: checked anew
    monkeypatch.undo()
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    Extractor("resnet18", **OPTIONS | {"image_size": 72})
    assert len(_checks(tmp_path / "cache")) == 2


def test_a_remembered_failed_check_keeps_the_plain_graph(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path))
    Extractor("resnet18", **OPTIONS)
    checks = _checks(tmp_path)
    for record in checks.values():
        record["difference"] = 1.0
    (tmp_path / "lean-graph-checks.json").write_text(json.dumps(checks))
    with caplog.at_level(logging.WARNING, logger="featx.backbones.layers"):
        plain = Extractor("resnet18", **OPTIONS)
    assert plain.tap.folded == 0
    assert "using the unfolded graph" in caplog.text


def test_a_damaged_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path))
    (tmp_path / "lean-graph-checks.json").write_text("{not json")
    assert Extractor("resnet18", **OPTIONS).tap.folded > 0
    assert len(_checks(tmp_path)) == 1  # rewritten whole


@pytest.mark.parametrize("model", ["resnet18"])
def test_extracting_with_a_torchvision_model_imports_neither_sklearn_nor_timm(tmp_path, model):
    images = make_class_folder(tmp_path / "images", per_class=2)
    code = ("import sys; from featx.extract import extract\n"
            f"extract([{str(images)!r}], {str(tmp_path / 'store')!r}, model={model!r}, weights='random', "
            "image_size=64, workers=0, progress=False)\n"
            "print(sorted(m for m in ('sklearn', 'scipy', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "FEATX_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_compile_is_refused_with_the_ray_engine(tmp_path):
    from featx.errors import InputError
    from featx.extract.job import extract

    with pytest.raises(InputError, match="--compile works with --engine local only"):
        extract(make_class_folder(tmp_path / "images", per_class=1), tmp_path / "store", engine="ray",
                compile=True, progress=False)


@pytest.mark.slow
def test_compiled_network_gives_the_same_features_with_a_short_last_batch(tmp_path):
    paths = sorted(str(p) for p in make_class_folder(tmp_path / "images", per_class=4).rglob("*.png"))[:7]
    options = OPTIONS | {"batch_size": 4}  # 7 images: the last batch of 3 is padded to the compiled 4
    plain = Extractor("resnet18", **options).features_of(paths)[0]
    compiled_extractor = Extractor("resnet18", **options, compile=True)
    compiled = compiled_extractor.features_of(paths)[0]
    assert plain["flatten"].shape == (7, 512) and set(plain) == set(compiled)  # every default layer, pixels too
    for layer, vectors in plain.items():
        assert vectors.shape == compiled[layer].shape and len(vectors) == 7
        np.testing.assert_allclose(compiled[layer], vectors, rtol=1e-4, atol=1e-4 * np.abs(vectors).max())
