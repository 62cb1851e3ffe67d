"""Shallow classifiers on stored features: normaliser, reducer and classifier as ONE scikit-learn
Pipeline, honest evaluation (held-out split or (nested) cross-validation), and a model bundle
that loads without running pickle code and refuses features of another extractor."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featx.errors import ConfigMismatchError, InputError, IntegrityError, StaleArtifactError
from featx.io import atomic
from featx.io.atomic import seal
from featx.learn.metrics import classification_metrics, plot_confusion, plot_learning_curve, write_report
from featx.learn.parallel import thread_map
from featx.learn.reduce import make_normalizer, make_reducer
from featx.learn.tune import STRENGTHS, TunedPipeline, cv_splitter, grid_for, plot_validation_curve
from featx.options import TRAIN
from featx.store import (
    FeatureStore,
    check_rows_finite,
    file_sha256,
    library_versions,
    read_record,
    require_same_config,
    verify_recorded_sha256,
)
from featx.store.artifacts import check_output

log = logging.getLogger(__name__)

# best on average over hymenoptera, Fashion-MNIST and synthetic checks, once tuned (benchmarks/accuracy.py)
DEFAULT_CLASSIFIER = "linear-svm"
CLASSIFIERS = ("linear-svm", "rbf-svm", "logreg", "knn", "tree", "forest", "hgb")
BALANCES = ("none", "class-weight", "smote")
MODEL_FILE = "model.skops"
MODEL_JSON = "model.json"
BUNDLE_FORMAT = 1
# what a saved pipeline may contain; anything else is refused before loading
TRUSTED_TYPE_PREFIXES = ("sklearn.", "imblearn.", "numpy.", "scipy.", "featx.learn.reduce.", "builtins.", "collections.")
TUNE_MAX_ROWS = 2000  # the validation curve is measured on a stratified subsample of this many training rows
CURVE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


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


def build_pipeline(*, classifier: str = DEFAULT_CLASSIFIER, normalize: str = TRAIN.normalize, reduce: str = TRAIN.reduce,
                   balance: str = TRAIN.balance, seed: int = TRAIN.seed, n_samples: int, n_features: int, smallest_class: int,
                   tuned: bool = False):
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


def make_estimator(*, classifier: str = DEFAULT_CLASSIFIER, normalize: str = TRAIN.normalize, reduce: str = TRAIN.reduce,
                   balance: str = TRAIN.balance, seed: int = TRAIN.seed, n_samples: int, n_features: int, smallest_class: int,
                   cv: int = TRAIN.cv, tune: bool = TRAIN.tune, search: bool = TRAIN.search, n_jobs: int | None = None):
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

@dataclass
class ShallowModel:
    """A fitted pipeline with what it needs to be applied safely: the extractor config and layer
    its features came from, and its classes."""

    pipeline: object
    classes: list[str]
    layer: str
    extractor_config: dict
    options: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def fit(self, X, y) -> "ShallowModel":
        self.pipeline.fit(X, y)
        self.classes = [str(c) for c in self.pipeline.classes_]
        return self

    def predict(self, X) -> np.ndarray:
        return self.pipeline.predict(X)

    @property
    def has_proba(self) -> bool:
        return hasattr(self.pipeline, "predict_proba") and hasattr(self.pipeline[-1], "predict_proba")

    def predict_proba(self, X) -> np.ndarray:
        if not self.has_proba:
            raise InputError(f"classifier '{self.options.get('classifier')}' gives no probabilities; "
                             "use `scores` (decision values) or train with --classifier logreg")
        return self.pipeline.predict_proba(X)

    def scores(self, X) -> np.ndarray:
        """Probabilities where the classifier has them, else decision values, one column per class."""
        if self.has_proba:
            return self.pipeline.predict_proba(X)
        values = self.pipeline.decision_function(X)
        if values.ndim == 1:  # binary: the positive class's margin
            values = np.stack([-values, values], axis=1)
        return values

    def score(self, X, y) -> float:
        return float(self.pipeline.score(X, y))

    def check_features(self, config: dict, layer: str) -> None:
        require_same_config(self.extractor_config, config, "this model")
        if layer != self.layer:
            raise ConfigMismatchError(f"this model was trained on layer '{self.layer}', not '{layer}'; "
                                      f"extract features with --layer {self.layer}")

    def check_source(self, store: FeatureStore) -> None:
        """Refuse a store whose rows, contents, labels or splits changed since this model was trained."""
        expected = self.options.get("store_fingerprint")
        if expected is not None and store.fingerprint != expected:
            raise StaleArtifactError(
                f"store '{store.path}' changed since this model was trained on it (fingerprint {expected}, now "
                f"{store.fingerprint}; last re-run: {store.summary()['last_changes'] or 'unknown'}); re-train: "
                f"`featx train-shallow {store.path} -o MODEL_DIR`")

    def save(self, folder: str | Path) -> Path:
        """Write the bundle to a temporary folder and swap it in: all or nothing."""
        import skops.io

        folder = Path(folder)
        check_output(folder, "model", inputs=[self.options.get("store")])
        with atomic.atomic_directory(folder) as tmp:
            skops.io.dump(self.pipeline, tmp / MODEL_FILE)
            info = {"format": BUNDLE_FORMAT, "extractor": self.extractor_config, "layer": self.layer,
                    "classes": self.classes, "options": self.options, "versions": library_versions(),
                    "metrics": {k: self.report.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                                "n_train", "n_eval", "evaluation")},
                    "skops_sha256": file_sha256(tmp / MODEL_FILE),
                    "source": {"store": self.options.get("store"),
                               "fingerprint": self.options.get("store_fingerprint")}}
            (tmp / MODEL_JSON).write_text(json.dumps(seal(info), indent=2, default=str) + "\n")
            if self.report.get("_report_files"):
                report_tmp = tmp / "report"
                report_tmp.mkdir()
                for name, data in self.report["_report_files"].items():
                    (report_tmp / name).write_bytes(data)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ShallowModel":
        import skops.io

        folder = Path(folder)
        info = read_record(folder, MODEL_JSON, "a featx model", "train one with `featx train-shallow STORE -o MODEL_DIR`")
        model_file = folder / MODEL_FILE
        verify_recorded_sha256(model_file, info.get("skops_sha256"), MODEL_JSON, "retrain the model, or restore the file")
        untrusted = skops.io.get_untrusted_types(file=model_file)
        refused = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
        if refused:
            raise IntegrityError(f"model file '{model_file}' contains types featx does not trust: {refused}; "
                                 "it was not made by featx. Refusing to load it")
        pipeline = skops.io.load(model_file, trusted=untrusted)
        return cls(pipeline, info["classes"], info["layer"], info["extractor"], info.get("options", {}),
                   info.get("metrics", {}))


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


def train_shallow(store: FeatureStore | str | Path, *, layer: str | None = None,
                  classifier: str = DEFAULT_CLASSIFIER, normalize: str = TRAIN.normalize, reduce: str = TRAIN.reduce, cv: int = TRAIN.cv,
                  val: FeatureStore | str | Path | None = None, tune: bool = TRAIN.tune, search: bool = TRAIN.search,
                  balance: str = TRAIN.balance, seed: int = TRAIN.seed, report_dir: str | Path | None = None,
                  out: str | Path | None = None, learning_curve: bool = True) -> ShallowModel:
    """Fit and honestly evaluate a shallow classifier on a store's features; save it to `out`.

    With `tune` (the default) the classifier's main strength (C, k, leaf size, iterations; see
    `featx.learn.tune.STRENGTHS`) is chosen by inner cross-validation on the training rows only,
    inside every outer fold, so the reported score never saw the rows it is scored on. `search`
    also searches PCA's K. `tune=False` keeps the fixed textbook values (C = 1, k = 5…)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    layer = store.check_layer(layer)
    data = labelled_features(store, layer)
    if search and not tune:
        raise InputError("--search tunes more parameters and --no-tune turns tuning off; give one of them")
    options = {"classifier": classifier, "normalize": normalize, "reduce": reduce, "cv": cv, "tune": tune,
               "search": search, "balance": balance, "seed": seed, "store": str(Path(store.path).resolve()),
               "layer": layer, "store_fingerprint": store.fingerprint}
    if out is not None:  # refuse a bad output folder before the work, not after
        check_output(out, "model", inputs=[store.path])

    if val is not None:
        val_store = val if isinstance(val, FeatureStore) else FeatureStore.open(val)
        require_same_config(store.config, val_store.config, f"validation store '{val_store.path}'")
        val_data = labelled_features(val_store, val_store.check_layer(layer))
        X_train, y_train, g_train, X_eval, y_eval = data.X, data.y, data.groups, val_data.X, val_data.y
        scheme = f"fit on '{store.path}', scored once on --val '{val_store.path}'"
    elif (split := _held_out(data)) is not None:
        train, held = split
        X_train, y_train, g_train = data.X[train], data.y[train], _take(data.groups, train)
        X_eval, y_eval = data.X[held], data.y[held]
        scheme = "fit on split 'train', scored once on the held-out 'val'/'test' rows"
    else:
        X_train, y_train, g_train, X_eval, y_eval = data.X, data.y, data.groups, None, None
        scheme = None

    if X_eval is not None:  # held-out rows that copy training rows make the score optimistic
        from featx.learn.duplicates import warn_heldout_near_duplicates

        warn_heldout_near_duplicates(X_train, X_eval, store.path)
    counts = _check_classes(y_train, f"training data of '{store.path}'")
    classes = sorted(counts)
    smallest = min(counts.values())
    folds = _folds(cv, smallest) if X_eval is None else None  # warns (to the caller) before recording starts
    if classifier not in STRENGTHS:
        raise InputError(f"unknown --classifier '{classifier}'; allowed: {', '.join(CLASSIFIERS)}")
    strength = STRENGTHS[classifier]
    outer = None
    if X_eval is None:
        outer, folds = cv_splitter(folds, y_train, g_train, seed)

    def pipeline_for(reduce_spec: str, n_samples: int, smallest_class: int):
        return build_pipeline(classifier=classifier, normalize=normalize, reduce=reduce_spec, balance=balance,
                              seed=seed, n_samples=n_samples, n_features=X_train.shape[1],
                              smallest_class=smallest_class, tuned=tune)

    def estimator_for(reduce_spec: str, n_samples: int, smallest_class: int, n_jobs: int | None):
        return make_estimator(classifier=classifier, normalize=normalize, reduce=reduce_spec, balance=balance,
                              seed=seed, n_samples=n_samples, n_features=X_train.shape[1],
                              smallest_class=smallest_class, cv=cv, tune=tune, search=search, n_jobs=n_jobs)

    def fit(estimator, X, y, groups):
        return estimator.fit(X, y, groups=groups) if tune else estimator.fit(X, y)

    def evaluate(reduce_spec: str):
        """Predictions on the evaluation rows, their truth, per-fold scores, fold estimators, final estimator."""
        if X_eval is not None:
            fitted = fit(estimator_for(reduce_spec, len(y_train), smallest, n_jobs=None), X_train, y_train, g_train)
            predicted = fitted.predict(X_eval)
            return predicted, y_eval, [classification_metrics(y_eval, predicted, classes)], [fitted], fitted

        def fit_on(rows):  # one task: an outer training fold, or (rows=None) every row for the final model
            rows = np.arange(len(y_train)) if rows is None else rows
            fold_smallest = int(pd.Series(y_train[rows]).value_counts().min())
            return fit(estimator_for(reduce_spec, len(rows), fold_smallest, n_jobs=1),
                       X_train[rows], y_train[rows], _take(g_train, rows))

        # the outer folds and the final fit are independent: one per core (liblinear and BLAS
        # release the GIL, so threads share the feature matrix instead of copying it)
        splits = list(outer.split(X_train, y_train, g_train))
        with tqdm(total=len(splits) + 1, desc="outer folds + final fit", leave=False,
                  disable=not log.isEnabledFor(logging.INFO)) as bar:
            *fold_estimators, fitted = thread_map(fit_on, [train for train, _ in splits] + [None],
                                                  progress=bar.update)
        predicted = np.empty(len(y_train), dtype=object)
        fold_metrics = []
        for (_, test_idx), estimator in zip(splits, fold_estimators):
            predicted[test_idx] = estimator.predict(X_train[test_idx])
            fold_metrics.append(classification_metrics(y_train[test_idx], predicted[test_idx], classes))
        return predicted.astype(str), y_train, fold_metrics, fold_estimators, fitted

    # every warning (non-convergence, a failed grid point…) goes into the report instead of being lost
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predicted, truth, fold_metrics, fold_estimators, fitted = evaluate(reduce)
        metrics = classification_metrics(truth, predicted, classes)
        if X_eval is None:
            spread = _fold_spread(fold_metrics, f"std over {folds} outer folds")
            scheme = (f"stratified {'group ' if g_train is not None else ''}{folds}-fold cross-validation"
                      + (" (nested: the strength is tuned inside each training fold)" if tune else ""))
        else:
            spread = _bootstrap_spread(truth, predicted, classes, seed)
        reduction = None
        if reduce.startswith("pq:"):
            baseline_predicted, baseline_truth, *_ = evaluate("none")
            baseline = classification_metrics(baseline_truth, baseline_predicted, classes)["accuracy"]
            pq = _final_pipeline(fitted).named_steps["reduce"]
            reduction = {"kind": "product quantization", "m": pq.m, "bits": 8,
                         "bytes_per_vector": pq.m, "float32_bytes_per_vector": X_train.shape[1] * 4,
                         "compression_ratio": pq.compression_ratio, "accuracy_without_reduction": baseline,
                         "accuracy_change": metrics["accuracy"] - baseline}
        elif reduce.startswith("pca:"):
            pca = _final_pipeline(fitted).named_steps["reduce"]
            reduction = {"kind": type(pca).__name__, "components": int(pca.n_components_),
                         "explained_variance": float(np.sum(pca.explained_variance_ratio_))}
        curve = []
        if learning_curve:
            chosen = getattr(fitted, "best_params_", {})
            curve = _learning_curve(lambda n, per_class: pipeline_for(reduce, n, per_class).set_params(**chosen),
                                    X_train, y_train, g_train, X_eval, y_eval, seed,
                                    all_rows_accuracy=None if X_eval is None else metrics["accuracy"])

    final = _final_pipeline(fitted)
    report = {
        "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"], **spread, "n_train": int(len(y_train)), "n_eval": int(len(truth)),
        "classes": classes, "evaluation": scheme, "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"], "learning_curve": curve, "reduction": reduction,
        "tuning": _tuning_summary(fitted, fold_estimators, strength, tune),
        "best_params": getattr(fitted, "best_params_", None),
        "groups": None if g_train is None else {"column": "group", "n_groups": int(len(np.unique(g_train)))},
        "warnings": _summarise_warnings(caught),
        "config": {"extractor": store.config, **options},
    }
    for item in report["warnings"]:
        log.warning("%s (x%d)", item["message"], item["count"])
    model = ShallowModel(final, [str(c) for c in final.classes_], layer, store.config, options, report)
    report["_report_files"] = _render_report(report, store, layer, classifier)
    if report_dir is not None:
        folder = Path(report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in report["_report_files"].items():
            (folder / name).write_bytes(blob)
    if out is not None:
        model.save(out)
    return model


def _final_pipeline(fitted):
    return fitted.pipeline_ if hasattr(fitted, "pipeline_") else fitted


def _folds(cv: int, smallest: int) -> int:
    if cv < 2:
        raise InputError(f"--cv {cv} must be at least 2")
    if cv > smallest:
        log.warning("--cv %d is larger than the smallest class (%d images); using %d folds", cv, smallest, smallest)
        warnings.warn(f"--cv {cv} is larger than the smallest class ({smallest} images); using {smallest} folds")
        return smallest
    return cv


SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


def _fold_spread(fold_metrics: list[dict], how: str) -> dict:
    """Mean ± std of each score over the outer folds (the pooled score is what the table shows)."""
    spread = {f"{k}_std": float(np.std([m[k] for m in fold_metrics])) for k in SCORES}
    spread["fold_scores"] = [{k: m[k] for k in SCORES} for m in fold_metrics]
    spread["spread"] = how
    return spread


def _bootstrap_spread(truth, predicted, classes, seed: int, repeats: int = 200) -> dict:
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


def _tuning_summary(fitted, fold_estimators: list, strength, tuned: bool) -> dict:
    if not tuned:
        return {"enabled": False, "param": strength.param, "label": strength.label, "fixed": strength.fixed}
    return {"enabled": True, "param": strength.param, "label": strength.label, "scoring": "balanced_accuracy",
            "grid": list(fitted.grid), "chosen": fitted.best_value_, "best_params": fitted.best_params_,
            "inner_cv_score": fitted.best_score_, "inner_folds": fitted.inner_folds_, "tune_rows": fitted.tune_rows_,
            "chosen_per_outer_fold": [e.best_value_ for e in fold_estimators] if len(fold_estimators) > 1 else None,
            "validation_curve": fitted.curve_, "failures": fitted.failures_}


def _summarise_warnings(caught) -> list[dict]:
    counts: dict[tuple, int] = {}
    for w in caught:
        key = (w.category.__name__, str(w.message).strip())
        counts[key] = counts.get(key, 0) + 1
    return [{"category": c, "message": m, "count": n} for (c, m), n in counts.items()]


def _learning_curve(make_pipeline, X_train, y_train, g_train, X_eval, y_eval, seed: int,
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


def _render_report(report: dict, store: FeatureStore, layer: str, classifier: str) -> dict[str, bytes]:
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
