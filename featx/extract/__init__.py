"""Extraction: the extractor (images → pooled layer vectors), the per-shard worker every engine
runs, the job that reconciles inputs with a store, the head start, and the engines (local, Ray).

`featx.extract.head_start` must load without torch (the CLI forks decoders before torch loads), so
this package imports its modules on first use."""

from __future__ import annotations

from featx.lazy import lazy_exports

_EXPORTS = {"Extractor": "featx.extract.extractor", "extractor_from_config": "featx.extract.extractor",
            "extract": "featx.extract.job"}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
