"""The store's files and the rules every reader and writer shares: names, config hash, fingerprints,
checksummed reads, row ranges and the checks on what features may hold."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import ConfigMismatchError, InputError, IntegrityError, StoreError
from featx.io import atomic
from featx.io.atomic import SEAL, file_sha256
from featx.store import commit_log
from featx.store.artifacts import SCHEMA_VERSION, read_record

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


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def save_npy(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return atomic.write_hashed(path, buffer.getvalue())


def save_parquet(path: Path, frame: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return atomic.write_hashed(path, buffer.getvalue())


def layer_dir(layer: str) -> str:
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


def checked_file(file: Path, expected: str) -> Path:
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


def read_parquet_checked(file: Path, expected: str) -> pd.DataFrame:
    return pd.read_parquet(checked_file(file, expected))


def read_npy_checked(file: Path, expected: str) -> np.ndarray:
    return np.load(checked_file(file, expected), mmap_mode="r", allow_pickle=False)


def fingerprint(meta: pd.DataFrame, config_hash_: str, columns=("row_id", "sha256", "label", "split", "group")) -> str:
    """A hash over the rows a model or index learns from, and the extractor config."""
    table = meta.reindex(columns=list(columns)).astype(object).where(meta.reindex(columns=list(columns)).notna(), "")
    digest = hashlib.sha256(config_hash_.encode())
    digest.update(table.astype(str).to_csv(index=False, header=False).encode())
    return digest.hexdigest()[:16]


def content_fingerprint(meta: pd.DataFrame, config_hash_: str) -> str:
    """Only what decides the vectors and their row ids (labels may change without touching them)."""
    return fingerprint(meta, config_hash_, ("row_id", "sha256", "status"))


def open_manifest(path: Path) -> dict:
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



SUMMARY_ERRORS_MAX = 1000  # failed rows listed in a sealed summary; with more, `featx info` reads the table


PENDING = "pending"  # the status of a planned row an unfinished run has not extracted yet


def meta_counts(meta: pd.DataFrame) -> dict:
    """The row counts of a store's summary: rows, ok, failed, per class and split, the failed rows."""
    if "active" in meta:
        meta = meta[meta["active"].astype(bool)]
    failed = meta[~meta["status"].isin(("ok", PENDING))]  # a pending row (an unfinished run) has not failed
    return {"rows": len(meta), "ok": int((meta["status"] == "ok").sum()), "failed": len(failed),
            "pending": int((meta["status"] == PENDING).sum()),
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



def config_diff(old: dict, new: dict) -> str:
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
