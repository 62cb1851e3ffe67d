import json

import numpy as np
import pytest

from featx.classify import CLASSIFIERS, ShallowModel, train_shallow
from featx.errors import ConfigMismatchError, InputError, IntegrityError, StoreError
from featx.reduce import ProductQuantizer
from tests.conftest import SYNTHETIC_CONFIG, blobs, make_feature_store


@pytest.fixture
def blob_store(tmp_path):
    X, y = blobs()
    return make_feature_store(tmp_path / "store", X, y)


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_classifier_learns_separable_blobs(blob_store, classifier):
    model = train_shallow(blob_store, classifier=classifier, cv=3, learning_curve=False)
    assert model.report["accuracy"] >= 0.9, model.report["accuracy"]
    assert model.report["n_eval"] == 90 and "3-fold" in model.report["evaluation"]


def test_report_files_and_keys(blob_store, tmp_path):
    train_shallow(blob_store, out=tmp_path / "model")
    report = json.loads((tmp_path / "model" / "report" / "report.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "n_train", "n_eval", "classes", "config"):
        assert key in report
    assert report["classes"] == ["c0", "c1", "c2"] and report["reduction"] is None
    assert [p["per_class"] for p in report["learning_curve"]][:4] == [1, 2, 5, 10]
    for name in ("confusion_matrix.png", "learning_curve.png", "report.md"):
        assert (tmp_path / "model" / "report" / name).stat().st_size > 0


def test_held_out_split_is_used(tmp_path):
    X, y = blobs(n_per_class=20)
    splits = ["train" if i % 4 else "val" for i in range(len(X))]
    model = train_shallow(make_feature_store(tmp_path / "s", X, y, splits), learning_curve=False)
    assert model.report["n_train"] == 45 and model.report["n_eval"] == 15
    assert "held-out" in model.report["evaluation"]


def test_save_load_roundtrip_and_tamper_refusal(blob_store, tmp_path):
    model = train_shallow(blob_store, out=tmp_path / "m", learning_curve=False)
    X = blob_store.features()
    loaded = ShallowModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.classes == ["c0", "c1", "c2"] and loaded.layer == "vec"
    data = bytearray((tmp_path / "m" / "model.skops").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m" / "model.skops").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="was changed or truncated"):
        ShallowModel.load(tmp_path / "m")


def test_model_refuses_features_of_another_extractor(blob_store, tmp_path):
    model = train_shallow(blob_store, learning_curve=False)
    other = dict(SYNTHETIC_CONFIG, pool="max")
    with pytest.raises(ConfigMismatchError, match="pool"):
        model.check_features(other, "vec")
    with pytest.raises(ConfigMismatchError, match="layer 'vec'"):
        model.check_features(SYNTHETIC_CONFIG, "other")


def test_nothing_is_written_when_training_fails(tmp_path):
    X, y = blobs()
    store = make_feature_store(tmp_path / "s", X, ["only"] * len(X))
    with pytest.raises(InputError, match="one class"):
        train_shallow(store, out=tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".tmp-*"))


def test_bad_inputs_are_clear(tmp_path):
    X, y = blobs(n_per_class=4)
    y = y.astype(object)
    y[0] = "lonely"
    with pytest.raises(InputError, match=r"\['lonely'\] have a single image"):
        train_shallow(make_feature_store(tmp_path / "a", X, y))
    X2, y2 = blobs()
    X2[3, 0] = np.nan
    X2[5, 1] = -5.6e29  # an overflow, not a feature
    guarded = make_feature_store(tmp_path / "b", X2, y2)  # such rows become error rows when committed
    assert list(guarded.meta["status"].iloc[[3, 5]]) == ["non_finite", "non_finite"]
    assert guarded.ok.sum() == len(X2) - 2
    assert train_shallow(guarded, learning_curve=False).report["n_train"] == len(X2) - 2
    with pytest.raises(InputError, match="no labelled images"):
        train_shallow(make_feature_store(tmp_path / "c", X2, [None] * len(X2)))
    store = make_feature_store(tmp_path / "d", *blobs())
    with pytest.raises(StoreError, match="layer 'nope' is not in store"):
        train_shallow(store, layer="nope")
    with pytest.raises(InputError, match="allowed forms"):
        train_shallow(store, reduce="svd:3")
    with pytest.raises(InputError, match="must be an integer in 1..32"):
        train_shallow(store, reduce="pca:500")
    with pytest.raises(InputError, match="must divide the feature dimension 32"):
        train_shallow(store, reduce="pq:5")
    with pytest.raises(InputError, match="allowed: linear-svm"):
        train_shallow(store, classifier="svm")


def test_cv_larger_than_smallest_class_is_reduced_with_warning(tmp_path):
    X, y = blobs(n_per_class=3)
    with pytest.warns(UserWarning, match="using 3 folds"):
        model = train_shallow(make_feature_store(tmp_path / "s", X, y), cv=10, learning_curve=False)
    assert "3-fold" in model.report["evaluation"]


def test_nested_search_reports_held_out_score_and_params(blob_store):
    model = train_shallow(blob_store, search=True, reduce="pca:8", cv=3, learning_curve=False)
    assert "nested" in model.report["evaluation"]
    assert set(model.report["best_params"]) == {"classify__C", "reduce__n_components"}
    assert model.report["reduction"]["components"] in (4, 8, 16)


def test_balance_options(tmp_path):
    X, y = blobs(n_per_class=40)
    keep = np.r_[0:40, 40:80, 80:88]  # class c2 has 8 images
    store = make_feature_store(tmp_path / "s", X[keep], y[keep])
    for balance in ("class-weight", "smote"):
        assert train_shallow(store, balance=balance, learning_curve=False).report["balanced_accuracy"] > 0.9
    with pytest.raises(InputError, match="knn"):
        train_shallow(store, classifier="knn", balance="class-weight")


def test_product_quantization_reports_compression(tmp_path):
    X, y = blobs(n_per_class=150, dim=64)
    model = train_shallow(make_feature_store(tmp_path / "s", X, y), reduce="pq:8", cv=3, learning_curve=False)
    reduction = model.report["reduction"]
    assert reduction["compression_ratio"] == 32 and reduction["bytes_per_vector"] == 8
    assert abs(reduction["accuracy_change"] - (model.report["accuracy"] - reduction["accuracy_without_reduction"])) < 1e-9


def test_pq_transformer_invariants():
    X = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    original = X.copy()
    pq = ProductQuantizer(m=4, seed=1)
    fitted = pq.fit_transform(X)
    np.testing.assert_array_equal(fitted, pq.transform(X))
    np.testing.assert_array_equal(X, original)  # the caller's array is untouched
    assert pq.encode(X).shape == (400, 4) and np.mean((fitted - X) ** 2) < np.mean(X ** 2)
