import json

import numpy as np
import pandas as pd
import pytest

from featx.api import write_projection
from featx.errors import InputError
from featx.maps.project import project
from tests.conftest import blobs, make_feature_store


@pytest.fixture
def blob_store(tmp_path):
    X, y = blobs(n_per_class=40, classes=3, dim=80, spread=1.0)
    return make_feature_store(tmp_path / "store", X, y)


@pytest.mark.parametrize("method", ["pca", "umap", "tsne"])
def test_methods_separate_clusters_and_write_outputs(blob_store, tmp_path, method):
    coords = project(blob_store, method=method, seed=1)
    assert len(coords) == 120 and list(coords.columns[-2:]) == ["x", "y"] and np.isfinite(coords[["x",
                                                                                                  "y"]]).all().all()
    quality = coords.attrs["quality"]
    assert quality["knn_accuracy_map"] > 0.9 and quality["knn_accuracy_original"] > 0.9
    assert 0.5 < quality["trustworthiness"] <= 1.0
    files = write_projection(coords, tmp_path / method)
    saved = pd.read_parquet(files["coords"])
    assert list(saved.columns) == ["row_id", "path", "label", "split", "x", "y"]
    page = files["html"].read_text()
    assert "<canvas" in page and "data:image" in page and "http" not in page.split("<script>")[1]
    assert json.loads(files["json"].read_text())["info"]["method"] == method
    assert files["png"].read_bytes()[:4] == b"\x89PNG"


def test_seed_makes_runs_reproducible(blob_store):
    a = project(blob_store, method="umap", seed=3)
    b = project(blob_store, method="umap", seed=3)
    np.testing.assert_allclose(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy(), atol=1e-5)


def test_three_dims_and_pre_pca(blob_store):
    coords = project(blob_store, method="pca", dims=3)
    assert list(coords.columns[-3:]) == ["x", "y", "z"]
    assert project(blob_store, method="umap", pre_pca=10).attrs["info"]["pre_pca"] == 10


def test_small_inputs_adjust_with_warning(tmp_path):
    X, y = blobs(n_per_class=4, classes=2, dim=8)
    store = make_feature_store(tmp_path / "s", X, y)
    with pytest.warns(UserWarning, match="--perplexity 30"):
        assert len(project(store, method="tsne")) == 8
    with pytest.warns(UserWarning, match="--n-neighbors 15"):
        assert len(project(store, method="umap")) == 8


def test_sample_and_failed_rows(tmp_path):
    X, y = blobs(n_per_class=20, classes=2, dim=8)
    store = make_feature_store(tmp_path / "s", X, y)
    assert len(project(store, method="pca", sample=10)) == 10
    assert len(project(store, method="pca", sample=10_000)) == 40  # larger than the store: all rows
    failed = make_feature_store(tmp_path / "f", np.full((3, 8), np.nan), [None] * 3, status="truncated")
    with pytest.raises(InputError, match="has 0 usable rows"):
        project(failed, method="pca")


def test_bad_options(blob_store):
    with pytest.raises(InputError, match="allowed: umap, tsne, pca"):
        project(blob_store, method="mds")
    with pytest.raises(InputError, match="use 2 or 3"):
        project(blob_store, method="pca", dims=4)
