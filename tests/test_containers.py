"""Images inside WebDataset tar shards and Parquet image datasets: the same vectors as the files,
labels from members and columns, error rows for bad members, reconciliation and resume."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featx.errors import InputError
from featx.extract.job import extract
from featx.io.containers import SourceColumns, expand_braces, webdataset_key
from featx.io.decode import read_bytes
from featx.io.sources import scan_inputs
from featx.store import FeatureStore, StoreWriter
from tests.conftest import TINY


def image_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def write_shards(files: list[Path], out: Path, per_shard: int, label_member: str = "cls") -> list[Path]:
    """WebDataset shards of `files`: key NNNNNN, an image member and a label member per key."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        shard = out / f"{number:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i, file in enumerate(files[start:start + per_shard], start):
                label = file.parent.name
                members = {f"{i:06d}.png": file.read_bytes(),
                           f"{i:06d}.{label_member}": (json.dumps({"name": label}) if label_member == "json"
                                                       else label).encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(shard)
    return shards


def by_content(store: FeatureStore) -> dict[str, np.ndarray]:
    ok = store.ok
    return dict(zip(store.meta["sha256"][ok], store.features()[ok]))


def test_member_paths_braces_and_keys():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert webdataset_key("dir/abc.seg.png") == ("dir/abc", "seg.png")


def test_shards_give_the_same_vectors_and_labels_as_the_files(image_folder, tmp_path):
    files = image_files(image_folder)
    write_shards(files, tmp_path / "shards", per_shard=5)
    records = scan_inputs(str(tmp_path / "shards" / "{00000..00002}.tar"))
    assert len(records) == 12 and records[0].path.endswith("00000.tar::000000.png")
    assert [r.label for r in records] == [f.parent.name for f in files]
    from_files = extract(image_folder, tmp_path / "files", **TINY)
    from_shards = extract(str(tmp_path / "shards" / "*.tar"), tmp_path / "tars", **TINY)
    assert from_shards.ok.all() and len(from_shards) == 12
    files_vectors, shard_vectors = by_content(from_files), by_content(from_shards)
    assert set(files_vectors) == set(shard_vectors)  # the content sha256 is the image's own
    for sha, vector in files_vectors.items():
        assert vector.tobytes() == shard_vectors[sha].tobytes()
    assert sorted(from_shards.labels) == sorted(from_files.labels)


def test_json_label_field_and_bad_members_become_error_rows(image_folder, tmp_path):
    files = image_files(image_folder)[:4]
    shards = write_shards(files, tmp_path / "shards", per_shard=4, label_member="json")
    with tarfile.open(shards[0], "a") as tar:  # a key whose image is broken
        info = tarfile.TarInfo("000009.jpg")
        info.size = 9
        tar.addfile(info, io.BytesIO(b"garbage!!"))
    store = extract(str(shards[0]), tmp_path / "s", label_field="json:name", **TINY)
    assert len(store) == 5 and int(store.ok.sum()) == 4
    bad = store.meta[store.meta["status"] != "ok"].iloc[0]
    assert bad["path"].endswith("::000009.jpg") and bad["status"] == "not_image"
    assert set(store.labels[store.ok]) == {"cats"}
    with pytest.raises(InputError, match="--label-field 'yaml' is not allowed"):
        scan_inputs(str(shards[0]), columns=SourceColumns(label_field="yaml"))


def test_a_changed_shard_is_reread_and_an_unchanged_one_skipped(image_folder, tmp_path, monkeypatch):
    files = image_files(image_folder)
    shards = write_shards(files, tmp_path / "shards", per_shard=6)
    first = extract(str(tmp_path / "shards" / "*.tar"), tmp_path / "s", **TINY)
    before = by_content(first)
    # rewrite shard 1 with one image replaced by another one's bytes and one key dropped
    replaced = files[:6] + [files[0], *files[7:11]]
    with tarfile.open(shards[1], "w") as tar:
        for i, file in enumerate(replaced[6:], 6):
            data = file.read_bytes()
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    hashed = []
    from featx.store import reconcile

    real = reconcile.file_sha256_or_none
    monkeypatch.setattr(reconcile, "file_sha256_or_none", lambda p: hashed.append(p) or real(p))
    second = extract(str(tmp_path / "shards" / "*.tar"), tmp_path / "s", **TINY)
    assert all("00001.tar" in p for p in hashed) and len(hashed) == 5  # shard 0 unchanged: not read
    changes = second.manifest["last_run"]["changes"]
    assert changes["changed"] == 1 and changes["removed"] == 1 and changes["new"] == 0
    assert len(second) == 11
    kept = second.meta["path"] != first.meta["path"][6]  # every row but the re-read one kept its vector
    reread = ~kept.to_numpy()
    for sha, vector in zip(second.meta["sha256"][kept], second.features()[kept.to_numpy()]):
        assert vector.tobytes() == before[sha].tobytes()
    np.testing.assert_allclose(second.features()[reread][0], before[second.meta["sha256"][reread].iloc[0]],
                               rtol=1e-4, atol=1e-5)  # re-read alone: another batch, the same image


def test_resume_after_a_kill_during_a_shard_extraction(image_folder, tmp_path, monkeypatch):
    write_shards(image_files(image_folder), tmp_path / "shards", per_shard=5)
    inputs = str(tmp_path / "shards" / "*.tar")
    clean = extract(inputs, tmp_path / "clean", shard_size=4, **TINY)
    original = StoreWriter.commit_shard
    count = {"n": 0}

    def crash_after_one(self, *args, **kwargs):
        if count["n"] == 1:
            raise KeyboardInterrupt("simulated kill")
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "commit_shard", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        extract(inputs, tmp_path / "resumed", shard_size=4, **TINY)
    monkeypatch.setattr(StoreWriter, "commit_shard", original)
    resumed = extract(inputs, tmp_path / "resumed", shard_size=4, **TINY)
    assert resumed.meta[["path", "label", "sha256", "status"]].equals(clean.meta[["path", "label", "sha256", "status"]])
    assert resumed.features().tobytes() == clean.features().tobytes()


def hf_table(files: list[Path], struct: bool) -> pa.Table:
    names = sorted({f.parent.name for f in files})
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    column = pa.array(images) if struct else pa.array([i["bytes"] for i in images], type=pa.binary())
    return pa.table({"image": column, "label": [names.index(f.parent.name) for f in files],
                     "split": ["train" if i % 2 else "Validation" for i in range(len(files))]})


@pytest.mark.parametrize("struct", [True, False])
def test_parquet_image_dataset_gives_the_same_vectors_as_the_files(image_folder, tmp_path, struct):
    files = image_files(image_folder)
    table = hf_table(files, struct)
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": ["cats", "dogs"]}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=5)
    store = extract(str(tmp_path / "data.parquet"), tmp_path / "s", **TINY)
    from_files = extract(image_folder, tmp_path / "files", **TINY)
    assert len(store) == 12 and store.ok.all()
    assert list(store.labels) == [f.parent.name for f in files]  # class names from the ClassLabel metadata
    assert list(store.meta["split"]) == ["train" if i % 2 else "val" for i in range(12)]
    vectors = by_content(store)
    for sha, vector in by_content(from_files).items():
        assert vector.tobytes() == vectors[sha].tobytes()


def test_parquet_columns_by_option_and_null_rows(image_folder, tmp_path):
    files = image_files(image_folder)[:3]
    table = pa.table({"img": pa.array([files[0].read_bytes(), None, b"xx"], type=pa.binary()),
                      "y": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "d.parquet")
    store = extract(str(tmp_path / "d.parquet"), tmp_path / "s", image_column="img", label_column="y", **TINY)
    assert list(store.meta["status"]) == ["ok", "empty", "not_image"] and list(store.labels) == ["a", "b", "c"]
    assert read_bytes(store.meta["path"][0])[0] == files[0].read_bytes()
    # without --image-column the file is read as a manifest of paths, and says what it lacks
    with pytest.raises(InputError, match="needs a 'path' column"):
        scan_inputs(str(tmp_path / "d.parquet"))


def test_predict_reads_images_from_shards(image_folder, tmp_path):
    from featx.learn.classify import train_shallow
    from featx.learn.predict import predict

    write_shards(image_files(image_folder), tmp_path / "shards", per_shard=6)
    store = extract(str(tmp_path / "shards" / "*.tar"), tmp_path / "s", **TINY)
    model = train_shallow(store, classifier="logreg", cv=2, tune=False, learning_curve=False)
    result = predict(model, str(tmp_path / "shards" / "{00000..00001}.tar"))
    assert len(result) == 12 and (result["status"] == "ok").all()
    assert result["path"].str.contains(r"\.tar::\d{6}\.png$").all()
    assert (result["predicted"].to_numpy() == store.labels).mean() >= 0.75  # separable colours, training rows
