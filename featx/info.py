"""What `featx info` shows, read without pandas, torch or scikit-learn (it answers in well under
half a second): a finished store's summary from its sealed manifest, every file's sha256 checked
as `FeatureStore.open` does. The counts (rows, classes, splits, failed rows) were sealed into the
manifest next to the metadata file's sha256 when the store was finalized, so a finished store
needs neither pyarrow nor numpy (together ~0.2 s of imports); a store finalized before that, or
with more than `SUMMARY_ERRORS_MAX` failed rows, is counted from its metadata table (pyarrow). An
unfinished store, or one with commits not yet folded into its manifest, goes through
`FeatureStore` instead."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from featx.errors import IntegrityError, StoreError
from featx.store.artifacts import RECORD_FILES, SCHEMA_VERSION, artifact_kind, read_record

STORE_FIX = "create one with `featx extract IMAGES -o STORE`"


def store_manifest(path: str | Path) -> dict:
    """The sealed manifest of a store, with the sha256 of its metadata files checked."""
    from featx.io.atomic import file_sha256

    path = Path(path)
    manifest = read_record(path, "manifest.json", "a feature store", STORE_FIX)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        from featx.store import FeatureStore

        FeatureStore.open(path)  # raises its full explanation of the version mismatch
    entries = [manifest.get("plan"), manifest.get("meta")] + [s["meta"] for s in manifest["shards"]]
    for entry in filter(None, entries):
        file = path / entry["path"]
        if not file.is_file():
            raise IntegrityError(f"'{file}' is missing: the store is damaged; re-extract it")
        actual = file_sha256(file)
        if actual != entry["sha256"]:
            raise IntegrityError(f"'{file}' has sha256 {actual}, but manifest.json records {entry['sha256']}: it was "
                                 "changed or truncated. Re-extract the store")
    return manifest


def store_summary(path: str | Path) -> dict:
    """`FeatureStore.summary()`, equal value for value."""
    path = Path(path)
    manifest = store_manifest(path)
    pending_log = path / "commits.jsonl"  # commits not yet folded into the manifest: FeatureStore replays them
    pending = pending_log.is_file() and pending_log.stat().st_size
    if not (manifest.get("complete") and manifest.get("meta")) or pending:
        from featx.store import FeatureStore

        return FeatureStore.open(path).summary()
    config = manifest["config"]
    counts = manifest["meta"].get("summary")  # sealed at finalize next to the sha256 checked above
    if counts is None:  # a store finalized before summaries were recorded: count from the table
        counts = _table_counts(path / manifest["meta"]["path"])
    return {"path": str(path), "rows": counts["rows"], "ok": counts["ok"], "failed": counts["failed"],
            "pending": counts.get("pending", 0), "complete": bool(manifest.get("complete")),
            "backbone": config.get("backbone"),
            "weights": config.get("weights_id"), "layers": {k: v["shape"] for k, v in manifest["layers"].items()},
            "pool": config.get("pool"), "fingerprint": manifest.get("fingerprint"),
            "last_changes": (manifest.get("last_run") or {}).get("line"),
            "per_class": counts["per_class"], "per_split": counts["per_split"], "errors": counts["errors"]}


def _table_counts(meta_file: Path) -> dict:
    """`featx.store.meta_counts` of a metadata table, read with pyarrow (no pandas)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(meta_file).read()  # read_table would import pandas (via pyarrow.dataset)
    columns = {name: table.column(name).to_pylist() for name in ("path", "label", "split", "status", "error")}
    active = table.column("active").to_pylist() if "active" in table.column_names else [True] * table.num_rows
    keep = [i for i, a in enumerate(active) if a]
    failed = [i for i in keep if columns["status"][i] != "ok"]
    return {"rows": len(keep), "ok": len(keep) - len(failed), "failed": len(failed),
            "per_class": _counts(columns["label"], keep), "per_split": _counts(columns["split"], keep),
            "errors": [{"path": columns["path"][i], "status": columns["status"][i], "error": columns["error"][i]}
                       for i in failed]}


def _counts(values: list, rows: list[int]) -> dict:
    counts = Counter("(none)" if values[i] is None else values[i] for i in rows)
    return dict(sorted(counts.items()))


def store_fingerprint(path: str | Path) -> str | None:
    manifest = store_manifest(path)
    pending_log = Path(path) / "commits.jsonl"
    if manifest.get("fingerprint") and not (pending_log.is_file() and pending_log.stat().st_size):
        return manifest["fingerprint"]
    from featx.store import FeatureStore

    return FeatureStore.open(path).fingerprint


def describe_artifact(folder: str | Path) -> dict:
    """What `featx info` shows: a store's summary, or a model's / index's source store, the
    fingerprint it was built on, and whether that store still matches."""
    folder = Path(folder)
    kind = artifact_kind(folder)
    if kind == "store":
        return {"kind": "store", **store_summary(folder)}
    if kind not in ("model", "index", "anomaly"):
        raise StoreError(f"'{folder}' is not a featx store, model, index or anomaly model (none of "
                         f"{', '.join(RECORD_FILES[k] for k in ('store', 'model', 'index', 'anomaly'))} found); "
                         "pass a folder made by `featx extract`, `featx train-shallow`, `featx index` or "
                         "`featx anomaly fit`")
    record = read_record(folder, RECORD_FILES[kind], f"a featx {kind}", "rebuild it")
    if kind == "model":
        source = record.get("source") or {}
        store_path, built_on = source.get("store"), source.get("fingerprint")
        extra = {"classes": record.get("classes"), "layer": record.get("layer"), "metrics": record.get("metrics")}
    elif kind == "anomaly":
        store_path, built_on = record.get("store"), record.get("store_fingerprint")
        extra = {"mode": record.get("mode"), "layers": record.get("layers"),
                 "threshold": (record.get("threshold") or {}).get("threshold"),
                 "vectors": (record.get("memory") or {}).get("vectors"),
                 **{key: value for key, value in (record.get("evaluation") or {}).items() if key in ("auroc", "auprc")}}
    else:
        store_path, built_on = record.get("store"), record.get("store_fingerprint")
        extra = {"index": record.get("kind"), "metric": record.get("metric"), "vectors": record.get("ntotal"),
                 "layer": record.get("layer")}
    summary = {"kind": kind, "path": str(folder), "source_store": store_path, "built_on_fingerprint": built_on,
               "backbone": (record.get("extractor") or {}).get("backbone"), **extra}
    try:
        current = store_fingerprint(store_path) if store_path else None
        summary["store_now"] = ("unchanged" if current == built_on else
                                f"changed (fingerprint now {current}): re-train the model" if kind == "model" else
                                f"changed (fingerprint now {current}): fit it again" if kind == "anomaly" else
                                f"changed (fingerprint now {current}): run `featx index --update {folder}`")
    except StoreError as exc:
        summary["store_now"] = f"not available ({exc})"
    return summary
