"""featx: frozen pretrained CNN features -> feature store -> shallow classifiers, retrieval, maps.

The public names load on first use (PEP 562), so `import featx` and the CLI start fast: torch,
scikit-learn and FAISS are imported only by the modules that use them."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from featx._version import __version__
from featx.lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "describe_layers": "featx.backbones.layers",
    "list_backbones": "featx.backbones", "load_backbone": "featx.backbones",
    "FeatxError": "featx.errors",
    "Extractor": "featx.extract.extractor", "extract": "featx.extract.job",
    "FeatureStore": "featx.store",
    "ShallowModel": "featx.learn.model", "train_shallow": "featx.learn.classify",
    "predict": "featx.learn.predict",
    "Index": "featx.retrieval.index", "build_index": "featx.retrieval.index",
    "project": "featx.maps.project", "plot_projection": "featx.maps.project", "write_projection": "featx.api",
    "fit_projection": "featx.maps.project", "load_projection": "featx.maps.placement",
    "audit": "featx.api", "probe": "featx.api",
    "fit_anomaly": "featx.api", "AnomalyModel": "featx.anomaly.model", "score_anomaly": "featx.anomaly.model",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the packages featx.extract, featx.audit and featx.probe share their names with the API's
        # functions: importing them must not hide `featx.extract(...)`, which __getattr__ finds on first use
        if isinstance(value, types.ModuleType) and name in _EXPORTS and value.__name__ != _EXPORTS[name]:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports, never run
    from featx.anomaly.model import AnomalyModel, score_anomaly
    from featx.api import audit, fit_anomaly, probe, write_projection
    from featx.backbones import list_backbones, load_backbone
    from featx.backbones.layers import describe_layers
    from featx.errors import FeatxError
    from featx.extract.extractor import Extractor
    from featx.extract.job import extract
    from featx.learn.classify import train_shallow
    from featx.learn.model import ShallowModel
    from featx.learn.predict import predict
    from featx.maps.placement import load_projection
    from featx.maps.project import fit_projection, plot_projection, project
    from featx.retrieval.index import Index, build_index
    from featx.store import FeatureStore
