"""The micro-batcher: images of concurrent requests go through the network in one forward pass.

Requests put their decoded views on a queue and await a future. One task per network collects
what is waiting — up to `max_batch` images, waiting at most `max_wait_s` for more — and runs the
forward pass in its own thread, so the event loop never blocks on inference. While a pass runs,
new requests queue up and form the next batch: under load, batches fill by themselves.

The wait is only for requests known to be on their way: the app counts the images it is still
decoding (`expecting`). A lone request, with nothing else decoding, goes straight to the network
instead of paying `max_wait_s` for company that is not coming.

When the network is idle — nothing queued, decoding or in a pass — a one-image request skips the
queue altogether (`run_alone`): its decode, forward pass and follow-up (e.g. the classifier) run in
one trip to the forward thread. That saves the hops to and from the decode pool, the collector's
wake-up and the trip back for the classifier, and keeps every parallel torch op in the one thread
whose OpenMP team is warm. Requests arriving meanwhile queue as usual and form the next batch."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from featx.options import SERVE
from featx.serve.omp import LoneChoice, Throttle

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More images wait for the network than the queue holds: the client should retry later."""


@dataclass(eq=False)  # identity, not tensor comparison
class _Pending:
    views: list[torch.Tensor]  # together (n * tta, 3, H, W) uint8
    n: int  # images
    future: asyncio.Future
    submitted: float = 0.0  # time.perf_counter() stamps: queued, forward pass started / ended
    started: float = 0.0
    ended: float = 0.0


class MicroBatcher:
    """`forward(views) -> {layer: (n, D) array}` applied to batches of queued requests."""

    def __init__(self, forward: Callable[[torch.Tensor], dict[str, np.ndarray]], *, views_per_image: int = 1,
                 max_batch: int = SERVE.max_batch, max_wait_s: float = 0.005, max_queue: int = SERVE.max_queue,
                 on_batch: Callable[[int], None] | None = None,
                 on_stage: Callable[[str, float], None] | None = None, name: str = "network"):
        self.forward = forward
        self.views_per_image = views_per_image
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_stage = on_stage
        self.name = name
        self._pending: list[_Pending] = []
        self._queued = 0  # images waiting, not yet in a forward pass
        self._incoming = 0  # images of requests still decoding: they will be submitted soon
        self._arrived: asyncio.Event | None = None
        self._alone = 0  # lone requests in (or on their way to) the forward thread, outside the queue
        self._alone_done: asyncio.Event | None = None
        self._forwarding = False  # a batch is in the forward thread
        self._throttle = Throttle()  # OpenMP workers sleep between regions while batches run (featx.serve.omp)
        self._lone_choice = LoneChoice()  # ... and for a lone request, when that was faster lately
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.images = 0

    @property
    def queued(self) -> int:
        return self._queued

    @contextmanager
    def expecting(self, n: int):
        """Announce `n` images being decoded for this network, until they are submitted or failed.
        Used on the event loop only (no lock needed)."""
        self._incoming += n
        try:
            yield
        finally:
            self._incoming -= n
            if self._arrived is not None:
                self._arrived.set()  # a waiting batch re-checks whether anyone is still coming

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, warm_up: torch.Tensor | None = None) -> None:
        """Start collecting batches on the running event loop; `warm_up` views go through the network
        once first, in the forward thread (its OpenMP team and oneDNN's kernels are then ready, and
        the first request does not pay for them)."""
        if self.running:
            return
        self._arrived = asyncio.Event()
        self._alone_done = asyncio.Event()
        self._alone_done.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"featx-forward-{self.name}")
        if warm_up is not None:
            self._executor.submit(self._warm_up, warm_up)  # requests queue behind it in the one thread
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._throttle.release()

    @property
    def idle(self) -> bool:
        """Nothing queued, being decoded or in a forward pass: a new request would be alone."""
        return self.running and not (self._pending or self._incoming or self._alone or self._forwarding)

    async def run_alone(self, decode: Callable[[], torch.Tensor], n: int,
                        then: Callable[[dict[str, np.ndarray]], object] | None = None):
        """Decode, forward and `then` (e.g. classify) one request in a single trip to the forward
        thread: `(then(outputs), seconds decoding, seconds in the forward pass)` (`outputs` without
        `then`). Call it only when `idle`; requests that arrive meanwhile queue and wait for it."""
        if not self.running:
            raise RuntimeError(f"the batcher of {self.name} is not running")
        self._alone += 1
        self._alone_done.clear()
        try:
            result, decode_s, forward_s = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._decode_forward, decode, then)
        finally:
            self._alone -= 1
            if not self._alone:
                self._alone_done.set()
        self.batches += 1
        self.images += n
        if self.on_batch is not None:
            self.on_batch(n)
        return result, decode_s, forward_s

    def _warm_up(self, views: torch.Tensor) -> None:
        try:
            self.forward(views)
        except Exception:  # a real request will report the problem
            log.exception("warm-up forward pass of %s failed", self.name)

    def _decode_forward(self, decode, then):
        started = time.perf_counter()
        views = decode()
        decoded = time.perf_counter()
        spin = self._lone_choice.spin()  # OpenMP workers spinning or throttled, whichever was faster lately
        if spin:
            self._throttle.release()
        else:
            self._throttle.engage()
        forward_started = time.perf_counter()
        outputs = self.forward(views)
        ended = time.perf_counter()
        self._lone_choice.record(spin, ended - forward_started)
        return (then(outputs) if then is not None else outputs), decoded - started, ended - forward_started

    async def submit(self, views: torch.Tensor | list[torch.Tensor], n: int) -> dict[str, np.ndarray]:
        """The features of `n` images (their views stacked, or a list of the images' views; the
        forward thread concatenates them). QueueFull when the queue is full."""
        if not self.running:
            raise RuntimeError(f"the batcher of {self.name} is not running")
        if self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} images are waiting for the network (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        parts = list(views) if isinstance(views, (list, tuple)) else [views]
        item = _Pending(parts, n, future, time.perf_counter())
        self._pending.append(item)
        self._queued += n
        self._arrived.set()
        try:
            result = await future
            if self.on_stage is not None:
                self.on_stage("batch_wait", item.started - item.submitted)
                self.on_stage("forward", item.ended - item.started)
                self.on_stage("forward_hop", time.perf_counter() - item.ended)
            return result
        except asyncio.CancelledError:  # timed out or the client left: free its place in the queue now
            if item in self._pending:
                self._pending.remove(item)
                self._queued -= n
            raise

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            if self._alone:  # a lone request is in the forward thread: let the queue grow meanwhile
                await self._alone_done.wait()
            deadline = loop.time() + self.max_wait_s
            while (self._incoming and self._waiting_images() < self.max_batch
                   and (left := deadline - loop.time()) > 0):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            size = sum(item.n for item in batch)
            self._forwarding = True
            try:
                outputs, started, ended = await loop.run_in_executor(
                    self._executor, self._timed_forward, [part for item in batch for part in item.views])
            except Exception as exc:  # the pass failed: every request in it gets the error
                log.exception("forward pass of %d images failed", size)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._forwarding = False
            self.batches += 1
            self.images += size
            if self.on_batch is not None:
                self.on_batch(size)
            start = 0
            for item in batch:
                item.started, item.ended = started, ended
                part = {layer: array[start:start + item.n] for layer, array in outputs.items()}
                start += item.n
                if not item.future.done():  # a request that timed out meanwhile is simply dropped
                    item.future.set_result(part)

    def _timed_forward(self, parts: list[torch.Tensor]):
        """A batched pass, OpenMP workers throttled; in the forward thread, the concatenation too
        (torch's parallel copy stays off the event loop and the decode threads)."""
        started = time.perf_counter()
        if len(parts) > 1:
            self._throttle.engage()
        outputs = self.forward(torch.cat(parts) if len(parts) > 1 else parts[0])
        return outputs, started, time.perf_counter()

    def _waiting_images(self) -> int:
        return sum(item.n for item in self._pending if not item.future.done())

    def _take(self) -> list[_Pending]:
        """Requests for the next pass, oldest first, up to max_batch images (at least one request)."""
        batch, size = [], 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # cancelled while waiting
                self._pending.pop(0)
                self._queued -= item.n
                continue
            if batch and size + item.n > self.max_batch:
                break
            batch.append(self._pending.pop(0))
            self._queued -= item.n
            size += item.n
        return batch
