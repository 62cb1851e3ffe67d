"""featx: frozen pretrained CNN features -> feature store -> shallow classifiers, retrieval, maps."""

__version__ = "0.1.0"

from featx.api import describe_layers  # noqa: E402
from featx.backbones import list_backbones, load_backbone  # noqa: E402
from featx.errors import FeatxError  # noqa: E402
from featx.extract import Extractor, extract  # noqa: E402
from featx.store import FeatureStore  # noqa: E402
from featx.classify import ShallowModel, train_shallow  # noqa: E402
from featx.predict import predict  # noqa: E402
from featx.index import Index, build_index  # noqa: E402
from featx.project import plot_projection, project, write_projection  # noqa: E402
from featx.learn.probe import probe  # noqa: E402

__all__ = ["__version__", "FeatxError", "FeatureStore", "Extractor", "extract", "describe_layers",
           "list_backbones", "load_backbone",
           "ShallowModel", "train_shallow", "predict", "Index", "build_index",
           "project", "plot_projection", "write_projection", "probe"]
