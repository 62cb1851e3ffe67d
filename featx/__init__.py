"""featx: frozen pretrained CNN features -> feature store -> shallow classifiers, retrieval, maps.

The public names load on first use (PEP 562), so `import featx` and the CLI start fast: torch,
scikit-learn and FAISS are imported only by the modules that use them."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "describe_layers": "featx.api",
    "list_backbones": "featx.backbones", "load_backbone": "featx.backbones",
    "FeatxError": "featx.errors",
    "Extractor": "featx.extract", "extract": "featx.extract",
    "FeatureStore": "featx.store",
    "ShallowModel": "featx.classify", "train_shallow": "featx.classify",
    "predict": "featx.predict",
    "Index": "featx.index", "build_index": "featx.index",
    "project": "featx.project", "plot_projection": "featx.project", "write_projection": "featx.project",
    "fit_projection": "featx.project", "load_projection": "featx.placement",
    "audit": "featx.learn.audit", "probe": "featx.learn.probe",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featx' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule featx.extract (or .predict, .project) must not hide the function of
        # the same name: `featx.extract(...)` stays the function, as when everything was imported eagerly
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports, never run
    from featx.api import describe_layers
    from featx.backbones import list_backbones, load_backbone
    from featx.classify import ShallowModel, train_shallow
    from featx.errors import FeatxError
    from featx.extract import Extractor, extract
    from featx.index import Index, build_index
    from featx.predict import predict
    from featx.placement import load_projection
    from featx.project import fit_projection, plot_projection, project, write_projection
    from featx.learn.audit import audit
    from featx.learn.probe import probe
    from featx.store import FeatureStore
