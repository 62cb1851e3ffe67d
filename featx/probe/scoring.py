"""Scoring one probe candidate (features of one backbone × layer × pooling) by stratified k-fold
cross-validation on the training rows only: the 'train' rows when the inputs have a held-out
'val'/'test' split, else every row. The held-out rows never rank a candidate: only the winner is
scored on them, once, after the choice (`score_held_out`), so that figure is not the best of many
(featx's defaults, `baselines.py`, are scored on them by train-shallow). Every classifier tunes
its regularisation by inner cross-validation on the rows it is fit on, exactly as `train-shallow`
does.

Spread: the standard deviation over the outer folds, or, for one held-out split, the bootstrap
standard deviation over the held-out rows."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold

from featx.errors import InputError
from featx.learn.evaluation import SCORES as METRICS  # the three scores every report gives
from featx.learn.metrics import classification_metrics
from featx.learn.select import RBF_COMPONENTS
from featx.options import AUDIT, PROBE

log = logging.getLogger(__name__)

# regularised, each tuned on the training rows only, exactly as `featx train-shallow` tunes them:
# name → (train-shallow --classifier, --reduce); "pca" stands for PCA-whitened to `pca_components`
PROBE_CLASSIFIERS = {"logreg": ("logreg", "none"), "linear-svm": ("linear-svm", "none"),
                     "pca-logreg": ("logreg", "pca"), "rbf-svm": ("rbf-svm", "none")}
# the cheap linear two, and an RBF SVM: on data far from ImageNet a mid-depth layer often holds more
# than a linear model reads from it (Fashion-MNIST, 10,000 training rows: blocks.5.3.add avg 0.883
# linear, 0.902 RBF, fitted in seconds at 192-d). Full-width logreg (lbfgs) is several times slower.
# libsvm's fit grows with the square of the rows: ~1 min for 10,000 × 1,280, hours at 100,000
RBF_MAX_ROWS = 20_000
PCA_COMPONENTS = 64
# the RBF SVM reads at most this many PCA dimensions (not whitened) once the rows make its kernel
# costly: on 1,968 rows of a 2,560-d layer, 28 s instead of 189 s for 0.004 less balanced accuracy
RBF_PCA_FROM_ROWS = 500
BOOTSTRAP = 200


@dataclass(frozen=True)
class Protocol:
    kind: str  # "held-out" | "cv"
    folds: int
    description: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "folds": self.folds, "description": self.description}


def choose_protocol(labels: np.ndarray, splits: np.ndarray, cv: int = PROBE.cv) -> Protocol:
    """Held-out when there are 'train' rows and 'val'/'test' rows, else stratified CV."""
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        raise InputError(f"featx probe needs at least two classes; the labelled images are all "
                         f"'{counts.index[0] if len(counts) else 'none'}'. Put each class in its own folder")
    if counts.min() < 2:
        raise InputError(f"featx probe needs at least 2 images per class; class(es) "
                         f"{sorted(counts[counts < 2].index)} have one. Add images or remove the class")
    train = splits == "train"
    held = np.isin(splits, ["val", "test"])
    if train.any() and held.any():
        train_counts = pd.Series(labels[train]).value_counts()
        if len(train_counts) >= 2 and train_counts.min() >= 2:
            folds = int(min(max(2, cv), train_counts.min()))
            return Protocol("held-out", folds, f"ranked by stratified {folds}-fold cross-validation on the 'train' "
                                               "rows only; the winner scored once on the held-out 'val'/'test' rows")
    if cv < 2:
        raise InputError(f"--cv {cv} must be at least 2")
    folds = int(min(cv, counts.min()))
    return Protocol("cv", folds, f"stratified {folds}-fold cross-validation")


def train_options(name: str, *, n_train: int, n_features: int) -> dict:
    """The `train_shallow` options that fit probe classifier `name` (what the winner recipe carries)."""
    if name not in PROBE_CLASSIFIERS:
        raise InputError(f"unknown probe classifier '{name}'; allowed: {', '.join(PROBE_CLASSIFIERS)}")
    classifier, reduce = PROBE_CLASSIFIERS[name]
    if reduce == "pca":
        reduce = f"pca:{pca_components(n_train, n_features)}:whiten"
    elif classifier == "rbf-svm":
        reduce = rbf_reduce(n_train, n_features)
    return {"classifier": classifier, "normalize": "zscore", "reduce": reduce}


def make_classifier(options: dict, *, n_train: int, n_features: int, smallest_class: int, cv: int = PROBE.cv,
                    seed: int = PROBE.seed):
    """train-shallow's own tuned estimator for the `train_options` of a probe classifier: its strength
    is chosen by inner CV on the rows it is fit on (see `featx.learn.classify.make_estimator`)."""
    from featx.learn.classify import make_estimator

    return make_estimator(**options, seed=seed, n_samples=n_train, n_features=n_features,
                          smallest_class=smallest_class, cv=cv)


def rbf_reduce(n_train: int, n_features: int) -> str:
    """The RBF SVM's reducer: PCA to `RBF_COMPONENTS` (at most half the rows) on many rows of wide vectors."""
    components = min(RBF_COMPONENTS, n_train // 2)
    return f"pca:{components}" if n_train >= RBF_PCA_FROM_ROWS and n_features > components else "none"


def pca_components(n_train: int, n_features: int) -> int:
    return int(max(1, min(PCA_COMPONENTS, n_features, n_train // 2)))


def chosen_strength(fitted) -> float | None:
    """The C inner CV picked (for the report)."""
    value = getattr(fitted, "best_value_", None)
    return None if value is None else float(value)


def _metrics(truth, predicted, classes) -> dict:
    return {k: v for k, v in classification_metrics(truth, predicted, classes).items() if k in METRICS}


def score_features(X: np.ndarray, y: np.ndarray, splits: np.ndarray, protocol: Protocol, *,
                   classifiers=tuple(PROBE_CLASSIFIERS), cv: int = PROBE.cv, seed: int = PROBE.seed) -> dict[str, dict]:
    """{classifier: {metric: mean, metric_std: spread, "C": chosen strengths}} for one candidate."""
    classes = sorted(set(y))
    if protocol.kind == "held-out":  # the held-out rows never rank a candidate
        train = np.flatnonzero(splits == "train")
        folds = [(train[a], train[b]) for a, b in StratifiedKFold(protocol.folds, shuffle=True, random_state=seed)
                 .split(X[train], y[train])]
    else:
        folds = list(StratifiedKFold(protocol.folds, shuffle=True, random_state=seed).split(X, y))
    return _score_folds(X, y, folds, classes, protocol, classifiers, cv, seed)


def score_held_out(X: np.ndarray, y: np.ndarray, splits: np.ndarray, classifier: str, *, cv: int = PROBE.cv,
                   seed: int = PROBE.seed) -> dict:
    """One classifier fitted on the 'train' rows and scored once on the held-out 'val'/'test' rows,
    with the bootstrap spread: the figure to report for a winner chosen without those rows."""
    folds = [(np.flatnonzero(splits == "train"), np.flatnonzero(np.isin(splits, ["val", "test"])))]
    once = Protocol("once", 1, "fit on split 'train', scored once on the held-out 'val'/'test' rows")
    return _score_folds(X, y, folds, sorted(set(y)), once, [classifier], cv, seed)[classifier]


def _score_folds(X, y, folds, classes, protocol: Protocol, classifiers, cv: int, seed: int) -> dict[str, dict]:
    results = {}
    # a candidate's score is what counts; the tuning's own notes (e.g. a refit that fell back to the
    # next best C) go to the log, which `featx -v probe` shows, instead of raw warnings per candidate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="sklearn")
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        # one set of options for every fold (PCA's size from the smallest training fold), the set the
        # winner recipe hands to train-shallow
        n_fit = min(len(train_idx) for train_idx, _ in folds)
        for name in classifiers:
            options = train_options(name, n_train=n_fit, n_features=X.shape[1])
            per_fold, strengths = [], []
            for train_idx, eval_idx in folds:
                smallest = int(pd.Series(y[train_idx]).value_counts().min())
                model = make_classifier(options, n_train=len(train_idx), n_features=X.shape[1],
                                        smallest_class=smallest, cv=cv, seed=seed)
                model.fit(X[train_idx], y[train_idx])
                predicted = model.predict(X[eval_idx])
                per_fold.append((y[eval_idx], predicted))
                strengths.append(chosen_strength(model))
            results[name] = _summarise(per_fold, classes, protocol, seed) | {"C": strengths, "train_options": options}
    for note in dict.fromkeys(str(w.message) for w in caught):
        log.info("probe: %s", note)
    return results


def _summarise(per_fold, classes, protocol: Protocol, seed: int) -> dict:
    if len(per_fold) > 1:
        scores = [_metrics(t, p, classes) for t, p in per_fold]
        return {k: float(np.mean([s[k] for s in scores])) for k in METRICS} | \
               {f"{k}_std": float(np.std([s[k] for s in scores])) for k in METRICS}
    truth, predicted = per_fold[0]
    point = _metrics(truth, predicted, classes)
    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index[c] for c in truth])
    p = np.array([index.get(c, 0) for c in predicted])
    rng = np.random.default_rng(seed)
    draws = [_from_confusion(t[idx], p[idx], len(classes))
             for idx in (rng.integers(0, len(t), len(t)) for _ in range(BOOTSTRAP))]
    return point | {f"{k}_std": float(np.std([d[k] for d in draws])) for k in METRICS}


def _from_confusion(t: np.ndarray, p: np.ndarray, n_classes: int) -> dict:
    """The three metrics from a confusion matrix (fast, for the bootstrap); same definitions as
    scikit-learn's (balanced accuracy over classes present, macro-F1 with zero_division=0)."""
    cm = np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = support > 0
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"accuracy": tp.sum() / len(t), "balanced_accuracy": float(np.mean(tp[present] / support[present])),
            "macro_f1": float(f1.mean())}


def retrieval_map(store, layer: str, k: int = AUDIT.k) -> float:
    """Leave-one-out retrieval mAP@k with featx's own index (exact, cosine)."""
    from featx.retrieval.index import build_index

    return float(build_index(store, layer=layer, kind="flat", metric="cosine").evaluate(k=k)["map@k"])
