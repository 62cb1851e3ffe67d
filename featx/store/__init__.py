"""The feature store: shards by row range, inputs-are-truth re-runs, one writer at a time.

`featx info` reads records through `featx.store.artifacts` without pandas or numpy, so this
package imports its modules on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featx.lazy import lazy_exports

_EXPORTS = {
    "read_record": "featx.store.artifacts", "StoreLock": "featx.store.lock", "Changes": "featx.store.reconcile",
    "FeatureStore": "featx.store.reader", "PendingWork": "featx.store.writer", "StoreWriter": "featx.store.writer",
    "write_shard": "featx.store.writer", "SCHEMA_VERSION": "featx.store.artifacts", "file_sha256": "featx.io.atomic",
    **{name: "featx.store.format" for name in (
        "MANIFEST", "META", "META_COLUMNS", "check_rows_finite", "config_hash", "content_fingerprint", "fingerprint",
        "library_versions", "missing_ranges", "require_same_config", "verify_recorded_sha256")},
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from featx.io.atomic import file_sha256
    from featx.store.artifacts import SCHEMA_VERSION, read_record
    from featx.store.format import (
        MANIFEST,
        META,
        META_COLUMNS,
        check_rows_finite,
        config_hash,
        content_fingerprint,
        fingerprint,
        library_versions,
        missing_ranges,
        require_same_config,
        verify_recorded_sha256,
    )
    from featx.store.lock import StoreLock
    from featx.store.reader import FeatureStore
    from featx.store.reconcile import Changes
    from featx.store.writer import PendingWork, StoreWriter, write_shard
