"""What train-shallow reports besides the pooled score: the spread over folds (or a bootstrap of the
held-out rows), the tuning's choices, the warnings met, the learning curve, and the report files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import InputError
from featx.learn.metrics import classification_metrics, plot_confusion, plot_learning_curve, write_report
from featx.learn.parallel import thread_map
from featx.learn.tune import cv_splitter, plot_validation_curve
from featx.store import FeatureStore

log = logging.getLogger(__name__)

CURVE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


def fold_spread(fold_metrics: list[dict], how: str) -> dict:
    """Mean ± std of each score over the outer folds (the pooled score is what the table shows)."""
    spread = {f"{k}_std": float(np.std([m[k] for m in fold_metrics])) for k in SCORES}
    spread["fold_scores"] = [{k: m[k] for k in SCORES} for m in fold_metrics]
    spread["spread"] = how
    return spread


def bootstrap_spread(truth, predicted, classes, seed: int, repeats: int = 200) -> dict:
    """One held-out split has no folds: its spread is the bootstrap std over the evaluated images
    (confusion matrices by bincount: sklearn's metric functions are too slow to call 200 times)."""
    rng = np.random.default_rng(seed)
    labels = sorted(set(classes) | set(truth) | set(predicted))  # a --val store may hold unseen classes
    k = len(labels)
    code = {c: i for i, c in enumerate(labels)}
    t = np.array([code[c] for c in truth])
    p = np.array([code[c] for c in predicted])
    values = {key: [] for key in SCORES}
    for _ in range(repeats):
        i = rng.integers(0, len(t), len(t))
        m = np.bincount(t[i] * k + p[i], minlength=k * k).reshape(k, k).astype(float)
        diag, support, called = np.diag(m), m.sum(1), m.sum(0)
        recall = np.divide(diag, support, out=np.zeros(k), where=support > 0)
        precision = np.divide(diag, called, out=np.zeros(k), where=called > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
        values["accuracy"].append(diag.sum() / len(i))
        values["balanced_accuracy"].append(recall[support > 0].mean())
        values["macro_f1"].append(f1.mean())
    spread = {f"{key}_std": float(np.std(v)) for key, v in values.items()}
    spread["spread"] = f"bootstrap std over the {len(t)} held-out images ({repeats} resamples)"
    return spread


def tuning_summary(fitted, fold_estimators: list, strength, tuned: bool) -> dict:
    if not tuned:
        return {"enabled": False, "param": strength.param, "label": strength.label, "fixed": strength.fixed}
    return {"enabled": True, "param": strength.param, "label": strength.label, "scoring": "balanced_accuracy",
            "grid": list(fitted.grid), "chosen": fitted.best_value_, "best_params": fitted.best_params_,
            "inner_cv_score": fitted.best_score_, "inner_folds": fitted.inner_folds_, "tune_rows": fitted.tune_rows_,
            "chosen_per_outer_fold": [e.best_value_ for e in fold_estimators] if len(fold_estimators) > 1 else None,
            "validation_curve": fitted.curve_, "failures": fitted.failures_}


BASELINE_HINT = ("try an earlier layer (`--layer`, `featx layers MODEL`), `featx probe` to compare backbones, "
                 "layers and poolings, or `--resize full` at extraction when the crop cuts off what matters")


def baseline_comparison(features, pixels, classes: list[str], seed: int, chose_pixels: bool, name: str) -> dict:
    """The features' evaluation against the raw pixels' on the same rows: the accuracy difference with
    its spread (std of the per-fold differences, or of a paired bootstrap on held-out rows) and
    the sentence, with a warning when the features do not beat the pixels."""
    ours = classification_metrics(features.truth, features.predicted, classes)["accuracy"]
    pixel_scores = classification_metrics(pixels.truth, pixels.predicted, classes)
    theirs = pixel_scores["accuracy"]
    if len(features.fold_metrics) > 1:
        differences = [a["accuracy"] - b["accuracy"] for a, b in zip(features.fold_metrics, pixels.fold_metrics)]
        spread, how = float(np.std(differences)), "std of the per-fold differences"
    else:
        right = np.asarray(features.predicted) == np.asarray(features.truth)
        right_pixels = np.asarray(pixels.predicted) == np.asarray(pixels.truth)
        draws = np.random.default_rng(seed).integers(0, len(right), (200, len(right)))
        spread, how = float(np.std(right[draws].mean(1) - right_pixels[draws].mean(1))), "paired bootstrap std"
    difference = ours - theirs
    warning = None
    if chose_pixels:
        warning = (f"The raw pixels won the choice: this model reads {name}, not the CNN's features, which did not "
                   f"beat them on the training rows. To get more from the CNN: {BASELINE_HINT}.")
        sentence = f"The model reads the raw pixels ({name}): the raw-pixel baseline scores {theirs:.3f} alone."
    elif difference > 0:
        sentence = (f"The CNN features beat the raw-pixel baseline ({name}, {theirs:.3f}) by {difference:+.3f} "
                    f"± {spread:.3f} accuracy ({how}).")
    else:
        sentence = (f"The CNN features do not beat the raw-pixel baseline ({name}, {theirs:.3f}): "
                    f"{difference:+.3f} ± {spread:.3f} accuracy ({how}).")
        warning = f"Frozen CNN features do no better than raw pixels here: {BASELINE_HINT}."
    return {"available": True, "pixels": name, "accuracy": theirs,
            "balanced_accuracy": pixel_scores["balanced_accuracy"], "features_accuracy": ours,
            "difference": difference, "difference_std": spread, "spread": how, "pixels_won": chose_pixels,
            "sentence": sentence, "warning": warning}


def summarise_warnings(caught) -> list[dict]:
    counts: dict[tuple, int] = {}
    for w in caught:
        key = (w.category.__name__, str(w.message).strip())
        counts[key] = counts.get(key, 0) + 1
    return [{"category": c, "message": m, "count": n} for (c, m), n in counts.items()]


def learning_curve(make_pipeline, X_train, y_train, g_train, X_eval, y_eval, seed: int,
                    all_rows_accuracy: float | None = None) -> list[dict]:
    """Held-out accuracy against training images per class (1, 2, 5, 10, …), at the chosen strength.
    Large sets repeat each point fewer times: the curve's job is the shape, not the fourth decimal.
    `all_rows_accuracy`: the final model's score on these held-out rows; a point that would train
    on every training row again takes it instead of refitting (the largest fit of the curve)."""
    if X_eval is None:  # no held-out rows: the first (group-)stratified fold is the held-out part
        splitter, _ = cv_splitter(5, y_train, g_train, seed)
        train_idx, eval_idx = next(splitter.split(X_train, y_train, g_train))
        X_train, y_train, X_eval, y_eval = X_train[train_idx], y_train[train_idx], X_train[eval_idx], y_train[eval_idx]
    per_class_max = pd.Series(y_train).value_counts().min()
    steps = [n for n in CURVE_STEPS if n <= per_class_max]
    if per_class_max not in steps:
        steps.append(int(per_class_max))
    n_classes = len(np.unique(y_train))
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(y_train == c) for c in np.unique(y_train)}
    draws = []  # the rows of every fit, drawn up front in a fixed order so threads cannot change them
    for n in steps:
        repeats = 5 if n <= 5 else 3 if n < per_class_max and n * n_classes <= 1000 else 1
        draws += [(n, np.concatenate([rng.choice(idx, size=n, replace=False) for idx in by_class.values()]))
                  for _ in range(repeats)]

    def score(draw):
        n, chosen = draw
        if all_rows_accuracy is not None and len(chosen) == len(y_train):
            return all_rows_accuracy
        try:
            pipeline = make_pipeline(len(chosen), n)
            pipeline.fit(X_train[chosen], y_train[chosen])
            return float(np.mean(pipeline.predict(X_eval) == y_eval))
        except (ValueError, InputError) as exc:  # e.g. PCA with more components than images
            log.info("learning curve: %d per class skipped (%s)", n, exc)
            return None

    # the largest fits first, so the threads finish together
    order = sorted(range(len(draws)), key=lambda i: -len(draws[i][1]))
    scores = dict(zip(order, thread_map(score, [draws[i] for i in order])))
    points = []
    for n in steps:
        done = [scores[i] for i, (m, _) in enumerate(draws) if m == n and scores[i] is not None]
        if done:
            points.append({"per_class": int(n), "accuracy": float(np.mean(done)), "std": float(np.std(done)),
                           "repeats": len(done)})
    return points


def report_files(report: dict, store: FeatureStore, layer: str, classifier: str) -> dict[str, bytes]:
    import tempfile

    title = f"{classifier} on {store.config['backbone']} / {layer}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plot_confusion(report["confusion_matrix"], report["classes"], folder / "confusion_matrix.png",
                       f"{title}\naccuracy {report['accuracy']:.3f}")
        if report["learning_curve"]:
            plot_learning_curve(report["learning_curve"], folder / "learning_curve.png", title)
        tuning = report["tuning"]
        if tuning["enabled"]:
            plot_validation_curve(tuning["validation_curve"], tuning["chosen"], tuning["label"],
                                  folder / "validation_curve.png", f"{title}\ninner {tuning['inner_folds']}-fold CV "
                                  f"on {tuning['tune_rows']} training rows")
        write_report({k: v for k, v in report.items() if not k.startswith("_")}, folder, f"featx report: {title}")
        return {p.name: p.read_bytes() for p in folder.iterdir()}
