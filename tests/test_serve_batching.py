"""The micro-batcher waits for requests that are on their way, and only for those."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from featx.serve.batching import MicroBatcher


def identity(views: torch.Tensor) -> dict:
    return {"layer": views.reshape(len(views), -1).float().numpy()}


def views(value: int, n: int = 1) -> torch.Tensor:
    return torch.full((n, 3, 2, 2), value, dtype=torch.uint8)


def test_a_lone_request_does_not_wait_for_company():
    async def main():
        batcher = MicroBatcher(identity, max_wait_s=2.0)
        batcher.start()
        start = time.perf_counter()
        out = await batcher.submit(views(7), 1)
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return out, elapsed

    out, elapsed = asyncio.run(main())
    assert out["layer"].shape == (1, 12) and (out["layer"] == 7).all()
    assert elapsed < 1.0  # not the 2 s max wait: nothing else was decoding


def test_a_batch_waits_for_images_still_decoding_and_each_gets_its_own_rows():
    sizes = []

    async def main():
        batcher = MicroBatcher(identity, max_wait_s=2.0, on_batch=sizes.append)
        batcher.start()

        async def late():
            with batcher.expecting(2):  # "decoding" for 50 ms
                await asyncio.sleep(0.05)
            return await batcher.submit(views(2, 2), 2)

        async def early():
            await asyncio.sleep(0.01)  # the late request is already announced
            return await batcher.submit(views(1), 1)

        results = await asyncio.gather(early(), late())
        await batcher.stop()
        return results

    first, second = asyncio.run(main())
    assert sizes == [3]  # one forward pass for both requests
    assert (first["layer"] == 1).all() and first["layer"].shape[0] == 1
    assert (second["layer"] == 2).all() and second["layer"].shape[0] == 2


def test_a_failed_decode_stops_the_wait():
    async def main():
        batcher = MicroBatcher(identity, max_wait_s=5.0)
        batcher.start()

        async def failing():
            with pytest.raises(ValueError):
                with batcher.expecting(1):
                    await asyncio.sleep(0.05)
                    raise ValueError("undecodable")

        start = time.perf_counter()
        _, out = await asyncio.gather(failing(), batcher.submit(views(3), 1))
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return out, elapsed

    out, elapsed = asyncio.run(main())
    assert (out["layer"] == 3).all()
    assert elapsed < 2.5  # released when the other request failed, not after the 5 s max wait
