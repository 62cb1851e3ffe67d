"""Small API helpers behind CLI commands that are not a pipeline step of their own."""

from __future__ import annotations

from pathlib import Path

from featx.artifacts import RECORD_FILES, artifact_kind, read_record
from featx.errors import StoreError


def describe_layers(model: str, image_size: int | None = None, weights: str = "random") -> list[dict]:
    """Every addressable layer of `model` with its output shape at the model's input size.
    Shapes do not depend on the weights, so random ones are used: this works offline."""
    from featx.backbones import load_backbone
    from featx.layers import addressable_layers, default_layer, layer_shapes

    backbone = load_backbone(model, weights, image_size)
    addressable = addressable_layers(backbone.model)
    shapes = layer_shapes(backbone.model, model, backbone.preprocess.crop_size, addressable)
    default = default_layer(backbone.model, addressable)
    return [{"layer": name, "shape": list(shape), "default": name == default} for name, shape in shapes.items()]


def describe_artifact(folder: str | Path) -> dict:
    """What `featx info` shows: a store's summary, or a model's / index's source store, the
    fingerprint it was built on, and whether that store still matches."""
    from featx.store import FeatureStore

    folder = Path(folder)
    kind = artifact_kind(folder)
    if kind == "store":
        return {"kind": "store", **FeatureStore.open(folder).summary()}
    if kind not in ("model", "index"):
        raise StoreError(f"'{folder}' is not a featx store, model or index (none of "
                         f"{', '.join(RECORD_FILES[k] for k in ('store', 'model', 'index'))} found); "
                         "pass a folder made by `featx extract`, `featx train-shallow` or `featx index`")
    record = read_record(folder, RECORD_FILES[kind], f"a featx {kind}", "rebuild it")
    if kind == "model":
        source = record.get("source") or {}
        store_path, built_on = source.get("store"), source.get("fingerprint")
        extra = {"classes": record.get("classes"), "layer": record.get("layer"), "metrics": record.get("metrics")}
    else:
        store_path, built_on = record.get("store"), record.get("store_fingerprint")
        extra = {"index": record.get("kind"), "metric": record.get("metric"), "vectors": record.get("ntotal"),
                 "layer": record.get("layer")}
    summary = {"kind": kind, "path": str(folder), "source_store": store_path, "built_on_fingerprint": built_on,
               "backbone": (record.get("extractor") or {}).get("backbone"), **extra}
    try:
        current = FeatureStore.open(store_path).fingerprint if store_path else None
        summary["store_now"] = ("unchanged" if current == built_on else
                                f"changed (fingerprint now {current}): re-train the model" if kind == "model" else
                                f"changed (fingerprint now {current}): run `featx index --update {folder}`")
    except StoreError as exc:
        summary["store_now"] = f"not available ({exc})"
    return summary
