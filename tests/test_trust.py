"""Results a user can trust: the inputs are the truth on re-runs, featx never deletes what it did not
make, artifacts know their source store, one writer at a time, tampered files are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from featx.cli import app
from featx.errors import (
    ConfigMismatchError,
    FeatxError,
    InputsChangedError,
    OutputFolderError,
    StaleArtifactError,
    StoreLockedError,
)
from featx.extract.job import extract
from featx.learn.classify import ShallowModel, train_shallow
from featx.retrieval.index import Index, build_index
from featx.store import FeatureStore, StoreLock, StoreWriter
from tests.conftest import REPO, SYNTHETIC_CONFIG, TINY, blobs, make_class_folder, make_feature_store

runner = CliRunner()


def _by_name(store: FeatureStore) -> pd.DataFrame:
    meta = store.meta.copy()
    meta["name"] = meta["path"].str.rsplit("/", n=1).str[-1]
    return meta.set_index("name")


def _shard_hashes(store: FeatureStore) -> list[str]:
    return [e["sha256"] for s in store.manifest["shards"] for e in s["features"].values()]


# --- the inputs are the truth --------------------------------------------------------------------

def test_manifest_relabel_and_removal_are_applied_without_reextraction(image_folder, tmp_path):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    manifest = pd.DataFrame({"path": paths, "label": [Path(p).parent.name for p in paths]})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    first = extract(tmp_path / "m.csv", tmp_path / "s", **TINY)
    features, hashes = first.features().copy(), _shard_hashes(first)

    manifest.loc[0, "label"] = "dogs"  # fix one label
    manifest.to_csv(tmp_path / "m.csv", index=False)
    relabelled = extract(tmp_path / "m.csv", tmp_path / "s", **TINY)
    assert relabelled.manifest["last_run"]["line"] == "1 relabelled"
    assert _by_name(relabelled).loc[Path(paths[0]).name, "label"] == "dogs"
    assert _shard_hashes(relabelled) == hashes  # metadata only: nothing re-extracted
    np.testing.assert_array_equal(relabelled.features(), features)

    manifest.drop(index=3).to_csv(tmp_path / "m.csv", index=False)  # remove one row
    removed = extract(tmp_path / "m.csv", tmp_path / "s", **TINY)
    assert removed.manifest["last_run"]["line"] == "1 removed"
    assert len(removed) == 11 and Path(paths[3]).name not in _by_name(removed).index
    assert list(removed.meta["row_id"]) == list(range(11)) and removed.verify() == []
    np.testing.assert_array_equal(removed.features(), np.delete(features, 3, axis=0))
    # training uses the new labels: the store's labels are what the model sees
    assert (removed.labels == "dogs").sum() == 7


def test_moved_file_keeps_its_vector_and_changed_file_is_reextracted(image_folder, tmp_path):
    first = extract(image_folder, tmp_path / "s", **TINY)
    before = _by_name(first)
    vectors = dict(zip(before.index, first.features()))
    # a mislabelled image moved into the right class folder
    shutil.move(image_folder / "cats" / "cats_02.png", image_folder / "dogs" / "cats_02.png")
    # an image whose content changed in place
    Image.fromarray(np.full((40, 48, 3), 7, np.uint8)).save(image_folder / "dogs" / "dogs_01.png")
    second = extract(image_folder, tmp_path / "s", **TINY)
    assert second.manifest["last_run"]["line"] == "1 changed, 1 relabelled, 1 moved"
    after = _by_name(second)
    assert after.loc["cats_02.png", "label"] == "dogs" and after.loc["cats_02.png", "path"].endswith("dogs/cats_02.png")
    vectors_after = dict(zip(after.index, second.features()))
    np.testing.assert_array_equal(vectors_after["cats_02.png"], vectors["cats_02.png"])
    assert not np.allclose(vectors_after["dogs_01.png"], vectors["dogs_01.png"])
    assert len(second) == 12 and second.verify() == []


def test_frozen_refuses_any_difference(image_folder, tmp_path):
    extract(image_folder, tmp_path / "s", **TINY)
    assert extract(image_folder, tmp_path / "s", frozen=True, **TINY).manifest["last_run"]["line"] == "no changes"
    (image_folder / "cats" / "cats_00.png").unlink()
    with pytest.raises(InputsChangedError, match=r"--frozen: the inputs differ .*: 1 removed"):
        extract(image_folder, tmp_path / "s", frozen=True, **TINY)
    result = runner.invoke(app, ["extract", str(image_folder), "-o", str(tmp_path / "s"), "--frozen",
                                 "--model", "resnet18", "--weights", "random", "--image-size", "64", "--workers", "0"])
    assert result.exit_code == 2 and "1 removed" in result.output
    assert len(FeatureStore.open(tmp_path / "s")) == 12  # nothing applied


# --- never delete what featx did not make ------------------------------------------------------

def test_outputs_that_are_not_featx_artifacts_are_refused_and_kept(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "s", **TINY)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    tiny = ["--model", "resnet18", "--weights", "random", "--image-size", "64", "--workers", "0"]
    commands = {
        "extract --overwrite": ["extract", str(image_folder), "-o", str(precious), "--overwrite", *tiny],
        "train-shallow": ["train-shallow", str(tmp_path / "s"), "-o", str(precious)],
        "index": ["index", str(tmp_path / "s"), "-o", str(precious)],
        "project": ["project", str(tmp_path / "s"), "-o", str(precious), "--method", "pca"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        assert "is not empty and is not a featx" in result.output and "thesis.txt" in result.output, name
        assert (precious / "thesis.txt").read_text() == "years of work"
    # another featx artifact is not replaced either: a model folder is not an index
    train_shallow(store, out=tmp_path / "model", learning_curve=False)
    with pytest.raises(OutputFolderError, match="found a featx model"):
        build_index(store).save(tmp_path / "model")
    # an output inside the input store is refused
    with pytest.raises(OutputFolderError, match="inside the input"):
        train_shallow(store, out=tmp_path / "s" / "model", learning_curve=False)
    # the same kind is replaced, with normal permissions
    old_umask = os.umask(0o022)
    try:
        train_shallow(store, out=tmp_path / "model", learning_curve=False)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


# --- every artifact knows its source -----------------------------------------------------------

def test_index_and_model_refuse_a_store_that_changed_under_them(image_folder, tmp_path):
    store = extract(image_folder, tmp_path / "s", **TINY)
    build_index(store).save(tmp_path / "ix")
    model = train_shallow(store, out=tmp_path / "m", learning_curve=False)
    model.check_source(store)  # the same store: fine
    # same number of rows, other images: the index's ids would point at other files
    (image_folder / "cats" / "cats_00.png").unlink()
    make_class_folder(tmp_path / "extra", classes=("cats",), per_class=1, seed=42)
    shutil.copy(tmp_path / "extra" / "cats" / "cats_00.png", image_folder / "cats" / "new_one.png")
    changed = extract(image_folder, tmp_path / "s", **TINY)
    assert len(changed) == 12 and changed.manifest["last_run"]["line"] == "1 new, 1 removed"
    with pytest.raises(StaleArtifactError, match=r"featx index --update"):
        Index.load(tmp_path / "ix")
    with pytest.raises(StaleArtifactError, match=r"re-train"):
        ShallowModel.load(tmp_path / "m").check_source(changed)
    info = runner.invoke(app, ["info", str(tmp_path / "m")])
    assert info.exit_code == 0 and "store_now: changed" in info.output and "built_on_fingerprint" in info.output
    result = runner.invoke(app, ["index", "--update", str(tmp_path / "ix")])
    assert result.exit_code == 0 and "rebuilt" in result.output, result.output
    index = Index.load(tmp_path / "ix")
    hits = index.search(None, 1, rows=np.arange(12))
    assert (hits["row_id"].to_numpy() == np.arange(12)).all()  # each row finds itself again
    assert (hits["path"].to_numpy() == changed.paths).all()


def test_search_with_images_checks_the_full_extractor_config(image_folder, tmp_path, monkeypatch):
    import importlib

    extract_module = importlib.import_module("featx.extract.extractor")

    store = extract(image_folder, tmp_path / "s", **TINY)
    index = build_index(store)
    # a featx whose preprocessing produces other pixels for the same settings
    monkeypatch.setitem(extract_module.PREPROCESS_IMPLEMENTATION, "pil", "pil-box-resize/999")
    with pytest.raises(ConfigMismatchError, match="preprocess"):
        index.search([str(image_folder / "cats" / "cats_00.png")], k=2, workers=0)


# --- one writer at a time ----------------------------------------------------------------------

def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    X, y = blobs(n_per_class=3, classes=2, dim=4)
    make_feature_store(tmp_path / "s", X, y)
    records = [_Record(f"/synthetic/{i:05d}.png", str(y[i])) for i in range(len(X))]
    first = StoreWriter(tmp_path / "s", SYNTHETIC_CONFIG)
    first.prepare(records)
    with pytest.raises(StoreLockedError, match=rf"being written by PID {os.getpid()}"):
        StoreWriter(tmp_path / "s", SYNTHETIC_CONFIG).prepare(records)
    first.close()
    # a lock file left by a process that died: the kernel dropped its lock, the next writer proceeds
    (tmp_path / "s" / ".featx-lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": "earlier"}))
    with StoreWriter(tmp_path / "s", SYNTHETIC_CONFIG) as writer:
        writer.prepare(records)
        assert json.loads((tmp_path / "s" / ".featx-lock").read_text())["pid"] == os.getpid()


def test_a_writer_between_its_plan_and_its_first_manifest_is_named_not_mistaken_for_foreign_files(tmp_path):
    """The race: a second extract that looked while the first had written its plan but not yet its
    manifest refused the folder as "not a featx store (found 1 entry: plan)"; it must say who is
    writing it, and leave the folder alone."""
    from featx.io.sources import ImageRecord

    path = tmp_path / "store"
    holder = StoreLock(path).acquire()  # the first writer: lock held, plan written, no manifest yet
    (path / "plan").mkdir()
    try:
        with pytest.raises(StoreLockedError, match=f"being written by PID {os.getpid()}"):
            StoreWriter(path, SYNTHETIC_CONFIG).prepare([ImageRecord("a.png")])
        assert sorted(p.name for p in path.iterdir()) == [".featx-lock", "plan"]
    finally:
        holder.release()


def test_concurrent_extract_is_refused_while_the_first_finishes(image_folder, tmp_path):
    """The defect: `extract` and `extract --append` on one store both reported success and the
    appended rows were missing. Now the second is refused (exit 2) and the first completes."""
    make_class_folder(image_folder, per_class=20, seed=3)
    cli = [sys.executable, "-m", "featx.cli", "extract", "-o", str(tmp_path / "s"), "--model", "resnet18",
           "--weights", "random", "--image-size", "64", "--workers", "0", "--batch-size", "2", "--shard-size", "4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([*cli, str(image_folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = tmp_path / "s" / ".featx-lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, lock taken
    try:
        second = subprocess.run([*cli, "--append", str(image_folder)], env=env, capture_output=True, text=True,
                                timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2 and f"being written by PID {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 0, err
    store = FeatureStore.open(tmp_path / "s")
    assert store.complete and len(store) == 40 and store.verify() == []


# --- tampering: refused before use, with a clear error -----------------------------------------

def test_every_tampered_file_is_refused_before_use(tmp_path):
    X, y = blobs(n_per_class=20, classes=2, dim=8)
    store = make_feature_store(tmp_path / "store", X, y, shard_size=16)
    train_shallow(store, out=tmp_path / "model", learning_curve=False)
    build_index(store, kind="flat").save(tmp_path / "index")
    uses = {
        "store": lambda p: (lambda s: (s.meta, s.features(), s.plan))(FeatureStore.open(p)),
        "model": lambda p: ShallowModel.load(p),
        "index": lambda p: Index.load(p, store=store),
    }
    tried = refused = 0
    for kind, use in uses.items():
        files = [f for f in (tmp_path / kind).rglob("*") if f.is_file() and "report" not in f.parts
                 and not f.name.startswith(".featx-lock")]
        assert files, kind
        for file in files:
            copy = tmp_path / "tampered" / f"{kind}-{tried}"
            shutil.copytree(tmp_path / kind, copy)
            target = copy / file.relative_to(tmp_path / kind)
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x01  # one flipped bit
            target.write_bytes(bytes(data))
            tried += 1
            try:
                use(copy)
            except FeatxError:
                refused += 1
            else:
                pytest.fail(f"tampered {kind} file {file.name} was used")
    assert tried >= 12 and refused == tried


def test_retrieval_evaluation_ignores_duplicates_and_same_group(tmp_path):
    X, y = blobs(n_per_class=10, classes=2, dim=8, spread=3.0)
    X[5] = X[0]  # row 5 is an exact copy of row 0 (same content hash below), in another group
    store_path = tmp_path / "s"
    writer = StoreWriter(store_path, SYNTHETIC_CONFIG)
    groups = [f"g{i // 2}" for i in range(len(X))]  # pairs of rows share a group (e.g. a patient)
    work = writer.prepare([_Record(f"/synthetic/{i:05d}.png", str(y[i]), None, groups[i]) for i in range(len(X))])
    meta = work.plan.copy()
    shas = [f"{i:064x}" for i in range(len(X))]
    shas[5] = shas[0]
    meta["sha256"] = shas
    meta["status"], meta["error"] = "ok", None
    writer.commit_shard(0, {"vec": X}, meta)
    store = writer.finalize()
    assert list(store.groups[:4]) == ["g0", "g0", "g1", "g1"]
    result = build_index(store, kind="flat").evaluate(k=3)
    assert "hit_rate@k" in result and "same-group" in result["excluded"]
    # no query is answered by its copy or its group-mate: check against a brute-force search
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sims = Xn @ Xn.T
    for q in range(len(X)):
        sims[q, [j for j in range(len(X)) if groups[j] == groups[q] or shas[j] == shas[q]]] = -np.inf
    top = np.argsort(-sims, axis=1)[:, :3]
    relevant = (y[top] == y[:, None]).astype(float)
    assert result["precision@1"] == pytest.approx(relevant[:, 0].mean())
    assert result["hit_rate@k"] == pytest.approx(relevant.any(axis=1).mean())


@pytest.mark.slow
def test_kill_minus_9_at_20_random_points_then_resume_equals_clean_run(tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=30, seed=11)
    cli = [sys.executable, "-m", "featx.cli", "extract", str(images), "--model", "resnet18", "--weights", "random",
           "--image-size", "64", "--workers", "1", "--batch-size", "4", "--shard-size", "8"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.time()
    subprocess.run([*cli, "-o", str(tmp_path / "clean")], env=env, check=True, capture_output=True)
    clean_seconds = time.time() - started
    rng = np.random.default_rng(20)
    out = tmp_path / "killed"
    for delay in rng.uniform(0.3, clean_seconds, size=20):
        process = subprocess.Popen([*cli, "-o", str(out)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    subprocess.run([*cli, "-o", str(out)], env=env, check=True, capture_output=True)
    clean, resumed = FeatureStore.open(tmp_path / "clean"), FeatureStore.open(out)
    assert resumed.complete and resumed.verify() == []
    assert resumed.meta[["row_id", "path", "label", "sha256", "status"]].equals(
        clean.meta[["row_id", "path", "label", "sha256", "status"]])  # 0 lost, 0 duplicated
    np.testing.assert_array_equal(resumed.features(), clean.features())
    assert not list(out.rglob(".tmp-*"))


@dataclass(frozen=True)
class _Record:
    path: str
    label: str | None = None
    split: str | None = None
    group: str | None = None
