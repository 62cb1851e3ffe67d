"""The decision threshold, set on held-out normal images for a target false-positive rate, and the
evaluation against anomalous images when the labels say which are which."""

from __future__ import annotations

import math

import numpy as np

from featx.errors import InputError
from featx.options import ANOMALY_FIT

BOOTSTRAP = 200  # resamples behind the spread of AUROC and AUPRC


def threshold_for(normal_scores: np.ndarray, fpr: float) -> dict:
    """The score above which at most a fraction `fpr` of the held-out normals fall (the
    (1 - fpr) quantile, taken as the next order statistic so the held-out rate never exceeds it)."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        raise InputError("no held-out normal images to calibrate the threshold on; give a val split with normal "
                         "images, or more normal rows (a CV split is made of them)")
    if not 0 < fpr < 1:
        raise InputError(f"--fpr {fpr} must be between 0 and 1 (exclusive), e.g. 0.01")
    position = min(n - 1, math.ceil((1 - fpr) * n) - 1)
    value = float(scores[position])
    achieved = float((scores > value).mean())
    return {"threshold": value, "fpr_target": float(fpr), "fpr_held_out": achieved, "normals": int(n),
            # the binomial standard error of a false-positive rate measured on n normals
            "fpr_standard_error": float(math.sqrt(fpr * (1 - fpr) / n)),
            "coarse": bool(n * fpr < 5)}


def evaluate(scores: np.ndarray, anomalous: np.ndarray, threshold: float, seed: int = ANOMALY_FIT.seed) -> dict:
    """Image AUROC and AUPRC (anomalous = positive) with their bootstrap spread, and the confusion
    at the threshold."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(anomalous, dtype=bool)
    above = scores > threshold
    result = {"normal": int((~y).sum()), "anomalous": int(y.sum()),
              "confusion": {"true_positive": int((above & y).sum()), "false_negative": int((~above & y).sum()),
                            "false_positive": int((above & ~y).sum()), "true_negative": int((~above & ~y).sum())}}
    c = result["confusion"]
    result["recall_at_threshold"] = c["true_positive"] / max(1, result["anomalous"])
    result["fpr_at_threshold"] = c["false_positive"] / max(1, result["normal"])
    if y.all() or not y.any():
        return result
    rng = np.random.default_rng(seed)
    aurocs, auprcs = [], []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(y), len(y))
        if y[pick].all() or not y[pick].any():
            continue
        aurocs.append(roc_auc_score(y[pick], scores[pick]))
        auprcs.append(average_precision_score(y[pick], scores[pick]))
    fpr, tpr, _ = roc_curve(y, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
    result.update({
        "auroc": float(roc_auc_score(y, scores)), "auroc_std": float(np.std(aurocs)),
        "auroc_interval_95": [float(v) for v in np.percentile(aurocs, [2.5, 97.5])],
        "auprc": float(average_precision_score(y, scores)), "auprc_std": float(np.std(auprcs)),
        "auprc_interval_95": [float(v) for v in np.percentile(auprcs, [2.5, 97.5])],
        "auprc_chance": float(y.mean()),
        "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
    })
    return result


def pixel_auroc(heatmaps: list[np.ndarray], masks: list[np.ndarray]) -> float | None:
    """AUROC of every pixel's heatmap value against the masks (defect = positive), over all images."""
    from sklearn.metrics import roc_auc_score

    if not heatmaps:
        return None
    values = np.concatenate([np.asarray(h, np.float32).ravel() for h in heatmaps])
    truth = np.concatenate([np.asarray(m, bool).ravel() for m in masks])
    if truth.all() or not truth.any():
        return None
    if len(values) > 4_000_000:  # a seeded subsample keeps the sort in memory; the AUROC barely moves
        pick = np.random.default_rng(0).choice(len(values), 4_000_000, replace=False)
        values, truth = values[pick], truth[pick]
    return float(roc_auc_score(truth, values))
