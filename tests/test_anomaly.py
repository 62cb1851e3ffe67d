"""featx anomaly: planted anomalies rank above normals, the threshold keeps its false-positive rate
on fresh normals, heatmaps peak on a planted defect, tampered models are refused, scoring images
gives the scores the fit measured, and the CLI's tables and errors."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featx
from featx.anomaly.calibrate import threshold_for
from featx.anomaly.fitting import fit_anomaly
from featx.anomaly.model import AnomalyModel
from featx.anomaly.patches import greedy_coreset
from featx.errors import InputError, IntegrityError
from tests.conftest import TINY, make_feature_store

runner = CliRunner()
PATCH_TINY = {**TINY, "image_size": 96, "resize": "full", "pool": "flatten", "layers": ["layer2", "layer3"]}
SQUARE = (52, 20, 78, 46)  # the planted defect: top, left, bottom, right in the 96 × 96 images


def gaussian_store(path, normals=400, anomalies=20, dim=16, seed=0, splits=None):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (normals, dim)), rng.normal(0, 1, (anomalies, dim)) * 3 + 4])
    labels = ["good"] * normals + ["bad"] * anomalies
    return make_feature_store(path, X + 10, labels, splits=splits)


def test_planted_anomalies_rank_above_normals_and_are_evaluated(tmp_path):
    model = fit_anomaly(gaussian_store(tmp_path / "s"), normal=["good"], fpr=0.05)
    held = model.held_out
    assert held["anomalous"].sum() == 20 and (~held["anomalous"]).sum() == 400  # normals scored out-of-fold
    assert held.loc[held["anomalous"], "score"].min() > held.loc[~held["anomalous"], "score"].quantile(0.99)
    evaluation = model.record["evaluation"]
    assert evaluation["auroc"] > 0.99 and evaluation["auprc"] > 0.95
    assert evaluation["confusion"]["true_positive"] == 20
    assert 0 <= evaluation["auroc_std"] < 0.05 and evaluation["auroc_interval_95"][1] <= 1.0
    assert model.record["threshold"]["calibration"].startswith("out-of-fold")


def test_threshold_keeps_its_false_positive_rate_on_fresh_normals(tmp_path):
    fpr, n_calibrate, n_fresh = 0.05, 1000, 4000
    splits = ["train"] * 500 + ["val"] * n_calibrate
    model = fit_anomaly(gaussian_store(tmp_path / "s", normals=1500, anomalies=0, splits=splits + []), fpr=fpr)
    assert model.record["threshold"]["calibration"] == "held-out split"
    assert model.record["normal"]["rows"] == 500
    fresh = np.random.default_rng(99).normal(0, 1, (n_fresh, 16)) + 10
    rate = float((model.memory.score(fresh) > model.threshold).mean())
    # the calibration's own binomial error plus the fresh sample's
    error = math.sqrt(fpr * (1 - fpr) / n_calibrate + fpr * (1 - fpr) / n_fresh)
    assert abs(rate - fpr) < 3 * error, (rate, error)


def test_threshold_rule_and_its_refusals():
    scores = np.arange(1, 101, dtype=float)
    found = threshold_for(scores, 0.05)
    assert found["threshold"] == 95.0 and found["fpr_held_out"] == 0.05
    with pytest.raises(InputError, match="no held-out normal images"):
        threshold_for(np.zeros(0), 0.01)


def test_unknown_normal_label_and_image_model_masks_are_refused(tmp_path):
    store = gaussian_store(tmp_path / "s", normals=30, anomalies=5)
    with pytest.raises(InputError, match="--normal okay: no usable row .* its labels: bad, good"):
        fit_anomaly(store, normal=["okay"])
    with pytest.raises(InputError, match="need a patch-level model; add --patch"):
        fit_anomaly(store, normal=["good"], masks=tmp_path / "masks.csv")
    with pytest.raises(InputError, match="--patch needs the stored maps.*--pool flatten"):
        fit_anomaly(store, normal=["good"], patch=True)


def test_coreset_covers_the_patches_better_than_chance():
    rng = np.random.default_rng(0)
    clusters = rng.normal(0, 10, (20, 8))
    patches = (clusters[rng.integers(0, 20, 2000)] + rng.normal(0, 0.1, (2000, 8))).astype(np.float32)
    chosen = greedy_coreset(patches, 0.01, seed=0)
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    nearest_cluster = np.argmin(((patches[chosen][:, None] - clusters[None]) ** 2).sum(2), 1)
    assert len(set(nearest_cluster.tolist())) == 20  # k-center finds every cluster; 20 random picks rarely do


def test_a_tampered_model_is_refused(tmp_path):
    fit_anomaly(gaussian_store(tmp_path / "s", normals=40, anomalies=4), normal=["good"]).save(tmp_path / "m")
    AnomalyModel.load(tmp_path / "m")
    record = json.loads((tmp_path / "m" / "anomaly.json").read_text())
    record["threshold"]["threshold"] = 1e9
    (tmp_path / "m" / "anomaly.json").write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match="changed after featx wrote it"):
        AnomalyModel.load(tmp_path / "m")
    fit_anomaly(gaussian_store(tmp_path / "s2", normals=40, anomalies=4), normal=["good"]).save(tmp_path / "m2")
    with open(tmp_path / "m2" / "memory.faiss", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(IntegrityError, match="memory.faiss"):
        AnomalyModel.load(tmp_path / "m2")


def textured_images(root, count, seed, defect=False):
    """96 × 96 grey noise; `defect` paints a red square at SQUARE."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.clip(rng.normal(128, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
        if defect:
            top, left, bottom, right = SQUARE
            pixels[top:bottom, left:right] = (230, 20, 20)
        Image.fromarray(pixels).save(root / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomaly")
    textured_images(root / "images" / "train" / "good", 16, seed=0)
    textured_images(root / "images" / "val" / "good", 8, seed=1)
    textured_images(root / "images" / "val" / "bad", 6, seed=2, defect=True)
    store = featx.extract(root / "images", root / "store", **PATCH_TINY)
    model = featx.fit_anomaly(store, root / "model", normal=["good"], patch=True, coreset=0.1, fpr=0.1)
    return root, model


def test_patch_model_heatmap_peaks_inside_the_planted_patch(patch_model):
    root, model = patch_model
    held = model.held_out
    assert model.record["evaluation"]["auroc"] == 1.0
    top, left, bottom, right = SQUARE
    margin = 8  # one cell of the 12 × 12 patch grid
    for i in np.flatnonzero(held["anomalous"].to_numpy()):
        heat = model.heatmaps_of(model.grids[i:i + 1])[0]
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert top - margin <= y < bottom + margin and left - margin <= x < right + margin, (y, x)


def test_scoring_images_gives_the_fitted_scores_and_heatmaps(patch_model, tmp_path):
    root, model = patch_model
    frame = featx.score_anomaly(root / "model", [str(root / "images" / "val")], heatmaps=tmp_path / "heat",
                                device="cpu", workers=0)
    fitted = model.held_out.set_index("path")["score"]
    scored = frame.set_index("path")["score"].loc[fitted.index]
    np.testing.assert_allclose(scored.to_numpy(), fitted.to_numpy(), rtol=1e-4)
    assert frame["above_threshold"].tolist() == (frame["score"] > model.threshold).tolist()
    pngs = sorted((tmp_path / "heat").glob("*.png"))
    assert len(pngs) == 14 and Image.open(pngs[0]).size == (96, 96)
    page = (root / "model" / "anomaly.html").read_text()
    assert "image AUROC" in page and "Most anomalous held-out images" in page and "src=\"http" not in page


def test_cli_fit_and_score(patch_model, tmp_path):
    import io

    import pandas as pd

    from featx.cli import app

    root, _ = patch_model
    featx.extract(root / "images", tmp_path / "store", **TINY)
    result = runner.invoke(app, ["anomaly", "fit", str(tmp_path / "store"), "-o", str(tmp_path / "model"),
                                 "--normal", "good", "--fpr", "0.1"])
    assert result.exit_code == 0, result.output
    assert "image-level anomaly model" in result.output and "image AUROC" in result.output
    result = runner.invoke(app, ["anomaly", "score", str(tmp_path / "model"), str(root / "images" / "val"),
                                 "--format", "csv", "--workers", "0"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns) == ["path", "score", "above_threshold", "status", "error"] and len(frame) == 14
    result = runner.invoke(app, ["anomaly", "score", str(tmp_path / "model"), str(root / "images" / "val"),
                                 "--heatmaps", str(tmp_path / "heat")])
    assert result.exit_code == 2 and "--heatmaps needs a patch-level model" in result.output
    result = runner.invoke(app, ["info", str(tmp_path / "model")])
    assert result.exit_code == 0 and "mode: image" in result.output and "store_now: unchanged" in result.output


def test_served_scores_equal_offline_scores_with_heatmaps_and_limits(patch_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from featx.options import ServeOptions
    from featx.serve.app import create_app
    from featx.serve.responses import AnomalyAnswer

    root, model = patch_model
    paths = sorted((root / "images" / "val").rglob("*.png"))
    offline = model.held_out.set_index("path")["score"]
    options = ServeOptions(anomalies={"parts": str(root / "model")}, data_root=str(root / "images"), device="cpu",
                           max_files=4)
    with TestClient(create_app(options)) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths[:3]]
        response = client.post("/v1/anomaly", files=files, data={"heatmap": "true"})
        assert response.status_code == 200, response.text
        answer = AnomalyAnswer.model_validate(response.json())
        assert [r.input for r in answer.results] == [p.name for p in paths[:3]]
        for path, result in zip(paths, answer.results):
            assert result.score == pytest.approx(offline[str(path)], rel=1e-4)
            assert result.anomalous == (result.score > model.threshold)
            assert result.heatmap.startswith("data:image/png;base64,")
        alone = client.post("/v1/anomaly", json={"paths": [str(paths[-1].relative_to(root / "images"))]})
        assert alone.status_code == 200 and alone.json()["results"][0]["heatmap"] is None
        assert alone.json()["results"][0]["score"] == pytest.approx(offline[str(paths[-1])], rel=1e-4)
        too_many = client.post("/v1/anomaly", files=[("files", (p.name, p.read_bytes(), "image/png"))
                                                     for p in paths[:5]])
        assert too_many.status_code == 400 and "Maximum number of files is 4" in too_many.text
        outside = client.post("/v1/anomaly", json={"paths": ["/etc/passwd"]})
        assert outside.status_code == 403
        assert client.get("/v1/info").json()["anomalies"]["parts"]["mode"] == "patch"
