"""The feature store: `manifest.json` + `meta.parquet` + `features/<layer>/<shard>.npy`.

The manifest is the commit point: a shard exists for readers only once the manifest lists it,
and every file is written atomically. Rows are processed in plan order, so the finished shards
always form a prefix of the plan and a re-run resumes after the last one."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featx import atomic
from featx.atomic import file_sha256
from featx.errors import ConfigMismatchError, InputError, IntegrityError, StoreError
from featx.images import ImageRecord

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
META = "meta.parquet"
PLAN = "inputs.parquet"
META_COLUMNS = ["row_id", "path", "label", "split", "sha256", "status", "error"]


def config_hash(config: dict) -> str:
    """Identity of the features: where the weights file lies does not matter, its sha256 does."""
    identity = {k: v for k, v in config.items() if k != "weights_source"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def library_versions() -> dict:
    import sklearn
    import torch
    import torchvision

    from featx import __version__

    return {"featx": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}


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


def read_record(folder: Path, name: str, what: str, fix: str) -> dict:
    """The JSON record that makes `folder` a featx store, model or index, or a clear error."""
    file = Path(folder) / name
    if not file.is_file():
        raise StoreError(f"'{folder}' is not {what} (no {name}); {fix}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"'{file}' is not valid JSON ({exc}); {fix}") from exc


class FeatureStore:
    """Read access to a store. `features(layer)` is memory-mapped when the store has one shard."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._meta: pd.DataFrame | None = None

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        path = Path(path)
        manifest = read_record(path, MANIFEST, "a feature store", "create one with `featx extract IMAGES -o STORE`")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"store '{path}' has schema version {manifest.get('schema_version')}; this featx "
                             f"reads version {SCHEMA_VERSION}. Re-extract with this version")
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

    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    # --- rows ---
    @property
    def meta(self) -> pd.DataFrame:
        if self._meta is None:
            meta_entry = self.manifest.get("meta")
            if meta_entry and self.complete:
                self._meta = pd.read_parquet(self.path / meta_entry["path"])
            else:  # an unfinished run: the committed shards' parts
                parts = [pd.read_parquet(self.path / s["meta"]["path"]) for s in self.manifest["shards"]]
                self._meta = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=META_COLUMNS)
        return self._meta

    @property
    def labels(self) -> np.ndarray:
        return self.meta["label"].to_numpy(dtype=object)

    @property
    def paths(self) -> np.ndarray:
        return self.meta["path"].to_numpy(dtype=object)

    @property
    def ok(self) -> np.ndarray:
        return (self.meta["status"] == "ok").to_numpy()

    def check_layer(self, layer: str | None) -> str:
        layer = layer or self.default_layer
        if layer not in self.manifest["layers"]:
            raise StoreError(f"layer '{layer}' is not in store '{self.path}'; it holds: {', '.join(self.layers)}. "
                             f"Extract it with `featx extract ... --layer {layer}`")
        return layer

    def features(self, layer: str | None = None) -> np.ndarray:
        """All rows of a layer (failed rows are NaN). One shard: a read-only memory map."""
        layer = self.check_layer(layer)
        arrays = [np.load(self.path / s["features"][layer]["path"], mmap_mode="r") for s in self.manifest["shards"]]
        if not arrays:
            return np.zeros((0, *self.manifest["layers"][layer]["shape"]), dtype=np.float32)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def gather(self, layer: str | None, rows: np.ndarray) -> np.ndarray:
        """The features of some rows, read from the memory-mapped shards (no full load)."""
        layer = self.check_layer(layer)
        rows = np.asarray(rows, dtype=np.int64)
        shards = self.manifest["shards"]
        starts = np.array([s["start"] for s in shards])
        which = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.manifest["layers"][layer]["shape"]), dtype=np.float32)
        for shard_index in np.unique(which):
            shard = shards[shard_index]
            mask = which == shard_index
            array = np.load(self.path / shard["features"][layer]["path"], mmap_mode="r")
            out[mask] = array[rows[mask] - shard["start"]]
        return out

    def iter_shards(self, layer: str | None = None):
        """(row_start, memory-mapped array) per shard: stream large stores."""
        layer = self.check_layer(layer)
        for shard in self.manifest["shards"]:
            yield shard["start"], np.load(self.path / shard["features"][layer]["path"], mmap_mode="r")

    # --- checks ---
    def verify(self) -> list[str]:
        """Every recorded file's sha256 and shape; returns the problems found (empty when sound)."""
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
                    actual = np.load(file, mmap_mode="r").shape
                except ValueError as exc:
                    problems.append(f"unreadable array {entry['path']}: {exc}")
                    return
                if tuple(actual) != tuple(shape):
                    problems.append(f"shape {tuple(actual)} != recorded {tuple(shape)} in {entry['path']}")

        for shard in self.manifest["shards"]:
            check(shard["meta"])
            for layer, entry in shard["features"].items():
                check(entry, (shard["stop"] - shard["start"], *self.manifest["layers"][layer]["shape"]))
        if self.manifest.get("meta"):
            check(self.manifest["meta"])
        expected = sum(s["stop"] - s["start"] for s in self.manifest["shards"])
        if expected != len(self):
            problems.append(f"shards cover {expected} rows but the manifest says {len(self)}")
        return problems

    def summary(self) -> dict:
        meta = self.meta
        failed = meta[meta["status"] != "ok"]
        return {
            "path": str(self.path),
            "rows": len(meta),
            "ok": int((meta["status"] == "ok").sum()),
            "failed": len(failed),
            "complete": self.complete,
            "backbone": self.config.get("backbone"),
            "weights": self.config.get("weights_id"),
            "layers": {k: v["shape"] for k, v in self.manifest["layers"].items()},
            "pool": self.config.get("pool"),
            "per_class": meta["label"].fillna("(none)").value_counts().sort_index().to_dict(),
            "per_split": meta["split"].fillna("(none)").value_counts().sort_index().to_dict(),
            "errors": failed[["path", "status", "error"]].to_dict("records"),
        }


@dataclass
class PendingWork:
    plan: pd.DataFrame  # row_id, path, label, split
    start_row: int  # first row not yet committed


class StoreWriter:
    """Creates, resumes or appends to a store; `commit_shard` is the only way rows become visible."""

    def __init__(self, path: str | Path, config: dict, *, overwrite: bool = False, append: bool = False):
        self.path = Path(path)
        self.config = config
        self.hash = config_hash(config)
        self.overwrite = overwrite
        self.append = append
        self.manifest: dict | None = None

    def prepare(self, records: list[ImageRecord], sha_of=None) -> PendingWork:
        """Decide what is left to do. `sha_of(path)` gives a file's content hash (for --append)."""
        import shutil

        manifest_file = self.path / MANIFEST
        if self.path.exists() and not manifest_file.exists() and any(self.path.iterdir()) and not self.overwrite:
            raise StoreError(f"output folder '{self.path}' exists, is not empty and is not a feature store; "
                             "choose another folder or pass --overwrite")
        if self.overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temporaries(self.path)
        new_plan = pd.DataFrame({"row_id": np.arange(len(records), dtype=np.int64),
                                 "path": [r.path for r in records], "label": [r.label for r in records],
                                 "split": [r.split for r in records]})
        if not manifest_file.exists():
            self.manifest = self._new_manifest()
            _save_parquet(self.path / PLAN, new_plan)
            self._write_manifest()
            return PendingWork(new_plan, 0)

        self.manifest = json.loads(manifest_file.read_text())
        if self.manifest["config_hash"] != self.hash:
            raise ConfigMismatchError(
                f"store '{self.path}' was made with another extractor config "
                f"({_config_diff(self.manifest['config'], self.config)}); use another output folder, "
                "or pass --overwrite to replace it")
        plan = pd.read_parquet(self.path / PLAN)
        same = plan[["path", "label", "split"]].astype(object).equals(new_plan[["path", "label", "split"]].astype(object))
        added = len(set(new_plan["path"]) - set(plan["path"]))
        if same or (not self.append and not added):
            return PendingWork(plan, self.manifest["n_rows"])
        if not self.append:
            raise StoreError(f"store '{self.path}' was started with other inputs ({added} new files); pass "
                             "--append to add the new files, or --overwrite to start again")
        # --append: keep every planned row; add files whose content is not in the store yet
        known = set(self._known_hashes(plan, sha_of))
        planned = set(plan["path"])
        additions = []
        for record in new_plan.itertuples():
            if record.path in planned:
                continue
            digest = sha_of(record.path)
            if digest is None or digest not in known:
                additions.append({"path": record.path, "label": record.label, "split": record.split})
                if digest:
                    known.add(digest)
        if additions:
            extra = pd.DataFrame(additions)
            extra.insert(0, "row_id", np.arange(len(plan), len(plan) + len(extra), dtype=np.int64))
            plan = pd.concat([plan, extra], ignore_index=True)
            _save_parquet(self.path / PLAN, plan)
            self.manifest["complete"] = False
            self._write_manifest()
        return PendingWork(plan, self.manifest["n_rows"])

    def _known_hashes(self, plan: pd.DataFrame, sha_of) -> list[str]:
        store = FeatureStore(self.path, self.manifest)
        done = store.meta["sha256"].dropna().tolist()
        pending = plan["path"].iloc[self.manifest["n_rows"]:]
        return done + [h for h in map(sha_of, pending) if h]

    def _new_manifest(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "config": self.config, "config_hash": self.hash,
                "versions": library_versions(), "created": _now(), "updated": _now(), "complete": False,
                "n_rows": 0, "layers": {}, "shards": [], "meta": None}

    def _write_manifest(self) -> None:
        self.manifest["updated"] = _now()
        atomic.write_json(self.path / MANIFEST, self.manifest)

    def commit_shard(self, start: int, features: dict[str, np.ndarray], meta: pd.DataFrame) -> None:
        if start != self.manifest["n_rows"]:
            raise StoreError(f"internal: shard starts at row {start}, store has {self.manifest['n_rows']} rows")
        stop = start + len(meta)
        shard_id = len(self.manifest["shards"])
        name = f"{shard_id:06d}"
        entry = {"id": shard_id, "start": start, "stop": stop, "features": {}}
        for layer, array in features.items():
            if len(array) != len(meta):
                raise StoreError(f"internal: layer {layer} has {len(array)} rows for {len(meta)} metadata rows")
            relative = f"features/{_layer_dir(layer)}/{name}.npy"
            sha = _save_npy(self.path / relative, array)
            entry["features"][layer] = {"path": relative, "sha256": sha, "shape": list(array.shape)}
            recorded = self.manifest["layers"].setdefault(layer, {"shape": list(array.shape[1:]), "dtype": str(array.dtype)})
            if recorded["shape"] != list(array.shape[1:]):
                raise StoreError(f"internal: layer {layer} changed shape {recorded['shape']} -> {array.shape[1:]}")
        relative = f"meta/{name}.parquet"
        entry["meta"] = {"path": relative, "sha256": _save_parquet(self.path / relative, meta[META_COLUMNS])}
        self.manifest["shards"].append(entry)
        self.manifest["n_rows"] = stop
        self.manifest["complete"] = False
        self._write_manifest()  # the commit point

    def finalize(self, n_planned: int) -> FeatureStore:
        if self.manifest["n_rows"] != n_planned:
            raise StoreError(f"internal: {self.manifest['n_rows']} rows committed, {n_planned} planned")
        store = FeatureStore(self.path, self.manifest)
        meta = store.meta.reset_index(drop=True)
        self.manifest["meta"] = {"path": META, "sha256": _save_parquet(self.path / META, meta[META_COLUMNS])}
        self.manifest["complete"] = True
        self._write_manifest()
        return FeatureStore.open(self.path)


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: stored {old.get(k)!r}, requested {new.get(k)!r}" for k in keys[:4]) or "unknown difference"


def require_same_config(expected: dict, actual: dict, what: str) -> None:
    """Refuse to apply a model or index to features of another extractor config."""
    keys = ("backbone", "weights_id", "weights_sha256", "pool", "preprocess")
    expected, actual = json.loads(json.dumps(expected)), json.loads(json.dumps(actual))  # tuples == lists
    differences = {k: (expected.get(k), actual.get(k)) for k in keys if expected.get(k) != actual.get(k)}
    if differences:
        detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differences.items())
        raise ConfigMismatchError(f"{what} was built on features of another extractor ({detail}); "
                                  "extract the features with the same model, weights, pooling and preprocessing")


def verify_recorded_sha256(file: Path, expected: str | None, recorded_in: str, fix: str) -> None:
    """Refuse a file whose bytes are not the ones recorded — before any loader reads it."""
    if not file.is_file():
        raise IntegrityError(f"'{file}' is missing; {fix}")
    actual = file_sha256(file)
    if actual != expected:
        raise IntegrityError(f"'{file}' has sha256 {actual}, but {recorded_in} records {expected}: it was changed "
                             f"or truncated. {fix[0].upper() + fix[1:]}")


def check_rows_finite(features: np.ndarray, where: str) -> None:
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=tuple(range(1, features.ndim))).sum())
        raise InputError(f"{bad} rows of {where} hold NaN or infinite values; re-extract them, or drop them "
                         "from the store")
