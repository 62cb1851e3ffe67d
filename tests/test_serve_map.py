"""Placing queries on a saved feature map: `featx project` keeps its fitted reducer, sealed and
checked; `featx serve --projection` answers where an image lands and serves the map's points."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import build_artifacts  # noqa: E402

from featx.errors import IntegrityError  # noqa: E402
from featx.options import ServeOptions  # noqa: E402
from featx.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("map"))


def make_projection(store, out, method="pca", **kw):
    from featx.api import write_projection
    from featx.maps.project import fit_projection

    coords, placer = fit_projection(store, method=method, **kw)
    write_projection(coords, out, placer=placer)
    return coords


@pytest.fixture(scope="module")
def pca_map(artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("pca") / "map"
    make_projection(artifacts.store, out, method="pca")
    return out


def test_projection_keeps_its_reducer_sealed_and_places_stored_rows_on_their_points(artifacts, pca_map):
    from featx.maps.placement import load_projection
    from featx.store import FeatureStore

    record = json.loads((pca_map / "projection.json").read_text())
    assert set(record["files"]) == {"coords", "placer"}
    projection = load_projection(pca_map)
    store = FeatureStore.open(artifacts.store)
    rows = projection.coords["row_id"].to_numpy()
    placed = projection.place(store.gather(projection.layer, rows))
    # PCA's transform is exact: a stored row placed again lands on its own point
    np.testing.assert_allclose(placed, projection.coords[["x", "y"]].to_numpy(), rtol=1e-4, atol=1e-4)


def test_a_changed_placer_or_coords_file_is_refused_before_it_is_read(pca_map, tmp_path):
    import shutil

    from featx.maps.placement import load_projection

    for name in ("placer.joblib", "coords.parquet"):
        copy = tmp_path / name.split(".")[0]
        shutil.copytree(pca_map, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=f"{name}.*sha256"):
            load_projection(copy)


def test_serve_places_an_upload_and_a_row_and_serves_the_map(artifacts, pca_map):
    from featx.serve.responses import MapPoints, PlaceAnswer

    options = ServeOptions(indexes={"i": str(artifacts.index)}, projections={"p": str(pca_map)}, device="cpu")
    coords = pd.read_parquet(pca_map / "coords.parquet")
    with TestClient(create_app(options)) as client:
        info = client.get("/v1/info").json()
        assert info["projections"]["p"]["method"] == "pca" and info["projections"]["p"]["points"] == len(coords)
        points = client.get("/v1/projections/p").json()
        assert [p[3] for p in points["points"]] == coords["row_id"].tolist()
        np.testing.assert_allclose([p[:2] for p in points["points"]], coords[["x", "y"]].to_numpy(), atol=1e-4)
        labels = points["labels"]
        assert [labels[p[2]] for p in points["points"]] == coords["label"].tolist()
        assert points["total"] == len(coords) and not points["sampled"]
        few = client.get("/v1/projections/p", params={"limit": 5}).json()
        assert len(few["points"]) == 5 and few["sampled"] and few["total"] == len(coords)
        assert {p[3] for p in few["points"]} <= set(coords["row_id"])

        # an upload of a stored image lands on that image's point (PCA: exactly)
        row = 7
        path = coords.loc[coords["row_id"] == row, "path"].item()
        with open(path, "rb") as f:
            answer = client.post("/v1/place", files=[("files", ("q.png", f.read(), "image/png"))])
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert result["how"] == "transform"
        expected = coords.loc[coords["row_id"] == row, ["x", "y"]].to_numpy()[0]
        np.testing.assert_allclose(result["coords"], expected, rtol=1e-3, atol=1e-3)

        PlaceAnswer.model_validate(answer.json())  # the documented shape (featx.serve.responses)
        MapPoints.model_validate(points)

        # a stored row answers with its own point
        by_row = client.post("/v1/place", json={"rows": [3, row]}).json()["results"]
        assert [r["how"] for r in by_row] == ["stored", "stored"]
        np.testing.assert_allclose(by_row[1]["coords"], expected, atol=1e-6)
        assert client.post("/v1/place", json={"projection": "nope", "rows": [1]}).status_code == 404


def test_serve_refuses_a_tampered_projection(artifacts, pca_map, tmp_path):
    import shutil

    copy = tmp_path / "map"
    shutil.copytree(pca_map, copy)
    record = json.loads((copy / "projection.json").read_text())
    record["info"]["layer"] = "something-else"
    (copy / "projection.json").write_text(json.dumps(record))
    options = ServeOptions(projections={"p": str(copy)}, device="cpu")
    with pytest.raises(Exception, match="changed after featx wrote it"):
        with TestClient(create_app(options)):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_umap_and_opentsne_maps_place_new_points_after_a_reload_from_disk(artifacts, tmp_path, method):
    """The reducer saved on disk places points exactly as the fitted one in memory did, within the
    map's extent; scikit-learn's TSNE could not (no transform): featx uses openTSNE."""
    from featx.api import write_projection
    from featx.maps.placement import load_projection
    from featx.maps.project import fit_projection
    from featx.store import FeatureStore

    coords, placer = fit_projection(artifacts.store, method=method)
    write_projection(coords, tmp_path / "map", placer=placer)
    store = FeatureStore.open(artifacts.store)
    X = store.gather(coords.attrs["info"]["layer"], coords["row_id"].to_numpy()[:5])
    in_memory = placer.place(X)
    from_disk = load_projection(tmp_path / "map").place(X)
    np.testing.assert_allclose(from_disk, in_memory, rtol=1e-4, atol=1e-4)
    xy = coords[["x", "y"]].to_numpy()
    span = xy.max(0) - xy.min(0)
    assert ((from_disk >= xy.min(0) - span) & (from_disk <= xy.max(0) + span)).all()


def test_a_tampered_placer_is_refused_at_reload_and_the_old_map_keeps_serving(artifacts, pca_map, tmp_path):
    import shutil

    copy = tmp_path / "map"
    shutil.copytree(pca_map, copy)
    options = ServeOptions(indexes={"i": str(artifacts.index)}, projections={"p": str(copy)}, device="cpu")
    with TestClient(create_app(options)) as client:
        before = client.post("/v1/place", json={"rows": [2]}).json()["results"][0]["coords"]
        placer = copy / "placer.joblib"
        placer.write_bytes(placer.read_bytes() + b"\0")  # appended bytes: unpickling would not notice
        refused = client.post("/v1/reload")
        assert refused.status_code == 409 and "placer.joblib" in refused.json()["error"]["message"]
        assert client.post("/v1/place", json={"rows": [2]}).json()["results"][0]["coords"] == before
        with open(artifacts.images / "cats" / "cats_01.png", "rb") as f:
            placed = client.post("/v1/place", files=[("files", ("q.png", f.read(), "image/png"))])
        assert placed.status_code == 200 and placed.json()["generation"] == 1
