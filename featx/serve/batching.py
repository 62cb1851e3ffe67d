"""The micro-batcher: images of concurrent requests go through the network in one forward pass.

Requests put their decoded views on a queue and await a future. One task per network collects
what is waiting — up to `max_batch` images, waiting at most `max_wait_s` for more — and runs the
forward pass in its own thread, so the event loop never blocks on inference. While a pass runs,
new requests queue up and form the next batch: under load, batches fill by themselves.

The wait is only for requests known to be on their way: the app counts the images it is still
decoding (`expecting`). A lone request, with nothing else decoding, goes straight to the network
instead of paying `max_wait_s` for company that is not coming."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More images wait for the network than the queue holds: the client should retry later."""


@dataclass(eq=False)  # identity, not tensor comparison
class _Pending:
    views: torch.Tensor  # (n * tta, 3, H, W) uint8
    n: int  # images
    future: asyncio.Future


class MicroBatcher:
    """`forward(views) -> {layer: (n, D) array}` applied to batches of queued requests."""

    def __init__(self, forward: Callable[[torch.Tensor], dict[str, np.ndarray]], *, views_per_image: int = 1,
                 max_batch: int = 32, max_wait_s: float = 0.005, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None, name: str = "network"):
        self.forward = forward
        self.views_per_image = views_per_image
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.name = name
        self._pending: list[_Pending] = []
        self._queued = 0  # images waiting, not yet in a forward pass
        self._incoming = 0  # images of requests still decoding: they will be submitted soon
        self._arrived: asyncio.Event | None = None
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

    def start(self) -> None:
        """Start collecting batches on the running event loop."""
        if self.running:
            return
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"featx-forward-{self.name}")
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

    async def submit(self, views: torch.Tensor, n: int) -> dict[str, np.ndarray]:
        """The features of `n` images (their views stacked). QueueFull when the queue is full."""
        if not self.running:
            raise RuntimeError(f"the batcher of {self.name} is not running")
        if self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} images are waiting for the network (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        item = _Pending(views, n, future)
        self._pending.append(item)
        self._queued += n
        self._arrived.set()
        try:
            return await future
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
            try:
                views = torch.cat([item.views for item in batch]) if len(batch) > 1 else batch[0].views
                outputs = await loop.run_in_executor(self._executor, self.forward, views)
            except Exception as exc:  # the pass failed: every request in it gets the error
                log.exception("forward pass of %d images failed", size)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += size
            if self.on_batch is not None:
                self.on_batch(size)
            start = 0
            for item in batch:
                part = {layer: array[start:start + item.n] for layer, array in outputs.items()}
                start += item.n
                if not item.future.done():  # a request that timed out meanwhile is simply dropped
                    item.future.set_result(part)

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
