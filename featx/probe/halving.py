"""Which probe candidates earn the full, tuned scoring: successive halving.

Scoring a candidate in full (every classifier tuned by inner CV inside every fold, on every
training row) costs a minute or more on a few thousand rows, most of it the RBF SVM. So every
candidate is first screened on a small stratified sample of the training rows, the better half
again on more rows, and only the survivors are scored in full (`scoring.score_features`). A
screen is cheap and honest: the cross-validated balanced accuracy, on the sampled training rows
only, of a ridge classifier (how linearly the classes separate, `featx.learn.select.ridge_screen`)
and of the tuned RBF SVM as the full scoring fits it (PCA-reduced on many rows); the better of the two counts.
Below the first sample size nothing is screened: every candidate is scored in full."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Hashable, Sequence

import numpy as np

from featx.learn.select import ridge_screen
from featx.learn.tune import cv_splitter, stratified_subsample
from featx.probe.scoring import make_classifier, train_options

SCREEN_ROWS = (500, 1000, 2000, 4000)  # training rows per screening round, while fewer than the training rows
KEEP = 3  # a screening round keeps the better half, and never fewer than this


def screen_rows(n_train: int, rounds: Sequence[int] | None = None) -> list[int]:
    """The screening rounds for `n_train` training rows: the sample sizes (`SCREEN_ROWS`) below it."""
    return [rows for rows in (SCREEN_ROWS if rounds is None else rounds) if rows < n_train]


def screen_score(X: np.ndarray, y: np.ndarray, *, rows: int, rbf: bool, folds: int, seed: int) -> dict:
    """One candidate's screen on a stratified sample of `rows` of its training rows (`X`, `y`):
    {"ridge": …, "rbf-svm": … (when `rbf`), "score": the better, "rows": the rows used}."""
    sample = stratified_subsample(y, rows, seed)
    X, y = X[sample], y[sample]
    splitter, _ = cv_splitter(folds, y, None, seed)
    result = {"ridge": ridge_screen(X, y, list(splitter.split(X, y)))}
    if rbf:
        options = train_options("rbf-svm", n_train=len(y), n_features=X.shape[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a screen's score is all that counts
            tuned = make_classifier(options, n_train=len(y), n_features=X.shape[1], cv=folds, seed=seed,
                                    smallest_class=int(np.unique(y, return_counts=True)[1].min()))
            tuned.set_params(refit=False).fit(X, y)
        result["rbf-svm"] = float(tuned.best_score_)
    return result | {"score": max(result.values()), "rows": int(len(y))}


def halve(keys: Sequence[Hashable], screen: Callable[[Hashable, int], dict], n_train: int,
          rounds: Sequence[int] | None = None) -> tuple[list, dict]:
    """Successive halving over `keys`: `screen(key, rows)` → a `screen_score` dict. Returns the
    survivors (best first) and {key: [every screen of that key]}."""
    survivors, screens = list(keys), {key: [] for key in keys}
    for rows in screen_rows(n_train, rounds):
        if len(survivors) <= KEEP:
            break
        for key in survivors:
            screens[key].append(screen(key, rows))
        survivors = sorted(survivors, key=lambda k: -screens[k][-1]["score"])  # stable: ties keep their order
        survivors = survivors[:max(KEEP, math.ceil(len(survivors) / 2))]
    return survivors, screens
