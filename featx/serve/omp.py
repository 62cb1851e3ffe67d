"""Whether torch's OpenMP workers spin or sleep between parallel regions, switched per forward pass.

torch's Linux wheels use GNU libgomp. Its workers spin for a while (~300,000 pause loops) after
each parallel region, waiting for the next one, and then sleep. While more threads own OpenMP teams
than there are cores, libgomp "throttles": workers spin only briefly and then sleep, so every
parallel region has to wake them again. Neither suits a server both ways:

- a lone request's forward pass, with nothing else running, is fastest when the workers spin:
  served one at a time on the shared 2-core test machine (efficientnet_lite0, 2 threads), the
  pass took 17.8 ms spinning, and 24-31 ms throttled in runs at a similar load; side by side, the
  request's p50 fell from 36 ms (the server before, throttled) to 23 ms;
- while other threads want the cores — decode threads, the event loop and clients under load, or
  other programs — spinning workers take the time the others need, and a pass whose worker was
  preempted stalls at every region: side by side at 32 clients, always spinning gave 14-42 req/s
  where throttled gave 30-50, and lone passes that spun while other jobs ran took 385-428 ms on
  average against 31-35 ms throttled.

libgomp counts a thread's team for as long as the thread lives. So `Throttle` keeps one parked
thread with its own team alive while batches run (the count exceeds the cores: throttled) and lets
it end before a lone request's pass that should spin (`LoneChoice` decides from measured times).
Loading and decoding avoid parallel torch ops so that, without the parked thread, the forward
thread's team is the only one. With another OpenMP runtime this only costs one sleeping thread."""

from __future__ import annotations

import logging
import threading
from collections import deque
from statistics import median

import torch

log = logging.getLogger(__name__)


class Throttle:
    """Used from the forward thread only."""

    def __init__(self):
        self._release: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def on(self) -> bool:
        return self._thread is not None

    def engage(self) -> None:
        """Before a batched pass: park a thread that owns an OpenMP team (once; it stays)."""
        if self._thread is not None:
            return
        ready, release = threading.Event(), threading.Event()

        def parked():
            torch.ones(1 << 20).add_(1)  # a parallel op: this thread now owns a team of torch's size
            ready.set()
            release.wait()

        self._release = release
        self._thread = threading.Thread(target=parked, name="featx-omp-throttle", daemon=True)
        self._thread.start()
        ready.wait(5)

    def release(self) -> None:
        """Before a lone request's pass: end the parked thread (libgomp frees its team at exit)."""
        if self._thread is None:
            return
        self._release.set()
        self._thread.join(5)
        self._thread = self._release = None


class LoneChoice:
    """Spin or throttle for a lone request's pass: whichever mode's recent passes were shorter.

    Spinning wins on an idle machine; on a machine other programs keep busy it loses badly (a
    worker spinning while its partner is preempted: 30 ms passes became 400 ms on the shared test
    machine). Nothing tells in advance which case holds, so the times decide: both modes are tried
    first, then the faster one is used and the other tried again every `explore`-th pass (the
    machine's load changes)."""

    def __init__(self, *, window: int = 5, explore: int = 16):
        self.explore = explore
        self._times = {True: deque(maxlen=window), False: deque(maxlen=window)}  # spin? -> seconds
        self._passes = 0

    def spin(self) -> bool:
        self._passes += 1
        spun, throttled = self._times[True], self._times[False]
        if len(spun) < 2 or len(throttled) < 2:  # spin twice, then throttle twice
            return len(spun) < 2
        best = median(spun) <= median(throttled)
        return best != (self._passes % self.explore == 0)

    def record(self, spin: bool, seconds: float) -> None:
        self._times[spin].append(seconds)
