"""`featx serve`: answers equal to the offline API, limits and their status codes, hot swap, jobs."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import TOKEN, build_artifacts, png_bytes, running_server, wait_for_job  # noqa: E402

from featx.errors import InputError  # noqa: E402
from featx.options import ServeOptions  # noqa: E402
from featx.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("serve"))


def options(artifacts, **overrides) -> ServeOptions:
    base = dict(models={"m": str(artifacts.model)}, indexes={"i": str(artifacts.index)}, device="cpu",
                max_wait_ms=20)
    return ServeOptions(**{**base, **overrides})


@pytest.fixture(scope="module")
def client(artifacts):
    with TestClient(create_app(options(artifacts, data_root=str(artifacts.images)))) as c:
        yield c


def upload(*blobs, name="img"):
    return [("files", (f"{name}{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


# --- answers ------------------------------------------------------------------------------------------

def test_32_concurrent_requests_each_get_their_own_answer_equal_to_offline(artifacts, tmp_path):
    """Different images in 32 concurrent requests: batched together, yet each answer is the one
    offline `featx.predict` / `Index.search` give for that image."""
    from featx.learn.predict import predict
    from featx.retrieval.index import Index

    blobs = [png_bytes(100 + i) for i in range(32)]
    files = []
    for i, blob in enumerate(blobs):
        (tmp_path / f"q{i:02d}.png").write_bytes(blob)
        files.append(str(tmp_path / f"q{i:02d}.png"))
    offline = predict(artifacts.model, files, workers=0, device="cpu")
    offline_search = Index.load(artifacts.index).search(files, k=4, workers=0, device="cpu")

    app = create_app(options(artifacts, max_batch=64))

    async def fire(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            predicted = [http.post("/v1/predict", files=upload(b)) for b in blobs]
            searched = [http.post("/v1/search", files=upload(b), data={"k": "4"}) for b in blobs]
            return await asyncio.gather(*predicted), await asyncio.gather(*searched)

    with running_server(app) as base:
        predictions, searches = asyncio.run(fire(base))
    assert [r.status_code for r in predictions + searches] == [200] * 64
    classes = [c for c in offline.columns if c.startswith("score:")]
    for i, response in enumerate(predictions):
        result = response.json()["results"][0]
        assert result["label"] == offline["predicted"].iat[i]
        np.testing.assert_allclose([result["scores"][c.split(":", 1)[1]] for c in classes],
                                   offline.loc[i, classes].to_numpy(float), rtol=1e-4, atol=1e-5)
    for i, response in enumerate(searches):
        neighbours = response.json()["results"][0]["neighbours"]
        expected = offline_search[offline_search["query"] == files[i]]
        assert [n["row_id"] for n in neighbours] == expected["row_id"].tolist()
        np.testing.assert_allclose([n["score"] for n in neighbours], expected["score"].to_numpy(float), atol=1e-4)
    batcher = next(iter(app.state.featx.registry.engines.values())).batcher
    assert batcher.images == 64 and batcher.batches < 64  # requests were batched together


def test_a_lone_request_takes_the_one_trip_path_and_answers_like_offline(artifacts):
    from featx.learn.predict import predict

    files = sorted(str(p) for p in artifacts.images.rglob("*.png"))[:3]
    offline = predict(artifacts.model, files, workers=0, device="cpu")
    classes = [c for c in offline.columns if c.startswith("score:")]
    with TestClient(create_app(options(artifacts))) as c:
        for i, path in enumerate(files):  # one at a time: each is the only request in the server
            result = c.post("/v1/predict", files=upload(Path(path).read_bytes())).json()["results"][0]
            assert result["label"] == offline["predicted"].iat[i]
            np.testing.assert_allclose([result["scores"][k.split(":", 1)[1]] for k in classes],
                                       offline.loc[i, classes].to_numpy(float), rtol=1e-4, atol=1e-5)
        metrics = c.get("/metrics").text
        bad = c.post("/v1/predict", files=upload(png_bytes(4)[:80]))  # a truncated PNG
    assert 'featx_stage_seconds_count{stage="alone_hop"} 3.0' in metrics  # all three took the lone path
    assert 'featx_stage_seconds_count{stage="decode_hop"}' not in metrics  # none went through the pool
    assert bad.status_code == 422 and bad.json()["error"]["file"] == "img0.png"  # its errors name the file


def test_inputs_keep_their_order_and_duplicates(client):
    a, b = png_bytes(1), png_bytes(2)
    results = client.post("/v1/predict", files=upload(a, b, a, a)).json()["results"]
    assert [r["input"] for r in results] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert results[0]["scores"] == results[2]["scores"] == results[3]["scores"] != results[1]["scores"]
    rows = client.post("/v1/predict", json={"rows": [5, 1, 5]}).json()["results"]
    assert [r["input"] for r in rows] == ["row 5", "row 1", "row 5"] and rows[0] == {**rows[2], "input": "row 5"}


def test_search_by_row_leaves_the_row_out_and_links_thumbnails(client, artifacts):
    from featx.retrieval.index import Index

    body = client.post("/v1/search", json={"index": "i", "rows": [3], "k": 5}).json()
    neighbours = body["results"][0]["neighbours"]
    offline = Index.load(artifacts.index).search(None, 5, rows=[3], exclude_self=True)
    assert [n["row_id"] for n in neighbours] == offline["row_id"].tolist()
    assert 3 not in [n["row_id"] for n in neighbours] and len(neighbours) == 5
    thumb = client.get(neighbours[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"
    assert client.get("/v1/thumbnails/i/99999").status_code == 404
    assert client.get("/v1/thumbnails/nope/0").status_code == 404


def test_embed_json_and_npy_equal_the_store_features(client, artifacts):
    from featx.store import FeatureStore

    store = FeatureStore.open(artifacts.store)
    image = artifacts.images / "dogs" / "dogs_02.png"
    row = int(np.flatnonzero(store.paths == str(image))[0])
    as_json = client.post("/v1/embed", files=upload(image.read_bytes())).json()
    npy = client.post("/v1/embed", files=upload(image.read_bytes()), data={"format": "npy"})
    vector = np.load(io.BytesIO(npy.content))
    np.testing.assert_allclose(vector[0], as_json["vectors"][0], rtol=1e-6)
    np.testing.assert_allclose(vector[0], store.features()[row], rtol=1e-4, atol=1e-5)
    by_path = client.post("/v1/embed", json={"paths": ["dogs/dogs_02.png"]}).json()
    np.testing.assert_allclose(by_path["vectors"][0], vector[0], rtol=1e-6)


def test_answers_have_the_documented_shape(client):
    """Every answer validates against its response model (extra keys forbidden), and the OpenAPI
    page documents exactly those models: the two cannot drift apart."""
    from featx.serve.responses import EmbedAnswer, PredictAnswer, SearchAnswer

    image = upload(png_bytes(5))
    answers = {PredictAnswer: client.post("/v1/predict", files=image),
               SearchAnswer: client.post("/v1/search", json={"index": "i", "rows": [2], "k": 3}),
               EmbedAnswer: client.post("/v1/embed", files=image)}
    for model, response in answers.items():
        assert response.status_code == 200, response.text
        model.model_validate(response.json())
    schema = client.get("/openapi.json").json()
    documented = {path: schema["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
                  for path in ("/v1/predict", "/v1/search", "/v1/embed")}
    assert documented["/v1/predict"]["$ref"].endswith("/PredictAnswer")
    assert documented["/v1/search"]["$ref"].endswith("/SearchAnswer")
    assert documented["/v1/embed"]["$ref"].endswith("/EmbedAnswer")


def test_info_health_metrics(client, artifacts):
    info = client.get("/v1/info").json()
    assert info["models"]["m"]["classes"] == ["cats", "dogs", "owls"]
    assert info["indexes"]["i"]["store"] == "i" and len(info["engines"]) == 1  # one network, shared
    assert info["stores"]["i"]["rows"] == 18 and len(info["stores"]["i"]["config_hash"]) == 16
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/predict", files=upload(png_bytes(3)))
    metrics = client.get("/metrics").text
    assert 'featx_requests_total{route="/v1/predict",status="200"}' in metrics
    assert "featx_batch_images_count" in metrics and "featx_queue_images 0.0" in metrics
    assert "featx_request_seconds_bucket" in metrics
    spec = client.get("/openapi.json").json()  # the documented bodies are featx.options' models
    assert set(spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                                   "multipart/form-data"}
    assert "top_k" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]
    assert {"ExtractJobRequest", "ExtractOptions"} <= set(spec["components"]["schemas"])


# --- safe by default: each status code ------------------------------------------------------------------

def test_401_without_or_with_a_wrong_token(artifacts, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with TestClient(create_app(options(artifacts, token_file=str(token_file)))) as c:
        assert c.get("/v1/info").status_code == 401
        assert c.get("/v1/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/reload").status_code == 401
        assert c.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/").status_code == 200  # the page shell holds no data; its scripts send the token


def test_non_loopback_bind_without_token_refuses_to_start(artifacts, tmp_path):
    with pytest.raises(InputError, match="--host 0.0.0.0 would expose"):
        create_app(options(artifacts, host="0.0.0.0"))
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(InputError, match="use at least 16"):
        create_app(options(artifacts, host="0.0.0.0", token_file=str(short)))


def test_403_for_paths_outside_the_data_root(client, artifacts, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(4))
    link = artifacts.images / "link.png"
    link.symlink_to(outside)
    try:
        for path in ["../secret.png", "../../etc/passwd", str(outside), "link.png", "cats/\x00.png"]:
            response = client.post("/v1/predict", json={"paths": [path]})
            assert response.status_code == 403, path
            assert "--data-root" in response.json()["error"]["message"]
    finally:
        link.unlink()
    assert client.post("/v1/predict", json={"paths": ["cats/cats_00.png"]}).status_code == 200


def test_413_before_the_body_is_read(artifacts):
    app = create_app(options(artifacts, max_body_mb=0.05))
    with TestClient(app) as c:
        big = c.post("/v1/predict", files=upload(b"\x89PNG" + b"0" * 100_000))
        assert big.status_code == 413
    with running_server(app) as base:  # a client announcing 100 MB gets its answer after sending 10 bytes
        host, port = base.removeprefix("http://").split(":")
        import socket

        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000000\r\n\r\n0123456789")
            assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_415_for_non_images(client):
    text = client.post("/v1/predict", files=[("files", ("notes.png", b"just some text, not pixels", "image/png"))])
    assert text.status_code == 415 and text.json()["error"]["code"] == "not_image"
    declared = client.post("/v1/predict", files=[("files", ("a.txt", png_bytes(1), "text/plain"))])
    assert declared.status_code == 415
    form = client.post("/v1/predict", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415


def test_422_for_undecodable_images_and_bombs(artifacts, client):
    truncated = png_bytes(5, size=(200, 200))[:400]
    response = client.post("/v1/predict", files=upload(png_bytes(1), truncated))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] in ("truncated", "decode_error") and error["position"] == 1 and error["file"] == "img1.png"
    with TestClient(create_app(options(artifacts, max_pixels=100 * 100))) as c:
        bomb = c.post("/v1/predict", files=upload(png_bytes(6, size=(120, 100))))
        assert bomb.status_code == 422 and bomb.json()["error"]["code"] == "bomb"
        assert "12000 pixels, above the limit of 10000" in bomb.json()["error"]["message"]
        assert c.post("/v1/predict", files=upload(png_bytes(6, size=(100, 100)))).status_code == 200
    bad = client.post("/v1/search", json={"k": 0, "rows": [1]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_body"


def test_503_with_retry_after_when_the_queue_is_full_and_504_past_the_time_limit(artifacts):
    app = create_app(options(artifacts, max_queue=1, timeout_s=8))  # generous: a busy CI machine
    gate = threading.Event()
    with TestClient(app) as c:
        engine = next(iter(app.state.featx.registry.engines.values()))
        forward = engine.batcher.forward
        in_forward = threading.Event()
        engine.batcher.forward = lambda views: (in_forward.set(), gate.wait(30), forward(views))[2]  # it stalls
        first = {}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", files=upload(png_bytes(7)))))
        worker.start()
        assert in_forward.wait(30)  # the first request is in the stalled forward pass, nothing waits
        deadline = time.time() + 10
        second = {}
        queued = threading.Thread(target=lambda: second.update(r=c.post("/v1/predict", files=upload(png_bytes(8)))))
        queued.start()
        while engine.batcher.queued == 0 and time.time() < deadline:
            time.sleep(0.01)
        full = c.post("/v1/predict", files=upload(png_bytes(9)))
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        queued.join(20)
        assert second["r"].status_code == 504  # waited past --timeout behind the stalled pass
        gate.set()
        worker.join(20)
        assert first["r"].status_code == 504
        assert c.post("/v1/predict", files=upload(png_bytes(9))).status_code == 200  # recovered


# --- hot swap -------------------------------------------------------------------------------------------

def test_hot_swap_under_load_loses_no_request(artifacts):
    app = create_app(options(artifacts))
    blobs = [png_bytes(200 + i) for i in range(12)]

    async def load(base):
        reloaded = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            async def client_loop(c):
                # the load lasts until both swaps are done (however fast the requests are), and beyond
                out, j = [], 0
                while j < 6 or (not reloaded.is_set() and j < 500):
                    image = (c + j) % len(blobs)
                    out.append((image, await http.post("/v1/predict", files=upload(blobs[image]))))
                    j += 1
                for _ in range(3):  # requests that surely run on the newest artifacts
                    image = (c + j) % len(blobs)
                    out.append((image, await http.post("/v1/predict", files=upload(blobs[image]))))
                    j += 1
                return out

            async def reloads():
                out = []
                for _ in range(2):
                    await asyncio.sleep(0.3)
                    out.append(await http.post("/v1/reload"))
                reloaded.set()
                return out

            *answers, swaps = await asyncio.gather(*(client_loop(c) for c in range(6)), reloads())
            return [r for a in answers for r in a], swaps

    with running_server(app) as base:
        answers, swaps = asyncio.run(load(base))
    assert [s.status_code for s in swaps] == [200, 200]
    assert len(answers) >= 6 * 9 and [r.status_code for _, r in answers] == [200] * len(answers)
    generations = {r.json()["generation"] for _, r in answers}
    assert generations <= {1, 2, 3} and {1, 3} <= generations  # requests ran on the old and the new artifacts
    scores = {}
    for image, r in answers:  # the same image got the same answer from every generation
        scores.setdefault(image, []).append(r.json()["results"][0]["scores"])
    for seen in scores.values():
        for other in seen[1:]:
            np.testing.assert_allclose(list(other.values()), list(seen[0].values()), rtol=1e-5)
    assert app.state.featx.registry.generation == 3


def test_tampered_artifact_is_refused_at_reload_and_the_old_one_keeps_serving(artifacts, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(artifacts.model, model)
    with TestClient(create_app(options(artifacts, models={"m": str(model)}))) as c:
        before = c.post("/v1/predict", files=upload(png_bytes(11))).json()
        skops = next(model.glob("*.skops"))
        data = bytearray(skops.read_bytes())
        data[len(data) // 2] ^= 0xFF
        skops.write_bytes(bytes(data))
        refused = c.post("/v1/reload")
        assert refused.status_code == 409
        assert "sha256" in refused.json()["error"]["message"] and refused.json()["error"]["generation"] == 1
        after = c.post("/v1/predict", files=upload(png_bytes(11))).json()
        assert after["generation"] == 1 and after["results"] == before["results"]
        assert 'featx_reloads_total{outcome="refused"} 1.0' in c.get("/metrics").text


# --- extract jobs ------------------------------------------------------------------------------------------

TINY_JOB = {"model": "resnet18", "weights": "random", "image_size": 64, "batch_size": 8, "device": "cpu"}


def test_extract_job_runs_under_the_data_root_and_reports_progress(artifacts, tmp_path):
    from featx.store import FeatureStore

    app = create_app(options(artifacts, data_root=str(artifacts.images), state_dir=str(tmp_path / "state")))
    with TestClient(app) as c:
        response = c.post("/v1/jobs/extract", json={"inputs": ["."], "store": "all", "options": TINY_JOB})
        assert response.status_code == 202 and response.headers["Location"].startswith("/v1/jobs/")
        status = wait_for_job(c, response.json()["id"])
        assert status["status"] == "done" and status["done"] == status["planned"] == 18 and status["progress"] == 1.0
        store = FeatureStore.open(tmp_path / "state" / "stores" / "all")
        assert sorted(set(store.labels)) == ["cats", "dogs", "owls"] and len(store) == 18 and store.ok.all()
        assert c.post("/v1/jobs/extract", json={"inputs": ["../"], "store": "x"}).status_code == 403
        assert c.post("/v1/jobs/extract", json={"inputs": ["cats"], "store": "../x"}).status_code == 422
        assert c.post("/v1/jobs/extract", json={"inputs": ["cats"], "store": "x",
                                                "options": {"pool": "median"}}).status_code == 422
        assert c.get("/v1/jobs/doesnotexist").status_code == 404


def test_a_job_interrupted_by_a_restart_resumes(artifacts, tmp_path):
    from featx.options import ExtractJobRequest
    from featx.serve.jobs import JobManager

    opts = options(artifacts, data_root=str(artifacts.images), state_dir=str(tmp_path / "state"))
    stopped = JobManager(tmp_path / "state", opts)
    stopped._pool.shutdown()  # a server that dies before its job runs: the record stays "queued"
    stopped._pool = type(stopped._pool)(1)
    stopped._pool.submit = lambda *a, **k: None
    record = stopped.submit(ExtractJobRequest(inputs=["dogs"], store="dogs", options=TINY_JOB))
    assert record["status"] == "queued"
    with TestClient(create_app(opts)) as c:  # the restarted server picks it up
        status = wait_for_job(c, record["id"])
    assert status["status"] == "done" and status["done"] == 6 and status["runs"] == 1


# --- the CLI --------------------------------------------------------------------------------------------

def test_cli_serve_refuses_an_open_bind_without_token(artifacts):
    from typer.testing import CliRunner

    from featx.cli import app

    result = CliRunner().invoke(app, ["serve", "--model", f"m={artifacts.model}", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token-file" in result.output
    result = CliRunner().invoke(app, ["serve", "--model", "m=/no/such/dir"])
    assert result.exit_code == 2 and "no such folder" in result.output


@pytest.mark.slow  # a whole server process (torch import): ~30 s on a busy machine
def test_featx_serve_process_reloads_on_sighup(artifacts):
    """The real command: starts on loopback, answers, and SIGHUP swaps in a new generation."""
    import os
    import signal
    import subprocess
    import sys

    from serve_fixtures import free_port

    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "featx.cli", "serve", "--model", f"m={artifacts.model}",
                               "--port", str(port), "--device", "cpu"], cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo)}, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-2000:]
            time.sleep(0.3)
        assert httpx.post(base + "/v1/predict", files=upload(png_bytes(12)), timeout=60).json()["generation"] == 1
        if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
            # the command restarted itself in place (same PID) with one malloc arena for the forward thread
            assert b"MALLOC_ARENA_MAX=1" in Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        server.send_signal(signal.SIGHUP)
        while httpx.get(base + "/v1/info", timeout=10).json()["generation"] != 2:
            assert time.time() < deadline
            time.sleep(0.2)
        assert httpx.post(base + "/v1/predict", files=upload(png_bytes(12)), timeout=60).json()["generation"] == 2
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
