"""The feature store: `manifest.json` + a plan + `features/<layer>/<range>.npy` shards.

The manifest and its commit log are the commit point: a file exists for readers only once the
(sealed) manifest or a whole line of `commits.jsonl` lists it, and every file is written atomically
under a fresh name. Shards are named by the row range they hold and may be committed in any order,
so a resume extracts exactly the missing ranges and many workers can write at once. A commit
appends one fsync'd line (constant cost at any store size); every manifest write folds the log
in. One writer at a time holds the store's lock."""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import io
import logging
import platform
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import ConfigMismatchError, InputError, InputsChangedError, IntegrityError, StoreError
from featx.io import atomic
from featx.io.atomic import SEAL, file_sha256, seal
from featx.options import EXTRACT
from featx.store import commit_log
from featx.store.artifacts import SCHEMA_VERSION, check_output, read_record
from featx.store.commit_log import CommitLog
from featx.store.lock import LOCK_FILE, StoreLock
from featx.store.reconcile import PLAN_COLUMNS, Changes, plan_from_records, reconcile

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
META = "meta.parquet"
META_COLUMNS = ["row_id", "path", "label", "split", "group", "sha256", "status", "error"]
RESULT_COLUMNS = ["row_id", "sha256", "status", "error", "size", "mtime_ns"]
# a pooled activation beyond this is a numerical accident (overflow), not a feature
MAX_ABS_FEATURE = 1e8
REOPEN_FIX = "re-extract the store (`featx extract ... --overwrite`), or restore it from a backup"


def config_hash(config: dict) -> str:
    """Identity of the features: where the weights file lies does not matter, its sha256 does."""
    import json

    identity = {k: v for k, v in config.items() if k != "weights_source"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def library_versions() -> dict:
    """Versions of the libraries that shape the features, read from the installed packages'
    metadata: importing scikit-learn (and SciPy with it) only to ask costs a second of every
    `featx extract` start-up."""
    from importlib.metadata import PackageNotFoundError, version

    from featx._version import __version__

    def installed(name: str, module: str) -> str:
        import sys

        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__version__", None):
            return loaded.__version__  # the one really imported (e.g. a source build's "2.x+cpu")
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"featx": __version__, "python": platform.python_version(), "torch": installed("torch", "torch"),
            "torchvision": installed("torchvision", "torchvision"), "numpy": np.__version__,
            "scikit-learn": installed("scikit-learn", "sklearn")}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _save_npy(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return atomic.write_hashed(path, buffer.getvalue())


def _save_parquet(path: Path, frame: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return atomic.write_hashed(path, buffer.getvalue())


def _layer_dir(layer: str) -> str:
    return layer.replace("/", "_")


# --- reading only what was recorded ------------------------------------------------------------

_VERIFIED: set[tuple] = set()  # (path, sha256, size, mtime_ns) whose bytes this process checked


def verify_recorded_sha256(file: Path, expected: str | None, recorded_in: str, fix: str) -> None:
    """Refuse a file whose bytes are not the ones recorded — before any loader reads it."""
    if not file.is_file():
        raise IntegrityError(f"'{file}' is missing; {fix}")
    actual = file_sha256(file)
    if actual != expected:
        raise IntegrityError(f"'{file}' has sha256 {actual}, but {recorded_in} records {expected}: it was changed "
                             f"or truncated. {fix[0].upper() + fix[1:]}")


def _checked(file: Path, expected: str) -> Path:
    """`file`, once its sha256 matched the manifest (hashed once per process while unchanged)."""
    try:
        st = file.stat()
    except OSError:
        raise IntegrityError(f"'{file}' is missing: a later run rewrote the store after it was opened here (open "
                             f"it again), or the store is damaged: {REOPEN_FIX}") from None
    key = (str(file), expected, st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        verify_recorded_sha256(file, expected, MANIFEST, f"the store is damaged: {REOPEN_FIX}")
        _VERIFIED.add(key)
    return file


def _read_parquet(file: Path, expected: str) -> pd.DataFrame:
    return pd.read_parquet(_checked(file, expected))


def _read_npy(file: Path, expected: str) -> np.ndarray:
    return np.load(_checked(file, expected), mmap_mode="r", allow_pickle=False)


def fingerprint(meta: pd.DataFrame, config_hash_: str, columns=("row_id", "sha256", "label", "split", "group")) -> str:
    """A hash over the rows a model or index learns from, and the extractor config."""
    table = meta.reindex(columns=list(columns)).astype(object).where(meta.reindex(columns=list(columns)).notna(), "")
    digest = hashlib.sha256(config_hash_.encode())
    digest.update(table.astype(str).to_csv(index=False, header=False).encode())
    return digest.hexdigest()[:16]


def content_fingerprint(meta: pd.DataFrame, config_hash_: str) -> str:
    """Only what decides the vectors and their row ids (labels may change without touching them)."""
    return fingerprint(meta, config_hash_, ("row_id", "sha256", "status"))


def _open_manifest(path: Path) -> dict:
    manifest = read_record(path, MANIFEST, "a feature store", "create one with `featx extract IMAGES -o STORE`")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(f"store '{path}' has schema version {version}; this featx reads version {SCHEMA_VERSION} "
                         "(shards by row range, sealed manifest, reconciled inputs). Re-extract it: "
                         f"`featx extract IMAGES -o {path} --overwrite`")
    logged = commit_log.replay(path, manifest[SEAL], f"The store is damaged: {REOPEN_FIX}")
    if logged:  # an unfinished run's commits since the manifest was last written
        manifest["shards"] = sorted(manifest["shards"] + logged, key=lambda s: s["start"])
    return manifest


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
        manifest = _open_manifest(path)
        entries = [manifest.get("plan"), manifest.get("meta")] + [s["meta"] for s in manifest["shards"]]
        for entry in filter(None, entries):
            _checked(path / entry["path"], entry["sha256"])
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
        return _read_parquet(self.path / entry["path"], entry["sha256"])

    def results(self) -> pd.DataFrame:
        """What extraction recorded for the committed rows (sha256, status, error, size, mtime)."""
        parts = [_read_parquet(self.path / s["meta"]["path"], s["meta"]["sha256"]) for s in self.manifest["shards"]]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)

    @property
    def meta(self) -> pd.DataFrame:
        """One row per planned row: META_COLUMNS + `active` (False: removed, awaiting compaction)."""
        if self._meta is None:
            entry = self.manifest.get("meta")
            if entry and self.complete:
                meta = _read_parquet(self.path / entry["path"], entry["sha256"])
            else:  # an unfinished run: the plan with the results committed so far
                meta = self.plan.merge(self.results()[RESULT_COLUMNS[:4]], on="row_id", how="left")
                meta["status"] = meta["status"].fillna("pending")
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
            status = pq.read_table(_checked(self.path / entry["path"], entry["sha256"]), columns=["status"])["status"]
            return pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False).astype(bool)
        meta = self.meta
        return ((meta["status"] == "ok") & meta["active"].astype(bool)).to_numpy()

    def check_layer(self, layer: str | None) -> str:
        layer = layer or self.default_layer
        if layer not in self.manifest["layers"]:
            raise StoreError(f"layer '{layer}' is not in store '{self.path}'; it holds: {', '.join(self.layers)}. "
                             f"Extract it with `featx extract ... --layer {layer}`")
        return layer

    def _shape(self, layer: str) -> tuple:
        return tuple(self.manifest["layers"][layer]["shape"])

    def _shard_array(self, shard: dict, layer: str) -> np.ndarray:
        entry = shard["features"][layer]
        array = _read_npy(self.path / entry["path"], entry["sha256"])
        if tuple(array.shape) != (shard["stop"] - shard["start"], *self._shape(layer)):
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
            arrays = [self._shard_array(s, layer) for s in shards]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        out = np.full((len(self), *self._shape(layer)), np.nan, dtype=np.float32)
        for shard in shards:
            out[shard["start"]:shard["stop"]] = self._shard_array(shard, layer)
        return out

    def gather(self, layer: str | None, rows: np.ndarray) -> np.ndarray:
        """The features of some rows, read from the memory-mapped shards (no full load)."""
        layer = self.check_layer(layer)
        rows = np.asarray(rows, dtype=np.int64)
        shards = self.manifest["shards"]
        out = np.full((len(rows), *self._shape(layer)), np.nan, dtype=np.float32)
        if not shards:
            return out
        starts = np.array([s["start"] for s in shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        for shard_index in np.unique(which[which >= 0]):
            shard = shards[shard_index]
            mask = (which == shard_index) & (rows < shard["stop"])
            out[mask] = self._shard_array(shard, layer)[rows[mask] - shard["start"]]
        return out

    def iter_shards(self, layer: str | None = None):
        """(row_start, memory-mapped array) per shard, in row order: stream large stores."""
        layer = self.check_layer(layer)
        for shard in self.manifest["shards"]:
            yield shard["start"], self._shard_array(shard, layer)

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


SUMMARY_ERRORS_MAX = 1000  # failed rows listed in a sealed summary; with more, `featx info` reads the table


def meta_counts(meta: pd.DataFrame) -> dict:
    """The row counts of a store's summary: rows, ok, failed, per class and split, the failed rows."""
    if "active" in meta:
        meta = meta[meta["active"].astype(bool)]
    failed = meta[meta["status"] != "ok"]
    return {"rows": len(meta), "ok": int((meta["status"] == "ok").sum()), "failed": len(failed),
            "per_class": {str(k): int(v) for k, v in
                          meta["label"].fillna("(none)").value_counts().sort_index().items()},
            "per_split": {str(k): int(v) for k, v in
                          meta["split"].fillna("(none)").value_counts().sort_index().items()},
            "errors": [{k: (None if not isinstance(v, str) and pd.isna(v) else str(v)) for k, v in row.items()}
                       for row in failed[["path", "status", "error"]].to_dict("records")]}


def missing_ranges(shards: list[dict], n_rows: int) -> list[tuple[int, int]]:
    """The row ranges in [0, n_rows) that no committed shard covers."""
    gaps, position = [], 0
    for shard in sorted(shards, key=lambda s: s["start"]):
        if shard["start"] > position:
            gaps.append((position, shard["start"]))
        position = max(position, shard["stop"])
    if position < n_rows:
        gaps.append((position, n_rows))
    return gaps


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
        is_store = check_output(self.path, "store")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        if is_store and self.overwrite:
            _clear_folder(self.path)
        atomic.remove_stale_temporaries(self.path)
        if not (self.path / MANIFEST).exists():
            plan = plan_from_records(records)
            self.manifest = self._new_manifest()
            changes = Changes(new=len(plan))
            self._write_plan(plan, changes)
            return PendingWork(plan, self.missing_ranges(), changes)

        self.manifest = _open_manifest(self.path)
        if self.manifest["config_hash"] != self.hash:
            raise ConfigMismatchError(
                f"store '{self.path}' was made with another extractor config "
                f"({_config_diff(self.manifest['config'], self.config)}); use another output folder, "
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
        self.manifest["plan"] = {"path": relative, "sha256": _save_parquet(self.path / relative, plan[PLAN_COLUMNS])}
        self.manifest["n_rows"] = len(plan)
        self.manifest["complete"] = False
        self.manifest["last_run"] = {"changes": changes.as_dict(), "line": changes.line()}
        self._write_manifest()

    def _new_manifest(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "config": self.config, "config_hash": self.hash,
                "versions": library_versions(), "created": _now(), "updated": _now(), "complete": False,
                "n_rows": 0, "rows_per_shard": self.rows_per_shard, "layers": {}, "shards": [], "plan": None,
                "meta": None, "fingerprint": None, "content_fingerprint": None}

    def _write_manifest(self) -> None:
        """Write the whole manifest (it holds every shard committed so far, so the log is folded
        in), then start an empty log on top of it."""
        self.manifest["updated"] = _now()
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
                self.manifest["meta"] = {"path": META, "sha256": _save_parquet(self.path / META, meta)}
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
                relative = f"features/{_layer_dir(layer)}/{name}.npy"
                entry["features"][layer] = {"path": relative, "sha256": _save_npy(self.path / relative, array),
                                            "shape": list(array.shape)}
            relative = f"meta/{name}.parquet"
            entry["meta"] = {"path": relative,
                             "sha256": _save_parquet(self.path / relative, results.iloc[start:stop][RESULT_COLUMNS])}
            shards.append(entry)
        relative = f"plan/{secrets.token_hex(6)}.parquet"
        self.manifest["plan"] = {"path": relative, "sha256": _save_parquet(self.path / relative, new_plan[PLAN_COLUMNS])}
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
        relative = f"features/{_layer_dir(layer)}/{name}.npy"
        sha = _save_npy(store_path / relative, array)
        entry["features"][layer] = {"path": relative, "sha256": sha, "shape": list(array.shape),
                                    "dtype": str(array.dtype)}
    relative = f"meta/{name}.parquet"
    entry["meta"] = {"path": relative, "sha256": _save_parquet(store_path / relative, results)}
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


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: stored {old.get(k)!r}, requested {new.get(k)!r}" for k in keys[:4]) or "unknown difference"


def require_same_config(expected: dict, actual: dict, what: str) -> None:
    """Refuse to apply a model or index to features of another extractor config."""
    import json

    keys = ("backbone", "weights_id", "weights_sha256", "pool", "preprocess")
    expected, actual = json.loads(json.dumps(expected)), json.loads(json.dumps(actual))  # tuples == lists
    differences = {k: (expected.get(k), actual.get(k)) for k in keys if expected.get(k) != actual.get(k)}
    if differences:
        detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differences.items())
        raise ConfigMismatchError(f"{what} was built on features of another extractor ({detail}); "
                                  "extract the features with the same model, weights, pooling and preprocessing")


def check_rows_finite(features: np.ndarray, where: str) -> None:
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=tuple(range(1, features.ndim))).sum())
        raise InputError(f"{bad} rows of {where} hold NaN or infinite values; re-extract them, or drop them "
                         "from the store")
