"""Small API helpers behind CLI commands that are not a pipeline step of their own."""

from __future__ import annotations

from pathlib import Path

from featx.store.artifacts import RECORD_FILES, artifact_kind, read_record
from featx.errors import StoreError


def describe_layers(model: str, image_size: int | None = None, weights: str = "random") -> list[dict]:
    """Every addressable layer of `model` with its output shape at the model's input size.
    Shapes do not depend on the weights, so random ones are used: this works offline."""
    from featx.backbones import load_backbone
    from featx.backbones.layers import addressable_layers, default_layer, layer_shapes

    backbone = load_backbone(model, weights, image_size)
    addressable = addressable_layers(backbone.model)
    shapes = layer_shapes(backbone.model, model, backbone.preprocess.crop_size, addressable)
    default = default_layer(backbone.model, addressable)
    return [{"layer": name, "shape": list(shape), "default": name == default} for name, shape in shapes.items()]


def describe_artifact(folder: str | Path) -> dict:
    """What `featx info` shows (see `featx.info`: read without pandas, torch or scikit-learn)."""
    from featx.info import describe_artifact as describe

    return describe(folder)
