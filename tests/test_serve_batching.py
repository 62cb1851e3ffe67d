"""The micro-batcher waits for requests that are on their way, and only for those."""

from __future__ import annotations

import asyncio
import time

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


def test_run_alone_decodes_forwards_and_follows_up_in_one_trip_to_the_forward_thread():
    import threading

    threads = []

    def decode():
        threads.append(threading.current_thread().name)
        return views(5)

    def then(outputs):
        threads.append(threading.current_thread().name)
        return outputs["layer"].sum()

    sizes = []

    async def main():
        batcher = MicroBatcher(identity, on_batch=sizes.append)
        batcher.start()
        assert batcher.idle
        result = await batcher.run_alone(decode, 1, then)
        await batcher.stop()
        return result

    total, decode_s, forward_s = asyncio.run(main())
    assert total == 5 * 12 and decode_s >= 0 and forward_s >= 0
    assert len(threads) == 2 and threads[0] == threads[1] and threads[0].startswith("featx-forward")
    assert sizes == [1]


def test_requests_arriving_during_a_lone_pass_wait_for_it_then_share_one_batch():
    import threading

    gate, sizes = threading.Event(), []

    def forward(batch):
        if batch.shape[0] == 1 and batch[0, 0, 0, 0] == 9:  # the lone request's pass stalls until released
            gate.wait(10)
        return identity(batch)

    async def main():
        batcher = MicroBatcher(forward, max_wait_s=0.05, on_batch=sizes.append)
        batcher.start()
        lone = asyncio.ensure_future(batcher.run_alone(lambda: views(9), 1))
        await asyncio.sleep(0.05)
        assert not batcher.idle  # the lone pass holds the network
        later = [asyncio.ensure_future(batcher.submit(views(v, n), n)) for v, n in ((1, 1), (2, 2))]
        await asyncio.sleep(0.1)
        assert sizes == [] and batcher.queued == 3  # they wait behind the lone pass, not beside it
        gate.set()
        results = await asyncio.gather(lone, *later)
        await batcher.stop()
        return results

    (alone, _, _), first, second = asyncio.run(main())
    assert (alone["layer"] == 9).all()
    assert (first["layer"] == 1).all() and first["layer"].shape[0] == 1
    assert (second["layer"] == 2).all() and second["layer"].shape[0] == 2
    assert sizes == [1, 3]  # the lone pass, then one batch for both later requests


def test_lone_choice_tries_both_modes_then_keeps_the_faster_and_retries_the_other():
    from featx.serve.omp import LoneChoice

    choice = LoneChoice(explore=4)
    first = []
    for _ in range(4):
        spin = choice.spin()
        first.append(spin)
        choice.record(spin, 0.4 if spin else 0.03)  # spinning is slow here: a busy machine
    assert first == [True, True, False, False]
    later = []
    for _ in range(8):
        spin = choice.spin()
        later.append(spin)
        choice.record(spin, 0.4 if spin else 0.03)
    assert later.count(False) == 6 and later.count(True) == 2  # throttled, with every 4th pass a retry
    for _ in range(12):  # the machine went quiet: spinning is faster now and wins once retried
        spin = choice.spin()
        choice.record(spin, 0.018 if spin else 0.03)
    assert [choice.spin() for _ in range(3)].count(True) >= 2


def test_throttle_parks_one_thread_and_ends_it():
    import threading

    from featx.serve.omp import Throttle

    throttle = Throttle()
    before = {t.name for t in threading.enumerate()}
    throttle.engage()
    throttle.engage()  # once only
    parked = [t for t in threading.enumerate() if t.name == "featx-omp-throttle"]
    assert throttle.on and len(parked) == 1 and "featx-omp-throttle" not in before
    throttle.release()
    assert not throttle.on and not parked[0].is_alive()
