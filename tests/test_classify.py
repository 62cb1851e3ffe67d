import json
import warnings

import numpy as np
import pytest

from featx.errors import ConfigMismatchError, InputError, IntegrityError, StoreError
from featx.learn.classify import CLASSIFIERS, DEFAULT_CLASSIFIER, ShallowModel, train_shallow
from featx.learn.reduce import ProductQuantizer
from featx.learn.tune import STRENGTHS, cv_splitter
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
    assert loaded.classes == ["c0", "c1", "c2"] and loaded.layers == ["vec"]
    data = bytearray((tmp_path / "m" / "model.skops").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m" / "model.skops").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="was changed or truncated"):
        ShallowModel.load(tmp_path / "m")


def test_model_refuses_features_of_another_extractor(blob_store, tmp_path):
    model = train_shallow(blob_store, learning_curve=False)
    other = dict(SYNTHETIC_CONFIG, pool="max")
    with pytest.raises(ConfigMismatchError, match="pool"):
        model.check_features(other, ["vec"])
    with pytest.raises(ConfigMismatchError, match=r"reads layer\(s\) \['vec'\]"):
        model.check_features(SYNTHETIC_CONFIG, ["other"])


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
    X, y = blobs(n_per_class=200, dim=64)  # inner folds of the tuning need >= 256 rows for PQ
    model = train_shallow(make_feature_store(tmp_path / "s", X, y), reduce="pq:8", cv=3, learning_curve=False)
    reduction = model.report["reduction"]
    assert reduction["compression_ratio"] == 32 and reduction["bytes_per_vector"] == 8
    expected_change = model.report["accuracy"] - reduction["accuracy_without_reduction"]
    assert abs(reduction["accuracy_change"] - expected_change) < 1e-9


def test_pq_transformer_invariants():
    X = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    original = X.copy()
    pq = ProductQuantizer(m=4, seed=1)
    fitted = pq.fit_transform(X)
    np.testing.assert_array_equal(fitted, pq.transform(X))
    np.testing.assert_array_equal(X, original)  # the caller's array is untouched
    assert pq.encode(X).shape == (400, 4) and np.mean((fitted - X) ** 2) < np.mean(X ** 2)


# --- tuning (issue 9) ----------------------------------------------------------------------------

def test_tuned_score_on_random_labels_stays_at_chance(tmp_path):
    """Tuning that saw the evaluated rows would pick the luckiest C and inflate the score."""
    rng = np.random.default_rng(3)
    n, classes = 150, 3
    X = rng.normal(size=(n, 64)).astype(np.float32)
    y = np.array([f"c{k}" for k in rng.integers(0, classes, n)])
    model = train_shallow(make_feature_store(tmp_path / "s", X, y), cv=3, learning_curve=False)
    chance, se = 1 / classes, np.sqrt((1 / classes) * (1 - 1 / classes) / n)
    assert model.report["tuning"]["enabled"] and "nested" in model.report["evaluation"]
    assert abs(model.report["accuracy"] - chance) <= 3 * se, model.report["accuracy"]


def test_chosen_strength_is_in_the_grid_and_curve_is_drawn(blob_store, tmp_path):
    model = train_shallow(blob_store, classifier=DEFAULT_CLASSIFIER, cv=3, out=tmp_path / "m", learning_curve=False)
    tuning = model.report["tuning"]
    assert tuning["param"] == STRENGTHS[DEFAULT_CLASSIFIER].param
    assert tuning["chosen"] in STRENGTHS[DEFAULT_CLASSIFIER].grid and tuning["chosen"] in tuning["grid"]
    assert min(tuning["grid"]) <= 1e-6 and max(tuning["grid"]) >= 1e2  # wide enough for linear models
    # the saved model uses the chosen value, and each outer fold chose its own from the same grid
    assert model.pipeline.named_steps["classify"].C == tuning["chosen"]
    assert len(tuning["chosen_per_outer_fold"]) == 3 and set(tuning["chosen_per_outer_fold"]) <= set(tuning["grid"])
    walked = [p for p in tuning["validation_curve"] if not p["skipped"]]
    assert max(walked, key=lambda p: p["cv_mean"])["value"] == tuning["chosen"]
    assert all(0 <= p["train_mean"] <= 1 and 0 <= p["cv_mean"] <= 1 for p in walked)
    report = tmp_path / "m" / "report"
    assert (report / "validation_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"**{tuning['chosen']:g}**" in (report / "report.md").read_text()


def test_strong_regularisation_is_chosen_when_features_outnumber_rows(tmp_path):
    """Few rows, many noisy dimensions: C = 1 overfits, the tuning picks a much smaller C."""
    X, y = blobs(n_per_class=15, classes=2, dim=400, spread=6.0, seed=1)
    model = train_shallow(make_feature_store(tmp_path / "s", X, y), classifier="linear-svm", cv=3,
                          learning_curve=False)
    assert model.report["tuning"]["chosen"] < 1.0


def test_no_tune_keeps_fixed_values(blob_store):
    model = train_shallow(blob_store, tune=False, cv=3, learning_curve=False)
    assert model.pipeline.named_steps["classify"].C == 1.0
    assert model.report["tuning"] == {"enabled": False, "param": "classify__C", "label": "C", "fixed": 1.0}
    assert "nested" not in model.report["evaluation"]
    knn = train_shallow(blob_store, classifier="knn", tune=False, cv=3, learning_curve=False)
    assert knn.pipeline.named_steps["classify"].n_neighbors == 5
    with pytest.raises(InputError, match="--search .* --no-tune"):
        train_shallow(blob_store, tune=False, search=True)


def test_per_fold_spread_is_reported(blob_store, tmp_path):
    model = train_shallow(blob_store, cv=3, learning_curve=False, out=tmp_path / "m")
    report = model.report
    folds = report["fold_scores"]
    assert len(folds) == 3 and "3 outer folds" in report["spread"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert report[f"{key}_std"] == pytest.approx(np.std([f[key] for f in folds]))
    md = (tmp_path / "m" / "report" / "report.md").read_text()
    assert f"| accuracy | {report['accuracy']:.4f} ± {report['accuracy_std']:.4f} |" in md


def test_held_out_score_has_bootstrap_spread(tmp_path):
    X, y = blobs(n_per_class=20, spread=4.0)
    splits = ["train" if i % 4 else "val" for i in range(len(X))]
    report = train_shallow(make_feature_store(tmp_path / "s", X, y, splits), learning_curve=False).report
    assert "bootstrap" in report["spread"] and 0 < report["accuracy_std"] < 0.2


def test_warnings_go_into_the_report(blob_store, tmp_path, monkeypatch):
    """A solver's warning (here LinearSVC's ConvergenceWarning, forced so the test does not depend on
    solver details) is counted in the report and listed in report.md, not silenced."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    original = LinearSVC.fit

    def fit_with_warning(self, X, y, sample_weight=None):
        warnings.warn("Liblinear failed to converge, increase the number of iterations.", ConvergenceWarning,
                      stacklevel=2)
        return original(self, X, y, sample_weight)

    monkeypatch.setattr(LinearSVC, "fit", fit_with_warning)
    model = train_shallow(blob_store, classifier="linear-svm", tune=False, cv=3, learning_curve=False,
                          out=tmp_path / "m")
    caught = [w for w in model.report["warnings"] if w["category"] == "ConvergenceWarning"]
    assert len(caught) == 1 and caught[0]["count"] == 4  # 3 outer folds + the final fit
    md = (tmp_path / "m" / "report" / "report.md").read_text()
    assert "## Warnings" in md and "| 4 | ConvergenceWarning | Liblinear failed to converge" in md


def test_group_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(12)], rng.integers(3, 9, 12))
    y = np.array([f"c{i % 2}" for i in range(len(groups))])
    splitter, folds = cv_splitter(4, y, groups, seed=0)
    seen = {}
    for fold, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        assert not set(groups[train]) & set(groups[test])
        for g in set(groups[test]):
            assert g not in seen, f"group {g} in folds {seen.get(g)} and {fold}"
            seen[g] = fold
    assert folds == 4 and set(seen) == set(groups)


def test_group_cv_is_used_when_the_store_has_groups(tmp_path):
    """Each group (say, a patient) has its own look and one label: row-wise CV learns to recognise
    the group and scores high; group CV scores what a new group would get (labels are random per group)."""
    rng = np.random.default_rng(0)
    n_groups, per_group = 16, 8
    offsets = rng.normal(0, 5, (n_groups, 32))
    group_label = np.array([f"c{k}" for k in rng.permutation(np.arange(n_groups) % 2)])
    group_of_row = np.repeat(np.arange(n_groups), per_group)
    X = offsets[group_of_row] + rng.normal(0, 0.5, (len(group_of_row), 32))
    y = group_label[group_of_row]
    groups = [f"patient-{g}" for g in group_of_row]
    plain = train_shallow(make_feature_store(tmp_path / "a", X, y), classifier="knn", cv=4, learning_curve=False)
    grouped = train_shallow(make_feature_store(tmp_path / "b", X, y, groups=groups), classifier="knn", cv=4,
                            learning_curve=False)
    assert plain.report["accuracy"] > 0.9 and plain.report["groups"] is None
    assert grouped.report["accuracy"] < 0.75 and grouped.report["groups"] == {"column": "group", "n_groups": 16}
    assert "group 4-fold" in grouped.report["evaluation"]


@pytest.mark.parametrize("classifier", ["linear-svm", "logreg"])
def test_parallel_tuning_equals_serial_tuning(classifier):
    """The inner folds run on threads: the curve, the choice and the refitted model must not
    depend on how many (warm-started models keep one per fold, so no thread sees another's)."""
    from sklearn.base import clone

    from featx.learn.classify import build_pipeline
    from featx.learn.tune import TunedPipeline

    X, y = blobs(n_per_class=40, classes=3, dim=32, spread=5.0, seed=2)
    strength = STRENGTHS[classifier]
    pipeline = build_pipeline(classifier=classifier, n_samples=len(y), n_features=X.shape[1], smallest_class=40,
                              tuned=True)
    fitted = {}
    for n_jobs in (1, 3):
        fitted[n_jobs] = TunedPipeline(pipeline=clone(pipeline), param=strength.param, grid=strength.grid,
                                       warm_start=strength.warm_start, stop_early=strength.stop_early, cv=4,
                                       n_jobs=n_jobs).fit(X, y)
    assert fitted[1].curve_ == fitted[3].curve_
    assert fitted[1].best_value_ == fitted[3].best_value_
    np.testing.assert_allclose(fitted[1].decision_function(X), fitted[3].decision_function(X), rtol=1e-6, atol=1e-9)


def test_outer_folds_on_threads_give_the_same_report_twice(blob_store):
    first = train_shallow(blob_store, cv=3, learning_curve=False).report
    second = train_shallow(blob_store, cv=3, learning_curve=False).report
    assert first["tuning"]["chosen_per_outer_fold"] == second["tuning"]["chosen_per_outer_fold"]
    assert first["fold_scores"] == second["fold_scores"] and first["accuracy"] == second["accuracy"]


def test_held_out_learning_curve_ends_at_the_headline_score(tmp_path):
    """The curve's last point trains on every training row: it is the final model's held-out score."""
    X, y = blobs(n_per_class=24, classes=3, spread=6.0)
    splits = ["val" if i % 3 == 0 else "train" for i in range(len(X))]  # 16 train / 8 val per class
    report = train_shallow(make_feature_store(tmp_path / "s", X, y, splits)).report
    curve = report["learning_curve"]
    assert [p["per_class"] for p in curve] == [1, 2, 5, 10, 16]
    assert curve[-1]["accuracy"] == report["accuracy"] and curve[-1]["repeats"] == 1
    assert all(p["repeats"] == 5 for p in curve if p["per_class"] <= 5)


def _scripted(script: dict, full_rows: int | None = None):
    """A nearest-centroid classifier whose behaviour per C is scripted: 'noisy' uses only the first
    feature, 'constant' answers the first class, 'good' uses every feature; with `full_rows`, C = 1e-6
    answers one class when fitted on that many rows (a refit that cannot reproduce its inner fits)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scripted(ClassifierMixin, BaseEstimator):
        def __init__(self, C=1.0):
            self.C = C

        def fit(self, X, y):
            self.classes_ = np.unique(y)
            mode = script[self.C]
            if full_rows is not None and self.C == 1e-6 and len(y) >= full_rows:
                mode = "constant"
            self.mode_ = mode
            cols = slice(0, 1) if mode == "noisy" else slice(None)
            self.cols_ = cols
            self.centroids_ = np.stack([X[y == c][:, cols].mean(0) for c in self.classes_])
            return self

        def predict(self, X):
            if self.mode_ == "constant":
                return np.full(len(X), self.classes_[0])
            d = ((X[:, self.cols_][:, None, :] - self.centroids_[None]) ** 2).sum(-1)
            return self.classes_[d.argmin(1)]

    return Scripted()


def _tuned(estimator, grid):
    from sklearn.pipeline import Pipeline

    from featx.learn.tune import TunedPipeline

    return TunedPipeline(pipeline=Pipeline([("classify", estimator)]), param="classify__C", grid=grid,
                         stop_early=True, cv=3)


def test_walk_goes_on_past_models_that_answer_one_class():
    """Points whose training score sits at chance (too strongly regularised) are no evidence that
    the peak is passed: the walk continues to the real peak beyond them."""
    X, y = blobs(n_per_class=30, classes=2, dim=8, spread=1.0, seed=4)
    grid = (1e-6, 1e-5, 1e-4, 1e-3)
    script = {1e-6: "noisy", 1e-5: "constant", 1e-4: "constant", 1e-3: "good"}
    fitted = _tuned(_scripted(script), grid).fit(X, y)
    walked = [p["value"] for p in fitted.curve_ if not p["skipped"]]
    assert walked == list(grid)
    assert fitted.best_value_ == 1e-3


def test_a_refit_that_cannot_reproduce_its_inner_fits_is_replaced_by_the_next_best():
    X, y = blobs(n_per_class=30, classes=2, dim=8, spread=1.0, seed=4)
    grid = (1e-6, 1e-3)
    script = {1e-6: "good", 1e-3: "good"}  # a tie: the stronger regularisation would win
    with pytest.warns(UserWarning, match=r"C=1e-06 scored .* its refit on all rows fits them much worse"):
        fitted = _tuned(_scripted(script, full_rows=len(y)), grid).fit(X, y)
    assert fitted.best_value_ == 1e-3 and fitted.pipeline_[-1].mode_ == "good"
    assert [r["value"] for r in fitted.refit_rejected_] == [1e-6]
