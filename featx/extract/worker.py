"""The per-shard worker: planned rows (row_id, path) → bytes read and hashed → decoded views →
one forward pass → pooled vectors, plus one status row per input. Every engine (the local loop in
`featx.extract`, the Ray actors in `featx.extract.engines.ray`) calls this, so they produce the
same vectors and the same per-row statuses."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from featx.store.reconcile import file_stat

SHARD_META_COLUMNS = ["row_id", "path", "sha256", "status", "error", "size", "mtime_ns"]


def extract_shards(extractor, plan_rows: Sequence[dict], ranges: Sequence[tuple[int, int]], *,
                   progress: bool = False, description: str = "extract", ready: dict[str, dict] | None = None
                   ) -> Iterator[tuple[int, dict[str, np.ndarray], pd.DataFrame]]:
    """(start, features by layer, metadata) for each row range `ranges[i] = (start, stop)`, in
    order. `plan_rows[r]` is the planned row with `row_id == r` (or, for a worker given only its
    shard's rows, `plan_rows[r - offset]`: see `extract_shard`). One reader pipeline runs over all
    ranges, so decoding of the next shard overlaps the forward pass of this one. `ready`: views
    decoded ahead, by path (`featx.extract.head_start`)."""
    offset = int(plan_rows[0]["row_id"]) if len(plan_rows) else 0
    paths = [row["path"] for row in plan_rows]
    batches = [list(range(b - offset, min(b + extractor.batch_size, stop) - offset))
               for start, stop in ranges for b in range(start, stop, extractor.batch_size)]
    stops = {start - offset: stop - offset for start, stop in ranges}
    current, buffer = None, None
    for batch in extractor.run(paths, batches, progress=progress, description=description, ready=ready):
        first = batch.indices[0]
        if first in stops:  # batches never cross a shard boundary
            current, buffer = first, {"features": {layer: [] for layer in extractor.layers}, "meta": []}
        for layer in extractor.layers:
            buffer["features"][layer].append(batch.features[layer])
        for i, item in zip(batch.indices, batch.meta):
            row = plan_rows[i]
            # size and mtime are taken where the file is read (a worker near the data), so the
            # driver never stats millions of files to tell unchanged ones on the next run
            stat = file_stat(row["path"]) if item["status"] != "missing" else None
            buffer["meta"].append({"row_id": int(row["row_id"]), "path": row["path"], "sha256": item["sha256"],
                                   "status": item["status"], "error": item["error"],
                                   "size": stat[0] if stat else None, "mtime_ns": stat[1] if stat else None})
        if batch.indices[-1] + 1 == stops[current]:
            meta = pd.DataFrame(buffer["meta"], columns=SHARD_META_COLUMNS)
            meta = meta.astype({"size": "Int64", "mtime_ns": "Int64"})
            features = {layer: np.concatenate(parts) for layer, parts in buffer["features"].items()}
            yield current + offset, features, meta
            current, buffer = None, None


def extract_shard(extractor, plan_rows: Sequence[dict], ready: dict[str, dict] | None = None
                  ) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Features and metadata of one shard: `plan_rows` are its consecutive planned rows. `ready`:
    views decoded ahead, by path (taken from it as they are used)."""
    if not plan_rows:
        raise ValueError("extract_shard needs at least one row")
    start = int(plan_rows[0]["row_id"])
    stop = start + len(plan_rows)
    for _, features, meta in extract_shards(extractor, plan_rows, [(start, stop)], ready=ready):
        return features, meta
    raise RuntimeError(f"internal: no result for rows {start}..{stop}")  # pragma: no cover
