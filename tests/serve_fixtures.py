"""Artifacts for the service tests: a TINY random-weight store, model and index over seeded images."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import TINY, make_class_folder
from PIL import Image


@dataclass
class Artifacts:
    images: Path
    store: Path
    model: Path
    index: Path


def build_artifacts(root: Path) -> Artifacts:
    from featx.extract.job import extract
    from featx.learn.classify import train_shallow
    from featx.retrieval.index import build_index

    images = make_class_folder(root / "images", classes=("cats", "dogs", "owls"), per_class=6, size=(56, 48))
    store = extract(images, root / "store", **TINY)
    train_shallow(store, classifier="logreg", cv=2, learning_curve=False, out=root / "model")
    build_index(store, kind="flat").save(root / "index")
    return Artifacts(images, root / "store", root / "model", root / "index")


def png_bytes(seed: int, size=(60, 52)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, port: int | None = None, options=None):
    """A real uvicorn on 127.0.0.1 in a thread (with `options`: configured as `featx serve` does); yields its
    base URL."""
    import uvicorn

    from featx.serve.server import uvicorn_config

    port = port or free_port()
    config = (uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning") if options is None
              else uvicorn_config(app, options, log_level="warning", port=port))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


TOKEN = "s3cret-token-for-tests-0123456789"  # the bearer token the tests start servers with


def wait_for_job(c, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = c.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {status}")
