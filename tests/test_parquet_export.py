"""`featx export STORE -o OUT.parquet` and `featx import`: Parquet that pyarrow, pandas and DuckDB
read, with vectors equal to the store's byte for byte, and vectors from Parquet back into a store."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featx.errors import InputError
from featx.extract.job import extract
from featx.store import FeatureStore
from featx.store.parquet import export_parquet, import_parquet, read_export_metadata
from tests.conftest import TINY, make_feature_store


@pytest.fixture
def two_layer_store(image_folder, tmp_path):
    (image_folder / "cats" / "broken.png").write_bytes(b"not a png")
    return extract(image_folder, tmp_path / "store", layers=["layer3", "flatten"], shard_size=5, **TINY)


def test_export_is_read_by_pyarrow_pandas_and_duckdb_with_equal_vectors(two_layer_store, tmp_path):
    store = two_layer_store
    out = tmp_path / "out.parquet"
    export_parquet(store.path, out)
    schema = pq.read_schema(out)
    assert schema.field("flatten").type == pa.list_(pa.float32(), 512)
    assert schema.field("layer3").type == pa.list_(pa.float32(), 256)
    table = pq.read_table(out)
    assert table.column("row_id").to_pylist() == list(range(len(store)))
    ok = store.ok
    for layer in ("layer3", "flatten"):
        column = table.column(layer).combine_chunks()
        assert column.is_null().to_numpy(zero_copy_only=False).tolist() == (~ok).tolist()  # failed rows: null
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in column.to_pylist() if v is not None])
        assert vectors.tobytes() == np.ascontiguousarray(store.features(layer)[ok]).tobytes()
    frame = pd.read_parquet(out)
    assert frame["path"].tolist() == store.meta["path"].tolist()
    assert frame["status"].tolist() == store.meta["status"].tolist()
    assert frame.loc[frame["status"] == "ok", "label"].tolist() == list(store.labels[ok])
    meta = read_export_metadata(out)
    assert meta["config"] == json.loads(json.dumps(store.config)) and meta["fingerprint"] == store.fingerprint
    assert meta["layers"]["flatten"]["dim"] == 512


def test_duckdb_joins_the_export_with_a_label_table(two_layer_store, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    store = two_layer_store
    out = tmp_path / "out.parquet"
    export_parquet(store, out, layers=["flatten"], ok_only=True)
    names = pd.DataFrame({"label": ["cats", "dogs"], "name": ["Cat", "Dog"]})  # noqa: F841 (read by DuckDB)
    rows = duckdb.sql(f"SELECT n.name, count(*) AS n, min(len(e.flatten)) AS d FROM '{out}' e "
                      "JOIN names n USING (label) GROUP BY n.name ORDER BY n.name").fetchall()
    assert rows == [("Cat", 6, 512), ("Dog", 6, 512)]
    first = duckdb.sql(f"SELECT flatten FROM '{out}' ORDER BY row_id LIMIT 1").fetchall()[0][0]
    assert np.asarray(first, dtype=np.float32).tobytes() == store.features("flatten")[store.ok][0].tobytes()


def test_layer_normalize_and_ok_only_select_what_is_written(two_layer_store, tmp_path):
    store = two_layer_store
    out = tmp_path / "l2.parquet"
    export_parquet(store, out, layers=["flatten"], normalize="l2", ok_only=True)
    table = pq.read_table(out)
    assert "layer3" not in table.column_names and table.num_rows == int(store.ok.sum())
    assert set(table.column("status").to_pylist()) == {"ok"}
    vectors = np.array(table.column("flatten").to_pylist(), dtype=np.float32)
    expected = store.features("flatten")[store.ok]
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(Exception, match="layer 'nope' is not in store"):
        export_parquet(store, tmp_path / "x.parquet", layers=["nope"])
    assert not (tmp_path / "x.parquet").exists()


def test_folder_of_part_files_with_small_row_groups(tmp_path, monkeypatch):
    import featx.store.parquet as parquet

    X = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    store = make_feature_store(tmp_path / "s", X, [str(i % 3) for i in range(30)], shard_size=10)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 4 * 16 * 4)  # four rows per group
    files = export_parquet(store, tmp_path / "parts")
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert all(pq.ParquetFile(f).metadata.num_row_groups == 3 for f in files)  # 4 + 4 + 2 rows
    table = pq.read_table(tmp_path / "parts")
    assert np.array(table.column("vec").to_pylist(), dtype=np.float32).tobytes() == X.tobytes()


def test_import_of_an_export_is_a_store_with_the_same_vectors_and_config(two_layer_store, tmp_path):
    store = two_layer_store
    export_parquet(store, tmp_path / "out.parquet")
    imported = import_parquet(tmp_path / "out.parquet", tmp_path / "imported", columns=["flatten"])
    assert imported.layers == ["flatten"] and len(imported) == len(store)
    assert np.array_equal(imported.ok, store.ok)
    assert imported.features("flatten")[store.ok].tobytes() == store.features("flatten")[store.ok].tobytes()
    assert list(imported.labels) == list(store.labels)
    assert imported.config["backbone"] == "resnet18" and imported.config["pool"] == store.config["pool"]
    with pytest.raises(InputError, match="already exists"):
        import_parquet(tmp_path / "out.parquet", tmp_path / "imported")


def test_import_of_vectors_made_elsewhere(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    table = pa.table({"id": list(range(7)), "label": ["a", "b"] * 3 + ["a"],
                      "emb": pa.array([list(v) for v in vectors], type=pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "made.parquet")
    store = import_parquet(tmp_path / "made.parquet", tmp_path / "s")
    assert store.layers == ["emb"] and store.features("emb").tobytes() == vectors.tobytes()
    assert list(store.labels) == ["a", "b"] * 3 + ["a"] and store.config["backbone"] == "imported"
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "none.parquet")
    with pytest.raises(InputError, match="has no vector column"):
        import_parquet(tmp_path / "none.parquet", tmp_path / "s2")
    ragged = pa.table({"emb": pa.array([[1.0, 2.0], [1.0]], type=pa.list_(pa.float32()))})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="different lengths"):
        import_parquet(tmp_path / "ragged.parquet", tmp_path / "s3")


def test_cli_export_and_import(two_layer_store, tmp_path):
    run = [sys.executable, "-m", "featx.cli"]
    done = subprocess.run(run + ["export", str(two_layer_store.path), "-o", str(tmp_path / "o.parquet"),
                                 "--layer", "flatten", "--ok-only", "--normalize", "l2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pq.read_schema(tmp_path / "o.parquet").names[-1] == "flatten"
    done = subprocess.run(run + ["import", str(tmp_path / "o.parquet"), "-o", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(FeatureStore.open(tmp_path / "s")) == int(two_layer_store.ok.sum())
    done = subprocess.run(run + ["export", str(tmp_path), "-o", str(tmp_path / "x.parquet")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a featx store or model" in done.stderr
