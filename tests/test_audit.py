"""featx audit: each issue kind is found on planted data, clean data gives few suspects, the
outputs are complete, the cleaned manifest round-trips through extract, the page is self-contained."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featx.api import audit
from featx.audit.audit import run_audit
from featx.audit.data_size import doubling_estimate
from featx.errors import InputError
from featx.learn.duplicates import heldout_near_duplicates
from tests.conftest import SYNTHETIC_CONFIG, TINY, blobs, make_class_folder


def synthetic_store(path, X, labels, splits, sha256=None):
    """Like conftest.make_feature_store, with chosen sha256 values (exact duplicates)."""
    from featx.io.sources import ImageRecord
    from featx.store import StoreWriter

    X = np.asarray(X, dtype=np.float32)
    records = [ImageRecord(f"/synthetic/{i:05d}.png", labels[i], splits[i]) for i in range(len(X))]
    writer = StoreWriter(path, SYNTHETIC_CONFIG)
    meta = writer.prepare(records).plan.copy()
    meta["sha256"] = sha256 if sha256 is not None else [f"{i:064x}" for i in range(len(X))]
    meta["status"], meta["error"] = "ok", None
    writer.commit_shard(0, {"vec": X}, meta)
    return writer.finalize(len(X))


@pytest.fixture
def planted(tmp_path):
    """3 well-separated classes, 30 train + 10 val rows each, with one planted problem of each kind."""
    X, y = blobs(n_per_class=40, classes=3, dim=32, seed=1)
    y = y.astype(object)
    splits = np.array((["train"] * 30 + ["val"] * 10) * 3, dtype=object)
    rng = np.random.default_rng(3)
    truth = {}
    flipped = [2, 45, 90, 100]  # train rows given another class's label
    for i in flipped:
        truth[i] = y[i]
        y[i] = "c1" if y[i] != "c1" else "c2"
    X[7] = X[5] + rng.normal(0, 0.01, 32)  # near-duplicate within class c0 (both train)
    X[50] = X[10] + rng.normal(0, 0.01, 32)  # a c1 train image that copies a c0 image: conflicting labels
    X[35] = X[20] + rng.normal(0, 0.01, 32)  # a val image that copies a train image: leakage
    X[110] = rng.normal(0, 1, 32) * 40  # far from everything
    sha = [f"{i:064x}" for i in range(len(X))]
    sha[60] = sha[61]  # byte-identical files (c1, train)
    store = synthetic_store(tmp_path / "store", X, list(y), list(splits), sha)
    return store, {"flipped": flipped, "truth": truth}


def kinds_of(suspects, row):
    return set(suspects.loc[suspects["row_id"] == row, "kind"])


def test_each_issue_kind_is_found(planted):
    store, plants = planted
    result = run_audit(store, calibrate="distribution", learning_curve=False)
    suspects = result.suspects
    for row in plants["flipped"]:
        assert "label_issue" in kinds_of(suspects, row), row
        hit = suspects[(suspects["row_id"] == row) & (suspects["kind"] == "label_issue")].iloc[0]
        assert hit["suggested_label"] == plants["truth"][row]
        assert hit["given_label"] != plants["truth"][row]
    assert "duplicate" in kinds_of(suspects, 7)  # the later row of a within-class pair
    assert "duplicate" not in kinds_of(suspects, 5)
    assert "conflicting_duplicate" in kinds_of(suspects, 50) and "conflicting_duplicate" in kinds_of(suspects, 10)
    leak = suspects[suspects["kind"] == "leakage"]
    assert list(leak["row_id"]) == [35] and leak["neighbour_path"].iat[0] == store.paths[20]
    exact = result.pairs[result.pairs["match"] == "exact"]
    assert exact[["row_a", "row_b"]].values.tolist() == [[60, 61]]
    assert "duplicate" in kinds_of(suspects, 61)
    assert 110 in set(suspects.loc[suspects["kind"] == "outlier", "row_id"])
    assert result.scores["outlier_score"].idxmax() == 110
    pairs = result.summary["near_duplicates"]["pairs"]
    assert pairs == {"within_class": 2, "across_classes": 1, "across_splits": 1}
    # scores are ordered most suspicious first within each kind
    for _, group in suspects.groupby("kind"):
        assert list(group["score"]) == sorted(group["score"], reverse=True)


def test_clean_data_gives_few_suspects(tmp_path):
    """False-positive rate on clean separable data, over 3 seeds: at most 5% of rows flagged."""
    rates = []
    for seed in range(3):
        X, y = blobs(n_per_class=40, classes=3, dim=32, seed=seed + 10)
        store = synthetic_store(tmp_path / f"clean{seed}", X, list(y), [None] * len(X))
        summary = run_audit(store, calibrate="distribution", learning_curve=False).summary
        rates.append(summary["flagged_fraction"])
        assert summary["counts"]["label_issue"] == 0
        assert summary["near_duplicates"]["pairs"] == {"within_class": 0, "across_classes": 0, "across_splits": 0}
    assert max(rates) <= 0.05, rates


def test_outputs_manifest_and_self_contained_page(planted, tmp_path):
    import featx

    store, plants = planted
    out = tmp_path / "audit"
    suspects = featx.audit(store.path, out=out, write_manifest=True, calibrate="distribution")
    assert isinstance(suspects, pd.DataFrame)
    assert set(suspects.attrs["files"]) == {"json", "csv", "scores", "html", "manifest"}
    table = pd.read_csv(out / "suspects.csv")
    assert list(table.columns[:5]) == ["path", "kind", "score", "given_label", "suggested_label"]
    assert len(table) == len(suspects)
    record = json.loads((out / "audit.json").read_text())
    assert record["summary"]["counts"]["leakage"] == 1 and len(record["suspects"]) == len(suspects)
    assert record["summary"]["enough_data"]["available"] and "Doubling the training images" in \
        record["summary"]["enough_data"]["sentence"]
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == len(store)  # never deleted
    assert list(manifest["path"]) == list(store.paths) and list(manifest["label"]) == list(store.labels)
    flagged = set(manifest.index[manifest["audit_suspect"]])
    assert flagged == set(suspects["row_id"]) and {35, 110, *plants["flipped"]} <= flagged
    assert manifest.loc[2, "audit_suggested_label"] == plants["truth"][2]
    page = (out / "audit.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script src" not in page and "<link" not in page
    for title in ("Label issues", "Train/test leakage", "Duplicates with conflicting labels", "Outliers"):
        assert title in page
    assert page.count('class="thumb"') == len(suspects)


def test_cleaned_manifest_round_trips_through_extract(tmp_path):
    from featx.extract.job import extract
    from featx.store import FeatureStore

    images = make_class_folder(tmp_path / "images", per_class=6, splits=("train", "val"))
    # the same file in two classes: an exact duplicate with conflicting labels
    shutil.copy(images / "train" / "cats" / "cats_00.png", images / "train" / "dogs" / "copy_of_cat.png")
    store = extract(images, tmp_path / "store", **TINY)
    out = tmp_path / "audit"
    suspects = audit(store, out=out, write_manifest=True, calibrate="distribution")
    copy = str(images / "train" / "dogs" / "copy_of_cat.png")
    assert "conflicting_duplicate" in set(suspects.loc[suspects["path"] == copy, "kind"])
    again = extract(out / "manifest.csv", tmp_path / "store2", **TINY)
    before, after = FeatureStore.open(tmp_path / "store").meta, again.meta
    for column in ("path", "label", "split", "sha256"):
        assert list(after[column]) == list(before[column]), column
    page = (out / "audit.html").read_text()
    assert "data:image/jpeg;base64," in page and "http://" not in page and "https://" not in page


def test_copy_calibration_uses_the_store_extractor(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=8)
    store = extract_tiny(images, tmp_path / "store")
    summary = run_audit(store, calibrate="copies", learning_curve=False).summary["near_duplicates"]
    assert summary["method"] == "copies" and summary["copies"] == 16
    expected = max(summary["copy_similarity"]["min"], summary["distribution_rule"])
    assert summary["threshold"] == pytest.approx(min(expected, 0.9999))
    copies = summary["copy_similarity"]
    assert copies["min"] <= copies["median"] <= copies["max"]


def extract_tiny(images, out):
    from featx.extract.job import extract

    return extract(images, out, **TINY)


def test_auto_calibration_falls_back_without_images(planted):
    store, _ = planted
    near = run_audit(store, learning_curve=False).summary["near_duplicates"]
    assert near["method"] == "distribution" and near["why_not_copies"]
    assert 0.9 <= near["threshold"] < 1


def test_train_shallow_warns_about_heldout_near_duplicates(tmp_path):
    from featx.learn.classify import train_shallow

    X, y = blobs(n_per_class=30, classes=2, dim=16, seed=4)
    splits = (["train"] * 20 + ["val"] * 10) * 2
    for val_row, train_row in ((20, 0), (21, 1), (50, 30)):
        X[val_row] = X[train_row] + np.random.default_rng(val_row).normal(0, 0.005, 16)
    store = synthetic_store(tmp_path / "store", X, list(y), splits)
    assert heldout_near_duplicates(X[np.array(splits) == "train"], X[np.array(splits) == "val"])["count"] == 3
    with pytest.warns(UserWarning, match=r"3 of 20 held-out images have a near-duplicate in the training rows"):
        train_shallow(store, learning_curve=False)
    clean_X, _ = blobs(n_per_class=30, classes=2, dim=16, seed=4)
    clean = synthetic_store(tmp_path / "clean", clean_X, list(y), splits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_shallow(clean, learning_curve=False)


def test_doubling_estimate_recovers_a_power_law():
    n = np.array([20, 40, 60, 80, 120, 160])
    points = [{"n": int(v), "accuracy": 1 - 0.5 * v ** -0.5, "std": 0.0, "repeats": 3, "n_eval": 100000} for v in n]
    found = doubling_estimate(points)
    assert found["exponent"] == pytest.approx(0.5, abs=1e-6)
    expected = 0.5 * 160 ** -0.5 * (1 - 2 ** -0.5)
    assert found["gain"] == pytest.approx(expected, rel=1e-6)
    low, high = found["gain_interval_90"]
    assert low <= found["gain"] <= high
    assert "160 → 320" in found["sentence"]
    flat = [{"n": int(v), "accuracy": 0.9, "std": 0.0, "repeats": 3, "n_eval": 100000} for v in n]
    assert "unlikely to help much" in doubling_estimate(flat)["sentence"]
    assert not doubling_estimate(points[:2])["available"]


@pytest.mark.parametrize("options,match", [
    ({"classifier": "forest"}, r"unknown --classifier 'forest' for the audit; allowed: logreg, linear-svm"),
    ({"threshold": 1.5}, r"--threshold 1.5 is a cosine similarity: give a value in \(0, 1\]"),
    ({"calibrate": "magic"}, r"unknown --calibrate 'magic'; allowed: auto, copies, distribution"),
    ({"k": 0}, r"-k 0 must be at least 1"),
    ({"write_manifest": True}, r"--write-manifest needs an output folder"),
])
def test_bad_options_are_clear_errors(planted, options, match):
    store, _ = planted
    with pytest.raises(InputError, match=match):
        audit(store, learning_curve=False, **options)


def test_unlabelled_store_still_gets_duplicates_and_outliers(tmp_path):
    X, _ = blobs(n_per_class=20, classes=2, dim=16, seed=5)
    X[3] = X[2] + 0.001
    store = synthetic_store(tmp_path / "store", X, [None] * len(X), [None] * len(X))
    result = run_audit(store, calibrate="distribution")
    assert not result.summary["label_issues"]["available"]
    assert "duplicate" in kinds_of(result.suspects, 3)
    assert "labels" in result.summary["enough_data"]["sentence"]


def test_cli_audit(planted, tmp_path):
    from featx.cli import app

    store, _ = planted
    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(store.path), "-o", str(tmp_path / "a"), "--calibrate", "distribution",
                                 "--write-manifest"])
    assert result.exit_code == 0, result.output
    assert "Label issues" in result.output and "enough data?" in result.output
    assert (tmp_path / "a" / "manifest.csv").is_file()
    bad = runner.invoke(app, ["audit", str(store.path), "-o", str(tmp_path / "b"), "--classifier", "forest"])
    assert bad.exit_code == 2 and "'forest' is not one of" in bad.output and "'logreg', 'linear-svm'" in bad.output


def test_recipe_audit_step_and_report_section(tmp_path):
    from featx.recipes.run import run_recipe

    make_class_folder(tmp_path / "images", per_class=8, splits=("train", "val"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\noutput: out\nextract:\n  inputs: [images]\n  model: resnet18\n  weights: random\n"
                      "  image_size: 64\n  workers: 0\ntrain_shallow:\n  cv: 3\naudit:\n  calibrate: distribution\n"
                      "  write_manifest: true\nreport: {}\n")
    messages = []
    produced = run_recipe(recipe, say=messages.append)
    assert produced["audit"].is_file() and (produced["audit"].parent / "manifest.csv").is_file()
    page = produced["report"].read_text()
    assert "Data audit" in page and "audit/audit.html" in page
    record = json.loads((produced["audit"].parent / "audit.json").read_text())
    assert "train-shallow's learning curve" in record["summary"]["enough_data"]["source"]
    messages.clear()
    run_recipe(recipe, say=messages.append)
    assert "[audit] unchanged, skipped" in messages
