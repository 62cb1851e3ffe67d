"""The FastAPI app of `featx serve`: the guard (token, metrics), the routers, the web page and the
lifecycle.

Every request takes the current `Registry` once and uses it to the end, so a reload never mixes
old and new artifacts inside one answer. Decoding runs in a thread pool, inference in the
micro-batcher's thread, classifiers and FAISS in worker threads: the event loop only routes."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from featx.errors import FeatxError
from featx.options import ServeOptions
from featx.serve.admin import admin_router
from featx.serve.answers import inference_router
from featx.serve.metrics import Metrics
from featx.serve.registry import Registry, load_registry
from featx.serve.requests import install_error_handlers
from featx.serve.state import ServerState, check_binding, featx_version, read_token
from featx.serve.swap import in_own_thread, keep_task, queued_images, reload_artifacts, start_engines

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/", "/favicon.ico")  # the page shell holds no data; its scripts send the token
PUBLIC_PREFIXES = ("/static/",)



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
        loop.set_exception_handler(_quiet_accept_errors)
        try:
            new = registry if registry is not None else await in_own_thread(load_registry, options)
        except FeatxError as exc:
            raise RuntimeError(f"featx serve could not load its artifacts: {exc}") from exc
        start_engines(state, new)
        state.registry = new
        state.metrics.set_queue_source(lambda: queued_images(state))
        if options.state_dir:
            from featx.serve.jobs import JobManager

            state.jobs = JobManager(Path(options.state_dir), options)
            state.jobs.resume()
        if handle_sighup:
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: keep_task(state,
                                                                         loop.create_task(reload_artifacts(state))))
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

    app = FastAPI(title="featx serve", version=featx_version(), lifespan=lifespan,
                  max_body_size=int(options.max_body_mb * 2**20),
                  description="Classify, search and embed images with loaded featx models, indexes and stores.")
    app.state.featx = state
    app.add_middleware(_Guard, state=state)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    install_error_handlers(app)
    app.include_router(admin_router(state))
    app.include_router(inference_router(state))
    _page(app, state)
    return app


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
                status["code"], status["started"] = message["status"], True
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
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one shape, one log line
            await _failed(exc, scope, send, status)
        finally:
            self.state.active -= 1
            self.state.metrics.observe_request(route, status["code"], time.perf_counter() - started)


async def _failed(exc: BaseException, scope, send, status: dict) -> None:
    """A client that went away is one log line; anything else is logged once and answers a 500 in
    featx's error shape (when no answer has started yet)."""
    from starlette.requests import ClientDisconnect

    where = f"{scope['method']} {scope['path'][:200]}"
    if _disconnected(exc, ClientDisconnect):
        log.info("client disconnected before the answer to %s was sent", where)
        status["code"] = 499
        return
    log.error("internal error answering %s", where, exc_info=exc)
    if status.get("started"):
        return
    response = JSONResponse({"error": {"code": "internal", "message": "the server failed to answer this request; "
                                       "it is logged on the server"}}, status_code=500)
    try:
        await response(scope, _no_body, send)
    except Exception:  # noqa: BLE001 - the client is gone as well
        log.info("client disconnected before the answer to %s was sent", where)


async def _no_body():
    return {"type": "http.disconnect"}


def _disconnected(exc: BaseException, kind) -> bool:
    if isinstance(exc, (kind, ConnectionError)) or type(exc).__name__ in ("ClosedResourceError", "EndOfStream"):
        return True
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup from a task group
    if isinstance(group, (list, tuple)) and group:
        return all(_disconnected(e, kind) for e in group)
    return False


_ACCEPT_WARNED = {"at": 0.0}


def _quiet_accept_errors(loop, context: dict) -> None:
    """The descriptor limit reached while accepting is one warning line (at most one a second),
    not a traceback per try: the connections wait in the kernel's queue meanwhile."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        now = time.monotonic()
        if now - _ACCEPT_WARNED["at"] > 1:
            _ACCEPT_WARNED["at"] = now
            log.warning("cannot accept connections: %s (lower --max-connections or raise `ulimit -n`)",
                        context.get("exception"))
        return
    loop.default_exception_handler(context)


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



# --- the web page ---------------------------------------------------------------------------------

def _page(app: FastAPI, state: ServerState) -> None:
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates

    pages = resources.files("featx.pages")
    templates = Jinja2Templates(directory=str(pages / "templates"))
    app.mount("/static", StaticFiles(directory=str(pages / "static")), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request):
        return templates.TemplateResponse(request, "serve.html", {"version": featx_version(),
                                                                  "token_required": state.token is not None})
