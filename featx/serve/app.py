"""The FastAPI app of `featx serve`: routes, safety limits, and the swap of loaded artifacts.

Every request takes the current `Registry` once and uses it to the end, so a reload never mixes
old and new artifacts inside one answer. Decoding runs in a thread pool, inference in the
micro-batcher's thread, classifiers and FAISS in worker threads: the event loop only routes."""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from featx.errors import ConfigMismatchError, FeatxError, InputError, IntegrityError, StoreError
from featx.io.decode import DecodeError
from featx.options import EmbedRequest, ExtractJobRequest, PlaceRequest, PredictRequest, SearchRequest, ServeOptions
from featx.serve.batching import MicroBatcher, QueueFull
from featx.serve.errors import Forbidden, NotFound, UnsupportedMedia
from featx.serve.metrics import Metrics
from featx.serve.registry import Registry, UnknownArtifact, load_registry

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/", "/favicon.ico")  # the page shell holds no data; its scripts send the token
PUBLIC_PREFIXES = ("/static/",)
IMAGE_TYPES_ALLOWED = ("image/", "application/octet-stream")
MAP_POINTS, MAP_POINTS_MAX = 20_000, 200_000  # points of a map sent to the page by default / at most


@dataclass
class ServerState:
    options: ServeOptions
    token: str | None
    metrics: Metrics
    decode_pool: ThreadPoolExecutor
    registry: Registry | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jobs: Any = None
    load_error: str | None = None
    retiring: set = field(default_factory=set)
    active: int = 0  # HTTP requests being handled (counted on the event loop)


def read_token(token_file: str | None) -> str | None:
    if token_file is None:
        return None
    path = Path(token_file)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InputError(f"--token-file '{token_file}' cannot be read ({exc}); give a file holding the token")
    if len(token) < 16:
        raise InputError(f"the token in --token-file '{token_file}' has {len(token)} characters; use at least 16, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt`")
    return token


def check_binding(options: ServeOptions) -> None:
    """Refuse to listen beyond this machine without a token."""
    if options.token_file is None and options.host not in ("127.0.0.1", "localhost", "::1"):
        raise InputError(f"--host {options.host} would expose the service beyond this machine without "
                         "authentication; give --token-file FILE (clients send `Authorization: Bearer TOKEN`), "
                         "or bind 127.0.0.1")


def create_app(options: ServeOptions | None = None, *, registry: Registry | None = None,
               handle_sighup: bool = False) -> FastAPI:
    """The service over the artifacts `options` names (loaded at start-up unless `registry` is given)."""
    options = options or ServeOptions()
    check_binding(options)
    state = ServerState(options, read_token(options.token_file), Metrics(),
                        ThreadPoolExecutor(options.decode_workers, thread_name_prefix="featx-decode"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        try:
            new = registry if registry is not None else await _in_own_thread(load_registry, options)
        except FeatxError as exc:
            raise RuntimeError(f"featx serve could not load its artifacts: {exc}") from exc
        _start_engines(state, new)
        state.registry = new
        state.metrics.set_queue_source(lambda: _queued_images(state))
        if options.state_dir:
            from featx.serve.jobs import JobManager

            state.jobs = JobManager(Path(options.state_dir), options)
            state.jobs.resume()
        if handle_sighup:
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: _keep(state, loop.create_task(_reload(state))))
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                log.warning("SIGHUP reload is not available here; use POST /v1/reload")
        try:
            yield
        finally:
            if state.jobs is not None:
                state.jobs.shutdown()
            for engine in state.registry.engines.values():
                await engine.batcher.stop()
            state.decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="featx serve", version=_version(), lifespan=lifespan,
                  max_body_size=int(options.max_body_mb * 2**20),
                  description="Classify, search and embed images with loaded featx models, indexes and stores.")
    app.state.featx = state
    app.add_middleware(_Guard, state=state)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    _install_error_handlers(app)
    _routes(app, state)
    _page(app, state)
    return app


def _version() -> str:
    from featx._version import __version__

    return __version__


# --- request guard: auth, metrics -----------------------------------------------------------------

class _Guard:
    """Pure ASGI: bearer token (constant-time), then request metrics by route."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state
        self.expected = f"Bearer {state.token}".encode() if state.token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = _route_label(path)
        started = time.perf_counter()
        status = {"code": 500}

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.state.active += 1
        try:
            if self.expected is not None and scope["method"] != "OPTIONS" and not _public(path):
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, self.expected):
                    response = JSONResponse({"error": {"code": "unauthorized", "message":
                                             "missing or wrong token; send `Authorization: Bearer TOKEN`"}},
                                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
                    return await response(scope, receive, tracking_send)
            await self.app(scope, receive, tracking_send)
        finally:
            self.state.active -= 1
            self.state.metrics.observe_request(route, status["code"], time.perf_counter() - started)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/info", "/v1/predict", "/v1/search", "/v1/embed",
           "/v1/place", "/v1/reload", "/v1/jobs/extract", "/docs", "/openapi.json")


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    for prefix in ("/v1/thumbnails/", "/v1/jobs/", "/v1/projections/", "/static/"):
        if path.startswith(prefix):
            return prefix + "*"
    return "other"


# --- errors ------------------------------------------------------------------------------------

def _error(status: int, code: str, message: str, **extra) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DecodeError)
    async def decode_error(_request, exc: DecodeError):
        status = 415 if exc.code == "not_image" else 422
        return _error(status, exc.code, exc.message, **getattr(exc, "extra", {}))

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return _error(503, "busy", f"{exc}; retry shortly", headers={"Retry-After": "1"})

    @app.exception_handler(FeatxError)
    async def featx_error(_request, exc: FeatxError):
        status = {Forbidden: 403, NotFound: 404, UnknownArtifact: 404, UnsupportedMedia: 415,
                  ConfigMismatchError: 409, IntegrityError: 409}.get(type(exc), 422)
        if isinstance(exc, StoreError) and status == 422:
            status = 409
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(ValidationError)
    async def invalid_body(_request, exc: ValidationError):
        return _error(422, "invalid_body", "the request body does not match its schema",
                      details=exc.errors(include_url=False, include_context=False, include_input=False))

    @app.exception_handler(TimeoutError)
    async def timed_out(_request, exc: TimeoutError):
        return _error(504, "timeout", str(exc) or "the request took longer than the server's time limit")


async def _limited(state: ServerState, work):
    """Every request has a time limit (--timeout): past it, 504 and its queued work is dropped."""
    try:
        return await asyncio.wait_for(work, state.options.timeout_s)
    except asyncio.TimeoutError:
        raise TimeoutError(f"the request took longer than {state.options.timeout_s:g} s (the server's --timeout)")


# --- request parsing ------------------------------------------------------------------------------

@dataclass
class Upload:
    name: str
    data: bytes


async def _parse(request: Request, state: ServerState, model: type[BaseModel]) -> tuple[BaseModel, list[Upload]]:
    """multipart (files in `files`, options as form fields) or a JSON body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
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
    if content_type.startswith("application/json"):
        return model.model_validate_json(await request.body()), []
    raise UnsupportedMedia(f"Content-Type '{content_type or '(none)'}' is not accepted; send multipart/form-data "
                           "with image files, or application/json")


def _under_root(state: ServerState, path: str) -> Path:
    """A request path, symlinks resolved, that must stay inside --data-root."""
    if not state.options.data_root:
        raise Forbidden("this server takes no file paths (it was started without --data-root); upload the "
                        "images instead")
    root = Path(state.options.data_root).resolve()
    try:
        candidate = Path(path)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (ValueError, OSError) as exc:  # e.g. an embedded NUL byte, a symlink loop
        raise Forbidden(f"path {path!r} cannot be resolved under the server's --data-root ({exc})") from None
    if not resolved.is_relative_to(root):
        raise Forbidden(f"path '{path}' is outside the server's --data-root; only files under it can be named")
    if not resolved.is_file():
        raise NotFound(f"no file '{path}' under the server's --data-root")
    return resolved


async def _images_of(state: ServerState, uploads: list[Upload], paths: list[str] | None) -> list[Upload]:
    if uploads and paths:
        raise InputError("send either files or paths, not both")
    if paths:
        resolved = [_under_root(state, p) for p in paths]
        loop = asyncio.get_running_loop()
        blobs = await asyncio.gather(*(loop.run_in_executor(state.decode_pool, p.read_bytes) for p in resolved))
        uploads = [Upload(p, b) for p, b in zip(paths, blobs)]
    if len(uploads) > state.options.max_files:
        raise InputError(f"{len(uploads)} images in one request; the limit is {state.options.max_files}")
    return uploads


async def _features(state: ServerState, registry: Registry, artifact: str | None, uploads: list[Upload],
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
            X = outputs[layer]
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
    X = outputs[layer]
    return X, (await run_in_threadpool(then, X) if then is not None else None)


def _rows(store, rows: list[int], layer: str) -> np.ndarray:
    n = len(store)
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise InputError(f"row ids {bad[:5]} are outside store '{store.path}' (0..{n - 1})")
    failed = [r for r in rows if store.meta["status"].iat[r] != "ok"]
    if failed:
        raise InputError(f"rows {failed[:5]} of store '{store.path}' failed extraction and have no features")
    return store.gather(layer, np.asarray(rows, dtype=np.int64))


# --- routes ------------------------------------------------------------------------------------------

def _json_or_multipart(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    form = {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        **{k: v for k, v in schema["properties"].items() if k not in ("rows", "paths")}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": form}}}}


def _routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Artifacts are loaded and the batchers run")
    async def readyz():
        registry = state.registry
        if registry is None or not all(e.batcher.running for e in registry.engines.values()):
            return _error(503, "not_ready", "artifacts are still loading", headers={"Retry-After": "1"})
        return {"status": "ready", "generation": registry.generation}

    @app.get("/v1/info", summary="Loaded artifacts, their configs and store fingerprints")
    async def info():
        return {"featx": _version(), **state.registry.describe(),
                "limits": state.options.model_dump(include={"max_batch", "max_wait_ms", "max_queue", "max_body_mb",
                                                            "max_files", "max_pixels", "timeout_s"}),
                "data_root": state.options.data_root is not None}

    @app.post("/v1/predict", summary="Classify images (multipart files) or store rows / paths (JSON)",
              openapi_extra=_json_or_multipart(PredictRequest))
    async def predict(request: Request):
        return await _limited(state, _predict(request, state))

    @app.post("/v1/search", summary="Nearest stored images of images (multipart) or store rows / paths (JSON)",
              openapi_extra=_json_or_multipart(SearchRequest))
    async def search(request: Request):
        return await _limited(state, _search(request, state))

    @app.post("/v1/place", summary="Where images (multipart) or store rows / paths (JSON) land on a loaded map",
              openapi_extra=_json_or_multipart(PlaceRequest))
    async def place(request: Request):
        return await _limited(state, _place(request, state))

    @app.get("/v1/projections/{name}", summary="A loaded map's points: coordinates, label and row id each")
    async def projection_points(name: str, limit: int = MAP_POINTS):
        loaded = state.registry.projection(name)
        return await run_in_threadpool(_map_points, loaded, max(1, min(int(limit), MAP_POINTS_MAX)))

    @app.post("/v1/embed", summary="Feature vectors, as JSON or .npy",
              openapi_extra=_json_or_multipart(EmbedRequest))
    async def embed(request: Request):
        return await _limited(state, _embed(request, state))

    @app.get("/v1/thumbnails/{store}/{row_id}", summary="A JPEG thumbnail of one store row",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(store: str, row_id: int, size: int = 128):
        from featx.serve.thumbs import thumbnail_jpeg

        feature_store = state.registry.store(store)
        if not 0 <= row_id < len(feature_store):
            raise NotFound(f"store '{store}' has rows 0..{len(feature_store) - 1}, not {row_id}")
        size = max(16, min(int(size), 512))
        path = str(feature_store.meta["path"].iat[row_id])
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.run_in_executor(
            state.decode_pool, thumbnail_jpeg, path, size, state.options.max_pixels), state.options.timeout_s)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/v1/reload", summary="Load the artifacts again and swap them in atomically")
    async def reload():
        return await _reload(state)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/jobs/extract", status_code=202, summary="Start extracting images under --data-root into a store")
    async def start_extract(job: ExtractJobRequest):
        if state.jobs is None:
            raise Forbidden("this server runs no jobs; start it with --state-dir DIR (and --data-root DIR)")
        if not state.options.data_root:
            raise Forbidden("extract jobs read only from --data-root; start the server with --data-root DIR")
        record = await run_in_threadpool(state.jobs.submit, job)
        return JSONResponse(record, status_code=202, headers={"Location": f"/v1/jobs/{record['id']}"})

    @app.get("/v1/jobs/{job_id}", summary="An extract job's progress")
    async def job_status(job_id: str):
        if state.jobs is None:
            raise NotFound("this server runs no jobs (no --state-dir)")
        return await run_in_threadpool(state.jobs.status, job_id)


async def _predict(request: Request, state: ServerState) -> dict:
    started = time.perf_counter()
    body, uploads = await _parse(request, state, PredictRequest)
    state.metrics.observe_stage("parse", time.perf_counter() - started)
    with state.registry.use() as registry:
        loaded = registry.model(body.model)
        model = loaded.model
        store = None
        if body.rows is not None:
            from featx.store import require_same_config

            store = registry.store(body.store)
            require_same_config(model.extractor_config, store.config, f"model '{loaded.name}'")
        def classify(X):
            started = time.perf_counter()
            scores = model.scores(X)
            state.metrics.observe_stage("classify", time.perf_counter() - started)
            return scores

        X, names, scores = await _query_vectors(state, registry, loaded.name, body, uploads, store, model.layer,
                                                "classify", then=classify)
        classes = list(model.classes)
        results = []
        for name, row in zip(names, scores):
            order = np.argsort(-row)
            results.append({"input": name, "label": classes[order[0]], "score": float(row[order[0]]),
                            "scores": {c: float(s) for c, s in zip(classes, row)},
                            "top": [{"label": classes[i], "score": float(row[i])} for i in order[:body.top_k]]})
        return {"model": loaded.name, "generation": registry.generation,
                "score_kind": "probability" if model.has_proba else "decision", "results": results}


async def _query_vectors(state: ServerState, registry, artifact: str, body, uploads, store, layer: str,
                         what: str, then=None) -> tuple[np.ndarray, list[str], Any]:
    """The query vectors of a request, with a name each, and `then(vectors)` (None without `then`):
    stored rows of `store`, or uploaded / `paths` images through `artifact`'s network."""
    if body.rows is not None:
        if uploads or body.paths:
            raise InputError("send either rows, paths or files, not several")
        X = await run_in_threadpool(_rows, store, body.rows, layer)
        return X, [f"row {r}" for r in body.rows], (await run_in_threadpool(then, X) if then is not None else None)
    uploads = await _images_of(state, uploads, body.paths)
    if not uploads:
        raise InputError(f"nothing to {what}: send image files, 'paths' or 'rows'")
    X, done = await _features(state, registry, artifact, uploads, then)
    return X, [u.name for u in uploads], done


async def _search(request: Request, state: ServerState) -> dict:
    body, uploads = await _parse(request, state, SearchRequest)
    with state.registry.use() as registry:
        loaded = registry.index(body.index)
        index, store = loaded.index, registry.stores[loaded.store]
        exclude = body.rows
        X, names, _ = await _query_vectors(state, registry, loaded.name, body, uploads, store, index.info["layer"],
                                        "search with")
        k = min(body.k, int(index.faiss_index.ntotal) - (1 if exclude else 0))
        if k < 1:
            raise InputError(f"index '{loaded.name}' holds too few vectors for a search")
        scores, ids = await run_in_threadpool(index.search_vectors, X, k + (1 if exclude else 0))
        meta = store.meta
        results = []
        for q, name in enumerate(names):
            neighbours = []
            for score, row in zip(scores[q], ids[q]):
                row = int(row)
                if row < 0 or (exclude is not None and row == exclude[q]) or len(neighbours) == k:
                    continue
                label = meta["label"].iat[row]
                neighbours.append({"rank": len(neighbours) + 1, "row_id": row, "path": str(meta["path"].iat[row]),
                                   "label": None if label is None or label != label else str(label),
                                   "score": float(score),
                                   "thumbnail": f"/v1/thumbnails/{loaded.store}/{row}"})
            results.append({"input": name, "neighbours": neighbours})
        return {"index": loaded.name, "store": loaded.store, "metric": index.info["metric"],
                "generation": registry.generation, "results": results}


async def _place(request: Request, state: ServerState) -> dict:
    """Stored rows that are on the map answer with their own point; anything else is placed by the
    map's fitted reducer (UMAP / openTSNE transform, PCA) in a worker thread."""
    body, uploads = await _parse(request, state, PlaceRequest)
    with state.registry.use() as registry:
        loaded = registry.projection(body.projection)
        projection = loaded.projection
        store = registry.stores[loaded.store]
        X, names, _ = await _query_vectors(state, registry, loaded.name, body, uploads, store, projection.layer,
                                        "place")
        stored = [projection.stored(r) for r in body.rows] if body.rows is not None else [None] * len(names)
        missing = [i for i, point in enumerate(stored) if point is None]
        placed = await run_in_threadpool(projection.place, X[missing]) if missing else []
        for i, point in zip(missing, placed):
            stored[i] = point
        return {"projection": loaded.name, "store": loaded.store, "method": projection.info.get("method"),
                "generation": registry.generation,
                "results": [{"input": name, "coords": [float(v) for v in point],
                             "how": "transform" if i in missing else "stored"}
                            for i, (name, point) in enumerate(zip(names, stored))]}


def _map_points(loaded, limit: int) -> dict:
    """At most `limit` points (a seeded sample of a bigger map, the same on every call)."""
    coords = loaded.projection.coords
    total = len(coords)
    if total > limit:
        coords = coords.iloc[np.sort(np.random.default_rng(0).choice(total, size=limit, replace=False))]
    labels = coords["label"].astype(object).where(coords["label"].notna(), None).tolist()
    names = sorted({str(v) for v in labels if v is not None})
    index_of = {name: i for i, name in enumerate(names)}
    axes = [c for c in "xyz" if c in coords]
    xy = np.round(coords[axes[:2]].to_numpy(np.float64), 5).tolist()
    return {"projection": loaded.name, "store": loaded.store, "method": loaded.projection.info.get("method"),
            "labels": names, "columns": ["x", "y", "label", "row_id"], "total": total, "sampled": total > limit,
            "points": [[x, y, -1 if label is None else index_of[str(label)], int(row)]
                       for (x, y), label, row in zip(xy, labels, coords["row_id"].tolist())]}


async def _embed(request: Request, state: ServerState):
    body, uploads = await _parse(request, state, EmbedRequest)
    with state.registry.use() as registry:
        if body.rows is not None:
            if uploads or body.paths:
                raise InputError("send either rows, paths or files, not several")
            if body.artifact in registry.indexes:
                store, layer = registry.stores[registry.indexes[body.artifact].store], registry.indexes[body.artifact].index.info["layer"]
            else:
                store = registry.store(body.artifact)
                layer = store.check_layer(body.layer)
            X = await run_in_threadpool(_rows, store, body.rows, layer)
        else:
            uploads = await _images_of(state, uploads, body.paths)
            if not uploads:
                raise InputError("nothing to embed: send image files, 'paths' or 'rows'")
            engine, layer = registry.engine_of(body.artifact)
            if body.layer is not None and body.layer != layer:
                raise InputError(f"layer '{body.layer}' is not served for this artifact; it uses '{layer}'")
            X, _ = await _features(state, registry, body.artifact, uploads)
        X = np.asarray(X, dtype=np.float32)
        if body.format == "npy":
            buffer = io.BytesIO()
            np.save(buffer, X, allow_pickle=False)
            return Response(buffer.getvalue(), media_type="application/x-npy",
                            headers={"X-Featx-Layer": layer, "Content-Disposition": 'attachment; filename="embeddings.npy"'})
        return {"layer": layer, "dim": int(X.shape[1]), "vectors": X.tolist(), "generation": registry.generation}


# --- engines and hot swap ---------------------------------------------------------------------------

def _start_engines(state: ServerState, registry: Registry) -> None:
    import torch

    for engine in registry.engines.values():
        if engine.batcher is None:
            engine.batcher = MicroBatcher(engine.forward, views_per_image=engine.extractor.tta,
                                          max_batch=state.options.max_batch,
                                          max_wait_s=state.options.max_wait_ms / 1000,
                                          max_queue=state.options.max_queue, on_batch=state.metrics.observe_batch,
                                          on_stage=state.metrics.observe_stage,
                                          name=engine.extractor.backbone.name)
        crop = engine.preprocess.crop_size
        # from numpy: torch.zeros fills in parallel, which would start an OpenMP team in the event loop's thread
        warm_up = torch.from_numpy(np.zeros((engine.extractor.tta, 3, crop, crop), dtype=np.uint8))
        engine.batcher.start(warm_up=warm_up)


async def _in_own_thread(fn, *args):
    """`fn(*args)` in a new thread that ends with it. Loading networks runs parallel torch ops, and
    libgomp keeps an OpenMP team for every thread that ran one, for as long as that thread lives.
    With more such threads than cores it throttles all of them: their workers stop spinning between
    parallel regions, and every region of a forward pass waits for a woken worker. Throttling is
    chosen on purpose, per pass (featx.serve.omp); a team left behind by loading would force it."""
    with ThreadPoolExecutor(1, thread_name_prefix="featx-load") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _queued_images(state: ServerState) -> int:
    registry = state.registry
    return sum(e.batcher.queued for e in registry.engines.values() if e.batcher is not None) if registry else 0


async def _reload(state: ServerState) -> JSONResponse:
    """Load everything again; swap only when all of it loaded and verified. Old requests finish on
    the old registry, whose networks are stopped once its last request is done."""
    async with state.reload_lock:
        old = state.registry
        try:
            new = await _in_own_thread(load_registry, state.options, old)
        except Exception as exc:  # a broken or tampered artifact: keep serving the old ones
            log.error("reload refused: %s", exc)
            state.metrics.reloads.labels("refused").inc()
            return _error(409, "reload_refused", f"the new artifacts were refused; still serving generation "
                                                 f"{old.generation}: {exc}", generation=old.generation)
        _start_engines(state, new)
        state.registry = new  # the swap: one reference assignment
        state.metrics.reloads.labels("ok").inc()
        _keep(state, asyncio.get_running_loop().create_task(_retire(old, new)))
        log.info("reloaded: generation %d", new.generation)
        return JSONResponse({"status": "reloaded", "generation": new.generation, "previous": old.generation})


def _keep(state: ServerState, task: asyncio.Task) -> None:
    """Hold a reference to a background task until it ends (the loop keeps only weak ones)."""
    state.retiring.add(task)
    task.add_done_callback(state.retiring.discard)


async def _retire(old: Registry, new: Registry) -> None:
    while old.inflight:
        await asyncio.sleep(0.05)
    kept = {id(e) for e in new.engines.values()}
    for engine in old.engines.values():
        if id(engine) not in kept:
            await engine.batcher.stop()


# --- the web page ---------------------------------------------------------------------------------

def _page(app: FastAPI, state: ServerState) -> None:
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates

    pages = resources.files("featx.pages")
    templates = Jinja2Templates(directory=str(pages / "templates"))
    app.mount("/static", StaticFiles(directory=str(pages / "static")), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request):
        return templates.TemplateResponse(request, "serve.html", {"version": _version(),
                                                                  "token_required": state.token is not None})
