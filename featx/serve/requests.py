"""Requests into work: featx's error bodies, the time limit, and parsing a request (JSON or
multipart) into images, store rows and features."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from featx.errors import ConfigMismatchError, FeatxError, InputError, IntegrityError, StoreError
from featx.io.decode import DecodeError
from featx.learn.representation import model_input
from featx.serve.batching import QueueFull
from featx.serve.errors import Forbidden, NotFound, UnsupportedMedia
from featx.serve.registry import Apart, Registry, UnknownArtifact
from featx.serve.state import ServerState

log = logging.getLogger(__name__)

IMAGE_TYPES_ALLOWED = ("image/", "application/octet-stream")


# --- errors ------------------------------------------------------------------------------------

def error_response(status: int, code: str, message: str, **extra) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout", 409: "conflict",
               413: "too_large", 415: "unsupported_media", 422: "invalid_body", 429: "too_many_requests",
               503: "unavailable"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error, the framework's included (400, 404, 405, 413, …), answers `{"error": {code, message, …}}`."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        return invalid_body([{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()])

    @app.exception_handler(DecodeError)
    async def decode_error(_request, exc: DecodeError):
        status = 415 if exc.code == "not_image" else 422
        return error_response(status, exc.code, exc.message, **getattr(exc, "extra", {}))

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return error_response(503, "busy", f"{exc}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(FeatxError)
    async def featx_error(_request, exc: FeatxError):
        status = {Forbidden: 403, NotFound: 404, UnknownArtifact: 404, UnsupportedMedia: 415,
                  ConfigMismatchError: 409, IntegrityError: 409}.get(type(exc), 422)
        if isinstance(exc, StoreError) and status == 422:
            status = 409
        return error_response(status, type(exc).__name__, str(exc))

    @app.exception_handler(ValidationError)
    async def invalid_model(_request, exc: ValidationError):
        return invalid_body(exc.errors(include_url=False, include_context=False, include_input=False))

    @app.exception_handler(TimeoutError)
    async def timed_out(_request, exc: TimeoutError):
        return error_response(504, "timeout", str(exc) or "the request took longer than the server's time limit")


def invalid_body(details: list[dict]) -> JSONResponse:
    if any(e.get("type") == "json_invalid" for e in details):
        return error_response(400, "invalid_json", "the request body is not valid JSON", details=details)
    return error_response(422, "invalid_body", "the request body does not match its schema", details=details)


async def limited(state: ServerState, work):
    """Every request has a time limit (--timeout): past it, 504 and its queued work is dropped."""
    try:
        return await asyncio.wait_for(work, state.options.timeout_s)
    except asyncio.TimeoutError:
        limit = state.options.timeout_s
        raise TimeoutError(f"the request took longer than {limit:g} s (the server's --timeout)") from None


# --- request parsing ------------------------------------------------------------------------------

@dataclass
class Upload:
    name: str
    data: bytes


async def parse_request(request: Request, state: ServerState, model: type[BaseModel]) -> tuple[BaseModel, list[Upload]]:
    """multipart (files in `files`, options as form fields) or a JSON body."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()  # 'application/jsonx' is not JSON
    if media_type == "multipart/form-data":
        form = await request.form(max_files=state.options.max_files, max_fields=32)
        uploads, fields = [], {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                kind = (value.content_type or "").lower()
                if kind and not kind.startswith(IMAGE_TYPES_ALLOWED):
                    raise UnsupportedMedia(f"file '{value.filename}' was sent as '{kind}'; only images are accepted "
                                           "(image/*, or application/octet-stream to let the server sniff it)")
                uploads.append(Upload(value.filename or f"file {len(uploads)}", await value.read()))
            else:
                fields[key] = value
        if not uploads:
            raise InputError("the multipart request holds no files; send images in the 'files' field")
        return model.model_validate(fields), uploads
    if media_type == "application/json":
        return model.model_validate_json(await request.body()), []
    raise UnsupportedMedia(f"Content-Type '{content_type[:100] or '(none)'}' is not accepted; send multipart/form-data "
                           "with image files, or application/json")


def under_root(state: ServerState, path: str) -> Path:
    """A request path, symlinks resolved, that must stay inside --data-root."""
    from featx.io.confine import PathRefused, resolve_under

    if not state.options.data_root:
        raise Forbidden("this server takes no file paths (it was started without --data-root); upload the "
                        "images instead")
    try:
        resolved = resolve_under(state.options.data_root, path)
        is_file = resolved.is_file()
    except PathRefused as exc:
        raise Forbidden(str(exc)) from None
    except OSError as exc:  # e.g. a name longer than the filesystem allows
        raise Forbidden(f"path {path[:120]!r} cannot be resolved under the server's --data-root "
                        f"({exc.strerror})") from None
    if not is_file:
        raise NotFound(f"no file {path[:120]!r} under the server's --data-root")
    return resolved


def read_paths(state: ServerState, paths: list[str]) -> list[Upload]:
    """The files of `paths` (under --data-root): count and total size checked before any byte is
    read, and each file checked again as it is opened (a symlink swapped in meanwhile is refused)."""
    from featx.io.confine import PathRefused, read_under

    if len(paths) > state.options.max_files:
        raise InputError(f"{len(paths)} paths in one request; the limit is {state.options.max_files} (--max-files)")
    resolved = [under_root(state, p) for p in paths]
    limit = int(state.options.max_body_mb * 2**20)
    sizes = [_size(p) for p in resolved]
    if sum(sizes) > limit:
        raise InputError(f"the {len(paths)} files named hold {sum(sizes):,} bytes; a request may read at most "
                         f"{limit:,} (--max-body-mb)")
    try:
        return [Upload(name, read_under(state.options.data_root, p, limit)) for name, p in zip(paths, resolved)]
    except PathRefused as exc:
        raise Forbidden(str(exc)) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def images_of(state: ServerState, uploads: list[Upload], paths: list[str] | None) -> list[Upload]:
    if uploads and paths:
        raise InputError("send either files or paths, not both")
    if len(uploads) > state.options.max_files:
        raise InputError(f"{len(uploads)} images in one request; the limit is {state.options.max_files}")
    if paths:
        uploads = await asyncio.get_running_loop().run_in_executor(state.decode_pool, read_paths, state, paths)
    return uploads


async def features_of(state: ServerState, registry: Registry, artifact: str | None, uploads: list[Upload],
                    then=None) -> tuple[np.ndarray, Any]:
    """(n, D) features of the uploads in `artifact`'s layer, and `then(features)` (None without `then`).

    The only request in the server, with one image, is decoded, forwarded and followed up (`then`)
    in one trip to the forward thread (no hops to the decode pool and back, no batch to form, no
    extra trip for the classifier); otherwise the images are decoded in the worker pool and make
    one trip through the micro-batcher, and `then` runs in a worker thread."""
    from featx.preprocess.contract import network_input

    engine, layer = registry.engine_of(artifact)
    extractor = engine.extractor
    loop = asyncio.get_running_loop()
    decode_s = [0.0] * len(uploads)

    def decode_one(i: int, upload: Upload):
        started = time.perf_counter()
        try:
            return network_input(upload.data, engine.preprocess, extractor.tta, decoder=extractor.decode,
                                 max_pixels=state.options.max_pixels)
        except DecodeError as exc:
            exc.extra = {"file": upload.name, "position": i}
            exc.message = f"{upload.name}: {exc.message}"
            raise
        finally:
            decode_s[i] = time.perf_counter() - started

    started = time.perf_counter()
    if len(uploads) == 1 and state.active <= 1 and engine.batcher.idle:  # the only request in the server
        def finish(outputs):
            X = layer_vectors(outputs, layer)
            return X, (then(X) if then is not None else None)

        (X, done), decode_seconds, forward_seconds = await engine.batcher.run_alone(
            lambda: decode_one(0, uploads[0]), 1, finish)
        state.metrics.observe_stage("decode", decode_seconds)
        state.metrics.observe_stage("forward", forward_seconds)
        state.metrics.observe_stage("alone_hop", time.perf_counter() - started - decode_seconds - forward_seconds)
        return X, done

    with engine.batcher.expecting(len(uploads)):  # lets a batch being formed wait for these images
        views = await asyncio.gather(*(loop.run_in_executor(state.decode_pool, decode_one, i, u)
                                       for i, u in enumerate(uploads)))
    decoded = time.perf_counter()
    state.metrics.observe_stage("decode", max(decode_s))
    state.metrics.observe_stage("decode_hop", decoded - started - max(decode_s))
    # the forward thread concatenates them (a parallel torch op, kept off the event loop)
    outputs = await engine.batcher.submit(views, len(uploads))
    X = layer_vectors(outputs, layer)
    return X, (await run_in_threadpool(then, X) if then is not None else None)


def layer_vectors(outputs: dict[str, np.ndarray], layer: str | tuple[str, ...]):
    """One layer's vectors; the layers a classifier reads, side by side (`model_input`); or
    {layer: vectors} of an artifact that reads its layers apart (`Apart`: anomaly models)."""
    if isinstance(layer, Apart):
        return {name: outputs[name] for name in layer}
    return model_input(outputs, _names(layer))


def store_rows(store, rows: list[int], layer: str | tuple) -> np.ndarray:
    if not rows:
        raise InputError("'rows' is empty; send at least one row id (or files, or 'paths')")
    n = len(store)
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise InputError(f"row ids {bad[:5]} are outside store '{store.path}' (0..{n - 1})")
    failed = [r for r in rows if store.meta["status"].iat[r] != "ok"]
    if failed:
        raise InputError(f"rows {failed[:5]} of store '{store.path}' failed extraction and have no features")
    index = np.asarray(rows, dtype=np.int64)
    return model_input({name: store.gather(name, index) for name in _names(layer)}, _names(layer))


def _names(layer: str | tuple) -> list[str]:
    return list(layer) if isinstance(layer, tuple) else [layer]


def json_or_multipart(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    form = {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        **{k: v for k, v in schema["properties"].items() if k not in ("rows", "paths")}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": form}}}}
