"""featx probe: candidates, one-pass multi-pooling stores, honest scores, outputs, recipe round trip,
budget, errors, and the domain-shift diagnostic (real weights: slow)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featx
from featx.api import probe
from featx.errors import InputError, UnknownNameError
from featx.probe import scoring as probe_score
from featx.probe.candidates import auto_layers, stage_outputs
from featx.probe.probe import parse_budget
from tests.conftest import HYMENOPTERA, TINY, make_class_folder, needs_hymenoptera

# TINY as probe options (probe has no `model`/`weights` singular, and shows no progress in tests);
# featx's defaults and the pixel baseline are scored in the one test that checks them
PROBE_TINY = dict(models=["resnet18"], weights="random", image_size=64, workers=0, batch_size=8, progress=False,
                  classifiers=["logreg"], shift_images=8, baselines=False)
LAYERS = ["layer2", "layer4"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One probe run, shared: 2 layers × 2 poolings of the tiny model on separable images."""
    root = tmp_path_factory.mktemp("probe")
    images = make_class_folder(root / "images", per_class=8)
    frame = probe(images, root / "out", layers=LAYERS, pools="avg,gem", **PROBE_TINY)
    return root, images, frame


def test_probe_ranks_every_candidate_and_writes_its_outputs(probed):
    root, _, frame = probed
    assert sorted(zip(frame["layer"], frame["pool"])) == sorted((layer, p) for layer in LAYERS for p in ("avg", "gem"))
    assert list(frame["rank"]) == [1, 2, 3, 4]
    scores = frame["balanced_accuracy"].to_numpy()
    assert np.all(np.diff(scores) <= 0), "best first"
    assert frame["dim"].tolist() == [128 if layer == "layer2" else 512 for layer in frame["layer"]]
    assert (frame["depth"][frame["layer"] == "layer2"] < frame["depth"][frame["layer"] == "layer4"].max()).all()
    for column in ("accuracy_std", "macro_f1", "map@10", "img_per_s", "forward_img_per_s", "store_bytes"):
        assert frame[column].notna().all() and (frame[column] >= 0).all(), column
    assert (frame["store_bytes"] >= frame["vector_bytes"] * 16).all()  # 16 images stored per candidate
    out = root / "out"
    report = json.loads((out / "probe.json").read_text())
    assert report["winner"]["layer"] == frame["layer"][0] and report["winner"]["pool"] == frame["pool"][0]
    assert report["protocol"]["kind"] == "cv"
    page = (out / "probe.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Domain shift" in page and "layer4" in page
    assert (out / "score_vs_depth.png").stat().st_size > 1000


def test_probe_stores_equal_plain_extraction(probed, tmp_path):
    """One pass for all poolings gives exactly what `featx extract --pool P` gives."""
    root, images, _ = probed
    options = {k: v for k, v in TINY.items()}
    reference = featx.extract(images, tmp_path / "gem", layers=LAYERS, pool="gem", **options)
    stored = featx.FeatureStore.open(root / "out" / "stores" / "resnet18" / "gem")
    assert stored.config_hash == reference.config_hash
    assert list(stored.paths) == list(reference.paths)
    for layer in LAYERS:
        np.testing.assert_allclose(stored.features(layer), reference.features(layer), rtol=1e-5, atol=1e-6)


def test_rerun_reuses_stores_and_scores(probed, monkeypatch):
    root, images, frame = probed
    manifest_file = root / "out" / "stores" / "resnet18" / "avg" / "manifest.json"
    shards = json.loads(manifest_file.read_text())["shards"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached candidate was scored again")

    monkeypatch.setattr(probe_score, "score_features", refuse)
    again = probe(images, root / "out", layers=LAYERS, pools="avg,gem", **PROBE_TINY)
    assert again[["layer", "pool", "balanced_accuracy"]].equals(frame[["layer", "pool", "balanced_accuracy"]])
    assert json.loads(manifest_file.read_text())["shards"] == shards  # nothing extracted again


def test_winner_recipe_round_trips_through_featx_run(probed):
    from featx.recipes.recipe import load_recipe
    from featx.recipes.run import run_recipe

    root, _, frame = probed
    recipe_file = root / "out" / "winner.yaml"
    recipe = load_recipe(recipe_file)  # accepted unchanged
    assert recipe.steps["extract"]["layers"] == [frame["layer"][0]]
    produced = run_recipe(recipe_file, say=lambda _: None)
    store = featx.FeatureStore.open(produced["store"])
    assert store.config["pool"] == frame["pool"][0] and store.layers == [frame["layer"][0]]
    assert store.config["backbone"] == "resnet18" and len(store) == 16
    model = json.loads((produced["model"] / "model.json").read_text())
    assert model["layers"] == [frame["layer"][0]]
    assert model["metrics"]["accuracy"] >= 0.9  # the separable synthetic classes stay separable
    # train-shallow fits what the probe scored: same options, same tuning, same folds, same score
    winner = frame.iloc[0]
    assert {k: model["options"][k] for k in winner["train_options"]} == winner["train_options"]
    assert model["metrics"]["balanced_accuracy"] == pytest.approx(winner["balanced_accuracy"])


def test_budget_limits_the_candidates(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=6)
    frame = probe(images, tmp_path / "out", layers=LAYERS, pools="avg,gem", budget="1", **PROBE_TINY)
    assert len(frame) == 1
    assert len(frame.attrs["skipped"]) == 3 and all("budget" in s["reason"] for s in frame.attrs["skipped"])


def test_held_out_split_is_used_when_present(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=6, splits=("train", "val"))
    frame = probe(images, tmp_path / "out", layers=["layer4"], pools="avg", **(PROBE_TINY | {"baselines": True}))
    assert frame.attrs["protocol"]["kind"] == "held-out"
    assert frame["n_images"][0] == 24
    # ranked by CV on the 12 'train' rows; the winner scored once on the 12 'val' rows, reported apart
    once = frame.attrs["held_out"]["winner"]
    assert (once["layer"], once["classifier"]) == (frame["layer"][0], frame["classifier"][0])
    assert 0 <= once["balanced_accuracy"] <= 1 and once["balanced_accuracy_std"] is not None
    recipe = (tmp_path / "out" / "winner.yaml").read_text()
    assert "cross-validation on the 'train' rows only" in recipe and "Held-out score, measured once" in recipe
    # featx's defaults and the raw-pixel baseline, scored with the same protocol: fitted on 'train', scored on 'val'
    baselines = frame.attrs["baselines"]
    assert set(baselines) == {"default", "pixels"}
    for figures in baselines.values():
        assert "scored once on the held-out 'val'/'test' rows" in figures["evaluation"]
        assert 0 <= figures["balanced_accuracy"] <= 1
    store = featx.FeatureStore.open(tmp_path / "out" / "stores" / "featx-defaults")
    assert "pixels" in store.layers and len(store) == 24
    assert recipe.count("# For comparison") == 2
    page = (tmp_path / "out" / "probe.html").read_text()
    assert "held-out rows, once" in page and "raw-pixel baseline" in page and "featx defaults" in page


def test_held_out_labels_never_rank_a_candidate():
    """Changing only the held-out rows' labels changes no candidate's ranking score, so the winner
    is chosen without them."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 12)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "a", "b").astype(object)
    splits = np.array(["train"] * 60 + ["val"] * 30, dtype=object)
    protocol = probe_score.choose_protocol(y, splits)
    assert protocol.kind == "held-out" and "'train' rows only" in protocol.description
    flipped = y.copy()
    flipped[60:] = np.where(y[60:] == "a", "b", "a")
    first = probe_score.score_features(X, y, splits, protocol, classifiers=("linear-svm",))
    second = probe_score.score_features(X, flipped, splits, protocol, classifiers=("linear-svm",))
    assert first["linear-svm"]["balanced_accuracy"] == second["linear-svm"]["balanced_accuracy"] > 0.8
    # the held-out figure does see them: the flipped labels make it collapse
    right = probe_score.score_held_out(X, y, splits, "linear-svm")["balanced_accuracy"]
    wrong = probe_score.score_held_out(X, flipped, splits, "linear-svm")["balanced_accuracy"]
    assert right > 0.8 > 0.2 > wrong


@pytest.mark.parametrize("text,expected", [("10m", (600.0, None)), ("90s", (90.0, None)), ("1.5h", (5400.0, None)),
                                           ("12", (None, 12))])
def test_parse_budget(text, expected):
    budget = parse_budget(text)
    assert (budget.seconds, budget.candidates) == expected


def test_errors_say_what_to_do(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=4)
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for source in list((images / "cats").iterdir())[:3]:
        (unlabelled / source.name).write_bytes(source.read_bytes())
    with pytest.raises(InputError, match="probe needs labels"):
        probe(unlabelled, tmp_path / "o1", **PROBE_TINY)
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet1800'.*featx models"):
        probe(images, tmp_path / "o2", **(PROBE_TINY | {"models": ["resnet1800"]}))
    with pytest.raises(UnknownNameError, match=r"unknown layer 'layer9'.*featx layers resnet18"):
        probe(images, tmp_path / "o3", layers="layer9", **PROBE_TINY)
    with pytest.raises(InputError, match=r"--pool flatten is not allowed"):
        probe(images, tmp_path / "o4", pools="avg,flatten", **PROBE_TINY)
    with pytest.raises(InputError, match=r"unknown probe classifier\(s\) \['svm'\]; allowed: logreg, linear-svm"):
        probe(images, tmp_path / "o6", **(PROBE_TINY | {"classifiers": "pca-logreg,svm"}))
    with pytest.raises(InputError, match=r"--budget 'soon' is not allowed; give a time such as 90s"):
        probe(images, tmp_path / "o5", budget="soon", **PROBE_TINY)


def test_models_without_offline_weights_are_skipped_with_the_reason(tmp_path):
    from featx.errors import WeightsError

    if featx.list_backbones("resnet18")[0].offline:
        pytest.skip("resnet18's weights are cached on this machine")
    images = make_class_folder(tmp_path / "images", per_class=4)
    with pytest.raises(WeightsError,
                       match=r"none of the models \['resnet18'\] has weights available offline.*featx models"):
        probe(images, tmp_path / "out", **(PROBE_TINY | {"weights": "default"}))


def test_cli_probe_prints_the_ranking(tmp_path):
    from featx.cli import app

    images = make_class_folder(tmp_path / "images", per_class=6)
    result = CliRunner().invoke(app, ["probe", str(images), "-o", str(tmp_path / "out"), "--model", "resnet18",
                                      "--weights", "random", "--image-size", "64", "--workers", "0",
                                      "--layers", "layer4", "--pool", "avg", "--budget", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert re.search(r"winner: resnet18 / layer layer4 / pool avg / (pca-logreg|linear-svm): balanced accuracy",
                     result.output), result.output
    assert "winner recipe: featx run" in result.output
    bad = CliRunner().invoke(app, ["probe", str(images), "-o", str(tmp_path / "o2"), "--model", "nosuchnet"])
    assert bad.exit_code == 2 and "featx models" in bad.output


# --- candidates ----------------------------------------------------------------------------------

def test_auto_layers_are_stage_outputs_spread_over_depth():
    rows = featx.describe_layers("efficientnet_lite0")
    assert stage_outputs(rows) == ["blocks.0.0.bn2", "blocks.1.1.add", "blocks.2.1.add", "blocks.3.2.add",
                                   "blocks.4.2.add", "blocks.5.3.add", "blocks.6.0.bn3", "bn2"]
    assert auto_layers(rows) == ["blocks.1.1.add", "blocks.2.1.add", "blocks.3.2.add", "blocks.5.3.add",
                                 "blocks.6.0.bn3", "bn2"]
    resnet = featx.describe_layers("resnet18", image_size=64)
    assert auto_layers(resnet) == ["relu", "layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "layer4.1.relu_1"]


# --- scoring -------------------------------------------------------------------------------------

def test_random_labels_score_at_chance():
    """Tuning inside the training folds only: on labels unrelated to the features the reported
    score stays at chance (tuning that saw the evaluation rows would inflate it)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 200)).astype(np.float32)
    y = rng.choice(["a", "b"], size=120)
    splits = np.array([""] * 120, dtype=object)
    protocol = probe_score.choose_protocol(y, splits)
    scores = probe_score.score_features(X, y, splits, protocol, classifiers=("logreg", "linear-svm"))
    for name, result in scores.items():
        assert abs(result["balanced_accuracy"] - 0.5) < 3 * np.sqrt(0.25 / 120), name


def test_bootstrap_metrics_match_scikit_learn():
    from featx.learn.metrics import classification_metrics

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    predicted[:150] = truth[:150]
    fast = probe_score._from_confusion(truth, predicted, 4)
    reference = classification_metrics(truth.astype(str), predicted.astype(str), ["0", "1", "2", "3"])
    for key in probe_score.METRICS:
        assert fast[key] == pytest.approx(reference[key])


# --- domain shift --------------------------------------------------------------------------------

def test_batchnorm_after_each_layer():
    from featx.backbones import load_backbone
    from featx.backbones.layers import addressable_layers
    from featx.probe.domain_shift import batchnorm_after

    backbone = load_backbone("resnet18", "random", 64)
    names = addressable_layers(backbone.model).names
    chosen = batchnorm_after(["relu", "layer3", "flatten"], names, backbone.model)
    assert chosen == {"relu": "layer1.0.bn1", "layer3": "layer4.0.bn1", "flatten": "layer4.1.bn2"}


def _noise_images(folder: Path, n: int = 48) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"noise_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


FASHION_MNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _fashion_mnist_images(folder: Path, n: int = 48) -> list[str]:
    """The first `n` Fashion-MNIST test images as PNGs (from Debian's dataset-fashion-mnist)."""
    import gzip

    with gzip.open(FASHION_MNIST_TEST, "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    folder.mkdir(parents=True)
    paths = [str(folder / f"{i:03d}.png") for i in range(n)]
    for path, pixels in zip(paths, images[:n]):
        Image.fromarray(pixels, mode="L").save(path)
    return paths


@pytest.mark.slow
@needs_hymenoptera()
@pytest.mark.skipif(not FASHION_MNIST_TEST.is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (`make test-slow` installs it where "
                           "apt-get can)")
def test_domain_shift_orders_near_far_farthest(tmp_path):
    """Measured with the real EfficientNet-Lite0 weights: hymenoptera photos (near ImageNet) <
    Fashion-MNIST (grayscale products on black) < uniform noise, by BN distance and by the head."""
    from featx.backbones import load_backbone
    from featx.backbones.layers import addressable_layers
    from featx.extract.extractor import ImageViews
    from featx.probe.domain_shift import mean_distance, measure_domain_shift

    backbone = load_backbone("efficientnet_lite0", "default")
    names = addressable_layers(backbone.model).names
    layers = auto_layers(featx.describe_layers("efficientnet_lite0"))
    sets = {"hymenoptera": sorted(str(p) for p in HYMENOPTERA.rglob("*.jpg")),
            "fashion": _fashion_mnist_images(tmp_path / "fashion"),
            "noise": _noise_images(tmp_path / "noise")}
    reports = {}
    for name, paths in sets.items():
        random.Random(0).shuffle(paths)
        dataset = ImageViews(paths[:48], backbone.preprocess, 1)
        reports[name] = measure_domain_shift(backbone, dataset, layers, names, meaningful=True)
    distance = {k: mean_distance(r.per_layer) for k, r in reports.items()}
    head = {k: r.head_max_probability for k, r in reports.items()}
    assert distance["hymenoptera"] < distance["fashion"] < distance["noise"], distance
    assert head["hymenoptera"] > head["fashion"] > head["noise"], head
    assert [reports[k].level for k in sets] == ["near", "far", "far"]
    assert "far" in reports["fashion"].advice and "earlier" in reports["fashion"].advice


def test_rbf_svm_is_scored_up_to_its_row_limit_and_skipped_with_a_reason_above(tmp_path, monkeypatch):
    from featx.probe import probe as probe_module

    images = make_class_folder(tmp_path / "images", per_class=6)
    options = PROBE_TINY | {"classifiers": ["logreg", "rbf-svm"]}
    frame = probe(images, tmp_path / "under", layers=["layer4"], pools="avg", **options)
    assert set(frame["classifiers"][0]) == {"logreg", "rbf-svm"}
    assert frame["classifiers"][0]["rbf-svm"]["train_options"]["classifier"] == "rbf-svm"
    assert not frame.attrs["skipped"]

    monkeypatch.setattr(probe_module, "RBF_MAX_ROWS", 10)  # 12 labelled images, all fitted under CV
    frame = probe(images, tmp_path / "over", layers=["layer4"], pools="avg", **options)
    assert set(frame["classifiers"][0]) == {"logreg"}
    (skipped,) = frame.attrs["skipped"]
    assert skipped["what"] == "classifier rbf-svm" and "12 training rows" in skipped["reason"]
    assert "rbf-svm" not in json.loads((tmp_path / "over" / "probe.json").read_text())["classifiers"]
    with pytest.raises(InputError, match="rbf-svm alone"):
        probe(images, tmp_path / "alone", layers=["layer4"], pools="avg", **(options | {"classifiers": ["rbf-svm"]}))


def test_halving_keeps_the_better_half_each_round_and_scores_the_rest_in_full():
    """Successive halving: every candidate screened on the smallest sample, the better half again on
    more rows, never fewer than KEEP; below the first sample size nothing is screened."""
    from featx.probe.halving import KEEP, halve

    quality = {f"c{i}": i / 20 for i in range(18)}
    asked = []

    def screen(key, rows):
        asked.append((key, rows))
        return {"score": quality[key] + rows / 1e6, "rows": rows}

    survivors, screens = halve(list(quality), screen, n_train=5000, rounds=(500, 2000))
    assert [rows for _, rows in asked].count(500) == 18 and [rows for _, rows in asked].count(2000) == 9
    assert survivors == [f"c{i}" for i in (17, 16, 15, 14, 13)]  # best first: half of 9, rounded up
    assert [s["rows"] for s in screens["c17"]] == [500, 2000] and [s["rows"] for s in screens["c0"]] == [500]
    assert len(halve(list(quality)[:KEEP], screen, 5000)[0]) == KEEP  # too few to halve
    everything, none = halve(list(quality), screen, n_train=400, rounds=(500, 2000))
    assert everything == list(quality) and all(s == [] for s in none.values())


def test_screen_uses_the_training_rows_it_is_given_and_ranks_signal_above_noise():
    from featx.probe.halving import screen_score

    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"]), 300)
    signal = rng.normal(size=(900, 40)).astype(np.float32) + (np.arange(900) // 300)[:, None] * 0.6
    noise = rng.normal(size=(900, 40)).astype(np.float32)
    good = screen_score(signal, y, rows=300, rbf=True, folds=5, seed=0)
    bad = screen_score(noise, y, rows=300, rbf=True, folds=5, seed=0)
    assert good["rows"] == 300 and set(good) == {"ridge", "rbf-svm", "score", "rows"}
    assert good["score"] == max(good["ridge"], good["rbf-svm"]) > 0.9
    assert abs(bad["score"] - 1 / 3) < 0.12  # chance: the screen never saw the rows it scores


def test_probe_screens_out_the_weaker_candidates(tmp_path, monkeypatch):
    """With more training rows than the first screen's sample, only the better half is scored in
    full; the others stay in the table with their screen score and no full score."""
    from featx.probe import halving

    monkeypatch.setattr(halving, "SCREEN_ROWS", (12,))
    images = make_class_folder(tmp_path / "images", per_class=8)
    frame = probe(images, tmp_path / "out", layers=["layer1", "layer2", "layer3", "layer4"], pools="avg,gem",
                  **PROBE_TINY)
    full = frame[frame["classifier"].notna()]
    dropped = frame[frame["classifier"].isna()]
    assert len(full) == 4 and len(dropped) == 4 and list(frame["rank"]) == list(range(1, 9))
    assert (full.index < dropped.index.min()).all()  # scored in full first
    assert dropped["balanced_accuracy"].isna().all() and (dropped["screen_rows"] == 12).all()
    assert (dropped["screen"].to_numpy()[:-1] >= dropped["screen"].to_numpy()[1:]).all()
    # the survivors had the better screens
    assert full["screen"].min() >= dropped["screen"].max()
    page = (tmp_path / "out" / "probe.html").read_text()
    assert "4 candidates scored in full, 4 screened out" in page and "Screened out" in page


def test_changing_only_held_out_labels_changes_no_screen_score_and_not_the_winner(tmp_path, monkeypatch):
    """The whole probe, screens included, ranks on the 'train' rows only: two probes of the same
    images whose held-out labels differ (all swapped) screen, score and rank identically."""
    from featx.probe import halving

    monkeypatch.setattr(halving, "SCREEN_ROWS", (12,))
    images = make_class_folder(tmp_path / "images", per_class=8, splits=("train", "val"))
    swap = {"cats": "dogs", "dogs": "cats"}
    frames = []
    for name, relabel in (("same", lambda split, label: label), ("swapped", lambda split, label:
                                                                  swap[label] if split == "val" else label)):
        rows = [f"{p},{relabel(p.parent.parent.name, p.parent.name)},{p.parent.parent.name}"
                for p in sorted(images.rglob("*.png"))]
        manifest = tmp_path / f"{name}.csv"
        manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
        frames.append(probe(manifest, tmp_path / name, layers=["layer1", "layer2", "layer3", "layer4"],
                            pools="avg,gem", **PROBE_TINY))
    same, swapped = frames
    assert same.attrs["protocol"]["kind"] == "held-out" and (same["screen_rows"] == 12).all()
    columns = ["layer", "pool", "screen", "classifier", "balanced_accuracy"]
    assert same[columns].equals(swapped[columns])  # same screens, same full scores, same order
    held_same, held_swapped = same.attrs["held_out"]["winner"], swapped.attrs["held_out"]["winner"]
    assert held_same["accuracy"] + held_swapped["accuracy"] == pytest.approx(1.0)  # two classes, all swapped
