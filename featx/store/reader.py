"""Reading a feature store: `FeatureStore` opens a finished (or partial) store and serves its rows,
metadata and features by memory map, verifying each file's recorded sha256 first."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import IntegrityError, StoreError
from featx.io.atomic import file_sha256
from featx.store.format import (
    PENDING,
    REOPEN_FIX,
    RESULT_COLUMNS,
    checked_file,
    content_fingerprint,
    fingerprint,
    meta_counts,
    missing_ranges,
    open_manifest,
    read_npy_checked,
    read_parquet_checked,
)

log = logging.getLogger(__name__)


class FeatureStore:
    """Read access to a store. Every file is checked against the manifest's sha256 before use."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._meta: pd.DataFrame | None = None

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Open a store, checking its sealed manifest and every metadata file's sha256 (small files;
        feature shards are checked when first read)."""
        path = Path(path)
        manifest = open_manifest(path)
        entries = [manifest.get("plan"), manifest.get("meta")] + [s["meta"] for s in manifest["shards"]]
        for entry in filter(None, entries):
            checked_file(path / entry["path"], entry["sha256"])
        return cls(path, manifest)

    # --- description ---
    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def config_hash(self) -> str:
        return self.manifest["config_hash"]

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def default_layer(self) -> str:
        if not self.layers:
            raise StoreError(f"store '{self.path}' holds no features yet; run `featx extract` into it")
        return self.layers[0]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def fingerprint(self) -> str | None:
        """Identity of the rows (ids, content, labels, splits, groups) and the extractor config."""
        return self.manifest.get("fingerprint") or fingerprint(self.meta, self.config_hash)

    @property
    def content_fingerprint(self) -> str:
        return self.manifest.get("content_fingerprint") or content_fingerprint(self.meta, self.config_hash)

    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    # --- rows ---
    @property
    def plan(self) -> pd.DataFrame:
        entry = self.manifest["plan"]
        return read_parquet_checked(self.path / entry["path"], entry["sha256"])

    def results(self) -> pd.DataFrame:
        """What extraction recorded for the committed rows (sha256, status, error, size, mtime)."""
        parts = [read_parquet_checked(self.path / s["meta"]["path"],
                                      s["meta"]["sha256"]) for s in self.manifest["shards"]]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)

    @property
    def meta(self) -> pd.DataFrame:
        """One row per planned row: META_COLUMNS + `active` (False: removed, awaiting compaction)."""
        if self._meta is None:
            entry = self.manifest.get("meta")
            if entry and self.complete:
                meta = read_parquet_checked(self.path / entry["path"], entry["sha256"])
            else:  # an unfinished run: the plan with the results committed so far
                meta = self.plan.merge(self.results()[RESULT_COLUMNS[:4]], on="row_id", how="left")
                meta["status"] = meta["status"].fillna(PENDING)
            if "active" not in meta:
                meta["active"] = True
            self._meta = meta.reset_index(drop=True)
        return self._meta

    @property
    def labels(self) -> np.ndarray:
        return self.meta["label"].to_numpy(dtype=object)

    @property
    def paths(self) -> np.ndarray:
        return self.meta["path"].to_numpy(dtype=object)

    @property
    def groups(self) -> np.ndarray | None:
        """Group of each row (patient, part, run) when the inputs gave one, else None."""
        groups = self.meta["group"] if "group" in self.meta else None
        return None if groups is None or groups.isna().all() else groups.to_numpy(dtype=object)

    @property
    def ok(self) -> np.ndarray:
        """Rows with a usable vector. A finished store reads only the status column, so an index
        build over millions of rows never holds every path and hash as Python strings."""
        if self._meta is None and self.complete and self.manifest.get("meta"):
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            entry = self.manifest["meta"]
            status = pq.read_table(checked_file(self.path / entry["path"], entry["sha256"]),
                                   columns=["status"])["status"]
            return pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False).astype(bool)
        meta = self.meta
        return ((meta["status"] == "ok") & meta["active"].astype(bool)).to_numpy()

    def check_layer(self, layer: str | None) -> str:
        layer = layer or self.default_layer
        if layer not in self.manifest["layers"]:
            raise StoreError(f"layer '{layer}' is not in store '{self.path}'; it holds: {', '.join(self.layers)}. "
                             f"Extract it with `featx extract ... --layer {layer}`")
        return layer

    def layer_shape(self, layer: str) -> tuple:
        return tuple(self.manifest["layers"][layer]["shape"])

    def shard_array(self, shard: dict, layer: str) -> np.ndarray:
        entry = shard["features"][layer]
        array = read_npy_checked(self.path / entry["path"], entry["sha256"])
        if tuple(array.shape) != (shard["stop"] - shard["start"], *self.layer_shape(layer)):
            raise IntegrityError(f"'{entry['path']}' in store '{self.path}' has shape {array.shape}, not the recorded "
                                 f"one; the store is damaged: {REOPEN_FIX}")
        return array

    def features(self, layer: str | None = None) -> np.ndarray:
        """All rows of a layer (failed, removed and not yet extracted rows are NaN). One shard: a
        read-only memory map."""
        layer = self.check_layer(layer)
        shards = self.manifest["shards"]
        covered = [(s["start"], s["stop"]) for s in shards]
        contiguous = all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
        if shards and contiguous and covered[0][0] == 0 and covered[-1][1] == len(self):
            arrays = [self.shard_array(s, layer) for s in shards]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        out = np.full((len(self), *self.layer_shape(layer)), np.nan, dtype=np.float32)
        for shard in shards:
            out[shard["start"]:shard["stop"]] = self.shard_array(shard, layer)
        return out

    def gather(self, layer: str | None, rows: np.ndarray) -> np.ndarray:
        """The features of some rows, read from the memory-mapped shards (no full load)."""
        layer = self.check_layer(layer)
        rows = np.asarray(rows, dtype=np.int64)
        shards = self.manifest["shards"]
        out = np.full((len(rows), *self.layer_shape(layer)), np.nan, dtype=np.float32)
        if not shards:
            return out
        starts = np.array([s["start"] for s in shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        for shard_index in np.unique(which[which >= 0]):
            shard = shards[shard_index]
            mask = (which == shard_index) & (rows < shard["stop"])
            out[mask] = self.shard_array(shard, layer)[rows[mask] - shard["start"]]
        return out

    def iter_shards(self, layer: str | None = None):
        """(row_start, memory-mapped array) per shard, in row order: stream large stores."""
        layer = self.check_layer(layer)
        for shard in self.manifest["shards"]:
            yield shard["start"], self.shard_array(shard, layer)

    def missing_ranges(self) -> list[tuple[int, int]]:
        return missing_ranges(self.manifest["shards"], len(self))

    # --- checks ---
    def verify(self) -> list[str]:
        """Every recorded file's sha256 and shape, and that the shards cover each row exactly once;
        returns the problems found (empty when sound)."""
        problems = []

        def check(entry: dict, shape: tuple | None = None) -> None:
            file = self.path / entry["path"]
            if not file.is_file():
                problems.append(f"missing file {entry['path']}")
                return
            if file_sha256(file) != entry["sha256"]:
                problems.append(f"sha256 mismatch in {entry['path']}")
                return
            if shape is not None:
                try:
                    actual = np.load(file, mmap_mode="r", allow_pickle=False).shape
                except ValueError as exc:
                    problems.append(f"unreadable array {entry['path']}: {exc}")
                    return
                if tuple(actual) != tuple(shape):
                    problems.append(f"shape {tuple(actual)} != recorded {tuple(shape)} in {entry['path']}")

        check(self.manifest["plan"])
        previous_stop = 0
        for shard in self.manifest["shards"]:
            if shard["start"] < previous_stop:
                problems.append(f"shards overlap at rows {shard['start']}..{previous_stop - 1}")
            previous_stop = max(previous_stop, shard["stop"])
            check(shard["meta"])
            for layer, entry in shard["features"].items():
                check(entry, (shard["stop"] - shard["start"], *self.manifest["layers"][layer]["shape"]))
        if self.manifest.get("meta"):
            check(self.manifest["meta"])
        gaps = self.missing_ranges()
        if gaps and self.complete:
            problems.append("rows not covered by any shard: " + ", ".join(f"{a}..{b - 1}" for a, b in gaps[:5]))
        return problems

    def summary(self) -> dict:
        counts = meta_counts(self.meta)
        return {
            "path": str(self.path),
            "rows": counts["rows"],
            "ok": counts["ok"],
            "failed": counts["failed"],
            "pending": counts["pending"],
            "complete": self.complete,
            "backbone": self.config.get("backbone"),
            "weights": self.config.get("weights_id"),
            "layers": {k: v["shape"] for k, v in self.manifest["layers"].items()},
            "pool": self.config.get("pool"),
            "fingerprint": self.manifest.get("fingerprint"),
            "last_changes": (self.manifest.get("last_run") or {}).get("line"),
            "per_class": counts["per_class"],
            "per_split": counts["per_split"],
            "errors": counts["errors"],
        }
