"""`featx serve` under hostile requests: one error shape, no 500 for bad input, limits before reads,
reads confined to --data-root when a file is opened, and a client that goes away logs one line."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import build_artifacts, png_bytes, running_server  # noqa: E402

from featx.options import ServeOptions  # noqa: E402
from featx.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("faults"))


def options(artifacts, **overrides) -> ServeOptions:
    base = dict(models={"m": str(artifacts.model)}, indexes={"i": str(artifacts.index)}, device="cpu",
                data_root=str(artifacts.images))
    return ServeOptions(**{**base, **overrides})


@pytest.fixture(scope="module")
def client(artifacts):
    with TestClient(create_app(options(artifacts)), raise_server_exceptions=False) as c:
        yield c


def assert_featx_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]


def test_framework_errors_have_featx_shape(client):
    assert assert_featx_error(client.get("/no/such/route"), 404)["code"] == "not_found"
    assert assert_featx_error(client.get("/v1/predict"), 405)["code"] == "method_not_allowed"
    bad_json = client.post("/v1/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert assert_featx_error(bad_json, 400)["code"] == "invalid_json"
    assert assert_featx_error(client.post("/v1/jobs/extract", content=b"{", headers={
        "Content-Type": "application/json"}), 400)["code"] == "invalid_json"
    assert assert_featx_error(client.get("/v1/thumbnails/x/not-a-number"), 422)["code"] == "invalid_body"
    assert_featx_error(client.post("/v1/search", json={"k": 0, "rows": [1]}), 422)


def test_hostile_paths_and_bodies_are_4xx_never_500(client, artifacts):
    loop = artifacts.images / "loop.png"
    loop.symlink_to(loop.name)
    try:
        for path in ["loop.png", "a" * 5000, "cats/" + "b" * 300 + ".png", "cats/\x00.png"]:
            error = assert_featx_error(client.post("/v1/predict", json={"paths": [path]}), 403)
            assert "--data-root" in error["message"] and len(error["message"]) < 600
    finally:
        loop.unlink()
    assert "empty" in assert_featx_error(client.post("/v1/predict", json={"rows": []}), 422)["message"]
    assert_featx_error(client.post("/v1/search", json={"rows": []}), 422)
    assert_featx_error(client.post("/v1/embed", json={"rows": [], "artifact": "i"}), 422)
    jsonx = client.post("/v1/predict", content=b'{"rows": [0]}', headers={"Content-Type": "application/jsonx"})
    assert assert_featx_error(jsonx, 415)["code"] == "UnsupportedMedia"
    with_params = client.post("/v1/predict", content=b'{"rows": [0]}',
                              headers={"Content-Type": "application/json; charset=utf-8"})
    assert with_params.status_code == 200


def test_file_count_and_size_are_checked_before_any_file_is_read(artifacts, monkeypatch):
    import featx.io.confine as confine

    reads = []
    real = confine.read_under
    monkeypatch.setattr(confine, "read_under", lambda *a, **k: reads.append(a) or real(*a, **k))
    big = artifacts.images / "big.png"
    big.write_bytes(png_bytes(1) + b"\0" * 200_000)
    try:
        with TestClient(create_app(options(artifacts, max_files=2, max_body_mb=0.1))) as c:
            names = [f"cats/cats_{i:02d}.png" for i in range(3)]
            assert "limit is 2" in assert_featx_error(c.post("/v1/predict", json={"paths": names}), 422)["message"]
            error = assert_featx_error(c.post("/v1/predict", json={"paths": ["big.png"]}), 422)
            assert "--max-body-mb" in error["message"]
            assert reads == []
            assert c.post("/v1/predict", json={"paths": names[:2]}).status_code == 200 and len(reads) == 2
    finally:
        big.unlink()


def test_a_symlink_swapped_in_after_the_check_is_refused_when_opened(artifacts, tmp_path):
    from featx.io.confine import PathRefused, read_under, resolve_under

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    inside = artifacts.images / "swap.png"
    inside.write_bytes(png_bytes(2))
    try:
        checked = resolve_under(artifacts.images, "swap.png")  # checked while it is a plain file inside
        inside.unlink()
        inside.symlink_to(outside)  # then swapped for a link leading out
        with pytest.raises(PathRefused, match="outside the --data-root"):
            read_under(artifacts.images, checked, 1 << 20)
    finally:
        inside.unlink()


def test_a_client_that_disconnects_logs_one_line_not_a_traceback(artifacts, caplog):
    app = create_app(options(artifacts))
    with running_server(app) as base, caplog.at_level(logging.INFO):
        host, port = base.removeprefix("http://").split(":")
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 5000\r\n\r\n{\"rows\": [")
            time.sleep(0.2)
        deadline = time.time() + 10
        while time.time() < deadline and sum("disconnected" in r.getMessage() for r in caplog.records) < 5:
            time.sleep(0.1)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 5
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()
                or "Exception in ASGI" in r.getMessage()]


def test_a_link_loop_in_a_job_input_is_a_4xx(artifacts, tmp_path):
    loop = artifacts.images / "cats" / "loop"
    os.symlink("loop", loop)
    try:
        app = create_app(options(artifacts, state_dir=str(tmp_path / "st")))
        with TestClient(app, raise_server_exceptions=False) as c:
            for inputs in (["cats/loop"], ["cats/loop/*.png"], ["a" * 5000], ["cats/\x00"], ["x" * 300 + "/*.png"]):
                response = c.post("/v1/jobs/extract", json={"inputs": inputs, "store": "s"})
                assert response.status_code in (403, 404, 422), (inputs[0][:20], response.text)
                assert_featx_error(response, response.status_code)
    finally:
        loop.unlink()


def test_slow_sockets_are_closed_and_a_normal_client_keeps_getting_answers(artifacts):
    import httpx

    opts = options(artifacts, max_connections=32, read_timeout_s=1.5)
    with running_server(create_app(opts), options=opts) as base:
        host, port = base.removeprefix("http://").split(":")
        slow = []
        try:
            for _ in range(200):  # each sends part of a request line and then nothing
                sock = socket.create_connection((host, int(port)), timeout=10)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                slow.append(sock)
            answers = []
            for _ in range(5):
                with httpx.Client(timeout=5) as c:
                    answers.append(c.get(f"{base}/healthz").status_code)
            assert answers == [200] * 5
            time.sleep(2.5)  # past --read-timeout: every slow socket was closed, most with a 408
            closed, timed_out = 0, 0
            for sock in slow:
                sock.settimeout(2)
                data = sock.recv(4096)
                closed += 1 if data == b"" or data.startswith(b"HTTP/1.1 408") else 0
                timed_out += data.startswith(b"HTTP/1.1 408")
            assert closed == 200 and timed_out >= 150
        finally:
            for sock in slow:
                sock.close()


def test_every_connection_busy_answers_503_in_featx_shape():
    from featx.serve.connections import guarded_protocol

    class Busy:  # a connection whose request the app is working on
        transport = type("T", (), {"is_closing": lambda self: False})()
        _reading_since = 0.0

        def _reading(self):
            return False

    written = []

    class Transport:
        def write(self, data):
            written.append(data)

        def close(self):
            written.append(b"<closed>")

        def is_closing(self):
            return bool(written)

    protocol_class = guarded_protocol(1, 30.0)
    protocol = protocol_class.__new__(protocol_class)
    protocol.connections, protocol.transport, protocol.cycle = {Busy()}, Transport(), None
    protocol.connections.add(protocol)
    protocol._make_room()
    assert written[0].startswith(b"HTTP/1.1 503") and b'"code": "unavailable"' in written[0]
    assert written[-1] == b"<closed>"
