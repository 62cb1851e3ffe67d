"""The estimators `train_shallow`, its representation choice and `featx probe` fit: normaliser,
reducer and classifier as ONE scikit-learn Pipeline (`build_pipeline`), optionally wrapped in a
`TunedPipeline` that chooses the classifier's strength by inner CV (`make_estimator`)."""

from __future__ import annotations

from featx.errors import InputError
from featx.learn.reduce import make_normalizer, make_reducer
from featx.learn.tune import STRENGTHS, TunedPipeline, grid_for
from featx.options import TRAIN

# the classifier when none is chosen (--no-tune) or given: the best on average over hymenoptera,
# Fashion-MNIST and synthetic checks, once tuned (benchmarks/accuracy.py)
DEFAULT_CLASSIFIER = "linear-svm"
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


def build_pipeline(*, classifier: str = DEFAULT_CLASSIFIER, normalize: str = TRAIN.normalize,
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


def make_estimator(*, classifier: str = DEFAULT_CLASSIFIER, normalize: str = TRAIN.normalize,
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
