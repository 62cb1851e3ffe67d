"""The model bundle of `featx train-shallow`: a fitted scikit-learn pipeline with the extractor
config, layer and classes it needs to be applied safely. It loads without running pickle code
(skops, trusted types only) and refuses features of another extractor or a store that changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.errors import ConfigMismatchError, InputError, IntegrityError, StaleArtifactError
from featx.io import atomic
from featx.io.atomic import seal
from featx.store import (
    FeatureStore,
    file_sha256,
    library_versions,
    read_record,
    require_same_config,
    verify_recorded_sha256,
)
from featx.store.artifacts import check_output

MODEL_FILE = "model.skops"
MODEL_JSON = "model.json"
BUNDLE_FORMAT = 1
# what a saved pipeline may contain; anything else is refused before loading
TRUSTED_TYPE_PREFIXES = ("sklearn.", "imblearn.", "numpy.", "scipy.", "featx.learn.reduce.",
                         "featx.learn.representation.", "builtins.",
                         "collections.")


@dataclass
class ShallowModel:
    """A fitted pipeline with what it needs to be applied safely: the extractor config and the
    stored layers it reads (side by side, `featx.learn.representation.model_input`), and its classes."""

    pipeline: object
    classes: list[str]
    layers: list[str]
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

    def check_features(self, config: dict, layers: list[str]) -> None:
        require_same_config(self.extractor_config, config, "this model")
        missing = [layer for layer in self.layers if layer not in layers]
        if missing:
            raise ConfigMismatchError(f"this model reads layer(s) {self.layers}; {missing} are not among "
                                      f"{list(layers)}: extract features with "
                                      + " ".join(f"--layer {layer}" for layer in self.layers))

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
            info = {"format": BUNDLE_FORMAT, "extractor": self.extractor_config, "layers": self.layers,
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
        info = read_record(folder, MODEL_JSON, "a featx model",
                           "train one with `featx train-shallow STORE -o MODEL_DIR`")
        model_file = folder / MODEL_FILE
        verify_recorded_sha256(model_file, info.get("skops_sha256"), MODEL_JSON,
                               "retrain the model, or restore the file")
        untrusted = skops.io.get_untrusted_types(file=model_file)
        refused = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
        if refused:
            raise IntegrityError(f"model file '{model_file}' contains types featx does not trust: {refused}; "
                                 "it was not made by featx. Refusing to load it")
        pipeline = skops.io.load(model_file, trusted=untrusted)
        layers = info["layers"] if "layers" in info else [info["layer"]]  # bundles before several layers
        return cls(pipeline, info["classes"], layers, info["extractor"], info.get("options", {}),
                   info.get("metrics", {}))
