"""A store as Parquet, and Parquet vectors as a store.

`export_parquet` writes one row per store row: the metadata columns, then one
`fixed_size_list<float32, d>` column per layer (null where the row has no vector), in row groups
small enough to stream, with the extractor config and the store's fingerprints in the file's
key-value metadata (key `featx`). DuckDB, pandas, pyarrow, LanceDB and Hugging Face `datasets`
read it as it is. `import_parquet` reads such a file (or any Parquet with a fixed-size-list or
list column of floats) into a new store, so vectors made elsewhere can be indexed, projected and
classified."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import InputError
from featx.io import atomic
from featx.options import EXPORT, EXTRACT
from featx.store.artifacts import check_output
from featx.store.format import now_iso
from featx.store.reader import FeatureStore

log = logging.getLogger(__name__)

METADATA_KEY = b"featx"
EXPORT_COLUMNS = ["row_id", "path", "label", "split", "group", "sha256", "status", "error"]
ROW_GROUP_BYTES = 32 << 20  # vectors per row group: a reader streams the file in pieces of about this size
IMPORTED_SOURCE = "featx import"


def vector_type(dim: int):
    import pyarrow as pa

    return pa.list_(pa.float32(), dim)


def export_parquet(store: str | Path | FeatureStore, out: str | Path, *, layers: list[str] | None = EXPORT.layers,
                   normalize: str = EXPORT.normalize, ok_only: bool = EXPORT.ok_only) -> list[Path]:
    """Write the store at `store` as Parquet. `out` ending in `.parquet`: one file; else a folder
    of part files (`part-00000.parquet`, … one per store shard) for stores too large for one.
    `layers`: the layers to write (default: all, in the store's order); `normalize="l2"` divides
    each vector by its length; `ok_only` drops rows without a vector. Returns the files written."""
    import pyarrow.parquet as pq

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    if not store.complete:
        raise InputError(f"store '{store.path}' is not complete (an interrupted extraction); re-run the same "
                         "`featx extract` command to finish it, then export")
    chosen = [store.check_layer(layer) for layer in (layers or store.layers)]
    if normalize not in ("none", "l2"):
        raise InputError(f"--normalize '{normalize}' is not allowed; allowed: none, l2")
    dims = {layer: int(np.prod(store.layer_shape(layer))) for layer in chosen}
    meta = store.meta.reset_index(drop=True)
    metadata = {METADATA_KEY: json.dumps(_description(store, chosen, dims, normalize, ok_only)).encode()}
    out = Path(out)
    single = out.suffix.lower() == ".parquet"
    pieces = _pieces(store)
    written = []
    if single:
        with atomic.atomic_path(out) as tmp:
            schema = _schema(meta, dims).with_metadata(metadata)
            with pq.ParquetWriter(tmp, schema) as writer:
                for start, stop in pieces:
                    table = _table(store, meta, chosen, dims, start, stop, normalize, ok_only, schema)
                    writer.write_table(table, row_group_size=_group_rows(dims))
        written.append(out)
    else:
        with atomic.atomic_directory(out) as tmp:
            schema = _schema(meta, dims).with_metadata(metadata)
            for number, (start, stop) in enumerate(pieces):
                table = _table(store, meta, chosen, dims, start, stop, normalize, ok_only, schema)
                pq.write_table(table, tmp / f"part-{number:05d}.parquet", row_group_size=_group_rows(dims))
        written.extend(sorted(out.glob("part-*.parquet")))
    log.info("exported %d rows of store %s to %s", len(meta), store.path, out)
    return written


def _description(store: FeatureStore, chosen: list[str], dims: dict, normalize: str, ok_only: bool) -> dict:
    return {"config": store.config, "config_hash": store.config_hash, "fingerprint": store.fingerprint,
            "content_fingerprint": store.content_fingerprint, "store": str(store.path.resolve()),
            "layers": {layer: {"dim": dims[layer], "shape": list(store.layer_shape(layer)),
                               "stored_dtype": store.manifest["layers"][layer]["dtype"]} for layer in chosen},
            "normalize": normalize, "ok_only": ok_only, "exported": now_iso()}


def _pieces(store: FeatureStore) -> list[tuple[int, int]]:
    """Row ranges of the store's shards: each is read (memory-mapped) and written once."""
    shards = store.manifest["shards"]
    return [(s["start"], s["stop"]) for s in shards] if shards else [(0, len(store))]


def _group_rows(dims: dict) -> int:
    return max(1, min(65536, ROW_GROUP_BYTES // max(1, 4 * sum(dims.values()))))


def _schema(meta: pd.DataFrame, dims: dict):
    import pyarrow as pa

    fields = [pa.field("row_id", pa.int64(), nullable=False)]
    fields += [pa.field(column, pa.string()) for column in EXPORT_COLUMNS[1:]]
    fields += [pa.field(layer, vector_type(dim)) for layer, dim in dims.items()]
    return pa.schema(fields)


def _table(store: FeatureStore, meta: pd.DataFrame, layers: list[str], dims: dict, start: int, stop: int,
           normalize: str, ok_only: bool, schema):
    import pyarrow as pa

    part = meta.iloc[start:stop]
    ok = ((part["status"] == "ok") & part["active"].astype(bool)).to_numpy()
    keep = ok if ok_only else np.ones(len(part), dtype=bool)
    columns = {"row_id": pa.array(part["row_id"].to_numpy(dtype=np.int64)[keep])}
    for column in EXPORT_COLUMNS[1:]:
        values = part[column].astype(object).where(part[column].notna(), None).to_numpy()[keep]
        columns[column] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    rows = np.arange(start, stop)[keep]
    for layer in layers:
        vectors = np.asarray(store.gather(layer, rows), dtype=np.float32).reshape(len(rows), dims[layer])
        if normalize == "l2":
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1).astype(np.float32)
        flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
        mask = pa.array(~ok[keep])
        columns[layer] = pa.FixedSizeListArray.from_arrays(flat, dims[layer], mask=mask)
    return pa.table(columns, schema=schema)


# --- import ------------------------------------------------------------------------------------

def read_export_metadata(path: str | Path) -> dict | None:
    """The `featx` key-value metadata of an exported Parquet file, or None for another file."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


def import_parquet(source: str | Path, out: str | Path, *, columns: list[str] | None = EXPORT.layers,
                   overwrite: bool = False, rows_per_shard: int = EXTRACT.shard_size) -> FeatureStore:
    """A new store at `out` holding the vectors of the Parquet file (or folder of part files)
    `source`: each vector column becomes a layer (`columns`: which ones; default: every
    fixed-size-list or list-of-float column). `path`, `label`, `split` and `group` columns are
    kept when present; rows without a vector become error rows. A featx export keeps its
    extractor config, so models and indexes built on either store agree."""
    import pyarrow.dataset as ds

    from featx.store.writer import StoreWriter

    source = Path(source)
    if not source.exists():
        raise InputError(f"'{source}' does not exist; pass a Parquet file or a folder of Parquet part files")
    files = [source] if source.is_file() else sorted(source.glob("*.parquet"))
    if not files:
        raise InputError(f"folder '{source}' holds no .parquet files")
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    layers = _vector_columns(dataset.schema, columns, source)
    exported = read_export_metadata(files[0])
    config = dict(exported["config"]) if exported else {"backbone": "imported", "source": IMPORTED_SOURCE,
                                                        "layers": layers, "pool": None, "preprocess": None}
    config["imported_from"] = str(source.resolve())
    table = dataset.to_table(columns=[c for c in ("path", "label", "split", "group", "sha256")
                                      if c in dataset.schema.names])
    records = _records(table, source)
    if check_output(out, "store", inputs=[source]) and not overwrite:
        raise InputError(f"store '{out}' already exists; import into a new folder, or pass --overwrite to replace it")
    with StoreWriter(out, config, overwrite=overwrite, rows_per_shard=rows_per_shard) as writer:
        writer.prepare(records)
        start = 0
        for batch in dataset.to_batches(columns=layers + [c for c in ("sha256",) if c in dataset.schema.names],
                                        batch_size=rows_per_shard):
            features, meta = _batch_rows(batch, layers, records, start)
            writer.commit_shard(start, features, meta)
            start += len(meta)
        return writer.finalize()


def _vector_columns(schema, wanted: list[str] | None, source: Path) -> list[str]:
    import pyarrow as pa

    def is_vector(field) -> bool:
        kind = field.type
        return ((pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind))
                and pa.types.is_floating(kind.value_type))

    found = [f.name for f in schema if is_vector(f)]
    if not found:
        raise InputError(f"'{source}' has no vector column (a fixed-size list or list of floats); its columns: "
                         f"{', '.join(schema.names)}")
    if not wanted:
        return found
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise InputError(f"column(s) {unknown} of '{source}' are not vector columns; vector columns: "
                         f"{', '.join(found)}")
    return list(wanted)


def _records(table, source: Path) -> list:
    from featx.io.sources import ImageRecord

    frame = table.to_pandas()
    n = len(frame)
    if n == 0:
        raise InputError(f"'{source}' has no rows")
    paths = frame["path"].tolist() if "path" in frame else [None] * n
    if any(p is None for p in paths) or len(set(paths)) < n:  # each row needs its own name in a store
        paths = [f"{source.name}#{i}" for i in range(n)]
    column = {name: (frame[name].astype(object).where(frame[name].notna(), None).tolist() if name in frame else
                     [None] * n) for name in ("label", "split", "group")}
    return [ImageRecord(str(paths[i]), *(None if column[k][i] is None else str(column[k][i])
                                         for k in ("label", "split", "group"))) for i in range(n)]


def _batch_rows(batch, layers: list[str], records: list, start: int) -> tuple[dict, pd.DataFrame]:
    import pyarrow.compute as pc

    n = batch.num_rows
    ok = np.ones(n, dtype=bool)
    features = {}
    for layer in layers:
        column = batch.column(layer)
        valid = ~column.is_null().to_numpy(zero_copy_only=False).astype(bool)
        lengths = set(pc.list_value_length(column).drop_null().to_numpy(zero_copy_only=False).tolist())
        if len(lengths) > 1:
            raise InputError(f"column '{layer}' holds vectors of different lengths {sorted(lengths)[:5]}; a "
                             "layer's vectors must all have one length")
        dim = lengths.pop() if lengths else 0
        array = np.full((n, dim), np.nan, dtype=np.float32)
        array[valid] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        features[layer] = array
        ok &= valid & np.isfinite(array).all(axis=1)
    sha = batch.column("sha256").to_pylist() if "sha256" in batch.schema.names else [None] * n
    meta = pd.DataFrame({"row_id": np.arange(start, start + n, dtype=np.int64),
                         "path": [records[start + i].path for i in range(n)], "sha256": sha,
                         "status": np.where(ok, "ok", "no_vector"),
                         "error": [None if good else "the imported row has no finite vector" for good in ok],
                         "size": pd.array([None] * n, dtype="Int64"), "mtime_ns": pd.array([None] * n, dtype="Int64")})
    return features, meta


__all__ = ["EXPORT_COLUMNS", "export_parquet", "import_parquet", "read_export_metadata"]
