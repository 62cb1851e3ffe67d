"""Choose a classifier's main strength (C, k, leaf size, iterations) by cross-validation on the
rows it is given — and only those: `train_shallow` fits a `TunedPipeline` inside every outer fold,
so the score it reports was never seen by the tuning.

Speed comes from: the preprocessing (z-score, PCA, SMOTE) is fitted once per inner
fold, not once per grid point; the grid is walked as a regularisation path, strongest first, with
warm starts where the estimator has them (LogisticRegression and HistGradientBoosting continue
from the previous point's solution, as LogisticRegressionCV does), and the walk stops once the CV
score has fallen for `patience` points in a row, or at once when it fell clearly beyond the best
point's noise or the training rows are already fitted perfectly without a gain (the weakly
regularised end is the slow one); linear solvers walk with a 10× looser tolerance; the inner folds
run on threads; and
the curve is measured on a stratified subsample of at most `max_rows` rows (the final refit
always uses every row)."""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from featx.errors import InputError
from featx.learn.parallel import thread_map
from featx.options import TRAIN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strength:
    """The one knob tuned for a classifier: its pipeline parameter, the grid ordered from the
    strongest regularisation to the weakest, and the value used when tuning is off."""

    param: str
    grid: tuple
    fixed: object
    label: str
    warm_start: bool = False  # each grid point continues from the previous one's solution
    stop_early: bool = False  # the CV curve is smooth and single-peaked (C paths): stop past the peak
    walk_tol: float | None = None  # solver tolerance while walking the curve (the final refit keeps the default)


# grids run from the strongest regularisation to the weakest. C over 1e-6…1e2 for linear models: on
# ~1,000-d features and a few thousand rows the best C is often 1e-4…1e-2, far below the libraries'
# default of 1
STRENGTHS = {
    # a 10× looser tolerance while walking changes no CV score by more than its noise and saves a
    # quarter of liblinear's iterations (not for lbfgs: stopped early at a tiny C, its intercept has
    # not converged yet and the inner scores flatter a model whose refit answers one class)
    "linear-svm": Strength("classify__C", tuple(float(c) for c in np.logspace(-6, 2, 9)), 1.0, "C", stop_early=True,
                           walk_tol=1e-3),
    "logreg": Strength("classify__C", tuple(float(c) for c in np.logspace(-6, 2, 9)), 1.0, "C", warm_start=True,
                       stop_early=True),
    "rbf-svm": Strength("classify__C", (0.1, 1.0, 10.0, 100.0, 1000.0), 1.0, "C", stop_early=True),
    "knn": Strength("classify__n_neighbors", (51, 25, 15, 9, 5, 3, 1), 5, "k (neighbours)"),
    "tree": Strength("classify__min_samples_leaf", (64, 32, 16, 8, 4, 2, 1), 1, "min samples per leaf"),
    "forest": Strength("classify__min_samples_leaf", (16, 4, 1), 1, "min samples per leaf"),
    "hgb": Strength("classify__max_iter", (25, 50, 100, 200, 400), 100, "boosting iterations", warm_start=True),
}


def grid_for(strength: Strength, n_rows: int) -> tuple:
    """The grid values that can work on `n_rows` training rows (k of kNN must stay below the
    rows of an inner training fold, which holds at least half of them)."""
    if strength.param.endswith("n_neighbors"):
        usable = tuple(k for k in strength.grid if k <= max(1, n_rows // 2))
        return usable or (1,)
    return strength.grid


def cv_splitter(n_splits: int, y, groups=None, seed: int = TRAIN.seed):
    """Stratified folds; when every row has a group, whole groups go to one fold (a patient's or a
    batch's images never sit on both sides). Returns (splitter, folds actually used)."""
    classes, counts = np.unique(y, return_counts=True)
    folds = max(2, min(n_splits, int(counts.min())))
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise InputError(f"group cross-validation needs at least 2 groups, the rows have {n_groups}; "
                             "give more groups in the 'group' column, or leave it empty")
        folds = max(2, min(folds, n_groups))
        return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed), folds
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), folds


def stratified_subsample(y, max_rows: int, seed: int, groups=None) -> np.ndarray:
    """Indices of at most `max_rows` rows keeping class proportions (and every class)."""
    index = np.arange(len(y))
    if len(y) <= max_rows:
        return index
    if groups is not None:  # keep whole groups so the inner group folds stay meaningful
        rng = np.random.default_rng(seed)
        chosen, total = [], 0
        for g in rng.permutation(np.unique(groups)):
            rows = index[groups == g]
            chosen.append(rows)
            total += len(rows)
            if total >= max_rows:
                break
        picked = np.sort(np.concatenate(chosen))
        return picked if len(np.unique(y[picked])) == len(np.unique(y)) else index
    keep, _ = train_test_split(index, train_size=max_rows, stratify=y, random_state=seed)
    return np.sort(keep)


class TunedPipeline(ClassifierMixin, BaseEstimator):
    """A normalise → reduce → (SMOTE) → classify pipeline whose `param` is chosen from `grid` by
    inner cross-validation (balanced accuracy) on the rows given to `fit`, then refitted on all of
    them. `extra_grid` adds other parameters (e.g. the PCA size) searched exhaustively around the path.

    After fit: `pipeline_` (a plain fitted Pipeline, what gets saved), `best_params_`,
    `best_value_`, `curve_` (per grid value: train and CV score mean ± std, or None where the walk
    stopped early), `failures_` (grid points that raised), `inner_folds_`, `tune_rows_`."""

    def __init__(self, *, pipeline, param: str, grid, extra_grid=None, warm_start: bool = False,
                 stop_early: bool = False, walk_tol: float | None = None, cv: int = TRAIN.cv, max_rows: int = 2000,
                 patience: int = 2, seed: int = TRAIN.seed, n_jobs: int | None = 1, refit: bool = True):
        self.pipeline = pipeline
        self.param = param
        self.grid = grid
        self.warm_start = warm_start
        self.stop_early = stop_early
        self.walk_tol = walk_tol
        self.extra_grid = extra_grid
        self.cv = cv
        self.max_rows = max_rows
        self.patience = patience
        self.seed = seed
        self.n_jobs = n_jobs  # threads for the inner folds (None: the usable cores)
        self.refit = refit  # False: only score the grid (best_score_, best_value_), fit nothing on every row

    def fit(self, X, y, groups=None):
        X = np.asarray(X)
        y = np.asarray(y)
        if len(self.grid) < 1:
            raise InputError("the tuning grid is empty")
        rows = stratified_subsample(y, self.max_rows, self.seed, groups)
        Xs, ys = X[rows], y[rows]
        gs = None if groups is None else np.asarray(groups)[rows]
        splitter, self.inner_folds_ = cv_splitter(self.cv, ys, gs, self.seed)
        splits = list(splitter.split(Xs, ys, gs))
        self.tune_rows_ = len(rows)
        self.failures_ = []
        extra = self.extra_grid or {}
        best = None
        for combo in (dict(zip(extra, values)) for values in itertools.product(*extra.values())):
            curve = self._walk(clone(self.pipeline).set_params(**combo), Xs, ys, splits, combo)
            scored = [p for p in curve if p["cv_mean"] is not None and np.isfinite(p["cv_mean"])]
            if not scored:
                continue
            # ties go to the stronger regularisation: the grid is ordered strongest first
            top = max(scored, key=lambda p: p["cv_mean"])
            if best is None or top["cv_mean"] > best[1]["cv_mean"]:
                best = (combo, top, curve)
        if best is None:
            raise InputError(f"every point of the tuning grid failed: {self.failures_[:3]}")
        self.combo_, top, self.curve_ = best
        self.best_value_, self.best_score_ = top["value"], top["cv_mean"]
        self.best_params_ = {**self.combo_, self.param: top["value"]}
        return self.fit_chosen(X, y) if self.refit else self

    def fit_chosen(self, X, y):
        """Fit the pipeline on every row at the strength the tuning chose (after a `refit=False`
        fit on these same rows, this finishes the job without tuning again)."""
        X, y, combo = np.asarray(X), np.asarray(y), self.combo_
        self.refit_rejected_ = []
        # the refit on every row must behave like the inner fits did: a model that fell to a
        # constant answer (e.g. logistic regression at a tiny C, where the intercept outweighs
        # every feature) would carry an inner-CV score it cannot reproduce; then the next best point
        candidates = sorted((p for p in self.curve_ if p["cv_mean"] is not None and np.isfinite(p["cv_mean"])),
                            key=lambda p: -p["cv_mean"])
        look = np.sort(np.random.default_rng(self.seed).choice(len(y), min(len(y), 2000), replace=False))
        tried = []
        for top in candidates[:3]:
            params = {**combo, self.param: top["value"]}
            pipeline = clone(self.pipeline).set_params(**params).fit(X, y)
            tried.append((top, params, pipeline))
            refit_train = balanced_accuracy_score(y[look], pipeline.predict(X[look]))
            if top["train_mean"] is None or refit_train >= top["train_mean"] - 0.1:
                break
            self.refit_rejected_.append({"value": top["value"], "inner_train": top["train_mean"],
                                         "refit_train": refit_train})
            warnings.warn(f"tuning: {self.param.split('__')[-1]}={top['value']:g} scored {top['cv_mean']:.3f} in "
                          f"inner CV "
                          f"but its refit on all rows fits them much worse ({refit_train:.3f} vs "
                          f"{top['train_mean']:.3f}); "
                          "using the next best value", stacklevel=2)
        else:  # none reproduced its inner fits: keep the best-scored one, with the warnings above
            top, params, pipeline = tried[0]
        self.best_value_ = top["value"]
        self.best_params_ = params
        self.best_score_ = top["cv_mean"]
        self.pipeline_ = pipeline
        self.classes_ = self.pipeline_.classes_
        return self

    def _walk(self, pipeline, X, y, splits, combo) -> list[dict]:
        """Train/CV scores along the grid; one prepared fold (transformed rows, warm model) per split."""
        prepared = []
        for train, valid in splits:
            Xt, yt, Xv = _prepare(pipeline, X[train], y[train], X[valid])
            model = clone(pipeline[-1])
            if self.warm_start:
                model.set_params(warm_start=True)
            if self.walk_tol is not None:
                model.set_params(tol=self.walk_tol)
            # the train score is measured on at most 2,000 rows: it only has to show the gap
            look = np.arange(len(yt)) if len(yt) <= 2000 else np.random.default_rng(self.seed).choice(len(yt), 2000,
                                                                                                      False)
            prepared.append((Xt, yt, Xv, y[valid], model, look))
        key = self.param.split("__", 1)[1]
        curve, best, best_error, stale, last_train = [], -np.inf, 0.0, 0, -np.inf
        chance = 1 / len(np.unique(y))  # the balanced accuracy of a constant answer
        for value in self.grid:
            if self.stop_early and stale >= self.patience:
                curve.append({"value": value, "train_mean": None, "train_std": None, "cv_mean": None,
                              "cv_std": None, "skipped": True})
                continue
            scores = thread_map(lambda fold: self._fit_score(prepared[fold], key, value, combo, fold),  # noqa: B023 (run now)
                                range(len(prepared)), self.n_jobs)
            train_scores, cv_scores = [t for t, _ in scores], [c for _, c in scores]
            point = {"value": value, "train_mean": _mean(train_scores), "train_std": _std(train_scores),
                     "cv_mean": _mean(cv_scores), "cv_std": _std(cv_scores), "skipped": False}
            curve.append(point)
            score = point["cv_mean"] if point["cv_mean"] is not None else -np.inf
            saturated = point["train_mean"] is not None and point["train_mean"] >= 0.999
            # a training score at chance is a model that answers one class (too strongly
            # regularised): no evidence about the peak, walk on
            underfit = point["train_mean"] is not None and point["train_mean"] <= chance + 0.02
            rising = point["train_mean"] is not None and point["train_mean"] > last_train
            if point["train_mean"] is not None and not underfit:
                last_train = point["train_mean"]
            if score > best + 0.002:
                best, stale = score, 0
                best_error = (point["cv_std"] or 0.0) / np.sqrt(len(prepared))  # standard error of the best mean
            elif underfit:
                pass
            elif (score < best - max(0.01, 2 * best_error) and rising) or saturated:
                # clearly past the peak (beyond the best point's noise) while the training score
                # still rises: overfitting, which weaker regularisation only worsens; or the model
                # already fits its training rows perfectly without gaining, and weaker
                # regularisation barely moves a separating solution. The weak end is the slowest to fit.
                stale = self.patience
            elif score < best - 0.005:  # past the peak, maybe by noise: one more point decides
                best, stale = max(best, score), stale + 1
            # else: a plateau the model can still climb from (e.g. chance level at the strong end)
        return curve

    def _fit_score(self, prepared_fold, key, value, combo, fold) -> tuple[float, float]:
        """(train, CV) balanced accuracy of one inner fold's model at one grid value; NaN if it failed."""
        Xt, yt, Xv, yv, model, look = prepared_fold
        try:
            model.set_params(**{key: value}).fit(Xt, yt)
            return (balanced_accuracy_score(yt[look], model.predict(Xt[look])),
                    balanced_accuracy_score(yv, model.predict(Xv)))
        except Exception as exc:  # a failed point is reported, not fatal
            self.failures_.append({**combo, self.param: value, "fold": fold, "error": f"{type(exc).__name__}: {exc}"})
            warnings.warn(f"tuning: {self.param.split('__')[-1]}={value} failed in inner fold {fold}: {exc}",
                          stacklevel=2)
            return np.nan, np.nan

    def predict(self, X):
        return self.pipeline_.predict(X)

    def decision_function(self, X):
        return self.pipeline_.decision_function(X)


def _prepare(pipeline, X_train, y_train, X_valid):
    """Fit every step but the classifier on the fold's training rows; transform both sides."""
    for _, step in pipeline.steps[:-1]:
        if step is None or step == "passthrough":
            continue
        step = clone(step)
        if hasattr(step, "fit_resample"):  # SMOTE: training rows only
            if isinstance(getattr(step, "k_neighbors", None), int):  # an inner fold holds fewer of the rarest class
                fewest = int(np.unique(y_train, return_counts=True)[1].min())
                step.set_params(k_neighbors=max(1, min(step.k_neighbors, fewest - 1)))
            X_train, y_train = step.fit_resample(X_train, y_train)
            continue
        X_train = step.fit_transform(X_train, y_train)
        X_valid = step.transform(X_valid)
    return X_train, y_train, X_valid


def _mean(values) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _std(values) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.std(finite)) if finite else None


def plot_validation_curve(curve: list[dict], chosen, label: str, path, title: str):
    """Train and CV balanced accuracy against the tuned strength: the bias/variance picture."""
    from featx.learn.metrics import pyplot

    plt = pyplot()
    points = [p for p in curve if not p.get("skipped") and p["cv_mean"] is not None]
    xs = np.array([p["value"] for p in points], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, name, colour in (("train", "train (inner folds)", "tab:orange"), ("cv", "cross-validation", "tab:blue")):
        mean = np.array([p[f"{key}_mean"] for p in points], dtype=float)
        std = np.array([p[f"{key}_std"] for p in points], dtype=float)
        ax.plot(xs, mean, marker="o", color=colour, label=name)
        ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2)
    ax.axvline(float(chosen), color="black", linestyle="--", linewidth=1, label=f"chosen {label} = {chosen:g}")
    ax.set_xscale("log")
    skipped = [p["value"] for p in curve if p.get("skipped")]
    ax.set_xlabel(label + (f"  (not walked: {', '.join(f'{v:g}' for v in skipped)})" if skipped else ""))
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
