"""The service's own resources: health, readiness, info, metrics, reload and extract jobs."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from featx.options import ExtractJobRequest
from featx.serve.errors import Forbidden, NotFound
from featx.serve.requests import error_response
from featx.serve.state import ServerState, featx_version
from featx.serve.swap import in_own_thread, reload_artifacts

log = logging.getLogger(__name__)

def admin_router(state: ServerState) -> APIRouter:
    """Health, readiness, info, metrics, reload and extract jobs."""
    router = APIRouter()

    @router.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz", summary="Artifacts are loaded and the batchers run")
    async def readyz():
        registry = state.registry
        if registry is None or not all(e.batcher.running for e in registry.engines.values()):
            return error_response(503, "not_ready", "artifacts are still loading", headers={"Retry-After": "1"})
        return {"status": "ready", "generation": registry.generation}

    @router.get("/v1/info", summary="Loaded artifacts, their configs and store fingerprints")
    async def info():
        return {"featx": featx_version(), **state.registry.describe(),
                "limits": state.options.model_dump(include={"max_batch", "max_wait_ms", "max_queue", "max_body_mb",
                                                            "max_files", "max_pixels", "timeout_s"}),
                "data_root": state.options.data_root is not None}

    @router.post("/v1/reload", summary="Load the artifacts again and swap them in atomically")
    async def reload():
        return await reload_artifacts(state)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @router.post("/v1/jobs/extract", status_code=202, summary="Start extracting images under --data-root into a store")
    async def start_extract(job: ExtractJobRequest):
        if state.jobs is None:
            raise Forbidden("this server runs no jobs; start it with --state-dir DIR (and --data-root DIR)")
        if not state.options.data_root:
            raise Forbidden("extract jobs read only from --data-root; start the server with --data-root DIR")

        record = await in_own_thread(state.jobs.submit, job)  # its memory estimate runs the network once
        return JSONResponse(record, status_code=202, headers={"Location": f"/v1/jobs/{record['id']}"})

    @router.post("/v1/jobs/{job_id}/resume", status_code=202, summary="Run a failed extract job again")
    async def resume_job(job_id: str):
        if state.jobs is None:
            raise NotFound("this server runs no jobs (no --state-dir)")
        record = await run_in_threadpool(state.jobs.resume_job, job_id)
        return JSONResponse(record, status_code=202, headers={"Location": f"/v1/jobs/{record['id']}"})

    @router.get("/v1/jobs/{job_id}", summary="An extract job's progress")
    async def job_status(job_id: str):
        if state.jobs is None:
            raise NotFound("this server runs no jobs (no --state-dir)")
        return await run_in_threadpool(state.jobs.status, job_id)

    return router

