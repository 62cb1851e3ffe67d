"""Writing a feature store: `manifest.json` + a plan + `features/<layer>/<range>.npy` shards.

The manifest and its commit log are the commit point: a file exists for readers only once the
(sealed) manifest or a whole line of `commits.jsonl` lists it, and every file is written atomically
under a fresh name. Shards are named by the row range they hold and may be committed in any order,
so a resume extracts exactly the missing ranges and many workers can write at once. A commit
appends one fsync'd line (constant cost at any store size); every manifest write folds the log
in. One writer at a time holds the store's lock."""

from __future__ import annotations

import bisect
import logging
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import ConfigMismatchError, InputsChangedError, StoreError
from featx.io import atomic
from featx.io.atomic import SEAL, seal
from featx.options import EXTRACT
from featx.store import commit_log
from featx.store.artifacts import SCHEMA_VERSION, check_output, unfinished_store
from featx.store.commit_log import CommitLog
from featx.store.format import (
    MANIFEST,
    MAX_ABS_FEATURE,
    META,
    META_COLUMNS,
    RESULT_COLUMNS,
    SUMMARY_ERRORS_MAX,
    config_diff,
    config_hash,
    content_fingerprint,
    fingerprint,
    layer_dir,
    library_versions,
    meta_counts,
    missing_ranges,
    now_iso,
    open_manifest,
    save_npy,
    save_parquet,
)
from featx.store.lock import LOCK_FILE, StoreLock
from featx.store.reader import FeatureStore
from featx.store.reconcile import PLAN_COLUMNS, Changes, plan_from_records, reconcile

log = logging.getLogger(__name__)


@dataclass
class PendingWork:
    plan: pd.DataFrame  # row_id, path, label, split, group, active
    missing: list[tuple[int, int]]  # row ranges still to extract
    changes: Changes = field(default_factory=Changes)

    @property
    def start_row(self) -> int:  # kept for callers that resume a single prefix
        return self.missing[0][0] if self.missing else len(self.plan)


class StoreWriter:
    """Creates, resumes or reconciles a store; `commit_shard` is the only way rows become visible.
    Holds the store's lock from `prepare` until `finalize` (or `close`)."""

    def __init__(self, path: str | Path, config: dict, *, overwrite: bool = False, append: bool = False,
                 frozen: bool = EXTRACT.frozen, rows_per_shard: int = 4096):
        self.path = Path(path)
        self.config = config
        self.hash = config_hash(config)
        self.overwrite, self.append, self.frozen = overwrite, append, frozen
        self.rows_per_shard = int(rows_per_shard)
        self.manifest: dict | None = None
        self.lock = StoreLock(self.path)
        self._log: CommitLog | None = None
        self._starts: list[int] = []  # the committed shards' starts, sorted (manifest["shards"] order)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        self.lock.release()

    # --- planning ---
    def prepare(self, records, files=None) -> PendingWork:
        """Lock the store and decide what is left to do. `files` stats and hashes the inputs to
        tell changed and moved files (see `featx.store.reconcile.LocalFiles`, the default; an
        engine passes one that runs on its workers)."""
        if (self.path / LOCK_FILE).is_file():  # featx's folder: a writer that holds it may be between its plan and
            self.lock.acquire()  # its first manifest, so "being written by PID N" comes before judging the contents
        is_store = check_output(self.path, "store")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        if (is_store and self.overwrite) or unfinished_store(self.path):  # a failed first write: start again
            _clear_folder(self.path)
        atomic.remove_stale_temporaries(self.path)
        if not (self.path / MANIFEST).exists():
            plan = plan_from_records(records)
            self.manifest = self._new_manifest()
            changes = Changes(new=len(plan))
            self._write_plan(plan, changes)
            return PendingWork(plan, self.missing_ranges(), changes)

        self.manifest = open_manifest(self.path)
        if self.manifest["config_hash"] != self.hash:
            raise ConfigMismatchError(
                f"store '{self.path}' was made with another extractor config "
                f"({config_diff(self.manifest['config'], self.config)}); use another output folder, "
                "or pass --overwrite to replace it")
        store = FeatureStore(self.path, self.manifest)
        plan = store.plan
        new_plan, changes = reconcile(plan, store.results(), records, append=self.append, files=files)
        if changes and self.frozen:
            raise InputsChangedError(f"--frozen: the inputs differ from store '{self.path}': {changes.line()}. "
                                     "Run without --frozen to apply these changes to the store")
        if changes:
            log.info("store %s: %s", self.path, changes.line())
            self._write_plan(new_plan, changes)
        else:  # recorded so that `featx info` and the caller see what this run found
            self.manifest["last_run"] = {"changes": changes.as_dict(), "line": changes.line()}
            self._write_manifest()
        self._collect_garbage()
        return PendingWork(new_plan, self.missing_ranges(), changes)

    def missing_ranges(self) -> list[tuple[int, int]]:
        return missing_ranges(self.manifest["shards"], self.manifest["n_rows"])

    def _write_plan(self, plan: pd.DataFrame, changes: Changes) -> None:
        relative = f"plan/{secrets.token_hex(6)}.parquet"
        self.manifest["plan"] = {"path": relative, "sha256": save_parquet(self.path / relative, plan[PLAN_COLUMNS])}
        self.manifest["n_rows"] = len(plan)
        self.manifest["complete"] = False
        self.manifest["last_run"] = {"changes": changes.as_dict(), "line": changes.line()}
        self._write_manifest()

    def _new_manifest(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "config": self.config, "config_hash": self.hash,
                "versions": library_versions(), "created": now_iso(), "updated": now_iso(), "complete": False,
                "n_rows": 0, "rows_per_shard": self.rows_per_shard, "layers": {}, "shards": [], "plan": None,
                "meta": None, "fingerprint": None, "content_fingerprint": None}

    def _write_manifest(self) -> None:
        """Write the whole manifest (it holds every shard committed so far, so the log is folded
        in), then start an empty log on top of it."""
        self.manifest["updated"] = now_iso()
        self.manifest = seal(self.manifest)
        atomic.write_json(self.path / MANIFEST, self.manifest)
        # a kill between these two steps leaves a log that names the old seal: stale, ignored
        if self._log is not None:
            self._log.close()
        commit_log.remove(self.path)
        self._log = CommitLog(self.path, self.manifest[SEAL])
        self._starts = [s["start"] for s in self.manifest["shards"]]

    def _require_lock(self) -> None:
        if not self.lock.held:
            raise StoreError(f"internal: store '{self.path}' is written without its lock; call prepare() first")

    # --- committing ---
    def commit_shard(self, start: int, features: dict[str, np.ndarray], meta: pd.DataFrame) -> None:
        """Write one row range's arrays and results, then list them in the manifest (the commit)."""
        self._require_lock()
        self._check_range(start, start + len(meta))
        self.commit_written(write_shard(self.path, start, features, meta))

    def _check_range(self, start: int, stop: int) -> None:
        if start < 0 or stop > self.manifest["n_rows"] or stop <= start:
            raise StoreError(f"internal: shard {start}..{stop} lies outside the {self.manifest['n_rows']} planned rows")
        # committed shards never overlap, so only the neighbours of `start` can (binary search)
        shards, at = self.manifest["shards"], bisect.bisect_right(self._starts, start)
        for shard in shards[max(0, at - 1):at + 1]:
            if start < shard["stop"] and shard["start"] < stop:
                raise StoreError(f"internal: shard {start}..{stop} overlaps committed rows "
                                 f"{shard['start']}..{shard['stop']}")

    def is_committed(self, start: int, stop: int) -> bool:
        """True when exactly this range is already listed (a retried worker delivered it twice)."""
        at = bisect.bisect_left(self._starts, start)
        return at < len(self._starts) and self._starts[at] == start and self.manifest["shards"][at]["stop"] == stop

    def commit_written(self, entry: dict) -> None:
        """List a shard that `write_shard` wrote (here or on another machine) in the manifest: the
        commit point. Shards may arrive in any order; an overlap with committed rows is refused."""
        self._require_lock()
        self._check_range(entry["start"], entry["stop"])
        new_layers = False
        for layer, item in entry["features"].items():
            shape = list(item["shape"][1:])
            if layer not in self.manifest["layers"]:
                new_layers = True
                self.manifest["layers"][layer] = {"shape": shape, "dtype": item["dtype"],
                                                  "format": (self.config.get("layer_formats") or {}).get(layer)}
            recorded = self.manifest["layers"][layer]
            if recorded["shape"] != shape:
                raise StoreError(f"internal: layer {layer} changed shape {recorded['shape']} -> {shape}")
        for item in [entry["meta"], *entry["features"].values()]:
            if not (self.path / item["path"]).is_file():
                raise StoreError(f"internal: shard file '{item['path']}' is not in store '{self.path}': the "
                                 "worker that wrote it does not share this folder (a shared filesystem is needed)")
        entry = {"start": entry["start"], "stop": entry["stop"], "meta": entry["meta"],
                 "features": {k: {"path": v["path"], "sha256": v["sha256"], "shape": v["shape"]}
                              for k, v in entry["features"].items()}}
        at = bisect.bisect_left(self._starts, entry["start"])
        self._starts.insert(at, entry["start"])
        self.manifest["shards"].insert(at, entry)
        if new_layers or self.manifest["complete"]:
            # the first shard names the layers (their shape and dtype live in the manifest): one
            # full write per run; every later commit is one line in the log
            self.manifest["complete"] = False
            self._write_manifest()  # the commit point
        else:
            self._log.append(entry)  # the commit point

    def finalize(self, n_planned: int | None = None) -> FeatureStore:
        """Compact removed rows away, write the full metadata and the fingerprint, release the lock."""
        self._require_lock()
        try:
            gaps = self.missing_ranges()
            if gaps:
                raise StoreError(f"internal: rows {gaps[0][0]}..{gaps[0][1] - 1} of store '{self.path}' were not "
                                 "extracted; re-run the same command to resume")
            if not self.manifest["complete"]:
                store = FeatureStore(self.path, self.manifest)
                plan = store.plan
                if not plan["active"].all():
                    self._compact(store, plan)
                    store = FeatureStore(self.path, self.manifest)
                meta = store.plan.merge(store.results()[RESULT_COLUMNS[:4]], on="row_id", how="left")
                meta = meta[META_COLUMNS].reset_index(drop=True)
                self.manifest["meta"] = {"path": META, "sha256": save_parquet(self.path / META, meta)}
                counts = meta_counts(meta)
                if counts["failed"] <= SUMMARY_ERRORS_MAX:  # sealed with the manifest: `featx info` needs no parquet
                    self.manifest["meta"]["summary"] = counts
                self.manifest["fingerprint"] = fingerprint(meta, self.hash)
                self.manifest["content_fingerprint"] = content_fingerprint(meta, self.hash)
                self.manifest["complete"] = True
                self._write_manifest()
                self._collect_garbage()
            elif self.manifest.get("meta") and "summary" not in self.manifest["meta"]:
                counts = meta_counts(FeatureStore(self.path, self.manifest).meta)  # finalized by an older featx
                if counts["failed"] <= SUMMARY_ERRORS_MAX:
                    self.manifest["meta"]["summary"] = counts
                    self._write_manifest()
            return FeatureStore.open(self.path)
        finally:
            self.close()

    def _compact(self, store: FeatureStore, plan: pd.DataFrame) -> None:
        """Rewrite the active rows densely (row ids 0..n-1) under new file names; the manifest
        switches to them in one write, then the old files are garbage."""
        keep = plan.loc[plan["active"].astype(bool), "row_id"].to_numpy(dtype=np.int64)
        results = store.results().set_index("row_id").loc[keep].reset_index()
        new_plan = plan[plan["active"].astype(bool)].reset_index(drop=True)
        new_plan["row_id"] = np.arange(len(new_plan), dtype=np.int64)
        results["row_id"] = new_plan["row_id"].to_numpy()
        step = int(self.manifest.get("rows_per_shard") or self.rows_per_shard)
        shards = []
        for start in range(0, len(keep), step):
            stop = min(start + step, len(keep))
            name = f"{start:012d}-{stop:012d}-{secrets.token_hex(3)}"
            entry = {"start": start, "stop": stop, "features": {}}
            for layer in self.manifest["layers"]:
                array = store.gather(layer, keep[start:stop]).astype(self.manifest["layers"][layer]["dtype"])
                relative = f"features/{layer_dir(layer)}/{name}.npy"
                entry["features"][layer] = {"path": relative, "sha256": save_npy(self.path / relative, array),
                                            "shape": list(array.shape)}
            relative = f"meta/{name}.parquet"
            entry["meta"] = {"path": relative,
                             "sha256": save_parquet(self.path / relative, results.iloc[start:stop][RESULT_COLUMNS])}
            shards.append(entry)
        relative = f"plan/{secrets.token_hex(6)}.parquet"
        self.manifest["plan"] = {"path": relative, "sha256": save_parquet(self.path / relative, new_plan[PLAN_COLUMNS])}
        self.manifest["shards"] = shards
        self.manifest["n_rows"] = len(new_plan)
        log.info("store %s: compacted %d removed rows away", self.path, len(plan) - len(new_plan))
        self._write_manifest()
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete data files the manifest does not list (left by killed runs or replaced by compaction)."""
        referenced = {self.manifest["plan"]["path"]} if self.manifest.get("plan") else set()
        for shard in self.manifest["shards"]:
            referenced.add(shard["meta"]["path"])
            referenced.update(e["path"] for e in shard["features"].values())
        for folder in ("features", "meta", "plan"):
            for file in (self.path / folder).rglob("*") if (self.path / folder).is_dir() else ():
                if file.is_file() and file.relative_to(self.path).as_posix() not in referenced:
                    file.unlink(missing_ok=True)


def write_shard(store_path: str | Path, start: int, features: dict[str, np.ndarray], meta: pd.DataFrame) -> dict:
    """Write one row range's arrays and results into the store folder under fresh names (atomic:
    write, fsync, rename), without touching the manifest: any process that sees the folder may
    call it, and the store's writer commits the returned entry (`StoreWriter.commit_written`).
    A range written twice (a retried task) leaves only unlisted files, removed as garbage."""
    store_path = Path(store_path)
    stop = start + len(meta)
    results = _results_frame(meta, start)
    features = _refuse_non_finite(features, results)
    name = f"{start:012d}-{stop:012d}-{secrets.token_hex(3)}"
    entry = {"start": int(start), "stop": int(stop), "features": {}}
    for layer, array in features.items():
        if len(array) != len(results):
            raise StoreError(f"internal: layer {layer} has {len(array)} rows for {len(results)} metadata rows")
        relative = f"features/{layer_dir(layer)}/{name}.npy"
        sha = save_npy(store_path / relative, array)
        entry["features"][layer] = {"path": relative, "sha256": sha, "shape": list(array.shape),
                                    "dtype": str(array.dtype)}
    relative = f"meta/{name}.parquet"
    entry["meta"] = {"path": relative, "sha256": save_parquet(store_path / relative, results)}
    return entry


def _results_frame(meta: pd.DataFrame, start: int) -> pd.DataFrame:
    """The extraction results of a shard's rows, with each file's size and mtime (so a re-run can
    tell unchanged files without hashing them)."""
    results = meta.reset_index(drop=True).copy()
    expected = np.arange(start, start + len(results), dtype=np.int64)
    if "row_id" not in results or not np.array_equal(results["row_id"].to_numpy(dtype=np.int64), expected):
        raise StoreError(f"internal: shard metadata rows are not the row range {start}..{start + len(results)}")
    if "size" not in results or "mtime_ns" not in results:
        from featx.store.reconcile import file_stat

        paths = results["path"] if "path" in results else [None] * len(results)
        stats = [file_stat(p) if p else None for p in paths]
        results["size"] = pd.array([s[0] if s else None for s in stats], dtype="Int64")
        results["mtime_ns"] = pd.array([s[1] if s else None for s in stats], dtype="Int64")
    for column in ("sha256", "error"):
        if column not in results:
            results[column] = None
    return results[RESULT_COLUMNS].astype({"sha256": object, "status": object, "error": object})


def _refuse_non_finite(features: dict[str, np.ndarray], results: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows whose vector is not finite or absurdly large become error rows, never stored features."""
    ok = (results["status"] == "ok").to_numpy()
    bad = np.zeros(len(results), dtype=bool)
    for array in features.values():
        flat = np.asarray(array, dtype=np.float32).reshape(len(array), -1)
        with np.errstate(invalid="ignore"):
            bad |= ok & ~(np.isfinite(flat) & (np.abs(flat) <= MAX_ABS_FEATURE)).all(axis=1)
    if not bad.any():
        return features
    results.loc[bad, "status"] = "non_finite"
    results.loc[bad, "error"] = f"the network produced NaN, infinite or |x| > {MAX_ABS_FEATURE:g} values for this image"
    cleaned = {}
    for layer, array in features.items():
        array = np.array(array, copy=True)
        array[bad] = np.nan
        cleaned[layer] = array
    return cleaned


def _clear_folder(folder: Path) -> None:
    """Empty a store folder for --overwrite, keeping the lock this process holds."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
