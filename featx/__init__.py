"""featx: frozen pretrained CNN features -> feature store -> shallow classifiers, retrieval, maps."""

__version__ = "0.1.0"

import importlib
import sys
import types

# names are imported on first use, so `featx extract` does not pay for scikit-learn, FAISS and
# UMAP/numba at start-up (seconds of CPU on a small machine)
_EXPORTS = {
    "describe_layers": "featx.api", "list_backbones": "featx.backbones", "load_backbone": "featx.backbones",
    "FeatxError": "featx.errors", "Extractor": "featx.extract", "extract": "featx.extract",
    "FeatureStore": "featx.store", "ShallowModel": "featx.classify", "train_shallow": "featx.classify",
    "predict": "featx.predict", "Index": "featx.index", "build_index": "featx.index",
    "project": "featx.project", "plot_projection": "featx.project", "write_projection": "featx.project",
}

__all__ = ["__version__", "FeatxError", "FeatureStore", "Extractor", "extract", "describe_layers",
           "list_backbones", "load_backbone",
           "ShallowModel", "train_shallow", "predict", "Index", "build_index",
           "project", "plot_projection", "write_projection"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule featx.extract (or .predict, .project) must not hide the function of
        # the same name: `featx.extract(...)` stays the function, as when everything was imported eagerly
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
