"""Shallow classifiers on stored features: normaliser, reducer and classifier as ONE scikit-learn
Pipeline, trained and honestly evaluated (held-out split or (nested) cross-validation) by
`train_shallow`; the saved bundle is `featx.learn.model.ShallowModel`."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featx.errors import InputError
from featx.learn.estimators import (  # noqa: F401 (public here too)
    BALANCES,
    CLASSIFIERS,
    DEFAULT_CLASSIFIER,
    build_pipeline,
    make_estimator,
)
from featx.learn.evaluation import (
    baseline_comparison,
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
from featx.learn.representation import CONCAT, Representation, columns_of, is_grey, model_input
from featx.learn.select import AUTO_CLASSIFIERS, AutoShallow
from featx.learn.tune import STRENGTHS, cv_splitter
from featx.options import TRAIN
from featx.preprocess.views import PIXEL_SIDE, PIXELS
from featx.store import (
    FeatureStore,
    check_rows_finite,
    require_same_config,
)
from featx.store.artifacts import check_output

log = logging.getLogger(__name__)

# --- the model -----------------------------------------------------------------------------------

# --- training and evaluation ---------------------------------------------------------------------

@dataclass
class LabelledFeatures:
    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    groups: np.ndarray | None = None


def labelled_features(store: FeatureStore, layers: str | list[str]) -> LabelledFeatures:
    """The labelled ok rows: the stored vectors of `layers` side by side (`model_input`)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    meta = store.meta
    usable = store.ok & meta["label"].notna().to_numpy()
    if not usable.any():
        raise InputError(f"store '{store.path}' has no labelled images; labels come from class subfolders "
                         "or a 'label' column in a CSV/Parquet manifest")
    X = model_input({layer: store.features(layer)[usable] for layer in layers}, layers)
    check_rows_finite(X, f"store '{store.path}' layer(s) {', '.join(layers)}")
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
                  classifier: str | None = TRAIN.classifier, normalize: str = TRAIN.normalize,
                  reduce: str = TRAIN.reduce, cv: int = TRAIN.cv, val: FeatureStore | str | Path | None = TRAIN.val,
                  tune: bool = TRAIN.tune, search: bool = TRAIN.search, balance: str = TRAIN.balance,
                  budget: float = TRAIN.budget, baseline: bool = TRAIN.baseline, seed: int = TRAIN.seed,
                  report_dir: str | Path | None = None, out: str | Path | None = None,
                  learning_curve: bool = True) -> ShallowModel:
    """Fit and honestly evaluate a shallow classifier on a store's features; save it to `out`.

    With `tune` (the default) the representation (each stored layer, their concatenation, the raw
    pixels) and the classifier (linear SVM, logistic regression, RBF SVM) are chosen unless given,
    and the classifier's main strength (C, k, leaf size, iterations; see `featx.learn.tune.STRENGTHS`)
    is tuned, all by inner cross-validation on the training rows only, inside every outer fold
    (`featx.learn.select.AutoShallow`), so the reported score never saw the rows it is scored on.
    `search` also searches PCA's K. `tune=False` keeps the store's first layer and the fixed textbook
    values (C = 1, k = 5…). `baseline`: the raw-pixel baseline is scored with the same protocol."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    if search and not tune:
        raise InputError("--search tunes more parameters and --no-tune turns tuning off; give one of them")
    choice = choice_for(store, layer, classifier, tune)
    options = {"classifier": classifier, "normalize": normalize, "reduce": reduce, "cv": cv, "tune": tune,
               "search": search, "balance": balance, "budget": budget, "baseline": baseline, "seed": seed,
               "store": str(Path(store.path).resolve()), "layer": layer, "store_fingerprint": store.fingerprint}
    if out is not None:  # refuse a bad output folder before the work, not after
        check_output(out, "model", inputs=[store.path])
    rows = training_rows(store, choice.layers, val)
    choice = choice.seen(rows.X_train)
    training = Training(rows, choice, where=str(store.path), **{k: options[k] for k in Training.OPTIONS})
    # every warning (non-convergence, a failed grid point…) goes into the report instead of being lost
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = training.evaluate(reduce)
        metrics = classification_metrics(result.truth, result.predicted, training.classes)
        spread, scheme = training.spread(result, rows.scheme)
        reduction = training.reduction(result.fitted, metrics["accuracy"])
        curve = training.learning_curve(result.fitted, metrics["accuracy"]) if learning_curve else []
        pixels = pixel_baseline(store, val, training, result) if baseline else None
    final = final_pipeline(result.fitted)
    chosen = training.chosen(result.fitted)
    options |= {"classifier": chosen["classifier"], "layer": chosen["representation"], "layers": chosen["layers"]}
    report = {
        "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"], **spread, "n_train": int(len(rows.y_train)), "n_eval": int(len(result.truth)),
        "classes": training.classes, "evaluation": scheme, "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"], "learning_curve": curve, "reduction": reduction,
        "representation": chosen, "baseline": pixels,
        "tuning": training.tuning(result), "best_params": getattr(result.fitted, "best_params_", None),
        "groups": None if rows.g_train is None else {"column": "group", "n_groups": int(len(np.unique(rows.g_train)))},
        "warnings": summarise_warnings(caught), "config": {"extractor": store.config, **options},
    }
    for item in report["warnings"]:
        log.warning("%s (x%d)", item["message"], item["count"])
    model = ShallowModel(final, [str(c) for c in final.classes_], chosen["layers"], store.config, options, report)
    report["_report_files"] = report_files(report, store, chosen["representation"], chosen["classifier"])
    _write_files(report["_report_files"], report_dir)
    if out is not None:
        model.save(out)
    return model


def pixel_baseline(store: FeatureStore, val, training: "Training", result: "Evaluation") -> dict:
    """The raw pixels scored with the same protocol (rows, folds, choice of classifier, tuning) as
    the features, and how the two compare."""
    if PIXELS not in store.layers:
        return {"available": False, "sentence": f"No raw-pixel baseline: store '{store.path}' has no '{PIXELS}' layer "
                                                "(the default `featx extract` stores it; or add --layer pixels)."}
    if training.choice.representations == [PIXELS]:
        return {"available": False, "sentence": "The model reads the raw pixels: it is the baseline."}
    pixels, grey = training.baseline_evaluation(result), training.choice.grey  # made by the fits already made
    if pixels is None:  # the choice did not include the pixels (a layer or --no-tune was given): score them
        pixels, grey = _pixels_alone(store, val, training)
    chosen = training.chosen(result.fitted)["representation"]
    return baseline_comparison(result, pixels, training.classes, training.seed, chosen == PIXELS,
                               f"{PIXEL_SIDE}×{PIXEL_SIDE}{' grey' if grey else ''} pixels")


def _pixels_alone(store: FeatureStore, val, training: "Training") -> tuple["Evaluation", bool]:
    """The pixels evaluated on their own, with the training run's protocol and options."""
    if PIXELS in training.choice.layers:  # the pixels are among the rows already loaded
        pixels_of = partial(training.choice.block, layer=PIXELS)
        rows = replace(training.rows, X_train=pixels_of(training.rows.X_train),
                       X_eval=None if training.rows.X_eval is None else pixels_of(training.rows.X_eval))
    else:
        rows = training_rows(store, [PIXELS], val)
    choice = Choice([PIXELS], [rows.X_train.shape[1]], [PIXELS], training.choice.classifiers).seen(rows.X_train)
    base = Training(rows, choice, where=str(store.path), **{k: getattr(training, k) for k in Training.OPTIONS})
    return base.evaluate(training.reduce), choice.grey


def _write_files(files: dict[str, bytes], folder: str | Path | None) -> None:
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name, blob in files.items():
            (Path(folder) / name).write_bytes(blob)


@dataclass(frozen=True)
class Choice:
    """What a training run chooses among: the stored layers it loads (side by side), the
    representations and classifiers it may pick (one of each: nothing to choose)."""

    layers: list[str]
    dims: list[int]
    representations: list[str]
    classifiers: list[str]
    grey: bool = False  # the stored pixels are grey (`seen` tells from the training rows)

    def block(self, X: np.ndarray, layer: str) -> np.ndarray:
        """The columns of `layer` in rows holding `layers` side by side."""
        columns = columns_of(self.layers, self.dims, [layer])
        return X[:, columns[0]:columns[-1] + 1]  # a view: one layer's columns are contiguous

    def seen(self, X_train: np.ndarray) -> "Choice":
        """This choice, told whether the training rows' pixels are grey (then one channel is read)."""
        return replace(self, grey=PIXELS in self.layers and is_grey(self.block(X_train, PIXELS)))


def choice_for(store: FeatureStore, layer: str | None, classifier: str | None, tune: bool) -> Choice:
    """The representations and classifiers to choose among: what was given, else (with `tune`)
    every stored layer, their concatenation and the pixels, and the three classifiers that suit
    frozen features; without `tune`, the store's first layer and the default classifier."""
    network = [name for name in store.layers if name != PIXELS]
    if layer == CONCAT:
        if len(network) < 2:
            raise InputError(f"--layer {CONCAT} puts several network layers side by side; store '{store.path}' has "
                             f"{len(network)} ({', '.join(network) or 'none'}). Extract with the default layers")
        representations = [CONCAT]
    elif layer is not None or not tune:
        representations = [store.check_layer(layer)]
    else:
        representations = network + ([CONCAT] if len(network) > 1 else []) + ([PIXELS] if PIXELS in store.layers
                                                                                else [])
    classifiers = [classifier] if classifier else list(AUTO_CLASSIFIERS) if tune else [DEFAULT_CLASSIFIER]
    reads = set(network) if CONCAT in representations else set()
    layers = [name for name in store.layers if name in reads or name in representations]
    dims = [int(np.prod(store.layer_shape(name))) for name in layers]
    return Choice(layers, dims, representations, classifiers)


@dataclass
class TrainingRows:
    """The rows a model is fitted on and, when there are held-out rows, the rows it is scored on."""

    X_train: np.ndarray
    y_train: np.ndarray
    g_train: np.ndarray | None
    X_eval: np.ndarray | None = None
    y_eval: np.ndarray | None = None
    scheme: str | None = None  # how the held-out score is made; None: cross-validation


def training_rows(store: FeatureStore, layers: list[str], val: FeatureStore | str | Path | None) -> TrainingRows:
    """The stored vectors of `layers` side by side, from a second store (--val), else the store's
    own train / val|test split, else every row (for CV)."""
    data = labelled_features(store, layers)
    if val is not None:
        val_store = val if isinstance(val, FeatureStore) else FeatureStore.open(val)
        require_same_config(store.config, val_store.config, f"validation store '{val_store.path}'")
        val_data = labelled_features(val_store, [val_store.check_layer(layer) for layer in layers])
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
    """One train-shallow run: its rows, classes and folds, what it chooses among, and the options
    every fit shares."""

    OPTIONS = ("normalize", "reduce", "balance", "seed", "cv", "tune", "search", "budget", "baseline")

    def __init__(self, rows: TrainingRows, choice: Choice, *, where: str, normalize: str, reduce: str, balance: str,
                 seed: int, cv: int, tune: bool, search: bool, budget: float, baseline: bool):
        self.rows, self.choice, self.baseline = rows, choice, baseline
        self.normalize, self.reduce, self.balance = normalize, reduce, balance
        self.seed, self.cv, self.tune, self.search, self.budget = seed, cv, tune, search, budget
        counts = _check_classes(rows.y_train, f"training data of '{where}'")
        self.classes, self.smallest = sorted(counts), min(counts.values())
        unknown = [c for c in choice.classifiers if c not in STRENGTHS]
        if unknown:
            raise InputError(f"unknown --classifier '{unknown[0]}'; allowed: {', '.join(CLASSIFIERS)}")
        self.folds = self.outer = None
        if rows.X_eval is None:  # _folds warns (to the caller) before the warnings are recorded
            self.outer, self.folds = cv_splitter(_folds(cv, self.smallest), rows.y_train, rows.g_train, seed)

    def selector(self, n_jobs: int | None, baseline: bool) -> AutoShallow:
        """`baseline`: also choose among the pixels alone (the raw-pixel baseline, scored by these fits)."""
        choice = self.choice
        return AutoShallow(layers=tuple(choice.layers), dims=tuple(choice.dims), grey=choice.grey,
                           representations=tuple(choice.representations), classifiers=tuple(choice.classifiers),
                           normalize=self.normalize, reduce=self.reduce, balance=self.balance, cv=self.cv,
                           search=self.search, budget=self.budget, seed=self.seed, n_jobs=n_jobs,
                           baseline=(PIXELS,) if baseline and self.baseline else ())

    def pipeline(self, reduce: str, n_samples: int, smallest_class: int):
        """The fixed pipeline (--no-tune): the representation, then normalise → reduce → classify."""
        choice = self.choice
        represent = Representation(tuple(choice.layers), tuple(choice.dims), choice.grey)
        plain = build_pipeline(classifier=choice.classifiers[0], normalize=self.normalize, reduce=reduce,
                               balance=self.balance, seed=self.seed, n_samples=n_samples,
                               n_features=represent.transform(self.rows.X_train[:1]).shape[1],
                               smallest_class=smallest_class, tuned=False)
        return type(plain)([("represent", represent), *plain.steps])

    def fit(self, reduce: str, rows: np.ndarray | None, n_jobs: int | None):
        """The estimator fitted on these training rows (None: all of them)."""
        X, y, groups = self.rows.X_train, self.rows.y_train, self.rows.g_train
        if rows is not None:
            X, y, groups = X[rows], y[rows], _take(groups, rows)
        if self.tune:  # the pixel baseline is scored by the fits that are scored: the folds, or the held-out fit
            return self.selector(n_jobs, baseline=rows is not None or self.rows.X_eval is not None).fit(
                X, y, groups=groups)
        return self.pipeline(reduce, len(y), int(pd.Series(y).value_counts().min())).fit(X, y)

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
        return self._out_of_fold(splits, fold_estimators, fitted, lambda estimator, X: estimator.predict(X))

    def _out_of_fold(self, splits, fold_estimators, fitted, predict) -> Evaluation:
        """Every training row predicted by the fold estimator that did not see it."""
        rows = self.rows
        predicted = np.empty(len(rows.y_train), dtype=object)
        fold_metrics = []
        for (_, test), estimator in zip(splits, fold_estimators):
            predicted[test] = predict(estimator, rows.X_train[test])
            fold_metrics.append(classification_metrics(rows.y_train[test], predicted[test], self.classes))
        return Evaluation(predicted.astype(str), rows.y_train, fold_metrics, fold_estimators, fitted)

    def baseline_evaluation(self, result: Evaluation) -> Evaluation | None:
        """The pixel baseline's evaluation from the fits that made `result` (`AutoShallow.baseline_`),
        or None when they did not score it."""
        if not all(getattr(e, "baseline_", None) for e in result.fold_estimators):
            return None
        rows = self.rows
        if rows.X_eval is not None:
            predicted = result.fold_estimators[0].predict_baseline(rows.X_eval)
            return Evaluation(predicted, rows.y_eval, [classification_metrics(rows.y_eval, predicted, self.classes)],
                              result.fold_estimators, None)
        splits = list(self.outer.split(rows.X_train, rows.y_train, rows.g_train))
        return self._out_of_fold(splits, result.fold_estimators, None,
                                 lambda estimator, X: estimator.predict_baseline(X))

    def chosen(self, fitted) -> dict:
        """The representation and classifier of the final model, and what was tried to choose them."""
        if isinstance(fitted, AutoShallow):
            return fitted.summary()
        return {"representation": self.choice.representations[0], "classifier": self.choice.classifiers[0],
                "layers": list(self.choice.layers), "tried": [], "metric": None}

    def tuning(self, result: Evaluation) -> dict:
        classifier = self.chosen(result.fitted)["classifier"]
        if not self.tune:
            return tuning_summary(None, [], STRENGTHS[classifier], False)
        return tuning_summary(result.fitted.tuned_, [e.tuned_ for e in result.fold_estimators],
                              STRENGTHS[classifier], True)

    def spread(self, result: Evaluation, held_out_scheme: str | None) -> tuple[dict, str]:
        """The scores' spread and the sentence that says how they were made."""
        if self.rows.X_eval is not None:
            return bootstrap_spread(result.truth, result.predicted, self.classes, self.seed), held_out_scheme
        scheme = (f"stratified {'group ' if self.rows.g_train is not None else ''}{self.folds}-fold cross-validation"
                  + (" (nested: the representation, classifier and strength are chosen inside each training fold)"
                     if self.tune else ""))
        return fold_spread(result.fold_metrics, f"std over {self.folds} outer folds"), scheme

    def reduction(self, fitted, accuracy: float) -> dict | None:
        """What the reducer kept; for product quantization, the accuracy it costs (one more evaluation)."""
        reducer = final_pipeline(fitted).named_steps["reduce"]
        if self.reduce.startswith("pq:"):
            baseline = self.evaluate("none")
            without = classification_metrics(baseline.truth, baseline.predicted, self.classes)["accuracy"]
            return {"kind": "product quantization", "m": reducer.m, "bits": 8, "bytes_per_vector": reducer.m,
                    "float32_bytes_per_vector": self.rows.X_train.shape[1] * 4,
                    "compression_ratio": reducer.compression_ratio, "accuracy_without_reduction": without,
                    "accuracy_change": accuracy - without}
        if hasattr(reducer, "explained_variance_ratio_"):
            return {"kind": type(reducer).__name__, "components": int(reducer.n_components_),
                    "explained_variance": float(np.sum(reducer.explained_variance_ratio_))}
        return None

    def learning_curve(self, fitted, accuracy: float) -> list[dict]:
        rows = self.rows
        if isinstance(fitted, AutoShallow):  # the chosen representation and classifier at the chosen strength
            make, narrow = fitted.unfitted_pipeline, fitted.narrow
        else:
            make, narrow = (lambda n, per_class: self.pipeline(self.reduce, n, per_class)), (lambda X: X)
        return learning_curve(make, narrow(rows.X_train), rows.y_train, rows.g_train,
                              None if rows.X_eval is None else narrow(rows.X_eval), rows.y_eval, self.seed,
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
