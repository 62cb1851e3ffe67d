"""Enough data? A power law fitted to a learning curve (error = a · n^-b) estimates what doubling
the training images would bring, with an interval from a parametric bootstrap."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from featx.options import AUDIT

log = logging.getLogger(__name__)

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
MIN_POINTS = 3
BOOTSTRAP = 2000


def subsampled_curve(make_estimator, X: np.ndarray, y: np.ndarray, train: np.ndarray, *, seed: int = AUDIT.seed,
                     repeats: int = 3, folds: int = 5, progress: bool = False) -> list[dict]:
    """Accuracy against the number of training images (stratified subsamples of 1/8 … all of
    them), scored on the held-out rows, or on cross-validation folds when there are none."""
    rng = np.random.default_rng(seed)
    labelled_train = np.flatnonzero(train)
    held = np.flatnonzero(~train)
    if len(held):
        evaluations = [(labelled_train, held)] * repeats
    else:
        smallest = int(pd.Series(y[labelled_train]).value_counts().min())
        splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
        evaluations = [(labelled_train[a], labelled_train[b]) for a, b in splitter.split(X[labelled_train],
                                                                                         y[labelled_train])]
    from tqdm.auto import tqdm

    points = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        for fraction in tqdm(FRACTIONS, desc="audit: learning curve", unit="size", disable=not progress):
            scores, sizes = [], []
            runs = evaluations[:1] if fraction == 1.0 and len(held) else evaluations  # all rows: one fit is enough
            for fit_rows, eval_rows in runs:
                chosen = np.concatenate([rng.choice(members, size=max(1, int(round(fraction * len(members)))),
                                                    replace=False)
                                         for members in (fit_rows[y[fit_rows] == c] for c in np.unique(y[fit_rows]))])
                model = make_estimator().fit(X[chosen], y[chosen])
                scores.append(float(np.mean(model.predict(X[eval_rows]) == y[eval_rows])))
                sizes.append(len(chosen))
            points.append({"n": int(round(np.mean(sizes))), "accuracy": float(np.mean(scores)),
                           "std": float(np.std(scores)), "repeats": len(scores),
                           "n_eval": int(np.mean([len(e) for _, e in runs]))})
    return points


def points_from_model_report(report: dict) -> list[dict]:
    """train-shallow's learning curve (accuracy against images per class) in the same form."""
    n_classes = len(report.get("classes") or [])
    n_eval = int(report.get("n_eval") or 0)
    return [{"n": int(p["per_class"]) * n_classes, "accuracy": float(p["accuracy"]), "std": float(p.get("std", 0.0)),
             "repeats": int(p.get("repeats", 1)), "n_eval": n_eval} for p in report.get("learning_curve") or []]


def _fit(n: np.ndarray, error: np.ndarray) -> tuple[float, float]:
    """log error = log a − b log n, least squares; returns (a, b)."""
    slope, intercept = np.polyfit(np.log(n), np.log(error), 1)
    return float(np.exp(intercept)), float(-slope)


def doubling_estimate(points: list[dict], *, seed: int = AUDIT.seed, source: str = "") -> dict:
    """What doubling the training images would bring, from the upper part of a learning curve
    (sizes ≥ 1/8 of the largest: the smallest sizes follow another regime)."""
    usable = [p for p in points if points and p["n"] >= max(q["n"] for q in points) / 8 and p["n"] > 0]
    if len(usable) < MIN_POINTS:
        return {"available": False, "sentence": f"Not enough learning-curve points to estimate what more data "
                                                f"would bring ({len(usable)} usable, {MIN_POINTS} needed).",
                "points": points, "source": source}
    n = np.array([p["n"] for p in usable], dtype=float)
    accuracy = np.array([p["accuracy"] for p in usable])
    n_eval = np.array([max(1, p["n_eval"]) for p in usable], dtype=float)
    floor = 0.5 / n_eval  # a perfect score still has an error below one image in n_eval
    binomial = np.sqrt(np.clip(accuracy * (1 - accuracy), 0.25 / n_eval, None) / n_eval)
    se = np.maximum(np.array([p["std"] for p in usable]) / np.sqrt([max(1, p["repeats"]) for p in usable]), binomial)
    n_now = float(n.max())
    now = float(accuracy[np.argmax(n)])

    def gain(acc: np.ndarray) -> tuple[float, float]:
        a, b = _fit(n, np.clip(1 - acc, floor, None))
        return a * n_now ** -b * (1 - 2.0 ** -b), b

    point_gain, exponent = gain(accuracy)
    rng = np.random.default_rng(seed)
    draws = np.array([gain(np.clip(accuracy + rng.normal(0, se), 0, 1))[0] for _ in range(BOOTSTRAP)])
    low, high = (float(v) for v in np.quantile(draws, [0.05, 0.95]))
    predicted = min(1.0, now + point_gain)
    if exponent <= 0 or high <= 0.002:
        sentence = (f"Doubling the training images ({int(n_now)} → {int(2 * n_now)}) is unlikely to help much: the "
                    f"learning curve is flat (accuracy change {point_gain:+.3f}, 90% interval {low:+.3f} to "
                    f"{high:+.3f}); "
                    "better labels or features matter more than more images of the same kind.")
    else:
        sentence = (f"Doubling the training images ({int(n_now)} → {int(2 * n_now)}) would change accuracy by about "
                    f"{point_gain:+.3f} (90% interval {low:+.3f} to {high:+.3f}), from {now:.3f} to about "
                    f"{predicted:.3f}, "
                    f"by a power law fitted to the learning curve (error ∝ n^-{exponent:.2f}); a power law has no "
                    "floor, so read it as an upper estimate.")
    return {"available": True, "n_now": int(n_now), "accuracy_now": now, "gain": point_gain,
            "gain_interval_90": [low, high], "predicted_accuracy": predicted, "exponent": exponent,
            "fitted_points": len(usable), "points": points, "source": source, "sentence": sentence}
