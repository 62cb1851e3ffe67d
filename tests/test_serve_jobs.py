"""Extract jobs of `featx serve`: bounded before they start, one per store, confined when a file is
opened, their real progress, and a job that runs out of memory fails alone (the server lives, and
the job is not restarted by itself)."""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("fastapi")
from conftest import TINY, make_class_folder  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import png_bytes, wait_for_job  # noqa: E402

from featx.options import ExtractJobRequest, ServeOptions  # noqa: E402
from featx.serve.app import create_app  # noqa: E402
from featx.store import FeatureStore  # noqa: E402

TINY_JOB = {"model": "resnet18", "weights": "random", "image_size": 64, "batch_size": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("jobs") / "data", classes=("ants", "bees"), per_class=5,
                             size=(40, 36), splits=("val",))


@pytest.fixture(scope="module")
def store(images, tmp_path_factory):
    from featx.extract.job import extract

    return extract(images, tmp_path_factory.mktemp("jobs-store") / "store", **TINY)


def options(images, store, state, **overrides) -> ServeOptions:
    return ServeOptions(**{**dict(stores={"s": str(store.path)}, device="cpu", data_root=str(images),
                                  state_dir=str(state)), **overrides})


def refused(c, body) -> str:
    response = c.post("/v1/jobs/extract", json=body)
    assert response.status_code == 422, response.text
    return response.json()["error"]["message"]


def test_a_job_over_its_bounds_is_refused_before_it_starts(images, store, tmp_path):
    weights_root = tmp_path / "weights"
    weights_root.mkdir()
    (tmp_path / "secret.pth").write_bytes(b"x")
    app = create_app(options(images, store, tmp_path / "st", weights_root=str(weights_root), job_memory_gb=4))
    with TestClient(app) as c:
        base = {"inputs": ["val"], "store": "huge"}
        # the job: 64 images of 2048² through a small net
        huge = {**base, "options": {"model": "mobilenet_v3_small", "weights": "random", "image_size": 2048,
                                    "batch_size": 64}}
        assert "image_size 2048 is above this server's limit of 512 (--job-max-image-size)" in refused(c, huge)
        for field, value in (("workers", 12), ("batch_size", 65)):
            assert f"{field} {value} is above" in refused(c, {**base, "options": {**TINY_JOB, field: value}})
        message = refused(c, {**base, "options": {"model": "alexnet"}})  # would download its weights
        assert "not on this server" in message
        # weights by name only; the answer is the same whether an outside file exists or not
        outside = [refused(c, {**base, "options": {**TINY_JOB, "weights": w}})
                   for w in (str(tmp_path / "secret.pth"), str(tmp_path / "absent.pth"), "../secret.pth")]
        assert all("by its file name alone" in m for m in outside) and "secret" not in outside[0].split("'")[2]
        assert "no such file in the server's --weights-root" in refused(
            c, {**base, "options": {**TINY_JOB, "weights": "absent.pth"}})
        assert "engine must be 'local'" in refused(c, {**base, "options": {**TINY_JOB, "engine": "ray"}})
    app = create_app(options(images, store, tmp_path / "st2", job_memory_gb=2, job_max_image_size=4096))
    with TestClient(app) as c:
        message = refused(c, {"inputs": ["val"], "store": "huge", "options": {
            "model": "mobilenet_v3_small", "weights": "random", "image_size": 2048, "batch_size": 64}})
        assert "estimated peak memory is" in message and "--job-memory of 2.0 GiB" in message
        assert "batch 64 × 1 views × 2048² px" in message
    assert not (tmp_path / "st" / "stores" / "huge").exists() and not (tmp_path / "st2" / "stores" / "huge").exists()


def test_a_job_on_a_busy_or_existing_store_gets_409(images, store, tmp_path):
    import shutil

    shutil.copytree(store.path, tmp_path / "st" / "stores" / "old")
    with TestClient(create_app(options(images, store, tmp_path / "st"))) as c:
        first = c.post("/v1/jobs/extract", json={"inputs": ["val/ants"], "store": "same", "options": TINY_JOB})
        assert first.status_code == 202
        busy = c.post("/v1/jobs/extract", json={"inputs": ["val/bees"], "store": "same", "options": TINY_JOB,
                                                "existing": "append"})
        assert busy.status_code == 409
        assert f"being written by job {first.json()['id']}" in busy.json()["error"]["message"]
        existing = c.post("/v1/jobs/extract", json={"inputs": ["val/bees"], "store": "old", "options": TINY_JOB})
        assert existing.status_code == 409 and "already exists" in existing.json()["error"]["message"]
    assert len(FeatureStore.open(tmp_path / "st" / "stores" / "old")) == len(store)  # untouched


@pytest.mark.slow  # two job processes (~20 s on 2 cores)
def test_one_job_per_store_and_an_existing_store_is_appended_never_replaced(images, store, tmp_path):
    with TestClient(create_app(options(images, store, tmp_path / "st"))) as c:
        first = c.post("/v1/jobs/extract", json={"inputs": ["val/ants"], "store": "same", "options": TINY_JOB})
        assert first.status_code == 202
        busy = c.post("/v1/jobs/extract", json={"inputs": ["val/bees"], "store": "same", "options": TINY_JOB})
        assert busy.status_code == 409 and first.json()["id"] in busy.json()["error"]["message"]
        assert wait_for_job(c, first.json()["id"])["status"] == "done"
        again = c.post("/v1/jobs/extract", json={"inputs": ["val/bees"], "store": "same", "options": TINY_JOB})
        assert again.status_code == 409 and '"existing": "append"' in again.json()["error"]["message"]
        assert len(FeatureStore.open(tmp_path / "st" / "stores" / "same")) == 5  # nothing replaced
        appended = c.post("/v1/jobs/extract", json={"inputs": ["val/bees"], "store": "same", "options": TINY_JOB,
                                                    "existing": "append"})
        status = wait_for_job(c, appended.json()["id"])
        first_status = c.get(f"/v1/jobs/{first.json()['id']}").json()
    result = FeatureStore.open(tmp_path / "st" / "stores" / "same")
    folders = sorted(p.split(os.sep)[-2] for p in result.meta["path"])
    assert status["status"] == "done" and folders == ["ants"] * 5 + ["bees"] * 5 and result.ok.all()
    assert first_status["ok"] == 5 and status["ok"] == 10  # the first job's rows are all still there


def test_progress_is_the_fraction_of_rows_committed(images, tmp_path, monkeypatch):
    from featx.extract.job import extract
    from featx.serve.jobs import JobManager
    from featx.store import StoreWriter

    original = StoreWriter.commit_shard
    commits = []

    def stop_after_two(self, *args, **kwargs):
        if len(commits) == 2:
            raise KeyboardInterrupt("simulated kill")
        commits.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "commit_shard", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(images, tmp_path / "partial", shard_size=3, **TINY)
    done, planned = JobManager._committed({"out": str(tmp_path / "partial")})
    assert (done, planned) == (6, 10)


def test_a_symlink_swapped_in_after_the_job_was_accepted_becomes_an_error_row(images, store, tmp_path):
    from featx.serve.jobs import JobManager

    data = images.parent / "swap"
    (data / "x").mkdir(parents=True)
    for i in range(3):
        (data / "x" / f"{i}.png").write_bytes(png_bytes(i))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(9))
    opts = options(data, store, tmp_path / "st")
    stopped = JobManager(tmp_path / "st", opts)
    stopped._pool.submit = lambda *a, **k: None  # accepted, not yet run
    record = stopped.submit(ExtractJobRequest(inputs=["x"], store="swap", options=TINY_JOB))
    assert record["planned"] == 3
    (data / "x" / "1.png").unlink()
    (data / "x" / "1.png").symlink_to(secret)  # swapped after the 202
    with TestClient(create_app(opts)) as c:
        status = wait_for_job(c, record["id"])
    meta = FeatureStore.open(tmp_path / "st" / "stores" / "swap").meta
    assert status["status"] == "done" and status["ok"] == 2 and status["failed"] == 1
    bad = meta[meta["status"] != "ok"]
    assert list(bad["status"]) == ["outside_root"] and "--data-root" in bad["error"].iloc[0], meta


def rlimit_as_works() -> str | None:
    try:
        import resource

        resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, OSError) as exc:
        return f"RLIMIT_AS is not available here ({exc})"
    if not os.path.exists("/proc/self/status"):
        return "no /proc/self/status to read the address space from"
    return None


@pytest.mark.slow  # two job processes (~20 s on 2 cores)
@pytest.mark.skipif(rlimit_as_works() is not None, reason=str(rlimit_as_works()))
def test_a_job_out_of_memory_fails_alone_and_is_never_resumed_by_itself(images, store, tmp_path, monkeypatch):
    import featx.serve.job_limits as job_limits

    # an estimate that lets the job through (as an under-estimate would): its process must stop it
    monkeypatch.setattr(job_limits, "estimate_memory", lambda opts, server: {"limit_bytes": int(1.5 * 2**30)})
    opts = options(images, store, tmp_path / "st", job_memory_gb=1.5, job_max_image_size=4096)
    with TestClient(create_app(opts)) as c:
        response = c.post("/v1/jobs/extract", json={"inputs": ["val"], "store": "huge", "options": {
            "model": "mobilenet_v3_small", "weights": "random", "image_size": 2048, "batch_size": 64,
            "device": "cpu"}})
        assert response.status_code == 202
        status = wait_for_job(c, response.json()["id"], timeout=300)
        assert status["status"] == "failed" and status["code"] == "out_of_memory", status
        assert "1.50 GiB" in status["error"] and "/resume" in status["error"]
        assert "can't allocate memory" in status["error"] or "MemoryError" in status["error"]  # under RLIMIT_AS
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.post("/v1/predict", json={"rows": [0]}).status_code == 404  # the server still answers
    record_file = tmp_path / "st" / "jobs" / status["id"] / "job.json"
    with TestClient(create_app(opts)) as c:  # restarted on the same state dir: the job stays failed
        time.sleep(1)
        again = c.get(f"/v1/jobs/{status['id']}").json()
    assert again["status"] == "failed" and again["runs"] == 1
    # a job left "running" by a server that died is not run again at start-up either
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "status": "running"}))
    with TestClient(create_app(opts)) as c:
        time.sleep(1)
        after = c.get(f"/v1/jobs/{status['id']}").json()
        assert after["status"] == "failed" and after["code"] == "interrupted" and after["runs"] == 1
        resumed = c.post(f"/v1/jobs/{status['id']}/resume")  # only on request
        assert resumed.status_code == 202 and resumed.json()["status"] in ("queued", "running")
        assert c.post(f"/v1/jobs/{status['id']}/resume").status_code == 409  # not twice
