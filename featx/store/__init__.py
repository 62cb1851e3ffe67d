"""The feature store: shards by row range, inputs-are-truth re-runs, one writer at a time.

`featx info` reads records through `featx.store.artifacts` without pandas or numpy, so this
package imports its modules on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "read_record": "featx.store.artifacts", "StoreLock": "featx.store.lock", "Changes": "featx.store.reconcile",
    **{name: "featx.store.store" for name in (
        "MANIFEST", "META", "META_COLUMNS", "SCHEMA_VERSION", "FeatureStore", "PendingWork", "StoreWriter",
        "check_rows_finite", "config_hash", "content_fingerprint", "file_sha256", "fingerprint", "library_versions",
        "missing_ranges", "require_same_config", "verify_recorded_sha256", "write_shard")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featx.store' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from featx.store.artifacts import read_record
    from featx.store.lock import StoreLock
    from featx.store.reconcile import Changes
    from featx.store.store import (
        MANIFEST,
        META,
        META_COLUMNS,
        SCHEMA_VERSION,
        FeatureStore,
        PendingWork,
        StoreWriter,
        check_rows_finite,
        config_hash,
        content_fingerprint,
        file_sha256,
        fingerprint,
        library_versions,
        missing_ranges,
        require_same_config,
        verify_recorded_sha256,
        write_shard,
    )
