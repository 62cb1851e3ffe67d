"""`train-shallow`'s default: choose the representation (a stored layer, the concatenation of the
layers, or the raw pixels) and the classifier (linear or RBF SVM) with its strength, by
cross-validation on the rows given to `fit` only.

`AutoShallow` is an ordinary scikit-learn classifier: `train_shallow` fits one inside every outer
fold, so the score it reports never saw the rows it is scored on, selection included. The choice
is made by successive halving, so that it costs a few fits rather than one tuned fit per candidate:
every candidate is scored on a small stratified subsample, the best few again on more rows, and
the winner is tuned on every row. Linear candidates are ranked by a ridge classifier
(`ridge_screen`), RBF candidates by the tuned RBF SVM; on many rows the RBF SVM reads
PCA-reduced vectors (`Candidate.reduce`)"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import balanced_accuracy_score

from featx.errors import InputError
from featx.learn.estimators import make_estimator
from featx.learn.representation import Representation, columns_of, representation_layers
from featx.learn.tune import cv_splitter, stratified_subsample
from featx.options import TRAIN

log = logging.getLogger(__name__)

# logistic regression is chosen only by hand (--classifier logreg): it ranks like the linear SVM, and
# lbfgs on a wide multi-class problem costs several times more (digits demo, 800 rows of the 1,776-d
# concatenation: 182 s against 24 s for the linear SVM, 0.954 against 0.943 inner CV)
AUTO_CLASSIFIERS = ("linear-svm", "rbf-svm")
LINEAR_SVM_MAX_C = 0.1  # when choosing, the linear SVM's walk stops here: larger C only converges slower
RBF_COMPONENTS = 256
PCA_FROM_ROWS = 2000  # the RBF SVM reads PCA-reduced vectors from this many training rows on
ROUNDS = (300, 1500)  # rows per round of successive halving; the winner is then tuned on every row
KEEP = 3  # candidates kept after the screening round
LINEAR = ("linear-svm", "logreg")  # ranked by the ridge screen (`ridge_screen`)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 8))


@dataclass(frozen=True)
class Candidate:
    representation: str  # a stored layer, `concat` or `pixels`
    classifier: str

    def reduce(self, width: int, rows: int, given: str) -> str:
        """The reducer: the one the user gave, else, for the RBF SVM on many rows of wide vectors, PCA
        to `RBF_COMPONENTS` (its kernel costs rows² × width; on few rows PCA costs more than it saves).
        Not whitened: whitening gives every kept direction, noise included, the same weight in the
        kernel's distances (on the digits demo, 0.60-0.71 instead of 0.80-0.98 inner-CV accuracy)."""
        if given != "none" or self.classifier != "rbf-svm" or rows <= PCA_FROM_ROWS or width <= RBF_COMPONENTS:
            return given
        return f"pca:{RBF_COMPONENTS}"


def ridge_screen(X: np.ndarray, y: np.ndarray, splits: list) -> float:
    """How linearly separable the classes are in `X`: the cross-validated balanced accuracy (on
    `splits`) of a z-scored ridge classifier at its best strength, from one decomposition per fold
    for every strength (`RidgeClassifierCV`): 20-100× cheaper than tuning a linear SVM by CV, whose
    ranking of representations it follows. It only ranks; the winner's linear SVM is tuned later."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for train, valid in splits:
        ridge = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))  # alpha by efficient LOO
        ridge.fit(X[train], y[train])
        scores.append(balanced_accuracy_score(y[valid], ridge.predict(X[valid])))
    return float(np.mean(scores))


class AutoShallow(ClassifierMixin, BaseEstimator):
    """Chooses a representation and a classifier by inner CV, then fits the winner on every row.

    `X` holds the stored vectors of `layers` (widths `dims`) side by side (`model_input`).
    `representations`: the names to choose from (stored layers, `concat`, `pixels`);
    `classifiers`: the classifiers to choose from. After fit: `choice_` (a Candidate),
    `layers_` (the stored layers the winner reads), `pipeline_` (the fitted plain Pipeline, reading
    the vectors of `layers_` side by side), `tuned_` (the winner's TunedPipeline), `table_`
    (every candidate scored: round, rows, inner-CV balanced accuracy and its std, seconds).
    `baseline`: representations (e.g. the pixels) to also choose among on their own, reusing the
    scores and fits already made: the baseline scored with the same choice, `predict_baseline`."""

    def __init__(self, *, layers: tuple = (), dims: tuple = (), grey: bool = False, representations: tuple = (),
                 classifiers: tuple = AUTO_CLASSIFIERS, normalize: str = TRAIN.normalize, reduce: str = TRAIN.reduce,
                 balance: str = TRAIN.balance, cv: int = TRAIN.cv, search: bool = TRAIN.search,
                 budget: float = TRAIN.budget, seed: int = TRAIN.seed, n_jobs: int | None = None,
                 baseline: tuple = ()):
        self.layers, self.dims, self.grey = layers, dims, grey
        self.baseline = baseline
        self.representations, self.classifiers = representations, classifiers
        self.normalize, self.reduce, self.balance = normalize, reduce, balance
        self.cv, self.search, self.budget, self.seed, self.n_jobs = cv, search, budget, seed, n_jobs

    def fit(self, X, y, groups=None):
        X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
        started = time.perf_counter()
        candidates = self._candidates()
        self.table_, self.choosing_ = [], len(candidates) > 1
        # what the rounds found, reused by the baseline's choice and by the final fit:
        # (candidate, rows) → score; candidate → (rows, its last tuning); candidate → its fit on every row
        self._scores, self._tuned, self._fitted = {}, {}, {}
        self.choice_ = self._choose(candidates, X, y, groups, started)
        self.tuned_ = self._fit_every_row(self.choice_, X, y, groups)
        self.layers_ = self.reads(self.choice_)
        self.pipeline_ = self._with_representation(self.choice_, self.tuned_)
        self.classes_ = self.pipeline_.classes_
        self.baseline_ = self._fit_baseline(candidates, X, y, groups, started)
        del self._scores, self._tuned, self._fitted
        self.seconds_ = time.perf_counter() - started
        return self

    def _choose(self, survivors: list[Candidate], X, y, groups, started: float) -> Candidate:
        """Successive halving: every candidate on a small stratified sample, the best few on more rows."""
        for number, rows in enumerate(ROUNDS, start=1):
            if len(survivors) == 1 or (number > 1 and time.perf_counter() - started > self.budget):
                break
            index = stratified_subsample(y, rows, self.seed, groups)
            sample_groups = None if groups is None else np.asarray(groups)[index]
            scores = {c: self._score(c, X[index], y[index], sample_groups, number) for c in survivors}
            ranked = sorted(survivors, key=lambda c: -scores[c])
            # when every row was used, more rows cannot change the ranking
            survivors = ranked[:1] if len(index) == len(y) else ranked[:KEEP]
        return max(survivors, key=self._best_score)

    def _fit_every_row(self, candidate: Candidate, X, y, groups):
        """The candidate's TunedPipeline fitted on every row; a tuning already done on every row is
        finished (refit at its strength) rather than walked again."""
        if candidate in self._fitted:
            return self._fitted[candidate]
        done = self._tuned.get(candidate)
        if done is not None and done[0] == len(y):
            fitted = done[1].fit_chosen(self._view(candidate, X), y)
        else:
            fitted = self._estimator(candidate, X, y, groups, len(y)).fit(self._view(candidate, X), y,
                                                                          **self._groups(groups))
        self._fitted[candidate] = fitted
        return fitted

    def _fit_baseline(self, candidates: list[Candidate], X, y, groups, started: float):
        """With `baseline` (e.g. the pixels): the same choice among its candidates only, reusing the
        scores and fits already made; (candidate, fitted pipeline) or None."""
        within = [c for c in candidates if c.representation in self.baseline]
        if not within or len(within) == len(candidates):
            return None
        table, self.table_ = self.table_, []  # the report's table is the main choice's
        best = self._choose(within, X, y, groups, started)
        fitted = self._fit_every_row(best, X, y, groups)
        self.table_ = table
        return best, self._with_representation(best, fitted)

    def predict_baseline(self, X):
        candidate, pipeline = self.baseline_
        return pipeline.predict(np.asarray(X, dtype=np.float32)[:, self._columns(candidate)])

    # --- the candidates ---------------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        names = list(self.representations)
        if not names:
            raise InputError("no representation to choose from: the store has no usable layer")
        return [Candidate(name, classifier) for name in names for classifier in self.classifiers]

    def _best_score(self, candidate: Candidate) -> float:
        scored = [rows for c, rows in self._scores if c == candidate]
        return self._scores[candidate, max(scored)] if scored else -np.inf  # the score from the most rows

    # --- scoring ----------------------------------------------------------------------------------

    def _score(self, candidate: Candidate, X, y, groups, number: int) -> float:
        if (candidate, len(y)) not in self._scores:
            self._scores[candidate, len(y)] = self._measure(candidate, X, y, groups, number)
        return self._scores[candidate, len(y)]

    def _measure(self, candidate: Candidate, X, y, groups, number: int) -> float:
        began = time.perf_counter()
        if candidate.classifier in LINEAR:  # ranked by the ridge screen; the winner is tuned on every row
            splits = list(cv_splitter(self.cv, y, groups, self.seed)[0].split(X, y, groups))
            score = ridge_screen(self._view(candidate, X), y, splits)
            self.table_.append({"candidate": candidate, "round": number, "rows": len(y), "score": score, "std": None,
                                "value": None, "screen": f"ridge, {len(splits)}-fold CV",
                                "seconds": time.perf_counter() - began})
            return score
        try:
            tuned = self._estimator(candidate, X, y, groups, len(y)).set_params(refit=False).fit(
                self._view(candidate, X), y, **self._groups(groups))
            score = float(tuned.best_score_)
            spread = next((p["cv_std"] for p in tuned.curve_ if p["value"] == tuned.best_value_), None)
            self._tuned[candidate] = (len(y), tuned)
        except (ValueError, InputError) as exc:  # e.g. too few rows of a class for this classifier
            log.info("candidate %s / %s failed: %s", candidate.representation, candidate.classifier, exc)
            score, spread = None, None
        self.table_.append({"candidate": candidate, "round": number, "rows": len(y), "score": score,
                            "std": spread, "value": None if score is None else tuned.best_value_,
                            "seconds": time.perf_counter() - began})
        return -np.inf if score is None else score

    def _estimator(self, candidate: Candidate, X, y, groups, n_rows: int):
        width = self._view(candidate, X[:1]).shape[1]
        counts = np.unique(y, return_counts=True)[1]
        estimator = make_estimator(classifier=candidate.classifier, normalize=self.normalize,
                              reduce=candidate.reduce(width, n_rows, self.reduce), balance=self.balance,
                              seed=self.seed, n_samples=n_rows, n_features=width, smallest_class=int(counts.min()),
                              cv=self.cv, tune=True, search=self.search, n_jobs=self.n_jobs)
        if candidate.classifier == "linear-svm" and self.choosing_:
            estimator.set_params(grid=tuple(v for v in estimator.grid if v <= LINEAR_SVM_MAX_C))
        return estimator

    @staticmethod
    def _groups(groups) -> dict:
        return {} if groups is None else {"groups": groups}

    # --- the representations ----------------------------------------------------------------------

    def reads(self, candidate: Candidate) -> list[str]:
        """The stored layers a candidate reads."""
        return representation_layers(candidate.representation, self.layers)

    def _representation(self, candidate: Candidate) -> Representation:
        layers = self.reads(candidate)
        widths = dict(zip(self.layers, self.dims))
        return Representation(tuple(layers), tuple(widths[layer] for layer in layers), self.grey)

    def _columns(self, candidate: Candidate) -> np.ndarray:
        return columns_of(self.layers, self.dims, self.reads(candidate))

    def _view(self, candidate: Candidate, X) -> np.ndarray:
        return self._representation(candidate).transform(X[:, self._columns(candidate)])

    def _with_representation(self, candidate: Candidate, tuned):
        """A fitted pipeline with the representation as its first step: it reads the stored vectors
        of the candidate's layers side by side, as `featx predict` and `featx serve` give them."""
        fitted = tuned.pipeline_  # an imblearn Pipeline with SMOTE: its type is kept
        return type(fitted)([("represent", self._representation(candidate)), *fitted.steps])

    def narrow(self, X) -> np.ndarray:
        """The columns of `X` (every candidate's layers) that the chosen model reads."""
        return np.asarray(X, dtype=np.float32)[:, self._columns(self.choice_)]

    def unfitted_pipeline(self, n_samples: int, smallest_class: int):
        """A fresh pipeline of the choice at its chosen strength, for `n_samples` rows of `narrow(X)`
        (the learning curve refits it on fewer rows)."""
        from featx.learn.estimators import build_pipeline

        represent = self._representation(self.choice_)
        width = represent.transform(np.zeros((1, sum(represent.dims)), np.float32)).shape[1]
        plain = build_pipeline(classifier=self.choice_.classifier, normalize=self.normalize,
                               reduce=self.choice_.reduce(width, n_samples, self.reduce), balance=self.balance,
                               seed=self.seed, n_samples=n_samples, n_features=width, smallest_class=smallest_class,
                               tuned=True)
        return type(plain)([("represent", represent), *plain.steps]).set_params(**self.tuned_.best_params_)

    # --- prediction -------------------------------------------------------------------------------

    def predict(self, X):
        return self.pipeline_.predict(self.narrow(X))

    def decision_function(self, X):
        return self.pipeline_.decision_function(self.narrow(X))

    @property
    def best_params_(self) -> dict:
        return self.tuned_.best_params_

    def summary(self) -> dict:
        """The choice and the table of what was tried, for the report."""
        rows = [{"representation": r["candidate"].representation,
                 "classifier": r["candidate"].classifier + (f" (screen: {r['screen']})" if r.get("screen") else ""),
                 "round": r["round"], "rows": r["rows"], "score": r["score"], "std": r["std"],
                 "seconds": round(r["seconds"], 2)} for r in self.table_]
        return {"representation": self.choice_.representation, "classifier": self.choice_.classifier,
                "layers": list(self.layers_), "tried": rows, "seconds": round(self.seconds_, 1),
                "metric": "inner cross-validation balanced accuracy on the training rows only"}
