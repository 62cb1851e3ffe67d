"""The default representation: several depths stored in one pass, an honest choice among layers,
their concatenation and the raw pixels, and the raw-pixel baseline in every report."""

import numpy as np
from conftest import blobs, make_feature_store

from featx.learn.classify import train_shallow
from featx.learn.model import ShallowModel
from featx.learn.representation import CONCAT, Representation, is_grey, model_input


def grey_pixels(signal: np.ndarray, rng, side: int = 32) -> np.ndarray:
    """(N, 3 * side²) pixels in [0, 1] whose three channels are equal, carrying `signal` in the first values."""
    n = len(signal)
    grey = rng.uniform(0, 1, (n, side * side)).astype(np.float32)
    grey[:, :signal.shape[1]] = signal
    return np.tile(grey, (1, 3))


def test_stage_ends_are_the_last_block_of_each_resolution_below_the_stem():
    from featx.backbones.layers import stage_ends

    shapes = {"stem": (8, 112, 112), "b1.0.conv": (16, 56, 56), "b1.0.add": (16, 56, 56),
              "b2.0.expand": (64, 56, 56), "b2.0.dw": (64, 28, 28), "b2.0.add": (24, 28, 28),
              "b3.0.dw": (96, 14, 14), "b3.0.add": (40, 14, 14), "b4.0.add": (80, 7, 7), "head": (1280, 7, 7),
              "pool": (1280, 1, 1), "flatten": (1280,)}
    # b2.0.expand runs at 56×56 but belongs to the block that halves the resolution; head is as wide as the final
    assert stage_ends(shapes, "flatten") == ["b1.0.add", "b2.0.add", "b3.0.add", "b4.0.add"]
    assert stage_ends(shapes, "flatten", count=2) == ["b3.0.add", "b4.0.add"]
    assert stage_ends({"tokens": (197, 768), "cls": (768,)}, "cls") == []


def test_default_extraction_stores_every_layer_in_one_forward_pass(image_folder):
    from featx.backbones.layers import LayerTap
    from featx.extract.extractor import Extractor

    extractor = Extractor("resnet18", weights="random", batch_size=16, workers=0, device="cpu")
    assert extractor.layers[0] == "flatten" and extractor.layers[-1] == "pixels" and len(extractor.layers) == 5
    calls = []
    original = LayerTap.forward

    def counted(self, x):
        calls.append(len(x))
        return original(self, x)

    LayerTap.forward = counted
    try:
        features, meta = extractor.features_of(sorted(str(p) for p in image_folder.rglob("*.png"))[:6])
    finally:
        LayerTap.forward = original
    assert calls == [6]  # six images, one batch, one pass for the five layers
    assert set(features) == set(extractor.layers)
    pixels = features["pixels"]
    assert pixels.shape == (6, 3 * 32 * 32) and 0 <= pixels.min() <= pixels.max() <= 1
    assert all(np.isfinite(v).all() for v in features.values())


def test_final_alone_and_pixels_alone(image_folder):
    from featx.extract.extractor import Extractor

    final = Extractor("resnet18", weights="random", layers=["final"], workers=0, device="cpu")
    assert final.layers == ["flatten"]
    pixels = Extractor("resnet18", weights="random", layers=["pixels"], workers=0, device="cpu")
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[:2]
    features, _ = pixels.features_of(paths)
    both, _ = Extractor("resnet18", weights="random", layers=["final", "pixels"], workers=0,
                        device="cpu").features_of(paths)
    np.testing.assert_array_equal(features["pixels"], both["pixels"])


def test_concatenation_normalises_each_layer_and_grey_pixels_keep_one_channel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 100, (5, 4)), rng.normal(0, 0.01, (5, 2))
    out = Representation(("a", "b"), (4, 2)).transform(model_input({"a": a, "b": b}, ["a", "b"]))
    np.testing.assert_allclose(np.linalg.norm(out[:, :4], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 4:], axis=1), 1, rtol=1e-5)
    pixels = grey_pixels(np.zeros((5, 1)), rng)
    assert is_grey(pixels) and not is_grey(rng.uniform(0, 1, (5, 3 * 32 * 32)))
    assert Representation(("pixels",), (3072,), grey=True).transform(pixels).shape == (5, 1024)


def test_choice_finds_the_informative_layer_and_predict_reads_only_it(tmp_path):
    rng = np.random.default_rng(1)
    X, y = blobs(n_per_class=40, classes=3, dim=16, spread=1.5)
    layers = {"final": rng.normal(size=(len(y), 24)), "mid": X, "pixels": grey_pixels(rng.normal(size=(len(y), 4)),
                                                                                          rng)}
    store = make_feature_store(tmp_path / "s", layers, y)
    model = train_shallow(store, cv=3, learning_curve=False, out=tmp_path / "m")
    chosen = model.report["representation"]
    assert chosen["representation"] in ("mid", CONCAT) and model.report["accuracy"] > 0.9
    assert {row["representation"] for row in chosen["tried"]} == {"final", "mid", CONCAT, "pixels"}
    loaded = ShallowModel.load(tmp_path / "m")
    assert loaded.layers == chosen["layers"] and "pixels" not in loaded.layers
    X_model = model_input({name: store.features(name) for name in loaded.layers}, loaded.layers)
    np.testing.assert_array_equal(loaded.predict(X_model), model.predict(X_model))
    baseline = model.report["baseline"]
    assert baseline["available"] and baseline["difference"] > 0.3 and baseline["warning"] is None
    assert "beat the raw-pixel baseline" in (tmp_path / "m" / "report" / "report.md").read_text()


def test_pixels_win_is_said_and_warned(tmp_path):
    rng = np.random.default_rng(2)
    X, y = blobs(n_per_class=40, classes=3, dim=8, spread=1.0)
    layers = {"final": rng.normal(size=(len(y), 16)), "mid": rng.normal(size=(len(y), 8)),
              "pixels": grey_pixels((X - X.min()) / (X.max() - X.min()), rng)}
    store = make_feature_store(tmp_path / "s", layers, y)
    model = train_shallow(store, cv=3, learning_curve=False, report_dir=tmp_path / "r")
    assert model.report["representation"]["representation"] == "pixels" and model.layers == ["pixels"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Raw-pixel baseline" in report and "> **Warning:** The raw pixels won the choice" in report
    assert "`featx probe`" in report and "--resize full" in report


def test_the_choice_does_not_leak_on_random_labels(tmp_path):
    """Selection over layers, classifiers and pixels happens inside every outer fold: on labels that
    carry no signal the reported score stays at chance."""
    rng = np.random.default_rng(3)
    n = 120
    layers = {"final": rng.normal(size=(n, 32)), "mid": rng.normal(size=(n, 16)),
              "pixels": grey_pixels(rng.uniform(size=(n, 8)), rng)}
    y = rng.permutation(np.repeat(["a", "b"], n // 2))
    model = train_shallow(make_feature_store(tmp_path / "s", layers, y), cv=4, learning_curve=False, baseline=False)
    standard_error = np.sqrt(0.25 / n)
    assert abs(model.report["accuracy"] - 0.5) <= 3 * standard_error


def test_fixed_layer_and_classifier_skip_the_choice(tmp_path):
    rng = np.random.default_rng(4)
    X, y = blobs(n_per_class=20, classes=2, dim=8)
    store = make_feature_store(tmp_path / "s", {"final": X, "mid": rng.normal(size=(len(y), 4))}, y)
    model = train_shallow(store, layer="mid", classifier="logreg", cv=3, learning_curve=False)
    assert model.layers == ["mid"] and model.options["classifier"] == "logreg"
    assert model.report["representation"]["tried"] == []
    fixed = train_shallow(store, tune=False, cv=3, learning_curve=False)
    assert fixed.layers == ["final"] and fixed.options["classifier"] == "linear-svm"
    both = train_shallow(store, layer=CONCAT, classifier="linear-svm", cv=3, learning_curve=False)
    assert both.layers == ["final", "mid"]
    assert "no 'pixels' layer" in both.report["baseline"]["sentence"]


def test_an_rbf_winner_scored_on_every_row_is_not_tuned_again(monkeypatch):
    """When the last round of the choice already used every row, the RBF winner's tuning is finished
    (refit at the chosen strength) rather than walked again: same model, one walk fewer."""
    from featx.learn.select import AutoShallow
    from featx.learn.tune import TunedPipeline

    X = np.random.default_rng(5).normal(size=(90, 6)).astype(np.float32)
    radius = np.linalg.norm(X, axis=1)
    y = np.where(radius < np.quantile(radius, 1 / 3), "in", np.where(radius < np.quantile(radius, 2 / 3), "mid", "out"))
    walks = []
    walk = TunedPipeline._walk
    monkeypatch.setattr(TunedPipeline, "_walk", lambda self, *a, **k: walks.append(1) or walk(self, *a, **k))
    auto = AutoShallow(layers=("final",), dims=(6,), representations=("final",),
                       classifiers=("linear-svm", "rbf-svm"), cv=3).fit(X, y)  # rings: no line separates them
    assert auto.choice_.classifier == "rbf-svm"
    assert len(walks) == 1  # 90 rows: one round on every row, then the winner is refitted, not re-tuned
    from sklearn.base import clone

    again = clone(auto.tuned_).set_params(refit=True).fit(X, y)  # tuned from scratch
    assert again.best_value_ == auto.tuned_.best_value_
    np.testing.assert_allclose(again.decision_function(X), auto.tuned_.decision_function(X))


def test_the_pixel_baseline_from_the_choice_equals_the_pixels_scored_alone(tmp_path, monkeypatch):
    """The baseline is read from the fits that chose (their choice among the pixels alone, reusing
    the scores already made): the same figure as evaluating the pixels on their own, with fewer fits."""
    from featx.learn import classify

    rng = np.random.default_rng(6)
    X, y = blobs(n_per_class=30, classes=3, dim=8, spread=2.0)
    layers = {"final": X + rng.normal(size=X.shape), "pixels": grey_pixels((X - X.min()) / (X.max() - X.min()), rng)}
    store = make_feature_store(tmp_path / "s", layers, y)
    shared = train_shallow(store, cv=3, learning_curve=False).report["baseline"]
    monkeypatch.setattr(classify.Training, "baseline_evaluation", lambda self, result: None)
    alone = train_shallow(store, cv=3, learning_curve=False).report["baseline"]
    assert shared["available"] and shared["pixels"] == alone["pixels"] == "32×32 grey pixels"
    for key in ("accuracy", "balanced_accuracy", "difference", "difference_std", "sentence"):
        assert shared[key] == alone[key], key
