"""The feature store: shards by row range, inputs-are-truth re-runs, one writer at a time."""

from featx.artifacts import read_record
from featx.store.lock import StoreLock
from featx.store.reconcile import Changes
from featx.store.store import (MANIFEST, META, META_COLUMNS, SCHEMA_VERSION, FeatureStore, PendingWork, StoreWriter,
                               check_rows_finite, config_hash, content_fingerprint, file_sha256, fingerprint,
                               library_versions, missing_ranges, require_same_config, verify_recorded_sha256,
                               write_shard)

__all__ = ["MANIFEST", "META", "META_COLUMNS", "SCHEMA_VERSION", "Changes", "FeatureStore", "PendingWork",
           "StoreLock", "StoreWriter", "check_rows_finite", "config_hash", "content_fingerprint", "file_sha256",
           "fingerprint", "library_versions", "missing_ranges", "read_record", "require_same_config",
           "verify_recorded_sha256", "write_shard"]
