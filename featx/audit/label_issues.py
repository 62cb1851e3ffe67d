"""Label issues: honest out-of-sample class probabilities for every labelled row, ranked by
cleanlab. A row's probabilities never come from a model that saw that row."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from featx.errors import InputError
from featx.options import AUDIT

log = logging.getLogger(__name__)

CLASSIFIERS = ("logreg", "linear-svm")
C_GRID = (0.01, 0.1, 1.0)


@dataclass
class OutOfSample:
    probs: np.ndarray  # (n, n_classes); NaN rows for labels the training rows do not have
    classes: list[str]
    C: float  # the regularisation chosen by out-of-fold log loss
    folds: int
    scheme: str


def make_probabilistic(classifier: str, C: float, seed: int):
    """z-score + a classifier with calibrated probabilities. Linear SVMs have only margins, so they
    go through CalibratedClassifierCV (Platt scaling on inner folds)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if classifier == "logreg":
        model = LogisticRegression(C=C, max_iter=1000)
    elif classifier == "linear-svm":
        model = CalibratedClassifierCV(LinearSVC(C=C, max_iter=5000, random_state=seed), cv=3, method="sigmoid")
    else:
        raise InputError(f"unknown audit --classifier '{classifier}'; allowed: {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), model)


def out_of_sample_probabilities(X: np.ndarray, y: np.ndarray, train: np.ndarray, *, classifier: str = AUDIT.classifier,
                                cv: int = AUDIT.cv, seed: int = AUDIT.seed, progress: bool = False) -> OutOfSample:
    """Training rows get out-of-fold probabilities (stratified K-fold); held-out rows get the
    probabilities of the model fitted on all training rows. C is chosen by out-of-fold log loss."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import cross_val_predict

    if cv < 2:
        raise InputError(f"--cv {cv} must be at least 2")
    y_train = y[train]
    counts = pd.Series(y_train).value_counts()
    if len(counts) < 2:
        raise InputError("the audit needs at least two labelled classes among the training rows; "
                         f"found {list(counts.index)}")
    folds = int(min(cv, counts.min()))
    if folds < 2:
        raise InputError(f"class(es) {list(counts[counts < 2].index)} have a single training image; the audit's "
                         "cross-validation needs at least 2 per class")
    classes = sorted(counts.index)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    best = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        from tqdm.auto import tqdm

        for C in tqdm(C_GRID, desc="audit: out-of-fold probabilities", unit="C", disable=not progress):
            probs = cross_val_predict(make_probabilistic(classifier, C, seed), X[train], y_train, cv=splitter,
                                      method="predict_proba")
            loss = log_loss(y_train, probs, labels=classes)
            log.info("audit: C=%g out-of-fold log loss %.4f", C, loss)
            if best is None or loss < best[0]:
                best = (loss, C, probs)
        _, C, train_probs = best
        out = np.full((len(y), len(classes)), np.nan)
        out[train] = train_probs
        held = ~train & np.isin(y, classes)
        if held.any():
            final = make_probabilistic(classifier, C, seed).fit(X[train], y_train)
            out[held] = final.predict_proba(X[held])
    scheme = (f"{classifier} (C={C:g}, chosen by out-of-fold log loss), stratified {folds}-fold out-of-fold "
              "probabilities on the training rows" + ("; held-out rows scored by the model fitted on all training rows"
                                                      if held.any() else ""))
    return OutOfSample(out, classes, C, folds, scheme)


def rank_label_issues(y: np.ndarray, oos: OutOfSample) -> pd.DataFrame:
    """One row per scorable row: cleanlab's self-confidence label quality, whether cleanlab's
    confident learning (prune by noise rate) flags it, and the most likely other label."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    scorable = np.flatnonzero(~np.isnan(oos.probs).any(axis=1))
    probs = oos.probs[scorable]
    probs = probs / probs.sum(axis=1, keepdims=True)
    index = {c: i for i, c in enumerate(oos.classes)}
    labels = np.array([index[v] for v in y[scorable]])
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about small classes; the ranking is still right
        flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    suggested = np.array(oos.classes, dtype=object)[others.argmax(axis=1)]
    return pd.DataFrame({"position": scorable, "label_quality": quality, "label_issue": flagged,
                         "suggested_label": suggested,
                         "suggested_probability": others.max(axis=1)})
