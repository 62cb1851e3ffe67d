"""Shallow classifiers on stored features: normaliser, reducer and classifier as ONE scikit-learn
Pipeline, trained and honestly evaluated (held-out split or (nested) cross-validation) by
`train_shallow`; the saved bundle is `featx.learn.model.ShallowModel`."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featx.errors import InputError
from featx.learn.evaluation import (
    bootstrap_spread,
    fold_spread,
    learning_curve,
    report_files,
    summarise_warnings,
    tuning_summary,
)
from featx.learn.metrics import classification_metrics
from featx.learn.model import ShallowModel  # noqa: F401 (public here too: featx.learn.classify.ShallowModel)
from featx.learn.parallel import thread_map
from featx.learn.reduce import make_normalizer, make_reducer
from featx.learn.tune import STRENGTHS, TunedPipeline, cv_splitter, grid_for
from featx.options import TRAIN
from featx.store import (
    FeatureStore,
    check_rows_finite,
    require_same_config,
)
from featx.store.artifacts import check_output

log = logging.getLogger(__name__)

# the default classifier (featx.options) is the best on average over hymenoptera, Fashion-MNIST and
# synthetic checks, once tuned (benchmarks/accuracy.py)
DEFAULT_CLASSIFIER = TRAIN.classifier
CLASSIFIERS = ("linear-svm", "rbf-svm", "logreg", "knn", "tree", "forest", "hgb")
BALANCES = ("none", "class-weight", "smote")
TUNE_MAX_ROWS = 2000  # the validation curve is measured on a stratified subsample of this many training rows


def make_classifier(name: str, balance: str, seed: int, tuned: bool = False):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    weight = "balanced" if balance == "class-weight" else None
    makers = {
        # dual: sklearn's "auto" picks the primal solver when rows outnumber features, 2-4× slower on
        # CNN features (thousands of rows × ~1,000 dims) at the C values tuning picks
        "linear-svm": lambda: LinearSVC(C=1.0, dual=True, class_weight=weight, max_iter=5000, random_state=seed),
        "rbf-svm": lambda: SVC(kernel="rbf", C=1.0, gamma="scale", class_weight=weight),
        "logreg": lambda: LogisticRegression(C=1.0, max_iter=3000, class_weight=weight),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5),
        "tree": lambda: DecisionTreeClassifier(class_weight=weight, random_state=seed),
        "forest": lambda: RandomForestClassifier(n_estimators=300, class_weight=weight, n_jobs=-1, random_state=seed),
        # tuned: the number of iterations is the tuned knob (a warm-started path), not early stopping
        "hgb": lambda: HistGradientBoostingClassifier(early_stopping=not tuned, class_weight=weight, random_state=seed),
    }
    if name not in makers:
        raise InputError(f"unknown --classifier '{name}'; allowed: {', '.join(CLASSIFIERS)}")
    if balance not in BALANCES:
        raise InputError(f"unknown --balance '{balance}'; allowed: {', '.join(BALANCES)}")
    if balance == "class-weight" and name == "knn":
        raise InputError("--balance class-weight is not supported by knn (it has no class weights); "
                         "use --balance smote or another classifier")
    return makers[name]()


def reducer_grid(reducer) -> dict:
    """`--search`: PCA's K is searched too (half, as given, double) around each strength path."""
    k = getattr(reducer, "n_components", None)
    return {"reduce__n_components": sorted({max(1, k // 2), k, 2 * k})} if isinstance(k, int) else {}


def build_pipeline(*, classifier: str = TRAIN.classifier, normalize: str = TRAIN.normalize,
                   reduce: str = TRAIN.reduce, balance: str = TRAIN.balance, seed: int = TRAIN.seed, n_samples: int,
                   n_features: int, smallest_class: int, tuned: bool = False):
    steps = [("normalize", make_normalizer(normalize)),
             ("reduce", make_reducer(reduce, n_samples=n_samples, n_features=n_features, seed=seed)),
             ("classify", make_classifier(classifier, balance, seed, tuned))]
    if balance == "smote":
        from imblearn.over_sampling import SMOTE
        from imblearn.pipeline import Pipeline as ImbPipeline

        if smallest_class < 2:
            raise InputError("--balance smote needs at least 2 images in every class")
        smote = SMOTE(k_neighbors=max(1, min(5, smallest_class - 1)), random_state=seed)
        return ImbPipeline(steps[:2] + [("smote", smote)] + steps[2:])  # SMOTE sees training folds only
    from sklearn.pipeline import Pipeline

    return Pipeline(steps)


def make_estimator(*, classifier: str = TRAIN.classifier, normalize: str = TRAIN.normalize,
                   reduce: str = TRAIN.reduce, balance: str = TRAIN.balance, seed: int = TRAIN.seed, n_samples: int,
                   n_features: int, smallest_class: int, cv: int = TRAIN.cv, tune: bool = TRAIN.tune,
                   search: bool = TRAIN.search, n_jobs: int | None = None):
    """What `train_shallow` fits on `n_samples` training rows: the plain pipeline, or (`tune`) a
    `TunedPipeline` choosing the classifier's strength by inner CV on those rows only. `featx probe`
    scores its candidates with the same estimators, so its winner recipe reproduces its score."""
    if classifier not in STRENGTHS:
        raise InputError(f"unknown --classifier '{classifier}'; allowed: {', '.join(CLASSIFIERS)}")

    def pipeline_for(n_rows: int):
        return build_pipeline(classifier=classifier, normalize=normalize, reduce=reduce, balance=balance, seed=seed,
                              n_samples=n_rows, n_features=n_features, smallest_class=smallest_class, tuned=tune)

    if not tune:
        return pipeline_for(n_samples)
    strength = STRENGTHS[classifier]
    inner = max(2, min(cv, smallest_class))
    # the reducer is checked against an inner training fold of the (subsampled) tuning rows
    tune_rows = min(n_samples, TUNE_MAX_ROWS) * (inner - 1) // inner
    pipeline = pipeline_for(tune_rows)
    extra = reducer_grid(pipeline.named_steps["reduce"]) if search else {}
    return TunedPipeline(pipeline=pipeline, param=strength.param, grid=grid_for(strength, tune_rows),
                         extra_grid=extra, warm_start=strength.warm_start, stop_early=strength.stop_early,
                         walk_tol=strength.walk_tol, cv=cv, max_rows=TUNE_MAX_ROWS, seed=seed, n_jobs=n_jobs)


# --- the model -----------------------------------------------------------------------------------

# --- training and evaluation ---------------------------------------------------------------------

@dataclass
class LabelledFeatures:
    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    groups: np.ndarray | None = None


def labelled_features(store: FeatureStore, layer: str) -> LabelledFeatures:
    meta = store.meta
    usable = store.ok & meta["label"].notna().to_numpy()
    if not usable.any():
        raise InputError(f"store '{store.path}' has no labelled images; labels come from class subfolders "
                         "or a 'label' column in a CSV/Parquet manifest")
    X = np.asarray(store.features(layer)[usable], dtype=np.float32)
    check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
    split = meta["split"].fillna("").to_numpy(dtype=object)[usable]
    return LabelledFeatures(X, meta["label"].to_numpy(dtype=object)[usable].astype(str), split,
                            _groups(meta, usable))


def _groups(meta: pd.DataFrame, usable: np.ndarray) -> np.ndarray | None:
    """The 'group' column (patient, batch, session…) when the inputs gave one: rows of one group are
    never split between training and evaluation. A row without a group is a group of its own."""
    if "group" not in meta.columns:
        return None
    column = meta["group"][usable]
    if column.isna().all():
        return None
    values = column.astype(object).where(column.notna(), None).to_numpy(dtype=object)
    return np.array([f"group:{v}" if v is not None else f"row:{i}" for i, v in enumerate(values)], dtype=object)


def _check_classes(y: np.ndarray, where: str) -> dict:
    counts = pd.Series(y).value_counts().to_dict()
    if len(counts) < 2:
        raise InputError(f"{where} has one class ({next(iter(counts), 'none')!r}); a classifier needs at least "
                         "two: add a folder of images per class")
    single = [c for c, n in counts.items() if n < 2]
    if single:
        raise InputError(f"{where}: class(es) {single} have a single image; every class needs at least 2 "
                         "(add images, or remove the class)")
    return counts


def _held_out(data: LabelledFeatures) -> tuple[np.ndarray, np.ndarray] | None:
    train = data.split == "train"
    held = np.isin(data.split, ["val", "test"])
    return (train, held) if train.any() and held.any() else None


def _take(groups, mask):
    return None if groups is None else groups[mask]


def train_shallow(store: FeatureStore | str | Path, *, layer: str | None = TRAIN.layer,
                  classifier: str = TRAIN.classifier, normalize: str = TRAIN.normalize, reduce: str = TRAIN.reduce,
                  cv: int = TRAIN.cv, val: FeatureStore | str | Path | None = TRAIN.val, tune: bool = TRAIN.tune,
                  search: bool = TRAIN.search, balance: str = TRAIN.balance, seed: int = TRAIN.seed,
                  report_dir: str | Path | None = None, out: str | Path | None = None,
                  learning_curve: bool = True) -> ShallowModel:
    """Fit and honestly evaluate a shallow classifier on a store's features; save it to `out`.

    With `tune` (the default) the classifier's main strength (C, k, leaf size, iterations; see
    `featx.learn.tune.STRENGTHS`) is chosen by inner cross-validation on the training rows only,
    inside every outer fold, so the reported score never saw the rows it is scored on. `search`
    also searches PCA's K. `tune=False` keeps the fixed textbook values (C = 1, k = 5…)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    layer = store.check_layer(layer)
    if search and not tune:
        raise InputError("--search tunes more parameters and --no-tune turns tuning off; give one of them")
    options = {"classifier": classifier, "normalize": normalize, "reduce": reduce, "cv": cv, "tune": tune,
               "search": search, "balance": balance, "seed": seed, "store": str(Path(store.path).resolve()),
               "layer": layer, "store_fingerprint": store.fingerprint}
    if out is not None:  # refuse a bad output folder before the work, not after
        check_output(out, "model", inputs=[store.path])
    rows = training_rows(store, layer, val)
    training = Training(rows, where=str(store.path), **{k: options[k] for k in Training.OPTIONS})
    # every warning (non-convergence, a failed grid point…) goes into the report instead of being lost
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = training.evaluate(reduce)
        metrics = classification_metrics(result.truth, result.predicted, training.classes)
        spread, scheme = training.spread(result, rows.scheme)
        reduction = training.reduction(result.fitted, metrics["accuracy"])
        curve = training.learning_curve(result.fitted, metrics["accuracy"]) if learning_curve else []
    final = final_pipeline(result.fitted)
    report = {
        "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"], **spread, "n_train": int(len(rows.y_train)), "n_eval": int(len(result.truth)),
        "classes": training.classes, "evaluation": scheme, "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"], "learning_curve": curve, "reduction": reduction,
        "tuning": tuning_summary(result.fitted, result.fold_estimators, STRENGTHS[classifier], tune),
        "best_params": getattr(result.fitted, "best_params_", None),
        "groups": None if rows.g_train is None else {"column": "group", "n_groups": int(len(np.unique(rows.g_train)))},
        "warnings": summarise_warnings(caught),
        "config": {"extractor": store.config, **options},
    }
    for item in report["warnings"]:
        log.warning("%s (x%d)", item["message"], item["count"])
    model = ShallowModel(final, [str(c) for c in final.classes_], layer, store.config, options, report)
    report["_report_files"] = report_files(report, store, layer, classifier)
    if report_dir is not None:
        folder = Path(report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in report["_report_files"].items():
            (folder / name).write_bytes(blob)
    if out is not None:
        model.save(out)
    return model


@dataclass
class TrainingRows:
    """The rows a model is fitted on and, when there are held-out rows, the rows it is scored on."""

    X_train: np.ndarray
    y_train: np.ndarray
    g_train: np.ndarray | None
    X_eval: np.ndarray | None = None
    y_eval: np.ndarray | None = None
    scheme: str | None = None  # how the held-out score is made; None: cross-validation


def training_rows(store: FeatureStore, layer: str, val: FeatureStore | str | Path | None) -> TrainingRows:
    """A second store (--val), else the store's own train / val|test split, else every row (for CV)."""
    data = labelled_features(store, layer)
    if val is not None:
        val_store = val if isinstance(val, FeatureStore) else FeatureStore.open(val)
        require_same_config(store.config, val_store.config, f"validation store '{val_store.path}'")
        val_data = labelled_features(val_store, val_store.check_layer(layer))
        rows = TrainingRows(data.X, data.y, data.groups, val_data.X, val_data.y,
                            f"fit on '{store.path}', scored once on --val '{val_store.path}'")
    elif (split := _held_out(data)) is not None:
        train, held = split
        rows = TrainingRows(data.X[train], data.y[train], _take(data.groups, train), data.X[held], data.y[held],
                            "fit on split 'train', scored once on the held-out 'val'/'test' rows")
    else:
        return TrainingRows(data.X, data.y, data.groups)
    from featx.learn.duplicates import warn_heldout_near_duplicates  # held-out copies of training rows flatter

    warn_heldout_near_duplicates(rows.X_train, rows.X_eval, store.path)
    return rows


@dataclass
class Evaluation:
    predicted: np.ndarray  # on the evaluation rows (held-out, or every row out of fold)
    truth: np.ndarray
    fold_metrics: list[dict]
    fold_estimators: list
    fitted: object  # the final estimator, fitted on every training row


class Training:
    """One train-shallow run: its rows, classes and folds, and the options every fit shares."""

    OPTIONS = ("classifier", "normalize", "reduce", "balance", "seed", "cv", "tune", "search")

    def __init__(self, rows: TrainingRows, *, where: str, classifier: str, normalize: str, reduce: str, balance: str,
                 seed: int, cv: int, tune: bool, search: bool):
        self.rows = rows
        self.classifier, self.normalize, self.reduce, self.balance = classifier, normalize, reduce, balance
        self.seed, self.cv, self.tune, self.search = seed, cv, tune, search
        counts = _check_classes(rows.y_train, f"training data of '{where}'")
        self.classes, self.smallest = sorted(counts), min(counts.values())
        if classifier not in STRENGTHS:
            raise InputError(f"unknown --classifier '{classifier}'; allowed: {', '.join(CLASSIFIERS)}")
        self.folds = self.outer = None
        if rows.X_eval is None:  # _folds warns (to the caller) before the warnings are recorded
            self.outer, self.folds = cv_splitter(_folds(cv, self.smallest), rows.y_train, rows.g_train, seed)

    def pipeline(self, reduce: str, n_samples: int, smallest_class: int):
        return build_pipeline(classifier=self.classifier, normalize=self.normalize, reduce=reduce,
                              balance=self.balance, seed=self.seed, n_samples=n_samples,
                              n_features=self.rows.X_train.shape[1], smallest_class=smallest_class, tuned=self.tune)

    def fit(self, reduce: str, rows: np.ndarray | None, n_jobs: int | None):
        """The estimator fitted on these training rows (None: all of them)."""
        X, y, groups = self.rows.X_train, self.rows.y_train, self.rows.g_train
        if rows is not None:
            X, y, groups = X[rows], y[rows], _take(groups, rows)
        estimator = make_estimator(classifier=self.classifier, normalize=self.normalize, reduce=reduce,
                                   balance=self.balance, seed=self.seed, n_samples=len(y),
                                   n_features=X.shape[1], smallest_class=int(pd.Series(y).value_counts().min()),
                                   cv=self.cv, tune=self.tune, search=self.search, n_jobs=n_jobs)
        return estimator.fit(X, y, groups=groups) if self.tune else estimator.fit(X, y)

    def evaluate(self, reduce: str) -> Evaluation:
        rows = self.rows
        if rows.X_eval is not None:
            fitted = self.fit(reduce, None, n_jobs=None)
            predicted = fitted.predict(rows.X_eval)
            return Evaluation(predicted, rows.y_eval, [classification_metrics(rows.y_eval, predicted, self.classes)],
                              [fitted], fitted)
        # the outer folds and the final fit are independent: one per core (liblinear and BLAS
        # release the GIL, so threads share the feature matrix instead of copying it)
        splits = list(self.outer.split(rows.X_train, rows.y_train, rows.g_train))
        with tqdm(total=len(splits) + 1, desc="outer folds + final fit", leave=False,
                  disable=not log.isEnabledFor(logging.INFO)) as bar:
            *fold_estimators, fitted = thread_map(lambda train: self.fit(reduce, train, n_jobs=1),
                                                  [train for train, _ in splits] + [None], progress=bar.update)
        predicted = np.empty(len(rows.y_train), dtype=object)
        fold_metrics = []
        for (_, test), estimator in zip(splits, fold_estimators):
            predicted[test] = estimator.predict(rows.X_train[test])
            fold_metrics.append(classification_metrics(rows.y_train[test], predicted[test], self.classes))
        return Evaluation(predicted.astype(str), rows.y_train, fold_metrics, fold_estimators, fitted)

    def spread(self, result: Evaluation, held_out_scheme: str | None) -> tuple[dict, str]:
        """The scores' spread and the sentence that says how they were made."""
        if self.rows.X_eval is not None:
            return bootstrap_spread(result.truth, result.predicted, self.classes, self.seed), held_out_scheme
        scheme = (f"stratified {'group ' if self.rows.g_train is not None else ''}{self.folds}-fold cross-validation"
                  + (" (nested: the strength is tuned inside each training fold)" if self.tune else ""))
        return fold_spread(result.fold_metrics, f"std over {self.folds} outer folds"), scheme

    def reduction(self, fitted, accuracy: float) -> dict | None:
        """What the reducer kept; for product quantization, the accuracy it costs (one more evaluation)."""
        if self.reduce.startswith("pq:"):
            baseline = self.evaluate("none")
            without = classification_metrics(baseline.truth, baseline.predicted, self.classes)["accuracy"]
            pq = final_pipeline(fitted).named_steps["reduce"]
            return {"kind": "product quantization", "m": pq.m, "bits": 8, "bytes_per_vector": pq.m,
                    "float32_bytes_per_vector": self.rows.X_train.shape[1] * 4,
                    "compression_ratio": pq.compression_ratio, "accuracy_without_reduction": without,
                    "accuracy_change": accuracy - without}
        if self.reduce.startswith("pca:"):
            pca = final_pipeline(fitted).named_steps["reduce"]
            return {"kind": type(pca).__name__, "components": int(pca.n_components_),
                    "explained_variance": float(np.sum(pca.explained_variance_ratio_))}
        return None

    def learning_curve(self, fitted, accuracy: float) -> list[dict]:
        chosen = getattr(fitted, "best_params_", {})
        rows = self.rows
        return learning_curve(lambda n, per_class: self.pipeline(self.reduce, n, per_class).set_params(**chosen),
                              rows.X_train, rows.y_train, rows.g_train, rows.X_eval, rows.y_eval, self.seed,
                              all_rows_accuracy=None if rows.X_eval is None else accuracy)


def final_pipeline(fitted):
    return fitted.pipeline_ if hasattr(fitted, "pipeline_") else fitted


def _folds(cv: int, smallest: int) -> int:
    if cv < 2:
        raise InputError(f"--cv {cv} must be at least 2")
    if cv > smallest:
        log.warning("--cv %d is larger than the smallest class (%d images); using %d folds", cv, smallest, smallest)
        warnings.warn(f"--cv {cv} is larger than the smallest class ({smallest} images); using {smallest} folds",
                      stacklevel=2)
        return smallest
    return cv
