"""The micro-batchers of a registry, and the atomic swap of loaded artifacts (reload, SIGHUP)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.responses import JSONResponse

from featx.serve.batching import MicroBatcher
from featx.serve.registry import Registry, load_registry
from featx.serve.requests import error_response
from featx.serve.state import ServerState

log = logging.getLogger(__name__)

# --- engines and hot swap ---------------------------------------------------------------------------

def start_engines(state: ServerState, registry: Registry) -> None:
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


async def in_own_thread(fn, *args):
    """`fn(*args)` in a new thread that ends with it. Loading networks runs parallel torch ops, and
    libgomp keeps an OpenMP team for every thread that ran one, for as long as that thread lives.
    With more such threads than cores it throttles all of them: their workers stop spinning between
    parallel regions, and every region of a forward pass waits for a woken worker. Throttling is
    chosen on purpose, per pass (featx.serve.omp); a team left behind by loading would force it."""
    with ThreadPoolExecutor(1, thread_name_prefix="featx-load") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def queued_images(state: ServerState) -> int:
    registry = state.registry
    return sum(e.batcher.queued for e in registry.engines.values() if e.batcher is not None) if registry else 0


async def reload_artifacts(state: ServerState) -> JSONResponse:
    """Load everything again; swap only when all of it loaded and verified. Old requests finish on
    the old registry, whose networks are stopped once its last request is done."""
    async with state.reload_lock:
        old = state.registry
        try:
            new = await in_own_thread(load_registry, state.options, old)
        except Exception as exc:  # a broken or tampered artifact: keep serving the old ones
            log.error("reload refused: %s", exc)
            state.metrics.reloads.labels("refused").inc()
            return error_response(409, "reload_refused", f"the new artifacts were refused; still serving generation "
                                                 f"{old.generation}: {exc}", generation=old.generation)
        start_engines(state, new)
        state.registry = new  # the swap: one reference assignment
        state.metrics.reloads.labels("ok").inc()
        keep_task(state, asyncio.get_running_loop().create_task(retire(old, new)))
        log.info("reloaded: generation %d", new.generation)
        return JSONResponse({"status": "reloaded", "generation": new.generation, "previous": old.generation})


def keep_task(state: ServerState, task: asyncio.Task) -> None:
    """Hold a reference to a background task until it ends (the loop keeps only weak ones)."""
    state.retiring.add(task)
    task.add_done_callback(state.retiring.discard)


async def retire(old: Registry, new: Registry) -> None:
    while old.inflight:
        await asyncio.sleep(0.05)
    kept = {id(e) for e in new.engines.values()}
    for engine in old.engines.values():
        if id(engine) not in kept:
            await engine.batcher.stop()
