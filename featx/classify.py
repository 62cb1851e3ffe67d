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
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

from featx import atomic
from featx.artifacts import check_output, seal
from featx.errors import ConfigMismatchError, InputError, IntegrityError, StaleArtifactError
from featx.evaluate import classification_metrics, plot_confusion, plot_learning_curve, write_report
from featx.reduce import make_normalizer, make_reducer
from featx.store import (FeatureStore, check_rows_finite, file_sha256, library_versions, read_record,
                         require_same_config, verify_recorded_sha256)

log = logging.getLogger(__name__)

CLASSIFIERS = ("linear-svm", "rbf-svm", "logreg", "knn", "tree", "forest", "hgb")
BALANCES = ("none", "class-weight", "smote")
MODEL_FILE = "model.skops"
MODEL_JSON = "model.json"
BUNDLE_FORMAT = 1
# what a saved pipeline may contain; anything else is refused before loading
TRUSTED_TYPE_PREFIXES = ("sklearn.", "imblearn.", "numpy.", "scipy.", "featx.reduce.", "builtins.", "collections.")
CURVE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def make_classifier(name: str, balance: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    weight = "balanced" if balance == "class-weight" else None
    makers = {
        "linear-svm": lambda: LinearSVC(C=1.0, class_weight=weight, max_iter=5000, random_state=seed),
        "rbf-svm": lambda: SVC(kernel="rbf", C=1.0, gamma="scale", class_weight=weight),
        "logreg": lambda: LogisticRegression(C=1.0, max_iter=3000, class_weight=weight),
        "knn": lambda: KNeighborsClassifier(n_neighbors=5),
        "tree": lambda: DecisionTreeClassifier(class_weight=weight, random_state=seed),
        "forest": lambda: RandomForestClassifier(n_estimators=300, class_weight=weight, n_jobs=-1, random_state=seed),
        "hgb": lambda: HistGradientBoostingClassifier(early_stopping=True, class_weight=weight, random_state=seed),
    }
    if name not in makers:
        raise InputError(f"unknown --classifier '{name}'; allowed: {', '.join(CLASSIFIERS)}")
    if balance not in BALANCES:
        raise InputError(f"unknown --balance '{balance}'; allowed: {', '.join(BALANCES)}")
    if balance == "class-weight" and name == "knn":
        raise InputError("--balance class-weight is not supported by knn (it has no class weights); "
                         "use --balance smote or another classifier")
    return makers[name]()


def param_grid(classifier: str, reducer) -> dict:
    grids = {
        "linear-svm": {"classify__C": [0.001, 0.01, 0.1, 1.0, 10.0]},
        "rbf-svm": {"classify__C": [0.1, 1.0, 10.0, 100.0]},
        "logreg": {"classify__C": [0.001, 0.01, 0.1, 1.0, 10.0]},
        "knn": {"classify__n_neighbors": [1, 3, 5, 10, 20]},
        "tree": {"classify__max_depth": [None, 5, 10, 20], "classify__min_samples_leaf": [1, 2, 5, 10]},
        "forest": {"classify__max_depth": [None, 10, 20], "classify__min_samples_leaf": [1, 2, 5]},
        "hgb": {"classify__max_depth": [None, 3, 6], "classify__min_samples_leaf": [5, 20]},
    }
    grid = dict(grids[classifier])
    k = getattr(reducer, "n_components", None)
    if isinstance(k, int):
        grid["reduce__n_components"] = sorted({max(1, k // 2), k, 2 * k})
    return grid


def build_pipeline(*, classifier: str = "linear-svm", normalize: str = "zscore", reduce: str = "none",
                   balance: str = "none", seed: int = 0, n_samples: int, n_features: int, smallest_class: int):
    steps = [("normalize", make_normalizer(normalize)),
             ("reduce", make_reducer(reduce, n_samples=n_samples, n_features=n_features, seed=seed)),
             ("classify", make_classifier(classifier, balance, seed))]
    if balance == "smote":
        from imblearn.over_sampling import SMOTE
        from imblearn.pipeline import Pipeline as ImbPipeline

        if smallest_class < 2:
            raise InputError("--balance smote needs at least 2 images in every class")
        smote = SMOTE(k_neighbors=max(1, min(5, smallest_class - 1)), random_state=seed)
        return ImbPipeline(steps[:2] + [("smote", smote)] + steps[2:])  # SMOTE sees training folds only
    from sklearn.pipeline import Pipeline

    return Pipeline(steps)


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


def labelled_features(store: FeatureStore, layer: str) -> LabelledFeatures:
    meta = store.meta
    usable = store.ok & meta["label"].notna().to_numpy()
    if not usable.any():
        raise InputError(f"store '{store.path}' has no labelled images; labels come from class subfolders "
                         "or a 'label' column in a CSV/Parquet manifest")
    X = np.asarray(store.features(layer)[usable], dtype=np.float32)
    check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
    split = meta["split"].fillna("").to_numpy(dtype=object)[usable]
    return LabelledFeatures(X, meta["label"].to_numpy(dtype=object)[usable].astype(str), split)


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


def train_shallow(store: FeatureStore | str | Path, *, layer: str | None = None, classifier: str = "linear-svm",
                  normalize: str = "zscore", reduce: str = "none", cv: int = 5,
                  val: FeatureStore | str | Path | None = None, search: bool = False, balance: str = "none",
                  seed: int = 0, report_dir: str | Path | None = None, out: str | Path | None = None,
                  learning_curve: bool = True) -> ShallowModel:
    """Fit and honestly evaluate a shallow classifier on a store's features; save it to `out`."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    layer = store.check_layer(layer)
    data = labelled_features(store, layer)
    options = {"classifier": classifier, "normalize": normalize, "reduce": reduce, "cv": cv, "search": search,
               "balance": balance, "seed": seed, "store": str(Path(store.path).resolve()), "layer": layer,
               "store_fingerprint": store.fingerprint}
    if out is not None:  # refuse a bad output folder before the work, not after
        check_output(out, "model", inputs=[store.path])

    if val is not None:
        val_store = val if isinstance(val, FeatureStore) else FeatureStore.open(val)
        require_same_config(store.config, val_store.config, f"validation store '{val_store.path}'")
        val_data = labelled_features(val_store, val_store.check_layer(layer))
        X_train, y_train, X_eval, y_eval = data.X, data.y, val_data.X, val_data.y
        scheme = f"fit on '{store.path}', scored once on --val '{val_store.path}'"
    elif (split := _held_out(data)) is not None:
        train, held = split
        X_train, y_train, X_eval, y_eval = data.X[train], data.y[train], data.X[held], data.y[held]
        scheme = "fit on split 'train', scored once on the held-out 'val'/'test' rows"
    else:
        X_train, y_train, X_eval, y_eval = data.X, data.y, None, None
        scheme = None

    if X_eval is not None:  # held-out rows that copy training rows make the score optimistic
        from featx.learn.duplicates import warn_heldout_near_duplicates

        warn_heldout_near_duplicates(X_train, X_eval, store.path)
    counts = _check_classes(y_train, f"training data of '{store.path}'")
    smallest = min(counts.values())

    def pipeline_for(reduce_spec: str, n_samples: int, smallest_class: int):
        return build_pipeline(classifier=classifier, normalize=normalize, reduce=reduce_spec, balance=balance,
                              seed=seed, n_samples=n_samples, n_features=X_train.shape[1],
                              smallest_class=smallest_class)

    def estimator_for(reduce_spec: str, n_samples: int, smallest_class: int):
        pipeline = pipeline_for(reduce_spec, n_samples, smallest_class)
        if not search:
            return pipeline
        inner = StratifiedKFold(n_splits=max(2, min(3, smallest_class)), shuffle=True, random_state=seed)
        return GridSearchCV(pipeline, param_grid(classifier, pipeline.named_steps["reduce"]), cv=inner,
                            scoring="balanced_accuracy", n_jobs=1, error_score=np.nan)

    def evaluate(reduce_spec: str) -> tuple[np.ndarray, np.ndarray, object]:
        """Predictions on the evaluation rows, their truth, and the final fitted estimator."""
        if X_eval is not None:
            fitted = estimator_for(reduce_spec, len(y_train), smallest).fit(X_train, y_train)
            return fitted.predict(X_eval), y_eval, fitted
        folds = _folds(cv, smallest)
        outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_train = len(y_train) * (folds - 1) // folds
        fold_smallest = smallest * (folds - 1) // folds
        predicted = cross_val_predict(estimator_for(reduce_spec, fold_train, fold_smallest), X_train, y_train, cv=outer)
        fitted = estimator_for(reduce_spec, len(y_train), smallest).fit(X_train, y_train)
        return predicted, y_train, fitted

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        predicted, truth, fitted = evaluate(reduce)
        classes = sorted(counts)
        metrics = classification_metrics(truth, predicted, classes)
        if scheme is None:
            scheme = f"stratified {_folds(cv, smallest)}-fold cross-validation" + (
                " (nested: the grid search runs inside each training fold)" if search else "")
        reduction = None
        if reduce.startswith("pq:"):
            baseline_predicted, baseline_truth, _ = evaluate("none")
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
            curve = _learning_curve(lambda n, per_class: pipeline_for(reduce, n, per_class),
                                    X_train, y_train, X_eval, y_eval, seed)

    final = _final_pipeline(fitted)
    report = {
        "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"], "n_train": int(len(y_train)), "n_eval": int(len(truth)),
        "classes": classes, "evaluation": scheme, "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"], "learning_curve": curve, "reduction": reduction,
        "best_params": getattr(fitted, "best_params_", None),
        "config": {"extractor": store.config, **options},
    }
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
    return fitted.best_estimator_ if hasattr(fitted, "best_estimator_") else fitted


def _folds(cv: int, smallest: int) -> int:
    if cv < 2:
        raise InputError(f"--cv {cv} must be at least 2")
    if cv > smallest:
        log.warning("--cv %d is larger than the smallest class (%d images); using %d folds", cv, smallest, smallest)
        warnings.warn(f"--cv {cv} is larger than the smallest class ({smallest} images); using {smallest} folds")
        return smallest
    return cv


def _learning_curve(make_pipeline, X_train, y_train, X_eval, y_eval, seed: int) -> list[dict]:
    """Held-out accuracy against training images per class (1, 2, 5, 10, …)."""
    if X_eval is None:  # no held-out rows: the first stratified fold is the held-out part
        folds = max(2, min(5, pd.Series(y_train).value_counts().min()))
        train_idx, eval_idx = next(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X_train, y_train))
        X_train, y_train, X_eval, y_eval = X_train[train_idx], y_train[train_idx], X_train[eval_idx], y_train[eval_idx]
    per_class_max = pd.Series(y_train).value_counts().min()
    steps = [n for n in CURVE_STEPS if n <= per_class_max]
    if per_class_max not in steps:
        steps.append(int(per_class_max))
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(y_train == c) for c in np.unique(y_train)}
    points = []
    for n in steps:
        repeats = 5 if n <= 5 else 3 if n < per_class_max else 1
        scores = []
        for _ in range(repeats):
            chosen = np.concatenate([rng.choice(idx, size=n, replace=False) for idx in by_class.values()])
            try:
                pipeline = make_pipeline(len(chosen), n)
                pipeline.fit(X_train[chosen], y_train[chosen])
                scores.append(float(np.mean(pipeline.predict(X_eval) == y_eval)))
            except (ValueError, InputError) as exc:  # e.g. PCA with more components than images
                log.info("learning curve: %d per class skipped (%s)", n, exc)
                break
        if scores:
            points.append({"per_class": int(n), "accuracy": float(np.mean(scores)), "std": float(np.std(scores)),
                           "repeats": len(scores)})
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
        write_report({k: v for k, v in report.items() if not k.startswith("_")}, folder, f"featx report: {title}")
        return {p.name: p.read_bytes() for p in folder.iterdir()}
