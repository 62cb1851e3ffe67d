"""`extract --engine ray` on a local Ray cluster: same vectors and statuses as the local engine,
an actor killed mid-run loses nothing, a killed driver resumes, nothing is lost or duplicated."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from featx.extract.job import extract
from featx.store import FeatureStore
from tests.conftest import REPO, TINY, make_class_folder

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'featx[ray]')")


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("PYTHONPATH", str(REPO))  # the actors import this checkout's featx
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert a.meta[["row_id", "path", "label", "status", "sha256"]].equals(b.meta[["row_id", "path", "label", "status",
                                                                                   "sha256"]])
    fa, fb = a.features(), b.features()
    assert fa.shape == fb.shape
    assert np.array_equal(np.isnan(fa), np.isnan(fb))
    ok = ~np.isnan(fa).any(axis=1)
    assert np.abs(fa[ok] - fb[ok]).max() <= 1e-5


def test_ray_engine_equals_local_engine(ray_cluster, tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=7)
    (images / "cats" / "empty.jpg").write_bytes(b"")
    (images / "dogs" / "text.png").write_text("not an image")
    local = extract(images, tmp_path / "local", shard_size=4, **TINY)
    remote = extract(images, tmp_path / "ray", shard_size=4, engine="ray", cpus_per_worker=1, **TINY)
    assert len(remote) == 16 and remote.complete and remote.verify() == []
    assert sorted(remote.meta.loc[~remote.ok, "status"]) == ["empty", "not_image"]
    _same_store(local, remote)
    assert [(s["start"], s["stop"]) for s in remote.manifest["shards"]] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    # a re-run of the finished store has nothing to extract and keeps the shards
    again = extract(images, tmp_path / "ray", shard_size=4, engine="ray", cpus_per_worker=1, **TINY)
    assert again.manifest["shards"] == remote.manifest["shards"]


def test_a_lone_actor_decodes_ahead_while_it_loads(ray_cluster, tmp_path, caplog):
    """A pool of one actor (2 CPUs) decodes the first planned images on its other core while it
    imports torch and rebuilds the network; the vectors and statuses are the local engine's, bad
    files included (the extractor decodes those itself)."""
    images = make_class_folder(tmp_path / "images", per_class=10)
    (images / "cats" / "cats_00.png").write_bytes(b"")  # among the first planned rows
    (images / "cats" / "cats_01.png").write_text("not an image")
    options = {**TINY, "workers": None}  # the CPU plan: decoding in turns with the forward pass
    local = extract(images, tmp_path / "local", shard_size=8, **options)
    with caplog.at_level(logging.INFO, logger="featx.extract.engines.ray"):
        remote = extract(images, tmp_path / "ray", shard_size=8, engine="ray", cpus_per_worker=2, **options)
    _same_store(local, remote)
    assert sorted(remote.meta.loc[~remote.ok, "status"]) == ["empty", "not_image"]
    decoded_ahead = [r.args for r in caplog.records if "decoded while the actor loaded" in r.getMessage()]
    assert len(decoded_ahead) == 1
    ahead, total = decoded_ahead[0]
    assert total == 20 and 0 < ahead <= 18  # the two bad files are never taken from the head start


def test_a_small_job_is_cut_into_units_for_every_actor(ray_cluster, tmp_path):
    """140 images at the default 4,096 rows per shard would be one unit of work for one actor;
    on the 2-CPU cluster the default is two actors of 1 CPU, so the job is cut into equal units of
    whole batches, and the store equals the local engine's."""
    from featx.extract.engines.ray import default_cpus_per_worker

    assert default_cpus_per_worker(ray) == 1.0
    images = make_class_folder(tmp_path / "images", per_class=70)
    local = extract(images, tmp_path / "local", **TINY)
    remote = extract(images, tmp_path / "ray", engine="ray", **TINY)
    _same_store(local, remote)
    assert sorted((s["start"], s["stop"]) for s in remote.manifest["shards"]) == [(0, 48), (48, 96), (96, 140)]
    assert remote.complete and remote.verify() == []


def test_work_units_cover_every_row_once_in_whole_batches():
    from featx.extract.engines.ray import MIN_UNIT_ROWS, work_units

    shards = [(0, 256), (256, 512), (512, 768), (768, 1024), (1024, 1200)]
    units = work_units(shards, actors=2, batch_size=32)
    assert units == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 640), (640, 768), (768, 896),
                     (896, 1024), (1024, 1120), (1120, 1200)]
    for planned in (shards, [(0, 5000)], [(0, 100), (300, 999)], [(0, 1)]):
        for actors in (1, 2, 3, 16):
            cut = work_units(planned, actors=actors, batch_size=32)
            rows = [r for start, stop in cut for r in range(start, stop)]
            assert rows == [r for start, stop in planned for r in range(start, stop)]  # once each, in order
            inner = [(a, b) for a, b in cut if (b not in {stop for _, stop in planned})]
            assert all((b - a) % 32 == 0 and b - a >= MIN_UNIT_ROWS for a, b in inner)
    # one actor, or a large job whose shards already give every actor several: kept as planned
    assert work_units([(0, 4096)], actors=1, batch_size=32) == [(0, 4096)]
    big = [(s, s + 4096) for s in range(0, 4096 * 40, 4096)]
    assert work_units(big, actors=4, batch_size=32) == big


def test_default_cpus_per_worker_gives_two_actors_or_more_per_node():
    from types import SimpleNamespace

    from featx.extract.engines.ray import default_cpus_per_worker

    def cluster(*cpus, dead=()):
        nodes = [{"Alive": True, "Resources": {"CPU": c}} for c in cpus]
        nodes += [{"Alive": False, "Resources": {"CPU": c}} for c in dead]
        return SimpleNamespace(nodes=lambda: nodes)

    assert [default_cpus_per_worker(cluster(c)) for c in (1, 2, 3, 4, 6, 8, 16, 96)] == [1, 1, 1, 2, 3, 4, 4, 4]
    assert default_cpus_per_worker(cluster(2, 16)) == 4  # sized for the largest node
    assert default_cpus_per_worker(cluster(2, dead=(64,))) == 1


def test_no_head_start_where_the_actor_would_not_use_it():
    from featx.extract.engines.ray import _actor_head_start

    config = {"preprocess": {"implementation": "pil-draft-reduce/3"}, "tta": 1}
    cpu = {"device": "cpu", "workers": None}
    head = {"paths": ["a.jpg"], "preprocess": {"crop_size": 64}}
    for config_, runtime, threads, head_ in [
            (config, cpu, 1, head),  # one core: the import needs it
            (config, {**cpu, "device": "cuda"}, 2, head),  # GPU actors decode in worker processes
            (config, {**cpu, "workers": 2}, 2, head),
            ({**config, "preprocess": {"implementation": "torchvision-decode-resize/3"}}, cpu, 2, head),
            ({**config, "tta": 3}, cpu, 2, head),
            (config, cpu, 2, {}),  # a pool of several actors gets no paths
    ]:
        assert _actor_head_start(head_, config_, runtime, threads) is None


def test_change_detection_runs_on_the_ray_workers(ray_cluster, tmp_path, monkeypatch):
    """A re-run with --engine ray stats and hashes the inputs in Ray tasks, never on the driver,
    and still tells moved, changed and new files apart."""
    import featx.store.reconcile as reconcile

    images = make_class_folder(tmp_path / "images", per_class=4)
    extract(images, tmp_path / "s", shard_size=4, **TINY)
    (images / "cats" / "cats_00.png").rename(images / "cats" / "moved.png")  # same bytes, new path
    changed = images / "dogs" / "dogs_01.png"
    shutil.copyfile(images / "dogs" / "dogs_02.png", changed)
    os.utime(changed, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    shutil.copyfile(images / "dogs" / "dogs_03.png", images / "dogs" / "new.png")

    def on_the_driver(path):
        raise AssertionError(f"the driver stat'ed or hashed {path}")

    monkeypatch.setattr(reconcile, "file_stat", on_the_driver)
    monkeypatch.setattr(reconcile, "file_sha256_or_none", on_the_driver)
    store = extract(images, tmp_path / "s", shard_size=4, engine="ray", cpus_per_worker=1, **TINY)
    assert store.manifest["last_run"]["line"] == "1 new, 1 changed, 1 moved"
    assert store.complete and store.verify() == [] and len(store) == 9
    monkeypatch.undo()
    # row ids differ from a fresh store's (a moved row keeps its id): compare path by path
    fresh = extract(images, tmp_path / "local", shard_size=4, **TINY)
    order = store.meta.set_index("path").loc[fresh.meta["path"], "row_id"].to_numpy()
    assert list(store.meta["sha256"].to_numpy()[order]) == list(fresh.meta["sha256"])
    assert np.abs(store.features()[order] - fresh.features()).max() <= 1e-5


def test_ray_options_need_the_ray_engine(tmp_path, image_folder):
    from featx.errors import InputError

    with pytest.raises(InputError, match="need --engine ray"):
        extract(image_folder, tmp_path / "s", cpus_per_worker=2, **TINY)
    with pytest.raises(InputError, match="unknown --engine 'spark'; allowed: local, ray"):
        extract(image_folder, tmp_path / "s", engine="spark", **TINY)


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _descends_from_us(pid: int) -> bool:
    """Only actors of the Ray cluster this test process started (its raylet is our child)."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def _actor_pids() -> set[int]:
    """Processes of our own Ray cluster whose title names a featx shard actor (Ray sets the title)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"ray::" in title and b"ShardWorker" in title and _descends_from_us(int(entry.name)):
                pids.add(int(entry.name))
    return pids


def _committed(store: Path) -> int:
    try:
        return len(FeatureStore.open(store).manifest["shards"])
    except Exception:
        return 0


@pytest.mark.slow  # about 2-5 minutes on a shared 2-core machine
def test_killed_actor_loses_no_row(ray_cluster, tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=60, size=(640, 480))
    out = tmp_path / "ray"
    result, killed = {}, {}

    def run():
        result["store"] = extract(images, out, shard_size=4, engine="ray", cpus_per_worker=1, **TINY)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        if _committed(out) >= 2 and (pids := _actor_pids()):
            pid = sorted(pids)[0]
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, committed=_committed(out))
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed and killed["committed"] < 30, f"the run ended before an actor could be killed: {killed}"
    store = result["store"]
    assert len(store) == 120 and store.complete and store.verify() == []
    starts = [s["start"] for s in store.manifest["shards"]]
    assert starts == list(range(0, 120, 4))  # every row once: no gap, no duplicate
    local = extract(images, tmp_path / "local", shard_size=4, **TINY)
    _same_store(local, store)


DRIVER = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
from featx.extract.job import extract
extract(sys.argv[1], sys.argv[2], shard_size=4, engine="ray", cpus_per_worker=1, model="resnet18", weights="random",
        image_size=64, workers=0, batch_size=8, progress=False)
"""


@pytest.mark.slow
def test_killed_driver_resumes_only_missing_ranges(ray_cluster, tmp_path):
    images = make_class_folder(tmp_path / "images", per_class=60, size=(640, 480))
    out = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(images), str(out)], env=env)
    deadline = time.time() + 180
    while time.time() < deadline and _committed(out) < 3 and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = FeatureStore.open(out)
    kept = {(s["start"], s["stop"]): s["features"]["flatten"]["sha256"] for s in partial.manifest["shards"]}
    missing = partial.missing_ranges()
    assert kept and missing, "the driver was killed after the run finished; nothing to resume"
    time.sleep(2)  # the killed driver's local cluster goes down with it
    store = extract(images, out, shard_size=4, engine="ray", cpus_per_worker=1, **TINY)
    assert store.complete and store.verify() == [] and len(store) == 120
    after = {(s["start"], s["stop"]): s["features"]["flatten"]["sha256"] for s in store.manifest["shards"]}
    assert all(after[r] == sha for r, sha in kept.items())  # committed shards were kept, not re-extracted
    assert sorted(after) == [(a, a + 4) for a in range(0, 120, 4)]
    local = extract(images, tmp_path / "local", shard_size=4, **TINY)
    _same_store(local, store)


def test_ray_actors_read_tar_shards_in_parallel_as_the_local_engine(ray_cluster, tmp_path):
    from tests.test_containers import image_files, write_shards

    images = make_class_folder(tmp_path / "images", per_class=6)
    write_shards(image_files(images), tmp_path / "shards", per_shard=4)
    inputs = str(tmp_path / "shards" / "{00000..00002}.tar")
    local = extract(inputs, tmp_path / "local", shard_size=4, **TINY)
    remote = extract(inputs, tmp_path / "ray", shard_size=4, engine="ray", cpus_per_worker=1, **TINY)
    assert remote.ok.all() and remote.meta["path"].str.contains(".tar::").all()
    _same_store(local, remote)
