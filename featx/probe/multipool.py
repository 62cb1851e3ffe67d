"""One forward pass per backbone, every probed layer pooled every probed way, written as one
ordinary feature store per pooling.

Pooling is part of a store's extractor config, so a store holds one pooling; running
`featx.extract` once per pooling would repeat the decoding and the forward pass. Here the layer
tap is wrapped so that it returns every (layer, pooling) vector at once (already-pooled vectors
pass through featx's `pool` unchanged), and each pooling's vectors go to its own store. Each store
is exactly what `featx extract --pool P --layer ...` writes (a test checks it), so it resumes
the same way and every featx command reads it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from featx.backbones.pooling import check_pooling, pool
from featx.errors import StoreError
from featx.extract.extractor import Extractor
from featx.extract.job import shard_rows, weights_source
from featx.extract.worker import extract_shards
from featx.io.sources import ImageRecord
from featx.options import EXTRACT
from featx.store import FeatureStore, StoreWriter

log = logging.getLogger(__name__)

_SEPARATOR = "\x1f"  # joins layer and pooling in the fan-out keys; never in a layer name


class _FanOutTap(nn.Module):
    """The extractor's tap, returning {layer<sep>pooling: pooled vectors}."""

    def __init__(self, tap: nn.Module, layers: Sequence[str], poolings: Sequence[str], formats: dict[str, str]):
        super().__init__()
        self.tap, self.layers, self.poolings, self.formats = tap, list(layers), list(poolings), dict(formats)

    def forward(self, x):
        outputs = self.tap(x)
        return {_key(layer, how): pool(outputs[layer], how, self.formats[layer])
                for how in self.poolings for layer in self.layers}


def _key(layer: str, how: str) -> str:
    return f"{layer}{_SEPARATOR}{how}"


class MultiPoolExtractor(Extractor):
    """An Extractor whose batches hold every (layer, pooling) vector of one forward pass."""

    def __init__(self, model: str, *, poolings: Sequence[str], layers: Sequence[str], **options):
        super().__init__(model, layers=layers, pool=poolings[0], **options)
        self.poolings, self.probed_layers = list(poolings), list(self.layers)
        self.configs = {how: self.config | {"pool": how} for how in self.poolings}
        self.tap = _FanOutTap(self.tap, self.probed_layers, self.poolings, self.layer_formats)
        self.layers = [_key(layer, how) for how in self.poolings for layer in self.probed_layers]
        self.layer_formats = {key: "NC" for key in self.layers}  # the vectors arrive pooled
        self.pool_name = "avg"  # the vectors arrive pooled; featx's pool passes (N, D) through
        self.pooled_dims = self._probe_dims_fanout()

    def _probe_dims_fanout(self) -> dict[str, int]:
        size = self.backbone.preprocess.crop_size
        device = next(self.tap.parameters()).device
        with torch.inference_mode():
            raw = self.tap.tap(torch.zeros(1, 3, size, size, device=device))
        dims = {}
        for how in self.poolings:
            for layer in self.probed_layers:
                check_pooling(how, layer, tuple(raw[layer].shape[1:]))
                dims[_key(layer, how)] = int(pool(raw[layer], how, self.tap.formats[layer]).shape[-1])
        return dims


def extract_multipool(records: list[ImageRecord], stores: dict[str, Path], extractor: MultiPoolExtractor, *,
                      weights: str, shard_size: int = EXTRACT.shard_size, progress: bool = True,
                      description: str = "extract") -> tuple[dict[str, FeatureStore], dict]:
    """Extract `records` into one store per pooling (`stores`: pooling -> folder), resuming what
    is already there; returns the stores and timing {"images": n extracted now, "seconds": s}."""
    writers, works = {}, {}
    for how, folder in stores.items():
        config = extractor.configs[how] | {"weights_source": weights_source(weights)}
        writers[how] = StoreWriter(folder, config, rows_per_shard=shard_rows(int(shard_size), extractor))
        works[how] = writers[how].prepare(records)
    plans = [w.plan[["path", "label", "split"]].astype(object) for w in works.values()]
    if any(not p.equals(plans[0]) for p in plans[1:]):
        for writer in writers.values():
            writer.close()
        raise StoreError(f"the probe stores under '{Path(next(iter(stores.values()))).parent}' hold different "
                         "inputs; delete that folder (or use another PROBE_DIR) and run the probe again")
    plan = next(iter(works.values())).plan
    rows_per_shard = shard_rows(int(shard_size), extractor)
    # a killed run may have committed a range for some poolings only: extract the union, commit where missing
    missing = sorted({r for w in works.values() for r in w.missing})
    shards = sorted({(s, min(s + rows_per_shard, stop)) for start, stop in missing
                     for s in range(start, stop, rows_per_shard)})
    plan_rows = plan[["row_id", "path"]].to_dict("records")
    began = time.perf_counter()
    for start, features, meta in extract_shards(extractor, plan_rows, shards, progress=progress,
                                                description=description):
        stop = start + len(meta)
        for how, writer in writers.items():
            if any(a <= start and stop <= b for a, b in works[how].missing):
                writer.commit_shard(start, {layer: features[_key(layer, how)] for layer in extractor.probed_layers},
                                    meta)
    seconds = time.perf_counter() - began
    done = {how: writer.finalize() for how, writer in writers.items()}
    return done, {"images": sum(b - a for a, b in shards), "seconds": seconds}
