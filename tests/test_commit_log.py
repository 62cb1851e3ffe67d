"""The store's commit log: a commit is one appended line, not a manifest rewrite; readers and a
resuming writer replay it; a torn last line (a kill mid-append) is ignored, a damaged or removed
middle line is refused; finalize folds the log into the sealed manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from featx.errors import IntegrityError
from featx.io.sources import ImageRecord
from featx.store import FeatureStore, StoreWriter
from featx.store.commit_log import COMMIT_LOG
from tests.conftest import SYNTHETIC_CONFIG

ROWS, STEP = 20, 4
X = np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3)
RECORDS: list[ImageRecord] = []


@pytest.fixture(autouse=True)
def inputs(tmp_path):
    """Files that exist, so a resume sees them unchanged (their vectors here are synthetic)."""
    folder = tmp_path / "in"
    folder.mkdir()
    RECORDS[:] = []
    for i in range(ROWS):
        (folder / f"{i:05d}.png").write_bytes(bytes([i]))
        RECORDS.append(ImageRecord(str(folder / f"{i:05d}.png"), f"c{i % 2}", None))


def _commit(writer: StoreWriter, plan, start: int) -> None:
    stop = min(start + STEP, ROWS)
    meta = plan.iloc[start:stop].copy()
    meta["sha256"], meta["status"], meta["error"] = [f"{i:064x}" for i in range(start, stop)], "ok", None
    writer.commit_shard(start, {"vec": X[start:stop]}, meta)


def _unfinished(path, starts) -> StoreWriter:
    """A writer that committed the shards at `starts` (in that order) and was then stopped."""
    writer = StoreWriter(path, SYNTHETIC_CONFIG, rows_per_shard=STEP)
    work = writer.prepare(RECORDS)
    for start in starts:
        _commit(writer, work.plan, start)
    writer.close()  # as a kill leaves it: no finalize
    return writer


def _resume(path) -> FeatureStore:
    writer = StoreWriter(path, SYNTHETIC_CONFIG, rows_per_shard=STEP)
    work = writer.prepare(RECORDS)
    for a, b in work.missing:
        for start in range(a, b, STEP):
            _commit(writer, work.plan, start)
    return writer.finalize()


def test_commits_append_to_the_log_and_leave_the_manifest_alone(tmp_path):
    path = tmp_path / "s"
    writer = StoreWriter(path, SYNTHETIC_CONFIG, rows_per_shard=STEP)
    work = writer.prepare(RECORDS)
    _commit(writer, work.plan, 8)  # the first commit names the layer: one manifest write
    manifest = (path / "manifest.json").read_bytes()
    for start in (16, 0, 12):  # any order
        _commit(writer, work.plan, start)
    assert (path / "manifest.json").read_bytes() == manifest
    lines = (path / COMMIT_LOG).read_text().splitlines()
    assert [json.loads(line)["shard"]["start"] for line in lines] == [16, 0, 12]
    # a reader sees the logged commits (sorted by row range) and the one gap
    store = FeatureStore.open(path)
    assert [(s["start"], s["stop"]) for s in store.manifest["shards"]] == [(0, 4), (8, 12), (12, 16), (16, 20)]
    assert store.missing_ranges() == [(4, 8)]
    np.testing.assert_array_equal(store.gather("vec", np.array([0, 13, 19])), X[[0, 13, 19]])
    _commit(writer, work.plan, 4)
    done = writer.finalize()
    assert not (path / COMMIT_LOG).exists()  # folded into the sealed manifest
    assert done.complete and done.verify() == []
    np.testing.assert_array_equal(done.features(), X)


def test_resume_keeps_logged_commits_and_extracts_only_the_rest(tmp_path):
    _unfinished(tmp_path / "s", [0, 12])
    writer = StoreWriter(tmp_path / "s", SYNTHETIC_CONFIG, rows_per_shard=STEP)
    work = writer.prepare(RECORDS)
    assert work.missing == [(4, 12), (16, 20)]
    assert not (tmp_path / "s" / COMMIT_LOG).exists()  # prepare folded it into the manifest
    writer.close()
    store = _resume(tmp_path / "s")
    assert store.complete and store.verify() == []
    np.testing.assert_array_equal(store.features(), X)


def test_a_torn_last_line_is_ignored_and_its_shard_extracted_again(tmp_path):
    _unfinished(tmp_path / "s", [0, 4, 8, 12])
    log_file = tmp_path / "s" / COMMIT_LOG
    data = log_file.read_bytes()
    log_file.write_bytes(data[:-40])  # a kill in the middle of the last append
    store = FeatureStore.open(tmp_path / "s")
    assert store.missing_ranges() == [(12, 20)]
    done = _resume(tmp_path / "s")
    assert done.complete and done.verify() == []
    np.testing.assert_array_equal(done.features(), X)


@pytest.mark.parametrize("damage", ["flip", "drop", "drop-first"])
def test_a_damaged_or_removed_middle_line_is_refused(tmp_path, damage):
    _unfinished(tmp_path / "s", [0, 4, 8, 12])
    log_file = tmp_path / "s" / COMMIT_LOG
    lines = log_file.read_bytes().split(b"\n")
    assert len(lines) == 4  # three commits after the first (which wrote the manifest), and the final newline
    if damage == "flip":
        lines[1] = lines[1].replace(b'"stop": 12', b'"stop": 13')
        expected = rf"{COMMIT_LOG}' line 2 is damaged"
    elif damage == "drop":
        del lines[1]
        expected = rf"{COMMIT_LOG}' line 2 does not follow line 1"
    else:
        del lines[0]
        expected = rf"{COMMIT_LOG}' line 1 does not follow the manifest"
    log_file.write_bytes(b"\n".join(lines))
    with pytest.raises(IntegrityError, match=expected):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(IntegrityError, match=expected):  # a resuming writer refuses it too
        StoreWriter(tmp_path / "s", SYNTHETIC_CONFIG, rows_per_shard=STEP).prepare(RECORDS)


def test_a_log_left_by_a_kill_after_folding_is_stale_and_ignored(tmp_path):
    _unfinished(tmp_path / "s", [0, 4, 8])
    stale = (tmp_path / "s" / COMMIT_LOG).read_bytes()
    store = _resume(tmp_path / "s")
    # the kill came after the new manifest was written, before the old log was removed
    (tmp_path / "s" / COMMIT_LOG).write_bytes(stale)
    again = FeatureStore.open(tmp_path / "s")
    assert again.complete and again.verify() == [] and again.manifest["shards"] == store.manifest["shards"]
    np.testing.assert_array_equal(again.features(), X)


def test_a_copied_unfinished_store_replays_its_log(tmp_path):
    _unfinished(tmp_path / "s", [0, 4])
    shutil.copytree(tmp_path / "s", tmp_path / "copy")
    assert FeatureStore.open(tmp_path / "copy").missing_ranges() == [(8, 20)]
